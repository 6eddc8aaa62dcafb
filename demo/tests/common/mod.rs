//! Helpers for the demo's tests against a real RabbitMQ.
//!
//! The broker is at `AMQP_URL`, or at `amqp://guest:guest@127.0.0.1:5672/%2f`
//! when that is unset. A test that needs it calls [`require_broker`] first,
//! so that without a broker it fails with the command that starts one
//! instead of passing or hanging. Each test gets its own queue, named with a
//! UUID so that tests running in parallel never consume each other's
//! requests. It also gets its own data directory, and both are removed when
//! the test ends.

// Each test file uses a different part of this module.
#![allow(dead_code)]

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use demo::cli::{Broker, Settings};
use demo::saga::{ProvisioningInput, StepFaults, UserProvisioning, provisioning_saga};
use demo::store::Store;
use demo::transport::{Backend, LocalWorker};
use lapin::options::{ExchangeDeleteOptions, QueueDeleteOptions};
use lapin::{Connection, ConnectionProperties};
use tempfile::TempDir;
use typed_saga::amqp::redact_url;
use typed_saga::{MemoryLog, SagaEvent, SagaEventKind, SagaOutcome, StepAction};
use uuid::Uuid;

const DEFAULT_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// The wait between two attempts in these tests, so retries cost little.
pub const RETRY_DELAY: Duration = Duration::from_millis(10);

/// Returns the broker URL the tests use.
pub fn broker_url() -> String {
    std::env::var("AMQP_URL").unwrap_or_else(|_| DEFAULT_URL.to_owned())
}

/// Connects to the broker, or panics with the command that starts it.
pub async fn require_broker() -> Connection {
    let url = broker_url();
    let connecting = Connection::connect(&url, ConnectionProperties::default());

    match tokio::time::timeout(Duration::from_secs(5), connecting).await {
        Ok(Ok(connection)) => connection,
        Ok(Err(error)) => panic!(
            "RabbitMQ is not reachable at {}: {error}; start it with `rabbitmq-server -detached`, \
             or set AMQP_URL to a running broker",
            redact_url(&url)
        ),
        Err(_elapsed) => panic!(
            "RabbitMQ at {} did not answer within 5 s; start it with `rabbitmq-server -detached`, \
             or set AMQP_URL to a running broker",
            redact_url(&url)
        ),
    }
}

/// A command queue with a unique name whose queues and exchange are deleted
/// when it is dropped, also when the test fails.
pub struct TestQueue {
    url: String,
    name: String,
}

impl TestQueue {
    /// Builds a name from the test's name and a UUID.
    pub fn new(test: &str) -> Self {
        Self {
            url: broker_url(),
            name: format!("typed-saga-demo-test.{test}.{}", Uuid::new_v4().simple()),
        }
    }

    /// Returns the queue's name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for TestQueue {
    fn drop(&mut self) {
        let url = self.url.clone();
        let queues = [self.name.clone(), format!("{}.dead-letter", self.name)];
        let exchange = format!("{}.dlx", self.name);

        // Drop cannot await, and the test's runtime may be unwinding, so the
        // cleanup runs on a runtime of its own.
        let cleanup = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("building the cleanup runtime");
            runtime.block_on(async {
                let Ok(connection) =
                    Connection::connect(&url, ConnectionProperties::default()).await
                else {
                    return;
                };
                // A failed delete closes its channel, so each gets its own.
                for queue in &queues {
                    if let Ok(channel) = connection.create_channel().await {
                        let _ = channel
                            .queue_delete(queue, QueueDeleteOptions::default())
                            .await;
                    }
                }
                if let Ok(channel) = connection.create_channel().await {
                    let _ = channel
                        .exchange_delete(&exchange, ExchangeDeleteOptions::default())
                        .await;
                }
                let _ = connection.close(200, "test cleanup").await;
            });
        });
        let _ = cleanup.join();
    }
}

/// Returns settings for `queue` and `data_dir` with a short retry delay.
pub fn settings(broker: Broker, queue: &str, data_dir: &Path) -> Settings {
    Settings {
        amqp_url: broker_url(),
        data_dir: data_dir.to_path_buf(),
        broker,
        queue: queue.to_owned(),
        retry_delay: RETRY_DELAY,
    }
}

/// A worker serving a test queue over RabbitMQ from a temporary data
/// directory, with a client to call it and a log the sagas share.
pub struct AmqpHarness {
    /// Dropped first, so the worker stops before its queue is deleted.
    backend: Option<Backend>,
    /// Every saga's events.
    pub log: Arc<MemoryLog>,
    /// The settings the backend was started with.
    pub settings: Settings,
    queue: TestQueue,
    dir: TempDir,
}

impl AmqpHarness {
    /// Starts the worker and the client, or panics when RabbitMQ is absent.
    pub async fn start(test: &str) -> Self {
        require_broker().await;
        let queue = TestQueue::new(test);
        let dir = tempfile::tempdir().expect("creating a temporary data directory");
        let settings = settings(Broker::Amqp, queue.name(), dir.path());

        let backend = Backend::start(&settings, LocalWorker::Start)
            .await
            .unwrap_or_else(|error| panic!("starting the AMQP backend: {error:#}"));

        Self {
            backend: Some(backend),
            log: Arc::new(MemoryLog::new()),
            settings,
            queue,
            dir,
        }
    }

    /// Returns the backend.
    pub fn backend(&self) -> &Backend {
        self.backend
            .as_ref()
            .expect("the backend runs until shutdown")
    }

    /// Returns the worker's databases.
    pub fn store(&self) -> &Store {
        self.backend()
            .store()
            .expect("the harness runs a local worker")
    }

    /// Returns the command queue's name.
    pub fn queue(&self) -> &str {
        self.queue.name()
    }

    /// Returns the data directory.
    pub fn data_dir(&self) -> &Path {
        self.dir.path()
    }

    /// Runs one saga to its end, panicking when its log fails.
    pub async fn provision(&self, input: ProvisioningInput) -> SagaOutcome<UserProvisioning> {
        provisioning_saga(
            input,
            self.backend().transport(),
            self.log.clone(),
            RETRY_DELAY,
        )
        .run_to_end()
        .await
        .expect("the in-memory saga log never fails")
    }

    /// Stops the worker and closes the client.
    pub async fn shutdown(mut self) {
        if let Some(backend) = self.backend.take() {
            backend.shutdown().await;
        }
    }
}

/// Returns a valid input for `username` without faults.
pub fn user(username: &str) -> ProvisioningInput {
    ProvisioningInput {
        username: username.to_owned(),
        email: format!("{username}@example.com"),
        roles: vec!["reader".to_owned(), "writer".to_owned()],
        storage_mb: 1024,
        ops_per_day: 5000,
        faults: StepFaults::default(),
    }
}

/// Returns the steps whose compensation succeeded, in the order they ran.
pub fn compensated_steps(events: &[SagaEvent]) -> Vec<String> {
    events
        .iter()
        .filter_map(|event| match &event.kind {
            SagaEventKind::AttemptSucceeded {
                step,
                action: StepAction::Compensate,
                ..
            } => Some(step.clone()),
            _ => None,
        })
        .collect()
}

/// Counts the attempts of `step`'s `action` that started.
pub fn attempts_started(events: &[SagaEvent], step: &str, action: StepAction) -> usize {
    events
        .iter()
        .filter(|event| {
            matches!(
                &event.kind,
                SagaEventKind::AttemptStarted { step: started, action: started_action, .. }
                    if started == step && *started_action == action
            )
        })
        .count()
}
