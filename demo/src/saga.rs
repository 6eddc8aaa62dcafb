//! The `UserProvisioning` saga: its input, its three steps and how each step
//! calls the worker.
//!
//! Every action and every compensation is exactly one call of the
//! [`Transport`], carrying a [`StepRequest`] whose idempotency key is
//! `saga_id:step:action`. The worker applies each key once, so the
//! orchestrator may repeat a call whose outcome it does not know.

use std::sync::Arc;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use typed_saga::{
    Pending, RetryPolicy, Saga, SagaEvent, SagaEventKind, SagaLog, SagaOutcome, Step, StepAction,
    StepContext, StepError, StepRequest,
};

use crate::domain::{Fault, NewUser, PermissionGrant, QuotaRequest};
use crate::transport::Transport;

/// How many times an action or a compensation is attempted, the first
/// attempt included. This is the library's default budget.
pub const MAX_ATTEMPTS: u32 = 5;

/// The input of one saga: an account, its roles and its quota, with the
/// failures to inject into each step.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProvisioningInput {
    /// The login name, which every database row of the user carries.
    pub username: String,
    /// The contact address.
    pub email: String,
    /// The roles to grant, from [`KNOWN_ROLES`](crate::domain::KNOWN_ROLES).
    pub roles: Vec<String>,
    /// Storage in MiB.
    pub storage_mb: i64,
    /// Operations per day.
    pub ops_per_day: i64,
    /// Failures to inject, per step.
    #[serde(default, skip_serializing_if = "StepFaults::is_empty")]
    pub faults: StepFaults,
}

/// The failure injected into each step's action, if any.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepFaults {
    /// The fault of `provision_user`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provision_user: Option<Fault>,
    /// The fault of `assign_permissions`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub assign_permissions: Option<Fault>,
    /// The fault of `create_quota`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub create_quota: Option<Fault>,
}

impl StepFaults {
    /// Returns true when no step has a fault.
    pub fn is_empty(&self) -> bool {
        self.provision_user.is_none()
            && self.assign_permissions.is_none()
            && self.create_quota.is_none()
    }

    /// Returns the fault of `step`, if any.
    pub fn get(&self, step: ProvisioningStepKind) -> Option<&Fault> {
        self.slot(step).as_ref()
    }

    /// Returns the fault of `step`, adding one that injects nothing when it
    /// has none, so the caller can set one of its fields.
    pub fn entry(&mut self, step: ProvisioningStepKind) -> &mut Fault {
        match step {
            ProvisioningStepKind::ProvisionUser => &mut self.provision_user,
            ProvisioningStepKind::AssignPermissions => &mut self.assign_permissions,
            ProvisioningStepKind::CreateQuota => &mut self.create_quota,
        }
        .get_or_insert_with(Fault::default)
    }

    fn slot(&self, step: ProvisioningStepKind) -> &Option<Fault> {
        match step {
            ProvisioningStepKind::ProvisionUser => &self.provision_user,
            ProvisioningStepKind::AssignPermissions => &self.assign_permissions,
            ProvisioningStepKind::CreateQuota => &self.create_quota,
        }
    }
}

/// The output of `provision_user`: the new account's id.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserCreated {
    /// The id that `users.db` assigned.
    pub user_id: i64,
    /// The account's login name.
    pub username: String,
}

/// The output of `assign_permissions`: the roles granted, without repeats.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RolesGranted {
    /// The role names, in the order requested.
    pub roles: Vec<String>,
}

/// The output of `create_quota`: the new quota's id.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuotaCreated {
    /// The id that `quotas.db` assigned.
    pub quota_id: i64,
}

/// Creates the user row in `users.db`.
#[derive(Debug, Default)]
pub struct ProvisionUser;

/// Grants the user's roles in `permissions.db`.
#[derive(Debug, Default)]
pub struct AssignPermissions;

/// Creates the user's storage and operations quota in `quotas.db`.
#[derive(Debug, Default)]
pub struct CreateQuota;

typed_saga::saga! {
    /// Provisions one user account in three steps, each served by the
    /// provisioning worker: the user, then the roles, then the quota.
    pub saga UserProvisioning {
        input: ProvisioningInput,
        context: Transport,
        step_enum: ProvisioningStep,
        kind_enum: ProvisioningStepKind,
        steps: [
            provision_user => ProvisionUser,
            assign_permissions => AssignPermissions,
            create_quota => CreateQuota,
        ],
    }
}

impl Step<UserProvisioning> for ProvisionUser {
    type Output = UserCreated;

    async fn execute(
        &self,
        cx: &StepContext<'_, UserProvisioning>,
    ) -> Result<UserCreated, StepError> {
        let input = cx.input();
        let payload = NewUser {
            username: input.username.clone(),
            email: input.email.clone(),
            fault: input.faults.provision_user.clone(),
        };
        call_action(cx, &payload).await
    }

    async fn compensate(
        &self,
        cx: &StepContext<'_, UserProvisioning>,
        _created: Option<UserCreated>,
    ) -> Result<(), StepError> {
        call_compensation(cx).await
    }
}

impl Step<UserProvisioning> for AssignPermissions {
    type Output = RolesGranted;

    async fn execute(
        &self,
        cx: &StepContext<'_, UserProvisioning>,
    ) -> Result<RolesGranted, StepError> {
        let input = cx.input();
        let payload = PermissionGrant {
            username: input.username.clone(),
            roles: input.roles.clone(),
            fault: input.faults.assign_permissions.clone(),
        };
        call_action(cx, &payload).await
    }

    async fn compensate(
        &self,
        cx: &StepContext<'_, UserProvisioning>,
        _granted: Option<RolesGranted>,
    ) -> Result<(), StepError> {
        call_compensation(cx).await
    }
}

impl Step<UserProvisioning> for CreateQuota {
    type Output = QuotaCreated;

    async fn execute(
        &self,
        cx: &StepContext<'_, UserProvisioning>,
    ) -> Result<QuotaCreated, StepError> {
        let input = cx.input();
        let payload = QuotaRequest {
            username: input.username.clone(),
            storage_mb: input.storage_mb,
            ops_per_day: input.ops_per_day,
            fault: input.faults.create_quota.clone(),
        };
        call_action(cx, &payload).await
    }

    async fn compensate(
        &self,
        cx: &StepContext<'_, UserProvisioning>,
        _created: Option<QuotaCreated>,
    ) -> Result<(), StepError> {
        call_compensation(cx).await
    }
}

/// Sends the current step's action with `payload` and decodes the output.
///
/// An output that does not decode comes from an action that took effect,
/// so it is an unknown outcome: the step is retried with the same key and,
/// once its budget is spent, compensated.
async fn call_action<P: Serialize, O: DeserializeOwned>(
    cx: &StepContext<'_, UserProvisioning>,
    payload: &P,
) -> Result<O, StepError> {
    let step = cx.step();
    let payload = serde_json::to_value(payload).map_err(|error| {
        StepError::permanent(format!(
            "could not encode the payload of step {step} as JSON: {error}"
        ))
    })?;
    let request = StepRequest::new(
        cx.saga_id().to_string(),
        step.to_string(),
        StepAction::Execute,
        payload,
    );

    let output = cx.context().call(&request).await?;
    serde_json::from_value(output.clone()).map_err(|error| {
        StepError::unknown(format!(
            "invalid output {output} of step {step}: {error}; the worker took effect but its \
             reply does not match this version of the demo"
        ))
    })
}

/// Sends the current step's compensation. The worker deletes the rows this
/// saga created, so the payload only names the user, for people reading
/// the queue.
async fn call_compensation(cx: &StepContext<'_, UserProvisioning>) -> Result<(), StepError> {
    let payload = json!({ "username": cx.input().username });
    let request = StepRequest::new(
        cx.saga_id().to_string(),
        cx.step().to_string(),
        StepAction::Compensate,
        payload,
    );

    cx.context().call(&request).await.map(|_output: Value| ())
}

/// Builds a saga that provisions `input` through `transport`, records its
/// history in `log`, and waits `retry_delay` between two attempts of an
/// action or a compensation.
pub fn provisioning_saga(
    input: ProvisioningInput,
    transport: Arc<Transport>,
    log: Arc<dyn SagaLog>,
    retry_delay: Duration,
) -> Saga<UserProvisioning, Pending> {
    let policy = RetryPolicy::fixed(MAX_ATTEMPTS, retry_delay);

    Saga::<UserProvisioning, _>::new(input, transport)
        .with_log(log)
        .with_retry_policy(policy.clone())
        .with_compensation_policy(policy)
}

/// The step whose action failed for good, and its last error, as the saga's
/// history records them.
#[derive(Clone, Debug, PartialEq)]
pub struct ActionFailure {
    /// The step's stable name.
    pub step: String,
    /// The error of the step's last attempt.
    pub error: StepError,
}

/// Returns the action that failed for good in `history`, if one did.
pub fn action_failure(history: &[SagaEvent]) -> Option<ActionFailure> {
    history.iter().rev().find_map(|event| match &event.kind {
        SagaEventKind::AttemptFailed {
            step,
            action: StepAction::Execute,
            error,
            will_retry: false,
            ..
        } => Some(ActionFailure {
            step: step.clone(),
            error: error.clone(),
        }),
        _ => None,
    })
}

/// Describes how a saga ended in one line: its final state and, when it did
/// not succeed, which step failed and what remains.
pub fn describe_outcome(
    outcome: &SagaOutcome<UserProvisioning>,
    failure: Option<&ActionFailure>,
) -> String {
    let cause = match failure {
        Some(failure) => format!("{} failed: {}", failure.step, failure.error),
        None => "a step failed".to_owned(),
    };

    match outcome {
        SagaOutcome::Succeeded(saga) => {
            let user_id = saga
                .output::<ProvisionUser>()
                .map(|created| created.user_id.to_string())
                .unwrap_or_else(|_| "unknown".to_owned());
            format!(
                "SUCCEEDED: user {} has user_id {user_id}",
                saga.input().username
            )
        }
        SagaOutcome::Compensated(saga) => format!(
            "COMPENSATED: {cause}; every step that took effect was undone, so nothing of {} remains",
            saga.input().username
        ),
        SagaOutcome::Failed(saga) => {
            let remaining: Vec<String> = saga
                .remaining_compensations()
                .iter()
                .map(ToString::to_string)
                .collect();
            let cause = match saga.failure() {
                Some(failure) => format!(
                    "{} {} failed: {}",
                    failure.step, failure.action, failure.error
                ),
                None => cause,
            };
            format!(
                "FAILED: {cause}; the effects of [{}] remain for user {}; run `demo recover` \
                 once the worker is back to undo them",
                remaining.join(", "),
                saga.input().username
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use typed_saga::{MemoryLog, RunOutcome};

    use super::*;
    use crate::domain::StepKind;
    use crate::worker::ProvisioningWorker;

    async fn in_process() -> (tempfile::TempDir, ProvisioningWorker, Arc<Transport>) {
        let dir = tempfile::tempdir().unwrap();
        let worker = ProvisioningWorker::open(dir.path()).await.unwrap();
        let transport = Arc::new(Transport::InProcess(worker.clone()));
        (dir, worker, transport)
    }

    fn input(username: &str) -> ProvisioningInput {
        ProvisioningInput {
            username: username.to_owned(),
            email: format!("{username}@example.com"),
            roles: vec!["reader".to_owned()],
            storage_mb: 100,
            ops_per_day: 100,
            faults: StepFaults::default(),
        }
    }

    #[tokio::test]
    async fn each_action_sends_one_request() {
        let (_dir, worker, transport) = in_process().await;

        let saga = provisioning_saga(
            input("ana"),
            transport,
            Arc::new(MemoryLog::new()),
            Duration::ZERO,
        );
        let outcome = saga.run_to_end().await.unwrap();

        assert_eq!(outcome.status(), typed_saga::SagaStatus::Succeeded);
        for step in StepKind::ALL {
            let inbox = worker.store().list_inbox(step).await.unwrap();
            assert_eq!(inbox.len(), 1, "{step}");
            assert_eq!(
                inbox[0].idempotency_key,
                format!("{}:{step}:execute", outcome.id()),
                "{step}"
            );
        }
    }

    #[tokio::test]
    async fn failed_saga_description_lists_remaining_steps() {
        let (_dir, _worker, transport) = in_process().await;
        let mut input = input("ana");
        input
            .faults
            .entry(ProvisioningStepKind::CreateQuota)
            .permanent = true;
        let saga = provisioning_saga(input, transport, Arc::new(MemoryLog::new()), Duration::ZERO);

        let RunOutcome::Failed(failed) = saga.start().run().await.unwrap() else {
            panic!("create_quota should fail");
        };
        let description = describe_outcome(&SagaOutcome::Failed(failed), None);

        assert_eq!(
            description,
            "FAILED: create_quota execute failed: permanent error: injected permanent fault in \
             create_quota; the request asked for it with \"fault\": {\"permanent\": true}, which \
             `demo provision --fail-at` sets; the \
             effects of [assign_permissions, provision_user] remain for user ana; run `demo \
             recover` once the worker is back to undo them"
        );
    }

    #[test]
    fn action_failure_is_the_last_final_execute_failure() {
        let id = typed_saga::SagaId::random();
        let failed = |step: &str, will_retry: bool| SagaEvent {
            saga_id: id,
            sequence: 0,
            recorded_at_ms: 0,
            kind: SagaEventKind::AttemptFailed {
                step: step.to_owned(),
                action: StepAction::Execute,
                attempt: 1,
                error: StepError::transient("busy"),
                will_retry,
            },
        };

        let failure = action_failure(&[
            failed("provision_user", true),
            failed("create_quota", false),
        ]);

        assert_eq!(
            failure,
            Some(ActionFailure {
                step: "create_quota".to_owned(),
                error: StepError::transient("busy"),
            })
        );
    }
}
