use std::fmt;

use serde::{Deserialize, Serialize};

/// The reason an action or a compensation did not finish, which decides
/// what the orchestrator does next.
///
/// The variant decides the retry: transient errors and unknown outcomes are
/// retried with the same idempotency key, permanent errors never are.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(tag = "kind", content = "message", rename_all = "snake_case")]
pub enum StepError {
    /// The attempt failed without an effect, and a later attempt may succeed
    /// (a busy database, a service that is restarting).
    #[error("transient error: {0}")]
    Transient(String),
    /// The attempt failed without an effect, and repeating it cannot help
    /// (invalid input, a rule of the domain).
    #[error("permanent error: {0}")]
    Permanent(String),
    /// The effect may or may not have happened: the attempt timed out or the
    /// connection was lost after the request was sent.
    #[error("outcome unknown: {0}")]
    Unknown(String),
}

impl StepError {
    /// Builds a [`StepError::Transient`] from any message.
    pub fn transient(message: impl fmt::Display) -> Self {
        Self::Transient(message.to_string())
    }

    /// Builds a [`StepError::Permanent`] from any message.
    pub fn permanent(message: impl fmt::Display) -> Self {
        Self::Permanent(message.to_string())
    }

    /// Builds a [`StepError::Unknown`] from any message.
    pub fn unknown(message: impl fmt::Display) -> Self {
        Self::Unknown(message.to_string())
    }

    /// Returns the message without the kind.
    pub fn message(&self) -> &str {
        match self {
            Self::Transient(message) | Self::Permanent(message) | Self::Unknown(message) => message,
        }
    }

    /// Returns true when another attempt may succeed.
    pub fn is_retryable(&self) -> bool {
        !matches!(self, Self::Permanent(_))
    }
}
