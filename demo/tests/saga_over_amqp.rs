//! The provisioning saga end to end: orchestrator, RPC client, RabbitMQ,
//! worker and the three SQLite databases.

mod common;

use common::{AmqpHarness, attempts_started, compensated_steps, user};
use demo::domain::Fault;
use demo::saga::{ProvisionUser, ProvisioningStepKind};
use typed_saga::{SagaEventKind, SagaOutcome, SagaStatus, StepAction, StepError};

#[tokio::test]
async fn saga_writes_a_row_to_each_database() {
    let harness = AmqpHarness::start("succeeds").await;

    let outcome = harness.provision(user("ana.garcia")).await;

    assert_eq!(outcome.status(), SagaStatus::Succeeded);
    let saga_id = outcome.id().to_string();
    let store = harness.store();
    let users = store.list_users().await.unwrap();
    assert_eq!(users.len(), 1);
    assert_eq!(users[0].username, "ana.garcia");
    assert_eq!(users[0].email, "ana.garcia@example.com");
    assert_eq!(users[0].saga_id, saga_id);
    let roles: Vec<String> = store
        .list_permissions()
        .await
        .unwrap()
        .into_iter()
        .map(|row| row.role)
        .collect();
    assert_eq!(roles, ["reader", "writer"]);
    let quotas = store.list_quotas().await.unwrap();
    assert_eq!(quotas.len(), 1);
    assert_eq!(quotas[0].storage_mb, 1024);
    assert_eq!(quotas[0].ops_per_day, 5000);
    assert_eq!(quotas[0].saga_id, saga_id);
    harness.shutdown().await;
}

#[tokio::test]
async fn saga_output_carries_the_user_id() {
    let harness = AmqpHarness::start("output").await;

    let outcome = harness.provision(user("ana.garcia")).await;

    let SagaOutcome::Succeeded(saga) = outcome else {
        panic!("expected SUCCEEDED, got {:?}", outcome.status());
    };
    let created = saga.output::<ProvisionUser>().unwrap();
    let users = harness.store().list_users().await.unwrap();
    assert_eq!(created.user_id, users[0].user_id);
    assert_eq!(created.username, "ana.garcia");
    harness.shutdown().await;
}

/// Runs a saga whose `step` fails permanently and checks that nothing of
/// the user remains and that the steps before it were compensated newest
/// first.
async fn check_permanent_failure_at(step: ProvisioningStepKind, expected_compensations: &[&str]) {
    let harness = AmqpHarness::start(&format!("fail-at-{step}")).await;
    let mut input = user("ana.garcia");
    *input.faults.entry(step) = Fault {
        permanent: true,
        transient: 0,
    };

    let outcome = harness.provision(input).await;

    assert_eq!(
        outcome.status(),
        SagaStatus::Compensated,
        "failing at {step}"
    );
    let presence = harness
        .store()
        .username_presence("ana.garcia")
        .await
        .unwrap();
    assert!(presence.is_absent(), "failing at {step}: {presence:?}");
    let events = harness.log.events();
    assert_eq!(
        compensated_steps(&events),
        expected_compensations,
        "failing at {step}"
    );
    assert_eq!(
        attempts_started(&events, &step.to_string(), StepAction::Execute),
        1,
        "a permanent error is not retried"
    );
    harness.shutdown().await;
}

#[tokio::test]
async fn permanent_failure_at_provision_user_compensates_nothing() {
    check_permanent_failure_at(ProvisioningStepKind::ProvisionUser, &[]).await;
}

#[tokio::test]
async fn permanent_failure_at_assign_permissions_undoes_the_user() {
    check_permanent_failure_at(ProvisioningStepKind::AssignPermissions, &["provision_user"]).await;
}

#[tokio::test]
async fn permanent_failure_at_create_quota_undoes_newest_first() {
    check_permanent_failure_at(
        ProvisioningStepKind::CreateQuota,
        &["assign_permissions", "provision_user"],
    )
    .await;
}

#[tokio::test]
async fn flaky_step_is_retried_until_it_succeeds() {
    let harness = AmqpHarness::start("flaky").await;
    let mut input = user("ana.garcia");
    input
        .faults
        .entry(ProvisioningStepKind::AssignPermissions)
        .transient = 2;

    let outcome = harness.provision(input).await;

    assert_eq!(outcome.status(), SagaStatus::Succeeded);
    let events = harness.log.events();
    assert_eq!(
        attempts_started(&events, "assign_permissions", StepAction::Execute),
        3
    );
    let retried: Vec<&StepError> = events
        .iter()
        .filter_map(|event| match &event.kind {
            SagaEventKind::AttemptFailed {
                error,
                will_retry: true,
                ..
            } => Some(error),
            _ => None,
        })
        .collect();
    assert_eq!(retried.len(), 2);
    assert!(
        retried
            .iter()
            .all(|error| matches!(error, StepError::Transient(_))),
        "{retried:?}"
    );
    let presence = harness
        .store()
        .username_presence("ana.garcia")
        .await
        .unwrap();
    assert!(presence.is_complete(), "{presence:?}");
    harness.shutdown().await;
}

#[tokio::test]
async fn flaky_steps_everywhere_still_succeed() {
    let harness = AmqpHarness::start("flaky-all").await;
    let mut input = user("ana.garcia");
    for step in [
        ProvisioningStepKind::ProvisionUser,
        ProvisioningStepKind::AssignPermissions,
        ProvisioningStepKind::CreateQuota,
    ] {
        input.faults.entry(step).transient = 4;
    }

    let outcome = harness.provision(input).await;

    assert_eq!(outcome.status(), SagaStatus::Succeeded);
    let events = harness.log.events();
    for step in ["provision_user", "assign_permissions", "create_quota"] {
        assert_eq!(
            attempts_started(&events, step, StepAction::Execute),
            5,
            "{step}"
        );
    }
    harness.shutdown().await;
}

#[tokio::test]
async fn flaky_step_beyond_the_budget_is_compensated() {
    let harness = AmqpHarness::start("flaky-exhausted").await;
    let mut input = user("ana.garcia");
    input
        .faults
        .entry(ProvisioningStepKind::CreateQuota)
        .transient = 5;

    let outcome = harness.provision(input).await;

    assert_eq!(outcome.status(), SagaStatus::Compensated);
    let events = harness.log.events();
    assert_eq!(
        attempts_started(&events, "create_quota", StepAction::Execute),
        5
    );
    assert_eq!(
        compensated_steps(&events),
        ["assign_permissions", "provision_user"]
    );
    let presence = harness
        .store()
        .username_presence("ana.garcia")
        .await
        .unwrap();
    assert!(presence.is_absent(), "{presence:?}");
    harness.shutdown().await;
}

#[tokio::test]
async fn taken_username_leaves_the_first_user_intact() {
    let harness = AmqpHarness::start("taken").await;
    let first = harness.provision(user("ana.garcia")).await;

    let second = harness.provision(user("ana.garcia")).await;

    assert_eq!(second.status(), SagaStatus::Compensated);
    let users = harness.store().list_users().await.unwrap();
    assert_eq!(users.len(), 1);
    assert_eq!(users[0].saga_id, first.id().to_string());
    let presence = harness
        .store()
        .username_presence("ana.garcia")
        .await
        .unwrap();
    assert!(presence.is_complete(), "{presence:?}");
    harness.shutdown().await;
}
