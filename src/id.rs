use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The unique id of one saga, a random UUID unless the caller picks one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SagaId(Uuid);

impl SagaId {
    /// Builds a random id (UUID version 4).
    pub fn random() -> Self {
        Self(Uuid::new_v4())
    }

    /// Wraps an existing UUID, for example one chosen by the caller so that
    /// submitting the same request twice starts one saga.
    pub fn from_uuid(uuid: Uuid) -> Self {
        Self(uuid)
    }

    /// Returns the UUID.
    pub fn as_uuid(&self) -> Uuid {
        self.0
    }
}

impl fmt::Display for SagaId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

/// The error of parsing a [`SagaId`] from text that is not a UUID.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid saga id {text:?}: {reason}; expected a UUID such as 67e55044-10b1-426f-9247-bb680e5fe0c8"
)]
pub struct InvalidSagaId {
    text: String,
    reason: String,
}

impl FromStr for SagaId {
    type Err = InvalidSagaId;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Uuid::parse_str(text)
            .map(Self)
            .map_err(|error| InvalidSagaId {
                text: text.to_owned(),
                reason: error.to_string(),
            })
    }
}
