//! Sagas with automatic compensation and a lifecycle the compiler checks.
//!
//! A saga is a sequence of steps, each with an action and a compensation
//! that undoes it. The steps run in order. When one fails for good, the
//! compensations of the steps that took effect run newest first, so the
//! system ends either with every effect in place or with none.
//!
//! - [`saga!`] declares a saga's steps: each is a type implementing
//!   [`Step`], whose action returns an output or a [`StepError`] saying
//!   whether to retry.
//! - [`Saga<D, S>`](Saga) is one saga in state `S`: [`Pending`],
//!   [`Running`], [`Succeeded`], [`Failed`], [`Compensating`] or
//!   [`Compensated`]. A transition consumes the saga, and a transition the
//!   state does not have is a compile error.
//! - [`RetryPolicy`] sets attempts, backoff and per-attempt timeouts, for
//!   the saga and per step.
//! - [`SagaLog`] receives every transition and attempt before the
//!   orchestrator acts on it; [`MemoryLog`] keeps them in memory.
//!
//! # Example
//!
//! ```
//! use std::sync::Arc;
//! use std::sync::atomic::{AtomicI64, Ordering};
//!
//! use typed_saga::{CompensationOutcome, RunOutcome, Saga, Step, StepContext, StepError};
//!
//! /// The balance the saga moves money out of.
//! pub struct Bank {
//!     balance: AtomicI64,
//! }
//!
//! #[derive(Default)]
//! struct Withdraw;
//!
//! impl Step<Transfer> for Withdraw {
//!     type Output = i64;
//!
//!     async fn execute(&self, cx: &StepContext<'_, Transfer>) -> Result<i64, StepError> {
//!         let amount = *cx.input();
//!         cx.context().balance.fetch_sub(amount, Ordering::SeqCst);
//!         Ok(amount)
//!     }
//!
//!     async fn compensate(
//!         &self,
//!         cx: &StepContext<'_, Transfer>,
//!         withdrawn: Option<i64>,
//!     ) -> Result<(), StepError> {
//!         let amount = withdrawn.unwrap_or(*cx.input());
//!         cx.context().balance.fetch_add(amount, Ordering::SeqCst);
//!         Ok(())
//!     }
//! }
//!
//! #[derive(Default)]
//! struct Deposit;
//!
//! impl Step<Transfer> for Deposit {
//!     type Output = ();
//!
//!     async fn execute(&self, _: &StepContext<'_, Transfer>) -> Result<(), StepError> {
//!         Err(StepError::permanent("the receiving account is closed"))
//!     }
//!
//!     async fn compensate(&self, _: &StepContext<'_, Transfer>, _: Option<()>) -> Result<(), StepError> {
//!         Ok(())
//!     }
//! }
//!
//! typed_saga::saga! {
//!     /// Moves an amount from one account to another.
//!     pub saga Transfer {
//!         input: i64,
//!         context: Bank,
//!         step_enum: TransferStep,
//!         kind_enum: TransferStepKind,
//!         steps: [
//!             withdraw => Withdraw,
//!             deposit => Deposit,
//!         ],
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), typed_saga::SagaError> {
//! let bank = Arc::new(Bank { balance: AtomicI64::new(100) });
//! let saga = Saga::<Transfer, _>::new(30, bank.clone()).start();
//!
//! let RunOutcome::Failed(failed) = saga.run().await? else {
//!     panic!("the deposit should fail");
//! };
//! assert_eq!(failed.remaining_compensations(), [TransferStepKind::Withdraw]);
//! assert_eq!(bank.balance.load(Ordering::SeqCst), 70);
//!
//! let CompensationOutcome::Compensated(_) = failed.compensate().run().await? else {
//!     panic!("the withdrawal should be undone");
//! };
//! assert_eq!(bank.balance.load(Ordering::SeqCst), 100);
//! # Ok(())
//! # }
//! ```

mod history;
mod id;
mod log;
mod macros;
mod orchestrator;
mod recovery;
mod retry;
mod rpc;
mod saga;
#[cfg(feature = "sqlite")]
mod sqlite_log;
mod state;
mod step;
mod step_error;

pub use history::StepFailure;
pub use id::{InvalidSagaId, SagaId};
pub use log::{LogError, LogFuture, MemoryLog, SagaEvent, SagaEventKind, SagaLog};
#[doc(hidden)]
pub use macros::__private;
pub use recovery::{LoadedSaga, Recovered, Recovery, drive_to_end};
pub use retry::{Backoff, RetryPolicy};
pub use rpc::{StepAction, StepReply, StepRequest, idempotency_key};
pub use saga::{CompensationOutcome, RunOutcome, Saga, SagaError, SagaOutcome};
#[cfg(feature = "sqlite")]
pub use sqlite_log::{SagaSummary, SqliteSagaLog, schema_version};
pub use state::{
    Compensated, Compensating, Failed, Pending, Running, SagaState, SagaStatus, Succeeded,
    UnknownSagaStatus,
};
pub use step::{SagaDefinition, Step, StepContext, StepKind, StepOf, UnknownStepKind};
pub use step_error::StepError;

#[cfg(feature = "amqp")]
pub mod amqp;

/// Compiles the README's example as a doctest, so it cannot drift from the
/// API.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
