//! How each stream's requests were answered, for alerts: the 429s of its last run and the
//! 5xx share of its requests over the last hour (while its last run still met some: once a
//! run goes through without one, the stream has recovered). Fed the journaled steps of the runs serve
//! drives (a fetched page is a request answered 2xx, a retried request carries its
//! status), and timed by them, so it is a pure function of the steps.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Mutex, PoisonError};

use waymark_engine::{Event, RunId, RunState, Timestamp};

use super::Key;

const MINUTE: u64 = 60_000;
/// The span the 5xx share is taken over, in minutes.
const HOUR: u64 = 60;
/// The fewest 5xx answers that make a share worth an alert: one stray 503 is not.
const SUSTAINED: u64 = 3;

/// Requests and 5xx answers of one minute.
#[derive(Debug, Default, Clone, Copy)]
struct Minute {
    at: u64,
    requests: u64,
    server_errors: u64,
}

/// The 429 and 5xx answers of one run.
#[derive(Debug, Default, Clone, Copy)]
struct Answers {
    too_many_requests: u64,
    server_errors: u64,
}

#[derive(Debug, Default)]
struct Seen {
    /// The run going and its answers so far.
    run: Option<(RunId, Answers)>,
    /// The answers of the last run that ended (or paused).
    last_run: Option<Answers>,
    /// The last hour, a minute at a time, oldest first.
    minutes: VecDeque<Minute>,
}

/// The answers each stream's requests got.
#[derive(Debug, Default)]
pub struct Traffic {
    streams: Mutex<BTreeMap<Key, Seen>>,
}

impl Traffic {
    /// Counts one journaled step of a run.
    pub fn observe(&self, state: &RunState, event: &Event) {
        let status = match event {
            Event::PageFetched(_) => Some(200),
            Event::RequestRetried { status, .. } => Some(status.unwrap_or(0)),
            _ => None,
        };
        let key = (state.started.sync.clone(), state.started.stream.clone());
        let mut streams = self.streams.lock().unwrap_or_else(PoisonError::into_inner);
        let seen = streams.entry(key).or_default();
        let run = state.run_id();
        let answers = match &mut seen.run {
            Some((id, answers)) if *id == run => answers,
            other => &mut other.insert((run, Answers::default())).1,
        };
        let server_error = status.is_some_and(|s| (500..600).contains(&s));
        answers.too_many_requests += u64::from(status == Some(429));
        answers.server_errors += u64::from(server_error);
        if matches!(
            event,
            Event::RunCompleted { .. }
                | Event::RunPaused { .. }
                | Event::RunFailed { .. }
                | Event::RunAbandoned { .. }
        ) {
            seen.last_run = Some(*answers);
        }
        if status.is_none() {
            return;
        }
        let minute = event.at().0 / MINUTE;
        if seen.minutes.back().is_none_or(|m| m.at != minute) {
            seen.minutes.push_back(Minute {
                at: minute,
                ..Minute::default()
            });
        }
        if let Some(m) = seen.minutes.back_mut() {
            m.requests += 1;
            m.server_errors += u64::from(server_error);
        }
        while seen.minutes.front().is_some_and(|m| m.at + HOUR <= minute) {
            seen.minutes.pop_front();
        }
    }

    /// The streams whose answers pass a limit at `now`: `rate-limited` (more 429s in the
    /// last run than its sync's limit), `erroring` (a larger 5xx share over the last hour,
    /// and the last run was answered 5xx too).
    /// `limits`: a sync's `(too_many_requests_above, server_errors_above)`, `None` for a
    /// sync without alerts. Each verdict is the health's name and the reason.
    pub fn healths(
        &self,
        now: Timestamp,
        limits: impl Fn(&str) -> Option<(u64, f64)>,
    ) -> BTreeMap<Key, (&'static str, String)> {
        let streams = self.streams.lock().unwrap_or_else(PoisonError::into_inner);
        let mut out = BTreeMap::new();
        for (key, seen) in streams.iter() {
            let Some((max_429s, max_share)) = limits(&key.0) else {
                continue;
            };
            let last = seen.last_run.unwrap_or_default();
            if last.too_many_requests > max_429s {
                let n = last.too_many_requests;
                let reason = format!("its last run was answered 429 {n} times (limit {max_429s})");
                out.insert(key.clone(), ("rate-limited", reason));
                continue;
            }
            let recent = seen.minutes.iter().filter(|m| m.at + HOUR > now.0 / MINUTE);
            let (requests, errors) =
                recent.fold((0, 0), |(r, e), m| (r + m.requests, e + m.server_errors));
            let share = errors as f64 / requests.max(1) as f64;
            if errors >= SUSTAINED && share > max_share && last.server_errors > 0 {
                let reason = format!(
                    "{errors} of its {requests} requests in the last hour were answered \
                         5xx ({:.1}% > {:.1}%)",
                    share * 100.0,
                    max_share * 100.0
                );
                out.insert(key.clone(), ("erroring", reason));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use waymark_engine::{PageFetched, RunStarted, StartFrom, Window};

    use super::*;

    fn run(at: u64) -> RunState {
        let started = RunStarted {
            run_id: RunId::new(),
            sync: "shop".into(),
            stream: "orders".into(),
            workflow_digest: String::new(),
            workflow_path: String::new(),
            window: Window {
                start: None,
                end: Timestamp(at),
            },
            start_cursor: None,
            start_from: StartFrom::Beginning,
            at: Timestamp(at),
        };
        RunState::start(&started)
    }

    fn page(at: u64) -> Event {
        Event::PageFetched(PageFetched {
            page: 1,
            request_cursor: None,
            next_cursor: None,
            records: 0,
            bytes: 0,
            checksum: 0,
            at: Timestamp(at),
            max_seen: None,
        })
    }

    fn answered(status: u16, at: u64) -> Event {
        Event::RequestRetried {
            page: 1,
            attempt: 1,
            error: String::new(),
            status: Some(status),
            rule: None,
            wait_ms: 0,
            at: Timestamp(at),
        }
    }

    const LIMITS: Option<(u64, f64)> = Some((1, 0.005));
    const T: u64 = 1_800_000_000_000;

    fn health(traffic: &Traffic, now: u64) -> Option<String> {
        let found = traffic.healths(Timestamp(now), |_| LIMITS);
        found.values().next().map(|(health, _)| health.to_string())
    }

    #[test]
    fn more_than_one_429_in_a_run_is_rate_limited_until_a_run_has_fewer() {
        let traffic = Traffic::default();
        let first = run(T);
        traffic.observe(&first, &answered(429, T));
        traffic.observe(&first, &page(T + 1));
        traffic.observe(
            &first,
            &Event::RunCompleted {
                at: Timestamp(T + 2),
            },
        );
        assert_eq!(health(&traffic, T + 3), None, "one 429 is allowed");
        let second = run(T + 10);
        traffic.observe(&second, &answered(429, T + 10));
        traffic.observe(&second, &answered(429, T + 11));
        assert_eq!(health(&traffic, T + 12), None, "judged when the run ends");
        traffic.observe(
            &second,
            &Event::RunCompleted {
                at: Timestamp(T + 13),
            },
        );
        assert_eq!(health(&traffic, T + 14).as_deref(), Some("rate-limited"));
        assert_eq!(
            traffic.healths(Timestamp(T), |_| None).len(),
            0,
            "no alerts"
        );
        let third = run(T + 20);
        traffic.observe(&third, &page(T + 20));
        traffic.observe(
            &third,
            &Event::RunCompleted {
                at: Timestamp(T + 21),
            },
        );
        assert_eq!(health(&traffic, T + 22), None);
    }

    #[test]
    fn a_5xx_share_above_the_limit_over_the_last_hour_is_erroring() {
        let traffic = Traffic::default();
        let state = run(T);
        let end = |at: u64| Event::RunCompleted { at: Timestamp(at) };
        // 1,000 requests, 4 answered 503 (0.4%): not above 0.5%.
        for i in 0..996 {
            traffic.observe(&state, &page(T + i * 1000));
        }
        for i in 0..4 {
            traffic.observe(&state, &answered(503, T + i));
        }
        traffic.observe(&state, &end(T + 996_000));
        assert_eq!(health(&traffic, T + 996_000), None);
        // Two more (0.6%): erroring.
        let next = run(T + 996_000);
        traffic.observe(&next, &answered(503, T + 996_000));
        traffic.observe(&next, &answered(500, T + 996_001));
        traffic.observe(&next, &end(T + 996_002));
        assert_eq!(health(&traffic, T + 996_002).as_deref(), Some("erroring"));
        // An hour later those are forgotten.
        assert_eq!(health(&traffic, T + 996_002 + 61 * MINUTE), None);
        // Recovered sooner: a run answered without a 5xx ends it, whatever the hour's share.
        let clean = run(T + 997_000);
        traffic.observe(&clean, &page(T + 997_000));
        traffic.observe(&clean, &end(T + 997_001));
        assert_eq!(health(&traffic, T + 997_002), None);
        // Two 5xx of two requests is 100%, but not sustained.
        let quiet = Traffic::default();
        quiet.observe(&state, &answered(503, T));
        quiet.observe(&state, &answered(503, T + 1));
        quiet.observe(&state, &end(T + 2));
        assert_eq!(health(&quiet, T + 2), None);
    }
}
