// The fields of `Saga` are private, so no code outside the crate can build a
// saga in a state it did not reach.

use typed_saga::{Saga, Succeeded};

include!("../support/saga.rs");

fn main() {
    let _saga: Saga<Probe, Succeeded> = Saga {};
}
