// `run` exists only on `Running` and `Compensating` sagas.
// A compensated saga has nothing left to run.

include!("../support/saga.rs");

#[tokio::main]
async fn main() {
    let _ = compensated().await.run();
}
