//! The loop that drives a run: decide → step → journal → after-effects.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use super::error::Error;
use super::plan::Settings;
use crate::decision::{
    decide, lookahead, on_fetch_failure, on_write_failure, Action, Budget, Jitter,
};
use crate::destination::{self, Batch, Destination, Preparer};
use crate::event::{Event, PageFetched, WriteAck};
use crate::group::{GROUP, GROUP_BYTES};
use crate::journal::{self, Backend, Journal};
use crate::run_id::RunId;
use crate::source::{PageRequest, Source};
use crate::staging::{Stager, Staging};
use crate::state::{RunState, Status};
use crate::time::{Clock, Timestamp};

/// Drives a run until it completes, pauses, fails, or a stop is requested. Returns the
/// final state; `observe` sees every event after it is journaled.
///
/// Each turn of the loop: `decide` the action (pure), perform it as one step (the events
/// it leads to), journal those events as one batch with at most one flush
/// (`append_steps`), then the step's after-effects (wait out a retry's backoff, remove a
/// completed run's staged pages). A write step writes every pending page (a group) while
/// the next group is fetched ahead: a group's pages share one sync of staging and one of
/// the journal.
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
        stager: staging.stager(state.run_id()),
        staging,
        source,
        destination,
        limits: Limits {
            clock,
            settings,
            stop,
            began: clock.now(),
        },
        run: state.run_id(),
        fetched: 0,
        jitter: Jitter::new(settings.jitter_seed),
        failed_ahead: None,
        kept: VecDeque::new(),
    };
    loop {
        let budget = steps.limits.budget(steps.fetched);
        let events = match decide(&state, &budget) {
            Action::Stop => return Ok(state),
            Action::Fetch { page, cursor } => match steps.fetch(&state, page, cursor).await? {
                Some(events) => events,
                None => continue,
            },
            Action::Write { page } => steps.write(&state, page).await?,
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
    stager: Stager,
    source: &'a mut S,
    destination: &'a mut D,
    limits: Limits<'a>,
    run: RunId,
    /// Pages this invocation fetched (the page budget counts them).
    fetched: u64,
    jitter: Jitter,
    /// A fetch ahead (pipelining) that failed: its page and error.
    failed_ahead: Option<(u64, crate::source::Error)>,
    /// The pages this process staged and has not written yet, prepared for the destination.
    kept: VecDeque<Kept<D::Page>>,
    prepare: Preparer<D::Page>,
}

/// What a step's fetches ahead (pipelining) brought: the pages fetched and staged, and a
/// fetch that failed (its page and error).
struct Ahead<P> {
    fetched: Vec<Fetched<P>>,
    failed: Option<(u64, crate::source::Error)>,
}

/// What bounds an invocation: its settings, the time it began, a stop request.
#[derive(Clone, Copy)]
struct Limits<'a> {
    clock: &'a dyn Clock,
    settings: &'a Settings,
    stop: &'a AtomicBool,
    began: Timestamp,
}

impl Limits<'_> {
    /// The budget left once `fetched` pages were fetched by this invocation.
    fn budget(&self, fetched: u64) -> Budget {
        Budget {
            pages_left: self
                .settings
                .max_pages
                .map(|max| max.saturating_sub(fetched)),
            out_of_time: self.time_left().is_some_and(|left| left.is_zero()),
            interrupted: self.stop.load(Ordering::SeqCst),
        }
    }

    /// The time left of the invocation's budget.
    fn time_left(&self) -> Option<Duration> {
        self.settings
            .max_duration
            .map(|d| d.saturating_sub(self.clock.now().since(self.began)))
    }
}

impl<S: Source, D: Destination> Steps<'_, S, D> {
    /// Fetches and stages `page`: its events, or a retry's, a pause's or the failure's;
    /// `None` when a stop request abandoned the fetch.
    async fn fetch(
        &mut self,
        state: &RunState,
        page: u64,
        cursor: Option<String>,
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
                () = stop_requested(self.limits.stop) => return Ok(None),
                result = fetch_and_stage(self.source, &mut self.stager, &self.prepare, request, self.limits.clock) => result?,
            },
        };
        let mut events = Vec::with_capacity(2);
        match fetched {
            Ok(fetched) => {
                self.stager.sync()?;
                self.keep(fetched, &mut events);
            }
            Err(e) => events.push(on_fetch_failure(
                state,
                page,
                &e,
                &self.limits.settings.retry,
                self.jitter.next_sample(),
                self.limits.time_left(),
                self.limits.clock.now(),
            )),
        }
        Ok(Some(events))
    }

    /// Writes the pending pages from `page` on, in order, each committed by the
    /// destination with its checkpoint, while the next pages are fetched ahead
    /// (pipelining): the writes' events, then the pages fetched ahead.
    async fn write(&mut self, state: &RunState, page: u64) -> Result<Vec<Event>, Error> {
        let run = self.run;
        let unwritten: Vec<_> = state
            .pending
            .iter()
            .filter(|p| p.written.is_none())
            .map(|p| (p.fetched.page, p.fetched.checksum))
            .collect();
        if unwritten.first().map(|(p, _)| *p) != Some(page) {
            // `decide` only names the first unwritten page; anything else is a bug in it.
            return Err(inconsistent(
                state,
                run,
                format!("page {page} is not the next to write"),
            ));
        }
        // The records as staged and prepared by this process, else (a resume, a retry)
        // read back and prepared now.
        let mut pages = Vec::with_capacity(unwritten.len());
        for (page, checksum) in unwritten {
            let records = match self.take_kept(page, checksum) {
                Some(records) => records,
                None => (self.prepare)(self.staging.read(run, page, checksum)?, None),
            };
            pages.push((page, records));
        }
        let written = AtomicBool::new(false);
        let limits = self.limits;
        // A fetch ahead that failed waits for its turn (`fetch`), never asked again here.
        let failed = self.failed_ahead.as_ref().map(|(page, _)| *page);
        let ahead = fetch_ahead(
            state,
            &written,
            &mut *self.source,
            &mut self.stager,
            &self.prepare,
            limits,
            (self.fetched, failed),
        );
        let writes = async {
            let results = write_pages(state, &pages, &mut *self.destination, limits.clock).await;
            written.store(true, Ordering::SeqCst);
            results
        };
        // The fetches ahead start first: with a source that answers at once they run to a
        // whole group before the writes are polled.
        let (ahead, results) = tokio::join!(ahead, writes);
        // The destination's commits of this step, if any, are recognised on replay.
        let ahead = ahead?;
        let pages = pages.iter().map(|(page, _)| *page);
        let mut events = written_events(state, pages, results?, &mut self.jitter, limits)?;
        // Only a retry or a whole group keeps the run going: after a pause or a failure,
        // nothing follows in the journal (the pages fetched ahead are fetched again later).
        if !matches!(
            events.last(),
            Some(Event::RunFailed { .. } | Event::RunPaused { .. })
        ) {
            for fetched in ahead.fetched {
                self.keep(fetched, &mut events);
            }
            if ahead.failed.is_some() {
                self.failed_ahead = ahead.failed;
            }
        }
        Ok(events)
    }

    /// A fetched page's events join the step, its records are kept for its write.
    fn keep(&mut self, fetched: Fetched<D::Page>, events: &mut Vec<Event>) {
        self.fetched += 1;
        events.extend(fetched.events);
        self.kept.extend(fetched.kept);
    }

    /// The prepared records of `page` if this process staged it (with `checksum`).
    fn take_kept(&mut self, page: u64, checksum: u32) -> Option<D::Page> {
        while let Some(front) = self.kept.front() {
            if front.page > page {
                return None;
            }
            let kept = self.kept.pop_front()?;
            if kept.page == page && kept.checksum == checksum {
                return Some(kept.records);
            }
        }
        None
    }

    /// A journaled event's after-effects.
    async fn after(&self, state: &RunState, event: &Event) -> Result<(), Error> {
        match event {
            Event::RequestRetried { wait_ms, .. } | Event::WriteRetried { wait_ms, .. } => {
                // A stop request cuts the wait short; `decide` then pauses.
                tokio::select! {
                    () = self.limits.clock.sleep(Duration::from_millis(*wait_ms)) => {}
                    () = stop_requested(self.limits.stop) => {}
                }
            }
            _ if state.status == Status::Completed => self.staging.remove_run(self.run)?,
            _ => {}
        }
        Ok(())
    }
}

/// Fetches and stages the pages `lookahead` allows, one after the other, while the
/// pending pages are written (`written` once they are): at most a group, and no more once
/// the writes are done (a slow API is not waited for). A stop request drops the fetch under
/// way (a hung request never delays the pause); a failed fetch ends them and waits for its
/// page's turn; a failure to stage (the disk) is only logged: the page is fetched again in
/// turn, where a second failure stops the run. The pages are synced together; a failed
/// sync stops the run.
async fn fetch_ahead<S: Source, P>(
    state: &RunState,
    written: &AtomicBool,
    source: &mut S,
    stager: &mut Stager,
    prepare: &Preparer<P>,
    limits: Limits<'_>,
    (fetched, failed): (u64, Option<u64>),
) -> Result<Ahead<P>, Error> {
    let run = state.run_id();
    let mut scratch = state.clone();
    let mut ahead = Ahead {
        fetched: Vec::new(),
        failed: None,
    };
    let mut bytes = 0;
    while (ahead.fetched.len() as u64) < GROUP
        && bytes < GROUP_BYTES
        && (ahead.fetched.is_empty() || !written.load(Ordering::SeqCst))
    {
        let budget = limits.budget(fetched + ahead.fetched.len() as u64);
        let Some(Action::Fetch { page, cursor }) = lookahead(&scratch, &budget) else {
            break;
        };
        if failed == Some(page) {
            break;
        }
        let request = PageRequest {
            page,
            cursor: cursor.as_deref(),
            window: scratch.window(),
        };
        let result = tokio::select! {
            biased;
            () = stop_requested(limits.stop) => break,
            result = fetch_and_stage(source, stager, prepare, request, limits.clock) => result,
        };
        match result {
            Ok(Ok(page)) => {
                let folded = page.events.iter().try_fold(scratch, crate::state::apply);
                scratch = match folded {
                    Ok(next) => next,
                    // Not journaled: the page is fetched again in turn.
                    Err(e) => {
                        tracing::warn!(%run, "a page fetched ahead does not follow: {e}");
                        break;
                    }
                };
                bytes += page.bytes;
                ahead.fetched.push(page);
            }
            Ok(Err(e)) => {
                ahead.failed = Some((page, e));
                break;
            }
            Err(e) => {
                tracing::warn!(%run, "staging a page ahead failed: {e}");
                break;
            }
        }
    }
    // A failed sync stops the run, as a fetch's does: what the disk refused to sync may be
    // lost while the next sync succeeds, so nothing more is appended after it.
    if !ahead.fetched.is_empty() {
        stager.sync()?;
    }
    Ok(ahead)
}

/// Writes `pages` in order, each committed by the destination with its checkpoint: a
/// `BatchWritten` and a `CursorCommitted` a page, up to the first failure and the event it
/// leads to (a retry, a pause, the run failing).
async fn write_pages<D: Destination>(
    state: &RunState,
    pages: &[(u64, D::Page)],
    destination: &mut D,
    clock: &dyn Clock,
) -> Result<Vec<Result<WriteAck, destination::Error>>, Error> {
    let run = state.run_id();
    let mut checkpoints = Vec::with_capacity(pages.len());
    for (page, _) in pages {
        match state.checkpoint_after(*page, clock.now()) {
            Some(checkpoint) => checkpoints.push(checkpoint),
            None => {
                return Err(inconsistent(
                    state,
                    run,
                    format!("page {page} is not pending"),
                ))
            }
        }
    }
    let batches: Vec<_> = pages
        .iter()
        .zip(&checkpoints)
        .map(|((page, records), checkpoint)| Batch {
            run_id: run,
            page: *page,
            records,
            checkpoint,
        })
        .collect();
    Ok(destination.write_pages(&batches).await)
}

/// The events of the pages' writes (`written`, one result a page from the first, up to a
/// failure): a `BatchWritten` and a `CursorCommitted` a page written, then the event a
/// failure leads to (a retry, a pause, the run failing).
fn written_events(
    state: &RunState,
    pages: impl Iterator<Item = u64>,
    written: Vec<Result<WriteAck, destination::Error>>,
    jitter: &mut Jitter,
    limits: Limits<'_>,
) -> Result<Vec<Event>, Error> {
    let (run, clock) = (state.run_id(), limits.clock);
    let mut state = state.clone();
    let mut events = Vec::with_capacity(2 * written.len());
    for (page, written) in pages.zip(written) {
        match written {
            // The destination committed the page with its checkpoint: the commit is the
            // only step that can follow (`decide`), so it joins the batch.
            Ok(ack) => {
                let at = clock.now();
                for event in [
                    Event::BatchWritten { page, ack, at },
                    Event::CursorCommitted { page, at },
                ] {
                    state = crate::state::apply(state, &event)
                        .map_err(|source| journal::Error::Inconsistent { run, source })?;
                    events.push(event);
                }
            }
            // Nothing of the page was committed: a transient failure is retried after a
            // backoff (the pages fetched ahead meanwhile are journaled as usual, then
            // written in turn); a permanent one, or the last attempt, fails the run.
            Err(e) => {
                events.push(on_write_failure(
                    &state,
                    page,
                    &e,
                    &limits.settings.retry,
                    jitter.next_sample(),
                    limits.time_left(),
                    clock.now(),
                ));
                break;
            }
        }
    }
    Ok(events)
}

/// A step the state does not allow: a bug in `decide` or the driver.
fn inconsistent(state: &RunState, run: RunId, why: String) -> Error {
    Error::Journal(journal::Error::Inconsistent {
        run,
        source: crate::state::Invalid {
            event: "batch_written",
            status: state.status.name(),
            seq: state.last_seq,
            why,
        },
    })
}

/// Fetches a page, stages its records and prepares them for the destination: the events
/// that record it (an ignored response's note, then `PageFetched`), or the fetch's failure.
/// Nothing is journaled here, nor synced.
async fn fetch_and_stage<S: Source, P>(
    source: &mut S,
    stager: &mut Stager,
    prepare: &Preparer<P>,
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
        return Ok(Ok(Fetched {
            events,
            kept: None,
            bytes: 0,
        }));
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
    let staged = stager.stage(request.page, &fetched.records)?;
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
        bytes: staged.bytes,
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
    /// The staged page's size.
    bytes: u64,
    kept: Option<Kept<P>>,
}

/// The records of a page this process staged, prepared for the destination, so writing it
/// does not read the staged file back (a resumed run does).
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
