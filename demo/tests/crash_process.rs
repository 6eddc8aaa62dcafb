//! Crash tests of whole processes against the real broker: the orchestrator
//! (`demo provision --file`) and the worker (`demo worker`) are killed with
//! SIGKILL at random moments and restarted. Afterwards every saga must have
//! ended SUCCEEDED or COMPENSATED, every username must have all three rows
//! or none, and no database may hold a duplicate row.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use common::{TestQueue, broker_url, require_broker};
use demo::history::render_history;
use demo::store::Store;
use typed_saga::{SagaLog, SagaStatus, SagaSummary, SqliteSagaLog};
use uuid::Uuid;

const USERS: usize = 200;
const KILLS: usize = 5;

/// One CSV row and whether the domain rules accept it.
struct User {
    username: String,
    valid: bool,
}

/// Writes 200 users; every 7th requests a quota over the plan maximum and
/// every 11th for an unknown role, so their sagas are compensated.
fn write_users(dir: &Path) -> (PathBuf, Vec<User>) {
    let mut csv = String::from("username,email,roles,storage_mb,ops_per_day\n");
    let mut users = Vec::new();
    for index in 0..USERS {
        let username = format!("user{index:03}");
        let storage_mb = if index % 7 == 3 { 999_999_999 } else { 500 };
        let roles = if index % 11 == 5 {
            "reader;superuser"
        } else {
            "reader;writer"
        };
        csv.push_str(&format!(
            "{username},{username}@example.com,{roles},{storage_mb},1000\n"
        ));
        users.push(User {
            username,
            valid: index % 7 != 3 && index % 11 != 5,
        });
    }
    let path = dir.join("users.csv");
    std::fs::write(&path, csv).unwrap();
    (path, users)
}

/// Returns a random duration in `[low_ms, high_ms)`.
fn random_delay(low_ms: u64, high_ms: u64) -> Duration {
    let random = (Uuid::new_v4().as_u128() % u128::from(high_ms - low_ms)) as u64;
    Duration::from_millis(low_ms + random)
}

fn demo(data_dir: &Path, queue: &str) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_demo"));
    command
        .args([
            "--broker",
            "amqp",
            "--amqp-url",
            &broker_url(),
            "--queue",
            queue,
        ])
        .arg("--data-dir")
        .arg(data_dir)
        .args(["--retry-delay-ms", "200"])
        .stdin(Stdio::null());
    command
}

/// Provisions every row, each with two transient failures of
/// assign_permissions so that a run lasts long enough to be killed in the
/// middle.
fn provision_batch(data_dir: &Path, queue: &str, file: &Path, local_worker: bool) -> Command {
    let mut command = demo(data_dir, queue);
    command
        .arg("provision")
        .arg("--file")
        .arg(file)
        .args(["--concurrency", "16", "--flaky", "assign_permissions:2"])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    if !local_worker {
        command.arg("--no-local-worker");
    }
    command
}

/// Waits for `child` to exit, killing it after `limit`.
fn wait_with_limit(child: &mut Child, limit: Duration) -> std::process::ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if start.elapsed() > limit {
            child.kill().unwrap();
            panic!("the process did not finish within {limit:?}");
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// Starts `demo worker` and waits until it consumes its queue.
fn start_worker(data_dir: &Path, queue: &str) -> Child {
    let mut child = demo(data_dir, queue)
        .arg("worker")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let ready = lines
        .next()
        .expect("the worker exited before it was ready")
        .unwrap();
    assert!(ready.contains("worker consuming queue"), "{ready}");
    // Keep reading so the worker never blocks on a full pipe.
    thread::spawn(move || for _ in lines {});
    child
}

/// Checks the end state: every saga final, each user all or nothing, and
/// no duplicate rows.
fn check_consistency(data_dir: &Path, users: &[User]) {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let log = SqliteSagaLog::open(data_dir.join("saga.db")).unwrap();
        let sagas = log.sagas().await.unwrap();
        for saga in &sagas {
            assert!(
                matches!(saga.status, SagaStatus::Succeeded | SagaStatus::Compensated),
                "saga {} of {} ended {}",
                saga.saga_id,
                saga.input["username"],
                saga.status
            );
        }

        let store = Store::open(data_dir).await.unwrap();
        for user in users {
            let presence = store.username_presence(&user.username).await.unwrap();
            let histories = histories_of(&log, &sagas, &user.username).await;
            if user.valid {
                assert!(
                    presence.is_complete(),
                    "{} is incomplete: {presence:?}\n{histories}",
                    user.username
                );
                let succeeded = sagas
                    .iter()
                    .filter(|saga| saga.input["username"] == user.username.as_str())
                    .filter(|saga| saga.status == SagaStatus::Succeeded)
                    .count();
                assert_eq!(
                    succeeded, 1,
                    "{} has {succeeded} succeeded sagas\n{histories}",
                    user.username
                );
            } else {
                assert!(
                    presence.is_absent(),
                    "{} has rows: {presence:?}\n{histories}",
                    user.username
                );
            }
        }
    });

    for (database, table, key) in [
        ("users.db", "users", "username"),
        ("permissions.db", "permissions", "username || ':' || role"),
        ("quotas.db", "quotas", "username"),
    ] {
        let connection = rusqlite::Connection::open(data_dir.join(database)).unwrap();
        let (rows, distinct): (i64, i64) = connection
            .query_row(
                &format!("SELECT COUNT(*), COUNT(DISTINCT {key}) FROM {table}"),
                [],
                |row| Ok((row.get(0)?, row.get(1)?)),
            )
            .unwrap();
        assert_eq!(rows, distinct, "{database} holds duplicate rows");
    }
}

/// Renders the histories of the sagas that did not end SUCCEEDED or
/// COMPENSATED, for failure messages.
fn failed_histories(data_dir: &Path) -> String {
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let log = SqliteSagaLog::open(data_dir.join("saga.db")).unwrap();
        let mut text = String::new();
        for saga in log.sagas().await.unwrap() {
            if saga.status.is_final() {
                continue;
            }
            for line in render_history(&log.history(saga.saga_id).await.unwrap()) {
                text.push_str(&line);
                text.push('\n');
            }
        }
        text
    })
}

/// Renders the histories of `username`'s sagas, for failure messages.
async fn histories_of(log: &SqliteSagaLog, sagas: &[SagaSummary], username: &str) -> String {
    let mut text = String::new();
    for saga in sagas
        .iter()
        .filter(|saga| saga.input["username"] == username)
    {
        let history = log.history(saga.saga_id).await.unwrap();
        for line in render_history(&history) {
            text.push_str(&line);
            text.push('\n');
        }
    }
    text
}

#[test]
fn killed_orchestrator_leaves_consistent_databases() {
    tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(require_broker());
    let queue = TestQueue::new("killed_orchestrator");
    let dir = tempfile::tempdir().unwrap();
    let (file, users) = write_users(dir.path());
    let data_dir = dir.path().join("data");

    let mut kills = 0;
    for _ in 0..3 * KILLS {
        if kills == KILLS {
            break;
        }
        let mut child = provision_batch(&data_dir, queue.name(), &file, true)
            .spawn()
            .unwrap();
        thread::sleep(random_delay(300, 1_200));
        if child.try_wait().unwrap().is_none() {
            child.kill().unwrap();
            child.wait().unwrap();
            kills += 1;
        }
    }
    assert_eq!(
        kills, KILLS,
        "the batch finished before it was killed {KILLS} times"
    );

    let mut last_run = provision_batch(&data_dir, queue.name(), &file, true)
        .spawn()
        .unwrap();
    let status = wait_with_limit(&mut last_run, Duration::from_secs(300));

    assert!(
        status.success(),
        "the last run exited with {status}\n{}",
        failed_histories(&data_dir)
    );
    check_consistency(&data_dir, &users);
}

#[test]
fn killed_worker_leaves_consistent_databases() {
    tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(require_broker());
    let queue = TestQueue::new("killed_worker");
    let dir = tempfile::tempdir().unwrap();
    let (file, users) = write_users(dir.path());
    let data_dir = dir.path().join("data");

    let mut worker = start_worker(&data_dir, queue.name());
    let mut orchestrator = provision_batch(&data_dir, queue.name(), &file, false)
        .spawn()
        .unwrap();
    let mut kills = 0;
    while kills < KILLS {
        thread::sleep(random_delay(150, 700));
        if orchestrator.try_wait().unwrap().is_some() {
            break;
        }
        worker.kill().unwrap();
        worker.wait().unwrap();
        kills += 1;
        worker = start_worker(&data_dir, queue.name());
    }
    let status = wait_with_limit(&mut orchestrator, Duration::from_secs(300));
    worker.kill().unwrap();
    worker.wait().unwrap();

    assert_eq!(
        kills, KILLS,
        "the batch finished before the worker was killed {KILLS} times"
    );
    assert!(
        status.success(),
        "the batch exited with {status}\n{}",
        failed_histories(&data_dir)
    );
    check_consistency(&data_dir, &users);
}

#[test]
fn local_worker_refuses_a_queue_another_worker_serves() {
    tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(require_broker());
    let queue = TestQueue::new("shared_queue");
    let dir = tempfile::tempdir().unwrap();
    let mut worker = start_worker(&dir.path().join("worker"), queue.name());

    let provision = demo(&dir.path().join("local"), queue.name())
        .args([
            "provision",
            "--username",
            "ana.garcia",
            "--email",
            "ana@example.com",
        ])
        .args([
            "--role",
            "reader",
            "--storage-mb",
            "1",
            "--ops-per-day",
            "1",
        ])
        .output()
        .unwrap();
    worker.kill().unwrap();
    worker.wait().unwrap();

    let stderr = String::from_utf8_lossy(&provision.stderr);
    assert!(!provision.status.success());
    assert!(stderr.contains("already has 1 consumer"), "{stderr}");
    assert!(stderr.contains("--no-local-worker"), "{stderr}");
}
