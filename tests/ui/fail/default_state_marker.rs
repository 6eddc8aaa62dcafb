// The state markers do not implement `Default`, so `Default` cannot build one.

use typed_saga::Succeeded;

include!("../support/saga.rs");

fn main() {
    let _state = Succeeded::default();
}
