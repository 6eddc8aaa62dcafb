//! The compiler enforces the saga lifecycle. Each case under `tests/ui/fail`
//! is one illegal use and must be rejected with exactly the error in its
//! `.stderr`. The cases cover:
//!
//! - a method called on a state that lacks it: a transition, `new`,
//!   `with_id` or `remaining_compensations`
//! - a saga used after a transition moved it
//! - a saga or a state marker built outside the crate
//! - a new state added to the sealed `SagaState`
//! - a transition's result taken as the wrong state
//!
//! The cases under `tests/ui/pass` compile and run the legal paths with the
//! saga from `tests/ui/support`. They show that the shared saga compiles, so
//! the error of a fail case comes from the case's own code.
//!
//! Regenerate the `.stderr` files with
//! `TRYBUILD=overwrite cargo test --test compile_fail`, then check each one.
//!
//! NOTE: the `.stderr` files were generated with rustc 1.95. Other compiler
//! versions word some diagnostics differently, so the fail cases may need
//! regenerating after a toolchain upgrade.

#[test]
fn lifecycle_is_checked_by_compiler() {
    let cases = trybuild::TestCases::new();

    cases.compile_fail("tests/ui/fail/run_on_compensated.rs");
    cases.compile_fail("tests/ui/fail/run_on_failed.rs");
    cases.compile_fail("tests/ui/fail/run_on_pending.rs");
    cases.compile_fail("tests/ui/fail/run_on_succeeded.rs");
    cases.compile_fail("tests/ui/fail/compensate_on_compensated.rs");
    cases.compile_fail("tests/ui/fail/compensate_on_compensating.rs");
    cases.compile_fail("tests/ui/fail/compensate_on_pending.rs");
    cases.compile_fail("tests/ui/fail/compensate_on_running.rs");
    cases.compile_fail("tests/ui/fail/compensate_on_succeeded.rs");
    cases.compile_fail("tests/ui/fail/start_on_compensated.rs");
    cases.compile_fail("tests/ui/fail/start_on_compensating.rs");
    cases.compile_fail("tests/ui/fail/start_on_failed.rs");
    cases.compile_fail("tests/ui/fail/start_on_running.rs");
    cases.compile_fail("tests/ui/fail/start_on_succeeded.rs");
    cases.compile_fail("tests/ui/fail/run_to_end_on_running.rs");
    cases.compile_fail("tests/ui/fail/remaining_compensations_on_succeeded.rs");
    cases.compile_fail("tests/ui/fail/new_in_succeeded_state.rs");
    cases.compile_fail("tests/ui/fail/with_id_on_running.rs");
    cases.compile_fail("tests/ui/fail/use_after_compensate.rs");
    cases.compile_fail("tests/ui/fail/use_after_run.rs");
    cases.compile_fail("tests/ui/fail/use_after_start.rs");
    cases.compile_fail("tests/ui/fail/struct_literal_saga.rs");
    cases.compile_fail("tests/ui/fail/struct_literal_state_marker.rs");
    cases.compile_fail("tests/ui/fail/default_state_marker.rs");
    cases.compile_fail("tests/ui/fail/impl_saga_state_outside_crate.rs");
    cases.compile_fail("tests/ui/fail/start_result_as_succeeded.rs");
    cases.compile_fail("tests/ui/fail/compensate_result_as_compensated.rs");
    cases.compile_fail("tests/ui/fail/run_outcome_failed_as_succeeded.rs");

    cases.pass("tests/ui/pass/start_run_match_outcome.rs");
    cases.pass("tests/ui/pass/compensate_failed_saga.rs");
    cases.pass("tests/ui/pass/run_to_end.rs");
}
