// `run_to_end` takes a pending saga through its run and, when a step fails,
// through its compensation.

use std::sync::Arc;

use typed_saga::{Saga, SagaOutcome, SagaStatus};

include!("../support/saga.rs");

#[tokio::main]
async fn main() {
    let outcome = Saga::<Probe, _>::new(false, Arc::new(()))
        .run_to_end()
        .await
        .expect("the in-memory log does not fail");
    assert!(matches!(outcome, SagaOutcome::Succeeded(_)));

    let outcome = Saga::<Probe, _>::new(true, Arc::new(()))
        .run_to_end()
        .await
        .expect("the in-memory log does not fail");
    assert_eq!(outcome.status(), SagaStatus::Compensated);
}
