//! The provisioning worker behind a real RabbitMQ queue: repeated requests
//! and malformed ones, sent by the RPC client or published by hand as a
//! client in another language would.

mod common;

use std::time::{Duration, Instant};

use common::AmqpHarness;
use demo::domain::StepKind;
use futures_util::StreamExt;
use lapin::message::Delivery;
use lapin::options::{BasicConsumeOptions, BasicGetOptions, BasicPublishOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, Consumer};
use serde_json::{Value, json};
use typed_saga::amqp::{RpcClient, RpcClientOptions};
use typed_saga::{StepAction, StepError, StepReply, StepRequest};

const DIRECT_REPLY_TO: &str = "amq.rabbitmq.reply-to";

/// How long a test waits for a reply the worker sends within milliseconds.
const PATIENCE: Duration = Duration::from_secs(5);

/// Publishes hand-made requests on one channel and reads the replies that
/// RabbitMQ's direct reply-to routes back to it.
struct RawClient {
    _connection: Connection,
    channel: Channel,
    replies: Consumer,
}

impl RawClient {
    async fn connect() -> Self {
        let connection = common::require_broker().await;
        let channel = connection.create_channel().await.unwrap();
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
            .expect("publishing a request by hand")
            .await
            .expect("waiting for the broker to take the request");
    }

    async fn next_reply(&mut self) -> Delivery {
        tokio::time::timeout(PATIENCE, self.replies.next())
            .await
            .expect("no reply within 5 s")
            .expect("the reply consumer ended")
            .expect("reading a reply")
    }

    /// Waits until `queue` contains a message and returns its body.
    async fn wait_for_message(&self, queue: &str) -> Option<Vec<u8>> {
        let deadline = Instant::now() + PATIENCE;
        while Instant::now() < deadline {
            let message = self
                .channel
                .basic_get(queue, BasicGetOptions { no_ack: true })
                .await
                .expect("reading a queue");
            if let Some(message) = message {
                return Some(message.delivery.data);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        None
    }
}

fn properties(reply_to: bool, correlation_id: Option<&str>) -> BasicProperties {
    let mut properties = BasicProperties::default()
        .with_content_type("application/json".into())
        .with_delivery_mode(2);
    if reply_to {
        properties = properties.with_reply_to(DIRECT_REPLY_TO.into());
    }
    if let Some(correlation_id) = correlation_id {
        properties = properties.with_correlation_id(correlation_id.into());
    }
    properties
}

fn new_user_request(saga_id: &str, username: &str) -> StepRequest {
    StepRequest::new(
        saga_id,
        "provision_user",
        StepAction::Execute,
        json!({"username": username, "email": format!("{username}@example.com")}),
    )
}

fn decode_reply(delivery: &Delivery) -> StepReply {
    serde_json::from_slice(&delivery.data).expect("the reply is a JSON step reply")
}

fn permanent_message(reply: StepReply) -> String {
    match reply {
        StepReply::Error {
            error: StepError::Permanent(message),
        } => message,
        other => panic!("expected a permanent error, got {other:?}"),
    }
}

async fn connect_client() -> RpcClient {
    RpcClient::connect(&common::broker_url(), RpcClientOptions::default())
        .await
        .unwrap_or_else(|error| panic!("{error}"))
}

/// Checks that every database is empty.
async fn assert_no_rows(harness: &AmqpHarness) {
    let store = harness.store();
    assert!(store.list_users().await.unwrap().is_empty(), "users.db");
    assert!(
        store.list_permissions().await.unwrap().is_empty(),
        "permissions.db"
    );
    assert!(store.list_quotas().await.unwrap().is_empty(), "quotas.db");
}

/// Sends a valid request and checks that the worker still applies it.
async fn assert_worker_still_serves(harness: &AmqpHarness) {
    let client = connect_client().await;

    let output = client
        .call(harness.queue(), &new_user_request("after", "valid.user"))
        .await;

    assert_eq!(output, Ok(json!({"user_id": 1, "username": "valid.user"})));
    assert_eq!(harness.store().list_users().await.unwrap().len(), 1);
    client.close().await;
}

#[tokio::test]
async fn repeated_call_changes_the_database_once() {
    let harness = AmqpHarness::start("repeated-call").await;
    let client = connect_client().await;
    let request = new_user_request("saga-1", "ana.garcia");

    let first = client.call(harness.queue(), &request).await;
    let second = client.call(harness.queue(), &request).await;

    assert_eq!(first, Ok(json!({"user_id": 1, "username": "ana.garcia"})));
    assert_eq!(second, first);
    assert_eq!(harness.store().list_users().await.unwrap().len(), 1);
    let inbox = harness
        .store()
        .list_inbox(StepKind::ProvisionUser)
        .await
        .unwrap();
    assert_eq!(inbox.len(), 1);
    client.close().await;
    harness.shutdown().await;
}

#[tokio::test]
async fn request_published_twice_applies_once() {
    let harness = AmqpHarness::start("published-twice").await;
    let mut raw = RawClient::connect().await;
    let body = serde_json::to_vec(&new_user_request("saga-1", "ana.garcia")).unwrap();

    // Both copies are in the queue before the worker replies to either, so
    // the worker may run them at once. The inbox must still apply one.
    raw.publish(harness.queue(), &body, properties(true, Some("first")))
        .await;
    raw.publish(harness.queue(), &body, properties(true, Some("second")))
        .await;
    let replies = [raw.next_reply().await, raw.next_reply().await];

    let mut correlation_ids: Vec<String> = replies
        .iter()
        .map(|reply| {
            reply
                .properties
                .correlation_id()
                .as_ref()
                .map(ToString::to_string)
                .unwrap_or_default()
        })
        .collect();
    correlation_ids.sort();
    assert_eq!(correlation_ids, ["first", "second"]);
    assert_eq!(decode_reply(&replies[0]), decode_reply(&replies[1]));
    assert_eq!(
        decode_reply(&replies[0]),
        StepReply::Ok {
            output: json!({"user_id": 1, "username": "ana.garcia"})
        }
    );
    assert_eq!(harness.store().list_users().await.unwrap().len(), 1);
    harness.shutdown().await;
}

#[tokio::test]
async fn request_without_reply_to_is_dead_lettered() {
    let harness = AmqpHarness::start("no-reply-to").await;
    let raw = RawClient::connect().await;
    let body = serde_json::to_vec(&new_user_request("saga-1", "ana.garcia")).unwrap();

    raw.publish(harness.queue(), &body, properties(false, Some("c1")))
        .await;

    let dead_letter = format!("{}.dead-letter", harness.queue());
    let rejected = raw.wait_for_message(&dead_letter).await;
    assert_eq!(rejected.as_deref(), Some(body.as_slice()));
    assert_no_rows(&harness).await;
    assert_worker_still_serves(&harness).await;
    harness.shutdown().await;
}

#[tokio::test]
async fn request_without_correlation_id_is_rejected() {
    let harness = AmqpHarness::start("no-correlation-id").await;
    let mut raw = RawClient::connect().await;
    let body = serde_json::to_vec(&new_user_request("saga-1", "ana.garcia")).unwrap();

    raw.publish(harness.queue(), &body, properties(true, None))
        .await;

    let message = permanent_message(decode_reply(&raw.next_reply().await));
    assert!(message.contains("no correlation_id"), "{message}");
    assert_no_rows(&harness).await;
    assert_worker_still_serves(&harness).await;
    harness.shutdown().await;
}

#[tokio::test]
async fn broken_json_is_rejected() {
    let harness = AmqpHarness::start("broken-json").await;
    let mut raw = RawClient::connect().await;

    raw.publish(
        harness.queue(),
        br#"{"saga_id": "saga-1", "step": "provision_"#,
        properties(true, Some("c1")),
    )
    .await;

    let reply = raw.next_reply().await;
    let correlation_id = reply
        .properties
        .correlation_id()
        .as_ref()
        .map(ToString::to_string);
    assert_eq!(correlation_id.as_deref(), Some("c1"));
    let message = permanent_message(decode_reply(&reply));
    assert!(message.contains("not valid JSON"), "{message}");
    assert_no_rows(&harness).await;
    assert_worker_still_serves(&harness).await;
    harness.shutdown().await;
}

#[tokio::test]
async fn empty_username_is_rejected() {
    let harness = AmqpHarness::start("empty-username").await;
    let client = connect_client().await;

    let result = client
        .call(harness.queue(), &new_user_request("saga-1", ""))
        .await;

    assert_eq!(
        result,
        Err(StepError::permanent(
            "invalid username \"\": must match [a-z][a-z0-9_.-]{2,31}"
        ))
    );
    assert_no_rows(&harness).await;
    assert_worker_still_serves(&harness).await;
    client.close().await;
    harness.shutdown().await;
}

#[tokio::test]
async fn negative_quota_is_rejected() {
    let harness = AmqpHarness::start("negative-quota").await;
    let client = connect_client().await;
    let request = StepRequest::new(
        "saga-1",
        "create_quota",
        StepAction::Execute,
        json!({"username": "ana.garcia", "storage_mb": -5, "ops_per_day": 1000}),
    );

    let result = client.call(harness.queue(), &request).await;

    assert_eq!(
        result,
        Err(StepError::permanent(
            "invalid storage_mb -5: must be between 1 and 102400 (the plan maximum)"
        ))
    );
    assert_no_rows(&harness).await;
    assert_worker_still_serves(&harness).await;
    client.close().await;
    harness.shutdown().await;
}

#[tokio::test]
async fn request_for_unknown_step_is_rejected() {
    let harness = AmqpHarness::start("unknown-step").await;
    let client = connect_client().await;
    let request = StepRequest::new("saga-1", "delete_user", StepAction::Execute, Value::Null);

    let result = client.call(harness.queue(), &request).await;

    assert_eq!(
        result,
        Err(StepError::permanent(
            "unknown step \"delete_user\"; known steps are provision_user, assign_permissions, create_quota"
        ))
    );
    assert_no_rows(&harness).await;
    assert_worker_still_serves(&harness).await;
    client.close().await;
    harness.shutdown().await;
}
