//! Safe wrappers around the `wasq` imports of ABI v1.
//!
//! `#[task]` uses these for you; call them directly only for what the attribute
//! does not cover, such as a `()`-returning task that sets its result bytes itself.
//!
//! On `wasm32` each function calls the import of the same name. On other targets
//! there is no host, and the functions are stand-ins so that task crates build
//! and test natively: [`input`] is empty, [`output`] discards its bytes, and
//! [`fail`], [`bad_input`] and [`log`] write one line to stderr.

use crate::log::Level;

/// The raw imports. Every pointer/length pair must lie inside linear memory;
/// a pair that does not traps the guest (the host checks, never trusts).
#[cfg(target_family = "wasm")]
#[allow(unsafe_code)]
mod sys {
    // `usize` and pointers are `i32` on wasm32, which is what the ABI specifies.
    #[link(wasm_import_module = "wasq")]
    unsafe extern "C" {
        pub safe fn input_len() -> usize;
        pub fn input_read(ptr: *mut u8);
        pub fn output(ptr: *const u8, len: usize);
        pub fn fail(ptr: *const u8, len: usize);
        pub fn bad_input(ptr: *const u8, len: usize);
        pub fn log(level: i32, ptr: *const u8, len: usize);
    }
}

/// The call's input: its arguments as the bytes of a JSON array, `[4, 5]`.
///
/// Reads the whole input into a fresh buffer; call it once per call.
#[cfg(target_family = "wasm")]
#[allow(unsafe_code)]
pub fn input() -> Vec<u8> {
    let len = sys::input_len();
    let mut buf = Vec::<u8>::with_capacity(len);
    // SAFETY: `buf` has room for `len` bytes, and `input_read` writes exactly
    // `input_len()` bytes at the pointer, initialising them, before `set_len`.
    unsafe {
        sys::input_read(buf.as_mut_ptr());
        buf.set_len(len);
    }
    buf
}

/// Sets the call's result to these bytes, which must be one JSON value; a later
/// call replaces them.
#[cfg(target_family = "wasm")]
#[allow(unsafe_code)]
pub fn output(bytes: &[u8]) {
    // SAFETY: the pointer and length describe a live slice; the host only reads it.
    unsafe { sys::output(bytes.as_ptr(), bytes.len()) }
}

/// Fails the call with error kind `task_error` and this message.
///
/// The task should return soon after (or panic): the host keeps the failure
/// whatever the task does next.
#[cfg(target_family = "wasm")]
#[allow(unsafe_code)]
pub fn fail(message: &str) {
    // SAFETY: the pointer and length describe a live slice; the host only reads it.
    unsafe { sys::fail(message.as_ptr(), message.len()) }
}

/// Fails the call with error kind `bad_input` (the caller's mistake, never
/// retried) and this message. This is the ABI v1 extension `bad_input`.
#[cfg(target_family = "wasm")]
#[allow(unsafe_code)]
pub fn bad_input(message: &str) {
    // SAFETY: the pointer and length describe a live slice; the host only reads it.
    unsafe { sys::bad_input(message.as_ptr(), message.len()) }
}

/// Sends one log line; the [`log`](crate::log) macros format and call this.
#[cfg(target_family = "wasm")]
#[allow(unsafe_code)]
pub fn log(level: Level, message: &str) {
    // SAFETY: the pointer and length describe a live slice; the host only reads it.
    unsafe { sys::log(level as i32, message.as_ptr(), message.len()) }
}

/// The call's input; natively there is no host and it is empty.
#[cfg(not(target_family = "wasm"))]
pub fn input() -> Vec<u8> {
    Vec::new()
}

/// Sets the call's result; natively there is no host and the bytes are discarded.
#[cfg(not(target_family = "wasm"))]
pub fn output(bytes: &[u8]) {
    let _ = bytes;
}

/// Fails the call with kind `task_error`; natively it prints the message to stderr.
#[cfg(not(target_family = "wasm"))]
pub fn fail(message: &str) {
    eprintln!("[wasq fail] {message}");
}

/// Fails the call with kind `bad_input`; natively it prints the message to stderr.
#[cfg(not(target_family = "wasm"))]
pub fn bad_input(message: &str) {
    eprintln!("[wasq bad_input] {message}");
}

/// Sends one log line; natively it prints `[LEVEL] message` to stderr.
#[cfg(not(target_family = "wasm"))]
pub fn log(level: Level, message: &str) {
    eprintln!("[{level}] {message}");
}
