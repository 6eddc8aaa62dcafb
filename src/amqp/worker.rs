//! The serving side: consumes a command queue and replies to each request.

use std::any::Any;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{FutureExt, StreamExt};
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions,
    BasicRejectOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{Connection, Consumer, ExchangeKind};
use serde_json::Value;
use serde_json::error::Category;
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};
use tracing::{Instrument, debug, error, info, info_span, warn};

use super::{
    AmqpError, ConfirmedChannel, PublishError, Published, check_queue_name, connect,
    json_properties, redact_url,
};
use crate::{StepError, StepReply, StepRequest};

/// The name the broker's management UI shows for a worker's connection.
const CONNECTION_NAME: &str = "typed-saga worker";

/// The smallest delay that a failed reconnect attempt doubles, so a repeated
/// attempt waits 20 ms or more even when
/// [`WorkerOptions::reconnect_min_delay`] is zero.
const MIN_RECONNECT_STEP: Duration = Duration::from_millis(10);

const DEAD_LETTER_EXCHANGE_SUFFIX: &str = ".dlx";
const DEAD_LETTER_QUEUE_SUFFIX: &str = ".dead-letter";

/// Runs the action or the compensation of a step for a [`Worker`].
///
/// A handler must be idempotent per [`StepRequest::idempotency_key`]: the
/// broker redelivers a request whose reply was not confirmed, and a client
/// retries a call whose outcome it does not know. On a key it has seen, the
/// handler returns the first result and changes nothing.
///
/// Closures `Fn(StepRequest) -> impl Future<Output = Result<Value, StepError>>`
/// are handlers too.
pub trait StepHandler: Send + Sync + 'static {
    /// Runs `request.action` of step `request.step`, and returns the step's
    /// output or why it failed.
    fn handle(&self, request: StepRequest)
    -> impl Future<Output = Result<Value, StepError>> + Send;
}

impl<F, Fut> StepHandler for F
where
    F: Fn(StepRequest) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Value, StepError>> + Send,
{
    fn handle(
        &self,
        request: StepRequest,
    ) -> impl Future<Output = Result<Value, StepError>> + Send {
        self(request)
    }
}

/// Settings of a [`Worker`].
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct WorkerOptions {
    /// The command queue to consume.
    pub queue: String,
    /// How many requests the broker hands out before one is acknowledged,
    /// and so how many the handler runs at once. Defaults to 16.
    pub prefetch: u16,
    /// How long opening a connection may take. Defaults to 10 s.
    pub connect_timeout: Duration,
    /// The wait before the first reconnect attempt. Each failed attempt
    /// doubles it, up to [`reconnect_max_delay`](Self::reconnect_max_delay),
    /// and a repeated attempt waits at least 20 ms. Defaults to 500 ms.
    pub reconnect_min_delay: Duration,
    /// The maximum wait between two reconnect attempts. Defaults to 30 s.
    pub reconnect_max_delay: Duration,
}

impl WorkerOptions {
    /// Builds the default options for consuming `queue`.
    pub fn new(queue: impl Into<String>) -> Self {
        Self {
            queue: queue.into(),
            prefetch: 16,
            connect_timeout: Duration::from_secs(10),
            reconnect_min_delay: Duration::from_millis(500),
            reconnect_max_delay: Duration::from_secs(30),
        }
    }

    /// Sets [`prefetch`](Self::prefetch).
    #[must_use]
    pub fn with_prefetch(mut self, prefetch: u16) -> Self {
        self.prefetch = prefetch;
        self
    }

    /// Sets [`connect_timeout`](Self::connect_timeout).
    #[must_use]
    pub fn with_connect_timeout(mut self, connect_timeout: Duration) -> Self {
        self.connect_timeout = connect_timeout;
        self
    }

    /// Sets the initial and the maximum wait between reconnect attempts.
    #[must_use]
    pub fn with_reconnect_delays(mut self, min: Duration, max: Duration) -> Self {
        self.reconnect_min_delay = min;
        self.reconnect_max_delay = max;
        self
    }

    /// Returns the name of the exchange that receives rejected requests:
    /// the queue's name followed by `.dlx`.
    pub fn dead_letter_exchange(&self) -> String {
        format!("{}{DEAD_LETTER_EXCHANGE_SUFFIX}", self.queue)
    }

    /// Returns the name of the queue that collects rejected requests: the
    /// queue's name followed by `.dead-letter`.
    pub fn dead_letter_queue(&self) -> String {
        format!("{}{DEAD_LETTER_QUEUE_SUFFIX}", self.queue)
    }
}

/// A running consumer of one command queue.
///
/// For each delivery the worker decodes a [`StepRequest`], runs the
/// [`StepHandler`], publishes the reply to the request's `reply_to` with the
/// same `correlation_id` and waits for the broker's confirm, and only then
/// acknowledges the request. Requests run concurrently, as many as
/// [`WorkerOptions::prefetch`] allows.
///
/// A request is malformed when its body is not a JSON step request or it
/// has no `reply_to` or no `correlation_id`. When it has a `reply_to`, it
/// gets a [`StepError::Permanent`] reply that names the problem. Either way
/// it is rejected without requeue, so it lands in the dead-letter queue. A handler that panics gets
/// the same treatment with a [`StepError::Unknown`] reply, because its
/// effect may be half done. When publishing the reply fails, the request is
/// returned to the queue for another try.
///
/// When the connection dies, the worker reconnects with a backoff that
/// doubles from [`WorkerOptions::reconnect_min_delay`] to
/// [`WorkerOptions::reconnect_max_delay`], and logs each attempt. Requests
/// that were running then finish, but their acknowledgements fail, so the
/// broker delivers them again.
///
/// Dropping a `Worker` stops it like [`Worker::shutdown`] does, without
/// waiting for it.
#[must_use = "dropping a Worker stops it"]
#[derive(Debug)]
pub struct Worker {
    queue: String,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Worker {
    /// Declares the command queue and its dead-letter exchange and queue,
    /// starts consuming, and returns once the worker is ready for requests.
    ///
    /// # Errors
    ///
    /// Returns [`AmqpError`] when the options are invalid, the broker is not
    /// reachable, or it rejects a declaration, for example because a queue
    /// of that name exists with other arguments. After this first setup,
    /// the worker retries every failure itself.
    pub async fn start<H: StepHandler>(
        url: &str,
        options: WorkerOptions,
        handler: H,
    ) -> Result<Self, AmqpError> {
        check_queue_name(&options.queue, DEAD_LETTER_QUEUE_SUFFIX.len())?;
        if options.prefetch == 0 {
            return Err(AmqpError::ZeroPrefetch {
                queue: options.queue,
            });
        }

        let context = Arc::new(WorkerContext {
            url: url.to_owned(),
            redacted_url: redact_url(url),
            options,
            handler,
        });
        let consuming = Consuming::open(&context).await?;
        info!(
            queue = %context.options.queue,
            url = %context.redacted_url,
            prefetch = context.options.prefetch,
            "worker consuming"
        );

        let queue = context.options.queue.clone();
        let (stop, stop_requested) = watch::channel(false);
        let task = tokio::spawn(run(context, consuming, stop_requested));
        Ok(Self { queue, stop, task })
    }

    /// Returns the command queue this worker consumes.
    pub fn queue(&self) -> &str {
        &self.queue
    }

    /// Stops taking requests, waits for the running ones to be replied to
    /// and acknowledged, and closes the connection.
    ///
    /// Requests the broker had sent ahead but the worker had not started
    /// return to the queue. A handler that never returns keeps this waiting.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        if let Err(error) = self.task.await {
            error!(queue = %self.queue, %error, "worker task failed");
        }
    }
}

struct WorkerContext<H> {
    url: String,
    redacted_url: String,
    options: WorkerOptions,
    handler: H,
}

/// A connection with its queues declared and its consumer started.
struct Consuming {
    connection: Connection,
    channel: Arc<ConfirmedChannel>,
    consumer: Consumer,
}

impl Consuming {
    async fn open<H>(context: &WorkerContext<H>) -> Result<Self, AmqpError> {
        let url = context.redacted_url.as_str();
        let options = &context.options;
        let connection =
            connect(&context.url, url, CONNECTION_NAME, options.connect_timeout).await?;
        let channel = ConfirmedChannel::open(&connection, url).await?;

        declare_queues(&channel.channel, options, url).await?;
        channel
            .channel
            .basic_qos(options.prefetch, BasicQosOptions::default())
            .await
            .map_err(|error| AmqpError::setup(url, "set the prefetch limit", error))?;
        let consumer = channel
            .channel
            .basic_consume(
                &options.queue,
                "",
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(|error| {
                AmqpError::setup(
                    url,
                    format!("consume from queue `{}`", options.queue),
                    error,
                )
            })?;

        Ok(Self {
            connection,
            channel: Arc::new(channel),
            consumer,
        })
    }
}

/// Declares the dead-letter exchange and queue, then the command queue that
/// rejects into them. Declaring is idempotent while the arguments match.
async fn declare_queues(
    channel: &lapin::Channel,
    options: &WorkerOptions,
    url: &str,
) -> Result<(), AmqpError> {
    let exchange = options.dead_letter_exchange();
    let dead_letter_queue = options.dead_letter_queue();
    let durable_queue = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
    let mismatch_hint = "a queue or exchange of that name may exist with other arguments; \
                         delete it or pick another queue name";

    channel
        .exchange_declare(
            &exchange,
            ExchangeKind::Fanout,
            ExchangeDeclareOptions {
                durable: true,
                ..ExchangeDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .map_err(|error| AmqpError::Setup {
            url: url.to_owned(),
            action: format!("declare exchange `{exchange}`"),
            error,
            hint: mismatch_hint,
        })?;
    channel
        .queue_declare(&dead_letter_queue, durable_queue, FieldTable::default())
        .await
        .map_err(|error| AmqpError::Setup {
            url: url.to_owned(),
            action: format!("declare queue `{dead_letter_queue}`"),
            error,
            hint: mismatch_hint,
        })?;
    channel
        .queue_bind(
            &dead_letter_queue,
            &exchange,
            "",
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(|error| {
            AmqpError::setup(
                url,
                format!("bind queue `{dead_letter_queue}` to exchange `{exchange}`"),
                error,
            )
        })?;

    let mut arguments = FieldTable::default();
    arguments.insert(
        "x-dead-letter-exchange".into(),
        AMQPValue::LongString(exchange.as_str().into()),
    );
    channel
        .queue_declare(&options.queue, durable_queue, arguments)
        .await
        .map_err(|error| AmqpError::Setup {
            url: url.to_owned(),
            action: format!("declare queue `{}`", options.queue),
            error,
            hint: mismatch_hint,
        })?;
    Ok(())
}

/// The reason [`serve`] returned.
enum Served {
    Stopped,
    ConnectionLost(String),
}

/// Serves until a stop is requested, reconnecting whenever the connection
/// dies.
async fn run<H: StepHandler>(
    context: Arc<WorkerContext<H>>,
    first: Consuming,
    mut stop_requested: watch::Receiver<bool>,
) {
    let queue = context.options.queue.as_str();
    let url = context.redacted_url.as_str();
    let mut consuming = Some(first);

    loop {
        let current = match consuming.take() {
            Some(current) => current,
            None => match reconnect(&context, &mut stop_requested).await {
                Some(current) => current,
                None => break,
            },
        };

        match serve(&context, current, &mut stop_requested).await {
            Served::Stopped => break,
            Served::ConnectionLost(reason) => {
                warn!(
                    queue,
                    url, "worker lost its connection: {reason}; reconnecting"
                );
            }
        }
    }

    info!(queue, url, "worker stopped");
}

/// Resolves when [`Worker::shutdown`] was called or the [`Worker`] dropped.
async fn stop_signal(stop_requested: &mut watch::Receiver<bool>) {
    // An error means the sender was dropped with the Worker, which is a
    // stop request too.
    let _ = stop_requested.wait_for(|stop| *stop).await;
}

/// Opens a new connection with a doubling, capped backoff. Returns `None`
/// when a stop is requested first.
async fn reconnect<H>(
    context: &WorkerContext<H>,
    stop_requested: &mut watch::Receiver<bool>,
) -> Option<Consuming> {
    let queue = context.options.queue.as_str();
    let url = context.redacted_url.as_str();
    let mut delay = context.options.reconnect_min_delay;

    for attempt in 1_u32.. {
        tokio::select! {
            biased;
            () = stop_signal(stop_requested) => return None,
            () = tokio::time::sleep(delay) => {}
        }

        info!(queue, url, attempt, "worker reconnecting");
        let opened = tokio::select! {
            biased;
            () = stop_signal(stop_requested) => return None,
            opened = Consuming::open(context) => opened,
        };
        match opened {
            Ok(consuming) => {
                info!(queue, url, attempt, "worker reconnected and consuming");
                return Some(consuming);
            }
            Err(error) => {
                // The floor keeps a zero initial delay from turning into a
                // busy loop.
                delay = delay
                    .max(MIN_RECONNECT_STEP)
                    .saturating_mul(2)
                    .min(context.options.reconnect_max_delay);
                warn!(queue, attempt, %error, retry_in = ?delay, "worker could not reconnect");
            }
        }
    }
    None
}

/// Hands each delivery to its own task until a stop is requested or the
/// consumer fails.
async fn serve<H: StepHandler>(
    context: &Arc<WorkerContext<H>>,
    consuming: Consuming,
    stop_requested: &mut watch::Receiver<bool>,
) -> Served {
    let Consuming {
        connection,
        channel,
        mut consumer,
    } = consuming;
    let mut running = JoinSet::new();

    let served = loop {
        tokio::select! {
            biased;
            () = stop_signal(stop_requested) => break Served::Stopped,
            Some(finished) = running.join_next() => {
                if let Err(error) = finished {
                    error!(queue = %context.options.queue, %error, "request task failed");
                }
            }
            next = consumer.next() => match next {
                Some(Ok(delivery)) => {
                    let span = info_span!(
                        "step_request",
                        queue = %context.options.queue,
                        delivery_tag = delivery.delivery_tag,
                    );
                    let task = handle_delivery(Arc::clone(context), Arc::clone(&channel), delivery);
                    running.spawn(task.instrument(span));
                }
                Some(Err(error)) => break Served::ConnectionLost(error.to_string()),
                None => break Served::ConnectionLost("the broker cancelled the consumer".to_owned()),
            },
        }
    };

    match served {
        Served::Stopped => {
            stop_consuming(context, &connection, &channel, &consumer, running).await;
        }
        Served::ConnectionLost(_) => {
            // The running requests finish their handler; their replies or
            // acknowledgements fail, so the broker delivers them again.
            running.detach_all();
        }
    }
    served
}

/// Cancels the consumer, lets the running requests finish, and closes the
/// connection, which returns the deliveries not started to the queue.
async fn stop_consuming<H>(
    context: &WorkerContext<H>,
    connection: &Connection,
    channel: &ConfirmedChannel,
    consumer: &Consumer,
    mut running: JoinSet<()>,
) {
    let queue = context.options.queue.as_str();
    let tag = consumer.tag();

    if let Err(error) = channel
        .channel
        .basic_cancel(tag.as_str(), BasicCancelOptions::default())
        .await
    {
        warn!(queue, %error, "could not cancel the consumer while stopping");
    }

    while let Some(finished) = running.join_next().await {
        if let Err(error) = finished {
            error!(queue, %error, "request task failed");
        }
    }

    if let Err(error) = connection.close(200, "worker stopped").await {
        debug!(queue, %error, "closing the worker connection failed");
    }
}

/// A delivery that carries everything a request needs.
struct ValidRequest {
    request: StepRequest,
    reply_to: ShortString,
    correlation_id: ShortString,
}

/// A delivery that cannot be served, and what is wrong with it.
struct MalformedRequest {
    reply_to: Option<ShortString>,
    correlation_id: Option<ShortString>,
    problem: String,
}

fn decode_request(delivery: &Delivery) -> Result<ValidRequest, MalformedRequest> {
    let present = |value: &Option<ShortString>| value.clone().filter(|v| !v.as_str().is_empty());
    let reply_to = present(delivery.properties.reply_to());
    let correlation_id = present(delivery.properties.correlation_id());
    let malformed = |problem: String| MalformedRequest {
        reply_to: reply_to.clone(),
        correlation_id: correlation_id.clone(),
        problem,
    };

    let Some(valid_reply_to) = reply_to.clone() else {
        return Err(malformed(
            "the message has no reply_to property; set it to the queue that receives the reply"
                .to_owned(),
        ));
    };
    let Some(valid_correlation_id) = correlation_id.clone() else {
        return Err(malformed(
            "the message has no correlation_id property; set it to a unique id per request"
                .to_owned(),
        ));
    };
    let request = serde_json::from_slice::<StepRequest>(&delivery.data).map_err(|error| {
        malformed(match error.classify() {
            Category::Data => format!("the body is not a valid step request: {error}"),
            Category::Syntax | Category::Eof | Category::Io => {
                format!("the body is not valid JSON: {error}")
            }
        })
    })?;

    Ok(ValidRequest {
        request,
        reply_to: valid_reply_to,
        correlation_id: valid_correlation_id,
    })
}

/// Serves one delivery: decode, run the handler, reply, acknowledge.
async fn handle_delivery<H: StepHandler>(
    context: Arc<WorkerContext<H>>,
    channel: Arc<ConfirmedChannel>,
    delivery: Delivery,
) {
    let queue = context.options.queue.as_str();
    let valid = match decode_request(&delivery) {
        Ok(valid) => valid,
        Err(malformed) => return reject_malformed(queue, &channel, delivery, malformed).await,
    };
    let ValidRequest {
        request,
        reply_to,
        correlation_id,
    } = valid;
    let correlation_id = correlation_id.as_str();
    let saga_id = request.saga_id.clone();
    let step = request.step.clone();
    let action = request.action;
    debug!(correlation_id, saga_id, step, %action, redelivered = delivery.redelivered, "running step");

    let handled = AssertUnwindSafe(context.handler.handle(request))
        .catch_unwind()
        .await;
    let (result, panicked) = match handled {
        Ok(result) => (result, false),
        Err(panic) => {
            let message = panic_message(panic.as_ref());
            error!(correlation_id, saga_id, step, %action, panic = message, "step handler panicked");
            let error = StepError::unknown(format!(
                "the handler of step `{step}` ({action}) panicked: {message}"
            ));
            (Err(error), true)
        }
    };
    debug!(
        correlation_id,
        saga_id,
        step,
        %action,
        error = result.as_ref().err().map(tracing::field::display),
        "step finished"
    );

    let replied = publish_reply(&channel, &reply_to, Some(correlation_id), result).await;
    if panicked {
        // A panic may repeat on every delivery, so the request goes to the
        // dead-letter queue for a person to look at.
        settle(&delivery, Settle::DeadLetter).await;
    } else if replied {
        settle(&delivery, Settle::Ack).await;
    } else {
        settle(&delivery, Settle::Requeue).await;
    }
}

async fn reject_malformed(
    queue: &str,
    channel: &ConfirmedChannel,
    delivery: Delivery,
    malformed: MalformedRequest,
) {
    let MalformedRequest {
        reply_to,
        correlation_id,
        problem,
    } = malformed;
    warn!(
        reply_to = reply_to.as_ref().map(ShortString::as_str),
        correlation_id = correlation_id.as_ref().map(ShortString::as_str),
        problem,
        "rejected a malformed step request to the dead-letter queue"
    );

    if let Some(reply_to) = reply_to {
        let error = StepError::permanent(format!(
            "invalid step request on queue `{queue}`: {problem}"
        ));
        let correlation_id = correlation_id.as_ref().map(ShortString::as_str);
        publish_reply(channel, &reply_to, correlation_id, Err(error)).await;
    }
    settle(&delivery, Settle::DeadLetter).await;
}

/// Publishes a reply and waits for its confirm. Returns whether the broker
/// took it; every failure is logged here.
async fn publish_reply(
    channel: &ConfirmedChannel,
    reply_to: &ShortString,
    correlation_id: Option<&str>,
    result: Result<Value, StepError>,
) -> bool {
    let reply_to = reply_to.as_str();
    let body = match serde_json::to_vec(&StepReply::from(result)) {
        Ok(body) => body,
        Err(error) => {
            error!(reply_to, correlation_id, %error, "could not encode the reply as JSON");
            return false;
        }
    };

    // No `mandatory` flag: RabbitMQ 3.x returns every mandatory message sent
    // to a direct reply-to name as unroutable.
    let properties = json_properties(correlation_id);
    match channel.publish(reply_to, &body, properties, false).await {
        Ok(Published::Acked | Published::Returned { .. }) => true,
        Ok(Published::Nacked) => {
            warn!(
                reply_to,
                correlation_id, "the broker rejected (nack) the reply"
            );
            false
        }
        Err(PublishError::NotSent(error) | PublishError::Unconfirmed(error)) => {
            warn!(reply_to, correlation_id, %error, "could not publish the reply");
            false
        }
    }
}

/// The settlement of a served delivery.
#[derive(Clone, Copy, Debug)]
enum Settle {
    /// Acknowledged, so the broker deletes it.
    Ack,
    /// Back to the queue for another try.
    Requeue,
    /// Rejected without requeue, so the broker moves it to the dead-letter
    /// queue.
    DeadLetter,
}

async fn settle(delivery: &Delivery, settle: Settle) {
    let settled = match settle {
        Settle::Ack => delivery.ack(BasicAckOptions::default()).await,
        Settle::Requeue => {
            let options = BasicNackOptions {
                multiple: false,
                requeue: true,
            };
            delivery.nack(options).await
        }
        Settle::DeadLetter => delivery.reject(BasicRejectOptions { requeue: false }).await,
    };

    if let Err(error) = settled {
        // The channel is closed, so the broker delivers the request again.
        warn!(?settle, %error, "could not settle the request");
    }
}

fn panic_message(panic: &(dyn Any + Send)) -> &str {
    if let Some(message) = panic.downcast_ref::<&str>() {
        message
    } else if let Some(message) = panic.downcast_ref::<String>() {
        message
    } else {
        "a panic without a message"
    }
}
