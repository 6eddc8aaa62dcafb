//! The provisioning worker's request handler, independent of the transport.
//!
//! A transport decodes a [`StepRequest`], calls [`ProvisioningWorker::handle`]
//! and sends back the result as a [`typed_saga::StepReply`].

use std::path::Path;
use std::sync::Arc;

use serde_json::Value;
use typed_saga::{StepAction, StepError, StepRequest, idempotency_key};

use crate::domain::{Fault, StepCommand, StepKind};
use crate::store::{RequestIds, Store, StoreError, StoredReply};

/// Applies the steps of the provisioning saga to the three databases.
///
/// Cloning is cheap: clones share the databases and the fault counters, so
/// a transport can hand one clone to each concurrent request.
#[derive(Clone, Debug)]
pub struct ProvisioningWorker {
    inner: Arc<WorkerState>,
}

#[derive(Debug)]
struct WorkerState {
    store: Store,
}

impl ProvisioningWorker {
    /// Opens the databases in `data_dir`, creating what is missing.
    pub async fn open(data_dir: &Path) -> Result<Self, StoreError> {
        let store = Store::open(data_dir).await?;

        Ok(Self {
            inner: Arc::new(WorkerState { store }),
        })
    }

    /// Returns the databases, for reading them.
    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    /// Handles one request: routes it by step and action, applies it at most
    /// once per idempotency key, and returns the step's output or its error.
    ///
    /// Requests with an unknown step, a payload that does not decode, an
    /// empty saga id, or an idempotency key other than `saga_id:step:action`
    /// are rejected with a permanent error and are not recorded. A busy or locked database is a transient error.
    #[tracing::instrument(
        name = "step_request",
        skip_all,
        fields(
            saga_id = %request.saga_id,
            step = %request.step,
            action = %request.action,
            idempotency_key = %request.idempotency_key,
        )
    )]
    pub async fn handle(&self, request: StepRequest) -> Result<Value, StepError> {
        let result = self.dispatch(request).await;

        match &result {
            Ok(_) => tracing::debug!("handled step request"),
            Err(error @ StepError::Transient(_)) => {
                tracing::info!(%error, "step request failed transiently");
            }
            Err(error @ StepError::Permanent(_)) => {
                tracing::warn!(%error, "rejected step request");
            }
            Err(error @ StepError::Unknown(_)) => {
                tracing::warn!(%error, "step request ended with unknown outcome");
            }
        }

        result
    }

    async fn dispatch(&self, request: StepRequest) -> Result<Value, StepError> {
        let step = StepKind::from_name(&request.step)?;
        let ids = request_ids(&request)?;

        let stored = match request.action {
            StepAction::Execute => {
                let command = StepCommand::decode(step, request.payload)?;
                self.inject_transient_fault(&ids.idempotency_key, step, command.fault())
                    .await?;
                self.inner.store.execute(ids, command).await
            }
            StepAction::Compensate => self.inner.store.compensate(ids, step).await,
        };

        let StoredReply { result, replayed } = stored?;
        if replayed {
            tracing::debug!("returned the reply recorded for this idempotency key");
        }
        result
    }

    /// Fails the first `fault.transient` attempts with this idempotency key,
    /// counting them in the step's database so a restart does not reset
    /// the count.
    async fn inject_transient_fault(
        &self,
        idempotency_key: &str,
        step: StepKind,
        fault: Option<&Fault>,
    ) -> Result<(), StepError> {
        let Some(planned) = fault
            .map(|fault| fault.transient)
            .filter(|&count| count > 0)
        else {
            return Ok(());
        };

        let injected = self
            .inner
            .store
            .inject_transient_fault(step, idempotency_key, planned)
            .await?;
        match injected {
            None => Ok(()),
            Some(failure) => Err(StepError::transient(format!(
                "injected transient fault in {step}: attempt {failure} of {planned} failing attempts"
            ))),
        }
    }
}

/// Takes the ids the inbox records, rejecting empty ones: rows are tied to
/// their saga id, and replies to their key.
fn request_ids(request: &StepRequest) -> Result<RequestIds, StepError> {
    if request.saga_id.is_empty() {
        return Err(StepError::permanent(
            "missing saga_id; every request must name its saga",
        ));
    }
    if request.idempotency_key.is_empty() {
        return Err(StepError::permanent(
            "missing idempotency_key; send saga_id:step:action as the key",
        ));
    }
    // Each step has its own database and inbox, so a key reused for another
    // step would go unseen. The key must therefore name its own request.
    let expected = idempotency_key(&request.saga_id, &request.step, request.action);
    if request.idempotency_key != expected {
        return Err(StepError::permanent(format!(
            "invalid idempotency_key {:?} for this request: expected {expected:?}, \
             which is saga_id:step:action",
            request.idempotency_key
        )));
    }

    Ok(RequestIds {
        saga_id: request.saga_id.clone(),
        idempotency_key: request.idempotency_key.clone(),
        payload: request.payload.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use tempfile::TempDir;

    use super::*;

    async fn open_worker() -> (TempDir, ProvisioningWorker) {
        let dir = tempfile::tempdir().unwrap();
        let worker = ProvisioningWorker::open(dir.path()).await.unwrap();
        (dir, worker)
    }

    fn execute(saga_id: &str, step: &str, payload: Value) -> StepRequest {
        StepRequest::new(saga_id, step, StepAction::Execute, payload)
    }

    fn compensate(saga_id: &str, step: &str) -> StepRequest {
        StepRequest::new(saga_id, step, StepAction::Compensate, Value::Null)
    }

    fn user_payload(username: &str) -> Value {
        json!({"username": username, "email": format!("{username}@example.com")})
    }

    fn roles_payload(username: &str) -> Value {
        json!({"username": username, "roles": ["reader", "writer"]})
    }

    fn quota_payload(username: &str) -> Value {
        json!({"username": username, "storage_mb": 1024, "ops_per_day": 5000})
    }

    /// Runs the three actions of one saga for `username`, failing on any error.
    async fn provision(worker: &ProvisioningWorker, saga_id: &str, username: &str) {
        worker
            .handle(execute(saga_id, "provision_user", user_payload(username)))
            .await
            .unwrap();
        worker
            .handle(execute(
                saga_id,
                "assign_permissions",
                roles_payload(username),
            ))
            .await
            .unwrap();
        worker
            .handle(execute(saga_id, "create_quota", quota_payload(username)))
            .await
            .unwrap();
    }

    /// Compensates the three steps of one saga, newest first.
    async fn undo(worker: &ProvisioningWorker, saga_id: &str) {
        for step in ["create_quota", "assign_permissions", "provision_user"] {
            let output = worker.handle(compensate(saga_id, step)).await;
            assert_eq!(output, Ok(Value::Null), "compensating {step}");
        }
    }

    fn permanent_message(result: Result<Value, StepError>) -> String {
        match result {
            Err(StepError::Permanent(message)) => message,
            other => panic!("expected a permanent error, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn provision_creates_rows_in_each_database() {
        let (_dir, worker) = open_worker().await;

        let user = worker
            .handle(execute("s1", "provision_user", user_payload("ana")))
            .await;
        let roles = worker
            .handle(execute("s1", "assign_permissions", roles_payload("ana")))
            .await;
        let quota = worker
            .handle(execute("s1", "create_quota", quota_payload("ana")))
            .await;

        assert_eq!(user, Ok(json!({"user_id": 1, "username": "ana"})));
        assert_eq!(roles, Ok(json!({"roles": ["reader", "writer"]})));
        assert_eq!(quota, Ok(json!({"quota_id": 1})));
        let presence = worker.store().username_presence("ana").await.unwrap();
        assert!(presence.is_complete(), "{presence:?}");
    }

    #[tokio::test]
    async fn repeated_request_returns_first_reply() {
        let (_dir, worker) = open_worker().await;
        let request = execute("s1", "provision_user", user_payload("ana"));

        let first = worker.handle(request.clone()).await;
        let second = worker.handle(request).await;

        assert_eq!(first, Ok(json!({"user_id": 1, "username": "ana"})));
        assert_eq!(second, first);
        assert_eq!(worker.store().list_users().await.unwrap().len(), 1);
    }

    #[tokio::test]
    async fn repeated_grant_and_quota_do_not_duplicate() {
        let (_dir, worker) = open_worker().await;
        provision(&worker, "s1", "ana").await;

        provision(&worker, "s1", "ana").await;

        assert_eq!(worker.store().list_permissions().await.unwrap().len(), 2);
        assert_eq!(worker.store().list_quotas().await.unwrap().len(), 1);
    }

    #[tokio::test]
    async fn repeated_rejection_returns_first_error() {
        let (_dir, worker) = open_worker().await;
        let request = execute(
            "s1",
            "provision_user",
            json!({"username": "Ana", "email": "ana@example.com"}),
        );

        let first = worker.handle(request.clone()).await;
        let second = worker.handle(request).await;

        assert!(matches!(first, Err(StepError::Permanent(_))), "{first:?}");
        assert_eq!(second, first);
        let inbox = worker
            .store()
            .list_inbox(StepKind::ProvisionUser)
            .await
            .unwrap();
        assert_eq!(inbox.len(), 1);
    }

    #[tokio::test]
    async fn compensation_removes_saga_rows() {
        let (_dir, worker) = open_worker().await;
        provision(&worker, "s1", "ana").await;

        undo(&worker, "s1").await;

        let presence = worker.store().username_presence("ana").await.unwrap();
        assert!(presence.is_absent(), "{presence:?}");
    }

    #[tokio::test]
    async fn compensation_keeps_other_saga_rows() {
        let (_dir, worker) = open_worker().await;
        provision(&worker, "s1", "ana").await;
        provision(&worker, "s2", "bob").await;

        undo(&worker, "s2").await;

        let ana = worker.store().username_presence("ana").await.unwrap();
        let bob = worker.store().username_presence("bob").await.unwrap();
        assert!(ana.is_complete(), "{ana:?}");
        assert!(bob.is_absent(), "{bob:?}");
    }

    #[tokio::test]
    async fn compensating_nothing_succeeds_and_changes_nothing() {
        let (_dir, worker) = open_worker().await;
        provision(&worker, "s1", "ana").await;
        let users_before = worker.store().list_users().await.unwrap();
        let permissions_before = worker.store().list_permissions().await.unwrap();
        let quotas_before = worker.store().list_quotas().await.unwrap();

        undo(&worker, "never-ran").await;

        assert_eq!(worker.store().list_users().await.unwrap(), users_before);
        assert_eq!(
            worker.store().list_permissions().await.unwrap(),
            permissions_before
        );
        assert_eq!(worker.store().list_quotas().await.unwrap(), quotas_before);
    }

    #[tokio::test]
    async fn compensation_is_recorded_in_inbox() {
        let (_dir, worker) = open_worker().await;

        undo(&worker, "never-ran").await;

        for step in StepKind::ALL {
            let inbox = worker.store().list_inbox(step).await.unwrap();
            assert_eq!(inbox.len(), 1, "{step}");
            assert_eq!(
                inbox[0].idempotency_key,
                format!("never-ran:{step}:compensate")
            );
        }
    }

    #[tokio::test]
    async fn existing_user_survives_other_saga_compensation() {
        let (_dir, worker) = open_worker().await;
        worker
            .handle(execute("s1", "provision_user", user_payload("ana")))
            .await
            .unwrap();

        let duplicate = worker
            .handle(execute("s2", "provision_user", user_payload("ana")))
            .await;
        let undone = worker.handle(compensate("s2", "provision_user")).await;

        assert_eq!(
            permanent_message(duplicate),
            "username \"ana\" already exists; choose another username"
        );
        assert_eq!(undone, Ok(Value::Null));
        let users = worker.store().list_users().await.unwrap();
        assert_eq!(users.len(), 1);
        assert_eq!(users[0].saga_id, "s1");
    }

    #[tokio::test]
    async fn validation_errors_name_field_and_value() {
        let (_dir, worker) = open_worker().await;
        let cases = [
            (
                "provision_user",
                json!({"username": "Ana", "email": "ana@example.com"}),
                "invalid username \"Ana\": must match [a-z][a-z0-9_.-]{2,31}",
            ),
            (
                "provision_user",
                json!({"username": "ana", "email": "ana@localhost"}),
                "invalid email \"ana@localhost\": the domain must contain a dot; expected an address like ana@example.com",
            ),
            (
                "assign_permissions",
                json!({"username": "ana", "roles": ["reader", "root"]}),
                "invalid role \"root\": must be one of reader, writer, admin, billing",
            ),
            (
                "create_quota",
                json!({"username": "ana", "storage_mb": 204800, "ops_per_day": 10}),
                "invalid storage_mb 204800: must be between 1 and 102400 (the plan maximum)",
            ),
            (
                "create_quota",
                json!({"username": "ana", "storage_mb": 10, "ops_per_day": 0}),
                "invalid ops_per_day 0: must be between 1 and 1000000 (the plan maximum)",
            ),
        ];

        for (index, (step, payload, expected)) in cases.into_iter().enumerate() {
            let saga_id = format!("s{index}");

            let result = worker.handle(execute(&saga_id, step, payload)).await;

            assert_eq!(permanent_message(result), expected);
        }
        let presence = worker.store().username_presence("ana").await.unwrap();
        assert!(presence.is_absent(), "{presence:?}");
    }

    #[tokio::test]
    async fn unknown_step_is_rejected_with_known_names() {
        let (_dir, worker) = open_worker().await;

        let result = worker
            .handle(execute("s1", "delete_user", user_payload("ana")))
            .await;

        assert_eq!(
            permanent_message(result),
            "unknown step \"delete_user\"; known steps are provision_user, assign_permissions, create_quota"
        );
    }

    #[tokio::test]
    async fn undecodable_payload_names_step() {
        let (_dir, worker) = open_worker().await;

        let result = worker
            .handle(execute(
                "s1",
                "create_quota",
                json!({"username": "ana", "storage_mb": "lots", "ops_per_day": 1}),
            ))
            .await;

        let message = permanent_message(result);
        assert!(
            message.starts_with(
                "invalid payload for step create_quota: invalid type: string \"lots\""
            ),
            "{message}"
        );
    }

    #[tokio::test]
    async fn empty_idempotency_key_is_rejected() {
        let (_dir, worker) = open_worker().await;
        let mut request = execute("s1", "provision_user", user_payload("ana"));
        request.idempotency_key.clear();

        let result = worker.handle(request).await;

        assert_eq!(
            permanent_message(result),
            "missing idempotency_key; send saga_id:step:action as the key"
        );
        assert!(worker.store().list_users().await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn compensation_ignores_its_payload() {
        let (_dir, worker) = open_worker().await;
        provision(&worker, "s1", "ana").await;
        let mut request = compensate("s1", "provision_user");
        request.payload = json!({"anything": ["goes"]});

        let result = worker.handle(request).await;

        assert_eq!(result, Ok(Value::Null));
        assert!(!worker.store().username_presence("ana").await.unwrap().users);
    }

    /// Sends every action, then every compensation, twice, as a saga does
    /// when a reply is lost or a crash cuts an attempt short, and checks that
    /// the repeat gets the first reply and changes no row.
    #[tokio::test]
    async fn every_action_and_compensation_is_safe_to_repeat() {
        let (_dir, worker) = open_worker().await;
        let requests = [
            execute("s1", "provision_user", user_payload("ana")),
            execute("s1", "assign_permissions", roles_payload("ana")),
            execute("s1", "create_quota", quota_payload("ana")),
            compensate("s1", "create_quota"),
            compensate("s1", "assign_permissions"),
            compensate("s1", "provision_user"),
        ];

        for request in requests {
            let label = format!("{} {}", request.step, request.action);
            let first = worker.handle(request.clone()).await;
            let rows_after_first = all_rows(&worker).await;
            let repeat = worker.handle(request).await;

            assert!(first.is_ok(), "{label}: {first:?}");
            assert_eq!(repeat, first, "{label}");
            assert_eq!(all_rows(&worker).await, rows_after_first, "{label}");
        }
    }

    async fn all_rows(worker: &ProvisioningWorker) -> String {
        let store = worker.store();
        format!(
            "{:?} {:?} {:?}",
            store.list_users().await.unwrap(),
            store.list_permissions().await.unwrap(),
            store.list_quotas().await.unwrap()
        )
    }

    #[tokio::test]
    async fn transient_fault_fails_n_times_then_works() {
        let (_dir, worker) = open_worker().await;
        let request = execute(
            "s1",
            "provision_user",
            json!({"username": "ana", "email": "ana@example.com", "fault": {"transient": 2}}),
        );

        let first = worker.handle(request.clone()).await;
        let second = worker.handle(request.clone()).await;
        let third = worker.handle(request.clone()).await;

        assert_eq!(
            first,
            Err(StepError::transient(
                "injected transient fault in provision_user: attempt 1 of 2 failing attempts"
            ))
        );
        assert_eq!(
            second,
            Err(StepError::transient(
                "injected transient fault in provision_user: attempt 2 of 2 failing attempts"
            ))
        );
        assert_eq!(third, Ok(json!({"user_id": 1, "username": "ana"})));
    }

    #[tokio::test]
    async fn same_key_with_another_payload_is_rejected() {
        let (_dir, worker) = open_worker().await;
        worker
            .handle(execute("s1", "provision_user", user_payload("ana")))
            .await
            .unwrap();

        let other = worker
            .handle(execute("s1", "provision_user", user_payload("bea")))
            .await;

        let Err(StepError::Permanent(message)) = other else {
            panic!("expected a permanent error, got {other:?}");
        };
        assert!(
            message.contains("was first used with the payload"),
            "{message}"
        );
        assert_eq!(worker.store().list_users().await.unwrap().len(), 1);
    }

    #[tokio::test]
    async fn transient_fault_count_survives_a_restart() {
        let (dir, worker) = open_worker().await;
        let request = execute(
            "s1",
            "provision_user",
            json!({"username": "ana", "email": "ana@example.com", "fault": {"transient": 2}}),
        );
        let first = worker.handle(request.clone()).await;
        drop(worker);

        let restarted = ProvisioningWorker::open(dir.path()).await.unwrap();
        let second = restarted.handle(request.clone()).await;
        let third = restarted.handle(request).await;

        assert!(first.is_err(), "{first:?}");
        assert_eq!(
            second,
            Err(StepError::transient(
                "injected transient fault in provision_user: attempt 2 of 2 failing attempts"
            ))
        );
        assert_eq!(third, Ok(json!({"user_id": 1, "username": "ana"})));
    }

    #[tokio::test]
    async fn transient_fault_counts_per_idempotency_key() {
        let (_dir, worker) = open_worker().await;
        let payload =
            json!({"username": "ana", "email": "ana@example.com", "fault": {"transient": 1}});
        let first_saga = execute("s1", "provision_user", payload.clone());
        let second_saga = execute("s2", "provision_user", payload);

        let first = worker.handle(first_saga).await;
        let second = worker.handle(second_saga).await;

        assert!(matches!(first, Err(StepError::Transient(_))), "{first:?}");
        assert!(matches!(second, Err(StepError::Transient(_))), "{second:?}");
    }

    #[tokio::test]
    async fn transient_fault_is_not_recorded() {
        let (_dir, worker) = open_worker().await;
        let request = execute(
            "s1",
            "create_quota",
            json!({"username": "ana", "storage_mb": 1, "ops_per_day": 1, "fault": {"transient": 1}}),
        );

        worker.handle(request).await.unwrap_err();

        let inbox = worker
            .store()
            .list_inbox(StepKind::CreateQuota)
            .await
            .unwrap();
        assert!(inbox.is_empty(), "{inbox:?}");
    }

    #[tokio::test]
    async fn permanent_fault_is_recorded_without_effect() {
        let (_dir, worker) = open_worker().await;
        let request = execute(
            "s1",
            "assign_permissions",
            json!({"username": "ana", "roles": ["admin"], "fault": {"permanent": true}}),
        );

        let first = worker.handle(request.clone()).await;
        let repeat = worker.handle(request).await;

        let message = permanent_message(first.clone());
        assert!(
            message.starts_with("injected permanent fault in assign_permissions"),
            "{message}"
        );
        assert_eq!(repeat, first);
        assert!(worker.store().list_permissions().await.unwrap().is_empty());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_sagas_all_succeed() {
        let (_dir, worker) = open_worker().await;

        let tasks: Vec<_> = (0..50)
            .map(|index| {
                let worker = worker.clone();
                tokio::spawn(async move {
                    let saga_id = format!("saga-{index}");
                    let username = format!("user{index}");
                    provision(&worker, &saga_id, &username).await;
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }

        assert_eq!(worker.store().list_users().await.unwrap().len(), 50);
        assert_eq!(worker.store().list_permissions().await.unwrap().len(), 100);
        assert_eq!(worker.store().list_quotas().await.unwrap().len(), 50);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_repeats_apply_once() {
        let (_dir, worker) = open_worker().await;
        let request = execute("s1", "provision_user", user_payload("ana"));

        let tasks: Vec<_> = (0..20)
            .map(|_| {
                let worker = worker.clone();
                let request = request.clone();
                tokio::spawn(async move { worker.handle(request).await })
            })
            .collect();
        let mut replies = Vec::new();
        for task in tasks {
            replies.push(task.await.unwrap());
        }

        assert!(
            replies
                .iter()
                .all(|reply| *reply == Ok(json!({"user_id": 1, "username": "ana"}))),
            "{replies:?}"
        );
        assert_eq!(worker.store().list_users().await.unwrap().len(), 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_workers_share_data_directory() {
        let dir = tempfile::tempdir().unwrap();
        let first = ProvisioningWorker::open(dir.path()).await.unwrap();
        let second = ProvisioningWorker::open(dir.path()).await.unwrap();

        let tasks: Vec<_> = (0..20)
            .map(|index| {
                let worker = if index % 2 == 0 {
                    first.clone()
                } else {
                    second.clone()
                };
                tokio::spawn(async move {
                    provision(&worker, &format!("saga-{index}"), &format!("user{index}")).await;
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }

        assert_eq!(first.store().list_users().await.unwrap().len(), 20);
        assert_eq!(second.store().list_quotas().await.unwrap().len(), 20);
    }
}
