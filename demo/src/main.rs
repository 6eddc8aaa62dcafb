//! Provisions user accounts with a typed-saga saga.

fn main() {
    println!("demo: not built yet");
}
