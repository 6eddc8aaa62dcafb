//! Step calls over RabbitMQ (AMQP 0-9-1, on lapin).
//!
//! An orchestrator calls a step with [`RpcClient::call`], which publishes a
//! [`StepRequest`](crate::StepRequest) to a worker's command queue and waits
//! for the [`StepReply`](crate::StepReply). A [`Worker`] consumes that queue
//! and runs a [`StepHandler`] for each request.
//!
//! For a command queue `q`, [`Worker::start`] declares:
//!
//! - `q`, a durable queue whose rejected messages go to the exchange `q.dlx`;
//! - `q.dlx`, a durable fanout exchange;
//! - `q.dead-letter`, a durable queue bound to `q.dlx`, which collects the
//!   malformed requests for a person to inspect.
//!
//! Requests are persistent JSON messages with `reply_to` set to RabbitMQ's
//! direct reply-to and a fresh `correlation_id`. `docs/protocol.md` in the
//! repository describes the messages field by field, for clients and workers
//! written in other languages.
//!
//! The client and the worker spawn Tokio tasks, so create them inside a Tokio
//! runtime. Log lines and errors name the broker with [`redact_url`], so they
//! never contain a password.

mod client;
mod worker;

use std::time::Duration;

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::publisher_confirm::Confirmation;
use lapin::uri::AMQPUri;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};

pub use client::{RpcClient, RpcClientOptions};
pub use worker::{StepHandler, Worker, WorkerOptions};

/// The MIME type of every request and reply body.
const JSON_CONTENT_TYPE: &str = "application/json";

/// The AMQP `delivery_mode` of a persistent message, which the broker writes
/// to disk.
const PERSISTENT: u8 = 2;

/// The maximum length of a queue name in AMQP 0-9-1, in bytes.
const MAX_QUEUE_NAME_LEN: usize = 255;

/// A failure to connect to the broker or to set up queues on it.
///
/// Every message names the broker with its password hidden (see
/// [`redact_url`]) and gives the next step after `;`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AmqpError {
    /// The URL is not an AMQP URL.
    #[error("invalid AMQP URL {url}: {reason}; use the form amqp://user:password@host:5672/vhost")]
    InvalidUrl {
        /// The URL with its password hidden.
        url: String,
        /// The parser's error message.
        reason: String,
    },

    /// The broker did not accept a connection.
    #[error(
        "could not connect to {url}: {error}; start RabbitMQ with `rabbitmq-server -detached`, \
         or check the host, port and credentials in the URL"
    )]
    Connect {
        /// The URL with its password hidden.
        url: String,
        /// The error lapin returned.
        error: lapin::Error,
    },

    /// The broker did not finish the connection handshake in time.
    #[error(
        "timed out after {timeout:?} connecting to {url}; check that RabbitMQ is running \
         and not overloaded, or raise the connect timeout"
    )]
    ConnectTimeout {
        /// The URL with its password hidden.
        url: String,
        /// How long the connection attempt was allowed to take.
        timeout: Duration,
    },

    /// The connection was up, but the broker rejected a setup step such as
    /// opening a channel or declaring a queue.
    #[error("could not {action} on {url}: {error}; {hint}")]
    Setup {
        /// The URL with its password hidden.
        url: String,
        /// The setup step that failed, such as "declare queue `orders`".
        action: String,
        /// The error lapin returned.
        error: lapin::Error,
        /// The next step for the caller.
        hint: &'static str,
    },

    /// The queue name cannot be used for a command queue.
    #[error("invalid queue name `{queue}`: {reason}")]
    InvalidQueue {
        /// The rejected name.
        queue: String,
        /// The problem with the name, and an alternative.
        reason: String,
    },

    /// The prefetch limit is zero, which AMQP reads as "no limit".
    #[error(
        "invalid prefetch 0 for queue `{queue}`: the broker would send every waiting request \
         at once; use at least 1"
    )]
    ZeroPrefetch {
        /// The command queue the worker was started for.
        queue: String,
    },
}

impl AmqpError {
    fn setup(url: &str, action: impl Into<String>, error: lapin::Error) -> Self {
        Self::Setup {
            url: url.to_owned(),
            action: action.into(),
            error,
            hint: "check the broker's log, and that the user may configure, write and read \
                   this virtual host",
        }
    }
}

impl AmqpError {
    /// Returns true when the broker answered but refused the connection,
    /// for example for wrong credentials or an unknown vhost, as opposed to
    /// a broker that could not be reached at all.
    pub fn is_rejected_by_broker(&self) -> bool {
        matches!(
            self,
            Self::Connect {
                error: lapin::Error::ProtocolError(_),
                ..
            }
        )
    }
}

/// Hides the password of an AMQP URL, so that the URL can be logged.
///
/// `amqp://guest:guest@127.0.0.1:5672/%2f` becomes
/// `amqp://guest:***@127.0.0.1:5672/%2f`. A URL without a password is
/// returned unchanged. When the text has no `scheme://` prefix it is not a
/// URL this module can connect to, and it is returned unchanged too.
///
/// The user information ends at the last `@`, so a password that contains an
/// unescaped `@` or `/` is hidden as a whole. A virtual host that contains an
/// unescaped `@` makes the function hide more than the password, never less.
pub fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_owned();
    };
    let (scheme, rest) = url.split_at(scheme_end + "://".len());
    let Some(at) = rest.rfind('@') else {
        return url.to_owned();
    };

    let user_info = &rest[..at];
    let Some(colon) = user_info.find(':') else {
        return url.to_owned();
    };
    let user = &user_info[..colon];
    if user.contains('/') {
        // The `@` belongs to the path, so the URL has no user information.
        return url.to_owned();
    }

    format!("{scheme}{user}:***@{}", &rest[at + 1..])
}

/// Opens a connection that the broker's management UI lists under `name`.
async fn connect(
    url: &str,
    redacted_url: &str,
    name: &str,
    timeout: Duration,
) -> Result<Connection, AmqpError> {
    let uri: AMQPUri = url.parse().map_err(|reason| AmqpError::InvalidUrl {
        url: redacted_url.to_owned(),
        reason,
    })?;
    let properties = ConnectionProperties::default().with_connection_name(name.into());

    match tokio::time::timeout(timeout, Connection::connect_uri(uri, properties)).await {
        Ok(Ok(connection)) => Ok(connection),
        Ok(Err(error)) => Err(AmqpError::Connect {
            url: redacted_url.to_owned(),
            error,
        }),
        Err(_elapsed) => Err(AmqpError::ConnectTimeout {
            url: redacted_url.to_owned(),
            timeout,
        }),
    }
}

/// Checks that a name can be a command queue and still leave room for the
/// dead-letter names derived from it.
fn check_queue_name(queue: &str, suffix_len: usize) -> Result<(), AmqpError> {
    let reason = if queue.is_empty() {
        "the name is empty; pick a name such as `provisioning`".to_owned()
    } else if queue.starts_with("amq.") {
        "names starting with `amq.` are reserved by the broker; pick another name".to_owned()
    } else if queue.len() + suffix_len > MAX_QUEUE_NAME_LEN {
        format!(
            "the name is {} bytes long, and with its dead-letter suffix it exceeds the \
             {MAX_QUEUE_NAME_LEN}-byte limit of AMQP; use at most {} bytes",
            queue.len(),
            MAX_QUEUE_NAME_LEN - suffix_len
        )
    } else {
        return Ok(());
    };

    Err(AmqpError::InvalidQueue {
        queue: queue.to_owned(),
        reason,
    })
}

/// The broker's confirmation of a publish on a [`ConfirmedChannel`].
#[derive(Debug)]
enum Published {
    /// The broker took responsibility for the message.
    Acked,
    /// The broker could not route a mandatory message to any queue.
    Returned {
        /// The broker's reason, such as `NO_ROUTE`.
        reply_text: String,
    },
    /// The broker failed to take responsibility for the message. It may or
    /// may not have reached a queue.
    Nacked,
}

/// The failure of a publish on a [`ConfirmedChannel`] that got no
/// confirmation.
#[derive(Debug)]
enum PublishError {
    /// The channel was closed before the message was handed to lapin, so the
    /// broker never saw it.
    NotSent(lapin::Error),
    /// The message may have reached the broker, but no confirmation arrived.
    Unconfirmed(lapin::Error),
}

/// A channel in publisher-confirm mode whose publishes are serialised.
///
/// lapin 2 numbers a confirm and queues the message's frames under two
/// separate locks, so two tasks publishing at once on a multi-threaded
/// runtime could have their confirms swapped. The `publish_lock` keeps the
/// numbering and the frame order the same.
struct ConfirmedChannel {
    channel: Channel,
    publish_lock: tokio::sync::Mutex<()>,
}

impl ConfirmedChannel {
    async fn open(connection: &Connection, redacted_url: &str) -> Result<Self, AmqpError> {
        let channel = connection
            .create_channel()
            .await
            .map_err(|error| AmqpError::setup(redacted_url, "open a channel", error))?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(|error| AmqpError::setup(redacted_url, "turn on publisher confirms", error))?;

        Ok(Self {
            channel,
            publish_lock: tokio::sync::Mutex::new(()),
        })
    }

    /// Publishes a JSON body to the default exchange, so `queue` is the name
    /// of the queue that receives it, and waits for the broker's confirm.
    async fn publish(
        &self,
        queue: &str,
        body: &[u8],
        properties: BasicProperties,
        mandatory: bool,
    ) -> Result<Published, PublishError> {
        let options = BasicPublishOptions {
            mandatory,
            immediate: false,
        };
        let confirm = {
            let _serialised = self.publish_lock.lock().await;
            self.channel
                .basic_publish("", queue, options, body, properties)
                .await
        };
        let confirm = confirm.map_err(|error| match error {
            lapin::Error::InvalidChannelState(_) | lapin::Error::InvalidConnectionState(_) => {
                PublishError::NotSent(error)
            }
            error => PublishError::Unconfirmed(error),
        })?;

        match confirm.await.map_err(PublishError::Unconfirmed)? {
            Confirmation::Ack(Some(returned)) | Confirmation::Nack(Some(returned)) => {
                Ok(Published::Returned {
                    reply_text: returned.reply_text.to_string(),
                })
            }
            Confirmation::Ack(None) => Ok(Published::Acked),
            Confirmation::Nack(None) => Ok(Published::Nacked),
            // `open` turned confirms on, so lapin never reports this.
            Confirmation::NotRequested => Ok(Published::Acked),
        }
    }
}

/// Builds the properties shared by requests and replies.
fn json_properties(correlation_id: Option<&str>) -> BasicProperties {
    let properties = BasicProperties::default()
        .with_content_type(JSON_CONTENT_TYPE.into())
        .with_delivery_mode(PERSISTENT);

    match correlation_id {
        Some(correlation_id) => properties.with_correlation_id(correlation_id.into()),
        None => properties,
    }
}
