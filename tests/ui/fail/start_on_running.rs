// `start` exists only on a `Pending` saga, so a saga starts once.

include!("../support/saga.rs");

fn main() {
    let _ = running().start();
}
