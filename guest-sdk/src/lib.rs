//! Write wasq tasks in Rust.
//!
//! A wasq task is a plain Rust function marked [`#[task]`](task), compiled to a
//! `wasm32-wasip1` `cdylib`. The attribute leaves the function as it is (so it is
//! callable and unit-testable natively) and adds a hidden export `task.<name>` that
//! speaks the guest side of wasq's ABI v1: it reads the call's arguments, decodes
//! them into the parameters, calls the function and reports what it returned.
//!
//! # How to write a task
//!
//! ```toml
//! # Cargo.toml of a task crate
//! [lib]
//! crate-type = ["cdylib"]
//!
//! [dependencies]
//! wasq-guest = { path = "../../guest-sdk" }
//! serde = { version = "1", features = ["derive"] }
//! ```
//!
//! ```
//! use serde::Serialize;
//! use wasq_guest::log::info;
//! use wasq_guest::task;
//!
//! /// `wasq exec tasks.wasm add '[4, 5]'` prints `9`.
//! #[task]
//! fn add(x: i64, y: i64) -> i64 {
//!     x + y
//! }
//!
//! #[derive(Serialize)]
//! struct Greeting {
//!     text: String,
//!     shout: bool,
//! }
//!
//! /// `greet '["Ada"]'` and `greet '["Ada", true]'` both work: a trailing
//! /// `Option` may be left out.
//! #[task]
//! fn greet(name: String, shout: Option<bool>) -> Result<Greeting, String> {
//!     if name.is_empty() {
//!         return Err("name must not be empty".into()); // fails with kind `task_error`
//!     }
//!     info!("greeting {name}");
//!     let shout = shout.unwrap_or(false);
//!     let text = format!("hello, {name}");
//!     let text = if shout { text.to_uppercase() } else { text };
//!     Ok(Greeting { text, shout })
//! }
//!
//! /// Exported as `task.ping` but named `health_check` in Rust.
//! #[task(name = "ping")]
//! fn health_check() {}
//!
//! // Natively the functions are ordinary Rust: test them with `cargo test`.
//! assert_eq!(add(2, 3), 5);
//! assert_eq!(greet("Ada".into(), None).unwrap().text, "hello, Ada");
//! assert!(greet(String::new(), None).is_err());
//! ```
//!
//! Build with `cargo build --release --target wasm32-wasip1` (the repository's
//! `scripts/build-tasks.sh` does this for `tasks/`; `wasq new DIR` writes a
//! crate that does it with plain `cargo build --release`). Release builds
//! should set `panic = "abort"`, and are best at `opt-level = 3` with
//! `lto = true`, `codegen-units = 1` and `strip = true`, as `tasks/Cargo.toml`
//! does: fuel counts instructions, so faster code is also cheaper code.
//! `opt-level = "s"` gives smaller modules that compile faster on a host
//! (`tasks/Cargo.toml`'s profile `small`).
//!
//! ## Arguments
//!
//! A call's arguments arrive as one JSON array, `[4, 5]`, and are decoded in order
//! into the parameters with [`serde::Deserialize`], so a parameter can be any
//! owned deserializable type: numbers, `bool`, `String`, `Vec<T>`, maps, your own
//! `#[derive(Deserialize)]` structs, [`serde_json::Value`]. Borrowed types (`&str`,
//! `&[T]`) are rejected at compile time: use `String` and `Vec<T>`.
//!
//! Trailing parameters whose type is written `Option<T>` may be omitted by the
//! caller, and are then `None`; an explicit `null` is `None` too. (The check is
//! syntactic: a type alias of `Option` is an ordinary, required parameter.)
//!
//! Arguments that do not fit fail the call with error kind `bad_input` and a message
//! naming the parameter, and the function is not called:
//!
//! - `task add takes 2 arguments (x, y), got 3`
//! - `argument 2 (y): invalid type: string "a", expected i64`
//! - `task arguments must be a JSON array: invalid type: map, expected a sequence at line 1 column 0`
//!
//! ## Return values
//!
//! - any `T: Serialize` becomes the call's JSON result;
//! - a return type written `Result<T, E>` (any path whose last segment is `Result`,
//!   so `std::io::Result<T>` and `anyhow::Result<T>` count) returns `T` on `Ok`,
//!   and on `Err(e)` fails the call with kind `task_error` and message
//!   `e.to_string()` (`E: Display`). Callers may ask for retries of `task_error`s:
//!   say in the message whether trying again can help;
//! - `()`, or no return type, gives the result `null`. Such a task may set its
//!   result itself with [`abi::output`].
//!
//! A result that cannot be encoded as JSON (a map whose keys are neither strings
//! nor numbers) fails the call with kind `task_error`. Note that serde_json
//! encodes a non-finite float (`NaN`, `inf`) as `null`.
//!
//! ## Panics
//!
//! A panic in a task fails the call with kind `task_error` and the message
//! `panicked at src/lib.rs:10:5: <panic message>`: the first task call installs a
//! panic hook that reports the message through the ABI's `fail` before the abort
//! (a `wasm32` panic is `panic = "abort"`, which ends in an `unreachable` trap; the
//! host sees the earlier `fail` and reports the message rather than a bare `trap`).
//! Prefer returning `Err` for expected failures: a panic throws the instance away.
//!
//! ## Logging
//!
//! [`log::trace!`], [`log::debug!`], [`log::info!`], [`log::warn!`] and
//! [`log::error!`] format like [`format!`] and send one line to the host, which
//! returns the lines with the result (`"logs": [{"level": 2, "message": "…"}]`),
//! bounded by the call's log limit. Natively they print to stderr, so
//! `cargo test` shows them.
//!
//! ## The sandbox
//!
//! A task runs in a fresh WebAssembly instance per call, with limits on fuel
//! (instructions), memory, wall time and output size set by the host operator and
//! the caller. WASI is a closed room:
//!
//! - no files: there are no preopened directories, so `std::fs` fails with an
//!   error (it does not trap);
//! - no environment: `std::env::vars()` is empty and `std::env::args()` is
//!   `[<task name>]`;
//! - no network: `std::net` fails with an error;
//! - clocks (`std::time`), sleeping (`std::thread::sleep`, counted against the wall
//!   time limit) and randomness (`getrandom`, `HashMap`'s seeds) work;
//! - stdin is empty; stdout and stderr are captured, bounded, and returned with the
//!   result: `println!` is for debugging, the return value is the result.
//!
//! Nothing survives between calls: globals start fresh each time.
//!
//! # ABI v1 and the `bad_input` extension
//!
//! The module exports `memory` and one function `task.<name>` of type `[] -> []`
//! per task. (A Rust `cdylib` for `wasm32-wasip1` exports no `_initialize`: the
//! linker wraps each export so that static constructors run first. Hosts call
//! `_initialize` when a module has it.) It imports from `wasi_snapshot_preview1`
//! what the standard library uses, and from module `wasq` only what it uses of:
//!
//! | import | type | meaning |
//! | --- | --- | --- |
//! | `input_len` | `[] -> [i32]` | length in bytes of the input (the JSON array of arguments) |
//! | `input_read` | `[i32 ptr] -> []` | copy the whole input into memory at `ptr` |
//! | `output` | `[i32 ptr, i32 len] -> []` | set the result bytes (a later call replaces them) |
//! | `fail` | `[i32 ptr, i32 len] -> []` | fail the call with kind `task_error` and this UTF-8 message |
//! | `log` | `[i32 level, i32 ptr, i32 len] -> []` | one log line; level 0 trace … 4 error |
//! | `bad_input` | `[i32 ptr, i32 len] -> []` | **ABI v1 extension `bad_input`**: fail the call with kind `bad_input` and this UTF-8 message |
//!
//! **ABI v1 extension `bad_input`.** The guest calls `wasq.bad_input` when the
//! arguments do not match the task's parameters (wrong count, wrong types), so that
//! the caller sees kind `bad_input` (a mistake of the caller, never retried)
//! rather than `task_error` (a failure of the task, retried on request). It has the
//! same type and rules as `fail`; as with `fail`, a later `output` does not undo it.
//! Hosts that implement ABI v1 accept this import; every module built with this
//! SDK that has a task imports it.
//!
//! Modules written in other languages follow the same ABI: see [`abi`] for the
//! safe wrappers this crate builds on.
//!
//! # Layout
//!
//! - [`task`]: the attribute (from `wasq-guest-macros`).
//! - [`abi`]: safe wrappers around the `wasq` imports (stand-ins on native targets).
//! - [`log`]: log levels and the logging macros.
//! - `args`: decoding of the argument array against a parameter list.
//! - `panic`: the panic hook that reports panics through `fail`.
//! - `glue`: what the export generated by `#[task]` calls, re-exported hidden as
//!   `__private` (not a stable API).

// The glue generated by `#[task]` names `::wasq_guest`; this makes that path work
// inside this crate's own tests and doctests too.
extern crate self as wasq_guest;

pub mod abi;
mod args;
mod glue;
pub mod log;
mod panic;

pub use log::Level;
pub use serde;
pub use serde_json;

/// Marks a function as a wasq task; see the crate docs for the full story.
///
/// ```
/// use wasq_guest::task;
///
/// #[task]
/// fn add(x: i64, y: i64) -> i64 {
///     x + y
/// }
///
/// #[task(name = "hello")]
/// fn say_hello() -> &'static str {
///     "hello"
/// }
///
/// assert_eq!(add(2, 3), 5);
/// assert_eq!(say_hello(), "hello");
/// ```
pub use wasq_guest_macros::task;

/// What the code generated by `#[task]` calls. Not a public API: it changes
/// whenever the macro changes.
#[doc(hidden)]
pub mod __private {
    pub use crate::args::{Args, BadInput, TaskSpec};
    pub use crate::glue::{output_result, output_value, run};
}
