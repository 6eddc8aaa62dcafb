use std::sync::Arc;

use tracing::{info, warn};

use crate::history::History;
use crate::saga::{SagaCore, saga_span};
use crate::{
    Compensated, Compensating, CompensationOutcome, Failed, LogError, Pending, RetryPolicy,
    RunOutcome, Running, Saga, SagaDefinition, SagaError, SagaEventKind, SagaId, SagaLog,
    SagaOutcome, SagaStatus, Succeeded,
};

/// A saga read back from its log, in the state its history ends in.
#[derive(Debug)]
pub enum LoadedSaga<D: SagaDefinition> {
    /// Created, but the process stopped before its first transition.
    Pending(Saga<D, Pending>),
    /// Executing steps; [`Saga::run`] continues with the step in flight.
    Running(Saga<D, Running>),
    /// Finished with every step in effect.
    Succeeded(Saga<D, Succeeded>),
    /// Stopped with effects remaining; [`Saga::compensate`] undoes them.
    Failed(Saga<D, Failed>),
    /// Undoing steps; [`Saga::run`] continues with the next compensation.
    Compensating(Saga<D, Compensating>),
    /// Finished with every effect undone.
    Compensated(Saga<D, Compensated>),
}

impl<D: SagaDefinition> LoadedSaga<D> {
    /// Returns the state the history ends in.
    pub fn status(&self) -> SagaStatus {
        match self {
            Self::Pending(_) => SagaStatus::Pending,
            Self::Running(_) => SagaStatus::Running,
            Self::Succeeded(_) => SagaStatus::Succeeded,
            Self::Failed(_) => SagaStatus::Failed,
            Self::Compensating(_) => SagaStatus::Compensating,
            Self::Compensated(_) => SagaStatus::Compensated,
        }
    }
}

/// Loads sagas of definition `D` from a log and drives unfinished ones to
/// an end.
///
/// The policies are not part of the log, so recovery applies its own; by
/// default the same as [`Saga::new`].
pub struct Recovery<D: SagaDefinition> {
    log: Arc<dyn SagaLog>,
    context: Arc<D::Context>,
    retry_policy: RetryPolicy,
    compensation_policy: Option<RetryPolicy>,
    resume_failed: bool,
}

/// The result of [`Recovery::recover_all`] for one saga.
#[derive(Debug)]
pub struct Recovered<D: SagaDefinition> {
    /// The saga's id.
    pub saga_id: SagaId,
    /// The state its log ended in before recovery, or `None` when the saga
    /// could not be loaded.
    pub found: Option<SagaStatus>,
    /// The saga's end, or the error that stopped it.
    pub outcome: Result<SagaOutcome<D>, SagaError>,
}

impl<D: SagaDefinition> Recovery<D> {
    /// Builds a recovery over `log`, giving resumed steps `context`.
    pub fn new(log: Arc<dyn SagaLog>, context: Arc<D::Context>) -> Self {
        Self {
            log,
            context,
            retry_policy: RetryPolicy::default(),
            compensation_policy: None,
            resume_failed: false,
        }
    }

    /// Sets the policy of resumed actions.
    pub fn with_retry_policy(mut self, policy: RetryPolicy) -> Self {
        self.retry_policy = policy;
        self
    }

    /// Sets the policy of resumed compensations.
    pub fn with_compensation_policy(mut self, policy: RetryPolicy) -> Self {
        self.compensation_policy = Some(policy);
        self
    }

    /// Makes [`recover_all`](Recovery::recover_all) also compensate sagas
    /// whose compensation failed for good. Off by default, because such a
    /// compensation usually needs a fix first. A saga that entered `FAILED`
    /// from `RUNNING` and stopped before compensating is compensated either
    /// way.
    pub fn resume_failed(mut self, resume: bool) -> Self {
        self.resume_failed = resume;
        self
    }

    /// Reads saga `id` from the log and returns it in its last state.
    ///
    /// # Errors
    ///
    /// [`SagaError::NotFound`] when the log has no such saga,
    /// [`SagaError::WrongDefinition`] when it is of another definition,
    /// [`SagaError::History`] when its history does not describe a valid run, and [`SagaError::Log`] when the log
    /// cannot be read.
    pub async fn load(&self, id: SagaId) -> Result<LoadedSaga<D>, SagaError> {
        let events = self
            .log
            .history(id)
            .await
            .map_err(|source| SagaError::Log {
                saga_id: id,
                source,
            })?;
        let Some(first) = events.first() else {
            return Err(SagaError::NotFound { saga_id: id });
        };
        let invalid = |sequence: u64, reason: String| SagaError::History {
            saga_id: id,
            sequence,
            reason,
        };

        let SagaEventKind::Created { saga, input, .. } = &first.kind else {
            return Err(invalid(
                first.sequence,
                "the first event is not `created`".to_owned(),
            ));
        };
        if saga != D::NAME {
            return Err(SagaError::WrongDefinition {
                saga_id: id,
                found: saga.clone(),
                expected: D::NAME,
            });
        }
        let input: D::Input = serde_json::from_value(input.clone()).map_err(|error| {
            invalid(
                first.sequence,
                format!("its input does not decode as {}'s input: {error}", D::NAME),
            )
        })?;

        let mut history = History::<D>::new(Vec::new());
        for event in &events {
            history
                .apply(event)
                .map_err(|error| invalid(error.sequence, error.reason))?;
        }

        let status = history.status;
        let core = Box::new(SagaCore {
            id,
            input,
            context: self.context.clone(),
            log: self.log.clone(),
            retry_policy: self.retry_policy.clone(),
            compensation_policy: self.compensation_policy.clone(),
            span: saga_span::<D>(id),
            history,
        });
        Ok(match status {
            SagaStatus::Pending => LoadedSaga::Pending(Saga::from_core(core)),
            SagaStatus::Running => LoadedSaga::Running(Saga::from_core(core)),
            SagaStatus::Succeeded => LoadedSaga::Succeeded(Saga::from_core(core)),
            SagaStatus::Failed => LoadedSaga::Failed(Saga::from_core(core)),
            SagaStatus::Compensating => LoadedSaga::Compensating(Saga::from_core(core)),
            SagaStatus::Compensated => LoadedSaga::Compensated(Saga::from_core(core)),
        })
    }

    /// Drives every unfinished saga of definition `D` to an end.
    ///
    /// A running saga continues, repeating its step in flight with the same
    /// idempotency key, and is compensated if a step fails for good. A
    /// compensating saga continues compensating. A failed saga whose
    /// compensations never ran is compensated; one whose compensation failed
    /// for good is compensated again only with
    /// [`resume_failed`](Recovery::resume_failed).
    /// Sagas of other definitions in the same log are left alone.
    ///
    /// # Errors
    ///
    /// [`LogError`] when the log cannot list its sagas. Errors of single
    /// sagas are in their [`Recovered::outcome`].
    pub async fn recover_all(&self) -> Result<Vec<Recovered<D>>, LogError> {
        let ids = self.log.unfinished().await?;

        let mut recovered = Vec::new();
        for id in ids {
            let loaded = match self.load(id).await {
                Ok(loaded) => loaded,
                Err(SagaError::WrongDefinition { .. }) => continue,
                Err(error) => {
                    warn!(saga_id = %id, %error, "cannot recover saga");
                    recovered.push(Recovered {
                        saga_id: id,
                        found: None,
                        outcome: Err(error),
                    });
                    continue;
                }
            };
            let found = loaded.status();
            if let LoadedSaga::Failed(saga) = &loaded {
                // A saga that failed and stopped before compensating has not
                // tried its compensations yet, so recovery starts them.
                if saga.core.history.compensation_gave_up && !self.resume_failed {
                    continue;
                }
            }
            info!(saga_id = %id, status = %found, "recovering saga");
            recovered.push(Recovered {
                saga_id: id,
                found: Some(found),
                outcome: drive_to_end(loaded).await,
            });
        }
        Ok(recovered)
    }
}

/// Runs a loaded saga until it succeeds, is compensated, or fails for good.
pub async fn drive_to_end<D: SagaDefinition>(
    loaded: LoadedSaga<D>,
) -> Result<SagaOutcome<D>, SagaError> {
    let failed = match loaded {
        LoadedSaga::Pending(saga) => return saga.run_to_end().await,
        LoadedSaga::Running(saga) => match saga.run().await? {
            RunOutcome::Succeeded(saga) => return Ok(SagaOutcome::Succeeded(saga)),
            RunOutcome::Failed(saga) => saga,
        },
        LoadedSaga::Succeeded(saga) => return Ok(SagaOutcome::Succeeded(saga)),
        LoadedSaga::Compensated(saga) => return Ok(SagaOutcome::Compensated(saga)),
        LoadedSaga::Failed(saga) => saga,
        LoadedSaga::Compensating(saga) => return compensation_outcome(saga.run().await?),
    };
    compensation_outcome(failed.compensate().run().await?)
}

fn compensation_outcome<D: SagaDefinition>(
    outcome: CompensationOutcome<D>,
) -> Result<SagaOutcome<D>, SagaError> {
    Ok(match outcome {
        CompensationOutcome::Compensated(saga) => SagaOutcome::Compensated(saga),
        CompensationOutcome::Failed(saga) => SagaOutcome::Failed(saga),
    })
}
