// `start` exists only on a `Pending` saga, so a saga starts once.

include!("../support/saga.rs");

#[tokio::main]
async fn main() {
    let _ = failed().await.start();
}
