//! The loop that drives a run: decide → step → journal → after-effects.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use super::error::Error;
use super::plan::Settings;
use crate::decision::{
    decide, lookahead, on_fetch_failure, on_write_failure, Action, Budget, Jitter,
};
use crate::destination::{Batch, Destination, Preparer};
use crate::event::{Event, PageFetched};
use crate::journal::{self, Backend, Journal};
use crate::run_id::RunId;
use crate::source::{PageRequest, Source};
use crate::staging::Staging;
use crate::state::{RunState, Status};
use crate::time::{Clock, Timestamp};

/// Drives a run until it completes, pauses, fails, or a stop is requested. Returns the
/// final state; `observe` sees every event after it is journaled.
///
/// Each turn of the loop: `decide` the action (pure), perform it as one step (the events
/// it leads to), journal those events as one batch with at most one flush
/// (`append_steps`), then the step's after-effects (wait out a retry's backoff, remove a
/// completed run's staged pages).
#[allow(clippy::too_many_arguments)]
pub async fn drive<B, S, D>(
    journal: &mut Journal<B>,
    staging: &Staging,
    source: &mut S,
    destination: &mut D,
    clock: &dyn Clock,
    settings: &Settings,
    stop: &AtomicBool,
    mut state: RunState,
    observe: &mut (dyn FnMut(&RunState, &Event) + Send),
) -> Result<RunState, Error>
where
    B: Backend,
    S: Source,
    D: Destination,
{
    let staging = &staging.with_durability(journal.durability());
    let mut steps = Steps {
        prepare: destination.preparer(),
        staging,
        source,
        destination,
        clock,
        settings,
        stop,
        run: state.run_id(),
        began: clock.now(),
        fetched: 0,
        jitter: Jitter::new(settings.jitter_seed),
        failed_ahead: None,
        kept: None,
    };
    loop {
        let (budget, time_left) = steps.budget();
        let events = match decide(&state, &budget) {
            Action::Stop => return Ok(state),
            Action::Fetch { page, cursor } => {
                match steps.fetch(&state, page, cursor, time_left).await? {
                    Some(events) => events,
                    None => continue,
                }
            }
            Action::Write { page } => steps.write(&state, page, &budget, time_left).await?,
            Action::Commit { page } => vec![Event::CursorCommitted {
                page,
                at: clock.now(),
            }],
            Action::Complete => vec![Event::RunCompleted { at: clock.now() }],
            Action::Pause(reason) => vec![Event::RunPaused {
                reason,
                at: clock.now(),
            }],
        };
        let states = journal.append_steps(&state, &events)?;
        for (event, next) in events.iter().zip(states) {
            state = next;
            tracing::debug!(run = %steps.run, seq = state.last_seq, step = event.name(), "journaled");
            observe(&state, event);
            steps.after(&state, event).await?;
        }
    }
}

/// The parts a run's steps are performed with, and what the loop keeps between steps.
struct Steps<'a, S, D: Destination> {
    staging: &'a Staging,
    source: &'a mut S,
    destination: &'a mut D,
    clock: &'a dyn Clock,
    settings: &'a Settings,
    stop: &'a AtomicBool,
    run: RunId,
    began: Timestamp,
    /// Pages this invocation fetched (the page budget counts them).
    fetched: u64,
    jitter: Jitter,
    /// A fetch ahead (pipelining) that failed: its page and error.
    failed_ahead: Option<(u64, crate::source::Error)>,
    /// The page staged last, prepared for the destination.
    kept: Option<Kept<D::Page>>,
    prepare: Preparer<D::Page>,
}

/// The outcome of a fetch ahead: `None` when a stop request dropped it.
type Ahead<P> = Option<Result<Result<Fetched<P>, crate::source::Error>, Error>>;

impl<S: Source, D: Destination> Steps<'_, S, D> {
    /// The budget left to this invocation, and the time left of it.
    fn budget(&self) -> (Budget, Option<Duration>) {
        let time_left = self
            .settings
            .max_duration
            .map(|d| d.saturating_sub(self.clock.now().since(self.began)));
        let budget = Budget {
            pages_left: self
                .settings
                .max_pages
                .map(|max| max.saturating_sub(self.fetched)),
            out_of_time: time_left.is_some_and(|left| left.is_zero()),
            interrupted: self.stop.load(Ordering::SeqCst),
        };
        (budget, time_left)
    }

    /// Fetches and stages `page`: its events, or a retry's, a pause's or the failure's;
    /// `None` when a stop request abandoned the fetch.
    async fn fetch(
        &mut self,
        state: &RunState,
        page: u64,
        cursor: Option<String>,
        time_left: Option<Duration>,
    ) -> Result<Option<Vec<Event>>, Error> {
        let request = PageRequest {
            page,
            cursor: cursor.as_deref(),
            window: state.window(),
        };
        // A fetch has no effect until its page is journaled, so a stop request abandons it
        // (a hung request never delays a pause); `decide` then pauses. A fetch ahead that
        // failed counts as this fetch's attempt (journaled now, in order, with its wait),
        // never as a silent extra request.
        let failed = self.failed_ahead.take().filter(|(p, _)| *p == page);
        let fetched = match failed {
            Some((_, e)) => Err(e),
            None => tokio::select! {
                biased;
                () = stop_requested(self.stop) => return Ok(None),
                result = fetch_and_stage(self.source, self.staging, &self.prepare, self.run, request, self.clock) => result?,
            },
        };
        let mut events = Vec::with_capacity(2);
        match fetched {
            Ok(fetched) => self.keep(fetched, &mut events),
            Err(e) => events.push(on_fetch_failure(
                state,
                page,
                &e,
                &self.settings.retry,
                self.jitter.next_sample(),
                time_left,
                self.clock.now(),
            )),
        }
        Ok(Some(events))
    }

    /// Writes pending `page` while the next page is fetched ahead (pipelining): the write's
    /// events, then the page fetched ahead.
    async fn write(
        &mut self,
        state: &RunState,
        page: u64,
        budget: &Budget,
        time_left: Option<Duration>,
    ) -> Result<Vec<Event>, Error> {
        let run = self.run;
        let (Some(pending), Some(checkpoint)) = (
            state.pending.iter().find(|p| p.fetched.page == page),
            state.checkpoint_after(page, self.clock.now()),
        ) else {
            // `decide` only names pending pages; anything else is a bug in it.
            return Err(Error::Journal(journal::Error::Inconsistent {
                run,
                source: crate::state::Invalid {
                    event: "batch_written",
                    status: state.status.name(),
                    seq: state.last_seq,
                    why: format!("page {page} is not pending"),
                },
            }));
        };
        // The records as staged and prepared by this process, else (a resume, a retry)
        // read back and prepared now.
        let records = match self.kept.take() {
            Some(k) if k.page == page && k.checksum == pending.fetched.checksum => k.records,
            _ => (self.prepare)(
                self.staging.read(run, page, pending.fetched.checksum)?,
                None,
            ),
        };
        let batch = Batch {
            run_id: run,
            page,
            records: &records,
            checkpoint: &checkpoint,
        };
        let (written, ahead) = match lookahead(state, budget) {
            Some(Action::Fetch { page: next, cursor }) => {
                let request = PageRequest {
                    page: next,
                    cursor: cursor.as_deref(),
                    window: state.window(),
                };
                // A stop request drops the fetch ahead (a hung request never delays the
                // pause); the write always finishes.
                let (source, staging, prepare, clock) =
                    (&mut *self.source, self.staging, &self.prepare, self.clock);
                let ahead = async {
                    tokio::select! {
                        biased;
                        () = stop_requested(self.stop) => None,
                        result = fetch_and_stage(source, staging, prepare, run, request, clock) => Some(result),
                    }
                };
                let (written, ahead) = tokio::join!(self.destination.write(batch), ahead);
                (written, Some((next, ahead)))
            }
            _ => (self.destination.write(batch).await, None),
        };
        let mut events = Vec::with_capacity(4);
        match written {
            // The destination committed the page with its checkpoint: the commit is the
            // only step that can follow (`decide`), so it joins the batch, and the page
            // fetched ahead comes after it.
            Ok(ack) => {
                let at = self.clock.now();
                events.push(Event::BatchWritten { page, ack, at });
                events.push(Event::CursorCommitted { page, at });
                self.ahead(ahead, &mut events);
            }
            // Nothing of the page was committed: a transient failure is retried after a
            // backoff (a page fetched ahead meanwhile is journaled as usual, then written
            // in turn); a permanent one, or the last attempt, fails the run.
            Err(e) => {
                let failed = on_write_failure(
                    state,
                    page,
                    &e,
                    &self.settings.retry,
                    self.jitter.next_sample(),
                    time_left,
                    self.clock.now(),
                );
                // Only a retry keeps the run going: after a pause or a failure, nothing
                // follows in the journal (the page fetched ahead is fetched again later).
                let retried = matches!(failed, Event::WriteRetried { .. });
                events.push(failed);
                if retried {
                    self.ahead(ahead, &mut events);
                }
            }
        }
        Ok(events)
    }

    /// A fetched page's events join the step, its records are kept for its write.
    fn keep(&mut self, fetched: Fetched<D::Page>, events: &mut Vec<Event>) {
        self.fetched += 1;
        events.extend(fetched.events);
        self.kept = fetched.kept;
    }

    /// What a fetch ahead leads to: its page joins the step; its failure waits for that
    /// page's turn; a failure to stage it (the disk) is only logged: the page is fetched
    /// again in turn, where a second failure stops the run.
    fn ahead(&mut self, ahead: Option<(u64, Ahead<D::Page>)>, events: &mut Vec<Event>) {
        match ahead {
            Some((_, Some(Ok(Ok(fetched))))) => self.keep(fetched, events),
            Some((next, Some(Ok(Err(e))))) => self.failed_ahead = Some((next, e)),
            Some((_, Some(Err(e)))) => {
                tracing::warn!(run = %self.run, "staging a page ahead failed: {e}");
            }
            Some((_, None)) | None => {}
        }
    }

    /// A journaled event's after-effects.
    async fn after(&self, state: &RunState, event: &Event) -> Result<(), Error> {
        match event {
            Event::RequestRetried { wait_ms, .. } | Event::WriteRetried { wait_ms, .. } => {
                // A stop request cuts the wait short; `decide` then pauses.
                tokio::select! {
                    () = self.clock.sleep(Duration::from_millis(*wait_ms)) => {}
                    () = stop_requested(self.stop) => {}
                }
            }
            _ if state.status == Status::Completed => self.staging.remove_run(self.run)?,
            _ => {}
        }
        Ok(())
    }
}

/// Fetches a page, stages its records and prepares them for the destination: the events
/// that record it (an ignored response's note, then `PageFetched`), or the fetch's failure.
/// Nothing is journaled here.
async fn fetch_and_stage<S: Source, P>(
    source: &mut S,
    staging: &Staging,
    prepare: &Preparer<P>,
    run: RunId,
    request: PageRequest<'_>,
    clock: &dyn Clock,
) -> Result<Result<Fetched<P>, crate::source::Error>, Error> {
    let fetched = match source.fetch(request).await {
        Ok(fetched) => fetched,
        Err(e) => return Ok(Err(e)),
    };
    let mut events = Vec::with_capacity(3);
    if let Some(drift) = fetched.drift.as_ref().filter(|d| d.refused) {
        // Refused by the stream's schema policy: nothing is staged, the run fails, and a
        // resume fetches the page again.
        events.push(Event::SchemaChanged {
            page: request.page,
            changes: drift.changes.clone(),
            refused: true,
            at: clock.now(),
        });
        return Ok(Ok(Fetched { events, kept: None }));
    }
    if let Some(ignored) = fetched.ignored {
        events.push(Event::PageIgnored {
            page: request.page,
            status: ignored.status,
            rule: ignored.rule,
            reason: ignored.reason,
            at: clock.now(),
        });
    }
    let staged = staging.stage(run, request.page, &fetched.records)?;
    events.push(Event::PageFetched(PageFetched {
        page: request.page,
        request_cursor: request.cursor.map(str::to_string),
        next_cursor: fetched.next_cursor,
        records: fetched.records.len() as u64,
        bytes: staged.bytes,
        checksum: staged.checksum,
        at: clock.now(),
        max_seen: fetched.max_seen,
    }));
    if let Some(drift) = fetched.drift.filter(|d| !d.changes.is_empty()) {
        events.push(Event::SchemaChanged {
            page: request.page,
            changes: drift.changes,
            refused: false,
            at: clock.now(),
        });
    }
    Ok(Ok(Fetched {
        events,
        kept: Some(Kept {
            page: request.page,
            checksum: staged.checksum,
            records: prepare(fetched.records, fetched.fields),
        }),
    }))
}

/// A fetched and staged page: the events that record it, and its records (none when the
/// page was refused).
struct Fetched<P> {
    events: Vec<Event>,
    kept: Option<Kept<P>>,
}

/// The records of the page this process staged last, prepared for the destination, so
/// writing it does not read the staged file back (a resumed run does).
struct Kept<P> {
    page: u64,
    checksum: u32,
    records: P,
}

/// Resolves once a stop is requested.
async fn stop_requested(stop: &AtomicBool) {
    while !stop.load(Ordering::SeqCst) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
