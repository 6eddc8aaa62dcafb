// A failed saga lists what to undo, compensates, and ends compensated.

use std::sync::Arc;

use typed_saga::{CompensationOutcome, RunOutcome, Saga, SagaStatus};

include!("../support/saga.rs");

#[tokio::main]
async fn main() {
    let running = Saga::<Probe, _>::new(true, Arc::new(())).start();
    let outcome = running
        .run()
        .await
        .expect("the in-memory log does not fail");
    let RunOutcome::Failed(failed) = outcome else {
        panic!("a saga with input true should fail");
    };
    assert_eq!(failed.remaining_compensations(), [ProbeStepKind::Reserve]);

    let compensating = failed.compensate();
    assert_eq!(compensating.status(), SagaStatus::Compensating);

    let outcome = compensating
        .run()
        .await
        .expect("the in-memory log does not fail");
    match outcome {
        CompensationOutcome::Compensated(saga) => {
            assert_eq!(saga.status(), SagaStatus::Compensated)
        }
        CompensationOutcome::Failed(saga) => {
            panic!("the compensation failed: {:?}", saga.failure())
        }
    }
}
