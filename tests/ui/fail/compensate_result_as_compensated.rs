// `compensate` returns a `Compensating` saga, which must run before it is
// compensated.

use typed_saga::{Compensated, Saga};

include!("../support/saga.rs");

#[tokio::main]
async fn main() {
    let _saga: Saga<Probe, Compensated> = failed().await.compensate();
}
