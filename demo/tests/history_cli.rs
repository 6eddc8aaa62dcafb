//! `demo sagas`, `demo show` and `demo recover` on the data directory that
//! the tour leaves. The tour runs in-process, so these tests need no broker.

use std::path::Path;
use std::process::{Command, Output};

fn demo(data_dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_demo"))
        .args(["--broker", "in-process", "--retry-delay-ms", "10"])
        .arg("--data-dir")
        .arg(data_dir)
        .args(args)
        .output()
        .unwrap()
}

fn stdout(output: &Output) -> String {
    String::from_utf8(output.stdout.clone()).unwrap()
}

/// Runs the tour in a new directory and returns it with the lines of
/// `demo sagas` after it.
fn tour_then_list() -> (tempfile::TempDir, Vec<String>) {
    let dir = tempfile::tempdir().unwrap();
    let tour = demo(dir.path(), &[]);
    assert!(
        tour.status.success(),
        "{}",
        String::from_utf8_lossy(&tour.stderr)
    );

    let list = demo(dir.path(), &["sagas"]);
    assert!(
        list.status.success(),
        "{}",
        String::from_utf8_lossy(&list.stderr)
    );
    let lines = stdout(&list).lines().map(str::to_owned).collect();
    (dir, lines)
}

#[test]
fn sagas_lists_the_tour_sagas_with_their_states() {
    let (_dir, lines) = tour_then_list();

    assert_eq!(lines.len(), 4, "{lines:#?}");
    assert!(lines[0].starts_with("SAGA ID"), "{}", lines[0]);
    assert!(
        lines[1].contains("ana.garcia") && lines[1].contains("SUCCEEDED"),
        "{}",
        lines[1]
    );
    assert!(
        lines[2].contains("ben.okafor") && lines[2].contains("SUCCEEDED"),
        "{}",
        lines[2]
    );
    assert!(
        lines[3].contains("chloe.martin") && lines[3].contains("COMPENSATED"),
        "{}",
        lines[3]
    );
}

#[test]
fn show_prints_attempts_errors_and_transitions() {
    let (dir, lines) = tour_then_list();
    let chloe_id = lines[3].split_whitespace().next().unwrap();

    let show = demo(dir.path(), &["show", chloe_id]);

    assert!(
        show.status.success(),
        "{}",
        String::from_utf8_lossy(&show.stderr)
    );
    let text = stdout(&show);
    assert!(text.contains("user chloe.martin"), "{text}");
    assert!(text.contains("state: COMPENSATED"), "{text}");
    assert!(
        text.contains("provision_user execute attempt 1: succeeded in"),
        "{text}"
    );
    assert!(
        text.contains("create_quota execute attempt 1: failed in"),
        "{text}"
    );
    assert!(text.contains("invalid storage_mb 999999999"), "{text}");
    assert!(
        text.contains("provision_user compensate attempt 1: succeeded in"),
        "{text}"
    );
    assert!(text.contains("COMPENSATING -> COMPENSATED"), "{text}");
}

#[test]
fn show_of_an_unknown_id_names_the_fix() {
    let (dir, _) = tour_then_list();

    let show = demo(
        dir.path(),
        &["show", "00000000-0000-4000-8000-000000000009"],
    );

    let stderr = String::from_utf8_lossy(&show.stderr);
    assert!(!show.status.success());
    assert!(stderr.contains("not found"), "{stderr}");
    assert!(stderr.contains("demo sagas"), "{stderr}");
}

#[test]
fn show_invalid_id_is_usage_error() {
    let dir = tempfile::tempdir().unwrap();

    let show = demo(dir.path(), &["show", "95289f9e"]);

    let stderr = String::from_utf8_lossy(&show.stderr);
    assert_eq!(show.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("invalid saga id \"95289f9e\""), "{stderr}");
}

#[test]
fn sagas_without_log_creates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("typo");

    let list = demo(&data_dir, &["sagas"]);

    let stderr = String::from_utf8_lossy(&list.stderr);
    assert!(!list.status.success());
    assert!(stderr.contains("no saga log at"), "{stderr}");
    assert!(!data_dir.exists());
}

#[test]
fn recover_after_the_tour_finds_nothing_to_do() {
    let (dir, _) = tour_then_list();

    let recover = demo(dir.path(), &["recover"]);

    assert!(
        recover.status.success(),
        "{}",
        String::from_utf8_lossy(&recover.stderr)
    );
    assert!(
        stdout(&recover).contains("Recovered 0 sagas"),
        "{}",
        stdout(&recover)
    );
}

#[test]
fn second_command_on_a_locked_data_dir_stops() {
    let dir = tempfile::tempdir().unwrap();
    let lock = std::fs::File::create(dir.path().join("saga.db.lock")).unwrap();
    lock.try_lock().unwrap();

    let tour = demo(dir.path(), &[]);

    let stderr = String::from_utf8_lossy(&tour.stderr);
    assert!(!tour.status.success());
    assert!(
        stderr.contains("another demo command is running sagas"),
        "{stderr}"
    );
    assert!(!dir.path().join("users.db").exists());
}
