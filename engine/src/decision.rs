//! The pure choice of the next step, and of what a failed fetch leads to.

use std::time::Duration;

use crate::event::{Event, PauseReason};
use crate::state::{RunState, Status};
use crate::time::Timestamp;

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

/// How failed requests are retried: exponential backoff with full jitter, bounded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts per page before the run fails (the first try counts).
    pub max_attempts: u32,
    /// Backoff of the first retry.
    pub base: Duration,
    /// Largest backoff.
    pub cap: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 6,
            base: Duration::from_millis(250),
            cap: Duration::from_secs(30),
        }
    }
}

/// A failed fetch as the driver saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FetchFailure {
    /// The page being fetched.
    pub page: u64,
    /// Worth retrying (429, 5xx, timeouts, resets, malformed pages).
    pub retryable: bool,
    /// What the server asked for (`Retry-After`), if anything.
    pub retry_after: Option<Duration>,
    /// Description, free of secrets.
    pub message: String,
}

/// The event a failed fetch leads to: a retry after a jittered wait, or the run failing.
/// `jitter` is a uniform sample in `[0, 1)` drawn by the driver. Pure.
pub fn on_fetch_failure(
    state: &RunState,
    failure: &FetchFailure,
    policy: &RetryPolicy,
    jitter: f64,
    at: Timestamp,
) -> Event {
    let attempt = state.attempts + 1;
    if !failure.retryable || attempt >= policy.max_attempts {
        let why = if failure.retryable {
            format!(
                "page {} failed after {attempt} attempts: {}",
                failure.page, failure.message
            )
        } else {
            format!("page {}: {}", failure.page, failure.message)
        };
        return Event::RunFailed { error: why, at };
    }
    let exp = policy.base.saturating_mul(1u32 << state.attempts.min(20));
    let ceiling = exp.min(policy.cap);
    // Full jitter: uniform in [0, ceiling]; a server's Retry-After is a floor, never skipped.
    let jittered = ceiling.mul_f64(jitter.clamp(0.0, 1.0));
    let wait = match failure.retry_after {
        Some(after) if !after.is_zero() => after.max(jittered),
        _ => jittered.max(Duration::from_millis(10)),
    };
    Event::RequestRetried {
        page: failure.page,
        attempt,
        error: failure.message.clone(),
        wait_ms: u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
        at,
    }
}
