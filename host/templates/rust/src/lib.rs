//! The tasks of {{name}}.wasm: every `#[task]` function is exported as
//! `task.NAME`; its arguments come from the call's JSON array and its return
//! value is the JSON result.

use wasq_guest::task;

/// `wasq exec {{lib}}.wasm hello '["Ada"]'` prints `"hello, Ada!"`.
#[task]
fn hello(name: String) -> String {
    wasq_guest::log::info!("greeting {name}");
    format!("hello, {name}!")
}

// Natively a task is a plain function:
// `cargo test --target x86_64-unknown-linux-gnu` (or your machine's triple).
#[cfg(test)]
mod tests {
    #[test]
    fn hello_greets_by_name() {
        assert_eq!(super::hello("Ada".into()), "hello, Ada!");
    }
}
