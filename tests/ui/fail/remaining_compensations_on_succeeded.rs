// Only a `Failed` saga lists the steps left to compensate.

include!("../support/saga.rs");

#[tokio::main]
async fn main() {
    let _ = succeeded().await.remaining_compensations();
}
