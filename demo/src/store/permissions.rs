//! `permissions.db`: the roles granted by `assign_permissions`.

use rusqlite::{Connection, Row, Transaction, params};
use serde_json::json;

use super::PermissionRow;
use super::inbox::EffectResult;
use crate::domain::PermissionGrant;

/// The permissions table, one row per granted role. A row keeps the saga that
/// first granted the role, so undoing a later saga's grant of the same role
/// leaves it in place.
pub(super) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS permissions (
    username   TEXT NOT NULL,
    role       TEXT NOT NULL,
    saga_id    TEXT NOT NULL,
    granted_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    PRIMARY KEY (username, role)
);
CREATE INDEX IF NOT EXISTS permissions_by_saga ON permissions (saga_id);
";

/// Grants each requested role that the user does not have yet. A role the
/// user already has is not an error, because the grant's outcome is the same.
pub(super) fn grant(
    transaction: &Transaction<'_>,
    saga_id: &str,
    grant: &PermissionGrant,
) -> EffectResult {
    let roles = grant.distinct_roles();

    for role in &roles {
        transaction.execute(
            "INSERT INTO permissions (username, role, saga_id) VALUES (?1, ?2, ?3)
             ON CONFLICT (username, role) DO NOTHING",
            params![grant.username, role, saga_id],
        )?;
    }

    Ok(Ok(json!({"roles": roles})))
}

/// Deletes the roles that this saga granted, and returns how many.
pub(super) fn delete_by_saga(
    transaction: &Transaction<'_>,
    saga_id: &str,
) -> rusqlite::Result<usize> {
    transaction.execute("DELETE FROM permissions WHERE saga_id = ?1", [saga_id])
}

/// Returns whether the user has any role.
pub(super) fn contains(connection: &Connection, username: &str) -> rusqlite::Result<bool> {
    connection.query_row(
        "SELECT EXISTS (SELECT 1 FROM permissions WHERE username = ?1)",
        [username],
        |row| row.get(0),
    )
}

/// Lists every granted role by username and role.
pub(super) fn list(connection: &Connection) -> rusqlite::Result<Vec<PermissionRow>> {
    let mut statement = connection.prepare(
        "SELECT username, role, saga_id, granted_at FROM permissions ORDER BY username, role",
    )?;
    let rows = statement.query_map([], read_row)?;
    rows.collect()
}

fn read_row(row: &Row<'_>) -> rusqlite::Result<PermissionRow> {
    Ok(PermissionRow {
        username: row.get(0)?,
        role: row.get(1)?,
        saga_id: row.get(2)?,
        granted_at: row.get(3)?,
    })
}
