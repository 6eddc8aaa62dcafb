// `run_to_end` starts the saga itself, so it exists only on a `Pending` saga.

include!("../support/saga.rs");

fn main() {
    let _ = running().run_to_end();
}
