//! Snapshots of the event history the orchestrator records, one line per
//! event, for the three shapes of a saga's life.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{ActionScript, CompensationScript, SimSaga, World, context, script};
use typed_saga::{CompensationOutcome, MemoryLog, RetryPolicy, Saga, SagaId, SagaLog, SagaOutcome};

fn saga_id() -> SagaId {
    "00000000-0000-4000-8000-000000000001".parse().unwrap()
}

fn new_saga(
    script: common::Script,
    world: &Arc<World>,
    log: &Arc<MemoryLog>,
) -> Saga<SimSaga, typed_saga::Pending> {
    Saga::<SimSaga, _>::new(script, context(world))
        .with_id(saga_id())
        .with_log(log.clone() as Arc<dyn SagaLog>)
        .with_retry_policy(RetryPolicy::fixed(3, Duration::from_secs(2)))
        .with_compensation_policy(RetryPolicy::fixed(2, Duration::from_secs(2)))
}

/// Renders the log as `sequence  event`, leaving out ids and times.
fn render(log: &MemoryLog) -> String {
    log.events()
        .iter()
        .map(|event| format!("{:>2}  {}\n", event.sequence, event.kind))
        .collect()
}

#[tokio::test(start_paused = true)]
async fn history_of_succeeded_saga() {
    let world = World::new();
    let log = Arc::new(MemoryLog::new());
    let actions = [
        ActionScript::Succeeds,
        ActionScript::TransientThenSucceeds(1),
        ActionScript::Succeeds,
    ];

    let outcome = new_saga(script(&actions), &world, &log)
        .run_to_end()
        .await
        .unwrap();

    assert!(matches!(outcome, SagaOutcome::Succeeded(_)));
    insta::assert_snapshot!(render(&log));
}

#[tokio::test(start_paused = true)]
async fn history_of_saga_failing_at_step_2() {
    let world = World::new();
    let log = Arc::new(MemoryLog::new());
    let actions = [
        ActionScript::Succeeds,
        ActionScript::Permanent,
        ActionScript::Succeeds,
    ];

    let outcome = new_saga(script(&actions), &world, &log)
        .run_to_end()
        .await
        .unwrap();

    assert!(matches!(outcome, SagaOutcome::Compensated(_)));
    insta::assert_snapshot!(render(&log));
}

#[tokio::test(start_paused = true)]
async fn history_of_failed_compensation_resumed() {
    let world = World::new();
    let log = Arc::new(MemoryLog::new());
    let mut steps = script(&[
        ActionScript::Succeeds,
        ActionScript::Succeeds,
        ActionScript::Permanent,
    ]);
    steps.steps[0].compensation = CompensationScript::FailsUntilHealed;

    let outcome = new_saga(steps, &world, &log).run_to_end().await.unwrap();
    let SagaOutcome::Failed(failed) = outcome else {
        panic!("expected the compensation of step_1 to fail");
    };
    world.heal();
    let resumed = failed.compensate().run().await.unwrap();

    assert!(matches!(resumed, CompensationOutcome::Compensated(_)));
    insta::assert_snapshot!(render(&log));
}
