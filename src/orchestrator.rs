//! The loops that execute and compensate a saga's steps.

use std::any::Any;
use std::panic::AssertUnwindSafe;

use futures_util::FutureExt;
use tracing::{Instrument, error, info, warn};

use crate::log::now_ms;
use crate::saga::{SagaCore, SagaError};
use crate::step::StepContext;
use crate::{
    RetryPolicy, SagaDefinition, SagaEvent, SagaEventKind, SagaStatus, StepAction, StepError,
};

impl<D: SagaDefinition> SagaCore<D> {
    /// Executes the steps not yet done. Returns whether every step succeeded;
    /// otherwise the saga is `FAILED`.
    pub(crate) async fn execute_steps(&mut self) -> Result<bool, SagaError> {
        let span = self.span.clone();
        async {
            if !self.history.created {
                self.record_created().await?;
            }
            if self.history.status == SagaStatus::Pending {
                self.record_transition(SagaStatus::Running).await?;
            }

            while let Some(&kind) = self.history.plan.get(self.history.next_step) {
                if !self.execute_step(kind).await? {
                    self.record_transition(SagaStatus::Failed).await?;
                    warn!(
                        step = %kind,
                        remaining = ?self.history.remaining,
                        "saga failed; compensate it to undo the steps that took effect"
                    );
                    return Ok(false);
                }
            }

            self.record_transition(SagaStatus::Succeeded).await?;
            info!(steps = self.history.plan.len(), "saga succeeded");
            Ok(true)
        }
        .instrument(span)
        .await
    }

    /// Compensates the remaining steps, newest first. Returns whether every
    /// compensation succeeded; otherwise the saga is `FAILED` again.
    pub(crate) async fn compensate_steps(&mut self) -> Result<bool, SagaError> {
        let span = self.span.clone();
        async {
            if self.history.status == SagaStatus::Failed {
                self.record_transition(SagaStatus::Compensating).await?;
            }

            while let Some(&kind) = self.history.remaining.first() {
                if !self.compensate_step(kind).await? {
                    self.record_transition(SagaStatus::Failed).await?;
                    error!(
                        step = %kind,
                        remaining = ?self.history.remaining,
                        "saga failed: a compensation failed for good and effects remain; \
                         compensate it again once the step's service is fixed"
                    );
                    return Ok(false);
                }
            }

            self.record_transition(SagaStatus::Compensated).await?;
            warn!("saga compensated");
            Ok(true)
        }
        .instrument(span)
        .await
    }

    /// Runs the action of `kind` until it succeeds or its policy gives up.
    /// Returns whether it succeeded.
    async fn execute_step(&mut self, kind: D::Kind) -> Result<bool, SagaError> {
        let policy = D::retry_policy(kind).unwrap_or_else(|| self.retry_policy.clone());
        loop {
            if self.has_given_up(kind, StepAction::Execute) {
                return Ok(false);
            }
            let (attempt, repeated) = self.next_attempt(kind, StepAction::Execute);
            if !repeated {
                tokio::time::sleep(policy.delay_before(attempt)).await;
            }
            self.record_attempt_started(kind, StepAction::Execute, attempt)
                .await?;

            let cx = self.step_context(kind, StepAction::Execute, attempt);
            let result = with_timeout(&policy, D::execute(kind, &cx)).await;
            match result {
                Ok(output) => {
                    self.record(SagaEventKind::AttemptSucceeded {
                        step: kind.to_string(),
                        action: StepAction::Execute,
                        attempt,
                        output,
                    })
                    .await?;
                    return Ok(true);
                }
                Err(error) => {
                    self.record_attempt_failed(kind, StepAction::Execute, attempt, error, &policy)
                        .await?;
                }
            }
        }
    }

    /// Runs the compensation of `kind` until it succeeds or its policy gives
    /// up. Returns whether it succeeded.
    async fn compensate_step(&mut self, kind: D::Kind) -> Result<bool, SagaError> {
        let policy =
            D::compensation_policy(kind).unwrap_or_else(|| self.default_compensation_policy());
        loop {
            if self.has_given_up(kind, StepAction::Compensate) {
                return Ok(false);
            }
            let (attempt, repeated) = self.next_attempt(kind, StepAction::Compensate);
            if !repeated {
                tokio::time::sleep(policy.delay_before(attempt)).await;
            }
            self.record_attempt_started(kind, StepAction::Compensate, attempt)
                .await?;

            let cx = self.step_context(kind, StepAction::Compensate, attempt);
            let output = self.history.outputs.get(&kind);
            let result = with_timeout(&policy, D::compensate(kind, &cx, output)).await;
            match result {
                Ok(()) => {
                    self.record(SagaEventKind::AttemptSucceeded {
                        step: kind.to_string(),
                        action: StepAction::Compensate,
                        attempt,
                        output: serde_json::Value::Null,
                    })
                    .await?;
                    return Ok(true);
                }
                Err(error) => {
                    self.record_attempt_failed(
                        kind,
                        StepAction::Compensate,
                        attempt,
                        error,
                        &policy,
                    )
                    .await?;
                }
            }
        }
    }

    fn default_compensation_policy(&self) -> RetryPolicy {
        self.compensation_policy
            .clone()
            .unwrap_or_else(|| self.retry_policy.clone())
    }

    /// Returns whether the current round already gave up on this action,
    /// which happens when a resumed history ends with its final failure.
    fn has_given_up(&self, kind: D::Kind, action: StepAction) -> bool {
        self.history
            .failure
            .as_ref()
            .is_some_and(|failure| failure.step == kind && failure.action == action)
    }

    /// Returns the number of the attempt to start, and whether it repeats an
    /// attempt that a crash cut short. Such an attempt is repeated under its
    /// own number and idempotency key, because the crash, not the step,
    /// ended it: its effect may have happened, and repeating it is how
    /// recovery learns the outcome.
    fn next_attempt(&self, kind: D::Kind, action: StepAction) -> (u32, bool) {
        if let Some((in_flight, in_flight_action, attempt)) = self.history.in_flight {
            if in_flight == kind && in_flight_action == action {
                return (attempt, true);
            }
        }
        let started = self
            .history
            .attempts
            .get(&(kind, action))
            .copied()
            .unwrap_or(0);
        (started + 1, false)
    }

    fn step_context(&self, kind: D::Kind, action: StepAction, attempt: u32) -> StepContext<'_, D> {
        StepContext {
            saga_id: self.id,
            step: kind,
            action,
            attempt,
            input: &self.input,
            context: &self.context,
            outputs: &self.history.outputs,
        }
    }

    async fn record_created(&mut self) -> Result<(), SagaError> {
        let input = serde_json::to_value(&self.input).map_err(|source| SagaError::Input {
            saga_id: self.id,
            source,
        })?;
        let steps = self.history.plan.iter().map(ToString::to_string).collect();
        self.record(SagaEventKind::Created {
            saga: D::NAME.to_owned(),
            input,
            steps,
        })
        .await
    }

    async fn record_transition(&mut self, to: SagaStatus) -> Result<(), SagaError> {
        let from = self.history.status;
        let remaining = if to == SagaStatus::Failed {
            match from {
                // Newest first, so an action whose outcome is unknown is
                // compensated before the steps that ran before it.
                SagaStatus::Running => self
                    .history
                    .effects
                    .iter()
                    .rev()
                    .map(ToString::to_string)
                    .collect(),
                _ => self
                    .history
                    .remaining
                    .iter()
                    .map(ToString::to_string)
                    .collect(),
            }
        } else {
            Vec::new()
        };
        self.record(SagaEventKind::Transition {
            from,
            to,
            remaining,
        })
        .await?;
        info!(%from, %to, "saga transition");
        Ok(())
    }

    async fn record_attempt_started(
        &mut self,
        kind: D::Kind,
        action: StepAction,
        attempt: u32,
    ) -> Result<(), SagaError> {
        self.record(SagaEventKind::AttemptStarted {
            step: kind.to_string(),
            action,
            attempt,
        })
        .await
    }

    async fn record_attempt_failed(
        &mut self,
        kind: D::Kind,
        action: StepAction,
        attempt: u32,
        error: StepError,
        policy: &RetryPolicy,
    ) -> Result<(), SagaError> {
        let will_retry = error.is_retryable() && attempt < policy.max_attempts();
        if will_retry {
            warn!(
                saga_id = %self.id,
                step = %kind,
                %action,
                attempt,
                max_attempts = policy.max_attempts(),
                %error,
                "step attempt failed; retrying"
            );
        } else {
            warn!(
                saga_id = %self.id,
                step = %kind,
                %action,
                attempt,
                %error,
                "step attempt failed; giving up"
            );
        }
        self.record(SagaEventKind::AttemptFailed {
            step: kind.to_string(),
            action,
            attempt,
            error,
            will_retry,
        })
        .await
    }

    /// Appends an event to the log and, once it is stored, applies it to the
    /// in-memory history.
    async fn record(&mut self, kind: SagaEventKind) -> Result<(), SagaError> {
        let event = SagaEvent {
            saga_id: self.id,
            sequence: self.history.next_sequence,
            recorded_at_ms: now_ms(),
            kind,
        };
        self.log
            .append(&event)
            .await
            .map_err(|source| SagaError::Log {
                saga_id: self.id,
                source,
            })?;
        self.history
            .apply(&event)
            .map_err(|invalid| SagaError::History {
                saga_id: self.id,
                sequence: invalid.sequence,
                reason: invalid.reason,
            })
    }
}

/// Runs one attempt, turning a timeout or a panic into an unknown outcome:
/// in both cases the step may have had its effect before it stopped.
async fn with_timeout<T>(
    policy: &RetryPolicy,
    attempt: impl Future<Output = Result<T, StepError>>,
) -> Result<T, StepError> {
    let attempt = AssertUnwindSafe(attempt).catch_unwind();
    let outcome = match policy.attempt_timeout() {
        None => attempt.await,
        Some(limit) => match tokio::time::timeout(limit, attempt).await {
            Ok(outcome) => outcome,
            Err(_) => {
                return Err(StepError::unknown(format!(
                    "the attempt timed out after {limit:?}; its effect may still happen"
                )));
            }
        },
    };
    outcome.unwrap_or_else(|panic| Err(StepError::unknown(panic_message(&*panic))))
}

fn panic_message(panic: &(dyn Any + Send)) -> String {
    let message = panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("a panic without a message");
    format!("the attempt panicked: {message}; its effect may have happened")
}
