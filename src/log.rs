use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{SagaId, SagaStatus, StepAction, StepError};

/// A boxed future, so that [`SagaLog`] can be used as a trait object.
pub type LogFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, LogError>> + Send + 'a>>;

/// The store of a saga's history: every transition and every step attempt.
///
/// The orchestrator appends an event and waits for [`SagaLog::append`] to
/// return before it acts on it, so a store that returns only once the event
/// is durable lets a saga be recovered from any crash. Events of one saga
/// arrive in order with consecutive sequence numbers.
pub trait SagaLog: Send + Sync + 'static {
    /// Stores `event`. The orchestrator stops the saga when this fails.
    fn append<'a>(&'a self, event: &'a SagaEvent) -> LogFuture<'a, ()>;

    /// Returns the history of saga `id` in order, empty when it is unknown.
    fn history(&self, id: SagaId) -> LogFuture<'_, Vec<SagaEvent>>;

    /// Returns the ids of the sagas whose last status is neither
    /// `SUCCEEDED` nor `COMPENSATED`, oldest first.
    fn unfinished(&self) -> LogFuture<'_, Vec<SagaId>>;
}

/// One entry of a saga's history.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SagaEvent {
    /// The saga the event belongs to.
    pub saga_id: SagaId,
    /// The event's position in the saga's history, from 0.
    pub sequence: u64,
    /// When the event was recorded, in milliseconds since the Unix epoch.
    pub recorded_at_ms: u64,
    /// What happened.
    #[serde(flatten)]
    pub kind: SagaEventKind,
}

/// The content of a [`SagaEvent`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum SagaEventKind {
    /// The saga was started with this input and plan. Always the first event.
    Created {
        /// The definition's [`NAME`](crate::SagaDefinition::NAME).
        saga: String,
        /// The saga's input as JSON.
        input: Value,
        /// The names of the steps to run, in order.
        steps: Vec<String>,
    },
    /// The saga moved to another state.
    Transition {
        /// The state it left.
        from: SagaStatus,
        /// The state it entered.
        to: SagaStatus,
        /// The steps still to compensate, newest first. Empty except when
        /// entering `FAILED`.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        remaining: Vec<String>,
    },
    /// An attempt of an action or a compensation began.
    AttemptStarted {
        /// The step's name.
        step: String,
        /// Action or compensation.
        action: StepAction,
        /// The attempt number, counted from 1.
        attempt: u32,
    },
    /// An attempt took effect.
    AttemptSucceeded {
        /// The step's name.
        step: String,
        /// Action or compensation.
        action: StepAction,
        /// The attempt number.
        attempt: u32,
        /// The action's output; `null` for a compensation.
        output: Value,
    },
    /// An attempt failed.
    AttemptFailed {
        /// The step's name.
        step: String,
        /// Action or compensation.
        action: StepAction,
        /// The attempt number.
        attempt: u32,
        /// The attempt's error.
        error: StepError,
        /// Whether another attempt follows.
        will_retry: bool,
    },
}

impl fmt::Display for SagaEventKind {
    /// Formats the event as one line for people, without ids or times.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Created { saga, steps, .. } => {
                write!(f, "created {saga} with steps [{}]", steps.join(", "))
            }
            Self::Transition {
                from,
                to,
                remaining,
            } if remaining.is_empty() => write!(f, "{from} -> {to}"),
            Self::Transition {
                from,
                to,
                remaining,
            } => write!(
                f,
                "{from} -> {to}, to compensate: [{}]",
                remaining.join(", ")
            ),
            Self::AttemptStarted {
                step,
                action,
                attempt,
            } => write!(f, "{step} {action} attempt {attempt} started"),
            Self::AttemptSucceeded {
                step,
                action: StepAction::Compensate,
                attempt,
                ..
            } => write!(f, "{step} compensate attempt {attempt} succeeded"),
            Self::AttemptSucceeded {
                step,
                action,
                attempt,
                output,
            } => write!(f, "{step} {action} attempt {attempt} succeeded: {output}"),
            Self::AttemptFailed {
                step,
                action,
                attempt,
                error,
                will_retry,
            } => {
                let next = if *will_retry {
                    "will retry"
                } else {
                    "giving up"
                };
                write!(
                    f,
                    "{step} {action} attempt {attempt} failed ({next}): {error}"
                )
            }
        }
    }
}

impl fmt::Display for SagaEvent {
    /// Formats the event as `#sequence event`, without the saga id or the
    /// time.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{} {}", self.sequence, self.kind)
    }
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| {
            u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX)
        })
}

/// A failure of a [`SagaLog`] store.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct LogError {
    message: String,
    #[source]
    source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl LogError {
    /// Builds an error from a message naming what failed on which value.
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            source: None,
        }
    }

    /// Builds an error from a message and the error that caused it.
    pub fn with_source(
        message: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Self {
            message: message.into(),
            source: Some(Box::new(source)),
        }
    }
}

/// A [`SagaLog`] in memory, for tests and for sagas that need not survive
/// the process.
#[derive(Debug, Default)]
pub struct MemoryLog {
    inner: Mutex<MemoryLogInner>,
}

#[derive(Debug, Default)]
struct MemoryLogInner {
    events: Vec<SagaEvent>,
    /// The sequence number each saga's next event must carry.
    next_sequence: HashMap<SagaId, u64>,
}

impl MemoryLog {
    /// Builds an empty log.
    pub fn new() -> Self {
        Self::default()
    }

    /// Returns a copy of every event of every saga, in the order appended.
    pub fn events(&self) -> Vec<SagaEvent> {
        self.lock().events.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, MemoryLogInner> {
        // A panic while holding the lock cannot leave a half-pushed event, so
        // the data is usable after poisoning.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl SagaLog for MemoryLog {
    fn append<'a>(&'a self, event: &'a SagaEvent) -> LogFuture<'a, ()> {
        let mut inner = self.lock();
        let expected = inner
            .next_sequence
            .get(&event.saga_id)
            .copied()
            .unwrap_or(0);
        let result = if event.sequence == expected {
            inner.events.push(event.clone());
            inner.next_sequence.insert(event.saga_id, expected + 1);
            Ok(())
        } else {
            // A second saga with a reused id, or two processes driving one
            // saga, would otherwise interleave two histories.
            Err(LogError::new(format!(
                "event {} of saga {} does not follow the log's last event of that saga, \
                 which expects sequence number {expected}; give each saga its own id",
                event.sequence, event.saga_id
            )))
        };
        Box::pin(async { result })
    }

    fn history(&self, id: SagaId) -> LogFuture<'_, Vec<SagaEvent>> {
        let history = self
            .lock()
            .events
            .iter()
            .filter(|event| event.saga_id == id)
            .cloned()
            .collect();
        Box::pin(async { Ok(history) })
    }

    fn unfinished(&self) -> LogFuture<'_, Vec<SagaId>> {
        let mut order = Vec::new();
        let mut last_status: HashMap<SagaId, Option<SagaStatus>> = HashMap::new();
        for event in self.lock().events.iter() {
            let status = last_status.entry(event.saga_id).or_insert_with(|| {
                order.push(event.saga_id);
                None
            });
            if let SagaEventKind::Transition { to, .. } = &event.kind {
                *status = Some(*to);
            }
        }
        let unfinished = order
            .into_iter()
            .filter(|id| !last_status[id].is_some_and(SagaStatus::is_final))
            .collect();
        Box::pin(async { Ok(unfinished) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn transition(saga_id: SagaId, sequence: u64, from: SagaStatus, to: SagaStatus) -> SagaEvent {
        SagaEvent {
            saga_id,
            sequence,
            recorded_at_ms: 0,
            kind: SagaEventKind::Transition {
                from,
                to,
                remaining: Vec::new(),
            },
        }
    }

    #[tokio::test]
    async fn memory_log_lists_unfinished_sagas_oldest_first() {
        let log = MemoryLog::new();
        let (first, done, last) = (SagaId::random(), SagaId::random(), SagaId::random());
        for id in [first, done, last] {
            log.append(&transition(id, 0, SagaStatus::Pending, SagaStatus::Running))
                .await
                .unwrap();
        }
        log.append(&transition(
            done,
            1,
            SagaStatus::Running,
            SagaStatus::Succeeded,
        ))
        .await
        .unwrap();

        assert_eq!(log.unfinished().await.unwrap(), [first, last]);
    }

    #[tokio::test]
    async fn memory_log_rejects_an_event_out_of_sequence() {
        let log = MemoryLog::new();
        let id = SagaId::random();
        log.append(&transition(id, 0, SagaStatus::Pending, SagaStatus::Running))
            .await
            .unwrap();

        let error = log
            .append(&transition(id, 0, SagaStatus::Pending, SagaStatus::Running))
            .await
            .unwrap_err();

        assert!(
            error.to_string().contains("expects sequence number 1"),
            "{error}"
        );
        assert_eq!(log.events().len(), 1);
    }

    #[tokio::test]
    async fn memory_log_history_keeps_one_saga_in_order() {
        let log = MemoryLog::new();
        let (mine, other) = (SagaId::random(), SagaId::random());
        log.append(&transition(
            mine,
            0,
            SagaStatus::Pending,
            SagaStatus::Running,
        ))
        .await
        .unwrap();
        log.append(&transition(
            other,
            0,
            SagaStatus::Pending,
            SagaStatus::Running,
        ))
        .await
        .unwrap();
        log.append(&transition(
            mine,
            1,
            SagaStatus::Running,
            SagaStatus::Failed,
        ))
        .await
        .unwrap();

        let sequences: Vec<u64> = log
            .history(mine)
            .await
            .unwrap()
            .iter()
            .map(|event| event.sequence)
            .collect();
        assert_eq!(sequences, [0, 1]);
    }
}
