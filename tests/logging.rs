//! The orchestrator's log events, captured from a `tracing` subscriber.
//!
//! This test has a binary of its own: `tracing` caches per call site whether
//! anyone listens, and tests without a subscriber running in parallel threads
//! would make that cache drop events here.

use std::io::Write;
use std::sync::{Arc, Mutex};

use typed_saga::{Saga, Step, StepContext, StepError};

#[derive(Default)]
struct SendWelcome;

impl Step<Signup> for SendWelcome {
    type Output = ();

    async fn execute(&self, _: &StepContext<'_, Signup>) -> Result<(), StepError> {
        Err(StepError::transient("mail server busy"))
    }

    async fn compensate(
        &self,
        _: &StepContext<'_, Signup>,
        _: Option<()>,
    ) -> Result<(), StepError> {
        Ok(())
    }
}

typed_saga::saga! {
    /// Mails a welcome message.
    saga Signup {
        input: (),
        context: (),
        step_enum: SignupStep,
        kind_enum: SignupStepKind,
        steps: [send_welcome => SendWelcome],
    }
}

/// Collects formatted log lines in memory.
#[derive(Clone, Default)]
struct CapturedLogs(Arc<Mutex<Vec<u8>>>);

impl Write for CapturedLogs {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(start_paused = true)]
async fn retries_are_logged_with_ids_and_error() {
    let logs = CapturedLogs::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let saga = Saga::<Signup, _>::new((), Arc::new(())).with_retry_policy(
        typed_saga::RetryPolicy::fixed(2, std::time::Duration::from_secs(1)),
    );
    let saga_id = saga.id();
    saga.run_to_end().await.unwrap();

    let output = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    let retry = output
        .lines()
        .find(|line| line.contains("step attempt failed; retrying"))
        .expect("a retry line");
    assert!(retry.contains(&saga_id.to_string()), "{retry}");
    assert!(retry.contains("step=send_welcome"), "{retry}");
    assert!(retry.contains("attempt=1"), "{retry}");
    assert!(retry.contains("mail server busy"), "{retry}");
    assert!(
        output.contains("step attempt failed; giving up"),
        "{output}"
    );
    assert!(
        output.contains("WARN") && output.contains("saga compensated"),
        "{output}"
    );
}
