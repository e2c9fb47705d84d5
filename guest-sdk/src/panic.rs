//! Reporting panics through the ABI's `fail`.
//!
//! On wasm32 a panic aborts, which the host sees as an `unreachable` trap with no
//! message. The hook installed here first calls `fail` with the panic's message
//! and location, so the call fails as a `task_error` that says what went wrong.

use std::panic::PanicHookInfo;
use std::sync::Once;

/// Installs the hook, once per instance; the first task call does it. It replaces
/// any hook installed before: a task that wants its own should install it inside
/// the task function, after this.
pub(crate) fn install_hook() {
    static INSTALLED: Once = Once::new();
    INSTALLED
        .call_once(|| std::panic::set_hook(Box::new(|info| crate::abi::fail(&describe(info)))));
}

/// `panicked at src/lib.rs:10:5: the message`, like std's default hook says it.
fn describe(info: &PanicHookInfo<'_>) -> String {
    let payload = info.payload();
    let message = match payload.downcast_ref::<&str>() {
        Some(text) => text,
        None => payload
            .downcast_ref::<String>()
            .map_or("Box<dyn Any>", String::as_str),
    };
    match info.location() {
        Some(at) => format!(
            "panicked at {}:{}:{}: {message}",
            at.file(),
            at.line(),
            at.column()
        ),
        None => format!("panicked: {message}"),
    }
}
