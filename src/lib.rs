//! typed-saga (crate docs come with the core).

mod rpc;
mod step_error;

pub use rpc::{StepAction, StepReply, StepRequest, idempotency_key};
pub use step_error::StepError;

#[cfg(feature = "amqp")]
pub mod amqp;
