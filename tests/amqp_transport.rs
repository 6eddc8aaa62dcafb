#![cfg(feature = "amqp")]
//! The AMQP transport against a real RabbitMQ.
//!
//! The broker is at `AMQP_URL`, or at `amqp://guest:guest@127.0.0.1:5672/%2f`
//! when that is unset. Without a broker every test that needs one fails with
//! a message that names the command that starts it. Each test uses its own
//! queues, named with a UUID, and deletes them when it ends, also when it
//! fails.

use std::collections::HashMap;
use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use futures_util::future::join_all;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicGetOptions, BasicPublishOptions,
    ExchangeDeleteOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::uri::AMQPUri;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, Consumer};
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, mpsc};
use tokio::task::{AbortHandle, JoinHandle};
use tracing::field::{Field, Visit};
use tracing_subscriber::Layer;
use tracing_subscriber::layer::{Context, SubscriberExt};
use typed_saga::amqp::{
    AmqpError, RpcClient, RpcClientOptions, StepHandler, Worker, WorkerOptions, redact_url,
};
use typed_saga::{StepAction, StepError, StepReply, StepRequest};
use uuid::Uuid;

const DEFAULT_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
const START_BROKER: &str = "start RabbitMQ with `rabbitmq-server -detached`";
const DIRECT_REPLY_TO: &str = "amq.rabbitmq.reply-to";

/// How long a test waits for something the broker does within milliseconds.
const PATIENCE: Duration = Duration::from_secs(5);

fn broker_url() -> String {
    std::env::var("AMQP_URL").unwrap_or_else(|_| DEFAULT_URL.to_owned())
}

async fn raw_connection(url: &str) -> Connection {
    Connection::connect(url, ConnectionProperties::default())
        .await
        .unwrap_or_else(|error| {
            panic!(
                "RabbitMQ is not reachable at {}: {error}; {START_BROKER}",
                redact_url(url)
            )
        })
}

async fn raw_channel(connection: &Connection) -> Channel {
    connection
        .create_channel()
        .await
        .expect("opening a channel on a fresh connection")
}

async fn connect_client(url: &str, options: RpcClientOptions) -> RpcClient {
    RpcClient::connect(url, options)
        .await
        .unwrap_or_else(|error| panic!("{error}"))
}

async fn start_worker(url: &str, options: WorkerOptions, handler: impl StepHandler) -> Worker {
    Worker::start(url, options, handler)
        .await
        .unwrap_or_else(|error| panic!("{error}"))
}

fn request(saga_id: &str, payload: Value) -> StepRequest {
    StepRequest::new(saga_id, "provision_user", StepAction::Execute, payload)
}

/// Returns the request's fields, so a test can match each reply to its
/// request.
async fn echo(request: StepRequest) -> Result<Value, StepError> {
    Ok(json!({
        "saga_id": request.saga_id,
        "step": request.step,
        "action": request.action,
        "payload": request.payload,
    }))
}

/// Fails with the kind named by `payload.fail`, or succeeds with `null`.
async fn fail_as_requested(request: StepRequest) -> Result<Value, StepError> {
    match request.payload["fail"].as_str() {
        Some("transient") => Err(StepError::transient("database is busy")),
        Some("permanent") => Err(StepError::permanent("user name is taken")),
        Some("unknown") => Err(StepError::unknown("lost the lock mid-write")),
        _ => Ok(Value::Null),
    }
}

async fn panic_in_handler(_request: StepRequest) -> Result<Value, StepError> {
    panic!("the handler broke")
}

/// A command queue with unique names, whose queues and exchange are deleted
/// on drop.
struct TestQueue {
    url: String,
    options: WorkerOptions,
}

impl TestQueue {
    fn new(test: &str) -> Self {
        let name = format!("typed-saga-test.{test}.{}", Uuid::new_v4().simple());
        Self {
            url: broker_url(),
            options: WorkerOptions::new(name),
        }
    }

    fn name(&self) -> &str {
        &self.options.queue
    }

    fn options(&self) -> WorkerOptions {
        self.options.clone()
    }

    /// Declares the queue without a worker, for tests that reply to requests
    /// themselves or not at all.
    async fn declare_plain(&self, channel: &Channel) {
        channel
            .queue_declare(
                self.name(),
                QueueDeclareOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect("declaring a plain test queue");
    }
}

impl Drop for TestQueue {
    fn drop(&mut self) {
        let url = self.url.clone();
        let queues = [self.options.queue.clone(), self.options.dead_letter_queue()];
        let exchange = self.options.dead_letter_exchange();

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

/// Publishes hand-made requests and reads the replies, as a client in another
/// language would.
struct RawRequester {
    _connection: Connection,
    channel: Channel,
    replies: Consumer,
}

impl RawRequester {
    async fn connect(url: &str) -> Self {
        let connection = raw_connection(url).await;
        let channel = raw_channel(&connection).await;
        let options = BasicConsumeOptions {
            no_ack: true,
            ..BasicConsumeOptions::default()
        };
        let replies = channel
            .basic_consume(DIRECT_REPLY_TO, "", options, FieldTable::default())
            .await
            .expect("consuming from direct reply-to");
        Self {
            _connection: connection,
            channel,
            replies,
        }
    }

    async fn publish(&self, queue: &str, body: &[u8], properties: BasicProperties) {
        self.channel
            .basic_publish("", queue, BasicPublishOptions::default(), body, properties)
            .await
            .expect("publishing a raw request")
            .await
            .expect("waiting for the raw publish");
    }

    async fn next_reply(&mut self, wait: Duration) -> Option<Delivery> {
        let next = tokio::time::timeout(wait, self.replies.next())
            .await
            .ok()??;
        Some(next.expect("reading a reply"))
    }

    /// Takes the first message of `queue`, waiting until one arrives.
    async fn wait_for_message(&self, queue: &str) -> Option<Vec<u8>> {
        let deadline = Instant::now() + PATIENCE;
        while Instant::now() < deadline {
            let message = self
                .channel
                .basic_get(queue, BasicGetOptions { no_ack: true })
                .await
                .expect("reading the dead-letter queue");
            if let Some(message) = message {
                return Some(message.delivery.data);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        None
    }
}

fn raw_properties(reply_to: bool, correlation_id: Option<&str>) -> BasicProperties {
    let mut properties = BasicProperties::default().with_content_type("application/json".into());
    if reply_to {
        properties = properties.with_reply_to(DIRECT_REPLY_TO.into());
    }
    if let Some(correlation_id) = correlation_id {
        properties = properties.with_correlation_id(correlation_id.into());
    }
    properties
}

/// Decodes a reply that must be a permanent error, and returns its message.
fn permanent_error_message(reply: &Delivery) -> String {
    let decoded: StepReply = serde_json::from_slice(&reply.data).expect("a JSON step reply");
    match decoded {
        StepReply::Error {
            error: StepError::Permanent(message),
        } => message,
        other => panic!("expected a permanent error reply, got {other:?}"),
    }
}

#[tokio::test]
async fn call_returns_handler_output() {
    let url = broker_url();
    let queue = TestQueue::new("call_returns_handler_output");
    let worker = start_worker(&url, queue.options(), echo).await;
    let client = connect_client(&url, RpcClientOptions::default()).await;

    let output = client
        .call(queue.name(), &request("saga-1", json!({"name": "ada"})))
        .await;

    let expected = json!({
        "saga_id": "saga-1",
        "step": "provision_user",
        "action": "execute",
        "payload": {"name": "ada"},
    });
    assert_eq!(output, Ok(expected));
    worker.shutdown().await;
    client.close().await;
}

#[tokio::test]
async fn handler_error_keeps_its_kind() {
    let url = broker_url();
    let queue = TestQueue::new("handler_error_keeps_its_kind");
    let worker = start_worker(&url, queue.options(), fail_as_requested).await;
    let client = connect_client(&url, RpcClientOptions::default()).await;
    let cases = [
        ("transient", StepError::transient("database is busy")),
        ("permanent", StepError::permanent("user name is taken")),
        ("unknown", StepError::unknown("lost the lock mid-write")),
    ];

    for (kind, expected) in cases {
        let result = client
            .call(queue.name(), &request("saga-1", json!({"fail": kind})))
            .await;
        assert_eq!(result, Err(expected), "handler failing as {kind}");
    }
    worker.shutdown().await;
    client.close().await;
}

#[tokio::test]
async fn call_without_reply_times_out_as_unknown() {
    let url = broker_url();
    let queue = TestQueue::new("call_without_reply_times_out");
    let connection = raw_connection(&url).await;
    queue.declare_plain(&raw_channel(&connection).await).await;
    let options = RpcClientOptions::default().with_timeout(Duration::from_millis(300));
    let client = connect_client(&url, options).await;

    let started = Instant::now();
    let result = client
        .call(queue.name(), &request("saga-1", json!({})))
        .await;
    let elapsed = started.elapsed();

    let Err(StepError::Unknown(message)) = result else {
        panic!("expected an unknown outcome, got {result:?}");
    };
    assert!(message.contains("within 300ms"), "message: {message}");
    assert!(elapsed < PATIENCE, "the call took {elapsed:?}");
    client.close().await;
}

#[tokio::test]
async fn call_to_missing_queue_fails_as_transient() {
    let url = broker_url();
    let client = connect_client(&url, RpcClientOptions::default()).await;
    let queue = format!("typed-saga-test.no-such-queue.{}", Uuid::new_v4().simple());

    let result = client.call(&queue, &request("saga-1", json!({}))).await;

    let Err(StepError::Transient(message)) = result else {
        panic!("expected a transient error, got {result:?}");
    };
    assert!(message.contains("does not exist"), "message: {message}");
    client.close().await;
}

#[tokio::test]
async fn concurrent_calls_each_get_own_reply() {
    let url = broker_url();
    let queue = TestQueue::new("concurrent_calls");
    let worker = start_worker(&url, queue.options(), echo).await;
    let client = connect_client(&url, RpcClientOptions::default()).await;

    let calls = (0..50).map(|index| {
        let client = client.clone();
        let queue = queue.name().to_owned();
        let request = request(&format!("saga-{index}"), json!({"index": index}));
        async move { client.call(&queue, &request).await }
    });
    let outputs = join_all(calls).await;

    for (index, output) in outputs.into_iter().enumerate() {
        let expected = json!({
            "saga_id": format!("saga-{index}"),
            "step": "provision_user",
            "action": "execute",
            "payload": {"index": index},
        });
        assert_eq!(output, Ok(expected), "call {index}");
    }
    worker.shutdown().await;
    client.close().await;
}

#[tokio::test]
async fn worker_runs_up_to_prefetch_requests_at_once() {
    let url = broker_url();
    let queue = TestQueue::new("worker_prefetch");
    let running = Arc::new(AtomicUsize::new(0));
    let max_running = Arc::new(AtomicUsize::new(0));
    let handler = {
        let running = Arc::clone(&running);
        let max_running = Arc::clone(&max_running);
        move |_request: StepRequest| {
            let running = Arc::clone(&running);
            let max_running = Arc::clone(&max_running);
            async move {
                let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                max_running.fetch_max(now, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(200)).await;
                running.fetch_sub(1, Ordering::SeqCst);
                Ok(Value::Null)
            }
        }
    };
    let worker = start_worker(&url, queue.options().with_prefetch(3), handler).await;
    let client = connect_client(&url, RpcClientOptions::default()).await;

    let calls = (0..9).map(|index| {
        let client = client.clone();
        let queue = queue.name().to_owned();
        let request = request(&format!("saga-{index}"), json!({}));
        async move { client.call(&queue, &request).await }
    });
    let outputs = join_all(calls).await;

    for (index, output) in outputs.into_iter().enumerate() {
        assert_eq!(output, Ok(Value::Null), "call {index}");
    }
    assert_eq!(max_running.load(Ordering::SeqCst), 3);
    worker.shutdown().await;
    client.close().await;
}

#[tokio::test]
async fn broken_json_is_answered_and_dead_lettered() {
    let url = broker_url();
    let queue = TestQueue::new("broken_json");
    let worker = start_worker(&url, queue.options(), echo).await;
    let mut requester = RawRequester::connect(&url).await;
    let body = b"{\"saga_id\": \"saga-1\", ";

    requester
        .publish(
            queue.name(),
            body,
            raw_properties(true, Some("broken-json")),
        )
        .await;

    let reply = requester.next_reply(PATIENCE).await.expect("a reply");
    let correlation_id = reply
        .properties
        .correlation_id()
        .as_ref()
        .map(|id| id.as_str());
    assert_eq!(correlation_id, Some("broken-json"));
    let message = permanent_error_message(&reply);
    assert!(message.contains("not valid JSON"), "message: {message}");
    let dead_letter = requester
        .wait_for_message(&queue.options().dead_letter_queue())
        .await;
    assert_eq!(dead_letter.as_deref(), Some(&body[..]));
    worker.shutdown().await;
}

#[tokio::test]
async fn request_missing_field_gets_error_naming_it() {
    let url = broker_url();
    let queue = TestQueue::new("missing_field");
    let worker = start_worker(&url, queue.options(), echo).await;
    let mut requester = RawRequester::connect(&url).await;
    let body = br#"{"saga_id": "saga-1", "action": "execute"}"#;

    requester
        .publish(
            queue.name(),
            body,
            raw_properties(true, Some("missing-field")),
        )
        .await;

    let reply = requester.next_reply(PATIENCE).await.expect("a reply");
    let message = permanent_error_message(&reply);
    assert!(
        message.contains("missing field `step`"),
        "message: {message}"
    );
    let dead_letter = requester
        .wait_for_message(&queue.options().dead_letter_queue())
        .await;
    assert_eq!(dead_letter.as_deref(), Some(&body[..]));
    worker.shutdown().await;
}

#[tokio::test]
async fn request_without_correlation_id_gets_error_reply() {
    let url = broker_url();
    let queue = TestQueue::new("no_correlation_id");
    let worker = start_worker(&url, queue.options(), echo).await;
    let mut requester = RawRequester::connect(&url).await;
    let body = serde_json::to_vec(&request("saga-1", json!({}))).expect("encoding a request");

    requester
        .publish(queue.name(), &body, raw_properties(true, None))
        .await;

    let reply = requester.next_reply(PATIENCE).await.expect("a reply");
    assert_eq!(reply.properties.correlation_id(), &None);
    let message = permanent_error_message(&reply);
    assert!(message.contains("no correlation_id"), "message: {message}");
    let dead_letter = requester
        .wait_for_message(&queue.options().dead_letter_queue())
        .await;
    assert_eq!(dead_letter, Some(body));
    worker.shutdown().await;
}

#[tokio::test]
async fn request_without_reply_to_is_dead_lettered() {
    let url = broker_url();
    let queue = TestQueue::new("no_reply_to");
    let worker = start_worker(&url, queue.options(), echo).await;
    let mut requester = RawRequester::connect(&url).await;
    let body = serde_json::to_vec(&request("saga-1", json!({}))).expect("encoding a request");

    requester
        .publish(
            queue.name(),
            &body,
            raw_properties(false, Some("no-reply-to")),
        )
        .await;

    let dead_letter = requester
        .wait_for_message(&queue.options().dead_letter_queue())
        .await;
    assert_eq!(dead_letter, Some(body));
    let reply = requester.next_reply(Duration::from_millis(300)).await;
    assert!(reply.is_none(), "unexpected reply: {reply:?}");
    worker.shutdown().await;
}

#[tokio::test]
async fn worker_keeps_serving_after_malformed_requests() {
    let url = broker_url();
    let queue = TestQueue::new("keeps_serving");
    let worker = start_worker(&url, queue.options(), fail_as_requested).await;
    let requester = RawRequester::connect(&url).await;
    let valid_body = serde_json::to_vec(&request("saga-1", json!({}))).expect("encoding a request");
    let malformed: [(&[u8], BasicProperties); 4] = [
        (b"not json", raw_properties(true, Some("broken"))),
        (
            br#"{"saga_id": "saga-1"}"#,
            raw_properties(true, Some("missing")),
        ),
        (&valid_body, raw_properties(true, None)),
        (&valid_body, raw_properties(false, Some("no-reply-to"))),
    ];
    for (body, properties) in malformed {
        requester.publish(queue.name(), body, properties).await;
    }
    let client = connect_client(&url, RpcClientOptions::default()).await;

    let result = client
        .call(queue.name(), &request("saga-2", json!({})))
        .await;

    assert_eq!(result, Ok(Value::Null));
    worker.shutdown().await;
    client.close().await;
}

#[tokio::test]
async fn panicking_handler_replies_unknown_and_dead_letters() {
    let url = broker_url();
    let queue = TestQueue::new("panicking_handler");
    let worker = start_worker(&url, queue.options(), panic_in_handler).await;
    let client = connect_client(&url, RpcClientOptions::default()).await;
    let requester = RawRequester::connect(&url).await;

    let result = client
        .call(queue.name(), &request("saga-1", json!({})))
        .await;

    let Err(StepError::Unknown(message)) = result else {
        panic!("expected an unknown outcome, got {result:?}");
    };
    assert!(message.contains("the handler broke"), "message: {message}");
    let dead_letter = requester
        .wait_for_message(&queue.options().dead_letter_queue())
        .await;
    assert!(
        dead_letter.is_some(),
        "the request is not in the dead-letter queue"
    );
    worker.shutdown().await;
    client.close().await;
}

#[tokio::test]
async fn shutdown_waits_for_running_request() {
    let url = broker_url();
    let queue = TestQueue::new("shutdown_waits");
    let (started_sender, mut started) = mpsc::unbounded_channel();
    let handler = move |_request: StepRequest| {
        let started_sender = started_sender.clone();
        async move {
            let _ = started_sender.send(());
            tokio::time::sleep(Duration::from_millis(300)).await;
            Ok(json!("finished"))
        }
    };
    let worker = start_worker(&url, queue.options(), handler).await;
    let client = connect_client(&url, RpcClientOptions::default()).await;

    let call = tokio::spawn({
        let client = client.clone();
        let queue = queue.name().to_owned();
        async move { client.call(&queue, &request("saga-1", json!({}))).await }
    });
    started.recv().await.expect("the handler starts");
    worker.shutdown().await;

    let result = call.await.expect("the call task");
    assert_eq!(result, Ok(json!("finished")));
    client.close().await;
}

/// Records the fields of every warning, for tests that check what was
/// logged.
#[derive(Clone, Default)]
struct CapturedWarnings {
    events: Arc<Mutex<Vec<HashMap<String, String>>>>,
}

impl CapturedWarnings {
    fn contains(&self, field: &str, value: &str) -> bool {
        let events = self.events.lock().expect("warnings lock");
        events
            .iter()
            .any(|fields| fields.get(field).map(String::as_str) == Some(value))
    }
}

impl<S: tracing::Subscriber> Layer<S> for CapturedWarnings {
    fn on_event(&self, event: &tracing::Event<'_>, _context: Context<'_, S>) {
        if *event.metadata().level() != tracing::Level::WARN {
            return;
        }
        let mut fields = FieldMap::default();
        event.record(&mut fields);
        self.events.lock().expect("warnings lock").push(fields.0);
    }
}

#[derive(Default)]
struct FieldMap(HashMap<String, String>);

impl Visit for FieldMap {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}"));
    }
}

/// Replies to each request on `queue` twice: first with a stray reply under
/// another correlation id, then with the real one, whose output is the
/// request's saga id.
async fn serve_with_stray_replies(url: &str, queue: &TestQueue) -> (Connection, JoinHandle<()>) {
    let connection = raw_connection(url).await;
    let channel = raw_channel(&connection).await;
    queue.declare_plain(&channel).await;
    let mut requests = channel
        .basic_consume(
            queue.name(),
            "",
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("consuming the test queue");

    let responder = tokio::spawn(async move {
        while let Some(Ok(delivery)) = requests.next().await {
            let reply_to = delivery.properties.reply_to().clone().expect("a reply_to");
            let correlation_id = delivery
                .properties
                .correlation_id()
                .clone()
                .expect("a correlation id");
            let request: StepRequest = serde_json::from_slice(&delivery.data).expect("a request");

            let stray_id = format!("stray-{}", request.saga_id);
            let stray = serde_json::to_vec(&StepReply::Ok {
                output: json!("stray"),
            })
            .expect("json");
            let real = serde_json::to_vec(&StepReply::Ok {
                output: json!(request.saga_id),
            })
            .expect("json");
            for (id, body) in [(stray_id.as_str(), stray), (correlation_id.as_str(), real)] {
                let properties = BasicProperties::default().with_correlation_id(id.into());
                channel
                    .basic_publish(
                        "",
                        reply_to.as_str(),
                        BasicPublishOptions::default(),
                        &body,
                        properties,
                    )
                    .await
                    .expect("publishing a reply")
                    .await
                    .expect("waiting for the reply publish");
            }
            delivery
                .ack(BasicAckOptions::default())
                .await
                .expect("acking the request");
        }
    });
    (connection, responder)
}

#[tokio::test]
async fn reply_with_unknown_correlation_id_is_dropped() {
    let warnings = CapturedWarnings::default();
    // The test runtime has one thread, so the client's reply reader logs
    // through this subscriber too.
    let _subscriber =
        tracing::subscriber::set_default(tracing_subscriber::registry().with(warnings.clone()));
    let url = broker_url();
    let queue = TestQueue::new("unknown_correlation_id");
    let (_responder_connection, responder) = serve_with_stray_replies(&url, &queue).await;
    let client = connect_client(&url, RpcClientOptions::default()).await;

    let (request_a, request_b) = (request("saga-a", json!({})), request("saga-b", json!({})));

    let (first, second) = tokio::join!(
        client.call(queue.name(), &request_a),
        client.call(queue.name(), &request_b),
    );

    assert_eq!(first, Ok(json!("saga-a")));
    assert_eq!(second, Ok(json!("saga-b")));
    assert!(
        warnings.contains("correlation_id", "stray-saga-a"),
        "no warning for stray-saga-a"
    );
    assert!(
        warnings.contains("correlation_id", "stray-saga-b"),
        "no warning for stray-saga-b"
    );
    responder.abort();
    client.close().await;
}

/// A TCP proxy in front of the broker, so a test can cut connections the
/// way a broker restart or a network failure does.
struct TcpProxy {
    address: SocketAddr,
    connections: Arc<Mutex<Vec<AbortHandle>>>,
    accept: JoinHandle<()>,
}

impl TcpProxy {
    async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binding the proxy");
        let address = listener.local_addr().expect("the proxy's address");
        let connections = Arc::new(Mutex::new(Vec::new()));

        let accept = tokio::spawn({
            let connections = Arc::clone(&connections);
            async move {
                while let Ok((mut inbound, _)) = listener.accept().await {
                    let forward = tokio::spawn(async move {
                        if let Ok(mut outbound) = TcpStream::connect(target).await {
                            let _ =
                                tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                        }
                    });
                    let mut connections = connections.lock().expect("proxy lock");
                    connections.push(forward.abort_handle());
                }
            }
        });
        Self {
            address,
            connections,
            accept,
        }
    }

    /// Closes every connection through the proxy; new ones are accepted.
    fn cut_connections(&self) {
        for connection in self.connections.lock().expect("proxy lock").drain(..) {
            connection.abort();
        }
    }

    /// Returns `url` with the host and port replaced by the proxy's.
    fn url(&self, url: &str) -> String {
        let uri: AMQPUri = url.parse().expect("AMQP_URL is a valid AMQP URL");
        let user_info = &uri.authority.userinfo;
        format!(
            "amqp://{}:{}@{}/{}",
            escape_url_component(&user_info.username),
            escape_url_component(&user_info.password),
            self.address,
            escape_url_component(&uri.vhost),
        )
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut_connections();
    }
}

fn escape_url_component(text: &str) -> String {
    text.replace('%', "%25")
        .replace('/', "%2f")
        .replace('@', "%40")
        .replace(':', "%3a")
}

fn broker_address(url: &str) -> SocketAddr {
    let uri: AMQPUri = url.parse().expect("AMQP_URL is a valid AMQP URL");
    (uri.authority.host.as_str(), uri.authority.port)
        .to_socket_addrs()
        .expect("resolving the broker's host")
        .next()
        .expect("the broker's host has an address")
}

#[tokio::test]
async fn client_survives_connection_cut() {
    let url = broker_url();
    let queue = TestQueue::new("client_reconnects");
    let (started_sender, mut started) = mpsc::unbounded_channel();
    let release = Arc::new(Notify::new());
    let handler = {
        let release = Arc::clone(&release);
        move |request: StepRequest| {
            let started_sender = started_sender.clone();
            let release = Arc::clone(&release);
            async move {
                if request.payload["block"] == json!(true) {
                    let _ = started_sender.send(());
                    release.notified().await;
                }
                Ok(json!(request.saga_id))
            }
        }
    };
    let worker = start_worker(&url, queue.options(), handler).await;
    let proxy = TcpProxy::start(broker_address(&url)).await;
    let client = connect_client(&proxy.url(&url), RpcClientOptions::default()).await;

    let waiting = tokio::spawn({
        let client = client.clone();
        let queue = queue.name().to_owned();
        async move {
            client
                .call(&queue, &request("saga-1", json!({"block": true})))
                .await
        }
    });
    started.recv().await.expect("the handler starts");
    // The broker confirms a persistent message after writing it, which can
    // be after the delivery. Waiting lets the confirm arrive, so the cut
    // hits a call that waits only for its reply.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let cut_at = Instant::now();
    proxy.cut_connections();
    let waiting_result = waiting.await.expect("the call task");
    let waited = cut_at.elapsed();
    release.notify_one();
    let next_result = client
        .call(queue.name(), &request("saga-2", json!({})))
        .await;

    assert!(
        matches!(waiting_result, Err(StepError::Unknown(_))),
        "waiting call returned {waiting_result:?}"
    );
    assert!(
        waited < PATIENCE,
        "the waiting call failed only after {waited:?}"
    );
    assert_eq!(next_result, Ok(json!("saga-2")));
    worker.shutdown().await;
    client.close().await;
}

#[tokio::test]
async fn worker_reconnects_after_connection_cut() {
    let url = broker_url();
    let queue = TestQueue::new("worker_reconnects");
    let proxy = TcpProxy::start(broker_address(&url)).await;
    let options = queue
        .options()
        .with_reconnect_delays(Duration::from_millis(50), Duration::from_millis(200));
    let worker = start_worker(&proxy.url(&url), options, echo).await;
    let client = connect_client(&url, RpcClientOptions::default()).await;
    let before = client
        .call(queue.name(), &request("saga-1", json!({})))
        .await;

    proxy.cut_connections();
    let after = client
        .call(queue.name(), &request("saga-2", json!({})))
        .await;

    assert!(before.is_ok(), "call before the cut returned {before:?}");
    assert!(after.is_ok(), "call after the cut returned {after:?}");
    worker.shutdown().await;
    client.close().await;
}

#[tokio::test]
async fn connect_error_hides_password() {
    // Nothing listens on port 1, so the connection is refused at once.
    let url = "amqp://guest:secret-password@127.0.0.1:1/%2f";

    let error = RpcClient::connect(url, RpcClientOptions::default())
        .await
        .expect_err("connecting to a closed port");

    let message = error.to_string();
    assert!(!message.contains("secret-password"), "message: {message}");
    assert!(
        message.contains("amqp://guest:***@127.0.0.1:1/%2f"),
        "message: {message}"
    );
    assert!(
        message.contains("rabbitmq-server -detached"),
        "message: {message}"
    );
}

#[tokio::test]
async fn worker_rejects_zero_prefetch() {
    let options = WorkerOptions::new("typed-saga-test.zero-prefetch").with_prefetch(0);

    let result = Worker::start(&broker_url(), options, echo).await;

    assert!(
        matches!(result, Err(AmqpError::ZeroPrefetch { .. })),
        "start returned {result:?}"
    );
}

#[tokio::test]
async fn worker_rejects_reserved_queue_name() {
    let options = WorkerOptions::new("amq.commands");

    let result = Worker::start(&broker_url(), options, echo).await;

    assert!(
        matches!(result, Err(AmqpError::InvalidQueue { .. })),
        "start returned {result:?}"
    );
}

#[test]
fn redact_url_hides_only_the_password() {
    let cases = [
        (
            "amqp://guest:guest@127.0.0.1:5672/%2f",
            "amqp://guest:***@127.0.0.1:5672/%2f",
        ),
        (
            "amqps://app:p%40ss@broker:5671/orders?heartbeat=10",
            "amqps://app:***@broker:5671/orders?heartbeat=10",
        ),
        ("amqp://app:pa@ss@broker/", "amqp://app:***@broker/"),
        ("amqp://app:pa/ss@broker/", "amqp://app:***@broker/"),
        ("amqp://app@broker/%2f", "amqp://app@broker/%2f"),
        ("amqp://127.0.0.1:5672/%2f", "amqp://127.0.0.1:5672/%2f"),
        ("amqp://broker/v@host", "amqp://broker/v@host"),
        ("not a url", "not a url"),
    ];

    for (url, expected) in cases {
        assert_eq!(redact_url(url), expected, "redacting {url}");
    }
}
