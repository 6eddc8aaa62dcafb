// `run` exists only on `Running` and `Compensating` sagas.
// A failed saga must be compensated first.

include!("../support/saga.rs");

#[tokio::main]
async fn main() {
    let _ = failed().await.run();
}
