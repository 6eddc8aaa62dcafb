// `SagaState` is sealed: the six markers of the crate are the only states.

use typed_saga::{SagaState, SagaStatus};

include!("../support/saga.rs");

struct Paused;

impl SagaState for Paused {
    const STATUS: SagaStatus = SagaStatus::Running;
}

fn main() {}
