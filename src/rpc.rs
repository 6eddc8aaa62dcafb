//! The message shapes of a step executed as a remote call.
//!
//! A transport (AMQP, or an in-process channel in tests) carries a
//! [`StepRequest`] to a worker and a [`StepReply`] back. Both are plain JSON so
//! that a worker or a client can be written in another language.

use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::StepError;

/// The half of a step a request runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepAction {
    /// Apply the step's effect.
    Execute,
    /// Undo the step's effect, or do nothing when it never happened.
    Compensate,
}

impl fmt::Display for StepAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Execute => "execute",
            Self::Compensate => "compensate",
        })
    }
}

/// One call of a step's action or compensation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StepRequest {
    /// The saga the call belongs to.
    pub saga_id: String,
    /// The step's stable name, such as `provision_user`.
    pub step: String,
    /// Whether to apply or to undo the step.
    pub action: StepAction,
    /// `saga_id:step:action`, the same for every attempt and after a restart.
    /// A worker that has seen the key returns the first reply and changes
    /// nothing.
    pub idempotency_key: String,
    /// The step's arguments, as the saga's steps define them.
    pub payload: Value,
}

impl StepRequest {
    /// Builds a request whose idempotency key is derived from the saga id,
    /// the step name and the action.
    pub fn new(
        saga_id: impl Into<String>,
        step: impl Into<String>,
        action: StepAction,
        payload: Value,
    ) -> Self {
        let saga_id = saga_id.into();
        let step = step.into();
        let idempotency_key = idempotency_key(&saga_id, &step, action);
        Self {
            saga_id,
            step,
            action,
            idempotency_key,
            payload,
        }
    }
}

/// Builds the idempotency key of one step action of one saga.
pub fn idempotency_key(saga_id: &str, step: &str, action: StepAction) -> String {
    format!("{saga_id}:{step}:{action}")
}

/// A worker's reply to a [`StepRequest`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum StepReply {
    /// The action or compensation took effect (or had already).
    Ok {
        /// The step's output, `null` for a compensation.
        output: Value,
    },
    /// The action or compensation did not take effect.
    Error {
        /// The error, with its kind deciding whether the caller retries.
        #[serde(flatten)]
        error: StepError,
    },
}

impl From<Result<Value, StepError>> for StepReply {
    fn from(result: Result<Value, StepError>) -> Self {
        match result {
            Ok(output) => Self::Ok { output },
            Err(error) => Self::Error { error },
        }
    }
}

impl From<StepReply> for Result<Value, StepError> {
    fn from(reply: StepReply) -> Self {
        match reply {
            StepReply::Ok { output } => Ok(output),
            StepReply::Error { error } => Err(error),
        }
    }
}
