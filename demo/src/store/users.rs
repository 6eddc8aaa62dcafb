//! `users.db`: the accounts created by `provision_user`.

use rusqlite::{Connection, Row, Transaction, params};
use serde_json::json;
use typed_saga::StepError;

use super::UserRow;
use super::inbox::EffectResult;
use crate::domain::NewUser;

/// The users table. `AUTOINCREMENT` keeps a deleted user's id from being
/// given to a later user.
pub(super) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS users (
    user_id    INTEGER PRIMARY KEY AUTOINCREMENT,
    username   TEXT NOT NULL UNIQUE,
    email      TEXT NOT NULL,
    saga_id    TEXT NOT NULL,
    created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);
CREATE INDEX IF NOT EXISTS users_by_saga ON users (saga_id);
";

/// Creates the user, or rejects a username that already exists.
pub(super) fn insert(transaction: &Transaction<'_>, saga_id: &str, user: &NewUser) -> EffectResult {
    if contains(transaction, &user.username)? {
        return Ok(Err(StepError::permanent(format!(
            "username {:?} already exists; choose another username",
            user.username
        ))));
    }

    transaction.execute(
        "INSERT INTO users (username, email, saga_id) VALUES (?1, ?2, ?3)",
        params![user.username, user.email, saga_id],
    )?;
    let user_id = transaction.last_insert_rowid();

    Ok(Ok(json!({"user_id": user_id, "username": user.username})))
}

/// Deletes the users that this saga created, and returns how many.
pub(super) fn delete_by_saga(
    transaction: &Transaction<'_>,
    saga_id: &str,
) -> rusqlite::Result<usize> {
    transaction.execute("DELETE FROM users WHERE saga_id = ?1", [saga_id])
}

/// Returns whether a user with this username exists.
pub(super) fn contains(connection: &Connection, username: &str) -> rusqlite::Result<bool> {
    connection.query_row(
        "SELECT EXISTS (SELECT 1 FROM users WHERE username = ?1)",
        [username],
        |row| row.get(0),
    )
}

/// Lists every user by id.
pub(super) fn list(connection: &Connection) -> rusqlite::Result<Vec<UserRow>> {
    let mut statement = connection.prepare(
        "SELECT user_id, username, email, saga_id, created_at FROM users ORDER BY user_id",
    )?;
    let rows = statement.query_map([], read_row)?;
    rows.collect()
}

fn read_row(row: &Row<'_>) -> rusqlite::Result<UserRow> {
    Ok(UserRow {
        user_id: row.get(0)?,
        username: row.get(1)?,
        email: row.get(2)?,
        saga_id: row.get(3)?,
        created_at: row.get(4)?,
    })
}
