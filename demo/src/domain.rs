//! The provisioning domain: step names, request payloads and their rules.
//!
//! Each step of the provisioning saga sends one payload type to the worker.
//! The rules here are checked before any database is touched, and every
//! rejection is a [`StepError::Permanent`] whose message names the field, the
//! value and what is allowed.

use std::fmt;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use typed_saga::StepError;

/// The roles that `assign_permissions` may grant.
pub const KNOWN_ROLES: [&str; 4] = ["reader", "writer", "admin", "billing"];

/// The plan's maximum storage, in MiB (100 GiB).
pub const MAX_STORAGE_MB: i64 = 102_400;

/// The plan's maximum number of operations per day.
pub const MAX_OPS_PER_DAY: i64 = 1_000_000;

/// The username pattern, as shown in error messages.
pub const USERNAME_PATTERN: &str = "[a-z][a-z0-9_.-]{2,31}";

/// One of the three steps that the worker serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StepKind {
    /// Creates the user row in `users.db`.
    ProvisionUser,
    /// Grants roles in `permissions.db`.
    AssignPermissions,
    /// Creates the storage and operations quota in `quotas.db`.
    CreateQuota,
}

impl StepKind {
    /// Every step, in the order the saga runs them.
    pub const ALL: [StepKind; 3] = [
        StepKind::ProvisionUser,
        StepKind::AssignPermissions,
        StepKind::CreateQuota,
    ];

    /// Returns the stable name used on the wire, such as `provision_user`.
    pub fn name(self) -> &'static str {
        match self {
            StepKind::ProvisionUser => "provision_user",
            StepKind::AssignPermissions => "assign_permissions",
            StepKind::CreateQuota => "create_quota",
        }
    }

    /// Parses a step name, rejecting an unknown one with a permanent error
    /// that lists the known names.
    pub fn from_name(name: &str) -> Result<Self, StepError> {
        Self::ALL
            .into_iter()
            .find(|kind| kind.name() == name)
            .ok_or_else(|| {
                let known: Vec<&str> = Self::ALL.iter().map(|kind| kind.name()).collect();
                StepError::permanent(format!(
                    "unknown step {name:?}; known steps are {}",
                    known.join(", ")
                ))
            })
    }
}

impl fmt::Display for StepKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Failure injection carried by a payload, for demos and tests.
///
/// `{"permanent": true}` makes the action fail permanently, and
/// `{"transient": N}` makes its first N attempts with one idempotency key fail
/// transiently. With both, the N transient failures come first. Faults apply
/// to actions only, so a compensation never fails on purpose.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fault {
    /// Whether the action fails permanently.
    #[serde(default)]
    pub permanent: bool,
    /// How many attempts fail transiently before the action runs.
    #[serde(default)]
    pub transient: u32,
}

/// The payload of `provision_user`: the account to create.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewUser {
    /// The login name, unique in `users.db`.
    pub username: String,
    /// The contact address.
    pub email: String,
    /// Optional failure injection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fault: Option<Fault>,
}

/// The payload of `assign_permissions`: the roles to grant to a user.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PermissionGrant {
    /// The user who receives the roles.
    pub username: String,
    /// Role names from [`KNOWN_ROLES`]. A repeated role is granted once.
    pub roles: Vec<String>,
    /// Optional failure injection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fault: Option<Fault>,
}

/// The payload of `create_quota`: the limits of a user's plan.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuotaRequest {
    /// The user whose quota this is.
    pub username: String,
    /// Storage in MiB, from 1 to [`MAX_STORAGE_MB`].
    pub storage_mb: i64,
    /// Operations per day, from 1 to [`MAX_OPS_PER_DAY`].
    pub ops_per_day: i64,
    /// Optional failure injection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fault: Option<Fault>,
}

/// A payload of one step's action, with its rules.
pub trait StepPayload: DeserializeOwned {
    /// The step whose action takes this payload.
    const STEP: StepKind;

    /// Checks the domain rules, naming the field and value that break one.
    fn validate(&self) -> Result<(), StepError>;

    /// Returns the failure injection, if the payload carries one.
    fn fault(&self) -> Option<&Fault>;

    /// Checks the rules and then the injected permanent fault, so a payload
    /// that passes may take effect once its transient faults are spent.
    fn admit(&self) -> Result<(), StepError> {
        self.validate()?;

        match self.fault() {
            Some(fault) if fault.permanent => Err(StepError::permanent(format!(
                "injected permanent fault in {}; the request asked for it with \"fault\": {{\"permanent\": true}}, which `demo provision --fail-at` sets",
                Self::STEP
            ))),
            _ => Ok(()),
        }
    }
}

impl StepPayload for NewUser {
    const STEP: StepKind = StepKind::ProvisionUser;

    fn validate(&self) -> Result<(), StepError> {
        validate_username(&self.username)?;
        validate_email(&self.email)
    }

    fn fault(&self) -> Option<&Fault> {
        self.fault.as_ref()
    }
}

impl StepPayload for PermissionGrant {
    const STEP: StepKind = StepKind::AssignPermissions;

    fn validate(&self) -> Result<(), StepError> {
        validate_username(&self.username)?;

        if self.roles.is_empty() {
            return Err(StepError::permanent(format!(
                "invalid roles []: must list at least one of {}",
                KNOWN_ROLES.join(", ")
            )));
        }
        for role in &self.roles {
            if !KNOWN_ROLES.contains(&role.as_str()) {
                return Err(StepError::permanent(format!(
                    "invalid role {role:?}: must be one of {}",
                    KNOWN_ROLES.join(", ")
                )));
            }
        }
        Ok(())
    }

    fn fault(&self) -> Option<&Fault> {
        self.fault.as_ref()
    }
}

impl PermissionGrant {
    /// Returns the roles without repeats, in the order first requested.
    pub fn distinct_roles(&self) -> Vec<String> {
        let mut roles: Vec<String> = Vec::with_capacity(self.roles.len());
        for role in &self.roles {
            if !roles.contains(role) {
                roles.push(role.clone());
            }
        }
        roles
    }
}

impl StepPayload for QuotaRequest {
    const STEP: StepKind = StepKind::CreateQuota;

    fn validate(&self) -> Result<(), StepError> {
        validate_username(&self.username)?;
        validate_limit("storage_mb", self.storage_mb, MAX_STORAGE_MB)?;
        validate_limit("ops_per_day", self.ops_per_day, MAX_OPS_PER_DAY)
    }

    fn fault(&self) -> Option<&Fault> {
        self.fault.as_ref()
    }
}

/// The decoded payload of one step's action.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StepCommand {
    /// The action of `provision_user`.
    ProvisionUser(NewUser),
    /// The action of `assign_permissions`.
    AssignPermissions(PermissionGrant),
    /// The action of `create_quota`.
    CreateQuota(QuotaRequest),
}

impl StepCommand {
    /// Decodes the payload of `step`'s action.
    pub fn decode(step: StepKind, payload: Value) -> Result<Self, StepError> {
        match step {
            StepKind::ProvisionUser => decode_payload(payload).map(Self::ProvisionUser),
            StepKind::AssignPermissions => decode_payload(payload).map(Self::AssignPermissions),
            StepKind::CreateQuota => decode_payload(payload).map(Self::CreateQuota),
        }
    }

    /// Returns the step whose action this is.
    pub fn step(&self) -> StepKind {
        match self {
            Self::ProvisionUser(_) => StepKind::ProvisionUser,
            Self::AssignPermissions(_) => StepKind::AssignPermissions,
            Self::CreateQuota(_) => StepKind::CreateQuota,
        }
    }

    /// Returns the payload's failure injection, if any.
    pub fn fault(&self) -> Option<&Fault> {
        match self {
            Self::ProvisionUser(user) => user.fault(),
            Self::AssignPermissions(grant) => grant.fault(),
            Self::CreateQuota(quota) => quota.fault(),
        }
    }

    /// Checks the payload's rules and its injected permanent fault.
    pub fn admit(&self) -> Result<(), StepError> {
        match self {
            Self::ProvisionUser(user) => user.admit(),
            Self::AssignPermissions(grant) => grant.admit(),
            Self::CreateQuota(quota) => quota.admit(),
        }
    }
}

/// Decodes a step's JSON payload, rejecting a malformed one with a permanent
/// error that names the step and carries serde's message.
pub fn decode_payload<P: StepPayload>(payload: Value) -> Result<P, StepError> {
    serde_json::from_value(payload).map_err(|error| {
        StepError::permanent(format!("invalid payload for step {}: {error}", P::STEP))
    })
}

/// Checks a username against [`USERNAME_PATTERN`]: 3 to 32 characters, a
/// lowercase ASCII letter first, then lowercase letters, digits, `_`, `.` or `-`.
pub fn validate_username(username: &str) -> Result<(), StepError> {
    let mut chars = username.chars();
    let first_is_letter = chars.next().is_some_and(|c| c.is_ascii_lowercase());
    let rest_allowed =
        chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '_' | '.' | '-'));
    let length_allowed = (3..=32).contains(&username.len());

    if first_is_letter && rest_allowed && length_allowed {
        Ok(())
    } else {
        Err(StepError::permanent(format!(
            "invalid username {username:?}: must match {USERNAME_PATTERN}"
        )))
    }
}

/// Checks that an email address has one `@`, a non-empty local part, a domain
/// of non-empty labels with at least one dot, and no whitespace.
///
/// NOTE: this is a shape check, not RFC 5322. Quoted local parts and
/// addresses without a dot in the domain are rejected.
pub fn validate_email(email: &str) -> Result<(), StepError> {
    match email_problem(email) {
        None => Ok(()),
        Some(problem) => Err(StepError::permanent(format!(
            "invalid email {email:?}: {problem}; expected an address like ana@example.com"
        ))),
    }
}

/// Returns what is wrong with an email address, or `None` when its shape is
/// accepted.
fn email_problem(email: &str) -> Option<&'static str> {
    if email.chars().any(char::is_whitespace) {
        return Some("must not contain spaces");
    }

    let Some((local, domain)) = email.split_once('@') else {
        return Some("must contain one \"@\"");
    };
    if domain.contains('@') {
        return Some("must contain one \"@\"");
    }
    if local.is_empty() {
        return Some("the part before \"@\" is empty");
    }
    if !domain.contains('.') {
        return Some("the domain must contain a dot");
    }
    if domain.split('.').any(str::is_empty) {
        return Some("the domain has an empty label");
    }
    None
}

/// Checks that a quota limit is between 1 and the plan maximum.
fn validate_limit(field: &str, value: i64, max: i64) -> Result<(), StepError> {
    if (1..=max).contains(&value) {
        Ok(())
    } else {
        Err(StepError::permanent(format!(
            "invalid {field} {value}: must be between 1 and {max} (the plan maximum)"
        )))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// Returns the message of a permanent error, failing on any other result.
    fn permanent_message(result: Result<(), StepError>) -> String {
        match result {
            Err(StepError::Permanent(message)) => message,
            other => panic!("expected a permanent error, got {other:?}"),
        }
    }

    fn quota(storage_mb: i64, ops_per_day: i64) -> QuotaRequest {
        QuotaRequest {
            username: "ana".into(),
            storage_mb,
            ops_per_day,
            fault: None,
        }
    }

    fn grant(roles: &[&str]) -> PermissionGrant {
        PermissionGrant {
            username: "ana".into(),
            roles: roles.iter().map(|role| role.to_string()).collect(),
            fault: None,
        }
    }

    #[test]
    fn step_names_round_trip() {
        for kind in StepKind::ALL {
            assert_eq!(StepKind::from_name(kind.name()), Ok(kind));
        }
    }

    #[test]
    fn unknown_step_lists_known_names() {
        let message = permanent_message(StepKind::from_name("delete_user").map(|_| ()));

        assert_eq!(
            message,
            "unknown step \"delete_user\"; known steps are provision_user, assign_permissions, create_quota"
        );
    }

    #[test]
    fn username_accepts_valid_names() {
        for username in ["ana", "a12", "ana.b-c_d", &"a".repeat(32)] {
            assert_eq!(validate_username(username), Ok(()), "{username}");
        }
    }

    #[test]
    fn username_rejects_names_outside_pattern() {
        let too_long = "a".repeat(33);
        for username in [
            "Ana", "an", "1ana", "_ana", "ana!", "an a", "anä", "", &too_long,
        ] {
            let message = permanent_message(validate_username(username));

            assert_eq!(
                message,
                format!("invalid username {username:?}: must match [a-z][a-z0-9_.-]{{2,31}}")
            );
        }
    }

    #[test]
    fn username_error_matches_documented_example() {
        let message = permanent_message(validate_username("Ana"));

        assert_eq!(
            message,
            "invalid username \"Ana\": must match [a-z][a-z0-9_.-]{2,31}"
        );
    }

    #[test]
    fn email_accepts_plain_addresses() {
        for email in ["ana@example.com", "a.b+tag@mail.example.org", "x@y.z"] {
            assert_eq!(validate_email(email), Ok(()), "{email}");
        }
    }

    #[test]
    fn email_rejects_malformed_addresses() {
        let cases = [
            ("ana.example.com", "must contain one \"@\""),
            ("ana@b@example.com", "must contain one \"@\""),
            ("@example.com", "the part before \"@\" is empty"),
            ("ana@localhost", "the domain must contain a dot"),
            ("ana@example.", "the domain has an empty label"),
            ("ana@.com", "the domain has an empty label"),
            ("ana@example..com", "the domain has an empty label"),
            ("ana smith@example.com", "must not contain spaces"),
        ];

        for (email, problem) in cases {
            let message = permanent_message(validate_email(email));

            assert_eq!(
                message,
                format!(
                    "invalid email {email:?}: {problem}; expected an address like ana@example.com"
                )
            );
        }
    }

    #[test]
    fn roles_reject_unknown_role() {
        let message = permanent_message(grant(&["reader", "root"]).validate());

        assert_eq!(
            message,
            "invalid role \"root\": must be one of reader, writer, admin, billing"
        );
    }

    #[test]
    fn roles_reject_empty_list() {
        let message = permanent_message(grant(&[]).validate());

        assert_eq!(
            message,
            "invalid roles []: must list at least one of reader, writer, admin, billing"
        );
    }

    #[test]
    fn roles_accept_every_known_role() {
        assert_eq!(grant(&KNOWN_ROLES).validate(), Ok(()));
    }

    #[test]
    fn distinct_roles_drops_repeats_in_order() {
        let roles = grant(&["writer", "reader", "writer"]).distinct_roles();

        assert_eq!(roles, ["writer", "reader"]);
    }

    #[test]
    fn grant_checks_username() {
        let mut payload = grant(&["reader"]);
        payload.username = "Ana".into();

        let message = permanent_message(payload.validate());

        assert!(message.starts_with("invalid username \"Ana\""), "{message}");
    }

    #[test]
    fn quota_accepts_limits_up_to_plan_maximum() {
        assert_eq!(quota(1, 1).validate(), Ok(()));
        assert_eq!(quota(MAX_STORAGE_MB, MAX_OPS_PER_DAY).validate(), Ok(()));
    }

    #[test]
    fn quota_rejects_storage_outside_plan() {
        for storage_mb in [0, -5, MAX_STORAGE_MB + 1] {
            let message = permanent_message(quota(storage_mb, 10).validate());

            assert_eq!(
                message,
                format!(
                    "invalid storage_mb {storage_mb}: must be between 1 and 102400 (the plan maximum)"
                )
            );
        }
    }

    #[test]
    fn quota_rejects_ops_outside_plan() {
        for ops_per_day in [0, -1, MAX_OPS_PER_DAY + 1] {
            let message = permanent_message(quota(10, ops_per_day).validate());

            assert_eq!(
                message,
                format!(
                    "invalid ops_per_day {ops_per_day}: must be between 1 and 1000000 (the plan maximum)"
                )
            );
        }
    }

    #[test]
    fn permanent_fault_rejects_valid_payload() {
        let mut payload = quota(10, 10);
        payload.fault = Some(Fault {
            permanent: true,
            transient: 0,
        });

        let message = permanent_message(payload.admit());

        assert!(
            message.starts_with("injected permanent fault in create_quota"),
            "{message}"
        );
    }

    #[test]
    fn admit_checks_rules_before_fault() {
        let mut payload = quota(0, 10);
        payload.fault = Some(Fault {
            permanent: true,
            transient: 0,
        });

        let message = permanent_message(payload.admit());

        assert!(message.starts_with("invalid storage_mb 0"), "{message}");
    }

    #[test]
    fn decode_reads_fault_field() {
        let payload: NewUser = decode_payload(json!({
            "username": "ana",
            "email": "ana@example.com",
            "fault": {"transient": 2}
        }))
        .unwrap();

        assert_eq!(
            payload.fault,
            Some(Fault {
                permanent: false,
                transient: 2
            })
        );
    }

    #[test]
    fn decode_names_step_and_serde_message() {
        let message =
            permanent_message(decode_payload::<NewUser>(json!({"username": "ana"})).map(|_| ()));

        assert_eq!(
            message,
            "invalid payload for step provision_user: missing field `email`"
        );
    }

    #[test]
    fn decode_rejects_misspelled_fault() {
        let result = decode_payload::<NewUser>(json!({
            "username": "ana",
            "email": "ana@example.com",
            "fault": {"permanant": true}
        }));

        let message = permanent_message(result.map(|_| ()));

        assert!(message.contains("unknown field `permanant`"), "{message}");
    }
}
