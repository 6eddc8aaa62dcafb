// `run` exists only on `Running` and `Compensating` sagas.
// A pending saga must be started first.

include!("../support/saga.rs");

fn main() {
    let _ = pending().run();
}
