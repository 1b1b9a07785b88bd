//! Which streams to start, as a pure function of their schedules, what is running and the
//! time. `serve`'s loop feeds it the clock and the ends of runs and carries out what it
//! decides; it does no I/O and reads no clock.
//!
//! The rules: a stream is started when due, never twice at once; due while its run is
//! still going, that due time is skipped (counted), not queued; after downtime a stream
//! that missed due times runs once; at most `limit` runs at a time, the longest-due first;
//! unfinished runs (found on start) before anything else; a stream held for a changing
//! command (`checkpoint set`, `dlq retry`… sent to `serve`) starts no run until released,
//! and a due time that falls meanwhile waits for the release (it is not skipped).

use std::collections::BTreeMap;

use waymark_connectors::config::Cadence;
use waymark_engine::Timestamp;

/// What the scheduler wants done.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision<K> {
    /// Start (or resume) this stream's run.
    Start(K),
    /// It was due while its run was still going: this due time is skipped.
    Skipped(K),
}

#[derive(Clone, Debug, Default)]
struct Entry {
    /// `None`: runs only when asked (run now, or an unfinished run to resume).
    cadence: Option<Cadence>,
    /// When it is next due (`None`: not due until asked).
    due: Option<Timestamp>,
    running: bool,
    /// Held for a changing command: no run starts until it is released.
    held: bool,
    /// Removed while its run went on: forgotten when that run ends.
    gone: bool,
    skipped: u64,
}

/// The schedules of the streams `serve` runs, keyed by `K` (the stream's scope).
#[derive(Debug)]
pub struct Scheduler<K> {
    entries: BTreeMap<K, Entry>,
    limit: usize,
}

impl<K: Ord + Clone> Scheduler<K> {
    /// At most `limit` runs at once (at least one).
    pub fn new(limit: usize) -> Self {
        Scheduler {
            entries: BTreeMap::new(),
            limit: limit.max(1),
        }
    }

    /// Adds a stream, or changes its schedule (a reloaded file). `last_start`: when its
    /// latest run started, as the journal says (`None`: it never ran, so it is due now);
    /// `unfinished`: that run did not finish, so it resumes before anything else.
    pub fn set(
        &mut self,
        key: K,
        cadence: Option<Cadence>,
        last_start: Option<Timestamp>,
        unfinished: bool,
        now: Timestamp,
    ) {
        let due = match (&cadence, last_start) {
            _ if unfinished => Some(Timestamp(0)),
            (None, _) => None,
            (Some(_), None) => Some(now),
            // Missed while down: due once (now), however many times it was missed.
            (Some(c), Some(t)) => c.next_after(t),
        };
        match self.entries.get_mut(&key) {
            Some(entry) => {
                // A changed schedule: the next due time by the new one, unless due already.
                let kept = entry.due.filter(|d| *d <= now);
                entry.due = kept.or_else(|| cadence.as_ref().and_then(|c| c.next_after(now)));
                entry.cadence = cadence;
                entry.gone = false;
            }
            None => {
                let entry = Entry {
                    cadence,
                    due,
                    ..Entry::default()
                };
                self.entries.insert(key, entry);
            }
        }
    }

    /// Forgets a stream (gone from the files, its lease lost); a run in progress finishes
    /// first (forgotten when it ends).
    pub fn remove(&mut self, key: &K) {
        match self.entries.get_mut(key) {
            // Its run goes on and counts against the limit, but the stream is due no more
            // (and a `set` while it runs cannot start a second run of it).
            Some(entry) if entry.running => {
                entry.cadence = None;
                entry.due = None;
                entry.gone = true;
            }
            _ => {
                self.entries.remove(key);
            }
        }
    }

    /// Asks for a run of `key` now: `Some(true)` it is due now (started when a slot is
    /// free), `Some(false)` its run is going, `None` the scheduler does not know it.
    pub fn run_now(&mut self, key: &K, now: Timestamp) -> Option<bool> {
        let entry = self.entries.get_mut(key)?;
        if entry.running {
            return Some(false);
        }
        entry.due = Some(entry.due.map_or(now, |d| d.min(now)));
        Some(true)
    }

    /// Holds `key` for a changing command, if no run of it is going (true); a stream it
    /// does not schedule yet is added, without a schedule.
    pub fn hold(&mut self, key: &K) -> bool {
        let entry = self.entries.entry(key.clone()).or_default();
        if entry.running || entry.held {
            return false;
        }
        entry.held = true;
        true
    }

    /// The changing command holding `key` is done: its runs start again (one due meanwhile
    /// starts at the next tick).
    pub fn release(&mut self, key: &K) {
        if let Some(entry) = self.entries.get_mut(key) {
            entry.held = false;
        }
    }

    /// Whether it schedules `key`.
    pub fn knows(&self, key: &K) -> bool {
        self.entries.contains_key(key)
    }

    /// What to do at `now`: the streams to start, longest-due first, while slots are free,
    /// and the due times skipped because their run is still going.
    pub fn tick(&mut self, now: Timestamp) -> Vec<Decision<K>> {
        let mut out = Vec::new();
        for (key, entry) in self.entries.iter_mut() {
            if entry.running && entry.due.is_some_and(|d| d <= now) {
                entry.skipped += 1;
                entry.due = next(entry.cadence.as_ref(), now);
                out.push(Decision::Skipped(key.clone()));
            }
        }
        let mut waiting: Vec<(Timestamp, K)> = self
            .entries
            .iter()
            .filter(|(_, e)| !e.running && !e.held)
            .filter_map(|(k, e)| e.due.filter(|d| *d <= now).map(|d| (d, k.clone())))
            .collect();
        waiting.sort();
        let free = self.limit.saturating_sub(self.running());
        for (_, key) in waiting.into_iter().take(free) {
            if let Some(entry) = self.entries.get_mut(&key) {
                entry.running = true;
                entry.due = next(entry.cadence.as_ref(), now);
                out.push(Decision::Start(key));
            }
        }
        out
    }

    /// The run of `key` ended (however it ended).
    pub fn finished(&mut self, key: &K) {
        match self.entries.get_mut(key) {
            Some(entry) if entry.gone => {
                self.entries.remove(key);
            }
            Some(entry) => entry.running = false,
            None => {}
        }
    }

    /// When to call [`Scheduler::tick`] next, if no run ends before: the next due time
    /// still ahead (streams due but waiting for a slot are started when a run ends).
    pub fn next_wake(&self, now: Timestamp) -> Option<Timestamp> {
        self.entries
            .values()
            .filter_map(|e| e.due)
            .filter(|d| *d > now)
            .min()
    }

    /// The streams it schedules.
    pub fn keys(&self) -> Vec<K> {
        self.entries.keys().cloned().collect()
    }

    /// Each stream, when it is next due (`None`: when asked) and whether its run is going.
    pub fn plan(&self) -> Vec<(K, Option<Timestamp>, bool)> {
        self.entries
            .iter()
            .map(|(k, e)| (k.clone(), e.due, e.running))
            .collect()
    }

    /// Runs going now.
    pub fn running(&self) -> usize {
        self.entries.values().filter(|e| e.running).count()
    }

    /// Due times skipped for `key` because its run was still going.
    pub fn skipped(&self, key: &K) -> u64 {
        self.entries.get(key).map_or(0, |e| e.skipped)
    }
}

fn next(cadence: Option<&Cadence>, now: Timestamp) -> Option<Timestamp> {
    cadence.and_then(|c| c.next_after(now))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use waymark_connectors::config::{ScheduleSection, Span};

    use super::*;

    const MIN: u64 = 60_000;

    fn every(minutes: u64) -> Option<Cadence> {
        let section = ScheduleSection {
            every: Some(Span(Duration::from_millis(minutes * MIN))),
            cron: None,
            timezone: None,
            jitter: None,
        };
        Cadence::new(&section, "s/x").ok()
    }

    fn starts(decisions: &[Decision<&'static str>]) -> Vec<&'static str> {
        decisions
            .iter()
            .filter_map(|d| match d {
                Decision::Start(k) => Some(*k),
                Decision::Skipped(_) => None,
            })
            .collect()
    }

    /// A manual clock: minutes since a fixed instant.
    fn at(minutes: u64) -> Timestamp {
        Timestamp(1_800_000_000_000 - 1_800_000_000_000 % (60 * MIN) + minutes * MIN)
    }

    #[test]
    fn a_stream_runs_at_its_cadence_and_skips_rather_than_queues() {
        let mut s = Scheduler::new(4);
        s.set("a", every(5), Some(at(0)), false, at(1));
        assert!(s.tick(at(1)).is_empty());
        assert_eq!(s.next_wake(at(1)), Some(at(5)));
        assert_eq!(s.tick(at(5)), vec![Decision::Start("a")]);
        // Still running at its next two due times: both skipped, nothing queued.
        assert_eq!(s.tick(at(10)), vec![Decision::Skipped("a")]);
        assert_eq!(s.tick(at(15)), vec![Decision::Skipped("a")]);
        assert_eq!(s.skipped(&"a"), 2);
        s.finished(&"a");
        assert!(s.tick(at(16)).is_empty(), "a skipped run is not made up");
        assert_eq!(s.tick(at(20)), vec![Decision::Start("a")]);
    }

    #[test]
    fn after_downtime_a_stream_catches_up_once() {
        let mut s = Scheduler::new(4);
        // Last run at minute 0, every 5 minutes, back after 3 hours.
        s.set("a", every(5), Some(at(0)), false, at(180));
        assert_eq!(s.tick(at(180)), vec![Decision::Start("a")]);
        s.finished(&"a");
        assert!(s.tick(at(181)).is_empty(), "one catch-up run, not 36");
        assert_eq!(s.next_wake(at(181)), Some(at(185)));
        // Never ran: due at once.
        s.set("new", every(60), None, false, at(181));
        assert_eq!(s.tick(at(181)), vec![Decision::Start("new")]);
    }

    #[test]
    fn at_most_limit_runs_at_once_longest_due_first_and_unfinished_runs_before_all() {
        let mut s = Scheduler::new(2);
        s.set("a", every(1), Some(at(0)), false, at(3));
        s.set("b", every(5), Some(at(0)), false, at(3));
        s.set("c", every(2), Some(at(0)), false, at(3));
        s.set("resumed", every(60), Some(at(0)), true, at(3));
        // Due: a at 1, c at 2 (b at 5); the unfinished run first, then the longest due.
        assert_eq!(starts(&s.tick(at(3))), vec!["resumed", "a"]);
        assert_eq!(s.running(), 2);
        assert!(starts(&s.tick(at(4))).is_empty(), "no slot");
        // c waits for a slot and is started when a run ends, whatever time it is.
        assert_eq!(s.next_wake(at(4)), Some(at(5)));
        s.finished(&"resumed");
        assert_eq!(starts(&s.tick(at(4))), vec!["c"]);
        s.finished(&"a");
        s.finished(&"c");
        assert_eq!(starts(&s.tick(at(5))), vec!["a", "b"]);
    }

    #[test]
    fn an_unscheduled_stream_runs_when_asked_or_to_resume_its_unfinished_run() {
        let mut s = Scheduler::new(2);
        s.set("manual", None, Some(at(0)), false, at(1));
        assert!(
            s.tick(at(100)).is_empty(),
            "no schedule: never due by itself"
        );
        assert_eq!(s.next_wake(at(100)), None);
        assert_eq!(s.run_now(&"manual", at(100)), Some(true));
        assert_eq!(s.tick(at(100)), vec![Decision::Start("manual")]);
        assert_eq!(
            s.run_now(&"manual", at(101)),
            Some(false),
            "its run is going"
        );
        assert_eq!(s.run_now(&"unknown", at(101)), None);
        assert!(!s.knows(&"unknown"));
        s.finished(&"manual");
        assert!(s.tick(at(102)).is_empty(), "run now is once");
        s.set("cut-short", None, Some(at(0)), true, at(1));
        assert_eq!(s.tick(at(1)), vec![Decision::Start("cut-short")]);
        s.finished(&"cut-short");
        assert!(s.tick(at(100)).is_empty(), "resumed once");
    }

    #[test]
    fn a_held_stream_starts_no_run_and_its_due_run_waits_for_the_release() {
        let mut s = Scheduler::new(2);
        s.set("a", every(5), Some(at(0)), false, at(1));
        assert!(s.hold(&"a"));
        assert!(!s.hold(&"a"), "one changing command at a time");
        assert!(s.tick(at(5)).is_empty(), "held: not started");
        assert_eq!(s.skipped(&"a"), 0, "nor skipped");
        assert_eq!(s.run_now(&"a", at(6)), Some(true));
        assert!(s.tick(at(6)).is_empty());
        s.release(&"a");
        assert_eq!(s.tick(at(7)), vec![Decision::Start("a")]);
        assert!(!s.hold(&"a"), "its run is going");
        s.finished(&"a");
        assert!(s.hold(&"a"));
        // A stream without a schedule is held all the same (and never starts by itself).
        assert!(s.hold(&"manual"));
        s.release(&"manual");
        assert!(s.knows(&"manual"));
        assert!(s
            .tick(at(100))
            .iter()
            .all(|d| d != &Decision::Start("manual")));
    }

    #[test]
    fn a_changed_schedule_takes_effect_from_now() {
        let mut s = Scheduler::new(2);
        s.set("a", every(60), Some(at(0)), false, at(1));
        assert_eq!(s.next_wake(at(1)), Some(at(60)));
        s.set("a", every(5), Some(at(0)), false, at(2));
        assert_eq!(s.next_wake(at(2)), Some(at(5)));
        assert_eq!(s.keys(), vec!["a"]);
        s.remove(&"a");
        assert!(s.tick(at(5)).is_empty());
        assert!(s.keys().is_empty());
    }

    #[test]
    fn a_stream_removed_while_its_run_goes_is_forgotten_when_it_ends() {
        let mut s = Scheduler::new(2);
        s.set("a", every(5), Some(at(0)), false, at(1));
        s.set("b", every(5), Some(at(0)), false, at(1));
        assert_eq!(
            s.tick(at(5)),
            vec![Decision::Start("a"), Decision::Start("b")]
        );
        s.remove(&"a");
        s.remove(&"b");
        assert_eq!(s.run_now(&"a", at(6)), Some(false), "its run still goes");
        assert_eq!(s.running(), 2);
        // Added again before its run ended: kept.
        s.set("b", every(5), Some(at(5)), false, at(7));
        s.finished(&"a");
        s.finished(&"b");
        assert!(!s.knows(&"a"));
        assert_eq!(s.run_now(&"a", at(8)), None, "not run when asked");
        assert_eq!(s.keys(), vec!["b"]);
        assert_eq!(s.tick(at(10)), vec![Decision::Start("b")]);
    }
}
