use std::collections::HashMap;
use std::fmt::{self, Debug, Display};
use std::future::Future;
use std::hash::Hash;
use std::str::FromStr;

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::{RetryPolicy, SagaId, StepAction, StepError, idempotency_key};

/// A kind of saga: its input, the services its steps use, and its steps.
///
/// The [`saga!`](crate::saga!) macro implements this trait; implement it by
/// hand only when a saga's list of steps depends on its input.
pub trait SagaDefinition: Sized + Send + Sync + 'static {
    /// The saga's name in logs, such as `UserProvisioning`.
    const NAME: &'static str;

    /// The saga's arguments. They are written to the saga log, so that a
    /// saga can be resumed in another process.
    type Input: Serialize + DeserializeOwned + Send + Sync + 'static;

    /// The services steps need besides the input (clients, connections). It
    /// is not logged, and the caller supplies it again when resuming.
    type Context: Send + Sync + 'static;

    /// The stable names of the saga's steps.
    type Kind: StepKind;

    /// Returns the steps to run for `input`, in order. By default, every
    /// kind in declaration order.
    fn plan(input: &Self::Input) -> Vec<Self::Kind> {
        let _ = input;
        Self::Kind::ALL.to_vec()
    }

    /// Runs one attempt of the action of step `kind` and returns its output
    /// as JSON.
    fn execute(
        kind: Self::Kind,
        cx: &StepContext<'_, Self>,
    ) -> impl Future<Output = Result<Value, StepError>> + Send;

    /// Runs one attempt of the compensation of step `kind`. `output` is what
    /// the action returned, or `None` when its outcome is unknown.
    fn compensate(
        kind: Self::Kind,
        cx: &StepContext<'_, Self>,
        output: Option<&Value>,
    ) -> impl Future<Output = Result<(), StepError>> + Send;

    /// Returns the retry policy of step `kind`'s action, when it overrides
    /// the saga's.
    fn retry_policy(kind: Self::Kind) -> Option<RetryPolicy> {
        let _ = kind;
        None
    }

    /// Returns the retry policy of step `kind`'s compensation, when it
    /// overrides the saga's.
    fn compensation_policy(kind: Self::Kind) -> Option<RetryPolicy> {
        let _ = kind;
        None
    }
}

/// The names of a saga's steps: a `Copy` enum whose `Display` and `FromStr`
/// use stable snake_case names such as `provision_user`.
///
/// The names, not the Rust type names, are what the saga log stores, so a
/// renamed type keeps its history readable.
pub trait StepKind:
    Copy + Eq + Hash + Debug + Display + FromStr<Err = UnknownStepKind> + Send + Sync + 'static
{
    /// Every kind, in declaration order.
    const ALL: &'static [Self];

    /// Returns the stable name.
    fn name(self) -> &'static str;
}

/// The error of parsing a step kind from a name no step of the saga has.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown step {name:?} in saga {saga}; expected one of: {}", expected.join(", "))]
pub struct UnknownStepKind {
    /// The saga whose steps were searched.
    pub saga: &'static str,
    /// The name that matched no step.
    pub name: String,
    /// The names the saga has.
    pub expected: Vec<&'static str>,
}

/// One step of saga `D`: an action and the compensation that undoes it.
///
/// An action returns `Ok(output)` when its effect took place, or a
/// [`StepError`] saying whether to retry. It must be safe to repeat with the
/// same [`StepContext::idempotency_key`], because an attempt whose outcome
/// is unknown is retried, and so is one cut short by a crash. A compensation
/// must be safe to repeat too, and must succeed without changing anything
/// when the action never took effect.
pub trait Step<D: SagaDefinition>: Default + Send + Sync + 'static {
    /// The action's output. Later steps read it with
    /// [`StepContext::output`], and the compensation receives it.
    type Output: Serialize + DeserializeOwned + Send + Sync + 'static;

    /// Runs one attempt of the action.
    fn execute(
        &self,
        cx: &StepContext<'_, D>,
    ) -> impl Future<Output = Result<Self::Output, StepError>> + Send;

    /// Runs one attempt of the compensation. `output` is `None` when the
    /// action's outcome is unknown, so the compensation has to find out from
    /// the idempotency key whether there is anything to undo.
    fn compensate(
        &self,
        cx: &StepContext<'_, D>,
        output: Option<Self::Output>,
    ) -> impl Future<Output = Result<(), StepError>> + Send;

    /// Returns this step's action policy when it overrides the saga's.
    fn retry_policy(&self) -> Option<RetryPolicy> {
        None
    }

    /// Returns this step's compensation policy when it overrides the saga's.
    fn compensation_policy(&self) -> Option<RetryPolicy> {
        None
    }
}

/// Links a step type to its kind in saga `D`, so that
/// [`StepContext::output`] can find its output. The [`saga!`](crate::saga!)
/// macro implements it.
pub trait StepOf<D: SagaDefinition>: Step<D> {
    /// The step's kind.
    const KIND: D::Kind;
}

/// The view of its saga that an action or a compensation attempt gets.
pub struct StepContext<'a, D: SagaDefinition> {
    pub(crate) saga_id: SagaId,
    pub(crate) step: D::Kind,
    pub(crate) action: StepAction,
    pub(crate) attempt: u32,
    pub(crate) input: &'a D::Input,
    pub(crate) context: &'a D::Context,
    pub(crate) outputs: &'a HashMap<D::Kind, Value>,
}

impl<D: SagaDefinition> StepContext<'_, D> {
    /// Returns the id of the saga.
    pub fn saga_id(&self) -> SagaId {
        self.saga_id
    }

    /// Returns the step being run.
    pub fn step(&self) -> D::Kind {
        self.step
    }

    /// Returns whether this attempt executes or compensates the step.
    pub fn action(&self) -> StepAction {
        self.action
    }

    /// Returns the attempt number, counted from 1 across restarts.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// Returns `saga_id:step:action`, the same for every attempt of this
    /// action of this step, including attempts after a restart.
    pub fn idempotency_key(&self) -> String {
        idempotency_key(&self.saga_id.to_string(), self.step.name(), self.action)
    }

    /// Returns the saga's input.
    pub fn input(&self) -> &D::Input {
        self.input
    }

    /// Returns the services the caller supplied.
    pub fn context(&self) -> &D::Context {
        self.context
    }

    /// Returns the output of an earlier step `T`.
    ///
    /// # Errors
    ///
    /// A permanent [`StepError`] when `T` has not run before this step, or
    /// when its stored output does not decode as `T::Output`.
    pub fn output<T: StepOf<D>>(&self) -> Result<T::Output, StepError> {
        let Some(value) = self.outputs.get(&T::KIND) else {
            return Err(StepError::permanent(format!(
                "step {} has no output of step {}; a step can read only the steps declared before it",
                self.step,
                T::KIND
            )));
        };
        decode_output::<D, T::Output>(T::KIND, value)
    }
}

impl<D: SagaDefinition> fmt::Debug for StepContext<'_, D> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StepContext")
            .field("saga_id", &self.saga_id)
            .field("step", &self.step)
            .field("action", &self.action)
            .field("attempt", &self.attempt)
            .finish_non_exhaustive()
    }
}

/// Decodes a stored output of step `kind`.
pub(crate) fn decode_output<D: SagaDefinition, T: DeserializeOwned>(
    kind: D::Kind,
    value: &Value,
) -> Result<T, StepError> {
    serde_json::from_value(value.clone()).map_err(|error| {
        StepError::permanent(format!(
            "cannot decode the stored output of step {kind} in saga {}: {error}; \
             the step's Output type no longer matches what was logged",
            D::NAME
        ))
    })
}
