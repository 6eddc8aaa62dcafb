//! The idempotency inbox: each database records the reply to every request
//! it applied, in the same transaction as the effect.

use rusqlite::types::Type;
use rusqlite::{Connection, OptionalExtension, Row, Transaction, TransactionBehavior, params};
use serde_json::Value;
use typed_saga::{StepAction, StepError, StepReply};

use super::{InboxRow, RequestIds, StoredReply};
use crate::domain::StepKind;

/// The inbox table, present in each of the three databases.
pub(super) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS inbox (
    idempotency_key TEXT PRIMARY KEY,
    saga_id         TEXT NOT NULL,
    step            TEXT NOT NULL,
    action          TEXT NOT NULL CHECK (action IN ('execute', 'compensate')),
    reply           TEXT NOT NULL,
    recorded_at     TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);
CREATE INDEX IF NOT EXISTS inbox_by_saga_step ON inbox (saga_id, step, action);
CREATE TABLE IF NOT EXISTS inbox_payloads (
    idempotency_key TEXT PRIMARY KEY,
    payload         TEXT NOT NULL
);
";

/// The outcome of a request's effect before it is recorded: the reply, or a
/// SQLite error that rolls the transaction back.
pub(super) type EffectResult = rusqlite::Result<Result<Value, StepError>>;

/// Applies `effect` at most once per idempotency key.
///
/// Inside one `BEGIN IMMEDIATE` transaction this returns the recorded reply
/// when the key is known, or a permanent error when an execute request
/// repeats the key with another payload. Otherwise it runs `effect` and
/// records the reply,
/// an error reply included, before committing. `BEGIN IMMEDIATE` takes the
/// write lock up front, which is what lets the busy timeout apply: a deferred
/// transaction that upgrades from read to write in WAL mode fails with
/// `SQLITE_BUSY` at once.
pub(super) fn apply_once(
    connection: &mut Connection,
    ids: &RequestIds,
    step: StepKind,
    action: StepAction,
    effect: impl FnOnce(&Transaction<'_>) -> EffectResult,
) -> rusqlite::Result<StoredReply> {
    let transaction = connection.transaction_with_behavior(TransactionBehavior::Immediate)?;

    if let Some(recorded) = find(&transaction, &ids.idempotency_key)? {
        if let Some(first) = recorded_payload(&transaction, &ids.idempotency_key)?
            && first != ids.payload
        {
            return Ok(StoredReply {
                result: Err(StepError::permanent(format!(
                    "idempotency key {:?} was first used with the payload {first}, not {}; \
                     a repeated request must carry the same payload",
                    ids.idempotency_key, ids.payload
                ))),
                replayed: false,
            });
        }
        return Ok(replay(recorded, ids, step, action));
    }

    let result = if action == StepAction::Execute && was_compensated(&transaction, ids, step)? {
        Err(StepError::permanent(format!(
            "step {step} of saga {} was already compensated; an execute request that arrives after its compensation has no effect",
            ids.saga_id
        )))
    } else {
        effect(&transaction)?
    };

    record(&transaction, ids, step, action, &result)?;
    transaction.commit()?;

    Ok(StoredReply {
        result,
        replayed: false,
    })
}

/// Lists every recorded reply, oldest first.
pub(super) fn list(connection: &Connection) -> rusqlite::Result<Vec<InboxRow>> {
    let mut statement = connection.prepare(
        "SELECT idempotency_key, saga_id, step, action, reply, recorded_at
         FROM inbox ORDER BY recorded_at, idempotency_key",
    )?;
    let rows = statement.query_map([], read_row)?;
    rows.collect()
}

/// Returns the stored reply to a repeated key, or a permanent error when the
/// key was first used for another saga, step or action. The conflicting
/// request is not recorded, because the key already has its reply.
fn replay(recorded: InboxRow, ids: &RequestIds, step: StepKind, action: StepAction) -> StoredReply {
    let same_request = recorded.saga_id == ids.saga_id
        && recorded.step == step.name()
        && recorded.action == action.to_string();

    let result = if same_request {
        recorded.reply.into()
    } else {
        Err(StepError::permanent(format!(
            "idempotency key {:?} was already used by saga {} for {} {}; send a new key for a different request",
            ids.idempotency_key, recorded.saga_id, recorded.step, recorded.action
        )))
    };

    StoredReply {
        result,
        replayed: same_request,
    }
}

fn find(
    transaction: &Transaction<'_>,
    idempotency_key: &str,
) -> rusqlite::Result<Option<InboxRow>> {
    transaction
        .query_row(
            "SELECT idempotency_key, saga_id, step, action, reply, recorded_at
             FROM inbox WHERE idempotency_key = ?1",
            [idempotency_key],
            read_row,
        )
        .optional()
}

/// Returns the payload the key's first execute request carried, if recorded.
fn recorded_payload(
    transaction: &Transaction<'_>,
    idempotency_key: &str,
) -> rusqlite::Result<Option<String>> {
    transaction
        .query_row(
            "SELECT payload FROM inbox_payloads WHERE idempotency_key = ?1",
            [idempotency_key],
            |row| row.get(0),
        )
        .optional()
}

/// Returns whether the inbox contains a compensation of `step` for this saga.
fn was_compensated(
    transaction: &Transaction<'_>,
    ids: &RequestIds,
    step: StepKind,
) -> rusqlite::Result<bool> {
    transaction.query_row(
        "SELECT EXISTS (
             SELECT 1 FROM inbox WHERE saga_id = ?1 AND step = ?2 AND action = 'compensate'
         )",
        params![ids.saga_id, step.name()],
        |row| row.get(0),
    )
}

fn record(
    transaction: &Transaction<'_>,
    ids: &RequestIds,
    step: StepKind,
    action: StepAction,
    result: &Result<Value, StepError>,
) -> rusqlite::Result<()> {
    let reply = StepReply::from(result.clone());
    let reply_json = serde_json::to_string(&reply)
        .map_err(|error| rusqlite::Error::ToSqlConversionFailure(Box::new(error)))?;

    if action == StepAction::Execute {
        transaction.execute(
            "INSERT INTO inbox_payloads (idempotency_key, payload) VALUES (?1, ?2)",
            params![ids.idempotency_key, ids.payload],
        )?;
    }
    transaction.execute(
        "INSERT INTO inbox (idempotency_key, saga_id, step, action, reply)
         VALUES (?1, ?2, ?3, ?4, ?5)",
        params![
            ids.idempotency_key,
            ids.saga_id,
            step.name(),
            action.to_string(),
            reply_json
        ],
    )?;
    Ok(())
}

fn read_row(row: &Row<'_>) -> rusqlite::Result<InboxRow> {
    let reply_json: String = row.get(4)?;
    let reply = serde_json::from_str(&reply_json).map_err(|error| {
        rusqlite::Error::FromSqlConversionFailure(4, Type::Text, Box::new(error))
    })?;

    Ok(InboxRow {
        idempotency_key: row.get(0)?,
        saga_id: row.get(1)?,
        step: row.get(2)?,
        action: row.get(3)?,
        reply,
        recorded_at: row.get(5)?,
    })
}
