// `compensate` exists only on a `Failed` saga.
// A pending saga has no effect to undo.

include!("../support/saga.rs");

fn main() {
    let _ = pending().compensate();
}
