// `RunOutcome::Failed` contains a `Failed` saga, not a `Succeeded` one.

use typed_saga::{RunOutcome, Saga, Succeeded};

include!("../support/saga.rs");

#[tokio::main]
async fn main() {
    if let RunOutcome::Failed(saga) = running().run().await.unwrap() {
        let _saga: Saga<Probe, Succeeded> = saga;
    }
}
