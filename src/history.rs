//! The state of a saga as folded from its events.
//!
//! The orchestrator never changes a saga's progress directly: it appends an
//! event to the log and then applies the same event here. Recovery applies
//! the events read back from the log, so a resumed saga has exactly the
//! state the crashed process had at its last durable event.

use std::collections::HashMap;

use serde_json::Value;

use crate::{SagaDefinition, SagaEvent, SagaEventKind, SagaStatus, StepAction, StepError};

/// A step whose action or compensation failed for good.
#[derive(Clone, Debug, PartialEq)]
pub struct StepFailure<K> {
    /// The step.
    pub step: K,
    /// Whether its action or its compensation failed.
    pub action: StepAction,
    /// The last attempt's error.
    pub error: StepError,
}

/// The saga's progress, rebuilt from events alone.
pub(crate) struct History<D: SagaDefinition> {
    pub(crate) status: SagaStatus,
    pub(crate) created: bool,
    pub(crate) next_sequence: u64,
    pub(crate) plan: Vec<D::Kind>,
    /// Index in `plan` of the next step to execute.
    pub(crate) next_step: usize,
    pub(crate) outputs: HashMap<D::Kind, Value>,
    /// Steps whose action took effect or may have, in execution order.
    pub(crate) effects: Vec<D::Kind>,
    /// Steps whose outcome was unknown at least once: even a later failed
    /// attempt cannot prove their effect absent.
    uncertain: Vec<D::Kind>,
    /// Steps still to compensate, newest first, in `FAILED` and
    /// `COMPENSATING`.
    pub(crate) remaining: Vec<D::Kind>,
    /// The number of the last attempt started, per step and action, in the
    /// current round. Each compensation round starts its budget afresh.
    pub(crate) attempts: HashMap<(D::Kind, StepAction), u32>,
    /// An attempt that started and has no result yet.
    pub(crate) in_flight: Option<(D::Kind, StepAction, u32)>,
    pub(crate) failure: Option<StepFailure<D::Kind>>,
    /// Whether a compensation failed for good since the saga last entered
    /// `FAILED`. False while the saga is `FAILED` straight from `RUNNING`,
    /// that is, before any compensation was tried.
    pub(crate) compensation_gave_up: bool,
}

/// An event that does not fit the history before it.
#[derive(Debug)]
pub(crate) struct InvalidEvent {
    pub(crate) sequence: u64,
    pub(crate) reason: String,
}

impl<D: SagaDefinition> History<D> {
    pub(crate) fn new(plan: Vec<D::Kind>) -> Self {
        Self {
            status: SagaStatus::Pending,
            created: false,
            next_sequence: 0,
            plan,
            next_step: 0,
            outputs: HashMap::new(),
            effects: Vec::new(),
            uncertain: Vec::new(),
            remaining: Vec::new(),
            attempts: HashMap::new(),
            in_flight: None,
            failure: None,
            compensation_gave_up: false,
        }
    }

    /// Applies `event`, which must be the next of this saga's history.
    pub(crate) fn apply(&mut self, event: &SagaEvent) -> Result<(), InvalidEvent> {
        let invalid = |reason: String| InvalidEvent {
            sequence: event.sequence,
            reason,
        };
        if event.sequence != self.next_sequence {
            return Err(invalid(format!(
                "expected sequence number {}",
                self.next_sequence
            )));
        }
        if !self.created && !matches!(event.kind, SagaEventKind::Created { .. }) {
            return Err(invalid("the first event is not `created`".to_owned()));
        }

        match &event.kind {
            SagaEventKind::Created { steps, .. } => {
                if self.created {
                    return Err(invalid("a second `created` event".to_owned()));
                }
                self.plan = parse_steps::<D>(steps).map_err(invalid)?;
                self.created = true;
            }
            SagaEventKind::Transition {
                from,
                to,
                remaining,
            } => {
                if *from != self.status {
                    return Err(invalid(format!(
                        "transition from {from} while the saga is {}",
                        self.status
                    )));
                }
                self.apply_transition(*to, remaining).map_err(invalid)?;
            }
            SagaEventKind::AttemptStarted {
                step,
                action,
                attempt,
            } => {
                let kind = parse_step::<D>(step).map_err(invalid)?;
                self.attempts.insert((kind, *action), *attempt);
                self.in_flight = Some((kind, *action, *attempt));
                if *action == StepAction::Execute && !self.effects.contains(&kind) {
                    // From the moment a request may have left, its effect may
                    // exist, until a definite failure shows otherwise.
                    self.effects.push(kind);
                }
            }
            SagaEventKind::AttemptSucceeded {
                step,
                action,
                output,
                ..
            } => {
                let kind = parse_step::<D>(step).map_err(invalid)?;
                self.in_flight = None;
                match action {
                    StepAction::Execute => {
                        self.outputs.insert(kind, output.clone());
                        if !self.effects.contains(&kind) {
                            self.effects.push(kind);
                        }
                        if let Some(index) = self.plan.iter().position(|planned| *planned == kind) {
                            self.next_step = self.next_step.max(index + 1);
                        }
                    }
                    StepAction::Compensate => {
                        self.remaining.retain(|remaining| *remaining != kind);
                        self.effects.retain(|effect| *effect != kind);
                    }
                }
            }
            SagaEventKind::AttemptFailed {
                step,
                action,
                error,
                will_retry,
                ..
            } => {
                let kind = parse_step::<D>(step).map_err(invalid)?;
                self.in_flight = None;
                if *action == StepAction::Execute {
                    if matches!(error, StepError::Unknown(_)) {
                        if !self.uncertain.contains(&kind) {
                            self.uncertain.push(kind);
                        }
                    } else if !self.uncertain.contains(&kind) {
                        self.effects.retain(|effect| *effect != kind);
                    }
                }
                if !will_retry {
                    self.failure = Some(StepFailure {
                        step: kind,
                        action: *action,
                        error: error.clone(),
                    });
                }
            }
        }

        self.next_sequence += 1;
        Ok(())
    }

    fn apply_transition(&mut self, to: SagaStatus, remaining: &[String]) -> Result<(), String> {
        let allowed = matches!(
            (self.status, to),
            (SagaStatus::Pending, SagaStatus::Running)
                | (SagaStatus::Running, SagaStatus::Succeeded)
                | (SagaStatus::Running, SagaStatus::Failed)
                | (SagaStatus::Failed, SagaStatus::Compensating)
                | (SagaStatus::Compensating, SagaStatus::Compensated)
                | (SagaStatus::Compensating, SagaStatus::Failed)
        );
        if !allowed {
            return Err(format!("no transition leads from {} to {to}", self.status));
        }

        match to {
            SagaStatus::Failed => {
                self.remaining = parse_steps::<D>(remaining)?;
                self.compensation_gave_up = self.status == SagaStatus::Compensating;
            }
            SagaStatus::Compensating => {
                self.failure = None;
                self.attempts
                    .retain(|(_, action), _| *action == StepAction::Execute);
            }
            _ => {}
        }
        self.status = to;
        Ok(())
    }
}

fn parse_step<D: SagaDefinition>(name: &str) -> Result<D::Kind, String> {
    name.parse::<D::Kind>().map_err(|error| error.to_string())
}

fn parse_steps<D: SagaDefinition>(names: &[String]) -> Result<Vec<D::Kind>, String> {
    names.iter().map(|name| parse_step::<D>(name)).collect()
}
