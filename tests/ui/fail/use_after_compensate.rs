// `compensate` takes the failed saga by value, so its list of remaining
// compensations is gone once compensation starts.

include!("../support/saga.rs");

#[tokio::main]
async fn main() {
    let saga = failed().await;
    let _compensating = saga.compensate();
    let _ = saga.remaining_compensations();
}
