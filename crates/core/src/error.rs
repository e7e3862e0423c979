//! The error every core operation returns; front-ends map each kind to their own status and shape.

use thiserror::Error;

/// What went wrong, in terms a client can act on. Messages never carry host paths or secrets.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum CoreError {
    /// A request field failed validation. `field` is the JSON field name as the client sent it.
    #[error("{field}: {message}")]
    InvalidArgument { field: String, message: String },
    /// The named resource does not exist (or is not visible to the caller).
    #[error("{kind} {id} not found")]
    NotFound { kind: &'static str, id: String },
    /// The resource exists in a state that forbids the operation, or a name is taken.
    #[error("{0}")]
    Conflict(String),
    /// The caller is authenticated but may not act on this org or project.
    #[error("{0}")]
    Forbidden(String),
    /// The caller's org reached its quota.
    #[error("{0}")]
    QuotaExceeded(String),
    /// The node has no capacity left for the request.
    #[error("{0}")]
    Unavailable(String),
    /// Anything else; the message is safe to show, details go to the log.
    #[error("{0}")]
    Internal(String),
}

impl CoreError {
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        CoreError::InvalidArgument {
            field: field.into(),
            message: message.into(),
        }
    }

    pub fn not_found(kind: &'static str, id: impl Into<String>) -> Self {
        CoreError::NotFound {
            kind,
            id: id.into(),
        }
    }
}
