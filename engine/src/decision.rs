//! The pure choice of the next step, and of what a failed fetch leads to.

use std::time::Duration;

use crate::destination;
use crate::event::{Event, PauseReason};
use crate::group::GROUP;
use crate::source::{self, ErrorKind};
use crate::state::{RunState, Status};
use crate::time::{millis, Timestamp};

/// The next thing the driver must do for a run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Fetch page `page` with `cursor` and stage its records.
    Fetch {
        /// Page number to fetch.
        page: u64,
        /// Cursor to send (`None`: the first page of the window).
        cursor: Option<String>,
    },
    /// Write the staged page `page` to the destination.
    Write {
        /// Page number.
        page: u64,
    },
    /// Advance the checkpoint past the written page `page`.
    Commit {
        /// Page number.
        page: u64,
    },
    /// Record that the run completed.
    Complete,
    /// Record that the run pauses.
    Pause(PauseReason),
    /// Nothing to do: the run is not running.
    Stop,
}

/// What this invocation may still spend, computed by the driver.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Budget {
    /// Pages this invocation may still fetch (`None`: unlimited).
    pub pages_left: Option<u64>,
    /// The time budget ran out.
    pub out_of_time: bool,
    /// A stop was requested (signal).
    pub interrupted: bool,
}

/// Chooses the next step. Pure.
///
/// Order matters for the invariants: a written page is committed before anything else, a
/// staged page is written before another is fetched, and budgets are only checked before a
/// fetch, so a pause always falls on a step boundary with nothing written but uncommitted.
pub fn decide(state: &RunState, budget: &Budget) -> Action {
    if state.status != Status::Running {
        return Action::Stop;
    }
    if let Some(front) = state.pending.front() {
        if front.written.is_some() {
            return Action::Commit {
                page: front.fetched.page,
            };
        }
    }
    if let Some(unwritten) = state.pending.iter().find(|p| p.written.is_none()) {
        return Action::Write {
            page: unwritten.fetched.page,
        };
    }
    if state.exhausted() {
        return Action::Complete;
    }
    if budget.interrupted {
        return Action::Pause(PauseReason::Interrupted);
    }
    if budget.out_of_time {
        return Action::Pause(PauseReason::TimeBudget);
    }
    if let Some(0) = budget.pages_left {
        return Action::Pause(PauseReason::PageBudget(state.counts.pages_fetched));
    }
    Action::Fetch {
        page: state.next_page(),
        cursor: state.fetch_cursor().cloned(),
    }
}

/// The next fetch that may run *ahead*, while the pending pages are written and committed:
/// the driver's pipelining. Never past the last page, only when the budget would allow
/// that fetch next anyway, and never more than `2 × GROUP` pages pending (the staged block
/// files rely on it: see `staging`). The driver asks again with each page fetched
/// ahead folded into `state`. The pages' `PageFetched` are journaled after the written
/// pages' `BatchWritten` and `CursorCommitted`, in the same batch and flush, so a page is
/// still written only once its fetch is durable, and pages are written and committed in
/// order. Pure.
pub fn lookahead(state: &RunState, budget: &Budget) -> Option<Action> {
    let ahead_ok = state.status == Status::Running
        && !state.pending.is_empty()
        && (state.pending.len() as u64) < 2 * GROUP
        && !state.exhausted()
        && !budget.interrupted
        && !budget.out_of_time
        && budget.pages_left != Some(0);
    ahead_ok.then(|| Action::Fetch {
        page: state.next_page(),
        cursor: state.fetch_cursor().cloned(),
    })
}

/// How failed requests are retried: exponential backoff with full jitter, bounded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts per page before the run fails (the first try counts).
    pub max_attempts: u32,
    /// Backoff of the first retry.
    pub base: Duration,
    /// Largest backoff.
    pub cap: Duration,
    /// Longest wait the run sleeps through; a longer one (a far `Retry-After`) pauses the
    /// run with the time the API allows requests again.
    pub max_wait: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 6,
            base: Duration::from_millis(250),
            cap: Duration::from_secs(30),
            max_wait: Duration::from_secs(600),
        }
    }
}

/// Shortest wait before a retry: a missing or zero `Retry-After` never means "at once".
const MIN_WAIT: Duration = Duration::from_millis(10);

/// The longest wait an API is believed (a `Retry-After`, a quota's reset): 24 hours. A
/// broken or hostile header (`Retry-After: 18446744073709551615`, a date in the year 9999)
/// must neither stop a source for good nor journal a time past the calendar's end; the
/// request gate holds requests back by the same bound, so the run waits what it journals.
pub const LONGEST_WAIT: Duration = Duration::from_secs(24 * 3600);

/// The event a failed fetch of `page` leads to: a retry after a jittered wait, a pause
/// (the wait is longer than `max_wait` or than the `time_left` of the run's budget), or
/// the run failing. `jitter` is a uniform sample in `[0, 1)` drawn by the driver. Pure.
pub fn on_fetch_failure(
    state: &RunState,
    page: u64,
    failure: &source::Error,
    policy: &RetryPolicy,
    jitter: f64,
    time_left: Option<Duration>,
    at: Timestamp,
) -> Event {
    if failure.kind == ErrorKind::Fatal {
        return Event::RunFailed {
            error: format!("page {page}: {}", failure.message),
            at,
        };
    }
    // A server's Retry-After is a floor, never skipped (up to the longest wait believed).
    let jittered = backoff(policy, state.attempts, jitter);
    let wait = match failure.retry_after {
        Some(after) if !after.is_zero() => after.min(LONGEST_WAIT).max(jittered),
        _ => jittered.max(MIN_WAIT),
    };
    let asked = failure.kind == ErrorKind::RateLimited || failure.retry_after.is_some();
    let pause = match asked {
        true => PauseReason::RateLimited {
            until: at.saturating_add(wait),
        },
        false => PauseReason::TimeBudget,
    };
    let failed = |attempt| {
        format!(
            "page {page} failed after {attempt} attempts: {}",
            failure.message
        )
    };
    if let Some(stop) = give_up(state, policy, wait, time_left, pause, failed, at) {
        return stop;
    }
    Event::RequestRetried {
        page,
        error: failure.message.clone(),
        status: failure.status,
        rule: failure.rule.clone(),
        attempt: state.attempts + 1,
        wait_ms: millis(wait),
        at,
    }
}

/// What stops a retry after a wait of `wait`: a pause (`pause`) when the wait is longer
/// than `max_wait` or the `time_left`, else the run failing (`failed(attempt)`) once the
/// attempts are used up; `None`: retry. A pause comes first: even on the last attempt, a
/// rate limit is not a failure.
fn give_up(
    state: &RunState,
    policy: &RetryPolicy,
    wait: Duration,
    time_left: Option<Duration>,
    pause: PauseReason,
    failed: impl FnOnce(u32) -> String,
    at: Timestamp,
) -> Option<Event> {
    let attempt = state.attempts + 1;
    if wait > policy.max_wait || time_left.is_some_and(|left| wait > left) {
        return Some(Event::RunPaused { reason: pause, at });
    }
    (attempt >= policy.max_attempts).then(|| Event::RunFailed {
        error: failed(attempt),
        at,
    })
}

/// The event a transient destination failure of `page`'s write leads to: a retry after a
/// jittered wait (the same backoff and `max_attempts` as a fetch), a pause (the wait is
/// longer than `max_wait` or the budget left), or the run failing; a permanent failure
/// fails the run at once. Pure.
pub fn on_write_failure(
    state: &RunState,
    page: u64,
    failure: &destination::Error,
    policy: &RetryPolicy,
    jitter: f64,
    time_left: Option<Duration>,
    at: Timestamp,
) -> Event {
    if !failure.retryable() {
        return Event::RunFailed {
            error: format!("destination refused page {page}: {}", failure.message),
            at,
        };
    }
    let wait = backoff(policy, state.attempts, jitter).max(MIN_WAIT);
    let failed = |attempt| {
        format!(
            "destination refused page {page} after {attempt} attempts: {}",
            failure.message
        )
    };
    let pause = PauseReason::TimeBudget;
    if let Some(stop) = give_up(state, policy, wait, time_left, pause, failed, at) {
        return stop;
    }
    Event::WriteRetried {
        page,
        attempt: state.attempts + 1,
        error: failure.message.clone(),
        wait_ms: millis(wait),
        at,
    }
}

/// The wait before the next attempt after `failed` failed attempts: exponential from
/// `base`, capped at `cap`, with full jitter (uniform in `[0, ceiling]`; `jitter` is a
/// sample in `[0, 1)`). The one backoff of Waymark: fetches, destination writes, the HTTP
/// destination's requests and reconciliation reads all wait by it.
pub fn backoff(policy: &RetryPolicy, failed: u32, jitter: f64) -> Duration {
    let ceiling = policy
        .base
        .saturating_mul(1u32 << failed.min(20))
        .min(policy.cap);
    ceiling.mul_f64(jitter.clamp(0.0, 1.0))
}

/// A seeded source of jitter samples in `[0, 1)` (splitmix64): the same seed, the same
/// waits, so a test can replay a run's backoff exactly.
#[derive(Clone, Debug)]
pub struct Jitter(u64);

impl Jitter {
    /// Samples from `seed`.
    pub fn new(seed: u64) -> Self {
        Jitter(seed)
    }

    /// The next sample.
    pub fn next_sample(&mut self) -> f64 {
        let z = splitmix64(self.0);
        self.0 = self.0.wrapping_add(GOLDEN_GAMMA);
        unit(z)
    }
}

/// splitmix64's increment.
const GOLDEN_GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

/// One step of splitmix64 from state `z`: a well-mixed 64-bit value. Waymark's one source
/// of pseudo-randomness (jitter here, the sandbox's data and faults), so everything is
/// reproducible from a seed.
pub fn splitmix64(z: u64) -> u64 {
    let mut z = z.wrapping_add(GOLDEN_GAMMA);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A uniform number in `[0, 1)` from the top 53 bits of `bits` (exactly representable).
pub fn unit(bits: u64) -> f64 {
    let top = u32::try_from(bits >> 32).unwrap_or(u32::MAX);
    let low = u32::try_from((bits >> 11) & 0x1F_FFFF).unwrap_or(0);
    (f64::from(top) * f64::from(1u32 << 21) + f64::from(low)) / 2f64.powi(53)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{PageFetched, RunStarted, StartFrom, WriteAck};
    use crate::run_id::RunId;
    use crate::state::apply;
    use crate::window::Window;

    fn state(events: &[Event]) -> RunState {
        let started = RunStarted {
            run_id: RunId::new(),
            sync: "s".into(),
            stream: "t".into(),
            workflow_digest: "d".into(),
            workflow_path: "w".into(),
            window: Window {
                start: None,
                end: Timestamp(100),
            },
            start_cursor: Some("c0".into()),
            start_from: StartFrom::Beginning,
            at: Timestamp(1),
        };
        let mut s = RunState::start(&started);
        for e in events {
            s = match apply(s, e) {
                Ok(s) => s,
                Err(err) => panic!("{err}"),
            };
        }
        s
    }

    fn fetched(page: u64, next: Option<&str>) -> Event {
        Event::PageFetched(PageFetched {
            page,
            request_cursor: None,
            next_cursor: next.map(str::to_string),
            records: 1,
            bytes: 1,
            checksum: 0,
            at: Timestamp(2),
            max_seen: None,
        })
    }

    const NONE: Budget = Budget {
        pages_left: None,
        out_of_time: false,
        interrupted: false,
    };

    #[test]
    fn looks_ahead_while_fewer_than_two_groups_are_pending_and_the_budget_allows() {
        let next = Some(Action::Fetch {
            page: 2,
            cursor: Some("c1".into()),
        });
        assert_eq!(lookahead(&state(&[]), &NONE), None, "nothing pending");
        let one = state(&[fetched(1, Some("c1"))]);
        assert_eq!(lookahead(&one, &NONE), next);
        let written = Event::BatchWritten {
            page: 1,
            ack: WriteAck::default(),
            at: Timestamp(3),
        };
        let one_written = state(&[fetched(1, Some("c1")), written.clone()]);
        assert_eq!(lookahead(&one_written, &NONE), next);
        // Pages fetched ahead one by one: the last one allowed makes 2 × GROUP pending.
        let mut events = vec![fetched(1, Some("c1")), written];
        for page in 2..=2 * GROUP {
            let ahead = lookahead(&state(&events), &NONE);
            let cursor = format!("c{}", page - 1);
            assert_eq!(
                ahead,
                Some(Action::Fetch {
                    page,
                    cursor: Some(cursor)
                })
            );
            events.push(fetched(page, Some(&format!("c{page}"))));
        }
        assert_eq!(
            lookahead(&state(&events), &NONE),
            None,
            "two groups pending at most"
        );
        assert_eq!(
            lookahead(&state(&[fetched(1, None)]), &NONE),
            None,
            "the last page"
        );
        for budget in [
            Budget {
                pages_left: Some(0),
                ..NONE
            },
            Budget {
                out_of_time: true,
                ..NONE
            },
            Budget {
                interrupted: true,
                ..NONE
            },
        ] {
            assert_eq!(lookahead(&one, &budget), None, "{budget:?}");
        }
        assert_eq!(
            lookahead(
                &one,
                &Budget {
                    pages_left: Some(1),
                    ..NONE
                }
            ),
            next
        );
    }

    #[test]
    fn chooses_fetch_write_commit_complete_in_order() {
        let s = state(&[]);
        assert_eq!(
            decide(&s, &NONE),
            Action::Fetch {
                page: 1,
                cursor: Some("c0".into())
            }
        );
        let s = state(&[fetched(1, Some("c1"))]);
        assert_eq!(decide(&s, &NONE), Action::Write { page: 1 });
        let written = Event::BatchWritten {
            page: 1,
            ack: WriteAck::default(),
            at: Timestamp(3),
        };
        let s = state(&[fetched(1, Some("c1")), written.clone()]);
        assert_eq!(decide(&s, &NONE), Action::Commit { page: 1 });
        let commit = Event::CursorCommitted {
            page: 1,
            at: Timestamp(4),
        };
        let s = state(&[fetched(1, Some("c1")), written.clone(), commit.clone()]);
        assert_eq!(
            decide(&s, &NONE),
            Action::Fetch {
                page: 2,
                cursor: Some("c1".into())
            }
        );
        let s = state(&[fetched(1, None), written, commit]);
        assert_eq!(decide(&s, &NONE), Action::Complete);
    }

    #[test]
    fn budgets_pause_only_before_a_fetch() {
        let out = Budget {
            out_of_time: true,
            ..NONE
        };
        let stop = Budget {
            interrupted: true,
            ..NONE
        };
        let spent = Budget {
            pages_left: Some(0),
            ..NONE
        };
        let fresh = state(&[]);
        assert_eq!(decide(&fresh, &out), Action::Pause(PauseReason::TimeBudget));
        assert_eq!(
            decide(&fresh, &stop),
            Action::Pause(PauseReason::Interrupted)
        );
        assert_eq!(
            decide(&fresh, &spent),
            Action::Pause(PauseReason::PageBudget(0))
        );
        // A staged page is still written and committed before the pause.
        let staged = state(&[fetched(1, Some("c1"))]);
        assert_eq!(decide(&staged, &out), Action::Write { page: 1 });
        // The last page done: completing beats pausing.
        let done = state(&[
            fetched(1, None),
            Event::BatchWritten {
                page: 1,
                ack: WriteAck::default(),
                at: Timestamp(3),
            },
            Event::CursorCommitted {
                page: 1,
                at: Timestamp(4),
            },
        ]);
        assert_eq!(decide(&done, &stop), Action::Complete);
    }

    #[test]
    fn stops_when_not_running() {
        let s = state(&[Event::RunFailed {
            error: "x".into(),
            at: Timestamp(2),
        }]);
        assert_eq!(decide(&s, &NONE), Action::Stop);
    }

    fn failure(kind: ErrorKind, retry_after: Option<Duration>) -> source::Error {
        source::Error {
            retry_after,
            status: Some(503),
            ..source::Error::new(kind, "HTTP 503")
        }
    }

    fn retried(wait_ms: u64) -> Event {
        Event::RequestRetried {
            page: 1,
            attempt: 1,
            error: "x".into(),
            status: Some(503),
            rule: None,
            wait_ms,
            at: Timestamp(9),
        }
    }

    const POLICY: RetryPolicy = RetryPolicy {
        max_attempts: 3,
        base: Duration::from_millis(100),
        cap: Duration::from_millis(150),
        max_wait: Duration::from_secs(60),
    };

    fn decide_failure(s: &RunState, f: &source::Error, jitter: f64, left: Option<u64>) -> Event {
        let left = left.map(Duration::from_millis);
        on_fetch_failure(s, 1, f, &POLICY, jitter, left, Timestamp(9))
    }

    #[test]
    fn failures_retry_with_jittered_backoff_then_fail() {
        let transient = failure(ErrorKind::Retry, None);
        let s = state(&[]);
        assert_eq!(
            decide_failure(&s, &transient, 0.5, None),
            Event::RequestRetried {
                page: 1,
                attempt: 1,
                error: "HTTP 503".into(),
                status: Some(503),
                rule: None,
                wait_ms: 50,
                at: Timestamp(9),
            }
        );
        // The second retry's ceiling is capped at 150 ms.
        let s = state(&[retried(50)]);
        assert!(matches!(
            decide_failure(&s, &transient, 1.0, None),
            Event::RequestRetried {
                attempt: 2,
                wait_ms: 150,
                ..
            }
        ));
        // Retry-After is a floor, and zero falls back to backoff, never an instant retry.
        let after = failure(ErrorKind::RateLimited, Some(Duration::from_secs(2)));
        assert!(matches!(
            decide_failure(&s, &after, 0.0, None),
            Event::RequestRetried { wait_ms: 2000, .. }
        ));
        let zero = failure(ErrorKind::RateLimited, Some(Duration::ZERO));
        assert!(matches!(
            decide_failure(&s, &zero, 0.0, None),
            Event::RequestRetried { wait_ms: 10, .. }
        ));
        // The third attempt is the last.
        let s = state(&[retried(50), retried(50)]);
        assert!(
            matches!(decide_failure(&s, &transient, 0.5, None), Event::RunFailed { error, .. } if error.contains("after 3 attempts"))
        );
        // Not retryable: fails at once.
        let fatal = source::Error::new(ErrorKind::Fatal, "HTTP 404");
        assert!(
            matches!(decide_failure(&state(&[]), &fatal, 0.5, None), Event::RunFailed { error, .. } if error == "page 1: HTTP 404")
        );
    }

    #[test]
    fn long_waits_pause_instead_of_sleeping() {
        let s = state(&[]);
        // Beyond max_wait (60 s): paused until the time the API named.
        let far = failure(ErrorKind::RateLimited, Some(Duration::from_secs(3600)));
        assert_eq!(
            decide_failure(&s, &far, 0.5, None),
            Event::RunPaused {
                reason: PauseReason::RateLimited {
                    until: Timestamp(9 + 3_600_000)
                },
                at: Timestamp(9)
            }
        );
        // Even on the last attempt: a rate limit is not a failure.
        let last = state(&[retried(50), retried(50)]);
        assert!(matches!(
            decide_failure(&last, &far, 0.5, None),
            Event::RunPaused { .. }
        ));
        // A wait beyond the time budget left pauses too.
        let near = failure(ErrorKind::RateLimited, Some(Duration::from_secs(5)));
        assert!(matches!(
            decide_failure(&s, &near, 0.5, Some(4_000)),
            Event::RunPaused {
                reason: PauseReason::RateLimited {
                    until: Timestamp(5_009)
                },
                ..
            }
        ));
        // Beyond the longest wait believed: paused for 24 hours, not until the end of time.
        for absurd in [
            Duration::from_secs(1_000_000_000_000),
            Duration::from_secs(u64::MAX),
            Duration::MAX,
        ] {
            assert_eq!(
                decide_failure(
                    &s,
                    &failure(ErrorKind::RateLimited, Some(absurd)),
                    0.5,
                    None
                ),
                Event::RunPaused {
                    reason: PauseReason::RateLimited {
                        until: Timestamp(9 + 86_400_000)
                    },
                    at: Timestamp(9)
                }
            );
        }
        let transient = failure(ErrorKind::Retry, None);
        assert_eq!(
            decide_failure(&s, &transient, 1.0, Some(20)),
            Event::RunPaused {
                reason: PauseReason::TimeBudget,
                at: Timestamp(9)
            }
        );
    }

    #[test]
    fn write_failures_retry_transient_ones_with_the_same_backoff_and_bound() {
        let busy = destination::Error::transient("database is locked");
        let fail = |s: &RunState, e: &destination::Error, jitter: f64, left: Option<u64>| {
            let left = left.map(Duration::from_millis);
            on_write_failure(s, 1, e, &POLICY, jitter, left, Timestamp(9))
        };
        let s = state(&[fetched(1, Some("c1"))]);
        assert_eq!(
            fail(&s, &busy, 0.5, None),
            Event::WriteRetried {
                page: 1,
                attempt: 1,
                error: "database is locked".into(),
                wait_ms: 50,
                at: Timestamp(9),
            }
        );
        // Never an instant retry, whatever the jitter drew.
        assert!(matches!(
            fail(&s, &busy, 0.0, None),
            Event::WriteRetried { wait_ms: 10, .. }
        ));
        // The write's attempts count, and the last one fails the run.
        let retried = |attempt| Event::WriteRetried {
            page: 1,
            attempt,
            error: "busy".into(),
            wait_ms: 50,
            at: Timestamp(9),
        };
        let s2 = state(&[fetched(1, Some("c1")), retried(1), retried(2)]);
        assert_eq!(s2.attempts, 2);
        assert!(
            matches!(fail(&s2, &busy, 0.5, None), Event::RunFailed { error, .. } if error == "destination refused page 1 after 3 attempts: database is locked")
        );
        // A permanent failure fails at once; a wait beyond the time left pauses.
        let full = destination::Error::permanent("disk full");
        assert!(
            matches!(fail(&s, &full, 0.5, None), Event::RunFailed { error, .. } if error == "destination refused page 1: disk full")
        );
        assert_eq!(
            fail(&s, &busy, 1.0, Some(20)),
            Event::RunPaused {
                reason: PauseReason::TimeBudget,
                at: Timestamp(9)
            }
        );
    }

    #[test]
    fn a_write_retry_names_the_next_page_to_write() {
        let s = state(&[fetched(1, Some("c1"))]);
        let wrong = Event::WriteRetried {
            page: 2,
            attempt: 1,
            error: "busy".into(),
            wait_ms: 10,
            at: Timestamp(9),
        };
        assert!(apply(s, &wrong).is_err());
    }

    #[test]
    fn jitter_is_seeded_uniform_and_backoff_capped() {
        let mut a = Jitter::new(7);
        let mut b = Jitter::new(7);
        let draws: Vec<f64> = (0..1000).map(|_| a.next_sample()).collect();
        assert!(draws.iter().all(|x| (0.0..1.0).contains(x)));
        assert_eq!(
            draws[..5],
            (0..5).map(|_| b.next_sample()).collect::<Vec<_>>()[..]
        );
        let mean = draws.iter().sum::<f64>() / 1000.0;
        assert!((0.45..0.55).contains(&mean), "{mean}");
        assert_eq!(backoff(&POLICY, 0, 1.0), Duration::from_millis(100));
        assert_eq!(backoff(&POLICY, 5, 1.0), Duration::from_millis(150));
        assert_eq!(backoff(&POLICY, 40, 0.5), Duration::from_millis(75));
    }
}
