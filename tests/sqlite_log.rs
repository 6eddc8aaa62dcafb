//! The durable SQLite saga log: storage, schema versions, damaged files and
//! recovery through it.

#![cfg(feature = "sqlite")]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{ActionScript, SimSaga, World, context, script};
use typed_saga::{
    LoadedSaga, Recovery, RetryPolicy, Saga, SagaEvent, SagaEventKind, SagaId, SagaLog,
    SagaOutcome, SagaStatus, SqliteSagaLog, StepAction, StepError,
};

fn event(saga_id: SagaId, sequence: u64, kind: SagaEventKind) -> SagaEvent {
    SagaEvent {
        saga_id,
        sequence,
        recorded_at_ms: 1_700_000_000_000 + sequence,
        kind,
    }
}

fn created(saga_id: SagaId) -> SagaEvent {
    event(
        saga_id,
        0,
        SagaEventKind::Created {
            saga: "SimSaga".to_owned(),
            input: serde_json::to_value(script(&[ActionScript::Succeeds])).unwrap(),
            steps: vec!["step_1".to_owned()],
        },
    )
}

fn transition(saga_id: SagaId, sequence: u64, from: SagaStatus, to: SagaStatus) -> SagaEvent {
    event(
        saga_id,
        sequence,
        SagaEventKind::Transition {
            from,
            to,
            remaining: Vec::new(),
        },
    )
}

#[tokio::test]
async fn events_survive_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("saga.db");
    let id = SagaId::random();
    let events = vec![
        created(id),
        transition(id, 1, SagaStatus::Pending, SagaStatus::Running),
        event(
            id,
            2,
            SagaEventKind::AttemptFailed {
                step: "step_1".to_owned(),
                action: StepAction::Execute,
                attempt: 1,
                error: StepError::transient("busy"),
                will_retry: true,
            },
        ),
    ];

    let log = SqliteSagaLog::open(&path).unwrap();
    for event in &events {
        log.append(event).await.unwrap();
    }
    drop(log);

    let reopened = SqliteSagaLog::open(&path).unwrap();
    assert_eq!(reopened.history(id).await.unwrap(), events);
}

#[tokio::test]
async fn unfinished_lists_only_sagas_without_a_final_state() {
    let dir = tempfile::tempdir().unwrap();
    let log = SqliteSagaLog::open(dir.path().join("saga.db")).unwrap();
    let (running, done) = (SagaId::random(), SagaId::random());
    for id in [running, done] {
        log.append(&created(id)).await.unwrap();
        log.append(&transition(id, 1, SagaStatus::Pending, SagaStatus::Running))
            .await
            .unwrap();
    }
    log.append(&transition(
        done,
        2,
        SagaStatus::Running,
        SagaStatus::Succeeded,
    ))
    .await
    .unwrap();

    assert_eq!(log.unfinished().await.unwrap(), [running]);
}

#[tokio::test]
async fn repeated_sequence_number_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let log = SqliteSagaLog::open(dir.path().join("saga.db")).unwrap();
    let id = SagaId::random();
    log.append(&created(id)).await.unwrap();

    let error = log.append(&created(id)).await.unwrap_err();

    assert!(error.to_string().contains("event 0 of saga"), "{error}");
    assert_eq!(log.history(id).await.unwrap().len(), 1);
}

#[tokio::test]
async fn concurrent_appends_are_all_stored() {
    let dir = tempfile::tempdir().unwrap();
    let log = Arc::new(SqliteSagaLog::open(dir.path().join("saga.db")).unwrap());
    let ids: Vec<SagaId> = (0..64).map(|_| SagaId::random()).collect();

    let tasks: Vec<_> = ids
        .iter()
        .map(|&id| {
            let log = log.clone();
            tokio::spawn(async move {
                log.append(&created(id)).await.unwrap();
                log.append(&transition(id, 1, SagaStatus::Pending, SagaStatus::Running))
                    .await
                    .unwrap();
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }

    assert_eq!(log.sagas().await.unwrap().len(), 64);
    for id in ids {
        assert_eq!(log.history(id).await.unwrap().len(), 2);
    }
}

#[tokio::test]
async fn saga_resumes_from_the_sqlite_log() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("saga.db");
    let world = World::new();
    let crashed = common::CrashingLog::new(4);
    let _ = Saga::<SimSaga, _>::new(
        script(&[ActionScript::Succeeds, ActionScript::Succeeds]),
        context(&world),
    )
    .with_log(crashed.clone())
    .run_to_end()
    .await;
    let log = Arc::new(SqliteSagaLog::open(&path).unwrap());
    for event in crashed.inner.events() {
        log.append(&event).await.unwrap();
    }
    drop(log);

    let log = Arc::new(SqliteSagaLog::open(&path).unwrap());
    let recovery = Recovery::<SimSaga>::new(log.clone(), context(&world))
        .with_retry_policy(RetryPolicy::fixed(2, Duration::from_millis(1)));
    let recovered = recovery.recover_all().await.unwrap();

    assert_eq!(recovered.len(), 1);
    assert_eq!(recovered[0].found, Some(SagaStatus::Running));
    let outcome = recovered.into_iter().next().unwrap().outcome.unwrap();
    assert!(matches!(outcome, SagaOutcome::Succeeded(_)));
    assert_eq!(world.lock().present.len(), 2);
    assert!(log.unfinished().await.unwrap().is_empty());
    let loaded = recovery.load(outcome.id()).await.unwrap();
    assert!(matches!(loaded, LoadedSaga::Succeeded(_)));
}

/// Writes a file in the layout of schema version 1: the events table alone.
fn write_version_1(path: &std::path::Path, events: &[SagaEvent]) {
    let connection = rusqlite::Connection::open(path).unwrap();
    connection
        .execute_batch(
            "CREATE TABLE events (
                 saga_id TEXT NOT NULL,
                 sequence INTEGER NOT NULL,
                 recorded_at_ms INTEGER NOT NULL,
                 event TEXT NOT NULL,
                 PRIMARY KEY (saga_id, sequence)
             ) WITHOUT ROWID;
             PRAGMA user_version = 1;",
        )
        .unwrap();
    for event in events {
        connection
            .execute(
                "INSERT INTO events VALUES (?1, ?2, ?3, ?4)",
                rusqlite::params![
                    event.saga_id.to_string(),
                    event.sequence as i64,
                    event.recorded_at_ms as i64,
                    serde_json::to_string(event).unwrap()
                ],
            )
            .unwrap();
    }
}

#[tokio::test]
async fn version_1_file_is_migrated_without_loss() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("saga.db");
    let id = SagaId::random();
    let events = vec![
        created(id),
        transition(id, 1, SagaStatus::Pending, SagaStatus::Running),
    ];
    write_version_1(&path, &events);

    let log = SqliteSagaLog::open(&path).unwrap();

    assert_eq!(typed_saga::schema_version(&path).unwrap(), Some(2));
    assert_eq!(log.history(id).await.unwrap(), events);
    let sagas = log.sagas().await.unwrap();
    assert_eq!(sagas.len(), 1);
    assert_eq!(sagas[0].status, SagaStatus::Running);
    assert_eq!(log.unfinished().await.unwrap(), [id]);
}

#[test]
fn newer_schema_version_is_refused_and_left_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("saga.db");
    let connection = rusqlite::Connection::open(&path).unwrap();
    connection
        .execute_batch("CREATE TABLE future (x); PRAGMA user_version = 7;")
        .unwrap();
    drop(connection);
    let before = std::fs::read(&path).unwrap();

    let error = SqliteSagaLog::open(&path).unwrap_err().to_string();

    assert!(error.contains("schema version 7"), "{error}");
    assert!(error.contains("newer typed-saga"), "{error}");
    assert_eq!(std::fs::read(&path).unwrap(), before);
}

#[test]
fn non_sqlite_file_is_left_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("saga.db");
    let garbage: Vec<u8> = (0..8192u32).map(|i| (i * 7 + 3) as u8).collect();
    std::fs::write(&path, &garbage).unwrap();

    let error = SqliteSagaLog::open(&path).unwrap_err().to_string();

    assert!(error.contains("not a readable SQLite database"), "{error}");
    assert_eq!(std::fs::read(&path).unwrap(), garbage);
}

#[tokio::test]
async fn truncated_file_is_refused_and_left_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("saga.db");
    let log = SqliteSagaLog::open(&path).unwrap();
    for _ in 0..300 {
        let id = SagaId::random();
        log.append(&created(id)).await.unwrap();
        log.append(&transition(id, 1, SagaStatus::Pending, SagaStatus::Running))
            .await
            .unwrap();
    }
    drop(log);
    // Fold the WAL into the main file, so that truncating it cuts events.
    let connection = rusqlite::Connection::open(&path).unwrap();
    connection
        .execute_batch("PRAGMA wal_checkpoint(TRUNCATE); PRAGMA journal_mode = DELETE;")
        .unwrap();
    drop(connection);
    let full = std::fs::read(&path).unwrap();
    let truncated = &full[..full.len() / 2];
    std::fs::write(&path, truncated).unwrap();

    let error = SqliteSagaLog::open(&path).unwrap_err().to_string();

    assert!(
        error.contains("damaged") || error.contains("not a readable"),
        "{error}"
    );
    assert!(error.contains(".recover"), "{error}");
    assert_eq!(std::fs::read(&path).unwrap(), truncated);
}

#[test]
fn other_sqlite_database_is_refused_and_left_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("users.db");
    let connection = rusqlite::Connection::open(&path).unwrap();
    connection
        .execute_batch("CREATE TABLE users (username TEXT); INSERT INTO users VALUES ('ana');")
        .unwrap();
    drop(connection);
    let before = std::fs::read(&path).unwrap();

    let error = SqliteSagaLog::open(&path).unwrap_err().to_string();

    assert!(error.contains("not a saga log"), "{error}");
    assert!(error.contains("\"users\""), "{error}");
    assert_eq!(std::fs::read(&path).unwrap(), before);
}
