use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;

use serde_json::Value;

use crate::history::{History, StepFailure};
use crate::step::decode_output;
use crate::{
    Compensated, Compensating, Failed, MemoryLog, Pending, RetryPolicy, Running, SagaDefinition,
    SagaId, SagaLog, SagaState, SagaStatus, StepError, StepOf, Succeeded,
};

/// One saga of definition `D`, in lifecycle state `S`.
///
/// Each transition takes the saga by value and returns it in its new state,
/// so a method that the current state lacks does not compile, and neither
/// does using a saga after it moved on:
///
/// | from | method | to |
/// |---|---|---|
/// | [`Pending`] | [`start`](Saga::start) | [`Running`] |
/// | [`Running`] | [`run`](Saga::run) | [`Succeeded`], or [`Failed`] when a step failed for good |
/// | [`Failed`] | [`compensate`](Saga::compensate) | [`Compensating`] |
/// | [`Compensating`] | [`run`](Saga::run-1) | [`Compensated`], or [`Failed`] when a compensation failed for good |
pub struct Saga<D: SagaDefinition, S: SagaState> {
    pub(crate) core: Box<SagaCore<D>>,
    state: PhantomData<S>,
}

/// The data a saga carries from state to state.
pub(crate) struct SagaCore<D: SagaDefinition> {
    pub(crate) id: SagaId,
    pub(crate) input: D::Input,
    pub(crate) context: Arc<D::Context>,
    pub(crate) log: Arc<dyn SagaLog>,
    pub(crate) retry_policy: RetryPolicy,
    /// `None` until set: compensations then use the values of
    /// `retry_policy`, with a budget of attempts of their own.
    pub(crate) compensation_policy: Option<RetryPolicy>,
    pub(crate) span: tracing::Span,
    pub(crate) history: History<D>,
}

/// The result of [`Saga::run`] on a running saga.
#[derive(Debug)]
pub enum RunOutcome<D: SagaDefinition> {
    /// Every step took effect.
    Succeeded(Saga<D, Succeeded>),
    /// A step failed for good; compensate the saga to undo the others.
    Failed(Saga<D, Failed>),
}

/// The result of [`Saga::run`] on a compensating saga.
#[derive(Debug)]
pub enum CompensationOutcome<D: SagaDefinition> {
    /// Every effect was undone.
    Compensated(Saga<D, Compensated>),
    /// A compensation failed for good; the saga lists what remains, and
    /// compensating it again resumes with those steps.
    Failed(Saga<D, Failed>),
}

/// The result of [`Saga::run_to_end`].
#[derive(Debug)]
pub enum SagaOutcome<D: SagaDefinition> {
    /// Every step took effect.
    Succeeded(Saga<D, Succeeded>),
    /// A step failed for good and every effect was undone.
    Compensated(Saga<D, Compensated>),
    /// A step failed for good and so did a compensation; some effects remain.
    Failed(Saga<D, Failed>),
}

impl<D: SagaDefinition> SagaOutcome<D> {
    /// Returns the saga's final status.
    pub fn status(&self) -> SagaStatus {
        match self {
            Self::Succeeded(_) => SagaStatus::Succeeded,
            Self::Compensated(_) => SagaStatus::Compensated,
            Self::Failed(_) => SagaStatus::Failed,
        }
    }

    /// Returns the saga's id.
    pub fn id(&self) -> SagaId {
        match self {
            Self::Succeeded(saga) => saga.id(),
            Self::Compensated(saga) => saga.id(),
            Self::Failed(saga) => saga.id(),
        }
    }
}

/// A saga that stopped because its log or its history failed.
#[derive(Debug, thiserror::Error)]
pub enum SagaError {
    /// An event could not be stored. The saga stopped before acting on it;
    /// resuming it from the log continues from its last stored event.
    #[error(
        "saga {saga_id}: the saga log did not store an event, so the saga stopped before acting on it"
    )]
    Log {
        /// The saga.
        saga_id: SagaId,
        /// The store's error.
        #[source]
        source: crate::LogError,
    },
    /// The saga's input could not be turned into JSON for the log.
    #[error("saga {saga_id}: cannot serialize its input to JSON: {source}")]
    Input {
        /// The saga.
        saga_id: SagaId,
        /// serde_json's error.
        #[source]
        source: serde_json::Error,
    },
    /// A stored history does not describe a valid run of this saga.
    #[error("saga {saga_id}: invalid history at event {sequence}: {reason}")]
    History {
        /// The saga.
        saga_id: SagaId,
        /// The first event that does not fit.
        sequence: u64,
        /// The problem found.
        reason: String,
    },
    /// The log contains this saga under another definition.
    #[error("saga {saga_id} is a {found}, not a {expected}; load it with its own definition")]
    WrongDefinition {
        /// The saga.
        saga_id: SagaId,
        /// The definition name in its `created` event.
        found: String,
        /// The definition it was loaded as.
        expected: &'static str,
    },
    /// No saga with this id is in the log.
    #[error("saga {saga_id} not found in the saga log; list the log's sagas to find its id")]
    NotFound {
        /// The id searched for.
        saga_id: SagaId,
    },
}

impl<D: SagaDefinition, S: SagaState> Saga<D, S> {
    pub(crate) fn from_core(core: Box<SagaCore<D>>) -> Self {
        Self {
            core,
            state: PhantomData,
        }
    }

    fn into_state<T: SagaState>(self) -> Saga<D, T> {
        Saga::from_core(self.core)
    }

    /// Returns the saga's id.
    pub fn id(&self) -> SagaId {
        self.core.id
    }

    /// Returns the runtime value of `S`.
    pub fn status(&self) -> SagaStatus {
        S::STATUS
    }

    /// Returns the saga's input.
    pub fn input(&self) -> &D::Input {
        &self.core.input
    }

    /// Returns the steps the saga runs, in order.
    pub fn plan(&self) -> &[D::Kind] {
        &self.core.history.plan
    }

    /// Returns the output of step `T`.
    ///
    /// # Errors
    ///
    /// A permanent [`StepError`] when `T` has no output (it has not run, or
    /// its outcome is unknown) or the output does not decode.
    pub fn output<T: StepOf<D>>(&self) -> Result<T::Output, StepError> {
        match self.core.history.outputs.get(&T::KIND) {
            Some(value) => decode_output::<D, T::Output>(T::KIND, value),
            None => Err(StepError::permanent(format!(
                "saga {} has no output of step {}; it has not taken effect",
                self.core.id,
                T::KIND
            ))),
        }
    }

    /// Returns the raw JSON output of every step that took effect.
    pub fn outputs(&self) -> impl Iterator<Item = (D::Kind, &Value)> {
        self.core
            .history
            .plan
            .iter()
            .filter_map(|kind| Some((*kind, self.core.history.outputs.get(kind)?)))
    }
}

impl<D: SagaDefinition, S: SagaState> fmt::Debug for Saga<D, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Saga")
            .field("saga", &D::NAME)
            .field("id", &self.core.id)
            .field("status", &S::STATUS)
            .finish_non_exhaustive()
    }
}

impl<D: SagaDefinition> Saga<D, Pending> {
    /// Builds a saga with a random id, an in-memory log and the default
    /// retry policies.
    pub fn new(input: D::Input, context: Arc<D::Context>) -> Self {
        let id = SagaId::random();
        let plan = D::plan(&input);
        Self::from_core(Box::new(SagaCore {
            id,
            input,
            context,
            log: Arc::new(MemoryLog::new()),
            retry_policy: RetryPolicy::default(),
            compensation_policy: None,
            span: saga_span::<D>(id),
            history: History::new(plan),
        }))
    }

    /// Sets the saga's id, which is also the prefix of its idempotency keys.
    pub fn with_id(mut self, id: SagaId) -> Self {
        self.core.id = id;
        self.core.span = saga_span::<D>(id);
        self
    }

    /// Sets where the saga's history goes.
    pub fn with_log(mut self, log: Arc<dyn SagaLog>) -> Self {
        self.core.log = log;
        self
    }

    /// Sets the policy of every action whose step does not override it.
    pub fn with_retry_policy(mut self, policy: RetryPolicy) -> Self {
        self.core.retry_policy = policy;
        self
    }

    /// Sets the policy of every compensation whose step does not override it.
    /// Without it, compensations use the saga's retry policy, counting their
    /// attempts separately from the actions'.
    pub fn with_compensation_policy(mut self, policy: RetryPolicy) -> Self {
        self.core.compensation_policy = Some(policy);
        self
    }

    /// Starts the saga. Nothing is logged or executed until
    /// [`run`](Saga::run).
    pub fn start(self) -> Saga<D, Running> {
        self.into_state()
    }

    /// Runs the saga and, when a step fails for good, compensates it.
    ///
    /// # Errors
    ///
    /// [`SagaError`] when the log fails; the saga stops before acting on the
    /// event it could not store.
    pub async fn run_to_end(self) -> Result<SagaOutcome<D>, SagaError> {
        match self.start().run().await? {
            RunOutcome::Succeeded(saga) => Ok(SagaOutcome::Succeeded(saga)),
            RunOutcome::Failed(saga) => match saga.compensate().run().await? {
                CompensationOutcome::Compensated(saga) => Ok(SagaOutcome::Compensated(saga)),
                CompensationOutcome::Failed(saga) => Ok(SagaOutcome::Failed(saga)),
            },
        }
    }
}

impl<D: SagaDefinition> Saga<D, Running> {
    /// Executes the remaining steps in order, each with its retry policy.
    ///
    /// # Errors
    ///
    /// [`SagaError`] when the log fails.
    pub async fn run(mut self) -> Result<RunOutcome<D>, SagaError> {
        let succeeded = self.core.execute_steps().await?;
        Ok(if succeeded {
            RunOutcome::Succeeded(self.into_state())
        } else {
            RunOutcome::Failed(self.into_state())
        })
    }
}

impl<D: SagaDefinition> Saga<D, Failed> {
    /// Starts undoing the steps listed by
    /// [`remaining_compensations`](Saga::remaining_compensations).
    pub fn compensate(self) -> Saga<D, Compensating> {
        self.into_state()
    }

    /// Returns the steps whose effects may remain, newest first: the steps
    /// that [`compensate`](Saga::compensate) will undo.
    pub fn remaining_compensations(&self) -> &[D::Kind] {
        &self.core.history.remaining
    }

    /// Returns the step whose action or compensation failed for good.
    pub fn failure(&self) -> Option<&StepFailure<D::Kind>> {
        self.core.history.failure.as_ref()
    }
}

impl<D: SagaDefinition> Saga<D, Compensating> {
    /// Compensates the remaining steps, newest first, each with its
    /// compensation policy.
    ///
    /// # Errors
    ///
    /// [`SagaError`] when the log fails.
    pub async fn run(mut self) -> Result<CompensationOutcome<D>, SagaError> {
        let compensated = self.core.compensate_steps().await?;
        Ok(if compensated {
            CompensationOutcome::Compensated(self.into_state())
        } else {
            CompensationOutcome::Failed(self.into_state())
        })
    }
}

pub(crate) fn saga_span<D: SagaDefinition>(id: SagaId) -> tracing::Span {
    tracing::info_span!("saga", saga_id = %id, saga = D::NAME)
}
