//! Provisions user accounts with a typed-saga saga.

mod domain;
mod store;
mod worker;

fn main() {
    println!("demo: not built yet");
}
