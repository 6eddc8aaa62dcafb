//! The provisioning demo of typed-saga: user accounts created by a saga whose
//! steps run as RPCs over RabbitMQ, or in-process without a broker.
//!
//! A [`UserProvisioning`](saga::UserProvisioning) saga runs three steps,
//! `provision_user`, `assign_permissions` and `create_quota`. Each step sends
//! one [`StepRequest`](typed_saga::StepRequest) through a
//! [`Transport`](transport::Transport) to the
//! [`ProvisioningWorker`](worker::ProvisioningWorker), which applies it to one
//! of three SQLite databases (`users.db`, `permissions.db`, `quotas.db`) at
//! most once per idempotency key. When a step fails for good, the saga sends
//! the compensations of the steps that took effect, newest first.
//!
//! The `demo` binary is a thin shell around [`cli::run`]:
//!
//! - `demo` runs a tour of three sample users ([`tour`]);
//! - `demo worker` serves the queue until stopped ([`serve`]);
//! - `demo provision` provisions one user, or each row of a CSV file
//!   ([`provision`], [`batch`]).
//!
//! Payloads can carry injected faults ([`domain::Fault`]), so that a step
//! fails transiently a number of times, or permanently.

pub mod batch;
pub mod cli;
pub mod domain;
pub mod history;
pub mod provision;
pub mod report;
pub mod saga;
pub mod saga_log;
pub mod serve;
pub mod store;
pub mod tour;
pub mod transport;
pub mod worker;
