// `compensate` exists only on a `Failed` saga.
// A compensated saga has no effect left to undo.

include!("../support/saga.rs");

#[tokio::main]
async fn main() {
    let _ = compensated().await.compensate();
}
