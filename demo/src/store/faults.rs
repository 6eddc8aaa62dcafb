//! Durable counts of injected transient faults, so that a `transient: N`
//! fault fails N attempts in all, across worker restarts.

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

/// The table of each database that counts the failures injected so far.
pub(super) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS injected_faults (
    idempotency_key TEXT PRIMARY KEY,
    failures INTEGER NOT NULL CHECK (failures > 0)
);
";

/// Counts one more injected failure for `idempotency_key` unless `planned`
/// were already injected. Returns the number of this failure, from 1, or
/// `None` when the request should run.
pub(super) fn inject(
    connection: &mut Connection,
    idempotency_key: &str,
    planned: u32,
) -> rusqlite::Result<Option<u32>> {
    let transaction = connection.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let failures: u32 = transaction
        .query_row(
            "SELECT failures FROM injected_faults WHERE idempotency_key = ?1",
            [idempotency_key],
            |row| row.get(0),
        )
        .optional()?
        .unwrap_or(0);
    if failures >= planned {
        return Ok(None);
    }

    transaction.execute(
        "INSERT INTO injected_faults (idempotency_key, failures) VALUES (?1, 1)
         ON CONFLICT (idempotency_key) DO UPDATE SET failures = failures + 1",
        params![idempotency_key],
    )?;
    transaction.commit()?;
    Ok(Some(failures + 1))
}
