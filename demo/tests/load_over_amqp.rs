//! Many sagas over one queue: in sequence, and at once. Each saga must get
//! its own replies, so each one's output names its own user.

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;

use common::{AmqpHarness, RETRY_DELAY, user};
use demo::saga::{ProvisionUser, provisioning_saga};
use tokio::task::JoinSet;
use typed_saga::{SagaOutcome, SagaStatus};

/// Returns the username in the output of a succeeded saga's first step, or
/// panics with the saga's status.
fn provisioned_username(outcome: &SagaOutcome<demo::saga::UserProvisioning>) -> String {
    match outcome {
        SagaOutcome::Succeeded(saga) => saga.output::<ProvisionUser>().unwrap().username,
        other => panic!("expected SUCCEEDED, got {:?}", other.status()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_sagas_in_sequence_all_succeed() {
    const SAGAS: usize = 500;
    let harness = AmqpHarness::start("sequence").await;

    for index in 0..SAGAS {
        let username = format!("user{index:04}");

        let outcome = harness.provision(user(&username)).await;

        assert_eq!(provisioned_username(&outcome), username);
    }

    let store = harness.store();
    assert_eq!(store.list_users().await.unwrap().len(), SAGAS);
    assert_eq!(store.list_permissions().await.unwrap().len(), SAGAS * 2);
    assert_eq!(store.list_quotas().await.unwrap().len(), SAGAS);
    harness.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_sagas_at_once_all_succeed() {
    const SAGAS: usize = 50;
    let harness = AmqpHarness::start("at-once").await;
    let mut running = JoinSet::new();

    for index in 0..SAGAS {
        let username = format!("user{index:02}");
        let saga = provisioning_saga(
            user(&username),
            harness.backend().transport(),
            Arc::clone(&harness.log) as _,
            RETRY_DELAY,
        );
        running.spawn(async move {
            let outcome = saga
                .run_to_end()
                .await
                .expect("the in-memory log never fails");
            (username, outcome)
        });
    }
    let mut finished = Vec::new();
    while let Some(joined) = running.join_next().await {
        finished.push(joined.expect("a saga task panicked"));
    }

    assert_eq!(finished.len(), SAGAS);
    for (username, outcome) in &finished {
        assert_eq!(outcome.status(), SagaStatus::Succeeded, "{username}");
        assert_eq!(&provisioned_username(outcome), username);
    }
    let user_ids: BTreeSet<i64> = harness
        .store()
        .list_users()
        .await
        .unwrap()
        .into_iter()
        .map(|row| row.user_id)
        .collect();
    assert_eq!(user_ids.len(), SAGAS);
    assert_eq!(harness.store().list_quotas().await.unwrap().len(), SAGAS);
    harness.shutdown().await;
}
