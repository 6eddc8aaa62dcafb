use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

mod sealed {
    /// Keeps [`super::SagaState`] closed: only this crate's markers are states.
    pub trait Sealed {}
}

/// A lifecycle state of a [`Saga`](crate::Saga).
///
/// The trait is sealed: the six markers of this module are the only states,
/// so code outside the crate can neither add a state nor build a saga in one.
pub trait SagaState: sealed::Sealed + Send + Sync + 'static {
    /// The runtime value of this state.
    const STATUS: SagaStatus;
}

macro_rules! state_markers {
    ($($(#[$doc:meta])* $marker:ident => $status:ident;)+) => {
        $(
            $(#[$doc])*
            #[derive(Debug)]
            pub struct $marker {
                _private: (),
            }

            impl sealed::Sealed for $marker {}

            impl SagaState for $marker {
                const STATUS: SagaStatus = SagaStatus::$status;
            }
        )+
    };
}

state_markers! {
    /// Built and not started; no step has run.
    Pending => Pending;
    /// Executing its steps in order.
    Running => Running;
    /// Every step took effect.
    Succeeded => Succeeded;
    /// Stopped with effects that may remain, listing the steps still to
    /// compensate. A saga enters it when a step fails for good, before any
    /// compensation, and again when a compensation fails for good. Either
    /// way, [`Saga::compensate`](crate::Saga::compensate) undoes the rest.
    Failed => Failed;
    /// Undoing the steps that took effect, newest first.
    Compensating => Compensating;
    /// Every effect was undone.
    Compensated => Compensated;
}

/// The runtime mirror of the state markers, for logs, storage and display.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum SagaStatus {
    /// See [`Pending`].
    Pending,
    /// See [`Running`].
    Running,
    /// See [`Succeeded`].
    Succeeded,
    /// See [`Failed`].
    Failed,
    /// See [`Compensating`].
    Compensating,
    /// See [`Compensated`].
    Compensated,
}

impl SagaStatus {
    /// Every status, in lifecycle order.
    pub const ALL: [SagaStatus; 6] = [
        Self::Pending,
        Self::Running,
        Self::Succeeded,
        Self::Failed,
        Self::Compensating,
        Self::Compensated,
    ];

    /// Returns the upper-case name used in logs and storage, such as `RUNNING`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "PENDING",
            Self::Running => "RUNNING",
            Self::Succeeded => "SUCCEEDED",
            Self::Failed => "FAILED",
            Self::Compensating => "COMPENSATING",
            Self::Compensated => "COMPENSATED",
        }
    }

    /// Returns true for `Succeeded` and `Compensated`, the states in which
    /// nothing is left to do.
    pub fn is_final(self) -> bool {
        matches!(self, Self::Succeeded | Self::Compensated)
    }
}

impl fmt::Display for SagaStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

/// The error of parsing a [`SagaStatus`] from a name that is not one.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown saga status {0:?}; expected one of PENDING, RUNNING, SUCCEEDED, FAILED, COMPENSATING, COMPENSATED"
)]
pub struct UnknownSagaStatus(pub String);

impl FromStr for SagaStatus {
    type Err = UnknownSagaStatus;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|status| status.as_str() == name)
            .ok_or_else(|| UnknownSagaStatus(name.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_display_round_trips_through_from_str() {
        for status in SagaStatus::ALL {
            assert_eq!(status.to_string().parse::<SagaStatus>(), Ok(status));
        }
    }

    #[test]
    fn status_serializes_as_upper_case_name() {
        let json = serde_json::to_string(&SagaStatus::Compensating).unwrap();
        assert_eq!(json, "\"COMPENSATING\"");
    }

    #[test]
    fn unknown_status_name_is_rejected_with_the_name() {
        let error = "running".parse::<SagaStatus>().unwrap_err();
        assert!(error.to_string().contains("\"running\""), "{error}");
    }

    #[test]
    fn state_markers_are_zero_sized() {
        assert_eq!(std::mem::size_of::<Succeeded>(), 0);
        assert_eq!(std::mem::size_of::<Compensated>(), 0);
    }

    #[test]
    fn markers_map_to_their_status() {
        assert_eq!(Pending::STATUS, SagaStatus::Pending);
        assert_eq!(Failed::STATUS, SagaStatus::Failed);
    }
}
