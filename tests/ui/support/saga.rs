// Included by every UI case with `include!("../support/saga.rs")`. It
// declares a two-step saga and functions that return it in each lifecycle
// state, built only through the public transitions. Each case uses a few of
// these functions, so the module allows dead code and the glob import may go
// unused.

#[allow(dead_code)]
mod support {
    use std::sync::Arc;

    use typed_saga::{
        Compensated, Compensating, CompensationOutcome, Failed, Pending, RunOutcome, Running, Saga,
        Step, StepContext, StepError, Succeeded,
    };

    /// The first step of [`Probe`]: it always takes effect, so a failed saga
    /// has it to compensate.
    #[derive(Default)]
    pub struct Reserve;

    impl Step<Probe> for Reserve {
        type Output = ();

        async fn execute(&self, _: &StepContext<'_, Probe>) -> Result<(), StepError> {
            Ok(())
        }

        async fn compensate(
            &self,
            _: &StepContext<'_, Probe>,
            _: Option<()>,
        ) -> Result<(), StepError> {
            Ok(())
        }
    }

    /// The second step of [`Probe`]: it fails for good when the input is true.
    #[derive(Default)]
    pub struct Confirm;

    impl Step<Probe> for Confirm {
        type Output = ();

        async fn execute(&self, cx: &StepContext<'_, Probe>) -> Result<(), StepError> {
            if *cx.input() {
                Err(StepError::permanent(
                    "the saga input asks this step to fail",
                ))
            } else {
                Ok(())
            }
        }

        async fn compensate(
            &self,
            _: &StepContext<'_, Probe>,
            _: Option<()>,
        ) -> Result<(), StepError> {
            Ok(())
        }
    }

    typed_saga::saga! {
        /// A saga whose second step fails when its input is true.
        pub saga Probe {
            input: bool,
            context: (),
            step_enum: ProbeStep,
            kind_enum: ProbeStepKind,
            steps: [reserve => Reserve, confirm => Confirm],
        }
    }

    pub fn pending() -> Saga<Probe, Pending> {
        Saga::new(false, Arc::new(()))
    }

    pub fn running() -> Saga<Probe, Running> {
        pending().start()
    }

    pub async fn succeeded() -> Saga<Probe, Succeeded> {
        match running()
            .run()
            .await
            .expect("the in-memory log does not fail")
        {
            RunOutcome::Succeeded(saga) => saga,
            RunOutcome::Failed(_) => panic!("a saga with input false should succeed"),
        }
    }

    pub async fn failed() -> Saga<Probe, Failed> {
        let running = Saga::<Probe, _>::new(true, Arc::new(())).start();
        match running
            .run()
            .await
            .expect("the in-memory log does not fail")
        {
            RunOutcome::Failed(saga) => saga,
            RunOutcome::Succeeded(_) => panic!("a saga with input true should fail"),
        }
    }

    pub async fn compensating() -> Saga<Probe, Compensating> {
        failed().await.compensate()
    }

    pub async fn compensated() -> Saga<Probe, Compensated> {
        match compensating()
            .await
            .run()
            .await
            .expect("the in-memory log does not fail")
        {
            CompensationOutcome::Compensated(saga) => saga,
            CompensationOutcome::Failed(_) => panic!("a compensation that always succeeds failed"),
        }
    }
}

#[allow(unused_imports)]
use support::*;
