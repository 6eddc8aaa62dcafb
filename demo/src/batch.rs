//! `demo provision --file`: one saga per CSV row, several at once.

use std::collections::HashMap;
use std::fmt;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, bail};
use csv::{DeserializeErrorKind, ErrorKind, StringRecord};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Deserialize;
use serde_json::Value;
use tokio::task::JoinSet;
use typed_saga::{SagaDefinition, SagaLog, SagaStatus, SqliteSagaLog};

use crate::cli::{EXIT_FAILED, Settings};
use crate::history::open_and_recover;
use crate::saga::{
    ProvisioningInput, StepFaults, UserProvisioning, action_failure, describe_outcome,
    provisioning_saga,
};
use crate::saga_log::{print_stdout, stdout_output};
use crate::transport::{Backend, LocalWorker, Transport};

/// The columns a CSV file must have, in the order the help text lists them.
pub const COLUMNS: [&str; 5] = ["username", "email", "roles", "storage_mb", "ops_per_day"];

/// The settings of a batch.
#[derive(Clone, Debug)]
pub struct BatchOptions {
    /// The maximum number of sagas running at once, at least 1.
    pub concurrency: usize,
    /// The faults injected into every saga.
    pub faults: StepFaults,
    /// Whether the worker runs in this process.
    pub local_worker: LocalWorker,
}

/// A CSV row that parsed, with the line it starts on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CsvUser {
    /// The row's line in the file, counted from 1 with the header on line 1.
    pub line: u64,
    /// The saga input the row describes, without faults.
    pub input: ProvisioningInput,
}

/// A CSV row that could not be parsed, with the line it starts on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MalformedRow {
    /// The row's line in the file.
    pub line: u64,
    /// The reason the row was rejected.
    pub problem: String,
}

impl fmt::Display for MalformedRow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.problem)
    }
}

/// The rows of a CSV file: those that parsed and those that did not.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CsvUsers {
    /// The rows that parsed, in file order.
    pub users: Vec<CsvUser>,
    /// The rows that did not, in file order.
    pub malformed: Vec<MalformedRow>,
}

#[derive(Deserialize)]
struct CsvRow {
    username: String,
    email: String,
    roles: String,
    storage_mb: i64,
    ops_per_day: i64,
}

/// Reads the users of a CSV file whose header names the [`COLUMNS`], in any
/// order. Fields are trimmed, roles are separated by `;`, and empty lines
/// are skipped. The whole file is read into memory first.
///
/// # Errors
///
/// When the file cannot be read or its header lacks a column. A malformed
/// row is no error: it is returned in [`CsvUsers::malformed`].
pub fn read_users(path: &Path) -> anyhow::Result<CsvUsers> {
    let content =
        std::fs::read(path).with_context(|| format!("could not read {}", path.display()))?;
    // Flexible, so that a row of the wrong length is reported by
    // `parse_row` like any other malformed row.
    let mut reader = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .flexible(true)
        .from_reader(content.as_slice());
    let headers = reader
        .headers()
        .with_context(|| format!("could not read the header row of {}", path.display()))?
        .clone();
    check_headers(&headers).with_context(|| format!("invalid header row in {}", path.display()))?;

    let mut rows = CsvUsers::default();
    let mut first_lines: HashMap<String, u64> = HashMap::new();
    for record in reader.records() {
        match record {
            Ok(record) => match parse_row(&headers, &record, &content) {
                Ok(user) => match first_lines.get(&user.input.username) {
                    // Two sagas for one username would race, and the row
                    // that lost would read as a clash with an older user.
                    Some(first) => rows.malformed.push(MalformedRow {
                        line: user.line,
                        problem: format!(
                            "duplicate username {:?}, first on line {first}; keep one row per user",
                            user.input.username
                        ),
                    }),
                    None => {
                        first_lines.insert(user.input.username.clone(), user.line);
                        rows.users.push(user);
                    }
                },
                Err(malformed) => rows.malformed.push(malformed),
            },
            Err(error) => {
                // A row with invalid UTF-8 has a position, and the reader
                // goes on after it. An error without one ends the reading.
                let Some(position) = error.position() else {
                    return Err(error)
                        .with_context(|| format!("could not read {}", path.display()));
                };
                rows.malformed.push(MalformedRow {
                    line: first_line(&content, position),
                    problem: error.to_string(),
                });
            }
        }
    }
    Ok(rows)
}

fn check_headers(headers: &StringRecord) -> anyhow::Result<()> {
    let missing: Vec<&str> = COLUMNS
        .into_iter()
        .filter(|column| !headers.iter().any(|header| header == *column))
        .collect();
    if !missing.is_empty() {
        bail!(
            "missing column {}; the first line must name the columns {}",
            missing.join(", "),
            COLUMNS.join(",")
        );
    }
    Ok(())
}

/// Returns the line on which the record at `position` starts.
///
/// csv positions a record at the end of the record before it, so the blank
/// lines in between are skipped here.
fn first_line(content: &[u8], position: &csv::Position) -> u64 {
    let mut line = position.line();
    let start = usize::try_from(position.byte()).unwrap_or(usize::MAX);
    for byte in content.iter().skip(start) {
        match byte {
            b'\n' => line += 1,
            b'\r' => {}
            _ => break,
        }
    }
    line
}

fn parse_row(
    headers: &StringRecord,
    record: &StringRecord,
    content: &[u8],
) -> Result<CsvUser, MalformedRow> {
    let line = record
        .position()
        .map_or(0, |position| first_line(content, position));
    if record.len() != headers.len() {
        let problem = format!(
            "expected {} fields ({}), found {}",
            headers.len(),
            headers.iter().collect::<Vec<_>>().join(","),
            record.len()
        );
        return Err(MalformedRow { line, problem });
    }

    let row: CsvRow = record.deserialize(Some(headers)).map_err(|error| {
        let problem = match error.kind() {
            ErrorKind::Deserialize { err, .. } => describe_field_error(headers, record, err),
            _ => error.to_string(),
        };
        MalformedRow { line, problem }
    })?;

    let roles = row
        .roles
        .split(';')
        .map(str::trim)
        .filter(|role| !role.is_empty())
        .map(str::to_owned)
        .collect();
    Ok(CsvUser {
        line,
        input: ProvisioningInput {
            username: row.username,
            email: row.email,
            roles,
            storage_mb: row.storage_mb,
            ops_per_day: row.ops_per_day,
            faults: StepFaults::default(),
        },
    })
}

fn describe_field_error(
    headers: &StringRecord,
    record: &StringRecord,
    error: &csv::DeserializeError,
) -> String {
    let reason = match error.kind() {
        DeserializeErrorKind::ParseInt(_) => "expected a whole number".to_owned(),
        other => other.to_string(),
    };
    let Some(index) = error.field().and_then(|index| usize::try_from(index).ok()) else {
        return reason;
    };

    let column = headers.get(index).unwrap_or("?");
    let value = record.get(index).unwrap_or("");
    format!("invalid {column} {value:?}: {reason}")
}

/// The number of a batch's sagas in each final state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Tally {
    succeeded: usize,
    compensated: usize,
    failed: usize,
    /// Rows left out because an earlier saga of the user succeeded or
    /// ended FAILED.
    already_logged: usize,
}

/// The final state of one row's saga.
struct RowOutcome {
    line: u64,
    username: String,
    status: SagaStatus,
    description: String,
}

/// Provisions every valid row of `path`, at most `options.concurrency` at
/// once, reports malformed rows and every saga that did not succeed, and
/// prints a summary.
///
/// # Errors
///
/// When the file cannot be read, the transport cannot start, or a saga's
/// task panics.
pub async fn run(
    settings: &Settings,
    path: &Path,
    options: BatchOptions,
) -> anyhow::Result<ExitCode> {
    let CsvUsers { users, malformed } = read_users(path)?;
    for row in &malformed {
        eprintln!("warning: {}: {row}; row skipped", path.display());
    }

    let backend = Backend::start(settings, options.local_worker).await?;
    print_stdout(format_args!(
        "Provisioning {} users from {} over {}, at most {} at once.",
        users.len(),
        path.display(),
        backend.description(),
        options.concurrency
    ));
    let tally = run_sagas(settings, &backend, users, &options).await;
    backend.shutdown().await;
    let tally = tally?;

    let skipped = match malformed.len() {
        0 => String::new(),
        1 => "; 1 malformed row skipped".to_owned(),
        count => format!("; {count} malformed rows skipped"),
    };
    let already = match tally.already_logged {
        0 => String::new(),
        count => format!("; {count} already in the saga log"),
    };
    print_stdout(format_args!(
        "{}: {} succeeded, {} compensated, {} failed{already}{skipped}",
        path.display(),
        tally.succeeded,
        tally.compensated,
        tally.failed
    ));

    Ok(if tally.failed > 0 {
        ExitCode::from(EXIT_FAILED)
    } else {
        ExitCode::SUCCESS
    })
}

async fn run_sagas(
    settings: &Settings,
    backend: &Backend,
    users: Vec<CsvUser>,
    options: &BatchOptions,
) -> anyhow::Result<Tally> {
    let durable_log = open_and_recover(settings, backend, &stdout_output()).await?;
    let total = users.len();
    let (users, failed_before) = skip_logged_users(&durable_log, users).await?;
    let saga_log: Arc<dyn SagaLog> = durable_log;
    let progress = progress_bar(users.len());
    let mut tally = Tally {
        already_logged: total - users.len(),
        failed: failed_before,
        ..Tally::default()
    };
    let mut pending = users.into_iter();
    let mut running = JoinSet::new();

    loop {
        while running.len() < options.concurrency {
            let Some(mut user) = pending.next() else {
                break;
            };
            user.input.faults = options.faults.clone();
            running.spawn(run_row(
                user,
                backend.transport(),
                Arc::clone(&saga_log),
                settings.retry_delay,
            ));
        }

        let Some(joined) = running.join_next().await else {
            break;
        };
        let outcome = joined.context("a saga's task panicked")?;
        match outcome.status {
            SagaStatus::Succeeded => tally.succeeded += 1,
            SagaStatus::Compensated => tally.compensated += 1,
            _ => tally.failed += 1,
        }
        if outcome.status != SagaStatus::Succeeded {
            progress.suspend(|| {
                print_stdout(format_args!(
                    "line {} {}: {}",
                    outcome.line, outcome.username, outcome.description
                ));
            });
        }
        progress.set_message(format!(
            "{} succeeded, {} compensated, {} failed",
            tally.succeeded, tally.compensated, tally.failed
        ));
        progress.inc(1);
    }

    progress.finish_and_clear();
    Ok(tally)
}

/// Leaves out the rows whose username already has a saga in the log that
/// succeeded, or that ended FAILED and waits for `demo recover`, so that
/// running a file again, for example after a crash, provisions each user
/// once. Rows whose earlier saga was compensated run again, because nothing
/// of them remains. Returns the rows to run and the number of rows whose
/// earlier saga ended FAILED.
async fn skip_logged_users(
    saga_log: &SqliteSagaLog,
    users: Vec<CsvUser>,
) -> anyhow::Result<(Vec<CsvUser>, usize)> {
    let mut logged: HashMap<String, SagaStatus> = HashMap::new();
    for saga in saga_log.sagas().await? {
        let Some(username) = saga.input.get("username").and_then(Value::as_str) else {
            continue;
        };
        if saga.saga != UserProvisioning::NAME || saga.status == SagaStatus::Compensated {
            continue;
        }
        // A later saga of the same user decides, since it ran after.
        logged.insert(username.to_owned(), saga.status);
    }

    let mut remaining = Vec::new();
    let mut succeeded = Vec::new();
    let mut failed = Vec::new();
    for user in users {
        match logged.get(&user.input.username) {
            None => remaining.push(user),
            Some(SagaStatus::Succeeded) => succeeded.push(user.input.username),
            Some(_) => failed.push(user.input.username),
        }
    }
    if !succeeded.is_empty() {
        print_stdout(format_args!(
            "Skipping {} users whose saga already succeeded: {}.",
            succeeded.len(),
            name_list(&succeeded)
        ));
    }
    if !failed.is_empty() {
        print_stdout(format_args!(
            "Skipping {} users whose saga ended FAILED with effects left; run `demo recover` to \
             undo them: {}.",
            failed.len(),
            name_list(&failed)
        ));
    }
    Ok((remaining, failed.len()))
}

/// Lists the first few names, and how many more there are.
fn name_list(names: &[String]) -> String {
    const SHOWN: usize = 5;
    let shown = names[..names.len().min(SHOWN)].join(", ");
    match names.len().saturating_sub(SHOWN) {
        0 => shown,
        more => format!("{shown} and {more} more"),
    }
}

/// Runs one row's saga to its end. A saga stopped by its log counts as
/// FAILED, because its effects are unknown.
async fn run_row(
    user: CsvUser,
    transport: Arc<Transport>,
    saga_log: Arc<dyn SagaLog>,
    retry_delay: std::time::Duration,
) -> RowOutcome {
    let CsvUser { line, input } = user;
    let username = input.username.clone();
    let saga = provisioning_saga(input, transport, Arc::clone(&saga_log), retry_delay);
    let id = saga.id();

    let (status, description) = match saga.run_to_end().await {
        Ok(outcome) => {
            let history = saga_log.history(id).await.unwrap_or_default();
            let failure = action_failure(&history);
            (
                outcome.status(),
                describe_outcome(&outcome, failure.as_ref()),
            )
        }
        Err(error) => (SagaStatus::Failed, format!("FAILED: {error}")),
    };

    RowOutcome {
        line,
        username,
        status,
        description,
    }
}

/// Builds the bar that counts finished sagas. indicatif draws it on
/// standard error, and hides it when that is not a terminal.
fn progress_bar(len: usize) -> ProgressBar {
    let style = ProgressStyle::with_template("{bar:40} {pos}/{len} sagas, {msg} [{elapsed}]")
        .expect("the progress bar template is valid");
    ProgressBar::new(u64::try_from(len).unwrap_or(u64::MAX)).with_style(style)
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn read(content: &str) -> anyhow::Result<CsvUsers> {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        file.write_all(content.as_bytes()).unwrap();
        read_users(file.path())
    }

    #[test]
    fn duplicate_username_keeps_the_first_row() {
        let rows = read(
            "username,email,roles,storage_mb,ops_per_day\n\
             ann1,a@example.com,reader,1,1\n\
             ann1,b@example.com,reader,1,1\n",
        )
        .unwrap();

        assert_eq!(rows.users.len(), 1);
        assert_eq!(rows.users[0].input.email, "a@example.com");
        assert_eq!(
            rows.malformed,
            [MalformedRow {
                line: 3,
                problem: "duplicate username \"ann1\", first on line 2; keep one row per user"
                    .to_owned(),
            }]
        );
    }

    #[test]
    fn rows_parse_with_roles_split_on_semicolons() {
        let rows = read(
            "username,email,roles,storage_mb,ops_per_day\n\
             ana.garcia,ana@example.com,reader; writer,500,1000\n",
        )
        .unwrap();

        assert_eq!(
            rows.users,
            [CsvUser {
                line: 2,
                input: ProvisioningInput {
                    username: "ana.garcia".into(),
                    email: "ana@example.com".into(),
                    roles: vec!["reader".into(), "writer".into()],
                    storage_mb: 500,
                    ops_per_day: 1000,
                    faults: StepFaults::default(),
                },
            }]
        );
    }

    #[test]
    fn columns_may_come_in_any_order() {
        let rows =
            read("roles,ops_per_day,storage_mb,email,username\nreader,1,2,b@example.com,bo1\n")
                .unwrap();

        assert_eq!(rows.users[0].input.username, "bo1");
        assert_eq!(rows.users[0].input.storage_mb, 2);
    }

    #[test]
    fn non_numeric_quota_names_line_and_column() {
        let rows = read(
            "username,email,roles,storage_mb,ops_per_day\n\
             ana.garcia,ana@example.com,reader,500,1000\n\
             ben.okafor,ben@example.com,reader,lots,1000\n",
        )
        .unwrap();

        assert_eq!(rows.users.len(), 1);
        assert_eq!(
            rows.malformed,
            [MalformedRow {
                line: 3,
                problem: "invalid storage_mb \"lots\": expected a whole number".into(),
            }]
        );
    }

    #[test]
    fn short_row_is_skipped_not_fatal() {
        let rows = read(
            "username,email,roles,storage_mb,ops_per_day\n\
             ana.garcia,ana@example.com,reader,500\n\
             ben.okafor,ben@example.com,reader,500,1000\n",
        )
        .unwrap();

        assert_eq!(
            rows.malformed,
            [MalformedRow {
                line: 2,
                problem: "expected 5 fields (username,email,roles,storage_mb,ops_per_day), found 4"
                    .into(),
            }]
        );
        assert_eq!(rows.users.len(), 1);
        assert_eq!(rows.users[0].line, 3);
    }

    #[test]
    fn line_numbers_count_blank_lines() {
        let rows = read(
            "username,email,roles,storage_mb,ops_per_day\n\
             \n\
             ana.garcia,ana@example.com,reader,500\n\
             \n\
             ben.okafor,ben@example.com,reader,500,1000\n",
        )
        .unwrap();

        assert_eq!(rows.malformed[0].line, 3);
        assert_eq!(rows.users[0].line, 5);
    }

    #[test]
    fn line_numbers_hold_with_crlf_line_ends() {
        let rows = read(
            "username,email,roles,storage_mb,ops_per_day\r\n\
             \r\n\
             ana.garcia,ana@example.com,reader,500,1000\r\n",
        )
        .unwrap();

        assert_eq!(rows.users[0].line, 3);
    }

    #[test]
    fn header_without_a_column_is_rejected() {
        let error = read("username,email,storage_mb,ops_per_day\n").unwrap_err();

        assert_eq!(
            format!("{:#}", error.root_cause()),
            "missing column roles; the first line must name the columns \
             username,email,roles,storage_mb,ops_per_day"
        );
    }

    #[test]
    fn negative_quota_parses_for_the_worker_to_reject() {
        let rows =
            read("username,email,roles,storage_mb,ops_per_day\nana,a@example.com,reader,-5,1\n")
                .unwrap();

        assert_eq!(rows.users[0].input.storage_mb, -5);
    }
}
