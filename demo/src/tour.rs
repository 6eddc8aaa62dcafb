//! The tour that `demo` runs without a subcommand: three sample users, one
//! saga each, printed event by event, then the rows of the databases.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use typed_saga::SagaLog;

use crate::cli::Settings;
use crate::domain::{Fault, MAX_STORAGE_MB};
use crate::history::open_and_recover;
use crate::report::print_databases;
use crate::saga::{
    ProvisioningInput, ProvisioningStepKind, StepFaults, action_failure, describe_outcome,
    provisioning_saga,
};
use crate::saga_log::{EchoLog, SharedOutput, lock_saga_log, print_line};
use crate::store::Store;
use crate::transport::{Backend, LocalWorker};

/// How many attempts of the flaky sample's `assign_permissions` fail before
/// it succeeds.
const FLAKY_FAILURES: u32 = 2;

/// The storage that the compensated sample requests, in MiB: far over the
/// plan maximum.
const OVERSIZED_STORAGE_MB: i64 = 999_999_999;

/// The highest run number tried when earlier tours left their users behind.
const MAX_RUN_NUMBER: u32 = 999;

/// One sample user and what its saga shows.
struct Sample {
    input: ProvisioningInput,
    story: String,
}

/// Starts a worker in this process, provisions the three sample users one
/// after the other while printing each saga's events, then prints the rows
/// of the three databases, all to `output`.
///
/// # Errors
///
/// When the worker cannot start, the databases cannot be read, or a saga's
/// log fails.
pub async fn run(settings: &Settings, output: &SharedOutput) -> anyhow::Result<()> {
    lock_saga_log(&settings.data_dir)?;
    let backend = Backend::start(settings, LocalWorker::Start).await?;
    let result = run_samples(settings, &backend, output).await;
    backend.shutdown().await;
    result
}

async fn run_samples(
    settings: &Settings,
    backend: &Backend,
    output: &SharedOutput,
) -> anyhow::Result<()> {
    let store = backend
        .store()
        .expect("a backend started with LocalWorker::Start has its worker's store");
    let durable_log = open_and_recover(settings, backend, output).await?;
    let saga_log: Arc<dyn SagaLog> = durable_log;
    let suffix = unused_suffix(store, settings.retry_delay).await?;

    print_line(
        output,
        format_args!(
            "Provisioning three users, each with a saga of three steps: provision_user, \
             assign_permissions, create_quota."
        ),
    );
    print_line(
        output,
        format_args!("Transport: {}.", backend.description()),
    );
    print_line(
        output,
        format_args!("Databases: {}.", settings.data_dir.display()),
    );
    if !suffix.is_empty() {
        print_line(
            output,
            format_args!(
                "Users of an earlier tour are in the databases, so this tour's usernames end \
                 in {suffix}."
            ),
        );
    }

    let samples = samples(&suffix, settings.retry_delay);
    for (number, sample) in samples.into_iter().enumerate() {
        print_line(output, format_args!(""));
        print_line(
            output,
            format_args!(
                "{}. {}: {}",
                number + 1,
                sample.input.username,
                sample.story
            ),
        );
        run_sample(settings, backend, &saga_log, sample.input, output).await?;
    }

    print_line(output, format_args!(""));
    print_line(
        output,
        format_args!("Rows in {} after the tour:", settings.data_dir.display()),
    );
    print_databases(store, output).await
}

/// Runs one sample's saga to its end and prints how it ended.
async fn run_sample(
    settings: &Settings,
    backend: &Backend,
    saga_log: &Arc<dyn SagaLog>,
    input: ProvisioningInput,
    output: &SharedOutput,
) -> anyhow::Result<()> {
    let username = input.username.clone();
    let echo = EchoLog::new(&username, Arc::clone(saga_log), Arc::clone(output));
    let saga = provisioning_saga(
        input,
        backend.transport(),
        Arc::new(echo),
        settings.retry_delay,
    );
    let id = saga.id();
    print_line(output, format_args!("saga {id}"));

    let started = Instant::now();
    let outcome = saga
        .run_to_end()
        .await
        .with_context(|| format!("the saga of sample user {username} stopped"))?;
    let elapsed_ms = started.elapsed().as_millis();

    let history = saga_log.history(id).await?;
    let description = describe_outcome(&outcome, action_failure(&history).as_ref());
    print_line(output, format_args!("=> {description} (in {elapsed_ms}ms)"));
    Ok(())
}

/// Returns the three sample users, their usernames ending in `suffix`.
fn samples(suffix: &str, retry_delay: Duration) -> Vec<Sample> {
    let mut flaky_faults = StepFaults::default();
    *flaky_faults.entry(ProvisioningStepKind::AssignPermissions) = Fault {
        permanent: false,
        transient: FLAKY_FAILURES,
    };

    vec![
        Sample {
            input: sample_input("ana.garcia", suffix, &["reader", "writer"], 500),
            story: "every step succeeds.".to_owned(),
        },
        Sample {
            input: ProvisioningInput {
                faults: flaky_faults,
                ..sample_input("ben.okafor", suffix, &["reader"], 2048)
            },
            story: format!(
                "assign_permissions fails {FLAKY_FAILURES} times with a transient error and is \
                 retried {}ms later each time.",
                retry_delay.as_millis()
            ),
        },
        Sample {
            input: sample_input("chloe.martin", suffix, &["admin"], OVERSIZED_STORAGE_MB),
            story: format!(
                "create_quota asks for {OVERSIZED_STORAGE_MB} MiB, over the plan maximum of \
                 {MAX_STORAGE_MB} MiB, so the saga undoes the first two steps."
            ),
        },
    ]
}

fn sample_input(name: &str, suffix: &str, roles: &[&str], storage_mb: i64) -> ProvisioningInput {
    ProvisioningInput {
        username: format!("{name}{suffix}"),
        email: format!("{name}{suffix}@example.com"),
        roles: roles.iter().map(|role| (*role).to_owned()).collect(),
        storage_mb,
        ops_per_day: 10_000,
        faults: StepFaults::default(),
    }
}

/// Returns the suffix that keeps the sample usernames free: empty on the
/// first tour in a data directory, then `-2`, `-3` and so on, so that a
/// later tour shows the same three outcomes instead of failing on taken
/// usernames.
async fn unused_suffix(store: &Store, retry_delay: Duration) -> anyhow::Result<String> {
    let names: Vec<String> = samples("", retry_delay)
        .into_iter()
        .map(|sample| sample.input.username)
        .collect();

    for run in 1..=MAX_RUN_NUMBER {
        let suffix = if run == 1 {
            String::new()
        } else {
            format!("-{run}")
        };

        let mut in_use = false;
        for name in &names {
            let presence = store.username_presence(&format!("{name}{suffix}")).await?;
            in_use |= !presence.is_absent();
        }
        if !in_use {
            return Ok(suffix);
        }
    }

    bail!(
        "the databases already hold the sample users of {MAX_RUN_NUMBER} tours; remove the data \
         directory or pass another --data-dir"
    )
}
