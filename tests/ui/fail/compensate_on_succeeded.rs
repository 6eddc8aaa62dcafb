// `compensate` exists only on a `Failed` saga.
// A succeeded saga keeps its effects.

include!("../support/saga.rs");

#[tokio::main]
async fn main() {
    let _ = succeeded().await.compensate();
}
