// `new` builds a `Pending` saga only: no other state can be built directly.

use std::sync::Arc;
use typed_saga::{Saga, Succeeded};

include!("../support/saga.rs");

fn main() {
    let _ = Saga::<Probe, Succeeded>::new(false, Arc::new(()));
}
