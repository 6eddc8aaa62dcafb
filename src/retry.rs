use std::time::Duration;

/// How often and how far apart a step's action, or its compensation, is
/// attempted.
///
/// The default is 5 attempts 2 s apart with no per-attempt timeout. Transient
/// errors and unknown outcomes are retried until the attempts run out;
/// permanent errors are never retried. Waits use `tokio::time`, so a test
/// under a paused clock spends no real time in them.
#[derive(Clone, Debug, PartialEq)]
pub struct RetryPolicy {
    max_attempts: u32,
    backoff: Backoff,
    attempt_timeout: Option<Duration>,
}

/// The wait between two attempts.
#[derive(Clone, Debug, PartialEq)]
pub enum Backoff {
    /// The same wait before every retry.
    Fixed(Duration),
    /// `initial`, then doubling before each further retry, never above `max`.
    /// With `jitter`, each wait is drawn uniformly from its upper half, so
    /// that sagas failing together do not retry in lockstep.
    Exponential {
        /// The wait before the second attempt.
        initial: Duration,
        /// The cap on any wait.
        max: Duration,
        /// Whether to randomize each wait within `[wait / 2, wait]`.
        jitter: bool,
    },
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self::fixed(5, Duration::from_secs(2))
    }
}

impl RetryPolicy {
    /// Builds a policy of `max_attempts` attempts with `delay` between them.
    ///
    /// # Panics
    ///
    /// When `max_attempts` is 0, since a step must be attempted at least once.
    pub fn fixed(max_attempts: u32, delay: Duration) -> Self {
        Self::new(max_attempts, Backoff::Fixed(delay))
    }

    /// Builds a policy of `max_attempts` attempts whose waits start at
    /// `initial` and double up to `max`, without jitter.
    ///
    /// # Panics
    ///
    /// When `max_attempts` is 0.
    pub fn exponential(max_attempts: u32, initial: Duration, max: Duration) -> Self {
        Self::new(
            max_attempts,
            Backoff::Exponential {
                initial,
                max,
                jitter: false,
            },
        )
    }

    /// Builds a policy of a single attempt.
    pub fn no_retry() -> Self {
        Self::fixed(1, Duration::ZERO)
    }

    fn new(max_attempts: u32, backoff: Backoff) -> Self {
        assert!(
            max_attempts >= 1,
            "invalid max_attempts 0 in RetryPolicy; a step needs at least one attempt"
        );
        Self {
            max_attempts,
            backoff,
            attempt_timeout: None,
        }
    }

    /// Randomizes each exponential wait within its upper half. A fixed
    /// backoff is left as it is.
    pub fn with_jitter(mut self) -> Self {
        if let Backoff::Exponential { jitter, .. } = &mut self.backoff {
            *jitter = true;
        }
        self
    }

    /// Limits each attempt to `timeout`. An attempt that takes longer is
    /// abandoned and counts as an unknown outcome, because its effect may
    /// still happen.
    pub fn with_attempt_timeout(mut self, timeout: Duration) -> Self {
        self.attempt_timeout = Some(timeout);
        self
    }

    /// Returns the number of attempts, counting the first.
    pub fn max_attempts(&self) -> u32 {
        self.max_attempts
    }

    /// Returns the wait strategy.
    pub fn backoff(&self) -> &Backoff {
        &self.backoff
    }

    /// Returns the per-attempt timeout, if any.
    pub fn attempt_timeout(&self) -> Option<Duration> {
        self.attempt_timeout
    }

    /// Returns the wait before attempt number `attempt` (counted from 1).
    /// The first attempt starts at once.
    pub fn delay_before(&self, attempt: u32) -> Duration {
        if attempt <= 1 {
            return Duration::ZERO;
        }
        match &self.backoff {
            Backoff::Fixed(delay) => *delay,
            Backoff::Exponential {
                initial,
                max,
                jitter,
            } => {
                let doublings = (attempt - 2).min(31);
                let delay = initial.saturating_mul(1 << doublings).min(*max);
                if *jitter {
                    let half = delay / 2;
                    half + half.mul_f64(fastrand::f64())
                } else {
                    delay
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_is_five_attempts_two_seconds_apart() {
        let policy = RetryPolicy::default();
        assert_eq!(policy.max_attempts(), 5);
        assert_eq!(policy.delay_before(2), Duration::from_secs(2));
        assert_eq!(policy.delay_before(5), Duration::from_secs(2));
    }

    #[test]
    fn first_attempt_starts_without_delay() {
        let policy = RetryPolicy::exponential(3, Duration::from_secs(1), Duration::from_secs(9));
        assert_eq!(policy.delay_before(1), Duration::ZERO);
    }

    #[test]
    fn exponential_backoff_doubles_up_to_its_cap() {
        let policy =
            RetryPolicy::exponential(10, Duration::from_millis(100), Duration::from_secs(1));
        let delays: Vec<u128> = (2..=7)
            .map(|n| policy.delay_before(n).as_millis())
            .collect();
        assert_eq!(delays, [100, 200, 400, 800, 1000, 1000]);
    }

    #[test]
    fn exponential_backoff_survives_huge_attempt_numbers() {
        let policy =
            RetryPolicy::exponential(u32::MAX, Duration::from_secs(1), Duration::from_secs(60));
        assert_eq!(policy.delay_before(u32::MAX), Duration::from_secs(60));
    }

    #[test]
    fn jitter_stays_within_the_upper_half() {
        let policy = RetryPolicy::exponential(5, Duration::from_secs(8), Duration::from_secs(8))
            .with_jitter();
        for _ in 0..1_000 {
            let delay = policy.delay_before(3);
            assert!(delay >= Duration::from_secs(4), "{delay:?}");
            assert!(delay <= Duration::from_secs(8), "{delay:?}");
        }
    }

    #[test]
    #[should_panic(expected = "invalid max_attempts 0")]
    fn zero_attempts_is_rejected() {
        RetryPolicy::fixed(0, Duration::ZERO);
    }
}
