//! C guests built with clang from `guest-sdk/c/wasq_guest.h`, shared by
//! `host/tests/abi.rs` and `tests/e2e_new.rs`.
//!
//! Without clang a test that needs it says so and passes, unless
//! `WASQ_REQUIRE_TASKS=1` (what `make test` sets): then it fails, saying
//! what to install.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// What `wasq new --lang c`'s Makefile passes too: freestanding wasm32, no
/// libc (bulk memory turns compiler-made memcpy/memset calls into
/// instructions), a reactor without an entry point.
pub const WASM_FLAGS: &[&str] = &[
    "--target=wasm32",
    "-mbulk-memory",
    "-nostdlib",
    "-Wl,--no-entry",
    "-O2",
    "-Wall",
    "-Werror",
];

/// The directory of `wasq_guest.h`.
pub fn header_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../guest-sdk/c")
}

/// Whether clang runs. When it does not: panics if `WASQ_REQUIRE_TASKS=1`,
/// else prints that `what` is skipped and returns `false`.
pub fn clang_available(what: &str) -> bool {
    let runs = Command::new("clang")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if runs {
        return true;
    }
    let message = "clang is not installed: install clang and lld \
                   (Debian: apt-get install clang lld) to build C guests";
    if std::env::var_os("WASQ_REQUIRE_TASKS").is_some_and(|v| v == "1") {
        panic!("{what}: {message}");
    }
    eprintln!("skipped {what}: {message}");
    false
}

/// Builds `source` into `out` with [`WASM_FLAGS`] and the header's
/// directory on the include path, and returns the module's bytes.
pub fn build_c(source: &Path, out: &Path) -> Vec<u8> {
    let output = Command::new("clang")
        .args(WASM_FLAGS)
        .arg("-I")
        .arg(header_dir())
        .arg("-o")
        .arg(out)
        .arg(source)
        .output()
        .expect("clang runs");
    assert!(
        output.status.success(),
        "clang could not build {} (wasm-ld is in Debian's `lld`):\n{}",
        source.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    std::fs::read(out).expect("clang wrote the module")
}
