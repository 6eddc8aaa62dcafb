//! The transports that carry the saga's step requests to the provisioning
//! worker: RabbitMQ, or a direct call in this process.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use serde_json::Value;
use typed_saga::amqp::{AmqpError, RpcClient, RpcClientOptions, Worker, WorkerOptions, redact_url};
use typed_saga::{StepError, StepRequest};

use crate::cli::{Broker, Settings};
use crate::store::Store;
use crate::worker::ProvisioningWorker;

/// How long `--broker auto` waits for RabbitMQ to accept a connection
/// before it uses the in-process transport.
pub const BROKER_PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// The command that starts RabbitMQ, for error messages and notes.
pub const START_RABBITMQ: &str = "rabbitmq-server -detached";

/// The channel that carries step requests to the provisioning worker: the
/// context of every [`UserProvisioning`](crate::saga::UserProvisioning) saga.
#[derive(Debug)]
pub enum Transport {
    /// Requests travel as RPCs over RabbitMQ to whichever worker consumes
    /// the queue.
    Amqp {
        /// The connected client.
        client: RpcClient,
        /// The worker's command queue.
        queue: String,
    },
    /// Requests go straight to a worker in this process, without a broker.
    InProcess(ProvisioningWorker),
}

impl Transport {
    /// Sends one step request and returns the worker's output or error.
    ///
    /// # Errors
    ///
    /// The worker's [`StepError`], or for AMQP a transient or unknown error
    /// when the broker is unreachable or the reply does not arrive in time.
    pub async fn call(&self, request: &StepRequest) -> Result<Value, StepError> {
        match self {
            Self::Amqp { client, queue } => client.call(queue, request).await,
            Self::InProcess(worker) => worker.handle(request.clone()).await,
        }
    }
}

/// Whether a command runs the provisioning worker in its own process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LocalWorker {
    /// Run a worker here: an AMQP consumer of the queue, or the in-process
    /// transport's target.
    Start,
    /// Rely on a worker started elsewhere (`demo worker`), so AMQP is needed.
    None,
}

/// A transport with the worker it reaches when that worker runs here.
#[derive(Debug)]
pub struct Backend {
    transport: Arc<Transport>,
    local_worker: Option<ProvisioningWorker>,
    consumer: Option<Worker>,
    description: String,
}

impl Backend {
    /// Picks the transport that `settings.broker` selects, opens the
    /// worker's databases in `settings.data_dir` when `local_worker` is
    /// [`LocalWorker::Start`], and starts that worker.
    ///
    /// With [`Broker::Auto`], a broker that does not accept a connection
    /// within [`BROKER_PROBE_TIMEOUT`] makes this fall back to the
    /// in-process transport, announced in one line on standard error.
    ///
    /// # Errors
    ///
    /// When the databases cannot be opened, the broker is needed and
    /// unreachable, or the worker cannot declare or consume its queue.
    pub async fn start(settings: &Settings, local_worker: LocalWorker) -> anyhow::Result<Self> {
        let Some(client) = choose_client(settings, local_worker).await? else {
            let worker = open_worker(settings).await?;
            return Ok(Self {
                description: "in-process calls to the worker, without a broker".to_owned(),
                transport: Arc::new(Transport::InProcess(worker.clone())),
                local_worker: Some(worker),
                consumer: None,
            });
        };

        let (local_worker, consumer, served_by) = match local_worker {
            LocalWorker::Start => {
                ensure_no_other_consumer(settings).await?;
                let worker = open_worker(settings).await?;
                let consumer = start_consumer(settings, worker.clone()).await?;
                (
                    Some(worker),
                    Some(consumer),
                    "served by a worker in this process",
                )
            }
            LocalWorker::None => (None, None, "served by a separate `demo worker`"),
        };

        Ok(Self {
            description: format!(
                "AMQP queue `{}` at {}, {served_by}",
                settings.queue,
                redact_url(&settings.amqp_url)
            ),
            transport: Arc::new(Transport::Amqp {
                client,
                queue: settings.queue.clone(),
            }),
            local_worker,
            consumer,
        })
    }

    /// Returns the transport, to be the context of each saga.
    pub fn transport(&self) -> Arc<Transport> {
        Arc::clone(&self.transport)
    }

    /// Returns the databases of the worker in this process, if one runs.
    pub fn store(&self) -> Option<&Store> {
        self.local_worker.as_ref().map(ProvisioningWorker::store)
    }

    /// Describes the transport in a few words for people, with the broker's
    /// password hidden.
    pub fn description(&self) -> &str {
        &self.description
    }

    /// Stops the local AMQP worker once its running requests have replies,
    /// and closes the client's connection.
    pub async fn shutdown(self) {
        if let Some(consumer) = self.consumer {
            consumer.shutdown().await;
        }
        if let Transport::Amqp { client, .. } = self.transport.as_ref() {
            client.close().await;
        }
    }
}

/// Opens the worker's three databases in the data directory.
pub async fn open_worker(settings: &Settings) -> anyhow::Result<ProvisioningWorker> {
    ProvisioningWorker::open(&settings.data_dir)
        .await
        .with_context(|| {
            format!(
                "could not open the worker's databases in {}; check that the directory is \
                 writable, or pass another --data-dir",
                settings.data_dir.display()
            )
        })
}

/// Starts an AMQP worker that serves `settings.queue` with `worker`.
///
/// # Errors
///
/// When the broker is unreachable or rejects the queue declarations; the
/// message names the broker with its password hidden.
pub async fn start_consumer(
    settings: &Settings,
    worker: ProvisioningWorker,
) -> anyhow::Result<Worker> {
    let handler = move |request: StepRequest| {
        let worker = worker.clone();
        async move { worker.handle(request).await }
    };

    Worker::start(
        &settings.amqp_url,
        WorkerOptions::new(settings.queue.clone()),
        handler,
    )
    .await
    .map_err(|error| {
        let action = format!("start the worker on queue `{}`", settings.queue);
        amqp_error(settings, &action, error)
    })
}

/// Refuses to start a worker in this process on a queue that another
/// process consumes: the two workers would share the requests, and one
/// user's rows would end up split between two data directories. A consumer
/// that just died can linger for a moment, so the check waits a little
/// before it gives up.
async fn ensure_no_other_consumer(settings: &Settings) -> anyhow::Result<()> {
    const CHECKS: u32 = 5;
    const PAUSE: Duration = Duration::from_millis(400);

    let mut consumers = 0;
    for check in 1..=CHECKS {
        consumers = count_consumers(settings).await?;
        if consumers == 0 {
            break;
        }
        if check < CHECKS {
            tokio::time::sleep(PAUSE).await;
        }
    }

    if consumers > 0 {
        bail!(
            "queue `{}` at {} already has {consumers} consumer(s), such as a `demo worker` \
             that may use another --data-dir; pass --no-local-worker to send the requests to it, \
             or choose another --queue",
            settings.queue,
            redact_url(&settings.amqp_url)
        );
    }
    Ok(())
}

/// Returns how many processes consume `settings.queue` now, 0 when the
/// queue does not exist yet.
///
/// # Errors
///
/// When the broker cannot be reached.
pub async fn count_consumers(settings: &Settings) -> anyhow::Result<u32> {
    let connection =
        lapin::Connection::connect(&settings.amqp_url, lapin::ConnectionProperties::default())
            .await
            .with_context(|| {
                format!(
                    "cannot connect to {} to check queue `{}`",
                    redact_url(&settings.amqp_url),
                    settings.queue
                )
            })?;
    let consumers = queue_consumers(&connection, &settings.queue).await;
    let _ = connection.close(0, "checked the queue's consumers").await;
    Ok(consumers)
}

/// Returns how many consumers `queue` has, or 0 when it does not exist yet.
async fn queue_consumers(connection: &lapin::Connection, queue: &str) -> u32 {
    let Ok(channel) = connection.create_channel().await else {
        return 0;
    };
    let options = lapin::options::QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    // A passive declare of a missing queue closes the channel, so each
    // check gets a channel of its own.
    match channel
        .queue_declare(queue, options, lapin::types::FieldTable::default())
        .await
    {
        Ok(declared) => declared.consumer_count(),
        Err(_) => 0,
    }
}

/// Returns the client to use, or `None` for the in-process transport, which
/// is chosen only when a local worker is to run.
async fn choose_client(
    settings: &Settings,
    local_worker: LocalWorker,
) -> anyhow::Result<Option<RpcClient>> {
    let probe = RpcClientOptions::default().with_connect_timeout(BROKER_PROBE_TIMEOUT);

    match (settings.broker, local_worker) {
        (Broker::InProcess, LocalWorker::Start) => Ok(None),
        (Broker::InProcess, LocalWorker::None) => bail!(
            "--no-local-worker needs a broker, but --broker in-process calls the worker in this \
             process; use --broker amqp, or drop --no-local-worker"
        ),
        (Broker::Amqp, _) => connect_client(settings, RpcClientOptions::default())
            .await
            .map(Some),
        (Broker::Auto, LocalWorker::None) => connect_client(settings, probe).await.map(Some),
        (Broker::Auto, LocalWorker::Start) => {
            match RpcClient::connect(&settings.amqp_url, probe).await {
                Ok(client) => Ok(Some(client)),
                // The broker replied and rejected the connection (wrong
                // credentials or vhost): falling back would hide the mistake.
                Err(error) if error.is_rejected_by_broker() => {
                    Err(amqp_error(settings, "connect the RPC client", error))
                }
                Err(error) => {
                    let url = redact_url(&settings.amqp_url);
                    eprintln!(
                        "note: RabbitMQ is not reachable at {url} ({}); running the worker \
                         in-process instead; start RabbitMQ with `{START_RABBITMQ}` to use AMQP",
                        probe_failure(&error)
                    );
                    tracing::info!(%url, %error, "using the in-process transport");
                    Ok(None)
                }
            }
        }
    }
}

async fn connect_client(
    settings: &Settings,
    options: RpcClientOptions,
) -> anyhow::Result<RpcClient> {
    RpcClient::connect(&settings.amqp_url, options)
        .await
        .map_err(|error| amqp_error(settings, "connect the RPC client", error))
}

/// Wraps a broker error with the action that failed. When the broker
/// refused the connection, the outer message points at the credentials.
/// When it could not be reached, the message gives the command that starts
/// RabbitMQ.
fn amqp_error(settings: &Settings, action: &str, error: AmqpError) -> anyhow::Error {
    let url = redact_url(&settings.amqp_url);
    let unreachable = matches!(
        error,
        AmqpError::Connect { .. } | AmqpError::ConnectTimeout { .. }
    );

    let rejected = error.is_rejected_by_broker();

    let error = anyhow::Error::new(error);
    if rejected {
        error.context(format!(
            "RabbitMQ at {url} refused the connection; check the user, password and vhost in \
             --amqp-url (or AMQP_URL)"
        ))
    } else if unreachable {
        error.context(format!(
            "RabbitMQ is not reachable at {url}; start it with `{START_RABBITMQ}`, or point \
             --amqp-url (or AMQP_URL) at a running broker"
        ))
    } else {
        error.context(format!("could not {action} at {url}"))
    }
}

/// Returns why the probe connection failed, without the advice that
/// [`AmqpError`]'s message adds, since the fallback note gives its own.
fn probe_failure(error: &AmqpError) -> String {
    match error {
        AmqpError::Connect { error, .. } => error.to_string(),
        AmqpError::ConnectTimeout { timeout, .. } => {
            format!("connection timed out after {timeout:?}")
        }
        other => other.to_string(),
    }
}
