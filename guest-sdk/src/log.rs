//! Log lines from a task to the host.
//!
//! ```
//! use wasq_guest::log::{debug, info, warn};
//!
//! let name = "report.txt";
//! info!("processing {name}");
//! debug!("{} bytes", 1234);
//! warn!("no text in {name:?}");
//! ```
//!
//! Each macro call is one line at its [`Level`]. The host returns the lines with
//! the result (`"logs": [{"level": 2, "message": "processing report.txt"}]`), in
//! order, up to the call's log limit (64 KiB by default); a guest that logs past it
//! fails with kind `output_limit`. There is no filtering in the guest: the host
//! keeps every level. A message without format arguments is sent without
//! allocating.
//!
//! On native targets (unit tests) the lines go to stderr as `[level] message`.

use std::fmt;

/// How important a log line is; the number is what the ABI's `log` import takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(i32)]
pub enum Level {
    /// Step-by-step detail (0).
    Trace = 0,
    /// Detail useful when debugging (1).
    Debug = 1,
    /// Normal progress (2).
    Info = 2,
    /// Something unexpected that the task recovered from (3).
    Warn = 3,
    /// Something failed (4).
    Error = 4,
}

impl Level {
    /// The lowercase name: `"trace"` … `"error"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Trace => "trace",
            Level::Debug => "debug",
            Level::Info => "info",
            Level::Warn => "warn",
            Level::Error => "error",
        }
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Sends one formatted line at `level`; the macros expand to this.
pub fn write(level: Level, args: fmt::Arguments<'_>) {
    match args.as_str() {
        Some(text) => crate::abi::log(level, text),
        None => crate::abi::log(level, &args.to_string()),
    }
}

/// Logs a line at [`Level::Trace`]; formats like [`format!`].
#[doc(hidden)]
#[macro_export]
macro_rules! __wasq_log_trace {
    ($($arg:tt)+) => {
        $crate::log::write($crate::log::Level::Trace, ::core::format_args!($($arg)+))
    };
}

/// Logs a line at [`Level::Debug`]; formats like [`format!`].
#[doc(hidden)]
#[macro_export]
macro_rules! __wasq_log_debug {
    ($($arg:tt)+) => {
        $crate::log::write($crate::log::Level::Debug, ::core::format_args!($($arg)+))
    };
}

/// Logs a line at [`Level::Info`]; formats like [`format!`].
#[doc(hidden)]
#[macro_export]
macro_rules! __wasq_log_info {
    ($($arg:tt)+) => {
        $crate::log::write($crate::log::Level::Info, ::core::format_args!($($arg)+))
    };
}

/// Logs a line at [`Level::Warn`]; formats like [`format!`].
#[doc(hidden)]
#[macro_export]
macro_rules! __wasq_log_warn {
    ($($arg:tt)+) => {
        $crate::log::write($crate::log::Level::Warn, ::core::format_args!($($arg)+))
    };
}

/// Logs a line at [`Level::Error`]; formats like [`format!`].
#[doc(hidden)]
#[macro_export]
macro_rules! __wasq_log_error {
    ($($arg:tt)+) => {
        $crate::log::write($crate::log::Level::Error, ::core::format_args!($($arg)+))
    };
}

#[doc(inline)]
pub use crate::__wasq_log_debug as debug;
#[doc(inline)]
pub use crate::__wasq_log_error as error;
#[doc(inline)]
pub use crate::__wasq_log_info as info;
#[doc(inline)]
pub use crate::__wasq_log_trace as trace;
#[doc(inline)]
pub use crate::__wasq_log_warn as warn;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_match_the_abi_numbers() {
        let all = [
            Level::Trace,
            Level::Debug,
            Level::Info,
            Level::Warn,
            Level::Error,
        ];
        for (n, level) in all.into_iter().enumerate() {
            assert_eq!(level as i32, n as i32);
        }
        assert_eq!(Level::Warn.to_string(), "warn");
    }

    #[test]
    fn macros_accept_format_syntax() {
        let x = 3;
        trace!("static");
        debug!("x = {x}");
        info!("{} + {} = {}", 1, 2, 1 + 2);
        warn!("{x:>4}");
        error!("trailing comma {}", x,);
    }
}
