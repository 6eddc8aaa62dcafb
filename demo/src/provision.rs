//! `demo provision`: one user from the options, or many from a CSV file.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use typed_saga::{SagaLog, SagaOutcome, SagaStatus};

use crate::batch;
use crate::cli::{EXIT_COMPENSATED, EXIT_FAILED, ProvisionArgs, Settings};
use crate::history::open_and_recover;
use crate::saga::{
    ProvisioningInput, StepFaults, UserProvisioning, action_failure, describe_outcome,
    provisioning_saga,
};
use crate::saga_log::{EchoLog, lock_saga_log, print_stdout, stdout_output};
use crate::transport::{Backend, LocalWorker};

/// Provisions the user that `args` describes, or each row of `args.file`,
/// and returns the exit status that the help text documents.
///
/// # Errors
///
/// When the transport cannot start, the CSV file cannot be read, or a
/// saga's log fails.
pub async fn run(settings: &Settings, args: ProvisionArgs) -> anyhow::Result<ExitCode> {
    // Before the worker starts, so a second command on the same data
    // directory stops before it takes any request.
    lock_saga_log(&settings.data_dir)?;
    let faults = injected_faults(&args);
    let local_worker = if args.no_local_worker {
        LocalWorker::None
    } else {
        LocalWorker::Start
    };

    if let Some(path) = &args.file {
        let options = batch::BatchOptions {
            concurrency: usize::from(args.concurrency),
            faults,
            local_worker,
        };
        return batch::run(settings, path, options).await;
    }

    let input = ProvisioningInput {
        username: args
            .username
            .context("--username is required without --file")?,
        email: args.email.context("--email is required without --file")?,
        roles: args.roles,
        storage_mb: args
            .storage_mb
            .context("--storage-mb is required without --file")?,
        ops_per_day: args
            .ops_per_day
            .context("--ops-per-day is required without --file")?,
        faults,
    };
    provision_one(settings, input, local_worker).await
}

/// Turns `--fail-at` and `--flaky` into the faults of each step.
fn injected_faults(args: &ProvisionArgs) -> StepFaults {
    let mut faults = StepFaults::default();
    if let Some(step) = args.fail_at {
        faults.entry(step).permanent = true;
    }
    for flaky in &args.flaky {
        faults.entry(flaky.step).transient = flaky.failures;
    }
    faults
}

/// Runs one saga, printing its events as they happen and its final state.
async fn provision_one(
    settings: &Settings,
    input: ProvisioningInput,
    local_worker: LocalWorker,
) -> anyhow::Result<ExitCode> {
    let backend = Backend::start(settings, local_worker).await?;
    print_stdout(format_args!(
        "Provisioning {} over {}.",
        input.username,
        backend.description()
    ));

    let durable_log = open_and_recover(settings, &backend, &stdout_output()).await?;
    let saga_log: Arc<dyn SagaLog> = durable_log;
    let username = input.username.clone();
    let echo = EchoLog::new(&username, Arc::clone(&saga_log), stdout_output());
    let saga = provisioning_saga(
        input,
        backend.transport(),
        Arc::new(echo),
        settings.retry_delay,
    );
    let id = saga.id();
    print_stdout(format_args!("saga {id}"));

    let started = Instant::now();
    let outcome = saga.run_to_end().await;
    let elapsed_ms = started.elapsed().as_millis();
    backend.shutdown().await;
    let outcome = outcome.with_context(|| format!("the saga provisioning {username} stopped"))?;

    let history = saga_log.history(id).await?;
    let description = describe_outcome(&outcome, action_failure(&history).as_ref());
    print_stdout(format_args!("{description} (in {elapsed_ms}ms)"));
    Ok(exit_status(&outcome))
}

/// Returns the exit status of a saga that ran to its end.
fn exit_status(outcome: &SagaOutcome<UserProvisioning>) -> ExitCode {
    match outcome.status() {
        SagaStatus::Succeeded => ExitCode::SUCCESS,
        SagaStatus::Compensated => ExitCode::from(EXIT_COMPENSATED),
        _ => ExitCode::from(EXIT_FAILED),
    }
}
