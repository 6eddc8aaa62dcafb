//! A durable [`SagaLog`] in one SQLite file.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, mpsc};
use std::thread;

use rusqlite::{Connection, ErrorCode, OpenFlags, OptionalExtension, params};
use serde_json::Value;
use tokio::sync::oneshot;

use crate::log::LogFuture;
use crate::{LogError, SagaEvent, SagaEventKind, SagaId, SagaLog, SagaStatus};

/// The schema this build writes. Version 1 held the events alone; version 2
/// adds the `sagas` table, one row per saga with its current status.
const SCHEMA_VERSION: i64 = 2;

/// The maximum number of events one transaction commits, so that a burst cannot hold the
/// write lock for long.
const MAX_BATCH: usize = 1_024;

/// An append-only [`SagaLog`] in a SQLite file, in WAL mode with
/// `synchronous = FULL`, so an appended event survives a crash of the
/// process or of the machine.
///
/// Appends go to one writer thread, which commits every event waiting at
/// the time in one transaction (group commit): many sagas in flight share
/// one fsync instead of paying one each. [`SagaLog::append`] returns only
/// after the transaction holding its event committed.
pub struct SqliteSagaLog {
    path: PathBuf,
    writer: mpsc::Sender<AppendRequest>,
    reader: Arc<Mutex<Connection>>,
}

struct AppendRequest {
    event: SagaEvent,
    done: oneshot::Sender<Result<(), LogError>>,
}

/// One saga as the `sagas` table lists it.
#[derive(Clone, Debug, PartialEq)]
pub struct SagaSummary {
    /// The saga's id.
    pub saga_id: SagaId,
    /// The definition's name.
    pub saga: String,
    /// The status its last transition entered.
    pub status: SagaStatus,
    /// The saga's input.
    pub input: Value,
    /// When the saga was created, in milliseconds since the Unix epoch.
    pub created_at_ms: u64,
    /// When its last event was recorded.
    pub updated_at_ms: u64,
}

impl std::fmt::Debug for SqliteSagaLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteSagaLog")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl SqliteSagaLog {
    /// Opens the log at `path`, creating it when absent and migrating an
    /// older schema.
    ///
    /// # Errors
    ///
    /// When the file cannot be opened, is not a SQLite database, fails
    /// SQLite's integrity check, or has a schema version newer than this
    /// build reads. A damaged or newer file is left exactly as it was.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, LogError> {
        let path = path.as_ref().to_path_buf();
        let display = path.display().to_string();
        let sqlite = |action: &str| {
            let display = display.clone();
            let action = action.to_owned();
            move |error: rusqlite::Error| {
                LogError::with_source(
                    format!("cannot {action} saga log {display}: {error}"),
                    error,
                )
            }
        };

        let writer = open_connection(&path).map_err(sqlite("open"))?;
        check_integrity(&writer, &display)?;
        migrate(&writer, &display)?;
        writer
            .pragma_update(None, "journal_mode", "WAL")
            .map_err(sqlite("enable WAL mode in"))?;
        writer
            .pragma_update(None, "synchronous", "FULL")
            .map_err(sqlite("configure"))?;
        let reader = open_connection(&path).map_err(sqlite("open a reader on"))?;

        let (sender, receiver) = mpsc::channel();
        let thread_path = display.clone();
        thread::Builder::new()
            .name("saga-log-writer".to_owned())
            .spawn(move || write_batches(writer, receiver, &thread_path))
            .map_err(|error| {
                LogError::with_source(
                    format!("cannot start the writer thread of saga log {display}"),
                    error,
                )
            })?;

        Ok(Self {
            path,
            writer: sender,
            reader: Arc::new(Mutex::new(reader)),
        })
    }

    /// Returns the file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Lists every saga in the log, oldest first.
    ///
    /// # Errors
    ///
    /// When the file cannot be read or a row does not decode.
    pub async fn sagas(&self) -> Result<Vec<SagaSummary>, LogError> {
        self.read(|connection, path| {
            let mut statement = connection.prepare(
                "SELECT saga_id, saga, status, input, created_at_ms, updated_at_ms
                 FROM sagas ORDER BY created_at_ms, rowid",
            )?;
            let rows = statement.query_map([], |row| {
                Ok((
                    row.get::<_, String>(0)?,
                    row.get::<_, String>(1)?,
                    row.get::<_, String>(2)?,
                    row.get::<_, String>(3)?,
                    row.get::<_, i64>(4)?,
                    row.get::<_, i64>(5)?,
                ))
            })?;
            let mut sagas = Vec::new();
            for row in rows {
                let (id, saga, status, input, created, updated) = row?;
                sagas.push(SagaSummary {
                    saga_id: parse_id(&id, path)?,
                    saga,
                    status: status.parse().map_err(|error| corrupt(path, &id, error))?,
                    input: serde_json::from_str(&input)
                        .map_err(|error| corrupt(path, &id, error))?,
                    created_at_ms: u64::try_from(created).unwrap_or(0),
                    updated_at_ms: u64::try_from(updated).unwrap_or(0),
                });
            }
            Ok(sagas)
        })
        .await
    }

    async fn read<T: Send + 'static>(
        &self,
        query: impl FnOnce(&Connection, &str) -> Result<T, ReadError> + Send + 'static,
    ) -> Result<T, LogError> {
        let reader = self.reader.clone();
        let path = self.path.display().to_string();
        tokio::task::spawn_blocking(move || {
            let connection = reader
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            query(&connection, &path).map_err(|error| match error {
                ReadError::Sqlite(error) => {
                    LogError::with_source(format!("cannot read saga log {path}: {error}"), error)
                }
                ReadError::Log(error) => error,
            })
        })
        .await
        .map_err(|error| LogError::with_source("a saga log read panicked", error))?
    }
}

enum ReadError {
    Sqlite(rusqlite::Error),
    Log(LogError),
}

impl From<rusqlite::Error> for ReadError {
    fn from(error: rusqlite::Error) -> Self {
        Self::Sqlite(error)
    }
}

impl From<LogError> for ReadError {
    fn from(error: LogError) -> Self {
        Self::Log(error)
    }
}

fn corrupt(path: &str, id: &str, error: impl std::fmt::Display) -> ReadError {
    ReadError::Log(LogError::new(format!(
        "saga log {path} contains an invalid row of saga {id}: {error}; the row was left unchanged"
    )))
}

fn parse_id(id: &str, path: &str) -> Result<SagaId, ReadError> {
    id.parse().map_err(|error| corrupt(path, id, error))
}

impl SagaLog for SqliteSagaLog {
    fn append<'a>(&'a self, event: &'a SagaEvent) -> LogFuture<'a, ()> {
        Box::pin(async move {
            let (done, result) = oneshot::channel();
            let request = AppendRequest {
                event: event.clone(),
                done,
            };
            let stopped = || {
                LogError::new(format!(
                    "the writer of saga log {} stopped; reopen the log",
                    self.path.display()
                ))
            };
            self.writer.send(request).map_err(|_| stopped())?;
            result.await.map_err(|_| stopped())?
        })
    }

    fn history(&self, id: SagaId) -> LogFuture<'_, Vec<SagaEvent>> {
        Box::pin(self.read(move |connection, path| {
            let mut statement = connection
                .prepare("SELECT event FROM events WHERE saga_id = ?1 ORDER BY sequence")?;
            let rows = statement.query_map([id.to_string()], |row| row.get::<_, String>(0))?;
            let mut events = Vec::new();
            for row in rows {
                let text = row?;
                events.push(
                    serde_json::from_str(&text)
                        .map_err(|error| corrupt(path, &id.to_string(), error))?,
                );
            }
            Ok(events)
        }))
    }

    fn unfinished(&self) -> LogFuture<'_, Vec<SagaId>> {
        Box::pin(self.read(|connection, path| {
            let mut statement = connection.prepare(
                "SELECT saga_id FROM sagas WHERE status NOT IN ('SUCCEEDED', 'COMPENSATED')
                 ORDER BY created_at_ms, rowid",
            )?;
            let rows = statement.query_map([], |row| row.get::<_, String>(0))?;
            let mut ids = Vec::new();
            for row in rows {
                ids.push(parse_id(&row?, path)?);
            }
            Ok(ids)
        }))
    }
}

fn open_connection(path: &Path) -> rusqlite::Result<Connection> {
    let connection = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    connection.busy_timeout(std::time::Duration::from_secs(5))?;
    Ok(connection)
}

/// Refuses a file SQLite finds damaged, before anything writes to it.
fn check_integrity(connection: &Connection, path: &str) -> Result<(), LogError> {
    let problem: String = connection
        .query_row("PRAGMA quick_check", [], |row| row.get(0))
        .map_err(|error| {
            let damaged = matches!(
                error.sqlite_error_code(),
                Some(ErrorCode::NotADatabase | ErrorCode::DatabaseCorrupt)
            );
            let message = if damaged {
                format!(
                    "saga log {path} is not a readable SQLite database: {error}; it was left unchanged: \
                     move it aside to start a new log, or recover its readable rows with `sqlite3 {path} .recover`"
                )
            } else {
                format!(
                    "cannot open saga log {path}: {error}; check that the file and its directory \
                     are readable and writable by this user"
                )
            };
            LogError::with_source(message, error)
        })?;
    if problem == "ok" {
        return Ok(());
    }
    Err(LogError::new(format!(
        "saga log {path} is damaged ({problem}); it was left unchanged: \
         recover its readable rows with `sqlite3 {path} .recover`, or move it aside to start a new log"
    )))
}

/// Refuses a SQLite file of schema version 0 that already has tables: it is
/// some other database, and creating the log's tables in it would change it.
fn check_not_foreign(connection: &Connection, path: &str) -> Result<(), LogError> {
    let foreign: Option<String> = connection
        .query_row(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT IN ('events', 'sagas') LIMIT 1",
            [],
            |row| row.get(0),
        )
        .optional()
        .map_err(|error| LogError::with_source(format!("cannot read saga log {path}: {error}"), error))?;
    match foreign {
        None => Ok(()),
        Some(table) => Err(LogError::new(format!(
            "{path} is a SQLite database but not a saga log (it has a table {table:?}); \
             it was left unchanged: point the saga log at another file"
        ))),
    }
}

fn migrate(connection: &Connection, path: &str) -> Result<(), LogError> {
    let sqlite = |error: rusqlite::Error| {
        LogError::with_source(format!("cannot migrate saga log {path}: {error}"), error)
    };
    let version: i64 = connection
        .query_row("PRAGMA user_version", [], |row| row.get(0))
        .map_err(sqlite)?;

    match version {
        SCHEMA_VERSION => Ok(()),
        0 | 1 => {
            if version == 0 {
                check_not_foreign(connection, path)?;
            }
            connection
                .execute_batch("BEGIN IMMEDIATE")
                .map_err(sqlite)?;
            let result = create_schema(connection).and_then(|()| {
                if version == 1 {
                    fill_sagas_from_events(connection)?;
                }
                connection.pragma_update(None, "user_version", SCHEMA_VERSION)
            });
            match result {
                Ok(()) => connection.execute_batch("COMMIT").map_err(sqlite),
                Err(error) => {
                    let _ = connection.execute_batch("ROLLBACK");
                    Err(sqlite(error))
                }
            }
        }
        invalid if invalid < 0 => Err(LogError::new(format!(
            "saga log {path} has the invalid schema version {invalid}; it was left unchanged: \
             check that the file is a saga log"
        ))),
        newer => Err(LogError::new(format!(
            "saga log {path} has schema version {newer}, but this build of typed-saga reads versions up to {SCHEMA_VERSION}; \
             open it with a newer typed-saga"
        ))),
    }
}

fn create_schema(connection: &Connection) -> rusqlite::Result<()> {
    connection.execute_batch(
        "CREATE TABLE IF NOT EXISTS events (
             saga_id TEXT NOT NULL,
             sequence INTEGER NOT NULL,
             recorded_at_ms INTEGER NOT NULL,
             event TEXT NOT NULL,
             PRIMARY KEY (saga_id, sequence)
         ) WITHOUT ROWID;
         CREATE TABLE IF NOT EXISTS sagas (
             saga_id TEXT PRIMARY KEY,
             saga TEXT NOT NULL,
             status TEXT NOT NULL,
             input TEXT NOT NULL,
             created_at_ms INTEGER NOT NULL,
             updated_at_ms INTEGER NOT NULL
         );
         CREATE INDEX IF NOT EXISTS sagas_by_status ON sagas (status);",
    )
}

/// Builds the `sagas` table of a version 1 file from its events.
fn fill_sagas_from_events(connection: &Connection) -> rusqlite::Result<()> {
    let mut statement =
        connection.prepare("SELECT event FROM events ORDER BY saga_id, sequence")?;
    let events: Vec<String> = statement
        .query_map([], |row| row.get(0))?
        .collect::<Result<_, _>>()?;
    for text in events {
        // A row that does not decode stays in `events`, where `history`
        // reports it; the summary skips it rather than fail the migration.
        if let Ok(event) = serde_json::from_str::<SagaEvent>(&text) {
            update_summary(connection, &event)?;
        }
    }
    Ok(())
}

fn update_summary(connection: &Connection, event: &SagaEvent) -> rusqlite::Result<()> {
    let id = event.saga_id.to_string();
    let at = i64::try_from(event.recorded_at_ms).unwrap_or(i64::MAX);
    match &event.kind {
        SagaEventKind::Created { saga, input, .. } => {
            connection.execute(
                "INSERT OR IGNORE INTO sagas (saga_id, saga, status, input, created_at_ms, updated_at_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?5)",
                params![id, saga, SagaStatus::Pending.as_str(), input.to_string(), at],
            )?;
        }
        SagaEventKind::Transition { to, .. } => {
            connection.execute(
                "UPDATE sagas SET status = ?2, updated_at_ms = ?3 WHERE saga_id = ?1",
                params![id, to.as_str(), at],
            )?;
        }
        _ => {
            connection.execute(
                "UPDATE sagas SET updated_at_ms = ?2 WHERE saga_id = ?1",
                params![id, at],
            )?;
        }
    }
    Ok(())
}

/// Runs the writer thread: commits every waiting event in one transaction,
/// then replies to each append.
fn write_batches(mut connection: Connection, requests: mpsc::Receiver<AppendRequest>, path: &str) {
    while let Ok(first) = requests.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match requests.try_recv() {
                Ok(request) => batch.push(request),
                Err(_) => break,
            }
        }

        let results = write_batch(&mut connection, &batch, path);
        for (request, result) in batch.into_iter().zip(results) {
            // The caller may have gone away; its event is stored all the same.
            let _ = request.done.send(result);
        }
    }
}

fn write_batch(
    connection: &mut Connection,
    batch: &[AppendRequest],
    path: &str,
) -> Vec<Result<(), LogError>> {
    let failed_all = |error: rusqlite::Error| -> Vec<Result<(), LogError>> {
        tracing::error!(path, %error, "saga log transaction failed");
        batch
            .iter()
            .map(|request| {
                Err(LogError::new(format!(
                    "cannot store event {} of saga {} in saga log {path}: {error}",
                    request.event.sequence, request.event.saga_id
                )))
            })
            .collect()
    };

    let transaction =
        match connection.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate) {
            Ok(transaction) => transaction,
            Err(error) => return failed_all(error),
        };
    let mut results = Vec::with_capacity(batch.len());
    for request in batch {
        results.push(insert_event(&transaction, &request.event).map_err(|error| {
            LogError::with_source(
                format!(
                    "cannot store event {} of saga {} in saga log {path}: {error}",
                    request.event.sequence, request.event.saga_id
                ),
                error,
            )
        }));
    }
    match transaction.commit() {
        Ok(()) => results,
        Err(error) => failed_all(error),
    }
}

fn insert_event(connection: &Connection, event: &SagaEvent) -> rusqlite::Result<()> {
    let text = serde_json::to_string(event)
        .map_err(|error| rusqlite::Error::ToSqlConversionFailure(Box::new(error)))?;
    // A savepoint per event keeps a rejected event (a repeated sequence
    // number) from undoing the others of its batch.
    connection.execute_batch("SAVEPOINT event")?;
    let inserted = connection
        .execute(
            "INSERT INTO events (saga_id, sequence, recorded_at_ms, event) VALUES (?1, ?2, ?3, ?4)",
            params![
                event.saga_id.to_string(),
                i64::try_from(event.sequence).unwrap_or(i64::MAX),
                i64::try_from(event.recorded_at_ms).unwrap_or(i64::MAX),
                text
            ],
        )
        .and_then(|_| update_summary(connection, event));
    match inserted {
        Ok(()) => connection.execute_batch("RELEASE event"),
        Err(error) => {
            connection.execute_batch("ROLLBACK TO event; RELEASE event")?;
            Err(error)
        }
    }
}

/// Reads the schema version of the file at `path`, for tests and tools.
///
/// # Errors
///
/// When the file cannot be opened or read.
pub fn schema_version(path: impl AsRef<Path>) -> Result<Option<i64>, LogError> {
    let path = path.as_ref();
    let connection =
        Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY).map_err(|error| {
            LogError::with_source(
                format!("cannot open saga log {}: {error}", path.display()),
                error,
            )
        })?;
    connection
        .query_row("PRAGMA user_version", [], |row| row.get(0))
        .optional()
        .map_err(|error| {
            LogError::with_source(
                format!("cannot read saga log {}: {error}", path.display()),
                error,
            )
        })
}
