// The state markers have a private field, so no code outside the crate can
// build one.

use typed_saga::Succeeded;

include!("../support/saga.rs");

fn main() {
    let _state = Succeeded { _private: () };
}
