//! `wasq new`: a task project of one's own, ready to build and run.
//!
//! The templates live in `host/templates/` and are compiled into the binary,
//! so `wasq new` works wherever `wasq` was copied to. A Rust crate depends on
//! the guest SDK by path: by default the `guest-sdk/` of the checkout this
//! binary was built from, which `cargo install --path host` keeps.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, ValueEnum};

use super::UsageError;

/// The Rust SDK as this binary knows it: the checkout it was built from.
const DEFAULT_SDK: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../guest-sdk");

/// The WebAssembly target of Rust task crates.
const RUST_TARGET: &str = "wasm32-wasip1";

/// `(path in the new project, template)`, `{{name}}`, `{{lib}}` and `{{sdk}}`
/// filled in.
const RUST_FILES: &[(&str, &str)] = &[
    (
        "Cargo.toml",
        include_str!("../../templates/rust/Cargo.toml"),
    ),
    (
        ".cargo/config.toml",
        include_str!("../../templates/rust/.cargo/config.toml"),
    ),
    (
        "src/lib.rs",
        include_str!("../../templates/rust/src/lib.rs"),
    ),
    ("README.md", include_str!("../../templates/rust/README.md")),
    (".gitignore", include_str!("../../templates/rust/gitignore")),
];

/// The same for C; the header is the one C guests in this repository use.
const C_FILES: &[(&str, &str)] = &[
    (
        "wasq_guest.h",
        include_str!("../../../guest-sdk/c/wasq_guest.h"),
    ),
    ("hello.c", include_str!("../../templates/c/hello.c")),
    ("Makefile", include_str!("../../templates/c/Makefile")),
    ("README.md", include_str!("../../templates/c/README.md")),
    (".gitignore", include_str!("../../templates/c/gitignore")),
];

/// The language of a new task project.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Lang {
    /// A Rust crate using the `wasq-guest` SDK and `#[task]`.
    Rust,
    /// C with `wasq_guest.h` and a Makefile for clang (no libc).
    C,
}

/// Create a task project: a Rust crate (or C files) with one task, `hello`.
#[derive(Debug, Args)]
#[command(after_help = "\
Examples:
  wasq new hello && cd hello && cargo build --release
  wasq exec target/wasm32-wasip1/release/hello.wasm hello '[\"Ada\"]'
  wasq new hello-c --lang c && make -C hello-c")]
pub struct NewCommand {
    /// The directory to create (it may exist if it is empty).
    dir: PathBuf,
    /// The language of the project.
    #[arg(long, value_enum, default_value_t = Lang::Rust)]
    lang: Lang,
    /// The crate's (or module's) name [default: the directory's name]
    #[arg(long, value_name = "NAME")]
    name: Option<String>,
    /// The `guest-sdk/` directory of a wasq checkout, for the Rust crate's
    /// dependency [default: the checkout this `wasq` was built from]
    #[arg(long, value_name = "DIR")]
    sdk: Option<PathBuf>,
}

impl NewCommand {
    /// Runs the command.
    pub async fn run(self) -> anyhow::Result<ExitCode> {
        if self.lang == Lang::C && self.sdk.is_some() {
            return Err(UsageError(
                "--sdk is for Rust crates: a C project gets its own copy of wasq_guest.h".into(),
            )
            .into());
        }
        check_empty(&self.dir)?;
        let name = self.project_name()?;
        let lib = name.replace('-', "_");
        let (files, sdk) = match self.lang {
            Lang::Rust => (RUST_FILES, Some(self.sdk_dir()?)),
            Lang::C => (C_FILES, None),
        };
        let sdk = sdk.map(|p| toml_string(&p.to_string_lossy()));
        for (path, template) in files {
            let text = template
                .replace("{{name}}", &name)
                .replace("{{lib}}", &lib)
                .replace("{{sdk}}", sdk.as_deref().unwrap_or(""));
            let path = self.dir.join(path);
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent)
                    .with_context(|| format!("cannot create directory {}", parent.display()))?;
            }
            std::fs::write(&path, text)
                .with_context(|| format!("cannot write {}", path.display()))?;
        }
        let dir = shell_word(&self.dir.to_string_lossy());
        match self.lang {
            Lang::Rust => {
                println!("created {dir}: a Rust task crate `{name}` with the task `hello`");
                println!("  cd {dir} && cargo build --release");
                println!("  wasq exec target/{RUST_TARGET}/release/{lib}.wasm hello '[\"Ada\"]'");
                if !rust_target_installed() {
                    eprintln!(
                        "note: the Rust target {RUST_TARGET} is not installed; \
                         install it with `rustup target add {RUST_TARGET}`"
                    );
                }
            }
            Lang::C => {
                println!("created {dir}: a C task module `{name}` with the task `hello`");
                println!("  cd {dir} && make");
                println!("  wasq exec {name}.wasm hello '[\"Ada\"]'");
                if !on_path("clang") {
                    eprintln!(
                        "note: clang is not on PATH; install clang and lld \
                         (Debian: apt-get install clang lld)"
                    );
                }
            }
        }
        Ok(ExitCode::SUCCESS)
    }

    /// `--name`, or the directory's last component, as a package name.
    fn project_name(&self) -> anyhow::Result<String> {
        let name = match &self.name {
            Some(name) => name.clone(),
            None => {
                let dir = std::path::absolute(&self.dir)
                    .with_context(|| format!("cannot resolve {}", self.dir.display()))?;
                let last = dir.components().next_back().and_then(|c| match c {
                    std::path::Component::Normal(s) => Some(s.to_string_lossy().into_owned()),
                    _ => None,
                });
                last.ok_or_else(|| {
                    UsageError(format!(
                        "cannot name a project after {}: pass --name NAME",
                        self.dir.display()
                    ))
                })?
            }
        };
        check_name(&name)?;
        Ok(name)
    }

    /// The SDK directory, absolute, checked to hold `wasq-guest`.
    fn sdk_dir(&self) -> anyhow::Result<PathBuf> {
        let (dir, how) = match &self.sdk {
            Some(dir) => (dir.clone(), "--sdk"),
            None => (PathBuf::from(DEFAULT_SDK), "the built-in default"),
        };
        let manifest = std::fs::read_to_string(dir.join("Cargo.toml")).unwrap_or_default();
        if !manifest.contains("name = \"wasq-guest\"") {
            return Err(UsageError(format!(
                "{} ({how}) is not wasq's guest SDK (no Cargo.toml of `wasq-guest` there): \
                 pass --sdk DIR, the guest-sdk directory of a wasq checkout",
                dir.display()
            ))
            .into());
        }
        dir.canonicalize()
            .with_context(|| format!("cannot resolve {}", dir.display()))
    }
}

/// A name cargo accepts for a package whose library is the module: ASCII
/// letters, digits, `-` and `_`, starting with a letter, not a name the
/// compiler reserves.
fn check_name(name: &str) -> Result<(), UsageError> {
    const RESERVED: &[&str] = &[
        "test",
        "std",
        "core",
        "alloc",
        "proc_macro",
        "self",
        "super",
        "crate",
        "fn",
        "mod",
        "struct",
        "type",
        "use",
        "let",
        "match",
        "impl",
        "async",
        "await",
    ];
    let ok = name.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        && !RESERVED.contains(&name.replace('-', "_").as_str());
    if ok {
        Ok(())
    } else {
        Err(UsageError(format!(
            "{name:?} cannot name a task project: use ASCII letters, digits, - and _, \
             starting with a letter, and not a Rust keyword (pass --name NAME)"
        )))
    }
}

/// Refuses a path that is a file or a non-empty directory.
fn check_empty(dir: &Path) -> anyhow::Result<()> {
    match std::fs::read_dir(dir) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                return Err(UsageError(format!(
                    "{} exists and is not empty: choose a new directory",
                    dir.display()
                ))
                .into());
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(_) if dir.exists() => Err(UsageError(format!(
            "{} exists and is not a directory: choose a new directory",
            dir.display()
        ))
        .into()),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", dir.display())),
    }
}

/// `s` as a TOML basic string, quotes included.
fn toml_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// `s` as one word for a POSIX shell: as it is when that is safe, else in
/// single quotes.
fn shell_word(s: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "_-./+:@".contains(c);
    if !s.is_empty() && s.chars().all(plain) {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// Whether `rustc` has the wasm target; `true` when that cannot be told
/// (no `rustc` on PATH says nothing about the toolchain cargo will use).
fn rust_target_installed() -> bool {
    let Ok(out) = std::process::Command::new("rustc")
        .args(["--print", "sysroot"])
        .output()
    else {
        return true;
    };
    let sysroot = String::from_utf8_lossy(&out.stdout).trim().to_string();
    !out.status.success()
        || Path::new(&sysroot)
            .join("lib/rustlib")
            .join(RUST_TARGET)
            .is_dir()
}

/// Whether `program` is an executable file in a directory of `PATH`.
fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|d| d.join(program).is_file()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_cargo_accepts() {
        for ok in ["hello", "my-task", "t_2"] {
            assert!(check_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "2fast", "a b", "test", "héllo", "-x", "self"] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn directories_are_quoted_for_the_shell() {
        assert_eq!(shell_word("tasks/hello-1"), "tasks/hello-1");
        assert_eq!(shell_word("9 lives"), "'9 lives'");
        assert_eq!(shell_word("it's"), r"'it'\''s'");
    }

    #[test]
    fn toml_strings_are_escaped() {
        assert_eq!(toml_string(r#"/a "b"\c"#), r#""/a \"b\"\\c""#);
    }

    #[test]
    fn the_default_sdk_is_this_checkout() {
        let manifest = std::fs::read_to_string(Path::new(DEFAULT_SDK).join("Cargo.toml")).unwrap();
        assert!(manifest.contains("name = \"wasq-guest\""));
    }
}
