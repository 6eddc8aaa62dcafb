//! The saga log seen from the command line: recovery of unfinished sagas,
//! `demo recover`, `demo sagas` and `demo show ID`.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use anyhow::Context;
use serde_json::Value;
use typed_saga::{
    Recovery, RetryPolicy, SagaEvent, SagaEventKind, SagaId, SagaLog, SagaStatus, SqliteSagaLog,
    StepAction,
};

use crate::cli::{EXIT_FAILED, Settings};
use crate::saga::{MAX_ATTEMPTS, UserProvisioning};
use crate::saga_log::{SAGA_LOG_FILE, SharedOutput, lock_saga_log, open_saga_log, print_line};
use crate::transport::{Backend, LocalWorker, Transport};

/// How many recovered sagas ended in each state.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct RecoveryTally {
    /// Sagas that ended `SUCCEEDED`.
    pub succeeded: usize,
    /// Sagas that ended `COMPENSATED`.
    pub compensated: usize,
    /// Sagas that ended `FAILED`, or that recovery could not drive on.
    pub failed: usize,
}

/// Drives every unfinished saga in `saga_log` to an end, printing one line
/// per saga. A saga that ended `FAILED` is compensated again only when
/// `resume_failed` is set, because its compensation failed for good before.
///
/// # Errors
///
/// When the log cannot list its sagas.
pub async fn recover_unfinished(
    saga_log: &Arc<SqliteSagaLog>,
    transport: Arc<Transport>,
    retry_delay: Duration,
    resume_failed: bool,
    output: &SharedOutput,
) -> anyhow::Result<RecoveryTally> {
    let policy = RetryPolicy::fixed(MAX_ATTEMPTS, retry_delay);
    let recovery = Recovery::<UserProvisioning>::new(saga_log.clone(), transport)
        .with_retry_policy(policy.clone())
        .with_compensation_policy(policy)
        .resume_failed(resume_failed);
    let recovered = recovery
        .recover_all()
        .await
        .context("cannot list the unfinished sagas of the saga log")?;

    let mut tally = RecoveryTally::default();
    for saga in recovered {
        let username = username_of(saga_log, saga.saga_id).await;
        match &saga.outcome {
            Ok(outcome) => {
                match outcome.status() {
                    SagaStatus::Succeeded => tally.succeeded += 1,
                    SagaStatus::Compensated => tally.compensated += 1,
                    _ => tally.failed += 1,
                }
                print_line(
                    output,
                    format_args!(
                        "Recovered saga {} ({username}): {} -> {}",
                        saga.saga_id,
                        saga.found.map_or("?", SagaStatus::as_str),
                        outcome.status()
                    ),
                );
            }
            Err(error) => {
                tally.failed += 1;
                tracing::error!(saga_id = %saga.saga_id, %error, "cannot recover saga");
                print_line(
                    output,
                    format_args!("Cannot recover saga {} ({username}): {error}", saga.saga_id),
                );
            }
        }
    }
    Ok(tally)
}

/// Opens the saga log of `settings.data_dir` and drives the sagas a crash
/// left unfinished to an end, leaving sagas that ended `FAILED` as they are.
/// Every command that starts sagas calls this first.
///
/// # Errors
///
/// When the log cannot be opened or listed.
pub async fn open_and_recover(
    settings: &Settings,
    backend: &Backend,
    output: &SharedOutput,
) -> anyhow::Result<Arc<SqliteSagaLog>> {
    lock_saga_log(&settings.data_dir)?;
    let saga_log = open_saga_log(&settings.data_dir)?;
    recover_unfinished(
        &saga_log,
        backend.transport(),
        settings.retry_delay,
        false,
        output,
    )
    .await?;
    Ok(saga_log)
}

async fn username_of(saga_log: &SqliteSagaLog, id: SagaId) -> String {
    let history = saga_log.history(id).await.unwrap_or_default();
    history
        .first()
        .and_then(|event| match &event.kind {
            SagaEventKind::Created { input, .. } => input_username(input),
            _ => None,
        })
        .unwrap_or_else(|| "unknown user".to_owned())
}

fn input_username(input: &Value) -> Option<String> {
    input.get("username")?.as_str().map(str::to_owned)
}

/// Runs `demo recover`: drives every unfinished saga to an end, including
/// sagas that ended `FAILED`, and returns exit status 0 when none is left
/// `FAILED`.
///
/// # Errors
///
/// When the transport cannot start or the log cannot be read.
pub async fn recover(
    settings: &Settings,
    local_worker: LocalWorker,
    output: &SharedOutput,
) -> anyhow::Result<ExitCode> {
    lock_saga_log(&settings.data_dir)?;
    let saga_log = open_saga_log(&settings.data_dir)?;
    let backend = Backend::start(settings, local_worker).await?;
    let tally = recover_unfinished(
        &saga_log,
        backend.transport(),
        settings.retry_delay,
        true,
        output,
    )
    .await;
    backend.shutdown().await;
    let tally = tally?;

    print_line(
        output,
        format_args!(
            "Recovered {} sagas: {} succeeded, {} compensated, {} failed",
            tally.succeeded + tally.compensated + tally.failed,
            tally.succeeded,
            tally.compensated,
            tally.failed
        ),
    );
    Ok(if tally.failed > 0 {
        ExitCode::from(EXIT_FAILED)
    } else {
        ExitCode::SUCCESS
    })
}

/// Runs `demo sagas`: one line per saga in the log, oldest first.
///
/// # Errors
///
/// When the log is missing or cannot be read.
pub async fn list(settings: &Settings, output: &SharedOutput) -> anyhow::Result<()> {
    let saga_log = open_existing_saga_log(settings)?;
    let sagas = saga_log.sagas().await?;
    if sagas.is_empty() {
        print_line(
            output,
            format_args!(
                "No sagas in {}.",
                settings.data_dir.join(SAGA_LOG_FILE).display()
            ),
        );
        return Ok(());
    }

    print_line(
        output,
        format_args!(
            "{:<36}  {:<20}  {:<12}  {:<24}  {:>10}",
            "SAGA ID", "USERNAME", "STATE", "STARTED (UTC)", "DURATION"
        ),
    );
    for saga in sagas {
        let username = input_username(&saga.input).unwrap_or_default();
        let duration = saga.updated_at_ms.saturating_sub(saga.created_at_ms);
        print_line(
            output,
            format_args!(
                "{:<36}  {:<20}  {:<12}  {:<24}  {:>8}ms",
                saga.saga_id,
                username,
                saga.status,
                format_time(saga.created_at_ms),
                duration
            ),
        );
    }
    Ok(())
}

/// Runs `demo show ID`: the saga's input, then each transition and each
/// attempt with its duration, error or output.
///
/// # Errors
///
/// When the saga is not in the log, or the log is missing or cannot be
/// read.
pub async fn show(
    settings: &Settings,
    saga_id: SagaId,
    output: &SharedOutput,
) -> anyhow::Result<()> {
    let saga_log = open_existing_saga_log(settings)?;
    let history = saga_log.history(saga_id).await?;
    if history.is_empty() {
        anyhow::bail!(
            "saga {saga_id} not found in {}; list the sagas with `demo sagas`",
            saga_log.path().display()
        );
    }

    for line in render_history(&history) {
        print_line(output, format_args!("{line}"));
    }
    Ok(())
}

/// Opens the saga log for reading without creating it, so that a mistyped
/// `--data-dir` is reported instead of leaving an empty log behind.
fn open_existing_saga_log(settings: &Settings) -> anyhow::Result<Arc<SqliteSagaLog>> {
    let path = settings.data_dir.join(SAGA_LOG_FILE);
    if !path.is_file() {
        anyhow::bail!(
            "no saga log at {}; check --data-dir, or run `demo` or `demo provision` first",
            path.display()
        );
    }
    open_saga_log(&settings.data_dir)
}

/// Renders a history as lines for people: a header, then one line per
/// transition and per finished attempt, with times relative to the start.
pub fn render_history(history: &[SagaEvent]) -> Vec<String> {
    let Some(first) = history.first() else {
        return Vec::new();
    };
    let start_ms = first.recorded_at_ms;
    let last_ms = history
        .last()
        .map_or(start_ms, |event| event.recorded_at_ms);
    let status = history
        .iter()
        .rev()
        .find_map(|event| match &event.kind {
            SagaEventKind::Transition { to, .. } => Some(*to),
            _ => None,
        })
        .unwrap_or(SagaStatus::Pending);

    let mut lines = Vec::new();
    let mut header = format!("saga {}", first.saga_id);
    if let SagaEventKind::Created { saga, input, .. } = &first.kind {
        let _ = write!(header, " ({saga})");
        if let Some(username) = input_username(input) {
            let _ = write!(header, ", user {username}");
        }
        lines.push(header);
        lines.push(format!("  input: {input}"));
    } else {
        lines.push(header);
    }
    let elapsed_ms = last_ms.saturating_sub(start_ms);
    let elapsed = if status.is_final() {
        format!("took {elapsed_ms}ms")
    } else {
        format!("{elapsed_ms}ms so far")
    };
    lines.push(format!(
        "  state: {status}, started {}, {elapsed}",
        format_time(start_ms)
    ));

    let mut started_at: HashMap<(String, StepAction, u32), u64> = HashMap::new();
    for event in history {
        let offset = event.recorded_at_ms.saturating_sub(start_ms);
        match &event.kind {
            SagaEventKind::Created { .. } => {}
            SagaEventKind::Transition { .. } => lines.push(format!("  +{offset}ms {}", event.kind)),
            SagaEventKind::AttemptStarted {
                step,
                action,
                attempt,
            } => {
                started_at.insert((step.clone(), *action, *attempt), event.recorded_at_ms);
            }
            SagaEventKind::AttemptSucceeded {
                step,
                action,
                attempt,
                output,
            } => {
                let took = took_ms(&started_at, step, *action, *attempt, event.recorded_at_ms);
                let output = match action {
                    StepAction::Execute => format!(", output {output}"),
                    StepAction::Compensate => String::new(),
                };
                lines.push(format!(
                    "  +{offset}ms {step} {action} attempt {attempt}: succeeded in {took}{output}"
                ));
            }
            SagaEventKind::AttemptFailed {
                step,
                action,
                attempt,
                error,
                will_retry,
            } => {
                let took = took_ms(&started_at, step, *action, *attempt, event.recorded_at_ms);
                let next = if *will_retry { "will retry" } else { "gave up" };
                lines.push(format!(
                    "  +{offset}ms {step} {action} attempt {attempt}: failed in {took} ({next}): {error}"
                ));
            }
        }
    }
    lines
}

fn took_ms(
    started_at: &HashMap<(String, StepAction, u32), u64>,
    step: &str,
    action: StepAction,
    attempt: u32,
    finished_ms: u64,
) -> String {
    match started_at.get(&(step.to_owned(), action, attempt)) {
        Some(started) => format!("{}ms", finished_ms.saturating_sub(*started)),
        None => "an unknown time".to_owned(),
    }
}

/// Formats milliseconds since the Unix epoch as an RFC 3339 UTC time.
fn format_time(unix_ms: u64) -> String {
    let time = UNIX_EPOCH + Duration::from_millis(unix_ms);
    humantime::format_rfc3339_millis(time).to_string()
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use typed_saga::StepError;

    use super::*;

    fn event(sequence: u64, recorded_at_ms: u64, kind: SagaEventKind) -> SagaEvent {
        SagaEvent {
            saga_id: "00000000-0000-4000-8000-000000000001".parse().unwrap(),
            sequence,
            recorded_at_ms,
            kind,
        }
    }

    #[test]
    fn history_lists_attempts_with_durations_errors_and_outputs() {
        let step = || "provision_user".to_owned();
        let history = vec![
            event(
                0,
                1_000,
                SagaEventKind::Created {
                    saga: "UserProvisioning".to_owned(),
                    input: json!({ "username": "ana.garcia" }),
                    steps: vec![step()],
                },
            ),
            event(
                1,
                1_000,
                SagaEventKind::Transition {
                    from: SagaStatus::Pending,
                    to: SagaStatus::Running,
                    remaining: Vec::new(),
                },
            ),
            event(
                2,
                1_001,
                SagaEventKind::AttemptStarted {
                    step: step(),
                    action: StepAction::Execute,
                    attempt: 1,
                },
            ),
            event(
                3,
                1_005,
                SagaEventKind::AttemptFailed {
                    step: step(),
                    action: StepAction::Execute,
                    attempt: 1,
                    error: StepError::transient("database busy"),
                    will_retry: true,
                },
            ),
            event(
                4,
                1_010,
                SagaEventKind::AttemptStarted {
                    step: step(),
                    action: StepAction::Execute,
                    attempt: 2,
                },
            ),
            event(
                5,
                1_017,
                SagaEventKind::AttemptSucceeded {
                    step: step(),
                    action: StepAction::Execute,
                    attempt: 2,
                    output: json!({ "user_id": 7 }),
                },
            ),
        ];

        let lines = render_history(&history);

        assert_eq!(
            lines,
            [
                "saga 00000000-0000-4000-8000-000000000001 (UserProvisioning), user ana.garcia",
                "  input: {\"username\":\"ana.garcia\"}",
                "  state: RUNNING, started 1970-01-01T00:00:01.000Z, 17ms so far",
                "  +0ms PENDING -> RUNNING",
                "  +5ms provision_user execute attempt 1: failed in 4ms (will retry): transient error: database busy",
                "  +17ms provision_user execute attempt 2: succeeded in 7ms, output {\"user_id\":7}",
            ]
        );
    }
}
