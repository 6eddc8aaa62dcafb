// `compensate` exists only on a `Failed` saga.
// A compensating saga is already compensating.

include!("../support/saga.rs");

#[tokio::main]
async fn main() {
    let _ = compensating().await.compensate();
}
