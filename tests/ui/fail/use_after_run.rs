// `run` takes the running saga by value, so it cannot run a second time.

include!("../support/saga.rs");

#[tokio::main]
async fn main() {
    let saga = running();
    let _outcome = saga.run().await;
    let _ = saga.run().await;
}
