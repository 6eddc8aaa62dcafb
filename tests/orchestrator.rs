//! Behaviour of the orchestrator on sagas declared with `saga!`.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use typed_saga::{
    RetryPolicy, Saga, SagaOutcome, SagaStatus, Step, StepContext, StepError, StepKind,
};

/// Counts the calls each step receives.
#[derive(Debug, Default)]
struct Calls {
    create_executions: AtomicU32,
    create_compensations: AtomicU32,
    notify_executions: AtomicU32,
    notify_compensations: AtomicU32,
    compensated_ids: Mutex<Vec<Option<u64>>>,
    /// Makes every compensation of `create_account` fail transiently.
    create_compensation_busy: std::sync::atomic::AtomicBool,
}

/// How the `notify` step behaves.
#[derive(Clone, Copy, Debug, serde::Serialize, serde::Deserialize)]
enum Notify {
    Works,
    AlwaysBusy,
    Hangs,
    Rejects,
    Panics,
}

#[derive(Default)]
struct CreateAccount;

impl Step<Signup> for CreateAccount {
    type Output = u64;

    async fn execute(&self, cx: &StepContext<'_, Signup>) -> Result<u64, StepError> {
        cx.context()
            .create_executions
            .fetch_add(1, Ordering::SeqCst);
        Ok(42)
    }

    async fn compensate(
        &self,
        cx: &StepContext<'_, Signup>,
        id: Option<u64>,
    ) -> Result<(), StepError> {
        cx.context()
            .create_compensations
            .fetch_add(1, Ordering::SeqCst);
        cx.context().compensated_ids.lock().unwrap().push(id);
        if cx.context().create_compensation_busy.load(Ordering::SeqCst) {
            return Err(StepError::transient("account service busy"));
        }
        Ok(())
    }
}

#[derive(Default)]
struct SendWelcome;

impl Step<Signup> for SendWelcome {
    type Output = String;

    async fn execute(&self, cx: &StepContext<'_, Signup>) -> Result<String, StepError> {
        cx.context()
            .notify_executions
            .fetch_add(1, Ordering::SeqCst);
        let account = cx.output::<CreateAccount>()?;
        match cx.input() {
            Notify::Works => Ok(format!("welcome mail for account {account}")),
            Notify::AlwaysBusy => Err(StepError::transient("mail server busy")),
            Notify::Hangs => {
                tokio::time::sleep(Duration::from_secs(3_600)).await;
                Ok("too late".to_owned())
            }
            Notify::Rejects => Err(StepError::permanent("address rejected")),
            Notify::Panics => panic!("mail client bug"),
        }
    }

    async fn compensate(
        &self,
        cx: &StepContext<'_, Signup>,
        _: Option<String>,
    ) -> Result<(), StepError> {
        cx.context()
            .notify_compensations
            .fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    fn retry_policy(&self) -> Option<RetryPolicy> {
        Some(
            RetryPolicy::fixed(2, Duration::from_secs(1))
                .with_attempt_timeout(Duration::from_secs(10)),
        )
    }
}

typed_saga::saga! {
    /// Creates an account and mails a welcome message.
    saga Signup {
        input: Notify,
        context: Calls,
        step_enum: SignupStep,
        kind_enum: SignupStepKind,
        steps: [
            create_account => CreateAccount,
            send_welcome => SendWelcome,
        ],
    }
}

async fn run(notify: Notify) -> (SagaOutcome<Signup>, Arc<Calls>) {
    let calls = Arc::new(Calls::default());
    let outcome = Saga::<Signup, _>::new(notify, calls.clone())
        .run_to_end()
        .await
        .unwrap();
    (outcome, calls)
}

#[tokio::test(start_paused = true)]
async fn later_step_reads_earlier_output() {
    let (outcome, _) = run(Notify::Works).await;

    let SagaOutcome::Succeeded(saga) = outcome else {
        panic!("expected success, got {:?}", outcome.status());
    };
    assert_eq!(
        saga.output::<SendWelcome>().unwrap(),
        "welcome mail for account 42"
    );
}

#[tokio::test(start_paused = true)]
async fn step_policy_overrides_saga_policy() {
    let (outcome, calls) = run(Notify::AlwaysBusy).await;

    assert_eq!(outcome.status(), SagaStatus::Compensated);
    assert_eq!(calls.notify_executions.load(Ordering::SeqCst), 2);
}

#[tokio::test(start_paused = true)]
async fn compensation_receives_its_action_output() {
    let (_, calls) = run(Notify::Rejects).await;

    assert_eq!(*calls.compensated_ids.lock().unwrap(), [Some(42)]);
}

#[tokio::test(start_paused = true)]
async fn permanent_error_is_not_retried_nor_compensated() {
    let (outcome, calls) = run(Notify::Rejects).await;

    assert_eq!(outcome.status(), SagaStatus::Compensated);
    assert_eq!(calls.notify_executions.load(Ordering::SeqCst), 1);
    assert_eq!(calls.notify_compensations.load(Ordering::SeqCst), 0);
    assert_eq!(calls.create_compensations.load(Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn timed_out_step_is_compensated_first() {
    let calls = Arc::new(Calls::default());
    let log = Arc::new(typed_saga::MemoryLog::new());
    let outcome = Saga::<Signup, _>::new(Notify::Hangs, calls.clone())
        .with_log(log.clone())
        .run_to_end()
        .await
        .unwrap();

    assert_eq!(outcome.status(), SagaStatus::Compensated);
    assert_eq!(calls.notify_executions.load(Ordering::SeqCst), 2);
    assert_eq!(calls.notify_compensations.load(Ordering::SeqCst), 1);
    let remaining = log.events().iter().find_map(|event| match &event.kind {
        typed_saga::SagaEventKind::Transition {
            to: SagaStatus::Failed,
            remaining,
            ..
        } => Some(remaining.clone()),
        _ => None,
    });
    assert_eq!(remaining.unwrap(), ["send_welcome", "create_account"]);
}

#[test]
fn kind_names_are_stable_snake_case() {
    let names: Vec<&str> = SignupStepKind::ALL.iter().map(|kind| kind.name()).collect();

    assert_eq!(names, ["create_account", "send_welcome"]);
    assert_eq!(
        "send_welcome".parse::<SignupStepKind>(),
        Ok(SignupStepKind::SendWelcome)
    );
}

#[test]
fn unknown_kind_name_lists_the_known_names() {
    let error = "sendwelcome".parse::<SignupStepKind>().unwrap_err();

    assert_eq!(
        error.to_string(),
        "unknown step \"sendwelcome\" in saga Signup; expected one of: create_account, send_welcome"
    );
}

#[test]
fn factory_builds_the_step_of_each_kind() {
    for &kind in SignupStepKind::ALL {
        assert_eq!(SignupStep::from_kind(kind).kind(), kind);
    }
}

#[tokio::test(start_paused = true)]
async fn panicking_step_counts_as_unknown_outcome() {
    let calls = Arc::new(Calls::default());
    let log = Arc::new(typed_saga::MemoryLog::new());
    let outcome = Saga::<Signup, _>::new(Notify::Panics, calls.clone())
        .with_log(log.clone())
        .run_to_end()
        .await
        .unwrap();

    assert_eq!(outcome.status(), SagaStatus::Compensated);
    assert_eq!(calls.notify_executions.load(Ordering::SeqCst), 2);
    assert_eq!(calls.notify_compensations.load(Ordering::SeqCst), 1);
    let panicked = log.events().iter().any(|event| {
        event
            .kind
            .to_string()
            .contains("the attempt panicked: mail client bug")
    });
    assert!(panicked, "{:#?}", log.events());
}

#[derive(Default)]
struct Measure;

impl Step<Survey> for Measure {
    type Output = f64;

    async fn execute(&self, _: &StepContext<'_, Survey>) -> Result<f64, StepError> {
        Ok(f64::NAN)
    }

    async fn compensate(
        &self,
        _: &StepContext<'_, Survey>,
        _: Option<f64>,
    ) -> Result<(), StepError> {
        Ok(())
    }
}

typed_saga::saga! {
    /// Records one measurement.
    saga Survey {
        input: (),
        context: (),
        step_enum: SurveyStep,
        kind_enum: SurveyStepKind,
        steps: [measure => Measure],
    }
}

#[tokio::test(start_paused = true)]
async fn output_that_does_not_read_back_is_unknown() {
    let log = Arc::new(typed_saga::MemoryLog::new());
    let outcome = Saga::<Survey, _>::new((), Arc::new(()))
        .with_log(log.clone())
        .with_retry_policy(RetryPolicy::fixed(2, Duration::from_secs(1)))
        .run_to_end()
        .await
        .unwrap();

    assert_eq!(outcome.status(), SagaStatus::Compensated);
    let rejected = log.events().iter().any(|event| {
        event
            .kind
            .to_string()
            .contains("does not read back from JSON")
    });
    assert!(rejected, "{:#?}", log.events());
}

#[tokio::test(start_paused = true)]
async fn compensations_default_to_saga_retry_policy() {
    let calls = Arc::new(Calls::default());
    calls.create_compensation_busy.store(true, Ordering::SeqCst);

    let outcome = Saga::<Signup, _>::new(Notify::Rejects, calls.clone())
        .with_retry_policy(RetryPolicy::fixed(3, Duration::from_secs(1)))
        .run_to_end()
        .await
        .unwrap();

    assert_eq!(outcome.status(), SagaStatus::Failed);
    assert_eq!(calls.create_compensations.load(Ordering::SeqCst), 3);
}
