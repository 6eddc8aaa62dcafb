// The id prefixes every idempotency key, so it can be set only before the
// saga starts.

use typed_saga::SagaId;

include!("../support/saga.rs");

fn main() {
    let _ = running().with_id(SagaId::random());
}
