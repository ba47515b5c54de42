//! A time-boxed property-test loop for the fuzz tests of request and
//! config parsing: new random cases until the time budget is spent, so CI
//! runs each target for a bounded time and a person can run it for
//! longer (`LLM_SERVE_FUZZ_SECONDS`).

use proptest::strategy::Strategy;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use std::time::{Duration, Instant};

/// Seconds each fuzz target runs: `LLM_SERVE_FUZZ_SECONDS`, else 60 in
/// CI (`CI` set) and 10 elsewhere.
pub fn budget() -> Duration {
    let seconds = std::env::var("LLM_SERVE_FUZZ_SECONDS")
        .ok()
        .and_then(|s| s.parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s >= 0.0)
        .unwrap_or(if std::env::var_os("CI").is_some() {
            60.0
        } else {
            10.0
        });
    Duration::from_secs_f64(seconds)
}

/// Runs `test` on cases drawn from `strategy` until the budget is spent
/// (at least one batch); a failing case panics with the shrunk input.
/// Returns how many cases ran.
pub fn fuzz_for<S: Strategy>(
    name: &str,
    strategy: S,
    test: impl Fn(S::Value) -> Result<(), TestCaseError>,
) -> u64 {
    const BATCH: u32 = 256;
    let deadline = Instant::now() + budget();
    let mut cases = 0u64;
    loop {
        let mut runner = TestRunner::new(Config {
            cases: BATCH,
            failure_persistence: None,
            ..Config::default()
        });
        if let Err(e) = runner.run(&strategy, &test) {
            panic!("fuzz target {name} failed after {cases} cases: {e}");
        }
        cases += u64::from(BATCH);
        if Instant::now() >= deadline {
            break;
        }
    }
    eprintln!("fuzz target {name}: {cases} cases, no failure");
    cases
}
