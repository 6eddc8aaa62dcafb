// `start` takes the pending saga by value, so the old binding is moved.

include!("../support/saga.rs");

fn main() {
    let saga = pending();
    let _running = saga.start();
    let _ = saga.id();
}
