//! The driver: the only part of the engine that performs I/O.
//!
//! [`open`] starts a stream's run or picks up its unfinished one; [`drive`] loops: decide
//! the next action from the state (pure), perform it through the [`Source`], [`Staging`]
//! or [`Destination`], append the resulting events to the journal as one batch (flushed
//! once where [`Event::needs_flush`] says), fold them, repeat.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::checkpoint::Checkpoint;
use crate::decision::{
    decide, lookahead, on_fetch_failure, on_write_failure, Action, Budget, Jitter, RetryPolicy,
};
use crate::destination::{self, Batch, Destination, Preparer};
use crate::event::{Event, PageFetched, RunStarted, StartFrom};
use crate::journal::{self, Backend, Journal};
use crate::run_id::RunId;
use crate::source::{PageRequest, Source};
use crate::staging::{self, Staging};
use crate::state::{RunState, Status};
use crate::time::{millis, Clock, Timestamp};
use crate::window::Window;

/// A failure that stops the driver. Source and destination failures are not here: they
/// are journaled as `RunFailed` and the run can be resumed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The journal failed.
    #[error(transparent)]
    Journal(#[from] journal::Error),
    /// Staging failed.
    #[error(transparent)]
    Staging(#[from] staging::Error),
    /// The workflow changed since the unfinished run started.
    #[error(
        "run {run} of {stream} started under a different version of {path}; changed: {}. \
         Restore the file to finish that run, or pass --fresh to abandon it and start a new \
         run from the last committed checkpoint",
        changes.join("; ")
    )]
    WorkflowChanged {
        /// The unfinished run.
        run: RunId,
        /// The stream.
        stream: String,
        /// The workflow file.
        path: String,
        /// What changed, one entry per key.
        changes: Vec<String>,
    },
    /// The run is finished and cannot be resumed.
    #[error("run {run} is {status}; nothing to resume (`waymark run` starts a new one)")]
    Finished {
        /// The run.
        run: RunId,
        /// Its status.
        status: &'static str,
    },
    /// The destination could not tell its checkpoint.
    #[error("reading the destination's checkpoint failed: {0}")]
    Destination(#[from] destination::Error),
    /// The journal has no usable checkpoint for a stream that has synced before: where to
    /// continue is the operator's choice, never a guess.
    #[error(
        "{sync}/{stream}: {why}. Nothing is guessed; choose where the stream continues:{}\n  \
         waymark checkpoint set <workflow> --stream {stream} --to <RFC 3339 time> --reason \"…\"\n  \
         waymark checkpoint reset <workflow> --stream {stream} --reason \"…\"   (from the beginning)",
        match destination {
            Some(c) => format!(
                "\n  waymark checkpoint adopt <workflow> --stream {stream} --reason \"…\"   \
                 (the destination's own: run {}, page {}, watermark {})",
                c.run_id, c.page, c.window.end
            ),
            None => String::new(),
        }
    )]
    CheckpointLost {
        /// The sync.
        sync: String,
        /// The stream (checkpoint scope).
        stream: String,
        /// What is missing or damaged.
        why: String,
        /// The destination's own checkpoint, if it has one.
        destination: Option<Box<Checkpoint>>,
    },
}

/// Everything needed to start or resume one stream's run, resolved from the workflow file.
#[derive(Clone, Debug, Default)]
pub struct Plan {
    /// Sync name.
    pub sync: String,
    /// Stream name.
    pub stream: String,
    /// Digest of the workflow's canonical form.
    pub workflow_digest: String,
    /// Path of the workflow file.
    pub workflow_path: String,
    /// The workflow's canonical key/values, to name what changed between two digests.
    pub fingerprint: Vec<(String, String)>,
    /// The watermark is `now − lag`.
    pub lag: Duration,
    /// A new window starts this long before the previous watermark, to re-read late updates.
    pub overlap: Duration,
    /// Window start of the stream's first run (`None`: from the beginning).
    pub start: Option<Timestamp>,
    /// A fixed upper bound for every window (a backfill's end); `now − lag` if earlier.
    pub until: Option<Timestamp>,
    /// Longest window of one run: a long catch-up is processed as consecutive runs
    /// ("slices"), each checkpointed (applies once the window has a start).
    pub step: Option<Duration>,
    /// Abandon an unfinished run and start a new one.
    pub fresh: bool,
}

/// Limits and retry behaviour of one invocation.
#[derive(Clone, Debug, Default)]
pub struct Settings {
    /// Retry policy for fetches.
    pub retry: RetryPolicy,
    /// Fetch at most this many pages, then pause.
    pub max_pages: Option<u64>,
    /// Run at most this long, then pause.
    pub max_duration: Option<Duration>,
    /// Seed of the jitter generator.
    pub jitter_seed: u64,
}

/// Starts a new run of the plan's stream, or resumes its unfinished run.
pub async fn open<B: Backend, D: Destination>(
    journal: &mut Journal<B>,
    staging: &Staging,
    destination: &mut D,
    plan: &Plan,
    now: Timestamp,
) -> Result<RunState, Error> {
    let active = match journal.active_run(&plan.sync, &plan.stream) {
        Ok(active) => active,
        Err(e @ journal::Error::Corrupt { .. }) if !plan.fresh => return Err(e.into()),
        Err(e) => {
            tracing::warn!("--fresh: forgetting the damaged unfinished-run pointer: {e}");
            journal.clear_active_run(&plan.sync, &plan.stream)?;
            None
        }
    };
    if let Some(run) = active {
        match journal.load(run) {
            Ok(state) if state.status.is_finished() => {
                // Cannot happen through `append` (the pointer goes in the same batch as the
                // finishing event); a stale pointer is simply dropped.
                journal.clear_active_run(&plan.sync, &plan.stream)?;
            }
            Ok(state) if !plan.fresh => return resume(journal, state, plan, now),
            Ok(state) => {
                let reason = "abandoned by --fresh".to_string();
                journal.append(state, &Event::RunAbandoned { reason, at: now })?;
                staging.remove_run(run)?;
            }
            Err(e) if !plan.fresh => return Err(e.into()),
            Err(e) => {
                tracing::warn!("--fresh: abandoning damaged run {run}: {e}");
                journal.clear_active_run(&plan.sync, &plan.stream)?;
                staging.remove_run(run)?;
            }
        }
    }
    // The journal's checkpoint. If it is missing (a lost or reset journal) or damaged while
    // the destination holds one, or it was damaged, the operator chooses how to continue;
    // only a stream with no checkpoint anywhere, or one reset on purpose, starts afresh.
    let (ours, damaged) = match journal.checkpoint(&plan.sync, &plan.stream) {
        Ok(ours) => (ours, None),
        Err(e @ journal::Error::Corrupt { .. }) => (None, Some(e)),
        Err(e) => return Err(e.into()),
    };
    let start_from = match ours {
        Some(checkpoint) => StartFrom::Journal(checkpoint),
        None => {
            let reset = journal
                .checkpoint_history(&plan.sync, &plan.stream)
                .ok()
                .and_then(|h| h.last().map(|(_, c)| c.new.is_none()))
                .unwrap_or(false);
            let theirs = destination.checkpoint().await?;
            match (theirs, damaged) {
                (_, None) if reset => StartFrom::Beginning,
                (None, None) => StartFrom::Beginning,
                (theirs, damaged) => {
                    let why = match (&damaged, &theirs) {
                        (Some(e), _) => format!("the journal's checkpoint is damaged ({e})"),
                        (None, _) => "the journal has no checkpoint for this stream, but its \
                                      destination holds one (the journal was lost or reset?)"
                            .to_string(),
                    };
                    return Err(Error::CheckpointLost {
                        sync: plan.sync.clone(),
                        stream: plan.stream.clone(),
                        why,
                        destination: theirs.map(Box::new),
                    });
                }
            }
        }
    };
    let (window, start_cursor) = window_after(start_from_checkpoint(&start_from), plan, now);
    let started = RunStarted {
        run_id: RunId::new(),
        sync: plan.sync.clone(),
        stream: plan.stream.clone(),
        workflow_digest: plan.workflow_digest.clone(),
        workflow_path: plan.workflow_path.clone(),
        window,
        start_cursor,
        start_from,
        at: now,
    };
    Ok(journal.start(started, &plan.fingerprint)?)
}

fn start_from_checkpoint(start: &StartFrom) -> Option<&Checkpoint> {
    match start {
        StartFrom::Beginning => None,
        StartFrom::Journal(c) | StartFrom::Destination(c) => Some(c),
    }
}

/// The window and start cursor of a new run after `previous`. Pure.
///
/// After a completed window the new one starts `overlap` before the old watermark, from
/// the source's first page. After an unfinished one (abandoned, or a lost journal) it keeps
/// the old start and continues from the committed cursor, up to a new watermark.
pub fn window_after(
    previous: Option<&Checkpoint>,
    plan: &Plan,
    now: Timestamp,
) -> (Window, Option<String>) {
    let limit = now.saturating_sub(plan.lag);
    let limit = plan.until.map_or(limit, |until| until.min(limit));
    let (start, cursor, end) = match previous {
        None => (plan.start, None, None),
        Some(c) if c.complete => (Some(c.window.end.saturating_sub(plan.overlap)), None, None),
        // An unfinished window keeps its bounds when it was a slice (its cursor belongs
        // to that range); otherwise it extends to the new watermark.
        Some(c) => (
            c.window.start,
            c.cursor.clone(),
            plan.step.map(|_| c.window.end),
        ),
    };
    let end = end.unwrap_or(match (start, plan.step) {
        (Some(s), Some(step)) => limit.min(s.saturating_add(step)),
        _ => limit,
    });
    (
        Window {
            start: start.map(|s| s.min(end)),
            end,
        },
        cursor,
    )
}

/// Whether a completed run's window was cut short by `plan.step`, so another slice follows.
pub fn sliced(window: &Window, plan: &Plan) -> bool {
    match (window.start, plan.step) {
        (Some(start), Some(step)) => window.end.0 == start.0.saturating_add(millis(step)),
        _ => false,
    }
}

/// Resumes a run that is not finished: refuses if the workflow changed, else journals
/// `RunResumed` and returns the folded state.
pub fn resume<B: Backend>(
    journal: &mut Journal<B>,
    state: RunState,
    plan: &Plan,
    now: Timestamp,
) -> Result<RunState, Error> {
    let run = state.run_id();
    if state.status.is_finished() {
        return Err(Error::Finished {
            run,
            status: state.status.name(),
        });
    }
    if state.started.workflow_digest != plan.workflow_digest {
        let before = journal
            .fingerprint(&state.started.workflow_digest)?
            .unwrap_or_default();
        return Err(Error::WorkflowChanged {
            run,
            stream: state.started.stream.clone(),
            path: plan.workflow_path.clone(),
            changes: diff(&before, &plan.fingerprint),
        });
    }
    Ok(journal.append(
        state,
        &Event::RunResumed {
            pid: std::process::id(),
            at: now,
        },
    )?)
}

/// Names the keys that differ between two canonical workflows.
fn diff(before: &[(String, String)], after: &[(String, String)]) -> Vec<String> {
    use std::collections::BTreeMap;
    let old: BTreeMap<_, _> = before.iter().map(|(k, v)| (k, v)).collect();
    let new: BTreeMap<_, _> = after.iter().map(|(k, v)| (k, v)).collect();
    let mut changes = Vec::new();
    for (key, value) in &old {
        match new.get(key) {
            None => changes.push(format!("{key} removed (was {value})")),
            Some(now) if now != value => changes.push(format!("{key}: {value} -> {now}")),
            Some(_) => {}
        }
    }
    for (key, value) in &new {
        if !old.contains_key(key) {
            changes.push(format!("{key} added ({value})"));
        }
    }
    if changes.is_empty() {
        changes.push("the workflow's digest (its earlier form is not in the journal)".into());
    }
    changes
}

/// Drives a run until it completes, pauses, fails, or a stop is requested. Returns the
/// final state; `observe` sees every event after it is journaled.
///
/// Each turn of the loop: `decide` the action (pure), perform it as one step (the events
/// it leads to), journal those events as one batch with at most one flush
/// (`append_steps`), then the step's after-effects (free the committed page's staging
/// slot, wait out a retry's backoff).
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
            _ => (self.prepare)(self.staging.read(run, page, pending.fetched.checksum)?),
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
            // in turn), anything else fails the run.
            Err(e) => {
                events.push(on_write_failure(
                    state,
                    page,
                    &e,
                    &self.settings.retry,
                    self.jitter.next_sample(),
                    time_left,
                    self.clock.now(),
                ));
                if e.retryable() {
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
        self.kept = Some(fetched.kept);
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
            Event::CursorCommitted { page, .. } => self.staging.remove(self.run, *page)?,
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
    let mut events = Vec::with_capacity(2);
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
    }));
    Ok(Ok(Fetched {
        events,
        kept: Kept {
            page: request.page,
            checksum: staged.checksum,
            records: prepare(fetched.records),
        },
    }))
}

/// A fetched and staged page: the events that record it, and its records.
struct Fetched<P> {
    events: Vec<Event>,
    kept: Kept<P>,
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
