//! The request budget of one source: a proactive limit (GCRA, guarded by a sliding window
//! of the last requests, see [`Pace`]), the API's own quota headers, and the wait an API
//! asked for (`Retry-After`). Every stream of the source passes the
//! same [`Gate`] before each request, and its state is kept in the state directory, so the
//! next run does not begin by hitting 429.
//!
//! Written here rather than taken from `governor`: the gate must sleep on the engine's
//! [`Clock`] (tests advance it without real time) and persist its state between processes,
//! and GCRA itself is a few lines.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use reqwest::header::HeaderMap;
use serde::{Deserialize, Serialize};

use waymark_engine::decision::LONGEST_WAIT;
use waymark_engine::time::millis;
use waymark_engine::{Clock, Timestamp};

use crate::config::RateLimit;

/// The margin added to a `rate_limit` period (see [`Pace`]): clocks, ours and the API's,
/// are read to the millisecond.
const MARGIN_MS: u64 = 5;

/// How often a gate whose cluster share lapsed looks again.
const SHARE_RECHECK: Duration = Duration::from_millis(50);

/// When the quota is at or below this fraction of its limit, requests are spread evenly
/// over the time left until the quota resets.
const LOW_QUOTA: u64 = 10;

/// What the gate knows; kept in `rate/<origin>.json` in the state directory (a tenant's in
/// `rate/<origin>@<tenant>.json`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Budget {
    /// GCRA's theoretical arrival time of the next request, µs since the epoch.
    tat_us: u64,
    /// Requests left in the API's quota window (its headers), counted down locally.
    remaining: Option<u64>,
    /// The quota's size, when the API says.
    limit: Option<u64>,
    /// When the quota window resets, ms since the epoch.
    reset_at: Option<u64>,
    /// No request before this instant (the API's `Retry-After`), ms since the epoch.
    blocked_until: Option<u64>,
    /// When the last request was let through, ms since the epoch.
    last_ms: u64,
    /// When the latest requests were let through, ms since the epoch, oldest first: at most
    /// the rate limit's count (see [`Pace`]).
    #[serde(default)]
    recent: VecDeque<u64>,
    /// Without a `rate_limit`: the pace learned from the API's refusals (see [`Learned`]).
    #[serde(default)]
    learned: Option<Learned>,
    /// Without a `rate_limit`: (the second that began at this instant (ms), requests the
    /// API accepted in it), the first refusal's estimate of the API's rate.
    #[serde(default)]
    second: (u64, u64),
}

/// A pace nobody configured, learned from the API's `429`s (additive increase,
/// multiplicative decrease, shaped like TCP's CUBIC) and kept with the budget, so the next
/// run starts at the learned rate.
///
/// The first refusal starts at the rate the API just let through (requests answered in the
/// last second), which then grows by 3% an accepted request (a slow start) until the next
/// refusal sets the ceiling at 80% of the rate refused. From then on each refusal drops the
/// pace to 90% of the rate refused, and the pace climbs back towards that ceiling within a
/// cycle (quickly at first, then lingering just below it: most requests go near the limit
/// and few beyond it), then probes past it ever faster in case the API's limit was raised.
/// The cycle doubles from 8 s after each refusal, up to 30 s: about one refused request in
/// 30 s at the limit. A refusal in the first half of a cycle (the ceiling was too high)
/// cuts the ceiling to 80%, three times in a row at most: refusals that keep coming early,
/// whatever the pace, are not about the rate (an API refusing a share of its requests) and
/// are only waited out until a refusal-free climb; and the pace never drops below a quarter
/// of the most requests the API accepted in one second. Measured in BENCHMARKS.md ("Rate
/// limits nobody configured").
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Learned {
    /// Still in the slow start: `rate_mrps` grows with each accepted request.
    slow_start: bool,
    /// The ceiling (or, in the slow start, the current rate), in thousandths of a request
    /// per second.
    rate_mrps: u64,
    /// Requests accepted since the last refusal.
    since: u64,
    /// Seconds the climb back to the ceiling takes.
    cycle_s: u64,
    /// Refusals of requests let through before this instant (ms) were already counted.
    counted_until_ms: u64,
    /// The most requests the API accepted in one second: the pace never drops below a
    /// quarter of it, so 429s that are not about the rate (an API answering a share of
    /// requests 429 at any pace) cannot bring it to a crawl.
    best_second: u64,
    /// Cuts in a row by refusals early in a climb (see [`Learned::refused`]).
    early_cuts: u32,
    /// Refusals ignored since the last one counted.
    ignored: u32,
}

impl Learned {
    const GROWTH: f64 = 1.03;
    const BETA: f64 = 0.9;
    const EARLY_CUT: f64 = 0.8;
    const FIRST_CYCLE_S: u64 = 8;
    const LONGEST_CYCLE_S: u64 = 30;
    /// Past the ceiling, the probe stops growing at this many cycles (3.7 × the ceiling).
    const FURTHEST: f64 = 4.0;
    /// A million requests a second: the slow start grows no further (an API that never
    /// refuses again).
    const FASTEST_MRPS: f64 = 1e9;
    /// Early refusals in a row that still cut the ceiling (0.8³ ≈ half of it).
    const MOST_EARLY_CUTS: u32 = 3;

    fn ceiling(&self) -> f64 {
        (self.rate_mrps as f64 / 1000.0).max(0.001)
    }

    /// Where the climb is: 0 just after a refusal, 1 back at the ceiling.
    fn progress(&self) -> f64 {
        let climb = (self.cycle_s as f64 * self.ceiling()).max(1.0);
        (self.since as f64 / climb).min(Self::FURTHEST)
    }

    /// Requests per second now.
    fn rate(&self) -> f64 {
        let c = self.ceiling();
        let floor = self.best_second as f64 / 4.0;
        if self.slow_start {
            return c.max(floor);
        }
        let x = self.progress();
        let lift = (1.0 - Self::BETA) * (x - 1.0).powi(3);
        (c * (1.0 + lift)).max(floor)
    }

    fn pace(&self) -> Pace {
        // At least one request an hour, at most a million a second.
        let interval_us = whole((1e6 / self.rate()).min(3.6e9));
        Pace {
            interval_us,
            tolerance_us: 0,
            count: 0,
            window_ms: 0,
        }
    }

    fn accepted(&mut self, in_this_second: u64) {
        self.best_second = self.best_second.max(in_this_second);
        self.since = self.since.saturating_add(1);
        if self.slow_start {
            self.rate_mrps = whole((self.rate_mrps as f64 * Self::GROWTH).min(Self::FASTEST_MRPS));
        }
    }

    /// After a refusal of a request let through at `admitted_ms`: the new ceiling, and
    /// whether it changed (refusals of requests sent before the last one was counted
    /// do not count again).
    fn refused(&mut self, admitted_ms: u64, now_ms: u64) -> bool {
        if admitted_ms < self.counted_until_ms {
            return false;
        }
        // After a refusal-free climb a refusal is about the rate; one early in a climb, or
        // after refusals already ignored, may not be: a few cut the ceiling (it was too
        // high), more are not about the rate (an API refusing a share of requests at any
        // pace) and are only waited out, so they cannot bring the pace to a crawl.
        let suspect = !self.slow_start && (self.progress() < 0.5 || self.ignored > 0);
        self.counted_until_ms = now_ms;
        if suspect && self.early_cuts >= Self::MOST_EARLY_CUTS {
            self.ignored = self.ignored.saturating_add(1);
            return false;
        }
        self.early_cuts = if suspect { self.early_cuts + 1 } else { 0 };
        self.ignored = 0;
        let refused_at = self.rate();
        let ceiling = match self.slow_start {
            true => refused_at * Self::EARLY_CUT,
            false if self.progress() < 0.5 => refused_at * Self::EARLY_CUT / Self::BETA,
            false => refused_at,
        };
        self.cycle_s = match self.slow_start {
            true => Self::FIRST_CYCLE_S,
            false => (self.cycle_s * 2).min(Self::LONGEST_CYCLE_S),
        };
        self.slow_start = false;
        self.rate_mrps = whole((ceiling * 1000.0).min(Self::FASTEST_MRPS));
        self.since = 0;
        true
    }
}

/// `x` (kept under 2⁶⁴ by the caller) rounded down to a whole number, at least 1 (NaN or
/// negative: 1), without a silent cast.
fn whole(x: f64) -> u64 {
    Duration::try_from_secs_f64(x).map_or(1, |d| d.as_secs().max(1))
}

/// The workflow's `rate_limit` as the gate applies it: GCRA spaces requests `interval`
/// apart (`tolerance` more for a burst), and a request that is late by a little (the
/// timer's granularity) keeps the schedule instead of moving it back, so lateness does not
/// add up into a lower rate. What keeps the API's own count safe is the window: never more
/// than `count` requests in any `per` plus a margin, counted from when each request had
/// surely reached the API (its answer, however long a new connection took; or, sent on a
/// connection already open, soon after it was sent — see `Api::send`) or, while it is in
/// flight, from when it was let through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Pace {
    interval_us: u64,
    tolerance_us: u64,
    /// 0: no window (a learned pace: the API's window is not known).
    count: usize,
    /// `per` plus the margin, in ms.
    window_ms: u64,
}

impl Pace {
    fn new(limit: &RateLimit) -> Self {
        let per_us = u64::try_from(limit.per.0.as_micros()).unwrap_or(u64::MAX);
        let interval_us = per_us.div_ceil(u64::from(limit.requests.max(1)));
        let per_ms = per_us / 1000;
        Pace {
            interval_us,
            tolerance_us: interval_us * u64::from(limit.burst.max(1) - 1),
            count: usize::try_from(limit.requests.max(1)).unwrap_or(usize::MAX),
            window_ms: per_ms + MARGIN_MS,
        }
    }

    /// Whether this pace sends at most as many requests over time as `other`.
    fn at_most(&self, other: &Pace) -> bool {
        let mine = u128::from(self.count as u64) * u128::from(other.window_ms);
        mine <= u128::from(other.count as u64) * u128::from(self.window_ms)
    }

    /// Lateness absorbed by the schedule: a quarter of the interval.
    fn slack_us(&self) -> u64 {
        self.interval_us / 4
    }

    /// A worker's share of `limit` in a cluster: `held` of the budget's `total`
    /// partitions. Shares are whole requests per period, rounded down, so the workers'
    /// shares never add up to more than the limit; a share under one request a period is
    /// one request per as many periods as it takes.
    fn shared(limit: &RateLimit, held: u64, total: u64) -> Self {
        let requests = u64::from(limit.requests.max(1));
        let total = total.max(1);
        let whole = requests.saturating_mul(held) / total;
        match u32::try_from(whole) {
            Ok(whole) if whole >= 1 => Pace::new(&RateLimit {
                requests: whole,
                burst: limit.burst.min(whole),
                ..limit.clone()
            }),
            _ => {
                let periods = total.div_ceil(requests.saturating_mul(held.max(1)));
                let per = limit
                    .per
                    .0
                    .saturating_mul(u32::try_from(periods).unwrap_or(u32::MAX));
                Pace::new(&RateLimit {
                    requests: 1,
                    per: crate::config::Span(per),
                    burst: 1,
                    across_tenants: limit.across_tenants,
                    bucket_header: None,
                })
            }
        }
    }
}

/// A worker's share of a cluster's budget, valid until it is renewed with the worker's
/// leases: a worker that stopped renewing (paused, cut off) sends nothing on a share the
/// others may have taken over.
///
/// A share shrinks at once and grows only a whole window (the `rate_limit`'s period and
/// its margin) after it was asked to: the partitions it grows by were paced by another
/// worker until they were given up (that worker lowered its share first) or its lease
/// lapsed, and no window the API counts may hold both that worker's old pace and this
/// one's new pace.
#[derive(Clone, Copy, Debug)]
struct Share {
    /// The pace in effect; `None`: nothing may be sent yet.
    pace: Option<Pace>,
    /// A larger pace, and when it takes effect.
    raise: Option<(Pace, Timestamp)>,
    valid_until: Timestamp,
}

impl Share {
    /// The pace in effect at `now` (`None`: nothing may be sent), a raise that came due
    /// taking effect.
    fn at(&mut self, now: Timestamp) -> Option<Pace> {
        if let Some((pace, _)) = self.raise.filter(|(_, from)| *from <= now) {
            self.pace = Some(pace);
            self.raise = None;
        }
        self.pace.filter(|_| self.valid_until > now)
    }
}

/// A wait longer than the run may sleep: the run pauses until `until`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Blocked {
    /// When requests may go again.
    pub until: Timestamp,
    /// Why.
    pub why: String,
}

/// The shared request budget of one source.
pub struct Gate {
    budget: Mutex<Budget>,
    /// The workflow's `rate_limit`.
    limit: Option<Pace>,
    rate_limit: Option<RateLimit>,
    /// In a cluster: this worker's share of `rate_limit`.
    share: Mutex<Option<Share>>,
    file: Option<PathBuf>,
    clock: Arc<dyn Clock>,
    max_wait: Duration,
}

impl Gate {
    /// A gate with `limit`, its state loaded from (and saved to) `file`.
    pub fn new(
        limit: Option<&RateLimit>,
        file: Option<PathBuf>,
        clock: Arc<dyn Clock>,
        max_wait: Duration,
    ) -> Self {
        let budget = file
            .as_ref()
            .and_then(|f| std::fs::read(f).ok())
            .and_then(|bytes| match serde_json::from_slice(&bytes) {
                Ok(budget) => Some(budget),
                Err(e) => {
                    tracing::warn!("ignoring an unreadable rate-limit state ({e})");
                    None
                }
            })
            .unwrap_or_default();
        let rate_limit = limit.cloned();
        let limit = limit.map(Pace::new);
        Gate {
            budget: Mutex::new(budget),
            limit,
            rate_limit,
            share: Mutex::new(None),
            file,
            clock,
            max_wait,
        }
    }

    /// Waits until a request may be sent, counts it and returns the time it was let through
    /// (give it to [`Gate::answered`] with the answer); or, when the wait is longer than
    /// `max_wait`, returns when requests may go again. Every wait of a second or more is
    /// logged with its reason.
    pub async fn admit(&self) -> Result<Timestamp, Blocked> {
        loop {
            let now = self.clock.now();
            let share = self
                .share
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .as_mut()
                .map(|share| share.at(now));
            let limit = match share {
                // None yet, or not renewed: wait for this worker's next round.
                Some(None) => {
                    self.clock.sleep(SHARE_RECHECK).await;
                    continue;
                }
                Some(pace) => pace,
                None => self.limit,
            };
            let wait = {
                let mut budget = self.lock();
                match budget.wait(now, limit) {
                    None => {
                        let mut before = budget.clone();
                        budget.take(now, limit);
                        // Saved only when it changed (not on every request of an API
                        // without a budget: the last request's time matters only to pace
                        // a quota).
                        if budget.reset_at.is_none() {
                            before.last_ms = budget.last_ms;
                        }
                        let changed = (*budget != before).then(|| budget.clone());
                        drop(budget);
                        if let Some(snapshot) = changed {
                            self.save(&snapshot);
                        }
                        return Ok(now);
                    }
                    Some(wait) => wait,
                }
            };
            let (duration, why) = wait;
            if duration > self.max_wait {
                return Err(Blocked {
                    until: now.saturating_add(duration),
                    why,
                });
            }
            if duration >= Duration::from_secs(1) {
                tracing::info!("waiting {}: {why}", humantime::format_duration(duration));
            }
            self.clock.sleep(duration).await;
        }
    }

    /// The request let through at `admitted` had surely reached the API at `at` (answered,
    /// or failed): the window counts it from then.
    pub fn answered(&self, admitted: Timestamp, at: Timestamp) {
        if self.limit.is_none() {
            return;
        }
        let mut budget = self.lock();
        let recent = &mut budget.recent;
        if let Some(i) = recent.iter().rposition(|t| *t == admitted.0) {
            recent.remove(i);
            let at = at.0.max(admitted.0);
            let place = recent.partition_point(|t| *t <= at);
            recent.insert(place, at);
        }
    }

    /// Learns from the answer to the request let through at `admitted` whether the API
    /// refused it for its rate (a `429`): without a `rate_limit`, the gate paces requests
    /// at what it learned (see [`Learned`]).
    pub fn judged(&self, admitted: Timestamp, refused: bool) {
        if self.rate_limit.is_some() {
            return;
        }
        let now = self.clock.now().0;
        let mut budget = self.lock();
        let Budget {
            learned, second, ..
        } = &mut *budget;
        // Requests accepted in the second that began at `second.0`.
        if now.saturating_sub(second.0) >= 1000 {
            *second = (now, 0);
        }
        if !refused {
            second.1 += 1;
        }
        let changed = match (learned, refused) {
            (Some(learned), true) => learned.refused(admitted.0, now),
            (Some(learned), false) => {
                learned.accepted(second.1);
                false
            }
            (learned @ None, true) => {
                *learned = Some(Learned {
                    slow_start: true,
                    rate_mrps: second.1.max(1) * 1000,
                    since: 0,
                    cycle_s: Learned::FIRST_CYCLE_S,
                    counted_until_ms: now,
                    best_second: second.1,
                    early_cuts: 0,
                    ignored: 0,
                });
                true
            }
            (None, false) => false,
        };
        if !changed {
            return;
        }
        let snapshot = budget.clone();
        drop(budget);
        if let Some(learned) = &snapshot.learned {
            tracing::info!(
                "the API refused a request for its rate (429): pacing its requests at {:.2}/s \
                 from now, learned from its refusals (source.rate_limit would set it)",
                learned.rate()
            );
        }
        self.save(&snapshot);
    }

    /// Reads the API's quota headers from a response: a leaky bucket's level (the
    /// `bucket_header`), or a quota.
    pub fn observe(&self, headers: &HeaderMap) {
        self.observe_bucket(headers);
        let Some(quota) = Quota::read(headers, self.clock.now()) else {
            return;
        };
        let snapshot = {
            let mut budget = self.lock();
            budget.remaining = Some(quota.remaining);
            budget.limit = quota.limit.or(budget.limit);
            let now = self.clock.now().0;
            let longest = now.saturating_add(millis(LONGEST_WAIT));
            budget.reset_at = quota.reset_at.map(|t| t.0.min(longest));
            budget.clone()
        };
        self.save(&snapshot);
    }

    /// The API's count of its bucket (`used/size` in `bucket_header`): requests other
    /// clients sent fill it too, so a level above the local count moves the schedule on.
    fn observe_bucket(&self, headers: &HeaderMap) {
        let (Some(limit), Some(name)) = (
            &self.limit,
            self.rate_limit
                .as_ref()
                .and_then(|r| r.bucket_header.as_ref()),
        ) else {
            return;
        };
        let Some(used) = headers
            .get(name.as_str())
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split('/').next()?.trim().parse::<u64>().ok())
        else {
            return;
        };
        let now_us = self.clock.now().0.saturating_mul(1000);
        // `used` counts the request just answered, as the local schedule does.
        let level = now_us.saturating_add(used.saturating_mul(limit.interval_us));
        let snapshot = {
            let mut budget = self.lock();
            if level <= budget.tat_us {
                return;
            }
            budget.tat_us = level;
            budget.clone()
        };
        self.save(&snapshot);
    }

    /// In a cluster: this worker holds `held` of the `total` partitions sharing this
    /// budget, until `valid_until` (its next round renews it). A smaller share applies at
    /// once, a larger one a window from now (see [`Share`]). Without a `rate_limit`, or
    /// outside a cluster, nothing changes.
    pub fn share(&self, held: u64, total: u64, valid_until: Timestamp) {
        let Some(limit) = &self.rate_limit else {
            return;
        };
        let pace = (held > 0).then(|| Pace::shared(limit, held, total));
        let now = self.clock.now();
        let mut slot = self.share.lock().unwrap_or_else(PoisonError::into_inner);
        let current = slot.as_mut().and_then(|share| share.at(now));
        let pending = slot.and_then(|share| share.raise);
        *slot = Some(match (pace, current) {
            (Some(pace), current) if !current.is_some_and(|c| pace.at_most(&c)) => {
                // A raise already pending for at least as much keeps its time.
                let from = match pending {
                    Some((asked, from)) if pace.at_most(&asked) => from,
                    _ => now.saturating_add(Duration::from_millis(Pace::new(limit).window_ms)),
                };
                Share {
                    pace: current,
                    raise: Some((pace, from)),
                    valid_until,
                }
            }
            (pace, _) => Share {
                pace,
                raise: None,
                valid_until,
            },
        });
    }

    /// No request before `until` (the API said so); shared with every stream of the source.
    pub fn block(&self, until: Timestamp) {
        let snapshot = {
            let mut budget = self.lock();
            // Believed up to the longest wait (the engine journals the same bound).
            let until = until.min(self.clock.now().saturating_add(LONGEST_WAIT)).0;
            budget.blocked_until = Some(budget.blocked_until.unwrap_or(0).max(until));
            budget.clone()
        };
        self.save(&snapshot);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Budget> {
        self.budget.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Saves the budget (atomically: a crash leaves the old file or the new one). Advisory
    /// state: a failure is logged, never fatal.
    fn save(&self, budget: &Budget) {
        let Some(file) = &self.file else { return };
        let result = (|| -> std::io::Result<()> {
            if let Some(dir) = file.parent() {
                std::fs::create_dir_all(dir)?;
            }
            let tmp = file.with_extension("tmp");
            std::fs::write(&tmp, serde_json::to_vec(budget).unwrap_or_default())?;
            std::fs::rename(&tmp, file)
        })();
        if let Err(e) = result {
            tracing::warn!(
                "could not save the rate-limit state {}: {e}",
                file.display()
            );
        }
    }
}

impl Budget {
    /// How long the next request must wait, and why (`None`: it may go now).
    fn wait(&self, now: Timestamp, limit: Option<Pace>) -> Option<(Duration, String)> {
        let ms = |until: u64| Duration::from_millis(until.saturating_sub(now.0));
        if let Some(until) = self.blocked_until.filter(|u| *u > now.0) {
            let why = format!(
                "the API asked to wait (Retry-After) until {}",
                Timestamp(until)
            );
            return Some((ms(until), why));
        }
        if let (Some(remaining), Some(reset)) = (self.remaining, self.reset_at) {
            if reset > now.0 {
                if remaining == 0 {
                    let why = format!("the API's quota is used up until {}", Timestamp(reset));
                    return Some((ms(reset), why));
                }
                let low = self
                    .limit
                    .map_or(remaining <= 1, |l| remaining.saturating_mul(LOW_QUOTA) <= l);
                let pace = (reset - now.0) / remaining.saturating_add(1);
                let next = self.last_ms.saturating_add(pace);
                if low && next > now.0 {
                    let why = format!(
                        "{remaining} requests left in the API's quota until {}: spreading them",
                        Timestamp(reset)
                    );
                    return Some((ms(next), why));
                }
            }
        }
        let learned = self.learned.as_ref().filter(|_| limit.is_none());
        if let Some(pace) = limit.or_else(|| learned.map(Learned::pace)) {
            let now_us = now.0.saturating_mul(1000);
            let allowed = self.tat_us.saturating_sub(pace.tolerance_us);
            // The request `count` back (a changed limit may have left more).
            let back = self.recent.len().checked_sub(pace.count);
            let window = back
                .and_then(|i| self.recent.get(i))
                .map_or(0, |t| (t + pace.window_ms) * 1000);
            let allowed = allowed.max(window);
            if allowed > now_us {
                // Whole milliseconds, rounded up: the clock reads milliseconds, and a
                // wait rounded down to none would find the request still too early.
                let wait = Duration::from_millis((allowed - now_us).div_ceil(1000));
                let why = match learned {
                    Some(l) => format!("the pace learned from the API's 429s ({:.2}/s)", l.rate()),
                    None => "the workflow's rate_limit".into(),
                };
                return Some((wait, why));
            }
        }
        None
    }

    /// Counts a request let through at `now`.
    fn take(&mut self, now: Timestamp, limit: Option<Pace>) {
        let learned = self.learned.as_ref().filter(|_| limit.is_none());
        if let Some(pace) = limit.or_else(|| learned.map(Learned::pace)) {
            let now_us = now.0.saturating_mul(1000);
            // Late by a little: on schedule still; after an idle spell: from now.
            let base = match now_us <= self.tat_us.saturating_add(pace.slack_us()) {
                true => self.tat_us,
                false => now_us,
            };
            self.tat_us = base + pace.interval_us;
            self.recent.push_back(now.0);
            while self.recent.len() > pace.count {
                self.recent.pop_front();
            }
        }
        if self.reset_at.is_some_and(|r| r > now.0) {
            self.remaining = self.remaining.map(|r| r.saturating_sub(1));
        }
        self.blocked_until = self.blocked_until.filter(|u| *u > now.0);
        self.last_ms = now.0;
    }
}

/// A quota as the API's headers state it.
#[derive(Debug, PartialEq, Eq)]
pub struct Quota {
    /// Requests left.
    pub remaining: u64,
    /// Requests a period allows.
    pub limit: Option<u64>,
    /// When the period ends.
    pub reset_at: Option<Timestamp>,
}

impl Quota {
    /// Reads `RateLimit-Remaining`/`-Reset`/`-Limit`, their `X-RateLimit-*` forms, or the
    /// combined `RateLimit: limit=…, remaining=…, reset=…` header. A reset is a number of
    /// seconds, or a Unix time in seconds (above 10⁹) or milliseconds (above 10¹²).
    pub fn read(headers: &HeaderMap, now: Timestamp) -> Option<Quota> {
        let get = |names: &[&str]| {
            names.iter().find_map(|n| {
                let text = headers.get(*n)?.to_str().ok()?;
                // "100, 100;w=60" → 100
                let first = text.split([',', ';']).next()?.trim();
                first.parse::<u64>().ok()
            })
        };
        let combined = headers
            .get("ratelimit")
            .and_then(|v| v.to_str().ok())
            .map(|text| {
                let field = |names: &[&str]| {
                    text.split([',', ';']).find_map(|part| {
                        let (k, v) = part.trim().split_once('=')?;
                        names
                            .contains(&k.trim())
                            .then(|| v.trim().trim_matches('"').parse::<u64>().ok())
                            .flatten()
                    })
                };
                (
                    field(&["remaining", "r"]),
                    field(&["limit", "l"]),
                    field(&["reset", "t"]),
                )
            })
            .unwrap_or_default();
        let remaining = get(&["ratelimit-remaining", "x-ratelimit-remaining"]).or(combined.0)?;
        let limit = get(&["ratelimit-limit", "x-ratelimit-limit"]).or(combined.1);
        let reset = get(&["ratelimit-reset", "x-ratelimit-reset"]).or(combined.2);
        let reset_at = reset.map(|r| {
            if r > 1_000_000_000_000 {
                Timestamp(r)
            } else if r > 1_000_000_000 {
                Timestamp(r.saturating_mul(1000))
            } else {
                Timestamp(now.0.saturating_add(r.saturating_mul(1000)))
            }
        });
        Some(Quota {
            remaining,
            limit,
            reset_at,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn reads_the_common_quota_headers() {
        let now = Timestamp(1_000_000);
        let q = |pairs| Quota::read(&headers(pairs), now);
        assert_eq!(
            q(&[("ratelimit-remaining", "5"), ("ratelimit-reset", "30")]),
            Some(Quota {
                remaining: 5,
                limit: None,
                reset_at: Some(Timestamp(1_030_000))
            })
        );
        assert_eq!(
            q(&[
                ("x-ratelimit-remaining", "0"),
                ("x-ratelimit-limit", "100, 100;w=60"),
                ("x-ratelimit-reset", "1700000000")
            ]),
            Some(Quota {
                remaining: 0,
                limit: Some(100),
                reset_at: Some(Timestamp(1_700_000_000_000))
            })
        );
        assert_eq!(
            q(&[("ratelimit", "limit=10, remaining=3, reset=2")]),
            Some(Quota {
                remaining: 3,
                limit: Some(10),
                reset_at: Some(Timestamp(1_002_000))
            })
        );
        assert_eq!(q(&[("x-other", "1")]), None);
    }

    struct Stopped(Timestamp);

    impl Clock for Stopped {
        fn now(&self) -> Timestamp {
            self.0
        }

        /// Time never moves: a wait never ends.
        fn sleep(
            &self,
            _: Duration,
        ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + '_>> {
            Box::pin(std::future::pending())
        }
    }

    #[test]
    fn a_wait_beyond_a_day_is_believed_for_a_day() {
        let now = Timestamp(1_700_000_000_000);
        let gate = Gate::new(None, None, Arc::new(Stopped(now)), Duration::from_secs(600));
        gate.block(Timestamp(u64::MAX));
        let blocked = futures_util::FutureExt::now_or_never(gate.admit());
        let day = now.saturating_add(LONGEST_WAIT);
        assert!(
            matches!(&blocked, Some(Err(Blocked { until, why })) if *until == day && why.contains("2023-11-15T22:13:20.000Z")),
            "{blocked:?}"
        );
    }

    #[test]
    fn a_leaky_bucket_header_counts_the_other_clients_requests() {
        use futures_util::FutureExt;
        // Shopify's standard bucket: 40 calls, leaking 2 a second.
        let limit = RateLimit {
            requests: 40,
            per: crate::config::Span(Duration::from_secs(20)),
            burst: 40,
            across_tenants: false,
            bucket_header: Some("X-Shopify-Shop-Api-Call-Limit".into()),
        };
        let gate = Gate::new(
            Some(&limit),
            None,
            Arc::new(Stopped(Timestamp(5_000_000))),
            Duration::from_secs(600),
        );
        let admitted = |gate: &Gate| {
            (0..50)
                .take_while(|_| gate.admit().now_or_never().is_some())
                .count()
        };
        assert!(gate.admit().now_or_never().is_some());
        // A lower count than ours changes nothing…
        gate.observe(&headers(&[("x-shopify-shop-api-call-limit", "1/40")]));
        assert_eq!(admitted(&gate), 39, "the bucket holds 40");
        // …a higher one (other apps of the shop) fills the bucket as the API says.
        let gate = Gate::new(
            Some(&limit),
            None,
            Arc::new(Stopped(Timestamp(5_000_000))),
            Duration::from_secs(600),
        );
        assert!(gate.admit().now_or_never().is_some());
        gate.observe(&headers(&[("x-shopify-shop-api-call-limit", "38/40")]));
        assert_eq!(
            admitted(&gate),
            2,
            "room for 2 more, then a wait for the leak"
        );
    }

    struct Manual(std::sync::atomic::AtomicU64);

    impl Clock for Manual {
        fn now(&self) -> Timestamp {
            Timestamp(self.0.load(std::sync::atomic::Ordering::SeqCst))
        }
    }

    /// An API admitting `rate` requests a second with a burst of 2 (GCRA), answering 429
    /// with `Retry-After: 1` beyond, asked through `gate` until it accepted `pages`
    /// requests; each answer takes 3 ms. Returns the share of the allowed rate reached
    /// and the requests refused.
    fn against_a_limit(gate: &Gate, clock: &Manual, rate: u64, pages: u64) -> (f64, u64) {
        use std::sync::atomic::Ordering::SeqCst;
        let interval = 1000 / rate;
        let (mut tat, mut accepted, mut refused) = (clock.now().0, 0, 0);
        let start = clock.now().0;
        while accepted < pages {
            let now = clock.now();
            let wait = gate.lock().wait(now, gate.limit);
            if let Some((wait, _)) = wait {
                clock
                    .0
                    .fetch_add(u64::try_from(wait.as_millis()).unwrap_or(1).max(1), SeqCst);
                continue;
            }
            gate.lock().take(now, gate.limit);
            let ok = now.0 + interval >= tat.saturating_sub(interval);
            if ok {
                tat = tat.max(now.0) + interval;
                accepted += 1;
            } else {
                refused += 1;
                gate.block(now.saturating_add(Duration::from_secs(1)));
            }
            clock.0.fetch_add(3, SeqCst);
            gate.judged(now, !ok);
        }
        let ideal = (pages * 1000 / rate) as f64;
        (ideal / (clock.now().0 - start) as f64, refused)
    }

    #[test]
    fn a_rate_nobody_configured_is_learned_from_429s_and_kept_for_the_next_run() {
        let dir = std::env::temp_dir().join(format!("waymark-learn-{}", std::process::id()));
        let file = dir.join("api.json");
        let _ = std::fs::remove_dir_all(&dir);
        let clock = Arc::new(Manual(std::sync::atomic::AtomicU64::new(1_000_000)));
        let day = Duration::from_secs(86_400);
        // Without learning (greedy, waiting out each Retry-After) the same API gives ~60%
        // with a quarter of the requests refused.
        let gate = Gate::new(None, Some(file.clone()), clock.clone(), day);
        let (first, refused) = against_a_limit(&gate, &clock, 5, 400);
        eprintln!("first run: {first:.3}, {refused} refused");
        assert!(
            first >= 0.88 && refused <= 8,
            "first run: {first:.3}, {refused} refused"
        );
        // The next run starts at the learned pace: ≥ 90% of the rate, ≤ 1% refused.
        clock
            .0
            .fetch_add(3_600_000, std::sync::atomic::Ordering::SeqCst);
        let gate = Gate::new(None, Some(file.clone()), clock.clone(), day);
        let (next, refused) = against_a_limit(&gate, &clock, 5, 400);
        eprintln!("next run: {next:.3}, {refused} refused");
        assert!(
            next >= 0.9 && refused <= 4,
            "next run: {next:.3}, {refused} refused"
        );
        // A configured rate_limit is not second-guessed.
        let limit = RateLimit {
            requests: 5,
            per: crate::config::Span(Duration::from_secs(1)),
            burst: 1,
            across_tenants: true,
            bucket_header: None,
        };
        let gate = Gate::new(Some(&limit), None, clock.clone(), day);
        gate.judged(clock.now(), true);
        assert_eq!(gate.lock().learned, None);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn refusals_that_come_at_any_pace_do_not_bring_the_learned_pace_to_a_crawl() {
        use std::sync::atomic::Ordering::SeqCst;
        let clock = Arc::new(Manual(std::sync::atomic::AtomicU64::new(1_000_000)));
        let gate = Gate::new(None, None, clock.clone(), Duration::from_secs(86_400));
        // An API answering in 3 ms at any rate, refusing every tenth request (429,
        // Retry-After 1 s): waiting each refusal out and sending at once otherwise takes
        // 2,000 × 3 ms + 222 × 1 s ≈ 229 s for 2,000 accepted requests.
        let (start, mut accepted, mut asked) = (clock.now().0, 0, 0u64);
        while accepted < 2000 {
            let now = clock.now();
            if let Some((wait, _)) = gate.lock().wait(now, gate.limit) {
                let ms = u64::try_from(wait.as_millis()).unwrap_or(1).max(1);
                clock.0.fetch_add(ms, SeqCst);
                continue;
            }
            gate.lock().take(now, gate.limit);
            asked += 1;
            let refused = asked % 10 == 0;
            if refused {
                gate.block(now.saturating_add(Duration::from_secs(1)));
            } else {
                accepted += 1;
            }
            clock.0.fetch_add(3, SeqCst);
            gate.judged(now, refused);
        }
        let took = clock.now().0 - start;
        eprintln!("2,000 requests with every tenth refused: {took} ms");
        assert!(took < 2 * 229_000, "the pace collapsed: {took} ms");
    }

    #[test]
    fn a_cluster_share_shrinks_at_once_and_grows_a_window_later() {
        let limit = RateLimit {
            requests: 40,
            per: crate::config::Span(Duration::from_secs(1)),
            burst: 1,
            across_tenants: true,
            bucket_header: None,
        };
        let clock = Arc::new(Manual(std::sync::atomic::AtomicU64::new(10_000)));
        let gate = Gate::new(Some(&limit), None, clock.clone(), Duration::from_secs(600));
        let at = |ms: u64| {
            clock.0.store(ms, std::sync::atomic::Ordering::SeqCst);
            let mut share = gate.share.lock().unwrap_or_else(PoisonError::into_inner);
            share
                .as_mut()
                .and_then(|s| s.at(Timestamp(ms)))
                .map(|p| p.count)
        };
        let until = Timestamp(60_000);
        // Joining: nothing until a window (1 s and the margin) has passed.
        gate.share(134, 400, until);
        assert_eq!((at(10_000), at(11_004), at(11_005)), (None, None, Some(13)));
        // Taking over partitions: the old share until a window later, asked again or not.
        gate.share(200, 400, until);
        assert_eq!(at(11_500), Some(13));
        gate.share(200, 400, until);
        assert_eq!((at(12_009), at(12_010)), (Some(13), Some(20)));
        // A raise asked for while one is pending keeps the earlier time if not larger.
        gate.share(300, 400, until);
        assert_eq!(at(12_600), Some(20));
        gate.share(250, 400, until);
        assert_eq!((at(13_014), at(13_015)), (Some(20), Some(25)));
        // Giving partitions up (or all of them): at once.
        gate.share(100, 400, until);
        assert_eq!(at(13_015), Some(10));
        gate.share(0, 400, until);
        assert_eq!(at(13_015), None);
        // From nothing, growing waits a window again; a share not renewed in time sends
        // nothing, and renewed, grows a window later.
        gate.share(100, 400, Timestamp(20_000));
        assert_eq!((at(14_019), at(14_020), at(20_000)), (None, Some(10), None));
        gate.share(100, 400, Timestamp(30_000));
        assert_eq!((at(20_001), at(21_005)), (None, Some(10)));
    }

    fn pace(requests: u32, burst: u32) -> Option<Pace> {
        Some(Pace::new(&RateLimit {
            requests,
            per: crate::config::Span(Duration::from_secs(1)),
            burst,
            across_tenants: false,
            bucket_header: None,
        }))
    }

    #[test]
    fn cluster_shares_never_add_up_to_more_than_the_limit() {
        let limit = RateLimit {
            requests: 150,
            per: crate::config::Span(Duration::from_secs(1)),
            burst: 10,
            across_tenants: true,
            bucket_header: None,
        };
        for split in [[134u64, 134, 132], [200, 200, 0], [1, 1, 398], [400, 0, 0]] {
            let rate: f64 = split
                .iter()
                .filter(|h| **h > 0)
                .map(|h| {
                    let pace = Pace::shared(&limit, *h, 400);
                    1e6 / pace.interval_us as f64
                })
                .sum();
            assert!(rate <= 150.0 + 1e-9, "{split:?}: {rate}");
        }
        let whole = Pace::shared(&limit, 134, 400);
        assert_eq!((whole.count, whole.interval_us), (50, 20_000));
        // Under one request a period: one per as many periods as it takes.
        let one = RateLimit {
            requests: 1,
            ..limit
        };
        let thin = Pace::shared(&one, 1, 3);
        assert_eq!((thin.count, thin.interval_us), (1, 3_000_000));
        assert_eq!(thin.window_ms, 3_000 + MARGIN_MS);
    }

    #[test]
    fn gcra_spaces_requests_and_allows_the_burst() {
        let limit = pace(10, 3);
        let mut b = Budget::default();
        let t = Timestamp(10_000);
        for _ in 0..3 {
            assert_eq!(b.wait(t, limit), None);
            b.take(t, limit);
        }
        let (wait, _) = b.wait(t, limit).unwrap_or_default();
        assert_eq!(wait, Duration::from_millis(100));
        assert_eq!(b.wait(Timestamp(10_100), limit), None);
    }

    #[test]
    fn a_little_lateness_keeps_the_schedule_and_no_period_holds_more_than_the_limit() {
        let limit = pace(10, 1);
        let mut b = Budget::default();
        // Each request is let through 3 ms after its time (a timer's lateness): the
        // schedule stays 100 ms apart instead of drifting to 103 ms.
        let mut t = 10_000;
        for _ in 0..5 {
            assert_eq!(b.wait(Timestamp(t), limit), None);
            b.take(Timestamp(t), limit);
            let (wait, _) = b.wait(Timestamp(t), limit).unwrap_or_default();
            t += millis(wait) + 3;
        }
        assert_eq!(t, 10_000 + 5 * 100 + 3, "on schedule, 3 ms late");
        // Over any second, at most 10 requests: the 11th waits for the window (1 s and a
        // 5 ms margin after the first) even though the schedule would let it go.
        for _ in 0..5 {
            b.take(Timestamp(t), limit);
            let (wait, _) = b.wait(Timestamp(t), limit).unwrap_or_default();
            t += millis(wait);
        }
        assert_eq!(b.recent.len(), 10);
        let (wait, _) = b.wait(Timestamp(t), limit).unwrap_or_default();
        assert_eq!(Timestamp(t + millis(wait)), Timestamp(10_000 + 1_005));
        // Much later (an idle spell): the schedule starts again from now.
        let later = Timestamp(60_000);
        assert_eq!(b.wait(later, limit), None);
        b.take(later, limit);
        let (wait, _) = b.wait(later, limit).unwrap_or_default();
        assert_eq!(wait, Duration::from_millis(100));
    }

    #[test]
    fn an_exhausted_quota_waits_for_its_reset_and_a_low_one_spreads() {
        let mut b = Budget {
            remaining: Some(0),
            limit: Some(100),
            reset_at: Some(30_000),
            ..Budget::default()
        };
        let (wait, why) = b.wait(Timestamp(10_000), None).unwrap_or_default();
        assert_eq!(wait, Duration::from_secs(20));
        assert!(why.contains("used up"), "{why}");
        // 4 left of 100 with 20 s to go: one every 4 s.
        b.remaining = Some(4);
        b.last_ms = 10_000;
        let (wait, _) = b.wait(Timestamp(10_000), None).unwrap_or_default();
        assert_eq!(wait, Duration::from_secs(4));
        // Plenty left: no wait.
        b.remaining = Some(50);
        assert_eq!(b.wait(Timestamp(10_000), None), None);
        // After the reset the old figures no longer apply.
        b.remaining = Some(0);
        assert_eq!(b.wait(Timestamp(30_000), None), None);
    }
}
