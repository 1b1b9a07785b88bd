//! The run's state and the pure fold over its events.
//!
//! `apply(state, &event)` is the only way a [`RunState`] changes. It does no I/O and reads no
//! clock, so folding a run's journal always reproduces the state the crashed process had.

use std::collections::VecDeque;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::checkpoint::Checkpoint;
use crate::event::{Event, PageFetched, PauseReason, RunStarted, WriteAck};
use crate::run_id::RunId;
use crate::time::Timestamp;
use crate::window::Window;

/// Where a run stands.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Status {
    /// Being driven (or was, when the process died).
    Running,
    /// Stopped at a step boundary; the next `waymark run` continues it.
    Paused(PauseReason),
    /// Stopped on an error; the next `waymark run` retries from the last journaled step.
    Failed(String),
    /// Done: everything up to the watermark is written and committed.
    Completed,
    /// Given up by `--fresh`.
    Abandoned(String),
}

impl Status {
    /// True when nothing more will happen in this run.
    pub fn is_finished(&self) -> bool {
        match self {
            Status::Completed | Status::Abandoned(_) => true,
            Status::Running | Status::Paused(_) | Status::Failed(_) => false,
        }
    }

    /// Short name for tables.
    pub fn name(&self) -> &'static str {
        match self {
            Status::Running => "running",
            Status::Paused(_) => "paused",
            Status::Failed(_) => "failed",
            Status::Completed => "completed",
            Status::Abandoned(_) => "abandoned",
        }
    }
}

/// A fetched page that is not committed yet.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingPage {
    /// What was fetched and staged.
    pub fetched: PageFetched,
    /// The destination's acknowledgement, once written.
    pub written: Option<WriteAck>,
}

/// Running totals of a run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    /// Pages fetched and staged.
    pub pages_fetched: u64,
    /// Pages whose cursor is committed.
    pub pages_committed: u64,
    /// Records fetched.
    pub records_fetched: u64,
    /// Records in committed pages.
    pub records_committed: u64,
    /// Sum of the destination acknowledgements of committed pages.
    pub written: WriteAck,
    /// Retried requests.
    pub retries: u64,
    /// Responses ignored by a response rule.
    pub ignored: u64,
    /// Times the run was picked up again.
    pub resumes: u64,
}

/// Everything known about a run, derived from its events alone.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunState {
    /// The fixed facts of the run.
    pub started: RunStarted,
    /// Where it stands.
    pub status: Status,
    /// Fetched pages not yet committed, in page order.
    pub pending: VecDeque<PendingPage>,
    /// Cursor of the last committed page's successor (where a fresh fetch would start).
    pub committed_cursor: Option<String>,
    /// Last committed page number (0 before the first).
    pub committed_page: u64,
    /// Consecutive failed attempts at the current step: the next fetch, or the next write.
    pub attempts: u32,
    /// Running totals.
    pub counts: Counts,
    /// Sequence number of the last applied event (1 for `RunStarted`).
    pub last_seq: u64,
    /// When the last event happened.
    pub updated_at: Timestamp,
    /// Milliseconds the run was being driven: from its start, and from each resume, to the
    /// latest event after it. Time paused, failed, or between a crash and the resume that
    /// picked the run up does not count (see [`RunState::active`]).
    pub active_ms: u64,
    /// The latest event time since the run started or was last resumed. A page fetched
    /// ahead is journaled after the write it overlapped, with an earlier time, so the active
    /// time grows only past this mark (never twice for the overlap).
    pub active_until: Timestamp,
    /// The greatest cursor value committed: the checkpoint's it started from, raised by
    /// each committed page's.
    #[serde(default, deserialize_with = "crate::format::added_in_v5")]
    pub max_seen: Option<Timestamp>,
}

/// An event that cannot follow the state it was applied to: the journal is inconsistent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{event} cannot follow a run that is {status} at seq {seq}: {why}")]
pub struct Invalid {
    /// The event's step name.
    pub event: &'static str,
    /// The run's status name.
    pub status: &'static str,
    /// The last applied sequence number.
    pub seq: u64,
    /// What is inconsistent.
    pub why: String,
}

impl RunState {
    /// The state right after `RunStarted`.
    pub fn start(started: &RunStarted) -> Self {
        RunState {
            started: started.clone(),
            status: Status::Running,
            pending: VecDeque::new(),
            committed_cursor: started.start_cursor.clone(),
            committed_page: 0,
            attempts: 0,
            counts: Counts::default(),
            last_seq: 1,
            updated_at: started.at,
            active_ms: 0,
            active_until: started.at,
            max_seen: started.start_from.checkpoint().and_then(|c| c.max_seen),
        }
    }

    /// How long the run took: the time it was being driven, across all its processes, not
    /// counting the time it stood paused or failed, or crashed until it was resumed.
    pub fn active(&self) -> Duration {
        Duration::from_millis(self.active_ms)
    }

    /// The run id.
    pub fn run_id(&self) -> RunId {
        self.started.run_id
    }

    /// The run's window (its end is the watermark).
    pub fn window(&self) -> Window {
        self.started.window
    }

    /// Cursor for the next fetch: after the last fetched page, pending or committed.
    /// `None` together with [`RunState::exhausted`] means there is nothing left to fetch.
    pub fn fetch_cursor(&self) -> Option<&String> {
        match self.pending.back() {
            Some(p) => p.fetched.next_cursor.as_ref(),
            None => self.committed_cursor.as_ref(),
        }
    }

    /// True once the last page of the window has been fetched.
    pub fn exhausted(&self) -> bool {
        let last_fetched = self.pending.back().map(|p| &p.fetched.next_cursor);
        match last_fetched {
            Some(next) => next.is_none(),
            // Nothing pending: exhausted if a page was committed and it had no successor.
            None => self.committed_page > 0 && self.committed_cursor.is_none(),
        }
    }

    /// Number of the next page to fetch.
    pub fn next_page(&self) -> u64 {
        self.committed_page + self.pending.len() as u64 + 1
    }

    /// The checkpoint that committing every pending page up to `page` produces, or `None`
    /// if `page` is not pending.
    pub fn checkpoint_after(&self, page: u64, at: Timestamp) -> Option<Checkpoint> {
        let upto = self.pending.iter().position(|p| p.fetched.page == page)?;
        let records: u64 = self
            .pending
            .iter()
            .take(upto + 1)
            .map(|p| p.fetched.records)
            .sum();
        let max_seen = self
            .pending
            .iter()
            .take(upto + 1)
            .fold(self.max_seen, |max, p| max.max(p.fetched.max_seen));
        let cursor = self.pending[upto].fetched.next_cursor.clone();
        Some(Checkpoint {
            run_id: self.run_id(),
            window: self.window(),
            complete: cursor.is_none(),
            cursor,
            page,
            records: self.counts.records_committed + records,
            at,
            max_seen,
        })
    }

    /// The stream's checkpoint as of this state's last commit, if any page was committed.
    pub fn checkpoint(&self) -> Option<Checkpoint> {
        (self.committed_page > 0).then(|| Checkpoint {
            run_id: self.run_id(),
            window: self.window(),
            cursor: self.committed_cursor.clone(),
            page: self.committed_page,
            records: self.counts.records_committed,
            complete: self.committed_cursor.is_none(),
            at: self.updated_at,
            max_seen: self.max_seen,
        })
    }

    fn invalid(&self, event: &Event, why: impl Into<String>) -> Invalid {
        Invalid {
            event: event.name(),
            status: self.status.name(),
            seq: self.last_seq,
            why: why.into(),
        }
    }
}

/// Folds one event into the state. Pure: no I/O, no clock. (One arm per event, matched
/// exhaustively, so the fold's rules read in one place and a new event cannot be missed.)
pub fn apply(mut state: RunState, event: &Event) -> Result<RunState, Invalid> {
    let running = state.status == Status::Running;
    match event {
        Event::RunStarted(_) => return Err(state.invalid(event, "the run already started")),
        Event::RunResumed { at, .. } => {
            if state.status.is_finished() {
                return Err(state.invalid(event, "a finished run cannot be resumed"));
            }
            state.status = Status::Running;
            state.attempts = 0;
            state.counts.resumes += 1;
            // A new active stretch: the time since the last event (paused, failed, or a
            // process that died) is not active time.
            state.active_until = *at;
        }
        Event::PageFetched(page) => {
            if !running {
                return Err(state.invalid(event, "only a running run fetches"));
            }
            if state.exhausted() {
                return Err(state.invalid(event, "the last page was already fetched"));
            }
            if page.page != state.next_page() {
                let why = format!(
                    "expected page {}, got page {}",
                    state.next_page(),
                    page.page
                );
                return Err(state.invalid(event, why));
            }
            state.counts.pages_fetched += 1;
            state.counts.records_fetched += page.records;
            // The fetch succeeded; but a page fetched ahead while an earlier page's write
            // is being retried leaves that write's attempts counting.
            if state.pending.iter().all(|p| p.written.is_some()) {
                state.attempts = 0;
            }
            state.pending.push_back(PendingPage {
                fetched: page.clone(),
                written: None,
            });
        }
        Event::RequestRetried { .. } => {
            if !running {
                return Err(state.invalid(event, "only a running run retries"));
            }
            state.attempts += 1;
            state.counts.retries += 1;
        }
        Event::WriteRetried { page, .. } => {
            if !running {
                return Err(state.invalid(event, "only a running run retries"));
            }
            let first = state.pending.iter().find(|p| p.written.is_none());
            if first.map(|p| p.fetched.page) != Some(*page) {
                return Err(state.invalid(event, format!("page {page} is not the next to write")));
            }
            state.attempts += 1;
            state.counts.retries += 1;
        }
        Event::PageIgnored { .. } => {
            if !running {
                return Err(state.invalid(event, "only a running run fetches"));
            }
            state.counts.ignored += 1;
        }
        Event::SchemaChanged {
            page,
            changes,
            refused,
            ..
        } => {
            if !running {
                return Err(state.invalid(event, "only a running run fetches"));
            }
            if *refused {
                let changes: Vec<String> = changes.iter().map(ToString::to_string).collect();
                state.status = Status::Failed(format!(
                    "page {page}: the records' schema changed and the stream's schema_policy \
                     is \"fail\": {}",
                    changes.join("; ")
                ));
            }
        }
        Event::BatchWritten { page, ack, .. } => {
            if !running {
                return Err(state.invalid(event, "only a running run writes"));
            }
            // Pages are written in order: the first unwritten pending page is the only one.
            let Some(slot) = state.pending.iter_mut().find(|p| p.written.is_none()) else {
                return Err(state.invalid(event, format!("page {page} is not staged")));
            };
            if slot.fetched.page != *page {
                let why = format!(
                    "page {} must be written before page {page}",
                    slot.fetched.page
                );
                return Err(state.invalid(event, why));
            }
            slot.written = Some(*ack);
            state.attempts = 0;
        }
        Event::CursorCommitted { page, .. } => {
            if !running {
                return Err(state.invalid(event, "only a running run commits"));
            }
            let Some(front) = state.pending.front() else {
                return Err(state.invalid(event, format!("page {page} is not staged")));
            };
            let Some(ack) = front.written else {
                return Err(state.invalid(event, format!("page {page} is not written")));
            };
            if front.fetched.page != *page {
                let why = format!("page {} must be committed first", front.fetched.page);
                return Err(state.invalid(event, why));
            }
            state.committed_cursor = front.fetched.next_cursor.clone();
            state.committed_page = *page;
            state.max_seen = state.max_seen.max(front.fetched.max_seen);
            state.counts.pages_committed += 1;
            state.counts.records_committed += front.fetched.records;
            add_ack(&mut state.counts.written, &ack);
            state.pending.pop_front();
        }
        Event::RunPaused { reason, .. } => {
            if !running {
                return Err(state.invalid(event, "only a running run pauses"));
            }
            state.status = Status::Paused(reason.clone());
        }
        Event::RunCompleted { .. } => {
            if !running || !state.pending.is_empty() || !state.exhausted() {
                return Err(state.invalid(event, "pages remain to fetch, write or commit"));
            }
            state.status = Status::Completed;
        }
        Event::RunFailed { error, .. } => {
            if state.status.is_finished() {
                return Err(state.invalid(event, "a finished run cannot fail"));
            }
            state.status = Status::Failed(error.clone());
        }
        Event::RunAbandoned { reason, .. } => {
            if state.status.is_finished() {
                return Err(state.invalid(event, "a finished run cannot be abandoned"));
            }
            state.status = Status::Abandoned(reason.clone());
        }
    }
    // Every event of a running run (and the one that stops it) extends the active time.
    if running && event.at() > state.active_until {
        state.active_ms += event.at().0 - state.active_until.0;
        state.active_until = event.at();
    }
    state.last_seq += 1;
    state.updated_at = event.at();
    Ok(state)
}

fn add_ack(sum: &mut WriteAck, ack: &WriteAck) {
    sum.inserted += ack.inserted;
    sum.updated += ack.updated;
    sum.unchanged += ack.unchanged;
    sum.skipped_stale += ack.skipped_stale;
    sum.dead_lettered += ack.dead_lettered;
    sum.deleted += ack.deleted;
}

/// Folds a whole journal: the first event must be `RunStarted`.
pub fn fold<'a>(events: impl IntoIterator<Item = &'a Event>) -> Result<Option<RunState>, Invalid> {
    let mut state: Option<RunState> = None;
    for event in events {
        state = Some(match (state, event) {
            (None, Event::RunStarted(started)) => RunState::start(started),
            (None, other) => {
                return Err(Invalid {
                    event: other.name(),
                    status: "not started",
                    seq: 0,
                    why: "a journal must begin with run_started".into(),
                })
            }
            (Some(s), e) => apply(s, e)?,
        });
    }
    Ok(state)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::StartFrom;

    fn started() -> RunStarted {
        RunStarted {
            run_id: RunId::new(),
            sync: "s".into(),
            stream: "t".into(),
            workflow_digest: "d".into(),
            workflow_path: "w.toml".into(),
            window: Window {
                start: None,
                end: Timestamp(100),
            },
            start_cursor: None,
            start_from: StartFrom::Beginning,
            at: Timestamp(1),
        }
    }

    fn fetched(page: u64, next: Option<&str>) -> Event {
        Event::PageFetched(PageFetched {
            page,
            request_cursor: None,
            next_cursor: next.map(str::to_string),
            records: 10,
            bytes: 100,
            checksum: 7,
            at: Timestamp(2),
            max_seen: None,
        })
    }

    fn written(page: u64) -> Event {
        let ack = WriteAck {
            inserted: 8,
            updated: 2,
            ..WriteAck::default()
        };
        Event::BatchWritten {
            page,
            ack,
            at: Timestamp(3),
        }
    }

    fn committed(page: u64) -> Event {
        Event::CursorCommitted {
            page,
            at: Timestamp(4),
        }
    }

    fn run(events: &[Event]) -> Result<RunState, Invalid> {
        events.iter().try_fold(RunState::start(&started()), apply)
    }

    #[test]
    fn fetch_write_commit_advances_the_cursor_and_counts() -> Result<(), Invalid> {
        let s = run(&[fetched(1, Some("c1"))])?;
        assert_eq!(
            (s.pending.len(), s.next_page(), s.fetch_cursor().cloned()),
            (1, 2, Some("c1".into()))
        );
        assert_eq!(s.committed_cursor, None);
        let s = apply(s, &written(1))?;
        assert_eq!(s.pending[0].written.map(|a| a.total()), Some(10));
        let s = apply(s, &committed(1))?;
        assert!(s.pending.is_empty());
        assert_eq!(
            (s.committed_page, s.committed_cursor.as_deref()),
            (1, Some("c1"))
        );
        assert_eq!(
            (
                s.counts.pages_committed,
                s.counts.records_committed,
                s.counts.written.inserted
            ),
            (1, 10, 8)
        );
        assert_eq!(s.last_seq, 4);
        assert_eq!(s.updated_at, Timestamp(4));
        assert!(!s.exhausted());
        let cp = s
            .checkpoint()
            .ok_or_else(|| s.invalid(&committed(1), "no checkpoint"))?;
        assert_eq!((cp.page, cp.records, cp.complete), (1, 10, false));
        Ok(())
    }

    #[test]
    fn the_greatest_cursor_value_seen_advances_only_with_commits() -> Result<(), Invalid> {
        let page = |n: u64, next: Option<&str>, seen: Option<u64>| match fetched(n, next) {
            Event::PageFetched(p) => Event::PageFetched(PageFetched {
                max_seen: seen.map(Timestamp),
                ..p
            }),
            other => other,
        };
        let mut from = started();
        from.start_from = StartFrom::Journal(Checkpoint {
            run_id: RunId::new(),
            window: from.window,
            cursor: None,
            page: 9,
            records: 90,
            complete: true,
            at: Timestamp(0),
            max_seen: Some(Timestamp(35)),
        });
        let s = RunState::start(&from);
        assert_eq!(
            s.max_seen,
            Some(Timestamp(35)),
            "carried from the checkpoint"
        );
        let s = [
            page(1, Some("c1"), Some(40)),
            page(2, Some("c2"), Some(30)),
            page(3, None, Some(70)),
            written(1),
            committed(1),
            written(2),
        ]
        .iter()
        .try_fold(s, apply)?;
        // Page 3 was fetched, not committed: its value is not the stream's yet.
        assert_eq!(s.max_seen, Some(Timestamp(40)));
        let two = s.checkpoint_after(2, Timestamp(5)).map(|c| c.max_seen);
        assert_eq!(
            two,
            Some(Some(Timestamp(40))),
            "a page's lower value lowers nothing"
        );
        let three = s.checkpoint_after(3, Timestamp(5)).map(|c| c.max_seen);
        assert_eq!(three, Some(Some(Timestamp(70))));
        let s = [committed(2), written(3), committed(3)]
            .iter()
            .try_fold(s, apply)?;
        assert_eq!(s.checkpoint().and_then(|c| c.max_seen), Some(Timestamp(70)));
        Ok(())
    }

    #[test]
    fn the_last_page_exhausts_and_completes() -> Result<(), Invalid> {
        let s = run(&[fetched(1, None), written(1), committed(1)])?;
        assert!(s.exhausted());
        let s = apply(s, &Event::RunCompleted { at: Timestamp(5) })?;
        assert_eq!(s.status, Status::Completed);
        assert!(s.status.is_finished());
        assert!(s.checkpoint().is_some_and(|c| c.complete));
        Ok(())
    }

    #[test]
    fn retries_count_attempts_until_a_page_arrives() -> Result<(), Invalid> {
        let retry = Event::RequestRetried {
            page: 1,
            attempt: 1,
            error: "503".into(),
            status: Some(503),
            rule: None,
            wait_ms: 5,
            at: Timestamp(2),
        };
        let s = run(&[retry.clone(), retry])?;
        assert_eq!((s.attempts, s.counts.retries, s.next_page()), (2, 2, 1));
        let s = apply(s, &fetched(1, Some("c")))?;
        assert_eq!(s.attempts, 0);
        Ok(())
    }

    #[test]
    fn pause_fail_resume_and_abandon_change_status() -> Result<(), Invalid> {
        let paused = run(&[Event::RunPaused {
            reason: PauseReason::TimeBudget,
            at: Timestamp(2),
        }])?;
        assert_eq!(paused.status, Status::Paused(PauseReason::TimeBudget));
        assert!(
            apply(paused.clone(), &fetched(1, None)).is_err(),
            "a paused run does not fetch"
        );
        let resumed = apply(
            paused,
            &Event::RunResumed {
                pid: 1,
                at: Timestamp(3),
            },
        )?;
        assert_eq!(
            (resumed.status.clone(), resumed.counts.resumes),
            (Status::Running, 1)
        );
        let failed = apply(
            resumed,
            &Event::RunFailed {
                error: "boom".into(),
                at: Timestamp(4),
            },
        )?;
        assert_eq!(failed.status, Status::Failed("boom".into()));
        let resumed = apply(
            failed,
            &Event::RunResumed {
                pid: 1,
                at: Timestamp(5),
            },
        )?;
        let abandoned = apply(
            resumed,
            &Event::RunAbandoned {
                reason: "fresh".into(),
                at: Timestamp(6),
            },
        )?;
        assert!(abandoned.status.is_finished());
        assert!(apply(
            abandoned,
            &Event::RunResumed {
                pid: 1,
                at: Timestamp(7)
            }
        )
        .is_err());
        Ok(())
    }

    #[test]
    fn active_time_leaves_out_pauses_crashes_and_the_overlap_of_a_page_fetched_ahead(
    ) -> Result<(), Invalid> {
        const HOUR: u64 = 3_600_000;
        let at = |ms| Timestamp(1 + ms);
        let page = |n: u64, next: &str, ms| {
            Event::PageFetched(PageFetched {
                page: n,
                request_cursor: None,
                next_cursor: Some(next.into()),
                records: 1,
                bytes: 1,
                checksum: 1,
                at: at(ms),
                max_seen: None,
            })
        };
        let ack = WriteAck::default();
        let s = run(&[
            page(1, "a", 100),
            Event::BatchWritten {
                page: 1,
                ack,
                at: at(300),
            },
            Event::CursorCommitted {
                page: 1,
                at: at(300),
            },
            // Fetched ahead while page 1 was written: journaled after, with an earlier time.
            page(2, "b", 250),
            Event::RunPaused {
                reason: PauseReason::PageBudget(2),
                at: at(400),
            },
        ])?;
        assert_eq!(s.active(), Duration::from_millis(400));
        // Resumed an hour later: the hour does not count.
        let s = apply(
            s,
            &Event::RunResumed {
                pid: 2,
                at: at(HOUR),
            },
        )?;
        let s = apply(
            s,
            &Event::BatchWritten {
                page: 2,
                ack,
                at: at(HOUR + 50),
            },
        )?;
        assert_eq!(s.active(), Duration::from_millis(450));
        // The process dies (the run stays `running`); a resume a day later: the gap does
        // not count either.
        let s = apply(
            s,
            &Event::RunResumed {
                pid: 3,
                at: at(24 * HOUR),
            },
        )?;
        let s = apply(
            s,
            &Event::CursorCommitted {
                page: 2,
                at: at(24 * HOUR + 20),
            },
        )?;
        let s = apply(
            s,
            &Event::RunFailed {
                error: "x".into(),
                at: at(24 * HOUR + 30),
            },
        )?;
        assert_eq!(s.active(), Duration::from_millis(480));
        // Nothing after a failure counts until a resume.
        let s = apply(
            s,
            &Event::RunAbandoned {
                reason: "fresh".into(),
                at: at(25 * HOUR),
            },
        )?;
        assert_eq!(s.active_ms, 480);
        assert_eq!(
            s.updated_at.since(s.started.at),
            Duration::from_millis(25 * HOUR)
        );
        Ok(())
    }

    #[test]
    fn out_of_order_events_are_rejected() {
        let bad: Vec<(Vec<Event>, &str)> = vec![
            (vec![fetched(2, None)], "expected page 1"),
            (vec![written(1)], "not staged"),
            (vec![fetched(1, Some("c")), committed(1)], "not written"),
            (
                vec![fetched(1, Some("c")), written(2)],
                "page 1 must be written before page 2",
            ),
            (
                vec![fetched(1, None), fetched(2, None)],
                "last page was already fetched",
            ),
            (
                vec![
                    fetched(1, Some("c")),
                    Event::RunCompleted { at: Timestamp(9) },
                ],
                "pages remain",
            ),
            (vec![Event::RunStarted(started())], "already started"),
        ];
        for (events, why) in bad {
            let err = run(&events).map(|_| ()).unwrap_err();
            assert!(err.to_string().contains(why), "{err} should mention {why}");
        }
    }

    #[test]
    fn fold_requires_run_started_first() -> Result<(), Invalid> {
        assert!(fold(&[written(1)]).is_err());
        assert_eq!(fold(&[])?, None);
        let s = fold(&[Event::RunStarted(started()), fetched(1, None)])?;
        assert_eq!(s.map(|s| s.last_seq), Some(2));
        Ok(())
    }
}
