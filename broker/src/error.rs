//! The broker's error type.

/// What can go wrong talking to a broker.
///
/// Callers decide with [`Error::is_transient`]: only [`Error::Unavailable`] is
/// worth retrying as is. Everything else needs a different request, different
/// configuration, or an operator's look at the data.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The backend could not be reached or answered with an I/O error. Worth
    /// retrying after a backoff: nothing was lost.
    #[error("broker unreachable: {0}")]
    Unavailable(String),
    /// A module is larger than the broker accepts.
    #[error("module is {size} bytes, over the limit of {limit}")]
    ModuleTooLarge {
        /// Its size.
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// No module with that hash or name is stored.
    #[error("no module {0} is stored")]
    ModuleNotFound(String),
    /// A name or queue name that keys cannot carry.
    #[error("invalid name {0:?}: use 1-128 of [A-Za-z0-9_.-]")]
    InvalidName(String),
    /// No call with that id is known (never submitted, or its result expired).
    #[error("unknown call id {0}")]
    UnknownCall(String),
    /// Data read back from the backend is not what wasq wrote.
    #[error("malformed data in broker: {0}")]
    Malformed(String),
    /// A call that cannot be submitted as given: args that are not a JSON
    /// array, an invalid task name or call id. Fix the call; retrying the
    /// same one fails the same way.
    #[error("invalid call: {0}")]
    InvalidCall(String),
    /// An argument that is malformed (an entry id that is not one, a rate
    /// that cannot be enforced). Fix the request.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The backend refused the request for a reason that retrying will not
    /// fix: bad credentials, missing ACL permissions, an invalid URL, a script
    /// error. The message says which.
    #[error("broker error: {0}")]
    Backend(String),
}

impl Error {
    /// Whether retrying the same operation later may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, Error::Unavailable(_))
    }
}

/// `Result` with the broker's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
