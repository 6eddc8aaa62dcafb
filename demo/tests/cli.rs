//! The `demo` binary as a person runs it: the tour, `provision` with its
//! exit statuses, a CSV batch, the worker, and the broker choices.
//!
//! Tests that need RabbitMQ pass `--broker amqp` and a queue of their own.
//! The others point `AMQP_URL` at a port where nothing listens, with a
//! password that must never be printed.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, ChildStdout, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use common::{TestQueue, require_broker};
use demo::store::Store;
use typed_saga::amqp::redact_url;

/// A broker URL where nothing listens (port 1 on the loopback address).
const ABSENT_BROKER_URL: &str = "amqp://guest:s3cret@127.0.0.1:1/%2f";

/// Builds a `demo` command with a short retry delay and `data_dir`.
fn demo(data_dir: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_demo"));
    command
        .arg("--data-dir")
        .arg(data_dir)
        .args(["--retry-delay-ms", "10"])
        .env("AMQP_URL", common::broker_url())
        .env_remove("RUST_LOG");
    command
}

/// Builds a `demo` command whose broker URL leads nowhere.
fn demo_without_broker(data_dir: &Path) -> Command {
    let mut command = demo(data_dir);
    command.env("AMQP_URL", ABSENT_BROKER_URL);
    command
}

/// Runs a command to its end, failing the test when it cannot start.
fn run(command: &mut Command) -> Output {
    command.output().expect("running the demo binary")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Returns the arguments that provision Ana with `storage_mb`.
fn ana_args(storage_mb: &str) -> Vec<String> {
    [
        "provision",
        "--username",
        "ana.garcia",
        "--email",
        "ana@example.com",
        "--role",
        "reader",
        "--storage-mb",
        storage_mb,
        "--ops-per-day",
        "1000",
    ]
    .map(str::to_owned)
    .to_vec()
}

#[tokio::test]
async fn tour_output_matches_snapshot() {
    require_broker().await;
    let queue = TestQueue::new("tour");
    let dir = tempfile::tempdir().unwrap();

    let output = run(demo(dir.path()).args(["--broker", "amqp", "--queue", queue.name()]));

    assert!(output.status.success(), "stderr: {}", stderr(&output));
    let printed = stdout(&output)
        .replace(dir.path().to_str().unwrap(), "[data-dir]")
        .replace(queue.name(), "[queue]")
        .replace(&redact_url(&common::broker_url()), "[broker]");
    insta::with_settings!({
        filters => vec![
            (r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", "[saga-id]"),
            (r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z", "[time]"),
            (r"\+\d+ms\]", "+[elapsed]]"),
            (r"in \d+ms\)", "in [duration])"),
        ],
    }, {
        insta::assert_snapshot!("tour", printed);
    });
}

#[tokio::test]
async fn second_tour_uses_fresh_usernames() {
    let dir = tempfile::tempdir().unwrap();
    let first = run(demo_without_broker(dir.path()).args(["--broker", "in-process"]));
    assert!(first.status.success(), "stderr: {}", stderr(&first));

    let second = run(demo_without_broker(dir.path()).args(["--broker", "in-process"]));

    assert!(second.status.success(), "stderr: {}", stderr(&second));
    let printed = stdout(&second);
    assert!(printed.contains("usernames end in -2"), "{printed}");
    assert!(
        printed.contains("=> SUCCEEDED: user ana.garcia-2"),
        "{printed}"
    );
    let users = Store::open(dir.path())
        .await
        .unwrap()
        .list_users()
        .await
        .unwrap();
    assert_eq!(users.len(), 4);
}

#[tokio::test]
async fn provision_over_amqp_writes_her_rows() {
    require_broker().await;
    let queue = TestQueue::new("provision");
    let dir = tempfile::tempdir().unwrap();

    let output = run(demo(dir.path()).args(ana_args("500")).args([
        "--broker",
        "amqp",
        "--queue",
        queue.name(),
    ]));

    assert!(output.status.success(), "stderr: {}", stderr(&output));
    assert!(stdout(&output).contains("SUCCEEDED: user ana.garcia"));
    let store = Store::open(dir.path()).await.unwrap();
    let users = store.list_users().await.unwrap();
    assert_eq!(users.len(), 1);
    assert_eq!(users[0].username, "ana.garcia");
    assert_eq!(users[0].email, "ana@example.com");
    let permissions = store.list_permissions().await.unwrap();
    assert_eq!(permissions.len(), 1);
    assert_eq!(permissions[0].role, "reader");
    let quotas = store.list_quotas().await.unwrap();
    assert_eq!(quotas.len(), 1);
    assert_eq!(quotas[0].storage_mb, 500);
    assert_eq!(quotas[0].ops_per_day, 1000);
}

#[tokio::test]
async fn provision_over_plan_maximum_leaves_nothing_of_her() {
    require_broker().await;
    let queue = TestQueue::new("over-maximum");
    let dir = tempfile::tempdir().unwrap();

    let output = run(demo(dir.path()).args(ana_args("999999999")).args([
        "--broker",
        "amqp",
        "--queue",
        queue.name(),
    ]));

    assert_eq!(output.status.code(), Some(3), "stderr: {}", stderr(&output));
    let printed = stdout(&output);
    assert!(
        printed.contains(
            "COMPENSATED: create_quota failed: permanent error: invalid storage_mb 999999999"
        ),
        "{printed}"
    );
    let presence = Store::open(dir.path())
        .await
        .unwrap()
        .username_presence("ana.garcia")
        .await
        .unwrap();
    assert!(presence.is_absent(), "{presence:?}");
}

#[tokio::test]
async fn provision_in_process_runs_without_a_broker() {
    let dir = tempfile::tempdir().unwrap();

    let output = run(demo_without_broker(dir.path())
        .args(ana_args("500"))
        .args(["--broker", "in-process"]));

    assert!(output.status.success(), "stderr: {}", stderr(&output));
    assert!(
        stdout(&output).contains("in-process"),
        "{}",
        stdout(&output)
    );
    assert_eq!(stderr(&output), "");
    let presence = Store::open(dir.path())
        .await
        .unwrap()
        .username_presence("ana.garcia")
        .await
        .unwrap();
    assert!(presence.is_complete(), "{presence:?}");
}

#[test]
fn auto_broker_falls_back_in_one_line() {
    let dir = tempfile::tempdir().unwrap();

    let output = run(demo_without_broker(dir.path()).args(ana_args("500")));

    assert!(output.status.success(), "stderr: {}", stderr(&output));
    let notes = stderr(&output);
    let lines: Vec<&str> = notes.lines().collect();
    assert_eq!(lines.len(), 1, "{notes}");
    assert!(lines[0].contains("rabbitmq-server -detached"), "{notes}");
    assert!(
        lines[0].contains("amqp://guest:***@127.0.0.1:1/%2f"),
        "{notes}"
    );
    assert!(!notes.contains("s3cret"), "{notes}");
}

#[test]
fn flaky_step_is_retried_in_process() {
    let dir = tempfile::tempdir().unwrap();

    let output = run(demo_without_broker(dir.path()).args(ana_args("500")).args([
        "--broker",
        "in-process",
        "--flaky",
        "create_quota:3",
    ]));

    assert!(output.status.success(), "stderr: {}", stderr(&output));
    let printed = stdout(&output);
    assert!(
        printed.contains("create_quota execute attempt 4 succeeded"),
        "{printed}"
    );
}

#[test]
fn fail_at_step_exits_with_compensated_status() {
    let dir = tempfile::tempdir().unwrap();

    let output = run(demo_without_broker(dir.path()).args(ana_args("500")).args([
        "--broker",
        "in-process",
        "--fail-at",
        "assign_permissions",
    ]));

    assert_eq!(output.status.code(), Some(3), "stderr: {}", stderr(&output));
    let printed = stdout(&output);
    assert!(
        printed.contains("provision_user compensate attempt 1 succeeded"),
        "{printed}"
    );
}

#[test]
fn unknown_flaky_step_is_a_usage_error() {
    let dir = tempfile::tempdir().unwrap();

    let output = run(demo_without_broker(dir.path())
        .args(ana_args("500"))
        .args(["--flaky", "delete_user:2"]));

    assert_eq!(output.status.code(), Some(2));
    let message = stderr(&output);
    assert!(message.contains("'delete_user:2'"), "{message}");
    assert!(
        message.contains("provision_user, assign_permissions, create_quota"),
        "{message}"
    );
}

#[test]
fn unknown_fail_at_step_is_a_usage_error() {
    let dir = tempfile::tempdir().unwrap();

    let output = run(demo_without_broker(dir.path())
        .args(ana_args("500"))
        .args(["--fail-at", "quota"]));

    assert_eq!(output.status.code(), Some(2));
    let message = stderr(&output);
    assert!(message.contains("'quota'"), "{message}");
    assert!(
        message.contains("provision_user, assign_permissions, create_quota"),
        "{message}"
    );
}

#[test]
fn no_local_worker_without_broker_is_an_error() {
    let dir = tempfile::tempdir().unwrap();

    let output = run(demo_without_broker(dir.path())
        .args(ana_args("500"))
        .arg("--no-local-worker"));

    assert_eq!(output.status.code(), Some(1));
    let message = stderr(&output);
    assert!(
        message.contains("amqp://guest:***@127.0.0.1:1/%2f"),
        "{message}"
    );
    assert!(message.contains("rabbitmq-server -detached"), "{message}");
    assert!(!message.contains("s3cret"), "{message}");
}

#[test]
fn worker_without_broker_names_url_and_fix() {
    let dir = tempfile::tempdir().unwrap();

    let output = run(demo_without_broker(dir.path()).arg("worker"));

    assert_eq!(output.status.code(), Some(1));
    let message = stderr(&output);
    assert!(
        message.contains("amqp://guest:***@127.0.0.1:1/%2f"),
        "{message}"
    );
    assert!(message.contains("rabbitmq-server -detached"), "{message}");
    assert!(!message.contains("s3cret"), "{message}");
}

/// A `demo worker` child process, stopped with SIGINT as Ctrl-C would.
struct WorkerProcess {
    child: Child,
    /// Kept open so that the worker can print its stop message.
    stdout: BufReader<ChildStdout>,
}

impl WorkerProcess {
    /// Starts `demo worker` on `queue` and `data_dir`, and waits until it
    /// prints that it consumes the queue.
    fn start(queue: &str, data_dir: &Path) -> Self {
        let mut child = demo(data_dir)
            .args(["--queue", queue, "worker"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting `demo worker`");
        let mut stdout = BufReader::new(child.stdout.take().unwrap());

        let mut ready = String::new();
        stdout.read_line(&mut ready).unwrap();
        assert!(ready.starts_with("worker consuming queue"), "{ready:?}");
        Self { child, stdout }
    }

    /// Sends SIGINT and returns the exit status, killing the process when
    /// it has not stopped after 10 s.
    fn interrupt(&mut self) -> Option<ExitStatus> {
        let _ = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status();

        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        None
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.interrupt();
        }
    }
}

#[tokio::test]
async fn provision_reaches_a_separate_worker() {
    require_broker().await;
    let queue = TestQueue::new("separate-worker");
    let worker_dir = tempfile::tempdir().unwrap();
    let client_dir = tempfile::tempdir().unwrap();
    let mut worker = WorkerProcess::start(queue.name(), worker_dir.path());

    let output = run(demo(client_dir.path()).args(ana_args("500")).args([
        "--queue",
        queue.name(),
        "--no-local-worker",
    ]));

    assert!(output.status.success(), "stderr: {}", stderr(&output));
    let printed = stdout(&output);
    assert!(
        printed.contains("served by a separate `demo worker`"),
        "{printed}"
    );
    let status = worker.interrupt();
    assert!(
        status.is_some_and(|status| status.success()),
        "the worker did not stop cleanly on SIGINT: {status:?}"
    );
    let mut stop_message = String::new();
    worker.stdout.read_line(&mut stop_message).unwrap();
    assert!(
        stop_message.starts_with("interrupted: stopping"),
        "{stop_message:?}"
    );
    let presence = Store::open(worker_dir.path())
        .await
        .unwrap()
        .username_presence("ana.garcia")
        .await
        .unwrap();
    assert!(presence.is_complete(), "{presence:?}");
}

#[tokio::test]
async fn batch_skips_malformed_rows_and_summarises() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("users.csv");
    std::fs::write(
        &file,
        "username,email,roles,storage_mb,ops_per_day\n\
         ana.garcia,ana@example.com,reader;writer,500,1000\n\
         ben.okafor,ben@example.com,reader,lots,1000\n\
         chloe.martin,chloe@example.com,admin,999999999,1000\n\
         dan.li,dan@example.com,billing,10,10\n",
    )
    .unwrap();

    let output = run(demo_without_broker(dir.path())
        .args([
            "--broker",
            "in-process",
            "provision",
            "--concurrency",
            "2",
            "--file",
        ])
        .arg(&file));

    assert!(output.status.success(), "stderr: {}", stderr(&output));
    let printed = stdout(&output);
    assert!(
        printed.contains("2 succeeded, 1 compensated, 0 failed; 1 malformed row skipped"),
        "{printed}"
    );
    assert!(
        printed.contains("line 4 chloe.martin: COMPENSATED"),
        "{printed}"
    );
    let warnings = stderr(&output);
    assert!(
        warnings.contains("line 3: invalid storage_mb \"lots\": expected a whole number"),
        "{warnings}"
    );
    let store = Store::open(dir.path()).await.unwrap();
    let usernames: Vec<String> = store
        .list_users()
        .await
        .unwrap()
        .into_iter()
        .map(|user| user.username)
        .collect();
    assert_eq!(usernames.len(), 2);
    assert!(
        usernames.contains(&"ana.garcia".to_owned()),
        "{usernames:?}"
    );
    assert!(usernames.contains(&"dan.li".to_owned()), "{usernames:?}");
}

#[test]
fn batch_with_missing_column_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("users.csv");
    std::fs::write(&file, "username,email,storage_mb,ops_per_day\n").unwrap();

    let output = run(demo_without_broker(dir.path())
        .args(["--broker", "in-process", "provision", "--file"])
        .arg(&file));

    assert_eq!(output.status.code(), Some(1));
    let message = stderr(&output);
    assert!(message.contains("missing column roles"), "{message}");
}
