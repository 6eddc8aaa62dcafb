//! Property test of the orchestrator's invariants.
//!
//! Generated: sagas of 1 to 12 steps. Each action is drawn from: succeeds,
//! fails transiently fewer times than its budget then succeeds, fails
//! transiently forever, fails permanently, outcome unknown (the effect is
//! applied but no reply arrives). Each compensation is drawn from: succeeds,
//! fails transiently fewer times than its budget then succeeds, fails for
//! good until the world is healed. Budgets are drawn per saga.
//!
//! Checked against a simulated world that records every call and effect:
//! - steps run in declared order, and compensations run newest first, only
//!   after every action;
//! - each effect is applied at most once and undone at most once;
//! - no action or compensation round exceeds its attempt budget;
//! - the final status is the one the script implies: `Succeeded` leaves
//!   every effect present, `Compensated` none, and `Failed` lists exactly
//!   the steps whose effects remain;
//! - once the world heals, compensating the failed saga again completes it
//!   without repeating a finished compensation.

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use common::{ActionScript, CompensationScript, Script, SimSaga, StepScript, World, context};
use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;
use typed_saga::{
    CompensationOutcome, MemoryLog, RetryPolicy, Saga, SagaOutcome, SagaStatus, StepAction,
};

#[derive(Clone, Debug)]
struct Case {
    action_attempts: u32,
    compensation_attempts: u32,
    script: Script,
}

fn action_script(max_attempts: u32) -> impl Strategy<Value = ActionScript> {
    prop_oneof![
        3 => Just(ActionScript::Succeeds),
        2 => (0..max_attempts).prop_map(ActionScript::TransientThenSucceeds),
        1 => Just(ActionScript::TransientForever),
        1 => Just(ActionScript::Permanent),
        1 => Just(ActionScript::Unknown),
    ]
}

fn compensation_script(max_attempts: u32) -> impl Strategy<Value = CompensationScript> {
    prop_oneof![
        3 => Just(CompensationScript::Succeeds),
        2 => (0..max_attempts).prop_map(CompensationScript::TransientThenSucceeds),
        1 => Just(CompensationScript::FailsUntilHealed),
    ]
}

fn case() -> impl Strategy<Value = Case> {
    (1..=5u32, 1..=5u32).prop_flat_map(|(action_attempts, compensation_attempts)| {
        let step = (
            action_script(action_attempts),
            compensation_script(compensation_attempts),
        )
            .prop_map(|(action, compensation)| StepScript {
                action,
                compensation,
            });
        prop::collection::vec(step, 1..=common::MAX_STEPS).prop_map(move |steps| Case {
            action_attempts,
            compensation_attempts,
            script: Script { steps },
        })
    })
}

/// The status and effects the script implies, computed without the
/// orchestrator.
struct Expected {
    status: SagaStatus,
    /// Steps compensated in the first round, newest first.
    to_compensate: Vec<usize>,
}

fn expected(case: &Case) -> Expected {
    let failing = case.script.steps.iter().position(|step| match step.action {
        ActionScript::Succeeds => false,
        ActionScript::TransientThenSucceeds(failures) => failures >= case.action_attempts,
        _ => true,
    });
    let Some(failing) = failing else {
        return Expected {
            status: SagaStatus::Succeeded,
            to_compensate: Vec::new(),
        };
    };

    let mut to_compensate: Vec<usize> = (0..failing).rev().collect();
    if case.script.steps[failing].action == ActionScript::Unknown {
        to_compensate.insert(0, failing);
    }
    let blocked = to_compensate
        .iter()
        .any(|&step| match case.script.steps[step].compensation {
            CompensationScript::FailsUntilHealed => true,
            CompensationScript::TransientThenSucceeds(failures) => {
                failures >= case.compensation_attempts
            }
            CompensationScript::Succeeds => false,
        });
    Expected {
        status: if blocked {
            SagaStatus::Failed
        } else {
            SagaStatus::Compensated
        },
        to_compensate,
    }
}

fn check_case(case: Case) -> Result<(), TestCaseError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    runtime.block_on(run_case(case))
}

async fn run_case(case: Case) -> Result<(), TestCaseError> {
    let world = World::new();
    let expected = expected(&case);
    let step_count = case.script.steps.len();
    let saga = Saga::<SimSaga, _>::new(case.script.clone(), context(&world))
        .with_log(Arc::new(MemoryLog::new()))
        .with_retry_policy(RetryPolicy::fixed(
            case.action_attempts,
            Duration::from_secs(2),
        ))
        .with_compensation_policy(RetryPolicy::fixed(
            case.compensation_attempts,
            Duration::from_secs(2),
        ));

    let outcome = saga.run_to_end().await.unwrap();
    prop_assert_eq!(outcome.status(), expected.status);

    {
        let state = world.lock();
        check_order(&state.calls, step_count)?;
        check_budgets(&state.calls, &case)?;
        let compensated: Vec<usize> = state
            .calls
            .iter()
            .filter(|call| call.action == StepAction::Compensate && call.succeeded)
            .map(|call| call.step)
            .collect();
        if expected.status == SagaStatus::Compensated {
            prop_assert_eq!(&compensated, &expected.to_compensate);
        }
    }

    let failed = match outcome {
        SagaOutcome::Succeeded(_) => {
            let all: BTreeSet<usize> = (0..step_count).collect();
            prop_assert_eq!(&world.lock().present, &all);
            return check_at_most_once(&world);
        }
        SagaOutcome::Compensated(_) => {
            prop_assert!(world.lock().present.is_empty());
            return check_at_most_once(&world);
        }
        SagaOutcome::Failed(failed) => failed,
    };

    let listed: BTreeSet<usize> = failed
        .remaining_compensations()
        .iter()
        .map(|step| step.0)
        .collect();
    prop_assert_eq!(&listed, &world.lock().present);
    let failure = failed
        .failure()
        .expect("a failed saga names the failing step");
    prop_assert_eq!(failure.action, StepAction::Compensate);

    world.heal();
    let calls_before_resume = world.lock().calls.len();
    let resumed = failed.compensate().run().await.unwrap();
    prop_assert!(matches!(resumed, CompensationOutcome::Compensated(_)));

    let state = world.lock();
    prop_assert!(state.present.is_empty());
    let resumed_steps: Vec<usize> = state.calls[calls_before_resume..]
        .iter()
        .map(|call| call.step)
        .collect();
    let mut listed_newest_first: Vec<usize> = listed.into_iter().collect();
    listed_newest_first.reverse();
    prop_assert_eq!(dedup(&resumed_steps), listed_newest_first);
    drop(state);
    check_at_most_once(&world)
}

/// Actions run in declared order, each after the previous succeeded, and
/// compensations run after every action, newest first.
fn check_order(calls: &[common::Call], step_count: usize) -> Result<(), TestCaseError> {
    let actions: Vec<&common::Call> = calls
        .iter()
        .take_while(|call| call.action == StepAction::Execute)
        .collect();
    prop_assert!(
        calls[actions.len()..]
            .iter()
            .all(|call| call.action == StepAction::Compensate),
        "an action ran after a compensation: {:?}",
        calls
    );

    for pair in actions.windows(2) {
        let (earlier, later) = (pair[0], pair[1]);
        if later.step != earlier.step {
            prop_assert_eq!(
                later.step,
                earlier.step + 1,
                "steps ran out of order: {:?}",
                calls
            );
            prop_assert!(
                earlier.succeeded,
                "step {} started before {} succeeded",
                later.step,
                earlier.step
            );
        }
    }
    if let Some(first) = actions.first() {
        prop_assert_eq!(first.step, 0);
    }
    prop_assert!(actions.iter().all(|call| call.step < step_count));

    let compensations: Vec<usize> = calls[actions.len()..]
        .iter()
        .map(|call| call.step)
        .collect();
    for pair in compensations.windows(2) {
        prop_assert!(
            pair[1] <= pair[0],
            "compensations ran out of order: {:?}",
            compensations
        );
    }
    Ok(())
}

/// No action is attempted more often than its policy allows, nor any
/// compensation within one round.
fn check_budgets(calls: &[common::Call], case: &Case) -> Result<(), TestCaseError> {
    for call in calls {
        let budget = match call.action {
            StepAction::Execute => case.action_attempts,
            StepAction::Compensate => case.compensation_attempts,
        };
        prop_assert!(
            call.attempt >= 1 && call.attempt <= budget,
            "attempt {} over budget {}",
            call.attempt,
            budget
        );
    }
    for step in 0..case.script.steps.len() {
        let attempts = calls
            .iter()
            .filter(|call| call.step == step && call.action == StepAction::Execute)
            .count();
        prop_assert!(attempts <= case.action_attempts as usize);
        let successes = calls
            .iter()
            .filter(|call| call.step == step && call.succeeded)
            .count();
        prop_assert!(successes <= 2, "step {step} succeeded {successes} times");
    }
    Ok(())
}

fn check_at_most_once(world: &World) -> Result<(), TestCaseError> {
    let state = world.lock();
    prop_assert!(
        state.applied.values().all(|&count| count <= 1),
        "{:?}",
        state.applied
    );
    prop_assert!(
        state.undone.values().all(|&count| count <= 1),
        "{:?}",
        state.undone
    );
    Ok(())
}

fn dedup(steps: &[usize]) -> Vec<usize> {
    let mut unique = steps.to_vec();
    unique.dedup();
    unique
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 2_000,
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(
            "proptest-regressions/invariants.txt",
        ))),
        ..ProptestConfig::default()
    })]

    #[test]
    fn orchestrator_keeps_saga_invariants(case in case()) {
        check_case(case)?;
    }
}
