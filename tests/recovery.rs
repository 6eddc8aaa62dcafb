//! Loading sagas back from a log: which state they come back in, and which
//! histories are refused.

mod common;

use std::sync::Arc;

use common::{ActionScript, SimSaga, World, context, script};
use typed_saga::{
    LoadedSaga, LogError, LogFuture, MemoryLog, Recovery, Saga, SagaError, SagaEvent,
    SagaEventKind, SagaId, SagaLog, SagaStatus, StepAction,
};

async fn finished_log(actions: &[ActionScript]) -> (Arc<MemoryLog>, SagaId) {
    let log = Arc::new(MemoryLog::new());
    let saga =
        Saga::<SimSaga, _>::new(script(actions), context(&World::new())).with_log(log.clone());
    let id = saga.id();
    saga.run_to_end().await.unwrap();
    (log, id)
}

/// A log that returns a fixed history, valid or not, as a damaged store
/// would.
struct FixedLog(Vec<SagaEvent>);

impl SagaLog for FixedLog {
    fn append<'a>(&'a self, _: &'a SagaEvent) -> LogFuture<'a, ()> {
        Box::pin(async { Err(LogError::new("this log is read-only")) })
    }

    fn history(&self, id: SagaId) -> LogFuture<'_, Vec<SagaEvent>> {
        let events = self
            .0
            .iter()
            .filter(|event| event.saga_id == id)
            .cloned()
            .collect();
        Box::pin(async { Ok(events) })
    }

    fn unfinished(&self) -> LogFuture<'_, Vec<SagaId>> {
        Box::pin(async { Ok(Vec::new()) })
    }
}

/// Copies `events` into a fixed log, changed by `edit`.
async fn edited_log(events: &[SagaEvent], edit: impl FnOnce(&mut Vec<SagaEvent>)) -> Arc<FixedLog> {
    let mut events = events.to_vec();
    edit(&mut events);
    Arc::new(FixedLog(events))
}

#[tokio::test(start_paused = true)]
async fn finished_saga_loads_in_its_final_state() {
    let (log, id) = finished_log(&[ActionScript::Succeeds, ActionScript::Permanent]).await;

    let loaded = Recovery::<SimSaga>::new(log, context(&World::new()))
        .load(id)
        .await
        .unwrap();

    assert!(matches!(loaded, LoadedSaga::Compensated(_)));
}

#[tokio::test(start_paused = true)]
async fn failed_prefix_loads_remaining_steps() {
    let (log, id) = finished_log(&[ActionScript::Succeeds, ActionScript::Permanent]).await;
    let failed_at = log
        .events()
        .iter()
        .position(|event| {
            matches!(
                event.kind,
                SagaEventKind::Transition {
                    to: SagaStatus::Failed,
                    ..
                }
            )
        })
        .unwrap();
    let prefix = edited_log(&log.events(), |events| events.truncate(failed_at + 1)).await;

    let loaded = Recovery::<SimSaga>::new(prefix, context(&World::new()))
        .load(id)
        .await
        .unwrap();

    let LoadedSaga::Failed(saga) = loaded else {
        panic!("expected FAILED, got {:?}", loaded.status());
    };
    assert_eq!(saga.remaining_compensations(), [common::SimStep(0)]);
}

#[tokio::test(start_paused = true)]
async fn unknown_saga_is_not_found() {
    let log = Arc::new(MemoryLog::new());
    let id = SagaId::random();

    let error = Recovery::<SimSaga>::new(log, context(&World::new()))
        .load(id)
        .await
        .unwrap_err();

    assert!(matches!(error, SagaError::NotFound { .. }), "{error}");
}

#[tokio::test(start_paused = true)]
async fn gap_in_sequence_numbers_is_refused() {
    let (log, id) = finished_log(&[ActionScript::Succeeds]).await;
    let gapped = edited_log(&log.events(), |events| {
        events.remove(2);
    })
    .await;

    let error = Recovery::<SimSaga>::new(gapped, context(&World::new()))
        .load(id)
        .await
        .unwrap_err();

    assert_eq!(
        error.to_string(),
        format!("saga {id}: invalid history at event 3: expected sequence number 2")
    );
}

#[tokio::test(start_paused = true)]
async fn transition_the_lifecycle_lacks_is_refused() {
    let (log, id) = finished_log(&[ActionScript::Succeeds]).await;
    let skipped = edited_log(&log.events(), |events| {
        events.push(SagaEvent {
            saga_id: id,
            sequence: events.len() as u64,
            recorded_at_ms: 0,
            kind: SagaEventKind::Transition {
                from: SagaStatus::Succeeded,
                to: SagaStatus::Compensating,
                remaining: Vec::new(),
            },
        });
    })
    .await;

    let error = Recovery::<SimSaga>::new(skipped, context(&World::new()))
        .load(id)
        .await
        .unwrap_err();

    assert!(
        error
            .to_string()
            .contains("no transition leads from SUCCEEDED to COMPENSATING"),
        "{error}"
    );
}

#[tokio::test(start_paused = true)]
async fn unknown_step_name_is_refused() {
    let (log, id) = finished_log(&[ActionScript::Succeeds]).await;
    let renamed = edited_log(&log.events(), |events| {
        events[2].kind = SagaEventKind::AttemptStarted {
            step: "step_99".to_owned(),
            action: StepAction::Execute,
            attempt: 1,
        };
    })
    .await;

    let error = Recovery::<SimSaga>::new(renamed, context(&World::new()))
        .load(id)
        .await
        .unwrap_err();

    assert!(
        error.to_string().contains("unknown step \"step_99\""),
        "{error}"
    );
}

#[tokio::test(start_paused = true)]
async fn saga_of_another_definition_is_refused() {
    let (log, id) = finished_log(&[ActionScript::Succeeds]).await;
    let other = edited_log(&log.events(), |events| {
        if let SagaEventKind::Created { saga, .. } = &mut events[0].kind {
            *saga = "Billing".to_owned();
        }
    })
    .await;

    let error = Recovery::<SimSaga>::new(other, context(&World::new()))
        .load(id)
        .await
        .unwrap_err();

    assert!(
        matches!(error, SagaError::WrongDefinition { .. }),
        "{error}"
    );
}
