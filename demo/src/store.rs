//! The worker's storage: `users.db`, `permissions.db` and `quotas.db` in one
//! data directory, each with an idempotency inbox.
//!
//! Every request is applied in one `BEGIN IMMEDIATE` transaction that also
//! records its reply under the request's idempotency key, so a repeated
//! request returns the first reply and changes nothing. Rows carry the saga
//! that created them, and a compensation deletes only that saga's rows.
//! Every SQLite call runs on tokio's blocking thread pool.

mod database;
mod faults;
mod inbox;
mod permissions;
mod quotas;
mod users;

use std::error::Error;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rusqlite::ErrorCode;
use serde::Serialize;
use serde_json::Value;
use tokio::task::JoinError;
use typed_saga::{StepAction, StepError, StepReply};

use crate::domain::{StepCommand, StepKind};
use database::Database;

/// The three databases of the provisioning worker. Cloning is cheap and
/// clones share connections.
#[derive(Clone, Debug)]
pub struct Store {
    users: Arc<Database>,
    permissions: Arc<Database>,
    quotas: Arc<Database>,
}

/// The ids of one request, as the inbox records them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestIds {
    /// The saga that sent the request. Rows created by it carry this id.
    pub saga_id: String,
    /// The key under which the reply is recorded.
    pub idempotency_key: String,
    /// The request's payload as compact JSON with sorted keys. A repeated
    /// execute request must carry the same payload as the first.
    pub payload: String,
}

/// The reply to a request, and whether it came from the inbox.
#[derive(Clone, Debug, PartialEq)]
pub struct StoredReply {
    /// The step's output or its error.
    pub result: Result<Value, StepError>,
    /// True when the key had been seen and this is the recorded first reply.
    pub replayed: bool,
}

/// A row of `users.db`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct UserRow {
    /// The id assigned by SQLite, never reused.
    pub user_id: i64,
    /// The unique login name.
    pub username: String,
    /// The contact address.
    pub email: String,
    /// The saga that created the user.
    pub saga_id: String,
    /// When the row was written, as UTC ISO 8601.
    pub created_at: String,
}

/// A row of `permissions.db`: one role held by one user.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PermissionRow {
    /// The user who has the role.
    pub username: String,
    /// The role name.
    pub role: String,
    /// The saga that first granted the role.
    pub saga_id: String,
    /// When the row was written, as UTC ISO 8601.
    pub granted_at: String,
}

/// A row of `quotas.db`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct QuotaRow {
    /// The id assigned by SQLite, never reused.
    pub quota_id: i64,
    /// The user the quota limits.
    pub username: String,
    /// Storage in MiB.
    pub storage_mb: i64,
    /// Operations per day.
    pub ops_per_day: i64,
    /// The saga that created the quota.
    pub saga_id: String,
    /// When the row was written, as UTC ISO 8601.
    pub created_at: String,
}

/// A recorded reply in one database's inbox.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct InboxRow {
    /// The request's idempotency key.
    pub idempotency_key: String,
    /// The saga that sent the request.
    pub saga_id: String,
    /// The step name.
    pub step: String,
    /// `execute` or `compensate`.
    pub action: String,
    /// The reply returned to the first request and to every repeat.
    pub reply: StepReply,
    /// When the reply was recorded, as UTC ISO 8601.
    pub recorded_at: String,
}

/// The presence of one username's rows in each database.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct UsernamePresence {
    /// Whether `users.db` has the user.
    pub users: bool,
    /// Whether `permissions.db` has at least one role for the user.
    pub permissions: bool,
    /// Whether `quotas.db` has a quota for the user.
    pub quotas: bool,
}

impl UsernamePresence {
    /// Returns true when no database has a row for the username.
    pub fn is_absent(&self) -> bool {
        !self.users && !self.permissions && !self.quotas
    }

    /// Returns true when every database has a row for the username.
    pub fn is_complete(&self) -> bool {
        self.users && self.permissions && self.quotas
    }
}

impl Store {
    /// Opens the three databases in `data_dir`, creating the directory, the
    /// files and their tables where missing.
    pub async fn open(data_dir: &Path) -> Result<Self, StoreError> {
        tokio::fs::create_dir_all(data_dir)
            .await
            .map_err(|source| StoreError::CreateDir {
                path: data_dir.to_path_buf(),
                source,
            })?;

        let users_schema = format!("{}{}{}", users::SCHEMA, inbox::SCHEMA, faults::SCHEMA);
        let permissions_schema =
            format!("{}{}{}", permissions::SCHEMA, inbox::SCHEMA, faults::SCHEMA);
        let quotas_schema = format!("{}{}{}", quotas::SCHEMA, inbox::SCHEMA, faults::SCHEMA);

        Ok(Self {
            users: open_database(data_dir, "users.db", users_schema).await?,
            permissions: open_database(data_dir, "permissions.db", permissions_schema).await?,
            quotas: open_database(data_dir, "quotas.db", quotas_schema).await?,
        })
    }

    /// Applies a step's action once per idempotency key.
    ///
    /// A payload that breaks a domain rule, a username or quota that already
    /// exists, and an execute request that arrives after the same step's
    /// compensation are recorded as permanent errors and change nothing else.
    pub async fn execute(
        &self,
        ids: RequestIds,
        command: StepCommand,
    ) -> Result<StoredReply, StoreError> {
        let step = command.step();

        self.database(step)
            .run(move |connection| {
                inbox::apply_once(connection, &ids, step, StepAction::Execute, |transaction| {
                    if let Err(rejection) = command.admit() {
                        return Ok(Err(rejection));
                    }

                    match &command {
                        StepCommand::ProvisionUser(user) => {
                            users::insert(transaction, &ids.saga_id, user)
                        }
                        StepCommand::AssignPermissions(grant) => {
                            permissions::grant(transaction, &ids.saga_id, grant)
                        }
                        StepCommand::CreateQuota(quota) => {
                            quotas::insert(transaction, &ids.saga_id, quota)
                        }
                    }
                })
            })
            .await
    }

    /// Undoes a step's action once per idempotency key, by deleting the rows
    /// of `step` that this saga created. Rows of other sagas stay, and a
    /// compensation of an action that never took effect succeeds. Either way
    /// the output is `null`.
    pub async fn compensate(
        &self,
        ids: RequestIds,
        step: StepKind,
    ) -> Result<StoredReply, StoreError> {
        self.database(step)
            .run(move |connection| {
                inbox::apply_once(
                    connection,
                    &ids,
                    step,
                    StepAction::Compensate,
                    |transaction| {
                        let deleted = match step {
                            StepKind::ProvisionUser => {
                                users::delete_by_saga(transaction, &ids.saga_id)?
                            }
                            StepKind::AssignPermissions => {
                                permissions::delete_by_saga(transaction, &ids.saga_id)?
                            }
                            StepKind::CreateQuota => {
                                quotas::delete_by_saga(transaction, &ids.saga_id)?
                            }
                        };
                        tracing::debug!(deleted, "compensation deleted the saga's rows");

                        Ok(Ok(Value::Null))
                    },
                )
            })
            .await
    }

    /// Counts one more injected transient failure of `step` for
    /// `idempotency_key`, unless `planned` failures were injected already.
    /// Returns the number of this failure, or `None` when the request
    /// should run. The count is stored in the step's database, so a worker
    /// restart does not start it again.
    pub async fn inject_transient_fault(
        &self,
        step: StepKind,
        idempotency_key: &str,
        planned: u32,
    ) -> Result<Option<u32>, StoreError> {
        let key = idempotency_key.to_owned();
        self.database(step)
            .run(move |connection| faults::inject(connection, &key, planned))
            .await
    }

    /// Lists every user, by id.
    pub async fn list_users(&self) -> Result<Vec<UserRow>, StoreError> {
        self.users.run(|connection| users::list(connection)).await
    }

    /// Lists every granted role, by username and role.
    pub async fn list_permissions(&self) -> Result<Vec<PermissionRow>, StoreError> {
        self.permissions
            .run(|connection| permissions::list(connection))
            .await
    }

    /// Lists every quota, by id.
    pub async fn list_quotas(&self) -> Result<Vec<QuotaRow>, StoreError> {
        self.quotas.run(|connection| quotas::list(connection)).await
    }

    /// Lists the recorded replies of the database that serves `step`,
    /// oldest first.
    pub async fn list_inbox(&self, step: StepKind) -> Result<Vec<InboxRow>, StoreError> {
        self.database(step)
            .run(|connection| inbox::list(connection))
            .await
    }

    /// Checks which databases hold rows for `username`.
    pub async fn username_presence(&self, username: &str) -> Result<UsernamePresence, StoreError> {
        let (in_users, in_permissions, in_quotas) = (
            username.to_owned(),
            username.to_owned(),
            username.to_owned(),
        );

        let (users, permissions, quotas) = tokio::try_join!(
            self.users
                .run(move |connection| users::contains(connection, &in_users)),
            self.permissions
                .run(move |connection| permissions::contains(connection, &in_permissions)),
            self.quotas
                .run(move |connection| quotas::contains(connection, &in_quotas)),
        )?;

        Ok(UsernamePresence {
            users,
            permissions,
            quotas,
        })
    }

    fn database(&self, step: StepKind) -> &Arc<Database> {
        match step {
            StepKind::ProvisionUser => &self.users,
            StepKind::AssignPermissions => &self.permissions,
            StepKind::CreateQuota => &self.quotas,
        }
    }
}

/// Opens one database on a blocking thread.
async fn open_database(
    data_dir: &Path,
    name: &'static str,
    schema: String,
) -> Result<Arc<Database>, StoreError> {
    let dir = data_dir.to_path_buf();

    let task = tokio::task::spawn_blocking(move || Database::open_blocking(&dir, name, &schema));
    let database = task.await.map_err(|source| StoreError::Task {
        database: name,
        source,
    })??;

    Ok(Arc::new(database))
}

/// A failure of the storage layer, naming the database involved.
#[derive(Debug)]
#[non_exhaustive]
pub enum StoreError {
    /// The data directory could not be created.
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// The file system's error.
        source: io::Error,
    },
    /// A SQLite call failed.
    Sqlite {
        /// The file name, such as `users.db`.
        database: &'static str,
        /// The SQLite error.
        source: rusqlite::Error,
    },
    /// SQLite did not switch a database to WAL journal mode.
    NotWal {
        /// The file name, such as `users.db`.
        database: &'static str,
        /// The journal mode that SQLite kept.
        mode: String,
    },
    /// The blocking task that ran a SQLite call panicked or was cancelled.
    Task {
        /// The file name, such as `users.db`.
        database: &'static str,
        /// Tokio's error.
        source: JoinError,
    },
}

impl StoreError {
    /// Returns true when SQLite reported the database busy or locked, so
    /// another attempt may succeed.
    pub fn is_busy(&self) -> bool {
        match self {
            Self::Sqlite { source, .. } => matches!(
                source.sqlite_error_code(),
                Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked)
            ),
            _ => false,
        }
    }
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::CreateDir { path, .. } => {
                write!(f, "failed to create data directory {}", path.display())
            }
            Self::Sqlite { database, .. } => write!(f, "sqlite call on {database} failed"),
            Self::NotWal { database, mode } => write!(
                f,
                "failed to switch {database} to WAL journal mode: sqlite kept {mode:?}; put the data directory on a local file system"
            ),
            Self::Task { database, .. } => {
                write!(f, "blocking task for {database} did not finish")
            }
        }
    }
}

impl Error for StoreError {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        match self {
            Self::CreateDir { source, .. } => Some(source),
            Self::Sqlite { source, .. } => Some(source),
            Self::NotWal { .. } => None,
            Self::Task { source, .. } => Some(source),
        }
    }
}

impl From<StoreError> for StepError {
    /// Maps a busy or locked database to a transient error, a blocking task
    /// that panicked to an unknown outcome (it may have died after its
    /// commit), and every other failure to a permanent error.
    fn from(error: StoreError) -> Self {
        let message = match error.source() {
            Some(source) => format!("{error}: {source}"),
            None => error.to_string(),
        };

        if error.is_busy() {
            StepError::transient(message)
        } else if matches!(error, StoreError::Task { .. }) {
            StepError::unknown(message)
        } else {
            StepError::permanent(message)
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use tempfile::TempDir;

    use super::*;
    use crate::domain::{NewUser, PermissionGrant, QuotaRequest};

    async fn open_store() -> (TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).await.unwrap();
        (dir, store)
    }

    fn ids(saga_id: &str, key: &str) -> RequestIds {
        RequestIds {
            saga_id: saga_id.into(),
            idempotency_key: key.into(),
            payload: "{}".into(),
        }
    }

    fn new_user(username: &str) -> StepCommand {
        StepCommand::ProvisionUser(NewUser {
            username: username.into(),
            email: format!("{username}@example.com"),
            fault: None,
        })
    }

    fn grant(username: &str, roles: &[&str]) -> StepCommand {
        StepCommand::AssignPermissions(PermissionGrant {
            username: username.into(),
            roles: roles.iter().map(|role| role.to_string()).collect(),
            fault: None,
        })
    }

    fn quota(username: &str) -> StepCommand {
        StepCommand::CreateQuota(QuotaRequest {
            username: username.into(),
            storage_mb: 2048,
            ops_per_day: 10_000,
            fault: None,
        })
    }

    #[tokio::test]
    async fn open_creates_directory_and_files() {
        let parent = tempfile::tempdir().unwrap();
        let data_dir = parent.path().join("nested").join("data");

        Store::open(&data_dir).await.unwrap();

        for name in ["users.db", "permissions.db", "quotas.db"] {
            assert!(data_dir.join(name).is_file(), "{name} is missing");
        }
    }

    #[tokio::test]
    async fn open_sets_wal_journal_mode() {
        let (dir, _store) = open_store().await;

        for name in ["users.db", "permissions.db", "quotas.db"] {
            let connection = rusqlite::Connection::open(dir.path().join(name)).unwrap();
            let mode: String = connection
                .query_row("PRAGMA journal_mode", [], |row| row.get(0))
                .unwrap();

            assert_eq!(mode, "wal", "{name}");
        }
    }

    #[tokio::test]
    async fn open_fails_on_file_in_place_of_directory() {
        let parent = tempfile::tempdir().unwrap();
        let file = parent.path().join("not-a-dir");
        std::fs::write(&file, "x").unwrap();

        let error = Store::open(&file).await.unwrap_err();

        assert!(
            matches!(error, StoreError::CreateDir { .. }),
            "unexpected error: {error:?}"
        );
    }

    #[tokio::test]
    async fn lists_return_every_row() {
        let (_dir, store) = open_store().await;

        store
            .execute(ids("s1", "k1"), new_user("ana"))
            .await
            .unwrap();
        store
            .execute(ids("s1", "k2"), grant("ana", &["writer", "reader"]))
            .await
            .unwrap();
        store.execute(ids("s1", "k3"), quota("ana")).await.unwrap();

        let users = store.list_users().await.unwrap();
        let permissions = store.list_permissions().await.unwrap();
        let quotas = store.list_quotas().await.unwrap();

        assert_eq!(users.len(), 1);
        assert_eq!(users[0].username, "ana");
        assert_eq!(users[0].email, "ana@example.com");
        assert_eq!(users[0].saga_id, "s1");
        let roles: Vec<&str> = permissions.iter().map(|row| row.role.as_str()).collect();
        assert_eq!(roles, ["reader", "writer"]);
        assert!(permissions.iter().all(|row| row.saga_id == "s1"));
        assert_eq!(quotas.len(), 1);
        assert_eq!(quotas[0].storage_mb, 2048);
        assert_eq!(quotas[0].ops_per_day, 10_000);
    }

    #[tokio::test]
    async fn presence_reports_each_database() {
        let (_dir, store) = open_store().await;

        assert!(store.username_presence("ana").await.unwrap().is_absent());

        store
            .execute(ids("s1", "k1"), new_user("ana"))
            .await
            .unwrap();
        let partial = store.username_presence("ana").await.unwrap();
        assert_eq!(
            partial,
            UsernamePresence {
                users: true,
                permissions: false,
                quotas: false
            }
        );

        store
            .execute(ids("s1", "k2"), grant("ana", &["reader"]))
            .await
            .unwrap();
        store.execute(ids("s1", "k3"), quota("ana")).await.unwrap();
        assert!(store.username_presence("ana").await.unwrap().is_complete());
    }

    #[tokio::test]
    async fn inbox_records_execute_and_compensation() {
        let (_dir, store) = open_store().await;

        store
            .execute(ids("s1", "k1"), new_user("ana"))
            .await
            .unwrap();
        store
            .compensate(ids("s1", "k2"), StepKind::ProvisionUser)
            .await
            .unwrap();

        let inbox = store.list_inbox(StepKind::ProvisionUser).await.unwrap();
        let actions: Vec<&str> = inbox.iter().map(|row| row.action.as_str()).collect();
        assert_eq!(actions, ["execute", "compensate"]);
        assert_eq!(
            inbox[0].reply,
            StepReply::Ok {
                output: json!({"user_id": 1, "username": "ana"})
            }
        );
        assert_eq!(
            inbox[1].reply,
            StepReply::Ok {
                output: Value::Null
            }
        );
    }

    #[tokio::test]
    async fn inbox_survives_reopen() {
        let (dir, store) = open_store().await;
        let first = store
            .execute(ids("s1", "k1"), new_user("ana"))
            .await
            .unwrap();
        drop(store);

        let reopened = Store::open(dir.path()).await.unwrap();
        let repeat = reopened
            .execute(ids("s1", "k1"), new_user("ana"))
            .await
            .unwrap();

        assert_eq!(repeat.result, first.result);
        assert!(repeat.replayed);
        assert_eq!(reopened.list_users().await.unwrap().len(), 1);
    }

    #[tokio::test]
    async fn execute_after_compensation_is_rejected() {
        let (_dir, store) = open_store().await;
        store
            .compensate(
                ids("s1", "s1:provision_user:compensate"),
                StepKind::ProvisionUser,
            )
            .await
            .unwrap();

        let late = store
            .execute(ids("s1", "s1:provision_user:execute"), new_user("ana"))
            .await
            .unwrap();

        assert_eq!(
            late.result,
            Err(StepError::permanent(
                "step provision_user of saga s1 was already compensated; an execute request that arrives after its compensation has no effect"
            ))
        );
        assert!(store.list_users().await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn key_reused_by_other_saga_is_rejected() {
        let (_dir, store) = open_store().await;
        store
            .execute(ids("s1", "shared"), new_user("ana"))
            .await
            .unwrap();

        let reused = store
            .execute(ids("s2", "shared"), new_user("bob"))
            .await
            .unwrap();

        assert_eq!(
            reused.result,
            Err(StepError::permanent(
                "idempotency key \"shared\" was already used by saga s1 for provision_user execute; send a new key for a different request"
            ))
        );
        assert!(!reused.replayed);
        assert!(!store.username_presence("bob").await.unwrap().users);
    }

    #[tokio::test]
    async fn grant_keeps_first_saga_of_shared_role() {
        let (_dir, store) = open_store().await;
        store
            .execute(ids("s1", "k1"), grant("ana", &["reader"]))
            .await
            .unwrap();
        store
            .execute(ids("s2", "k2"), grant("ana", &["reader", "writer"]))
            .await
            .unwrap();

        store
            .compensate(ids("s2", "k3"), StepKind::AssignPermissions)
            .await
            .unwrap();

        let permissions = store.list_permissions().await.unwrap();
        assert_eq!(permissions.len(), 1);
        assert_eq!(permissions[0].role, "reader");
        assert_eq!(permissions[0].saga_id, "s1");
    }

    #[tokio::test]
    async fn second_quota_for_username_is_rejected() {
        let (_dir, store) = open_store().await;
        store.execute(ids("s1", "k1"), quota("ana")).await.unwrap();

        let second = store.execute(ids("s2", "k2"), quota("ana")).await.unwrap();

        assert_eq!(
            second.result,
            Err(StepError::permanent(
                "quota for username \"ana\" already exists; a user has one quota"
            ))
        );
        assert_eq!(store.list_quotas().await.unwrap().len(), 1);
    }

    #[test]
    fn busy_sqlite_error_maps_to_transient() {
        let busy = rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_BUSY),
            Some("database is locked".into()),
        );
        let error = StoreError::Sqlite {
            database: "users.db",
            source: busy,
        };

        assert_eq!(
            StepError::from(error),
            StepError::transient("sqlite call on users.db failed: database is locked")
        );
    }

    #[test]
    fn locked_sqlite_error_maps_to_transient() {
        let locked = rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_LOCKED),
            None,
        );
        let error = StoreError::Sqlite {
            database: "quotas.db",
            source: locked,
        };

        assert!(matches!(StepError::from(error), StepError::Transient(_)));
    }

    #[test]
    fn other_sqlite_error_maps_to_permanent() {
        let full = rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_FULL),
            None,
        );
        let error = StoreError::Sqlite {
            database: "users.db",
            source: full,
        };

        assert!(matches!(StepError::from(error), StepError::Permanent(_)));
    }
}
