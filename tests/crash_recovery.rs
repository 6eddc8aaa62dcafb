//! Property test of recovery from a crash at every point of a saga.
//!
//! Generated: sagas of 1 to 8 steps with the same action and compensation
//! scripts as the invariants test, and per-saga attempt budgets. For each
//! saga, a first run counts its events. Then, for every i, a fresh world
//! runs the saga with a log that stores only its first i events and fails
//! after them, as if the process died right after event i became durable.
//! Whatever the step was doing at that moment still reaches the world. A
//! new orchestrator then recovers the saga with `recover_all` from those i
//! events, against the same world.
//!
//! Checked:
//! - recovery ends `Succeeded`, `Compensated`, or `Failed` listing exactly
//!   the effects that remain, and `Failed` only after a compensation gave
//!   up; once the world heals, compensating again completes it;
//! - no effect is applied or undone twice;
//! - every completed action precedes every compensation;
//! - the whole log, the pre-crash prefix plus what recovery wrote, replays
//!   as one valid history.

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use common::{
    ActionScript, CompensationScript, CrashingLog, Script, SimSaga, StepScript, World, context,
};
use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;
use typed_saga::{
    CompensationOutcome, LoadedSaga, MemoryLog, Recovery, RetryPolicy, Saga, SagaId, SagaLog,
    SagaOutcome, StepAction,
};

#[derive(Clone, Debug)]
struct Case {
    action_attempts: u32,
    compensation_attempts: u32,
    script: Script,
}

fn case() -> impl Strategy<Value = Case> {
    (1..=3u32, 1..=3u32).prop_flat_map(|(action_attempts, compensation_attempts)| {
        let action = prop_oneof![
            3 => Just(ActionScript::Succeeds),
            2 => (0..action_attempts).prop_map(ActionScript::TransientThenSucceeds),
            1 => Just(ActionScript::TransientForever),
            1 => Just(ActionScript::Permanent),
            1 => Just(ActionScript::Unknown),
        ];
        let compensation = prop_oneof![
            3 => Just(CompensationScript::Succeeds),
            2 => (0..compensation_attempts).prop_map(CompensationScript::TransientThenSucceeds),
            1 => Just(CompensationScript::FailsUntilHealed),
        ];
        let step = (action, compensation).prop_map(|(action, compensation)| StepScript {
            action,
            compensation,
        });
        prop::collection::vec(step, 1..=8).prop_map(move |steps| Case {
            action_attempts,
            compensation_attempts,
            script: Script { steps },
        })
    })
}

fn policies(case: &Case) -> (RetryPolicy, RetryPolicy) {
    (
        RetryPolicy::fixed(case.action_attempts, Duration::from_secs(2)),
        RetryPolicy::fixed(case.compensation_attempts, Duration::from_secs(2)),
    )
}

fn saga_id() -> SagaId {
    "00000000-0000-4000-8000-0000000000c5".parse().unwrap()
}

/// Runs the saga to its end with a log of `capacity` events; returns how
/// many events the log holds.
async fn run_until_crash(case: &Case, world: &Arc<World>, log: &Arc<CrashingLog>) -> usize {
    let (retry, compensation) = policies(case);
    let result = Saga::<SimSaga, _>::new(case.script.clone(), context(world))
        .with_id(saga_id())
        .with_log(log.clone() as Arc<dyn SagaLog>)
        .with_retry_policy(retry)
        .with_compensation_policy(compensation)
        .run_to_end()
        .await;
    // A crash shows up as a log error; any other error is a bug.
    if let Err(error) = result {
        assert!(
            matches!(error, typed_saga::SagaError::Log { .. }),
            "{error}"
        );
    }
    log.inner.events().len()
}

async fn check_crash_at(case: &Case, cut: usize) -> Result<(), TestCaseError> {
    let world = World::new();
    let crashed = CrashingLog::new(cut);
    run_until_crash(case, &world, &crashed).await;
    let prefix = crashed.inner.events();
    prop_assert_eq!(prefix.len(), cut);

    let log = Arc::new(MemoryLog::new());
    for event in &prefix {
        log.append(event).await.unwrap();
    }
    if prefix.is_empty() {
        return Ok(());
    }

    let (retry, compensation) = policies(case);
    let recovery = Recovery::<SimSaga>::new(log.clone(), context(&world))
        .with_retry_policy(retry)
        .with_compensation_policy(compensation)
        .resume_failed(false);
    let recovered = recovery.recover_all().await.unwrap();
    prop_assert!(recovered.len() <= 1);
    let outcome = match recovered.into_iter().next() {
        Some(recovered) => recovered.outcome.unwrap(),
        // Skipped: the saga had ended, or its compensation gave up before
        // the crash, which only `resume_failed` retries.
        None => match recovery.load(saga_id()).await.unwrap() {
            LoadedSaga::Succeeded(saga) => SagaOutcome::Succeeded(saga),
            LoadedSaga::Compensated(saga) => SagaOutcome::Compensated(saga),
            LoadedSaga::Failed(saga) => {
                let gave_up = saga
                    .failure()
                    .is_some_and(|failure| failure.action == StepAction::Compensate);
                prop_assert!(
                    gave_up,
                    "cut {}: recovery skipped a saga that never compensated",
                    cut
                );
                SagaOutcome::Failed(saga)
            }
            other => {
                return Err(TestCaseError::fail(format!(
                    "cut {cut}: recovery skipped a saga in {}",
                    other.status()
                )));
            }
        },
    };

    let step_count = case.script.steps.len();
    match outcome {
        SagaOutcome::Succeeded(_) => {
            let all: BTreeSet<usize> = (0..step_count).collect();
            prop_assert_eq!(&world.lock().present, &all);
        }
        SagaOutcome::Compensated(_) => {
            prop_assert!(
                world.lock().present.is_empty(),
                "cut {}: {:?}",
                cut,
                world.lock().present
            );
        }
        SagaOutcome::Failed(failed) => {
            let listed: BTreeSet<usize> = failed
                .remaining_compensations()
                .iter()
                .map(|step| step.0)
                .collect();
            prop_assert_eq!(&listed, &world.lock().present, "cut {}", cut);
            world.heal();
            let resumed = failed.compensate().run().await.unwrap();
            prop_assert!(matches!(resumed, CompensationOutcome::Compensated(_)));
            prop_assert!(world.lock().present.is_empty());
        }
    }
    check_world(&world.lock(), cut)?;

    let reloaded = Recovery::<SimSaga>::new(log.clone(), context(&world))
        .load(saga_id())
        .await;
    prop_assert!(
        reloaded.is_ok(),
        "the recovered history does not replay: {:?}",
        reloaded.err()
    );
    let events = log.events();
    for (index, event) in events.iter().enumerate() {
        prop_assert_eq!(event.sequence, index as u64);
    }
    Ok(())
}

/// Checks that each effect was applied and undone at most once, and that
/// no action succeeded once compensation began.
fn check_world(state: &common::WorldState, cut: usize) -> Result<(), TestCaseError> {
    prop_assert!(
        state.applied.values().all(|&count| count <= 1),
        "cut {}: {:?}",
        cut,
        state.applied
    );
    prop_assert!(
        state.undone.values().all(|&count| count <= 1),
        "cut {}: {:?}",
        cut,
        state.undone
    );
    let first_compensation = state
        .calls
        .iter()
        .position(|call| call.action == StepAction::Compensate)
        .unwrap_or(state.calls.len());
    prop_assert!(
        state.calls[first_compensation..]
            .iter()
            .all(|call| call.action == StepAction::Compensate || !call.succeeded),
        "an action succeeded after compensation began: {:?}",
        state.calls
    );
    Ok(())
}

async fn check_every_cut(case: Case) -> Result<(), TestCaseError> {
    let full = CrashingLog::new(usize::MAX);
    let total = run_until_crash(&case, &World::new(), &full).await;
    for cut in 0..=total {
        check_crash_at(&case, cut).await?;
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 1_000,
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(
            "proptest-regressions/crash_recovery.txt",
        ))),
        ..ProptestConfig::default()
    })]

    #[test]
    fn recovery_from_any_prefix_reaches_a_consistent_end(case in case()) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap();
        runtime.block_on(check_every_cut(case))?;
    }
}
