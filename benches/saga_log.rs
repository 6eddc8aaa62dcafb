//! Measures how many events per second `SqliteSagaLog` stores when one saga
//! appends at a time and when 64 sagas append at once.
//!
//! Run with `cargo bench --features sqlite --bench saga_log`. Each saga
//! appends its events one after another, waiting for each to be durable,
//! as the orchestrator does. The file lives in a temporary directory on the
//! disk that contains the system's temp dir.

use std::sync::Arc;
use std::time::{Duration, Instant};

use typed_saga::{SagaEvent, SagaEventKind, SagaId, SagaLog, SqliteSagaLog, StepAction};

const EVENTS_PER_SAGA: u64 = 500;

fn attempt_started(saga_id: SagaId, sequence: u64) -> SagaEvent {
    SagaEvent {
        saga_id,
        sequence,
        recorded_at_ms: 0,
        kind: if sequence == 0 {
            SagaEventKind::Created {
                saga: "Bench".to_owned(),
                input: serde_json::json!({ "username": "bench" }),
                steps: vec!["step".to_owned()],
            }
        } else {
            SagaEventKind::AttemptStarted {
                step: "step".to_owned(),
                action: StepAction::Execute,
                attempt: u32::try_from(sequence).unwrap_or(u32::MAX),
            }
        },
    }
}

/// Appends `EVENTS_PER_SAGA` events for each of `sagas` concurrent sagas and
/// returns the elapsed time and the number of events.
async fn measure(log: Arc<SqliteSagaLog>, sagas: usize) -> (Duration, u64) {
    let start = Instant::now();
    let tasks: Vec<_> = (0..sagas)
        .map(|_| {
            let log = log.clone();
            tokio::spawn(async move {
                let id = SagaId::random();
                for sequence in 0..EVENTS_PER_SAGA {
                    log.append(&attempt_started(id, sequence))
                        .await
                        .expect("append failed");
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("a saga task panicked");
    }
    (start.elapsed(), EVENTS_PER_SAGA * sagas as u64)
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("cannot build the tokio runtime");
    for sagas in [1, 64] {
        let dir = tempfile::tempdir().expect("cannot create a temporary directory");
        let log =
            Arc::new(SqliteSagaLog::open(dir.path().join("saga.db")).expect("cannot open the log"));
        let (elapsed, events) = runtime.block_on(measure(log, sagas));
        let rate = events as f64 / elapsed.as_secs_f64();
        println!(
            "saga_log/append: {sagas:>2} saga(s) in flight: {events} events in {:.3} s = {rate:.0} appends/s",
            elapsed.as_secs_f64()
        );
    }
}
