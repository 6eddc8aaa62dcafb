//! The command line: options, subcommands and the exit status of each.

use std::fmt;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use typed_saga::amqp::redact_url;
use typed_saga::{SagaId, StepKind};

use crate::saga::ProvisioningStepKind;
use crate::saga_log::stdout_output;
use crate::transport::LocalWorker;
use crate::{history, provision, serve, tour};

/// The broker URL used when neither `--amqp-url` nor `AMQP_URL` is set.
pub const DEFAULT_AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// The exit status of `provision` when a saga was compensated: the user was
/// not created and nothing of it remains.
pub const EXIT_COMPENSATED: u8 = 3;

/// The exit status of `provision` when a saga failed: some of its effects
/// remain in the databases.
pub const EXIT_FAILED: u8 = 4;

const EXIT_STATUS_HELP: &str = "\
Exit status:
  0  the saga SUCCEEDED; with --file, no saga FAILED (rows that break a
     domain rule end COMPENSATED and malformed rows are skipped; both are
     reported, and neither changes the status)
  1  an error stopped the command, such as an unreachable broker
  2  invalid arguments
  3  without --file, the saga was COMPENSATED: the user was not created
     and nothing of it remains
  4  a saga FAILED: a compensation failed for good and effects remain";

/// Provisions user accounts with a typed-saga saga over RabbitMQ and SQLite.
///
/// Each account is created by a saga of three steps, provision_user,
/// assign_permissions and create_quota, that a worker applies to users.db,
/// permissions.db and quotas.db. When a step fails for good, the steps that
/// took effect are undone newest first.
///
/// Without a subcommand, runs a short tour: three sample users, one that
/// succeeds, one whose assign_permissions fails twice and is retried, and one
/// whose quota is over the plan maximum and is compensated.
#[derive(Debug, Parser)]
#[command(name = "demo", version)]
pub struct Cli {
    /// Options shared by every subcommand.
    #[command(flatten)]
    pub options: GlobalOptions,

    /// The subcommand to run; without one, the tour runs.
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// The options every subcommand takes.
#[derive(Args)]
#[command(next_help_heading = "Global options")]
pub struct GlobalOptions {
    /// The RabbitMQ URL. Its help shows the default with the password
    /// hidden, in place of clap's default display.
    #[arg(
        long,
        help = "The RabbitMQ URL [default: amqp://guest:***@127.0.0.1:5672/%2f]",
        env = "AMQP_URL",
        global = true,
        default_value = DEFAULT_AMQP_URL,
        hide_default_value = true,
        hide_env_values = true,
        value_name = "URL"
    )]
    pub amqp_url: String,

    /// The directory of the worker's databases (users.db, permissions.db,
    /// quotas.db) and of the saga log (saga.db); the commands that run sagas
    /// create it when missing
    #[arg(long, global = true, default_value = "./demo-data", value_name = "DIR")]
    pub data_dir: PathBuf,

    /// The transport of step requests: `auto` uses RabbitMQ when it accepts
    /// a connection within 2 s, and the in-process worker otherwise
    #[arg(long, global = true, value_enum, default_value_t = Broker::Auto)]
    pub broker: Broker,

    /// The command queue the worker consumes. Every worker on one queue
    /// must use the same --data-dir, since any of them may take a request
    #[arg(
        long,
        global = true,
        default_value = "provisioning",
        value_name = "NAME"
    )]
    pub queue: String,

    /// The wait between two attempts of a step's action or compensation, in
    /// milliseconds, from 0 to 600000; each gets 5 attempts, and over AMQP
    /// an attempt waits up to 10 s for the worker's reply
    #[arg(
        long,
        global = true,
        default_value_t = 2000,
        value_name = "MS",
        value_parser = clap::value_parser!(u64).range(0..=600_000)
    )]
    pub retry_delay_ms: u64,
}

/// The transport that carries step requests to the worker.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Broker {
    /// RPCs over RabbitMQ. The command fails when RabbitMQ is not reachable.
    Amqp,
    /// Direct calls to a worker in this process, without a broker.
    InProcess,
    /// RabbitMQ when it accepts a connection within 2 s, in-process
    /// otherwise.
    Auto,
}

/// The subcommands. Every command that runs sagas first drives the
/// unfinished sagas of `saga.db` under `--data-dir` to an end.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serves step requests from the queue until Ctrl-C; needs RabbitMQ.
    Worker,
    /// Provisions one user, or every row of a CSV file.
    #[command(after_help = EXIT_STATUS_HELP)]
    Provision(ProvisionArgs),
    /// Drives every unfinished saga in saga.db to an end, including sagas
    /// whose compensation failed for good; exits 4 when one is still FAILED.
    Recover {
        /// Sends the requests to a worker started elsewhere with `demo
        /// worker`, instead of running one in this process; needs RabbitMQ
        #[arg(long)]
        no_local_worker: bool,
    },
    /// Lists the sagas in saga.db: id, username, state, start and duration.
    Sagas,
    /// Prints one saga's history: each transition and attempt, with errors,
    /// outputs and durations.
    Show {
        /// The saga's id, as `demo sagas` lists it
        id: SagaId,
    },
}

/// The arguments of `demo provision`.
#[derive(Debug, Args)]
pub struct ProvisionArgs {
    /// The login name, matching `[a-z][a-z0-9_.-]{2,31}`.
    #[arg(
        long,
        help = "The login name, matching [a-z][a-z0-9_.-]{2,31}",
        required_unless_present = "file",
        conflicts_with = "file"
    )]
    pub username: Option<String>,

    /// The contact address, such as ana@example.com
    #[arg(long, required_unless_present = "file", conflicts_with = "file")]
    pub email: Option<String>,

    /// A role to grant: reader, writer, admin or billing; repeat for several
    #[arg(
        long = "role",
        value_name = "ROLE",
        required_unless_present = "file",
        conflicts_with = "file"
    )]
    pub roles: Vec<String>,

    /// The storage quota in MiB, from 1 to 102400
    #[arg(
        long,
        value_name = "MIB",
        allow_negative_numbers = true,
        required_unless_present = "file",
        conflicts_with = "file"
    )]
    pub storage_mb: Option<i64>,

    /// The operations quota per day, from 1 to 1000000
    #[arg(
        long,
        value_name = "N",
        allow_negative_numbers = true,
        required_unless_present = "file",
        conflicts_with = "file"
    )]
    pub ops_per_day: Option<i64>,

    /// A CSV file with the header username,email,roles,storage_mb,ops_per_day
    /// and roles separated by `;`; provisions one user per row
    #[arg(long, value_name = "PATH")]
    pub file: Option<PathBuf>,

    /// With --file, the maximum number of sagas running at once
    #[arg(
        long,
        default_value_t = 8,
        conflicts_with = "username",
        value_name = "N",
        value_parser = clap::value_parser!(u16).range(1..)
    )]
    pub concurrency: u16,

    /// Makes STEP's action fail with a permanent error, so the saga is
    /// compensated; STEP is provision_user, assign_permissions or
    /// create_quota
    #[arg(long, value_name = "STEP", value_parser = parse_step)]
    pub fail_at: Option<ProvisioningStepKind>,

    /// Makes STEP's action fail N times with a transient error before it
    /// runs; repeat for several steps. N of 5 or more exhausts the retries
    #[arg(long, value_name = "STEP:N", value_parser = parse_flaky)]
    pub flaky: Vec<FlakyStep>,

    /// Sends the requests to a worker started elsewhere with `demo worker`,
    /// instead of running one in this process; needs RabbitMQ
    #[arg(long)]
    pub no_local_worker: bool,
}

/// A `--flaky STEP:N` value: the step and how many attempts fail.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlakyStep {
    /// The step whose action fails.
    pub step: ProvisioningStepKind,
    /// How many attempts fail transiently before it runs.
    pub failures: u32,
}

/// The settings that the options resolve to.
#[derive(Clone)]
pub struct Settings {
    /// The broker URL, password included; print it only with
    /// [`redact_url`].
    pub amqp_url: String,
    /// The directory of the worker's databases.
    pub data_dir: PathBuf,
    /// The transport of step requests.
    pub broker: Broker,
    /// The worker's command queue.
    pub queue: String,
    /// The wait between two attempts of a step.
    pub retry_delay: Duration,
}

// Written by hand so that the broker's password never reaches a log line.
impl fmt::Debug for GlobalOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GlobalOptions")
            .field("amqp_url", &redact_url(&self.amqp_url))
            .field("data_dir", &self.data_dir)
            .field("broker", &self.broker)
            .field("queue", &self.queue)
            .field("retry_delay_ms", &self.retry_delay_ms)
            .finish()
    }
}

impl fmt::Debug for Settings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Settings")
            .field("amqp_url", &redact_url(&self.amqp_url))
            .field("data_dir", &self.data_dir)
            .field("broker", &self.broker)
            .field("queue", &self.queue)
            .field("retry_delay", &self.retry_delay)
            .finish()
    }
}

impl GlobalOptions {
    /// Resolves the options into [`Settings`].
    pub fn settings(&self) -> Settings {
        Settings {
            amqp_url: self.amqp_url.clone(),
            data_dir: self.data_dir.clone(),
            broker: self.broker,
            queue: self.queue.clone(),
            retry_delay: Duration::from_millis(self.retry_delay_ms),
        }
    }
}

impl Cli {
    /// Returns the log filter to use when `RUST_LOG` is unset.
    ///
    /// The tour and `provision` print every saga event on standard output,
    /// so their default log shows errors only. The worker prints nothing
    /// else, so it logs its starts, stops and rejected requests.
    pub fn default_log_filter(&self) -> &'static str {
        match self.command {
            // lapin logs each closed connection as an error of its own; the
            // demo reports the same failure with the fix, so lapin is quieter.
            Some(Command::Worker) => "info,lapin=off",
            _ => "error,lapin=off",
        }
    }
}

/// Runs the command that `cli` names, and returns the exit status.
///
/// # Errors
///
/// Any error that stops the command before its sagas finish, such as an
/// unreachable broker, a data directory that cannot be opened, or an
/// unreadable CSV file.
pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let settings = cli.options.settings();

    match cli.command {
        None => {
            tour::run(&settings, &stdout_output()).await?;
            Ok(ExitCode::SUCCESS)
        }
        Some(Command::Worker) => {
            serve::run(&settings).await?;
            Ok(ExitCode::SUCCESS)
        }
        Some(Command::Provision(args)) => provision::run(&settings, args).await,
        Some(Command::Recover { no_local_worker }) => {
            let local_worker = if no_local_worker {
                LocalWorker::None
            } else {
                LocalWorker::Start
            };
            history::recover(&settings, local_worker, &stdout_output()).await
        }
        Some(Command::Sagas) => {
            history::list(&settings, &stdout_output()).await?;
            Ok(ExitCode::SUCCESS)
        }
        Some(Command::Show { id }) => {
            history::show(&settings, id, &stdout_output()).await?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn parse_step(name: &str) -> Result<ProvisioningStepKind, String> {
    name.parse::<ProvisioningStepKind>()
        .map_err(|error| error.to_string())
}

fn parse_flaky(value: &str) -> Result<FlakyStep, String> {
    let Some((step, count)) = value.split_once(':') else {
        let example = ProvisioningStepKind::AssignPermissions.name();
        return Err(format!(
            "expected STEP:N, such as {example}:2, where STEP is one of {}",
            step_names()
        ));
    };

    let step = parse_step(step)?;
    let failures = match count.parse::<u32>() {
        Ok(failures) if failures >= 1 => failures,
        _ => {
            return Err(format!(
                "invalid count {count:?} in {value:?}: expected a whole number of failing \
                 attempts, 1 or more"
            ));
        }
    };

    Ok(FlakyStep { step, failures })
}

fn step_names() -> String {
    let names: Vec<&str> = ProvisioningStepKind::ALL
        .iter()
        .map(|step| step.name())
        .collect();
    names.join(", ")
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn flaky_parses_step_and_count() {
        let flaky = parse_flaky("assign_permissions:2");

        assert_eq!(
            flaky,
            Ok(FlakyStep {
                step: ProvisioningStepKind::AssignPermissions,
                failures: 2
            })
        );
    }

    #[test]
    fn flaky_rejects_unknown_step_with_known_names() {
        let error = parse_flaky("delete_user:2").unwrap_err();

        assert_eq!(
            error,
            "unknown step \"delete_user\" in saga UserProvisioning; expected one of: \
             provision_user, assign_permissions, create_quota"
        );
    }

    #[test]
    fn flaky_rejects_missing_count() {
        let error = parse_flaky("create_quota").unwrap_err();

        assert_eq!(
            error,
            "expected STEP:N, such as assign_permissions:2, where STEP is one of \
             provision_user, assign_permissions, create_quota"
        );
    }

    #[test]
    fn flaky_rejects_zero_count() {
        let error = parse_flaky("create_quota:0").unwrap_err();

        assert_eq!(
            error,
            "invalid count \"0\" in \"create_quota:0\": expected a whole number of failing \
             attempts, 1 or more"
        );
    }

    #[test]
    fn help_hides_the_default_password() {
        let help = Cli::command().render_long_help().to_string();

        assert!(!help.contains("guest:guest"), "{help}");
    }

    #[test]
    fn settings_debug_hides_the_password() {
        let cli =
            Cli::try_parse_from(["demo", "--amqp-url", "amqp://ana:s3cret@127.0.0.1/%2f"]).unwrap();

        let printed = format!("{cli:?} {:?}", cli.options.settings());

        assert!(!printed.contains("s3cret"), "{printed}");
    }

    #[test]
    fn provision_without_user_fields_or_file_is_rejected() {
        let parsed = Cli::try_parse_from(["demo", "provision", "--username", "ana"]);

        assert!(parsed.is_err());
    }

    #[test]
    fn concurrency_without_file_is_rejected() {
        let parsed = Cli::try_parse_from([
            "demo",
            "provision",
            "--username",
            "ana",
            "--email",
            "ana@example.com",
            "--role",
            "reader",
            "--storage-mb",
            "1",
            "--ops-per-day",
            "1",
            "--concurrency",
            "4",
        ]);

        assert!(parsed.is_err());
    }

    #[test]
    fn file_alone_is_enough_for_provision() {
        let parsed = Cli::try_parse_from(["demo", "provision", "--file", "users.csv"]);

        assert!(parsed.is_ok(), "{parsed:?}");
    }

    #[test]
    fn provision_file_conflicts_with_user_fields() {
        let parsed =
            Cli::try_parse_from(["demo", "provision", "--file", "u.csv", "--username", "ana"]);

        assert!(parsed.is_err());
    }
}
