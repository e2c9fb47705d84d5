//! Compile-time errors of `#[task]` misuse: each `tests/ui/*.rs` fails with the
//! error in the `.stderr` beside it (`TRYBUILD=overwrite` regenerates them).

#[test]
fn ui() {
    let t = trybuild::TestCases::new();
    t.compile_fail("tests/ui/*.rs");
}
