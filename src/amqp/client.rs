//! The calling side: publishes step requests and matches the replies.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures_util::StreamExt;
use lapin::message::Delivery;
use lapin::options::BasicConsumeOptions;
use lapin::types::FieldTable;
use lapin::{Connection, Consumer};
use serde_json::Value;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};
use uuid::Uuid;

use super::{
    AmqpError, ConfirmedChannel, MAX_QUEUE_NAME_LEN, PublishError, Published, connect,
    json_properties, redact_url,
};
use crate::{StepError, StepReply, StepRequest};

/// RabbitMQ's pseudo-queue for direct reply-to. The broker rewrites it in
/// each request to a name that routes the reply to this channel's consumer.
const DIRECT_REPLY_TO: &str = "amq.rabbitmq.reply-to";

/// The name the broker's management UI shows for the client's connection.
const CONNECTION_NAME: &str = "typed-saga rpc client";

/// Settings of an [`RpcClient`].
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct RpcClientOptions {
    /// How long one call waits for the broker's confirm and the worker's
    /// reply together. When it runs out the call returns
    /// [`StepError::Unknown`]. Defaults to 10 s.
    pub timeout: Duration,
    /// How long opening a connection may take, on the first connect and on
    /// each reconnect. Defaults to 10 s.
    pub connect_timeout: Duration,
}

impl Default for RpcClientOptions {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(10),
        }
    }
}

impl RpcClientOptions {
    /// Sets [`timeout`](Self::timeout), the time limit of one call.
    #[must_use]
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Sets [`connect_timeout`](Self::connect_timeout).
    #[must_use]
    pub fn with_connect_timeout(mut self, connect_timeout: Duration) -> Self {
        self.connect_timeout = connect_timeout;
        self
    }
}

/// Calls steps on workers over RabbitMQ and waits for their replies.
///
/// A client uses one connection and one channel. It publishes each
/// request as a persistent JSON message to the default exchange, so the
/// routing key is the command queue's name, with publisher confirms and the
/// `mandatory` flag. Replies arrive through RabbitMQ direct reply-to and are
/// matched to their call by a fresh UUID v4 correlation id.
///
/// Clones share the connection, and many calls may run at once. When the
/// connection dies, every waiting call returns [`StepError::Unknown`] and the
/// next call opens a new connection, so the client outlives a broker
/// restart.
///
/// # Example
///
/// ```no_run
/// use serde_json::json;
/// use typed_saga::amqp::{RpcClient, RpcClientOptions};
/// use typed_saga::{StepAction, StepRequest};
///
/// # async fn example() -> Result<(), Box<dyn std::error::Error>> {
/// let client = RpcClient::connect(
///     "amqp://guest:guest@127.0.0.1:5672/%2f",
///     RpcClientOptions::default(),
/// )
/// .await?;
/// let request = StepRequest::new("saga-1", "provision_user", StepAction::Execute, json!({"name": "ada"}));
/// let output = client.call("provisioning", &request).await?;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct RpcClient {
    shared: Arc<Shared>,
}

struct Shared {
    url: String,
    redacted_url: String,
    options: RpcClientOptions,
    /// The current connection; `None` after [`RpcClient::close`]. Calls hold
    /// the lock while they reconnect, so a dead connection is replaced once.
    session: tokio::sync::Mutex<Option<Arc<Session>>>,
}

impl fmt::Debug for RpcClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RpcClient")
            .field("url", &self.shared.redacted_url)
            .field("options", &self.shared.options)
            .finish_non_exhaustive()
    }
}

impl RpcClient {
    /// Connects to the broker at `url`, such as
    /// `amqp://guest:guest@127.0.0.1:5672/%2f`, and starts listening for
    /// replies.
    ///
    /// # Errors
    ///
    /// Returns [`AmqpError`] when the URL is invalid, the broker is not
    /// reachable within `options.connect_timeout`, or it rejects the login
    /// or the reply consumer.
    pub async fn connect(url: &str, options: RpcClientOptions) -> Result<Self, AmqpError> {
        let redacted_url = redact_url(url);
        let session = Session::open(url, &redacted_url, options.connect_timeout).await?;
        info!(url = %redacted_url, "rpc client connected");

        Ok(Self {
            shared: Arc::new(Shared {
                url: url.to_owned(),
                redacted_url,
                options,
                session: tokio::sync::Mutex::new(Some(session)),
            }),
        })
    }

    /// Sends `request` to the worker consuming `queue` and returns the output
    /// of its reply.
    ///
    /// # Errors
    ///
    /// - The worker's own error, with the kind it chose.
    /// - [`StepError::Transient`] when the request certainly never reached a
    ///   queue: the client could not connect, the channel was closed before
    ///   the publish, or no queue named `queue` exists.
    /// - [`StepError::Unknown`] when the request may have reached the worker
    ///   but no reply came: the timeout ran out, the connection died, the
    ///   broker did not confirm the publish, or the reply was not valid JSON.
    /// - [`StepError::Permanent`] when `queue` is longer than 255 bytes.
    pub async fn call(&self, queue: &str, request: &StepRequest) -> Result<Value, StepError> {
        if queue.len() > MAX_QUEUE_NAME_LEN {
            return Err(StepError::permanent(format!(
                "invalid queue name `{queue}`: it is {} bytes long, and AMQP allows at most \
                 {MAX_QUEUE_NAME_LEN}",
                queue.len()
            )));
        }
        let body = serde_json::to_vec(request).map_err(|error| {
            StepError::permanent(format!(
                "could not encode the request for step `{}` as JSON: {error}",
                request.step
            ))
        })?;

        let session = self.session().await?;
        let correlation_id = Uuid::new_v4().to_string();
        let reply = session
            .pending
            .register(&correlation_id)
            .map_err(|reason| {
                StepError::transient(format!("request to queue `{queue}` not sent: {reason}"))
            })?;
        let _waiting = WaitingCall {
            pending: &session.pending,
            correlation_id: &correlation_id,
        };

        let timeout = self.shared.options.timeout;
        let exchange = async {
            session.send(queue, &correlation_id, &body).await?;
            reply.await.unwrap_or_else(|_| {
                Err(StepError::unknown(format!(
                    "the reply from queue `{queue}` was lost (correlation id {correlation_id})"
                )))
            })
        };
        let result = match tokio::time::timeout(timeout, exchange).await {
            Ok(result) => result,
            Err(_elapsed) => Err(StepError::unknown(format!(
                "no reply from queue `{queue}` within {timeout:?} (correlation id \
                 {correlation_id})"
            ))),
        };

        debug!(
            queue,
            correlation_id,
            saga_id = %request.saga_id,
            step = %request.step,
            action = %request.action,
            error = result.as_ref().err().map(tracing::field::display),
            "step call finished"
        );
        result
    }

    /// Closes the connection. Waiting calls return [`StepError::Unknown`].
    ///
    /// A call made afterwards, on this client or a clone, opens a new
    /// connection.
    pub async fn close(&self) {
        let session = self.shared.session.lock().await.take();
        if let Some(session) = session {
            session.close().await;
            info!(url = %self.shared.redacted_url, "rpc client closed");
        }
    }

    /// Returns the open session, or opens a new one when there is none or
    /// the current one died.
    ///
    /// The wait includes the time other calls spend reconnecting first, and
    /// `connect_timeout` bounds all of it. Nothing has been sent yet, so
    /// every failure is transient.
    async fn session(&self) -> Result<Arc<Session>, StepError> {
        let timeout = self.shared.options.connect_timeout;
        match tokio::time::timeout(timeout, self.open_or_reuse_session()).await {
            Ok(session) => session,
            Err(_elapsed) => Err(StepError::transient(format!(
                "timed out after {timeout:?} waiting for a connection to {}; check that \
                 RabbitMQ is running",
                self.shared.redacted_url
            ))),
        }
    }

    async fn open_or_reuse_session(&self) -> Result<Arc<Session>, StepError> {
        let mut current = self.shared.session.lock().await;
        if let Some(session) = current.as_ref().filter(|session| session.is_alive()) {
            return Ok(Arc::clone(session));
        }

        let url = &self.shared.redacted_url;
        info!(url = %url, "rpc client reconnecting");
        let session = Session::open(&self.shared.url, url, self.shared.options.connect_timeout)
            .await
            .map_err(StepError::transient)?;
        info!(url = %url, "rpc client reconnected");

        *current = Some(Arc::clone(&session));
        Ok(session)
    }
}

/// One connection with its publishing channel and reply consumer.
struct Session {
    redacted_url: String,
    connection: Connection,
    publisher: ConfirmedChannel,
    pending: Arc<PendingCalls>,
    reader: JoinHandle<()>,
}

impl Session {
    async fn open(
        url: &str,
        redacted_url: &str,
        connect_timeout: Duration,
    ) -> Result<Arc<Self>, AmqpError> {
        let connection = connect(url, redacted_url, CONNECTION_NAME, connect_timeout).await?;
        let publisher = ConfirmedChannel::open(&connection, redacted_url).await?;

        // Direct reply-to requires a no-ack consumer on the channel that
        // publishes the requests.
        let options = BasicConsumeOptions {
            no_ack: true,
            ..BasicConsumeOptions::default()
        };
        let replies = publisher
            .channel
            .basic_consume(DIRECT_REPLY_TO, "", options, FieldTable::default())
            .await
            .map_err(|error| {
                AmqpError::setup(redacted_url, "consume from direct reply-to", error)
            })?;

        let pending = Arc::new(PendingCalls::default());
        let reader = tokio::spawn(read_replies(
            replies,
            Arc::clone(&pending),
            redacted_url.to_owned(),
        ));

        Ok(Arc::new(Self {
            redacted_url: redacted_url.to_owned(),
            connection,
            publisher,
            pending,
            reader,
        }))
    }

    fn is_alive(&self) -> bool {
        !self.pending.is_closed()
            && self.connection.status().connected()
            && self.publisher.channel.status().connected()
    }

    async fn send(&self, queue: &str, correlation_id: &str, body: &[u8]) -> Result<(), StepError> {
        let properties =
            json_properties(Some(correlation_id)).with_reply_to(DIRECT_REPLY_TO.into());
        let url = &self.redacted_url;

        match self.publisher.publish(queue, body, properties, true).await {
            Ok(Published::Acked) => Ok(()),
            Ok(Published::Returned { reply_text }) => Err(StepError::transient(format!(
                "queue `{queue}` does not exist on {url} ({reply_text}); start a worker that \
                 declares it"
            ))),
            Ok(Published::Nacked) => Err(StepError::unknown(format!(
                "the broker at {url} rejected (nack) the request to queue `{queue}`"
            ))),
            Err(PublishError::NotSent(error)) => Err(StepError::transient(format!(
                "could not publish the request to queue `{queue}` on {url}: {error}"
            ))),
            Err(PublishError::Unconfirmed(error)) => Err(StepError::unknown(format!(
                "the request to queue `{queue}` on {url} was not confirmed: {error}"
            ))),
        }
    }

    async fn close(&self) {
        self.pending.close("the client was closed");

        // Closing the connection closes its channels too.
        if let Err(error) = self.connection.close(200, "rpc client closed").await {
            debug!(url = %self.redacted_url, %error, "closing the rpc client connection failed");
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// Delivers each reply to its waiting call until the consumer stops, then
/// fails the calls that are still waiting.
async fn read_replies(mut replies: Consumer, pending: Arc<PendingCalls>, redacted_url: String) {
    let reason = loop {
        match replies.next().await {
            Some(Ok(delivery)) => pending.complete(delivery),
            Some(Err(error)) => break format!("the connection to {redacted_url} failed: {error}"),
            None => break format!("the broker at {redacted_url} cancelled the reply consumer"),
        }
    };

    if let Some(failed_calls) = pending.close(&reason) {
        warn!(
            url = %redacted_url,
            failed_calls,
            "rpc client lost its connection: {reason}; the next call reconnects"
        );
    }
}

type ReplySender = oneshot::Sender<Result<Value, StepError>>;

/// The calls that wait for a reply, by correlation id.
#[derive(Default)]
struct PendingCalls {
    state: Mutex<PendingState>,
}

#[derive(Default)]
struct PendingState {
    calls: HashMap<String, ReplySender>,
    /// The reason the session stopped taking calls, once it has.
    closed: Option<String>,
}

impl PendingCalls {
    fn lock(&self) -> std::sync::MutexGuard<'_, PendingState> {
        // No code panics while holding the lock, so a poisoned state is
        // still consistent.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Adds a waiting call, unless the session already stopped; then it
    /// returns the reason.
    fn register(
        &self,
        correlation_id: &str,
    ) -> Result<oneshot::Receiver<Result<Value, StepError>>, String> {
        let mut state = self.lock();
        if let Some(reason) = &state.closed {
            return Err(reason.clone());
        }

        let (sender, receiver) = oneshot::channel();
        state.calls.insert(correlation_id.to_owned(), sender);
        Ok(receiver)
    }

    fn remove(&self, correlation_id: &str) {
        self.lock().calls.remove(correlation_id);
    }

    fn is_closed(&self) -> bool {
        self.lock().closed.is_some()
    }

    /// Hands a reply to the call waiting for its correlation id, or logs and
    /// drops it when no call waits: the call timed out, or the reply was
    /// meant for someone else.
    fn complete(&self, delivery: Delivery) {
        let Some(correlation_id) = delivery.properties.correlation_id().as_ref() else {
            warn!("dropped a reply without correlation id");
            return;
        };
        let correlation_id = correlation_id.as_str();

        let Some(sender) = self.lock().calls.remove(correlation_id) else {
            warn!(
                correlation_id,
                "dropped a reply whose correlation id matches no waiting call"
            );
            return;
        };

        let result = match serde_json::from_slice::<StepReply>(&delivery.data) {
            Ok(reply) => reply.into(),
            Err(error) => Err(StepError::unknown(format!(
                "invalid reply for correlation id {correlation_id}: {error}"
            ))),
        };
        // The call may have timed out since the lookup. Then the send fails
        // and the reply is dropped.
        let _ = sender.send(result);
    }

    /// Stops taking calls and fails each waiting one with
    /// [`StepError::Unknown`]. Returns how many calls failed, or `None` when
    /// the calls had been closed before.
    fn close(&self, reason: &str) -> Option<usize> {
        let calls = {
            let mut state = self.lock();
            if state.closed.is_some() {
                return None;
            }
            state.closed = Some(reason.to_owned());
            std::mem::take(&mut state.calls)
        };

        let failed_calls = calls.len();
        for (correlation_id, sender) in calls {
            let _ = sender.send(Err(StepError::unknown(format!(
                "no reply for correlation id {correlation_id}: {reason}"
            ))));
        }
        Some(failed_calls)
    }
}

/// Removes a call from [`PendingCalls`] when it ends for any reason: reply,
/// error, timeout, or the caller dropping the future.
struct WaitingCall<'a> {
    pending: &'a PendingCalls,
    correlation_id: &'a str,
}

impl Drop for WaitingCall<'_> {
    fn drop(&mut self) {
        self.pending.remove(self.correlation_id);
    }
}
