//! `quotas.db`: the storage and operations limits created by `create_quota`.

use rusqlite::{Connection, Row, Transaction, params};
use serde_json::json;
use typed_saga::StepError;

use super::QuotaRow;
use super::inbox::EffectResult;
use crate::domain::QuotaRequest;

/// The quotas table, one quota per username. The plan maximums live in the
/// domain rules only, so changing a plan needs no schema migration.
pub(super) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS quotas (
    quota_id    INTEGER PRIMARY KEY AUTOINCREMENT,
    username    TEXT NOT NULL UNIQUE,
    storage_mb  INTEGER NOT NULL CHECK (storage_mb > 0),
    ops_per_day INTEGER NOT NULL CHECK (ops_per_day > 0),
    saga_id     TEXT NOT NULL,
    created_at  TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);
CREATE INDEX IF NOT EXISTS quotas_by_saga ON quotas (saga_id);
";

/// Creates the quota, or rejects a username that already has one.
pub(super) fn insert(
    transaction: &Transaction<'_>,
    saga_id: &str,
    quota: &QuotaRequest,
) -> EffectResult {
    if contains(transaction, &quota.username)? {
        return Ok(Err(StepError::permanent(format!(
            "quota for username {:?} already exists; a user has one quota",
            quota.username
        ))));
    }

    transaction.execute(
        "INSERT INTO quotas (username, storage_mb, ops_per_day, saga_id) VALUES (?1, ?2, ?3, ?4)",
        params![quota.username, quota.storage_mb, quota.ops_per_day, saga_id],
    )?;
    let quota_id = transaction.last_insert_rowid();

    Ok(Ok(json!({"quota_id": quota_id})))
}

/// Deletes the quotas that this saga created, and returns how many.
pub(super) fn delete_by_saga(
    transaction: &Transaction<'_>,
    saga_id: &str,
) -> rusqlite::Result<usize> {
    transaction.execute("DELETE FROM quotas WHERE saga_id = ?1", [saga_id])
}

/// Returns whether the user has a quota.
pub(super) fn contains(connection: &Connection, username: &str) -> rusqlite::Result<bool> {
    connection.query_row(
        "SELECT EXISTS (SELECT 1 FROM quotas WHERE username = ?1)",
        [username],
        |row| row.get(0),
    )
}

/// Lists every quota by id.
pub(super) fn list(connection: &Connection) -> rusqlite::Result<Vec<QuotaRow>> {
    let mut statement = connection.prepare(
        "SELECT quota_id, username, storage_mb, ops_per_day, saga_id, created_at
         FROM quotas ORDER BY quota_id",
    )?;
    let rows = statement.query_map([], read_row)?;
    rows.collect()
}

fn read_row(row: &Row<'_>) -> rusqlite::Result<QuotaRow> {
    Ok(QuotaRow {
        quota_id: row.get(0)?,
        username: row.get(1)?,
        storage_mb: row.get(2)?,
        ops_per_day: row.get(3)?,
        saga_id: row.get(4)?,
        created_at: row.get(5)?,
    })
}
