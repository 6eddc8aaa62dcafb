//! The saga log that the demo's commands share, and a wrapper that also
//! prints each event as it happens.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use anyhow::{Context, bail};
use typed_saga::{LogFuture, SagaEvent, SagaId, SagaLog, SqliteSagaLog};

/// A writer shared by the code that prints, such as standard output or a
/// buffer in a test.
pub type SharedOutput = Arc<Mutex<dyn Write + Send>>;

/// Returns standard output as a [`SharedOutput`].
pub fn stdout_output() -> SharedOutput {
    Arc::new(Mutex::new(std::io::stdout()))
}

/// Writes one line to `output`. A failed write (a closed pipe) is logged
/// and otherwise ignored, because printing is not part of any saga's work.
pub fn print_line(output: &SharedOutput, line: std::fmt::Arguments<'_>) {
    let mut output = output.lock().unwrap_or_else(PoisonError::into_inner);
    if let Err(error) = output
        .write_fmt(line)
        .and_then(|()| output.write_all(b"\n"))
    {
        tracing::debug!(%error, "could not print a line");
    }
}

/// The file name of the saga log under the data directory.
pub const SAGA_LOG_FILE: &str = "saga.db";

/// The file whose lock marks the process that drives the sagas of a data
/// directory.
pub const SAGA_LOG_LOCK_FILE: &str = "saga.db.lock";

/// Prints one line to standard output, like `println!`, except that a
/// closed pipe (`demo ... | head`) does not panic: a saga in flight must not
/// stop halfway because its progress has no reader.
pub fn print_stdout(line: std::fmt::Arguments<'_>) {
    let mut stdout = std::io::stdout().lock();
    if let Err(error) = stdout
        .write_fmt(line)
        .and_then(|()| stdout.write_all(b"\n"))
    {
        tracing::debug!(%error, "could not print a line");
    }
}

/// Takes an exclusive lock on the saga log of `data_dir` for the rest of
/// the process, so that two commands never drive the same sagas at once.
/// The operating system releases it when the process exits, also on a
/// crash. Taking it again in the same process succeeds.
///
/// # Errors
///
/// When another process holds the lock, or the lock file cannot be opened.
pub fn lock_saga_log(data_dir: &Path) -> anyhow::Result<()> {
    static HELD: Mutex<Vec<(PathBuf, File)>> = Mutex::new(Vec::new());

    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("cannot create the data directory {}", data_dir.display()))?;
    let path = data_dir.join(SAGA_LOG_LOCK_FILE);
    let mut held = HELD.lock().unwrap_or_else(PoisonError::into_inner);
    if held.iter().any(|(locked, _)| *locked == path) {
        return Ok(());
    }

    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("cannot open the lock file {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => {
            held.push((path, file));
            Ok(())
        }
        Err(TryLockError::WouldBlock) => bail!(
            "another demo command is running sagas on {} (it holds {}); wait for it to finish, \
             or use another --data-dir",
            data_dir.display(),
            path.display()
        ),
        Err(TryLockError::Error(error)) => {
            Err(error).with_context(|| format!("cannot lock {}", path.display()))
        }
    }
}

/// Opens the durable saga log, `saga.db` under `data_dir`, creating the
/// directory and the file when missing.
///
/// This is the one place that chooses the log, and each command opens it
/// once, so that concurrent sagas share its writer and its group commits.
///
/// # Errors
///
/// When the directory cannot be created, or the file is damaged or has a
/// newer schema; the message names the file and what to do.
pub fn open_saga_log(data_dir: &Path) -> anyhow::Result<Arc<SqliteSagaLog>> {
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("cannot create the data directory {}", data_dir.display()))?;
    let log = SqliteSagaLog::open(data_dir.join(SAGA_LOG_FILE))?;
    Ok(Arc::new(log))
}

/// A [`SagaLog`] that forwards each event to an inner log and, once the
/// inner log stored it, prints the event's line prefixed with a label
/// (the saga's username) and the time since the saga was created.
pub struct EchoLog {
    label: String,
    inner: Arc<dyn SagaLog>,
    output: SharedOutput,
    /// When the first event printed was recorded, in ms since the epoch.
    first_event_ms: Mutex<Option<u64>>,
}

impl EchoLog {
    /// Builds a log for one saga that prints to `output` with `label`.
    pub fn new(label: impl Into<String>, inner: Arc<dyn SagaLog>, output: SharedOutput) -> Self {
        Self {
            label: label.into(),
            inner,
            output,
            first_event_ms: Mutex::new(None),
        }
    }

    fn print(&self, event: &SagaEvent) {
        let elapsed_ms = {
            let mut first = self
                .first_event_ms
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let first = *first.get_or_insert(event.recorded_at_ms);
            event.recorded_at_ms.saturating_sub(first)
        };

        print_line(
            &self.output,
            format_args!("[{} +{elapsed_ms}ms] {}", self.label, event.kind),
        );
    }
}

impl SagaLog for EchoLog {
    fn append<'a>(&'a self, event: &'a SagaEvent) -> LogFuture<'a, ()> {
        Box::pin(async move {
            // Printed only after the inner log stored it, so the output never
            // shows an event that the saga did not act on.
            self.inner.append(event).await?;
            self.print(event);
            Ok(())
        })
    }

    fn history(&self, id: SagaId) -> LogFuture<'_, Vec<SagaEvent>> {
        self.inner.history(id)
    }

    fn unfinished(&self) -> LogFuture<'_, Vec<SagaId>> {
        self.inner.unfinished()
    }
}

#[cfg(test)]
mod tests {
    use typed_saga::{MemoryLog, SagaEventKind, SagaStatus};

    use super::*;

    fn transition(id: SagaId, sequence: u64, recorded_at_ms: u64) -> SagaEvent {
        SagaEvent {
            saga_id: id,
            sequence,
            recorded_at_ms,
            kind: SagaEventKind::Transition {
                from: SagaStatus::Pending,
                to: SagaStatus::Running,
                remaining: Vec::new(),
            },
        }
    }

    #[tokio::test]
    async fn echo_log_prints_label_elapsed_time_and_event() {
        let buffer = Arc::new(Mutex::new(Vec::<u8>::new()));
        let inner = Arc::new(MemoryLog::new());
        let log = EchoLog::new("ana", inner.clone(), buffer.clone());
        let id = SagaId::random();

        log.append(&transition(id, 0, 1_000)).await.unwrap();
        log.append(&transition(id, 1, 1_250)).await.unwrap();

        let printed = String::from_utf8(buffer.lock().unwrap().clone()).unwrap();
        assert_eq!(
            printed,
            "[ana +0ms] PENDING -> RUNNING\n[ana +250ms] PENDING -> RUNNING\n"
        );
    }

    #[tokio::test]
    async fn echo_log_forwards_to_inner_log() {
        let inner = Arc::new(MemoryLog::new());
        let log = EchoLog::new("ana", inner.clone(), Arc::new(Mutex::new(std::io::sink())));
        let id = SagaId::random();

        log.append(&transition(id, 0, 1_000)).await.unwrap();

        assert_eq!(inner.events().len(), 1);
        assert_eq!(log.history(id).await.unwrap().len(), 1);
    }
}
