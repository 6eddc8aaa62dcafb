//! A simulated world for testing the orchestrator without a broker.
//!
//! `SimSaga` runs up to twelve steps whose actions and compensations follow a
//! script drawn by the test. Every call lands in the `World`, which applies
//! effects idempotently per step, as a real worker with an idempotency inbox
//! would, and records each call so tests can check order and attempt counts.

#![allow(dead_code)]

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use typed_saga::{
    RetryPolicy, SagaDefinition, StepAction, StepContext, StepError, StepKind, UnknownStepKind,
};

/// The maximum number of steps of a simulated saga.
pub const MAX_STEPS: usize = 12;

const STEP_NAMES: [&str; MAX_STEPS] = [
    "step_1", "step_2", "step_3", "step_4", "step_5", "step_6", "step_7", "step_8", "step_9",
    "step_10", "step_11", "step_12",
];

/// A step of `SimSaga`, by index.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SimStep(pub usize);

const ALL_STEPS: [SimStep; MAX_STEPS] = [
    SimStep(0),
    SimStep(1),
    SimStep(2),
    SimStep(3),
    SimStep(4),
    SimStep(5),
    SimStep(6),
    SimStep(7),
    SimStep(8),
    SimStep(9),
    SimStep(10),
    SimStep(11),
];

impl fmt::Display for SimStep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(STEP_NAMES[self.0])
    }
}

impl FromStr for SimStep {
    type Err = UnknownStepKind;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        STEP_NAMES
            .iter()
            .position(|known| *known == name)
            .map(SimStep)
            .ok_or_else(|| UnknownStepKind {
                saga: SimSaga::NAME,
                name: name.to_owned(),
                expected: STEP_NAMES.to_vec(),
            })
    }
}

impl StepKind for SimStep {
    const ALL: &'static [Self] = &ALL_STEPS;

    fn name(self) -> &'static str {
        STEP_NAMES[self.0]
    }
}

/// What a step's action does on each attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ActionScript {
    /// Applies the effect at once.
    Succeeds,
    /// Fails transiently this many times, then applies the effect.
    TransientThenSucceeds(u32),
    /// Fails transiently on every attempt.
    TransientForever,
    /// Fails permanently on the first attempt.
    Permanent,
    /// Applies the effect and reports the outcome as unknown, every attempt.
    Unknown,
}

/// What a step's compensation does on each attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CompensationScript {
    /// Undoes the effect at once.
    Succeeds,
    /// Fails transiently this many times per round, then undoes the effect.
    TransientThenSucceeds(u32),
    /// Fails permanently until the world is healed, then undoes the effect.
    FailsUntilHealed,
}

/// The script of one step.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepScript {
    pub action: ActionScript,
    pub compensation: CompensationScript,
}

/// The saga's input: one script per step.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Script {
    pub steps: Vec<StepScript>,
}

/// One call the orchestrator made into the world.
#[derive(Clone, Debug, PartialEq)]
pub struct Call {
    pub step: usize,
    pub action: StepAction,
    pub attempt: u32,
    pub idempotency_key: String,
    pub succeeded: bool,
}

/// What the world contains and what was asked of it.
#[derive(Debug, Default)]
pub struct WorldState {
    /// Steps whose effect is present.
    pub present: BTreeSet<usize>,
    /// How often each step's effect went from absent to present.
    pub applied: HashMap<usize, u32>,
    /// How often each step's effect went from present to absent.
    pub undone: HashMap<usize, u32>,
    /// Idempotency keys already acted on, as a worker's inbox stores them.
    pub inbox: BTreeSet<String>,
    /// Every call, in order.
    pub calls: Vec<Call>,
    /// Whether compensations scripted to fail now succeed.
    pub healed: bool,
    /// Calls per step and action in the current compensation round.
    round_calls: HashMap<(usize, StepAction), u32>,
}

/// The shared world every step acts on.
#[derive(Debug, Default)]
pub struct World {
    pub state: Mutex<WorldState>,
}

impl World {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    pub fn lock(&self) -> std::sync::MutexGuard<'_, WorldState> {
        self.state.lock().unwrap()
    }

    /// Lets compensations scripted to fail succeed from now on, and starts a
    /// new round of compensation attempts.
    pub fn heal(&self) {
        let mut state = self.lock();
        state.healed = true;
        state.round_calls.clear();
    }
}

impl WorldState {
    fn apply(&mut self, step: usize, key: &str) {
        if self.inbox.insert(key.to_owned()) && self.present.insert(step) {
            *self.applied.entry(step).or_default() += 1;
        }
    }

    fn undo(&mut self, step: usize, key: &str) {
        if self.inbox.insert(key.to_owned()) && self.present.remove(&step) {
            *self.undone.entry(step).or_default() += 1;
        }
    }

    /// Counts this call within its round and returns the count before it.
    fn count_call(&mut self, step: usize, action: StepAction) -> u32 {
        let count = self.round_calls.entry((step, action)).or_default();
        *count += 1;
        *count - 1
    }
}

/// The saga's policies, set per test.
#[derive(Debug)]
pub struct SimContext {
    pub world: Arc<World>,
    /// How long an action attempt takes, in simulated time.
    pub action_duration: Duration,
}

/// A saga whose steps follow a `Script`.
#[derive(Debug)]
pub struct SimSaga;

impl SagaDefinition for SimSaga {
    const NAME: &'static str = "SimSaga";
    type Input = Script;
    type Context = SimContext;
    type Kind = SimStep;

    fn plan(input: &Script) -> Vec<SimStep> {
        (0..input.steps.len()).map(SimStep).collect()
    }

    async fn execute(kind: SimStep, cx: &StepContext<'_, Self>) -> Result<Value, StepError> {
        let script = cx.input().steps[kind.0];
        let key = cx.idempotency_key();
        tokio::time::sleep(cx.context().action_duration).await;

        let mut world = cx.context().world.lock();
        let earlier_calls = world.count_call(kind.0, StepAction::Execute);
        let result = match script.action {
            ActionScript::Succeeds => {
                world.apply(kind.0, &key);
                Ok(json!({ "step": kind.0 }))
            }
            ActionScript::TransientThenSucceeds(failures) if earlier_calls < failures => {
                Err(StepError::transient(format!("{kind} is busy")))
            }
            ActionScript::TransientThenSucceeds(_) => {
                world.apply(kind.0, &key);
                Ok(json!({ "step": kind.0 }))
            }
            ActionScript::TransientForever => Err(StepError::transient(format!("{kind} is down"))),
            ActionScript::Permanent => {
                Err(StepError::permanent(format!("{kind} rejected the input")))
            }
            ActionScript::Unknown => {
                world.apply(kind.0, &key);
                Err(StepError::unknown(format!("{kind} did not reply")))
            }
        };
        world.calls.push(Call {
            step: kind.0,
            action: StepAction::Execute,
            attempt: cx.attempt(),
            idempotency_key: key,
            succeeded: result.is_ok(),
        });
        result
    }

    async fn compensate(
        kind: SimStep,
        cx: &StepContext<'_, Self>,
        output: Option<&Value>,
    ) -> Result<(), StepError> {
        let script = cx.input().steps[kind.0];
        let key = cx.idempotency_key();
        if let Some(output) = output {
            assert_eq!(
                output,
                &json!({ "step": kind.0 }),
                "compensation got another step's output"
            );
        }

        let mut world = cx.context().world.lock();
        let earlier_calls = world.count_call(kind.0, StepAction::Compensate);
        let result = match script.compensation {
            CompensationScript::TransientThenSucceeds(failures) if earlier_calls < failures => {
                Err(StepError::transient(format!("{kind} cannot undo yet")))
            }
            CompensationScript::FailsUntilHealed if !world.healed => {
                Err(StepError::permanent(format!("{kind} cannot be undone")))
            }
            _ => {
                world.undo(kind.0, &key);
                Ok(())
            }
        };
        world.calls.push(Call {
            step: kind.0,
            action: StepAction::Compensate,
            attempt: cx.attempt(),
            idempotency_key: key,
            succeeded: result.is_ok(),
        });
        result
    }

    fn retry_policy(_: SimStep) -> Option<RetryPolicy> {
        None
    }
}

/// Builds the script of `actions.len()` steps whose compensations all
/// succeed.
pub fn script(actions: &[ActionScript]) -> Script {
    Script {
        steps: actions
            .iter()
            .map(|&action| StepScript {
                action,
                compensation: CompensationScript::Succeeds,
            })
            .collect(),
    }
}

/// Builds a context over `world` whose actions take no time.
pub fn context(world: &Arc<World>) -> Arc<SimContext> {
    Arc::new(SimContext {
        world: world.clone(),
        action_duration: Duration::ZERO,
    })
}

/// A log that stores its first `capacity` events and then fails every
/// append, as if the process died right after its last durable event.
#[derive(Debug)]
pub struct CrashingLog {
    pub inner: typed_saga::MemoryLog,
    capacity: usize,
}

impl CrashingLog {
    pub fn new(capacity: usize) -> Arc<Self> {
        Arc::new(Self {
            inner: typed_saga::MemoryLog::new(),
            capacity,
        })
    }
}

impl typed_saga::SagaLog for CrashingLog {
    fn append<'a>(&'a self, event: &'a typed_saga::SagaEvent) -> typed_saga::LogFuture<'a, ()> {
        if self.inner.events().len() >= self.capacity {
            return Box::pin(async { Err(typed_saga::LogError::new("simulated crash")) });
        }
        self.inner.append(event)
    }

    fn history(
        &self,
        id: typed_saga::SagaId,
    ) -> typed_saga::LogFuture<'_, Vec<typed_saga::SagaEvent>> {
        self.inner.history(id)
    }

    fn unfinished(&self) -> typed_saga::LogFuture<'_, Vec<typed_saga::SagaId>> {
        self.inner.unfinished()
    }
}
