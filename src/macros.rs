/// Declares a saga: its input, its context and its steps, in order.
///
/// One invocation generates:
///
/// - the definition type (a unit struct implementing
///   [`SagaDefinition`](crate::SagaDefinition)), to be used as
///   `Saga::<Definition, _>`;
/// - an enum over the step types, dispatched with a `match`, whose
///   `from_kind` is the factory that builds a step from its kind;
/// - a kind enum whose variants are named after the step types, with the
///   stable snake_case names given in the invocation for `Display`,
///   `FromStr` (an unknown name is an [`UnknownStepKind`](crate::UnknownStepKind)
///   listing the known ones) and the saga log;
/// - a [`StepOf`](crate::StepOf) impl per step, so that a step can read an
///   earlier step's output with [`StepContext::output`](crate::StepContext::output).
///
/// # Example
///
/// ```
/// use std::sync::Arc;
///
/// use typed_saga::{Saga, SagaOutcome, Step, StepContext, StepError};
///
/// #[derive(Default)]
/// struct Reserve;
///
/// impl Step<Order> for Reserve {
///     type Output = u32;
///
///     async fn execute(&self, cx: &StepContext<'_, Order>) -> Result<u32, StepError> {
///         Ok(*cx.input() * 2)
///     }
///
///     async fn compensate(&self, _: &StepContext<'_, Order>, _: Option<u32>) -> Result<(), StepError> {
///         Ok(())
///     }
/// }
///
/// #[derive(Default)]
/// struct Charge;
///
/// impl Step<Order> for Charge {
///     type Output = String;
///
///     async fn execute(&self, cx: &StepContext<'_, Order>) -> Result<String, StepError> {
///         let reserved = cx.output::<Reserve>()?;
///         Ok(format!("charged for {reserved} items"))
///     }
///
///     async fn compensate(&self, _: &StepContext<'_, Order>, _: Option<String>) -> Result<(), StepError> {
///         Ok(())
///     }
/// }
///
/// typed_saga::saga! {
///     /// Reserves stock, then charges for it.
///     pub saga Order {
///         input: u32,
///         context: (),
///         step_enum: OrderStep,
///         kind_enum: OrderStepKind,
///         steps: [
///             reserve => Reserve,
///             charge => Charge,
///         ],
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// assert_eq!(OrderStepKind::Charge.to_string(), "charge");
/// assert_eq!("reserve".parse::<OrderStepKind>(), Ok(OrderStepKind::Reserve));
/// assert!(matches!(OrderStep::from_kind(OrderStepKind::Reserve), OrderStep::Reserve(_)));
///
/// let outcome = Saga::<Order, _>::new(21, Arc::new(())).run_to_end().await.unwrap();
/// let SagaOutcome::Succeeded(saga) = outcome else { panic!("the saga did not succeed") };
/// assert_eq!(saga.output::<Charge>().unwrap(), "charged for 42 items");
/// # }
/// ```
///
/// # Limitations
///
/// - Each step type is written as a single identifier, because it also names
///   the kind's variant; bring types from other modules in with `use`.
/// - The factory builds steps with `Default`, so a step keeps its
///   configuration and clients in the saga's context, not in its fields.
/// - A step type implements [`Step`](crate::Step) for one saga per
///   invocation; the same type may appear in several sagas, but only once
///   in each.
/// - The generated types are as visible as the saga (`pub saga` makes them
///   `pub`), so the input and context types must be at least as visible:
///   a private context in a `pub saga` is error E0446.
/// - The stable names are part of the saga log's format: renaming one makes
///   the logged histories that use the old name unreadable.
///
/// # Misuse that does not compile
///
/// A type that is not a step of the saga:
///
/// ```compile_fail,E0277
/// #[derive(Default)]
/// struct NotAStep;
///
/// typed_saga::saga! {
///     pub saga Broken {
///         input: (),
///         context: (),
///         step_enum: BrokenStep,
///         kind_enum: BrokenStepKind,
///         steps: [not_a_step => NotAStep],
///     }
/// }
/// # fn main() {}
/// ```
///
/// The same step type twice:
///
/// ```compile_fail,E0428
/// # use typed_saga::{Step, StepContext, StepError};
/// #[derive(Default)]
/// struct Ping;
///
/// impl Step<Twice> for Ping {
///     type Output = ();
///     async fn execute(&self, _: &StepContext<'_, Twice>) -> Result<(), StepError> { Ok(()) }
///     async fn compensate(&self, _: &StepContext<'_, Twice>, _: Option<()>) -> Result<(), StepError> { Ok(()) }
/// }
///
/// typed_saga::saga! {
///     pub saga Twice {
///         input: (),
///         context: (),
///         step_enum: TwiceStep,
///         kind_enum: TwiceStepKind,
///         steps: [ping => Ping, ping_again => Ping],
///     }
/// }
/// # fn main() {}
/// ```
#[macro_export]
macro_rules! saga {
    (
        $(#[$meta:meta])*
        $vis:vis saga $saga:ident {
            input: $input:ty,
            context: $context:ty,
            step_enum: $step_enum:ident,
            kind_enum: $kind_enum:ident,
            steps: [ $($name:ident => $step:ident),+ $(,)? ] $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
        $vis struct $saga;

        #[doc = concat!("A step of [`", stringify!($saga), "`], built by `from_kind`.")]
        $vis enum $step_enum {
            $(
                #[doc = concat!("The `", stringify!($name), "` step.")]
                $step($step),
            )+
        }

        #[doc = concat!("The stable names of the steps of [`", stringify!($saga), "`].")]
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        $vis enum $kind_enum {
            $(
                #[doc = concat!("`", stringify!($name), "`")]
                $step,
            )+
        }

        impl ::core::fmt::Display for $kind_enum {
            fn fmt(&self, f: &mut ::core::fmt::Formatter<'_>) -> ::core::fmt::Result {
                f.write_str($crate::StepKind::name(*self))
            }
        }

        impl ::core::str::FromStr for $kind_enum {
            type Err = $crate::UnknownStepKind;

            fn from_str(name: &str) -> ::core::result::Result<Self, Self::Err> {
                $(
                    if name == stringify!($name) {
                        return Ok(Self::$step);
                    }
                )+
                Err($crate::UnknownStepKind {
                    saga: stringify!($saga),
                    name: name.to_owned(),
                    expected: vec![$(stringify!($name)),+],
                })
            }
        }

        impl $crate::StepKind for $kind_enum {
            const ALL: &'static [Self] = &[$(Self::$step),+];

            fn name(self) -> &'static str {
                match self {
                    $(Self::$step => stringify!($name),)+
                }
            }
        }

        impl $step_enum {
            /// Builds the step of `kind` with its `Default`.
            $vis fn from_kind(kind: $kind_enum) -> Self {
                match kind {
                    $($kind_enum::$step => Self::$step(<$step as ::core::default::Default>::default()),)+
                }
            }

            /// Returns this step's kind.
            $vis fn kind(&self) -> $kind_enum {
                match self {
                    $(Self::$step(_) => $kind_enum::$step,)+
                }
            }

            /// Runs one attempt of this step's action and encodes its output.
            $vis async fn execute(
                &self,
                cx: &$crate::StepContext<'_, $saga>,
            ) -> ::core::result::Result<$crate::__private::Value, $crate::StepError> {
                match self {
                    $(
                        Self::$step(step) => $crate::__private::encode_output(
                            $kind_enum::$step,
                            <$step as $crate::Step<$saga>>::execute(step, cx).await,
                        ),
                    )+
                }
            }

            /// Decodes `output` and runs one attempt of this step's
            /// compensation.
            $vis async fn compensate(
                &self,
                cx: &$crate::StepContext<'_, $saga>,
                output: ::core::option::Option<&$crate::__private::Value>,
            ) -> ::core::result::Result<(), $crate::StepError> {
                match self {
                    $(
                        Self::$step(step) => {
                            let output = $crate::__private::decode_stored_output::<$saga, _>(
                                $kind_enum::$step,
                                output,
                            )?;
                            <$step as $crate::Step<$saga>>::compensate(step, cx, output).await
                        }
                    )+
                }
            }
        }

        $(
            impl $crate::StepOf<$saga> for $step {
                const KIND: $kind_enum = $kind_enum::$step;
            }
        )+

        impl $crate::SagaDefinition for $saga {
            const NAME: &'static str = stringify!($saga);
            type Input = $input;
            type Context = $context;
            type Kind = $kind_enum;

            fn execute(
                kind: $kind_enum,
                cx: &$crate::StepContext<'_, Self>,
            ) -> impl ::core::future::Future<
                Output = ::core::result::Result<$crate::__private::Value, $crate::StepError>,
            > + Send {
                async move { $step_enum::from_kind(kind).execute(cx).await }
            }

            fn compensate(
                kind: $kind_enum,
                cx: &$crate::StepContext<'_, Self>,
                output: ::core::option::Option<&$crate::__private::Value>,
            ) -> impl ::core::future::Future<Output = ::core::result::Result<(), $crate::StepError>>
                   + Send {
                async move { $step_enum::from_kind(kind).compensate(cx, output).await }
            }

            fn retry_policy(kind: $kind_enum) -> ::core::option::Option<$crate::RetryPolicy> {
                match $step_enum::from_kind(kind) {
                    $($step_enum::$step(step) => <$step as $crate::Step<$saga>>::retry_policy(&step),)+
                }
            }

            fn compensation_policy(kind: $kind_enum) -> ::core::option::Option<$crate::RetryPolicy> {
                match $step_enum::from_kind(kind) {
                    $($step_enum::$step(step) => <$step as $crate::Step<$saga>>::compensation_policy(&step),)+
                }
            }
        }

        const _: () = assert!(
            $crate::__private::names_are_unique(&[$(stringify!($name)),+]),
            concat!("two steps of saga ", stringify!($saga), " share a name; give each step its own"),
        );
    };
}

/// Items the [`saga!`] macro expands to. Not part of the public API.
#[doc(hidden)]
pub mod __private {
    pub use serde_json::Value;

    use serde::Serialize;
    use serde::de::DeserializeOwned;

    use crate::{SagaDefinition, StepError};

    /// Encodes an action's output for the log. An output that cannot be
    /// encoded comes from an action that already took effect, so the attempt
    /// counts as an unknown outcome and the step gets compensated.
    pub fn encode_output<K: std::fmt::Display, T: Serialize + DeserializeOwned>(
        kind: K,
        result: Result<T, StepError>,
    ) -> Result<Value, StepError> {
        let output = result?;
        let value = serde_json::to_value(output).map_err(|error| {
            StepError::unknown(format!(
                "the output of step {kind} cannot be serialized to JSON: {error}; \
                 fix the step's Output type"
            ))
        })?;
        // JSON turns some values into others (a NaN float becomes null), and
        // an output that does not read back would make the compensation fail.
        if let Err(error) = serde_json::from_value::<T>(value.clone()) {
            return Err(StepError::unknown(format!(
                "the output of step {kind} does not read back from JSON ({value}): {error}; \
                 fix the step's Output type or the value it returns"
            )));
        }
        Ok(value)
    }

    /// Decodes a stored output for a compensation.
    pub fn decode_stored_output<D: SagaDefinition, T: DeserializeOwned>(
        kind: D::Kind,
        output: Option<&Value>,
    ) -> Result<Option<T>, StepError> {
        output
            .map(|value| crate::step::decode_output::<D, T>(kind, value))
            .transpose()
    }

    /// Returns whether every name in `names` differs from the others.
    pub const fn names_are_unique(names: &[&str]) -> bool {
        let mut i = 0;
        while i < names.len() {
            let mut j = i + 1;
            while j < names.len() {
                if str_eq(names[i], names[j]) {
                    return false;
                }
                j += 1;
            }
            i += 1;
        }
        true
    }

    const fn str_eq(left: &str, right: &str) -> bool {
        let (left, right) = (left.as_bytes(), right.as_bytes());
        if left.len() != right.len() {
            return false;
        }
        let mut i = 0;
        while i < left.len() {
            if left[i] != right[i] {
                return false;
            }
            i += 1;
        }
        true
    }
}
