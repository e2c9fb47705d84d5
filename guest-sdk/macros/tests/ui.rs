//! Compile-time errors of `#[task]` misuse: each `tests/ui/*.rs` fails
//! with the error in the `.stderr` beside it (`TRYBUILD=overwrite` regenerates
//! them; review the diff).
//!
//! They live in this crate rather than `wasq-guest` because trybuild builds the
//! test crate's dev-dependencies too, and those of `wasq-guest` include wasmtime.

#[test]
fn ui() {
    let t = trybuild::TestCases::new();
    t.compile_fail("tests/ui/*.rs");
}
