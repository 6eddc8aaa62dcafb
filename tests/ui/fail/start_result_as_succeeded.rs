// `start` returns a `Running` saga, which must run before it can succeed.

use typed_saga::{Saga, Succeeded};

include!("../support/saga.rs");

fn main() {
    let _saga: Saga<Probe, Succeeded> = pending().start();
}
