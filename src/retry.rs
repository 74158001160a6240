//! The one retry policy for Claid calls: per-step budgets, exponential backoff with full
//! jitter, and which failures consume the budget. Pure: no I/O, no clock of its own, no
//! sleeping; its caller (the pipeline) makes each attempt with one of the client's single-shot
//! calls ([`crate::claid::Client::submit_once`] and friends), asks [`Attempts::on_error`] what
//! to do with a failure, and waits as told. The client never retries, so every HTTP attempt
//! has exactly one owner.
//!
//! How failures count, per step:
//! - `Job` errors (4xx about this request, an expired result) fail the step at once.
//! - `Systemic` errors (401/402/403) pause submitting; they do not consume the budget.
//! - `Transient` errors and `Ambiguous` ones (a submit or upload that may have reached Claid;
//!   the pipeline's in-doubt policy decides first whether to resubmit) consume one failure.
//! - A 429 consumes one of the step's 429s, not a failure; the client has closed the shared
//!   limiter gate, and the step waits `RateLimit-Reset` before trying again.
//! - A connection that could not be made (`connect-failed`: refused, unreachable, DNS) sent
//!   nothing, so it is no HTTP attempt and consumes nothing: during an outage every job waits
//!   for the API, backing off, until [`Policy::outage_limit`] (when set, e.g. for `run --once`)
//!   has passed since the first failure of the streak.
//!
//! Maximum HTTP requests sent per step with the default policy ([`Budget::max_http_attempts`]:
//! the failures retried, plus the 429s waited out, plus the last attempt):
//!
//! | step | failures retried | 429s waited out | max HTTP attempts |
//! |------|------------------|-----------------|-------------------|
//! | submit | 4 | 120 | 125 |
//! | upload | 2 | 120 | 123 |
//! | poll (each poll of a task) | 20 | none: see below | 21 |
//! | download | 9 | 0 | 10 |
//!
//! A 429 to a poll spends no budget: its task is billed, and giving up would lose the result,
//! so the poll loops (`pipeline::job`, `pipeline::batch`) wait each one out (the limiter's gate
//! waits `RateLimit-Reset`) until `api.poll.give_up_after`, as for a task still running. For
//! the same reason a poll whose failure budget is spent does not fail its task: the loops ask
//! again at the backoff's cap until `give_up_after`.
//!
//! These are counts while the API answers other calls. In an outage (nothing succeeded since
//! the failed call was sent; `pipeline::job::failure_of`) failures spend no budget, so a step
//! is bounded in time there (`outage_limit`), not in count.
//!
//! A poll that gets an answer (whatever the task's status) ends its step; the next poll of the
//! task starts a fresh budget. An in-doubt resubmit is a failed submit attempt, so it counts.
//! Backoff: attempt `n` (counted per kind, from 1) waits a uniformly random time in
//! `0..=min(cap, base * 2^(n-1))` (full jitter), 500 ms base and 30 s cap by default.

use std::time::Duration;

use rand::Rng;
use tokio::time::Instant;

use crate::claid::{ClaidError, ErrorClass};

/// The steps that call Claid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Submit,
    Upload,
    Poll,
    Download,
}

/// How many failures of each kind one step tolerates before it gives up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    /// Transient or ambiguous failures retried; the next one fails the step.
    pub failures: u32,
    /// 429 answers waited out; the next one fails the step as `rate-limited`.
    pub rate_limited: u32,
}

impl Budget {
    /// The most HTTP requests one step sends: every retried failure and 429, plus the last
    /// attempt (a success, a job error, or the failure that exhausts the budget).
    pub const fn max_http_attempts(self) -> u32 {
        self.failures + self.rate_limited + 1
    }
}

/// The retry policy: backoff shape, a budget per step, and how long an outage is waited out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// First backoff ceiling; doubles per failure.
    pub base: Duration,
    /// Largest backoff ceiling.
    pub cap: Duration,
    pub submit: Budget,
    pub upload: Budget,
    pub poll: Budget,
    pub download: Budget,
    /// How long a step waits for an unreachable API (counted from the first connect failure
    /// of a streak) before it gives up; `None` waits for as long as it takes (the daemon).
    pub outage_limit: Option<Duration>,
}

impl Default for Policy {
    fn default() -> Policy {
        Policy {
            base: Duration::from_millis(500),
            cap: Duration::from_secs(30),
            // A 429 bills nothing and only costs time: a submit rides out as many as a poll
            // (two minutes of Claid's one-second resets), so a config above the account's
            // limits, or another client spending the same key, delays images, never fails them.
            submit: Budget {
                failures: 4,
                rate_limited: 120,
            },
            upload: Budget {
                failures: 2,
                rate_limited: 120,
            },
            // A poll costs nothing and its task is billed already: giving up loses the
            // result, so a task's poll rides out a long run of 5xx (about ten minutes at the
            // 30 s cap); its 429s are waited out by the poll loops, never counted here.
            poll: Budget {
                failures: 20,
                rate_limited: 0,
            },
            // Downloads are free (a temporary URL, not an API call) and a CDN may cut a few
            // short in a row: a larger budget costs nothing billed.
            download: Budget {
                failures: 9,
                rate_limited: 0,
            },
            outage_limit: None,
        }
    }
}

impl Policy {
    /// The budget of one step.
    pub fn budget(&self, step: Step) -> Budget {
        match step {
            Step::Submit => self.submit,
            Step::Upload => self.upload,
            Step::Poll => self.poll,
            Step::Download => self.download,
        }
    }

    /// The most HTTP requests one `step` sends under this policy.
    pub fn max_http_attempts(&self, step: Step) -> u32 {
        self.budget(step).max_http_attempts()
    }

    /// The failure count of one new step.
    pub fn start(&self, step: Step) -> Attempts {
        Attempts {
            policy: *self,
            step,
            failures: 0,
            rate_limited: 0,
            unreachable: 0,
            unreachable_since: None,
        }
    }
}

/// A failure as the policy sees it (see the module doc for how each kind counts).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    Job,
    Systemic,
    Ambiguous,
    Transient,
    RateLimited {
        retry_after: Duration,
    },
    /// Nothing was sent: the API could not be reached.
    Unreachable,
}

impl Failure {
    /// Classifies a client error.
    pub fn of(err: &ClaidError) -> Failure {
        if let Some(retry_after) = err.retry_after() {
            return Failure::RateLimited { retry_after };
        }
        if err.is_unreachable() {
            return Failure::Unreachable;
        }
        match err.class() {
            ErrorClass::Job => Failure::Job,
            ErrorClass::Systemic => Failure::Systemic,
            ErrorClass::Ambiguous => Failure::Ambiguous,
            ErrorClass::Transient => Failure::Transient,
        }
    }
}

/// What to do after a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Try the step again once `after` has passed (an interruptible wait).
    Retry { after: Duration },
    /// Stop: fail the job with the error's code.
    Fail(GiveUp),
    /// Account-wide trouble: pause submitting and put the job back; its budget is not charged.
    Pause,
}

/// Why a step stopped retrying.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GiveUp {
    /// The error is about this request: trying again cannot help.
    NotRetryable,
    /// The failure budget is spent.
    Failures,
    /// The 429 budget is spent.
    RateLimited,
    /// The API stayed unreachable for longer than [`Policy::outage_limit`].
    Outage,
}

/// The failures of one step so far.
#[derive(Debug, Clone)]
pub struct Attempts {
    policy: Policy,
    step: Step,
    /// Transient and ambiguous failures so far.
    failures: u32,
    /// 429 answers so far.
    rate_limited: u32,
    /// Connect failures in the current streak (reset by anything that reached the server).
    unreachable: u32,
    /// When the current streak of connect failures began.
    unreachable_since: Option<Instant>,
}

impl Attempts {
    /// The step this count belongs to.
    pub fn step(&self) -> Step {
        self.step
    }

    /// HTTP requests this step has sent that failed (429s included; connect failures sent
    /// nothing and are not counted).
    pub fn failed_http_attempts(&self) -> u32 {
        self.failures + self.rate_limited
    }

    /// Failed attempts of this step so far, those of an outage's current streak included
    /// (for logs: an outage does not spend the failure budget but is still counted here).
    pub fn failed_attempts(&self) -> u32 {
        self.failures + self.rate_limited + self.unreachable
    }

    /// Records a failed attempt and says what to do; `now` is when it failed.
    pub fn on_error(&mut self, err: &ClaidError, now: Instant, rng: &mut impl Rng) -> Decision {
        self.on_failure(Failure::of(err), now, rng)
    }

    /// [`Attempts::on_error`] for an already classified failure.
    pub fn on_failure(&mut self, failure: Failure, now: Instant, rng: &mut impl Rng) -> Decision {
        if failure != Failure::Unreachable {
            self.unreachable = 0;
            self.unreachable_since = None;
        }
        let budget = self.policy.budget(self.step);
        match failure {
            Failure::Job => Decision::Fail(GiveUp::NotRetryable),
            Failure::Systemic => Decision::Pause,
            Failure::Ambiguous | Failure::Transient => {
                self.failures += 1;
                if self.failures > budget.failures {
                    Decision::Fail(GiveUp::Failures)
                } else {
                    Decision::Retry {
                        after: self.backoff(self.failures, rng),
                    }
                }
            }
            Failure::RateLimited { retry_after } => {
                self.rate_limited += 1;
                if self.rate_limited > budget.rate_limited {
                    Decision::Fail(GiveUp::RateLimited)
                } else {
                    Decision::Retry { after: retry_after }
                }
            }
            Failure::Unreachable => {
                let since = *self.unreachable_since.get_or_insert(now);
                self.unreachable += 1;
                match self.policy.outage_limit {
                    Some(limit) if now.saturating_duration_since(since) >= limit => {
                        Decision::Fail(GiveUp::Outage)
                    }
                    _ => Decision::Retry {
                        after: self.backoff(self.unreachable, rng),
                    },
                }
            }
        }
    }

    fn backoff(&self, n: u32, rng: &mut impl Rng) -> Duration {
        backoff(n, self.policy.base, self.policy.cap, rng)
    }
}

/// Full-jitter exponential backoff: a uniformly random wait in `0..=min(cap, base * 2^(n-1))`
/// for the `n`-th failure (from 1).
pub fn backoff(n: u32, base: Duration, cap: Duration, rng: &mut impl Rng) -> Duration {
    let ceiling = base
        .saturating_mul(1u32 << n.saturating_sub(1).min(20))
        .min(cap);
    ceiling.mul_f64(rng.random::<f64>())
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    use super::*;

    /// What a decision is, without its random delay.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Kind {
        Retry,
        Fail(GiveUp),
        Pause,
    }

    fn kind(decision: Decision) -> Kind {
        match decision {
            Decision::Retry { .. } => Kind::Retry,
            Decision::Fail(why) => Kind::Fail(why),
            Decision::Pause => Kind::Pause,
        }
    }

    const T: Failure = Failure::Transient;
    const R: Failure = Failure::RateLimited {
        retry_after: Duration::from_secs(2),
    };

    /// Feeds `failures` to a fresh step (1 s apart) and compares the decisions.
    fn check(policy: Policy, step: Step, failures: &[Failure], expect: &[Kind]) {
        let mut rng = StdRng::seed_from_u64(7);
        let mut attempts = policy.start(step);
        let start = Instant::now();
        let got: Vec<Kind> = failures
            .iter()
            .enumerate()
            .map(|(i, f)| {
                let now = start + Duration::from_secs(i as u64);
                kind(attempts.on_failure(*f, now, &mut rng))
            })
            .collect();
        assert_eq!(got, expect, "{step:?} {failures:?}");
    }

    fn small() -> Policy {
        Policy {
            submit: Budget {
                failures: 2,
                rate_limited: 1,
            },
            outage_limit: Some(Duration::from_secs(3)),
            ..Policy::default()
        }
    }

    #[test]
    fn job_errors_fail_at_once_and_systemic_ones_pause_without_charge() {
        use Kind::*;
        check(
            small(),
            Step::Submit,
            &[Failure::Job],
            &[Fail(GiveUp::NotRetryable)],
        );
        check(
            small(),
            Step::Submit,
            &[
                Failure::Systemic,
                Failure::Systemic,
                T,
                Failure::Systemic,
                T,
                T,
            ],
            &[Pause, Pause, Retry, Pause, Retry, Fail(GiveUp::Failures)],
        );
    }

    #[test]
    fn transient_and_ambiguous_failures_share_the_budget() {
        use Kind::*;
        check(
            small(),
            Step::Submit,
            &[T, Failure::Ambiguous, T],
            &[Retry, Retry, Fail(GiveUp::Failures)],
        );
    }

    #[test]
    fn rate_limits_have_their_own_budget_and_wait_the_reset() {
        use Kind::*;
        check(
            small(),
            Step::Submit,
            &[R, T, T, R],
            &[Retry, Retry, Retry, Fail(GiveUp::RateLimited)],
        );
        let mut attempts = small().start(Step::Submit);
        let mut rng = StdRng::seed_from_u64(1);
        assert_eq!(
            attempts.on_failure(R, Instant::now(), &mut rng),
            Decision::Retry {
                after: Duration::from_secs(2)
            }
        );
    }

    #[test]
    fn an_outage_costs_nothing_until_its_limit() {
        use Kind::*;
        let u = Failure::Unreachable;
        // 1 s apart: the limit of 3 s is reached at the fourth failure of the streak.
        check(
            small(),
            Step::Submit,
            &[u, u, u, u],
            &[Retry, Retry, Retry, Fail(GiveUp::Outage)],
        );
        // A failure that reached the server ends the streak, and costs a failure.
        check(
            small(),
            Step::Submit,
            &[u, u, u, T, u, u, u],
            &[Retry, Retry, Retry, Retry, Retry, Retry, Retry],
        );
        // Without a limit (the daemon) an outage is waited out for as long as it lasts.
        let daemon = Policy::default();
        let mut attempts = daemon.start(Step::Poll);
        let mut rng = StdRng::seed_from_u64(3);
        let start = Instant::now();
        for hour in 0..48 {
            let now = start + Duration::from_secs(3600 * hour);
            let decision = attempts.on_failure(u, now, &mut rng);
            assert!(matches!(decision, Decision::Retry { .. }), "{decision:?}");
        }
        assert_eq!(attempts.failed_http_attempts(), 0);
    }

    #[test]
    fn backoff_is_full_jitter_under_a_doubling_ceiling() {
        let mut rng = StdRng::seed_from_u64(42);
        let base = Duration::from_millis(500);
        let cap = Duration::from_secs(30);
        for n in 1..=12u32 {
            let ceiling = (base * 2u32.pow(n - 1)).min(cap);
            let waits: Vec<Duration> = (0..200).map(|_| backoff(n, base, cap, &mut rng)).collect();
            assert!(waits.iter().all(|w| *w <= ceiling), "n={n}");
            // Spread over the whole range: some in the lower and some in the upper quarter.
            assert!(waits.iter().any(|w| *w < ceiling / 4), "n={n}");
            assert!(waits.iter().any(|w| *w > ceiling * 3 / 4), "n={n}");
        }
        assert!(backoff(u32::MAX, base, cap, &mut rng) <= cap);
    }

    /// The documented maximum holds: whatever mix of failures comes, a step sends at most
    /// `max_http_attempts` requests (each failure here is one request; success would end it).
    #[test]
    fn no_step_sends_more_than_its_documented_maximum() {
        let policy = Policy::default();
        for (step, documented) in [
            (Step::Submit, 125),
            (Step::Upload, 123),
            (Step::Poll, 21),
            (Step::Download, 10),
        ] {
            assert_eq!(policy.max_http_attempts(step), documented, "{step:?}");
            for seed in 0..50u64 {
                let mut rng = StdRng::seed_from_u64(seed);
                let mut attempts = policy.start(step);
                let mut sent = 0u32;
                loop {
                    let failure = if rng.random_bool(0.5) { T } else { R };
                    sent += 1;
                    match attempts.on_failure(failure, Instant::now(), &mut rng) {
                        Decision::Retry { .. } => {}
                        Decision::Fail(_) => break,
                        Decision::Pause => unreachable!("not systemic"),
                    }
                }
                assert!(sent <= documented, "{step:?} seed {seed}: {sent}");
            }
            // The maximum is reached: all 429s then all failures.
            let mut rng = StdRng::seed_from_u64(0);
            let mut attempts = policy.start(step);
            let budget = policy.budget(step);
            let mut sent = 0;
            for failure in std::iter::repeat_n(R, budget.rate_limited as usize)
                .chain(std::iter::repeat_n(T, budget.failures as usize + 1))
            {
                sent += 1;
                let _ = attempts.on_failure(failure, Instant::now(), &mut rng);
            }
            assert_eq!(sent, documented, "{step:?}");
            assert_eq!(attempts.failed_http_attempts(), documented);
        }
    }

    #[test]
    fn client_errors_map_to_failures() {
        let rate_limited = ClaidError::RateLimited {
            endpoint: crate::claid::Endpoint::Submit,
            retry_after: Duration::from_secs(3),
            request_id: None,
        };
        assert_eq!(
            Failure::of(&rate_limited),
            Failure::RateLimited {
                retry_after: Duration::from_secs(3)
            }
        );
        let refused = ClaidError::Connect {
            endpoint: crate::claid::Endpoint::Submit,
            addr: "127.0.0.1:9".into(),
            cause: "ECONNREFUSED: connection refused".into(),
        };
        assert_eq!(Failure::of(&refused), Failure::Unreachable);
        let timeout = ClaidError::Timeout {
            endpoint: crate::claid::Endpoint::Submit,
            addr: "127.0.0.1:9".into(),
            request_id: None,
        };
        assert_eq!(Failure::of(&timeout), Failure::Ambiguous);
        // A result URL that answers 403/404/410 is asked again on the download's budget (one
        // not propagated yet answers so too), then the job fails as result-expired.
        let gone = ClaidError::ResultGone {
            status: 410,
            request_id: None,
        };
        assert_eq!(Failure::of(&gone), Failure::Transient);
    }
}
