//! One SQLite database file: opening it in WAL mode, a small set of idle
//! connections, and running calls on tokio's blocking threads.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use rusqlite::Connection;

use super::StoreError;

/// How long a connection waits for another connection's write lock before
/// SQLite returns `SQLITE_BUSY`.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// How many idle connections a database keeps for reuse. Calls beyond this
/// many at once open extra connections and close them afterwards.
const MAX_IDLE_CONNECTIONS: usize = 4;

/// One database file and its idle connections.
#[derive(Debug)]
pub(super) struct Database {
    /// The file name, such as `users.db`, for messages.
    name: &'static str,
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
}

impl Database {
    /// Opens (or creates) `dir/name`, switches it to WAL mode and applies
    /// `schema`. This blocks, so call it from a blocking thread.
    pub(super) fn open_blocking(
        dir: &Path,
        name: &'static str,
        schema: &str,
    ) -> Result<Self, StoreError> {
        let path = dir.join(name);
        let sqlite_error = |source| StoreError::Sqlite {
            database: name,
            source,
        };

        let connection = connect(&path).map_err(sqlite_error)?;

        // WAL lets readers run while one writer commits. The mode is stored
        // in the file, so later connections inherit it.
        let mode: String = connection
            .pragma_update_and_check(None, "journal_mode", "wal", |row| row.get(0))
            .map_err(sqlite_error)?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(StoreError::NotWal {
                database: name,
                mode,
            });
        }

        // One transaction, so two processes opening a new file at once do
        // not interleave their schema statements.
        connection
            .execute_batch(&format!("BEGIN IMMEDIATE;\n{schema}\nCOMMIT;"))
            .map_err(sqlite_error)?;

        Ok(Self {
            name,
            path,
            idle: Mutex::new(vec![connection]),
        })
    }

    /// Runs `call` with a connection on tokio's blocking thread pool, so no
    /// SQLite call (nor its busy wait) holds an async runtime thread.
    pub(super) async fn run<T, F>(self: &Arc<Self>, call: F) -> Result<T, StoreError>
    where
        F: FnOnce(&mut Connection) -> rusqlite::Result<T> + Send + 'static,
        T: Send + 'static,
    {
        let database = Arc::clone(self);
        let name = self.name;
        let span = tracing::Span::current();

        let task = tokio::task::spawn_blocking(move || {
            let _entered = span.enter();
            database.run_blocking(call)
        });

        task.await.map_err(|source| StoreError::Task {
            database: name,
            source,
        })?
    }

    fn run_blocking<T>(
        &self,
        call: impl FnOnce(&mut Connection) -> rusqlite::Result<T>,
    ) -> Result<T, StoreError> {
        let sqlite_error = |source| StoreError::Sqlite {
            database: self.name,
            source,
        };

        let mut connection = match self.take_idle() {
            Some(connection) => connection,
            None => connect(&self.path).map_err(sqlite_error)?,
        };

        // A failed call leaves no open transaction behind, because rusqlite's
        // `Transaction` rolls back when dropped, so the connection is reusable.
        let result = call(&mut connection);
        self.put_idle(connection);
        result.map_err(sqlite_error)
    }

    fn take_idle(&self) -> Option<Connection> {
        self.idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop()
    }

    fn put_idle(&self, connection: Connection) {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        if idle.len() < MAX_IDLE_CONNECTIONS {
            idle.push(connection);
        }
    }
}

/// Opens a connection with the busy timeout set.
fn connect(path: &Path) -> rusqlite::Result<Connection> {
    let connection = Connection::open(path)?;
    connection.busy_timeout(BUSY_TIMEOUT)?;
    Ok(connection)
}
