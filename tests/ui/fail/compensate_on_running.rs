// `compensate` exists only on a `Failed` saga.
// A running saga must finish its run first.

include!("../support/saga.rs");

fn main() {
    let _ = running().compensate();
}
