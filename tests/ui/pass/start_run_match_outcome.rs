// A pending saga starts, runs, and ends in the state its outcome names.

use std::sync::Arc;

use typed_saga::{RunOutcome, Saga, SagaStatus};

include!("../support/saga.rs");

#[tokio::main]
async fn main() {
    let running = Saga::<Probe, _>::new(false, Arc::new(())).start();
    assert_eq!(running.status(), SagaStatus::Running);

    let outcome = running
        .run()
        .await
        .expect("the in-memory log does not fail");
    match outcome {
        RunOutcome::Succeeded(saga) => assert_eq!(saga.status(), SagaStatus::Succeeded),
        RunOutcome::Failed(saga) => panic!("the saga failed: {:?}", saga.failure()),
    }
}
