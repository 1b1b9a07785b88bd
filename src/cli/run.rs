//! `waymark run` and `waymark resume`.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use waymark_connectors::config::{is_repair_scope, parse_scope, StreamSection};
use waymark_connectors::{sink, AnyDestination, Api, HttpSource, Workflow};
use waymark_engine::{
    driver, Clock, Event, Plan, RunId, RunState, Settings, Source, StateDir, Status, SystemClock,
    Timestamp,
};

use super::{ExitStatus, UsageError};

/// Limits and output of one invocation, shared by `run`, `resume` and `backfill`.
#[derive(Debug, Args, Clone)]
pub struct Budget {
    /// Print each run's summary as one JSON object on stdout instead of a line.
    #[arg(long)]
    pub(super) json: bool,
    /// Fetch at most N pages per stream, then pause (the next `waymark run` continues).
    #[arg(long, value_name = "N")]
    max_pages: Option<u64>,
    /// Run each stream at most this long (e.g. `10m`), then pause at a step boundary.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    max_duration: Option<Duration>,
}

/// Arguments of `waymark run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// The workflow file.
    workflow: PathBuf,
    /// Only these streams (repeatable; default: all, in file order).
    #[arg(long = "stream", value_name = "NAME")]
    streams: Vec<String>,
    /// Abandon an unfinished run (journaled) and start a new one from the last committed
    /// checkpoint.
    #[arg(long)]
    fresh: bool,
    #[command(flatten)]
    budget: Budget,
}

/// Arguments of `waymark resume`.
#[derive(Debug, Args)]
pub struct ResumeArgs {
    /// The run to resume (a unique prefix or suffix of its id is enough).
    run_id: String,
    #[command(flatten)]
    budget: Budget,
}

/// Arguments of `waymark backfill`.
#[derive(Debug, Args)]
pub struct BackfillArgs {
    /// The workflow file.
    workflow: PathBuf,
    /// The stream to backfill.
    #[arg(long)]
    stream: String,
    /// Start of the range, RFC 3339 (absolute, so the same command resumes it).
    #[arg(long, value_parser = rfc3339)]
    from: Timestamp,
    /// End of the range (exclusive), RFC 3339.
    #[arg(long, value_parser = rfc3339)]
    to: Timestamp,
    /// Abandon the backfill's unfinished run and start it again from its checkpoint.
    #[arg(long)]
    fresh: bool,
    #[command(flatten)]
    budget: Budget,
}

pub(super) fn rfc3339(text: &str) -> Result<Timestamp, String> {
    humantime::parse_rfc3339_weak(text)
        .map(Timestamp::from_system)
        .map_err(|e| format!("`{text}` is not an RFC 3339 time ({e}), e.g. 2026-01-01T00:00:00Z"))
}

/// Stop flag set by SIGINT/SIGTERM: the driver pauses at the next step boundary; a second
/// signal exits at once (safe: that is a crash, which the journal recovers from). The
/// handlers are registered before this returns, so no signal after it kills a step midway.
pub fn stop_on_signal() -> anyhow::Result<Arc<AtomicBool>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    tokio::spawn(async move {
        for _ in 0..2 {
            tokio::select! {
                _ = interrupt.recv() => {}
                _ = terminate.recv() => {}
            }
            if flag.swap(true, Ordering::SeqCst) {
                tracing::warn!(
                    "second stop request: exiting now; the next run resumes from the journal"
                );
                std::process::exit(130);
            }
            tracing::warn!("stop requested: pausing at the next step boundary (again to exit now)");
        }
    });
    Ok(stop)
}

fn settings(workflow: &Workflow, budget: &Budget) -> Settings {
    Settings {
        retry: workflow.retry_policy(),
        max_pages: budget.max_pages,
        max_duration: budget.max_duration,
        jitter_seed: SystemClock.now().0 ^ u64::from(std::process::id()),
    }
}

fn command_line() -> String {
    std::env::args().collect::<Vec<_>>().join(" ")
}

/// Opens the state directory, with the command recorded in its lock. In a build with the
/// `bench-unjournaled` feature (for `benches/e2e.rs` only), `WAYMARK_BENCH_UNJOURNALED=1`
/// journals nothing, to measure what the journal costs.
pub fn open_state(dir: &Path) -> anyhow::Result<StateDir> {
    #[cfg(feature = "bench-unjournaled")]
    if std::env::var("WAYMARK_BENCH_UNJOURNALED").as_deref() == Ok("1") {
        tracing::warn!("WAYMARK_BENCH_UNJOURNALED=1: nothing is journaled (benchmarks only)");
        return Ok(StateDir::open_unjournaled(dir, &command_line())?);
    }
    Ok(StateDir::open(dir, &command_line())?)
}

/// The connection to the workflow's API, shared by its streams (credentials are read
/// here: a missing variable stops the command before any request).
fn api(dir: &StateDir, workflow: &Workflow) -> anyhow::Result<Arc<Api>> {
    Ok(Api::new(workflow, Some(dir.root()), Arc::new(SystemClock))?)
}

/// The destination of `stream`, its checkpoint row named by `scope` (the stream, or a
/// backfill of it).
pub(super) async fn destination(
    dir: &StateDir,
    workflow: &Workflow,
    stream: &StreamSection,
    scope: &str,
) -> anyhow::Result<AnyDestination> {
    let binding = sink::binding(workflow, stream, scope);
    AnyDestination::open(workflow, binding, dir.root())
        .await
        .with_context(|| format!("opening destination {}", AnyDestination::describe(workflow)))
}

/// What every run of one invocation shares.
pub(super) struct Invocation<'a> {
    pub(super) api: Arc<Api>,
    pub(super) settings: Settings,
    pub(super) stop: &'a AtomicBool,
    /// Summaries as JSON.
    json: bool,
    /// Print each run's summary (a command that reports on the run itself turns it off).
    pub(super) summaries: bool,
}

impl<'a> Invocation<'a> {
    pub(super) fn new(
        dir: &StateDir,
        workflow: &Workflow,
        budget: &Budget,
        stop: &'a AtomicBool,
    ) -> anyhow::Result<Self> {
        Ok(Invocation {
            api: api(dir, workflow)?,
            settings: settings(workflow, budget),
            stop,
            json: budget.json,
            summaries: true,
        })
    }
}

/// Drives one opened run to its end (or pause/failure) with `source` (the stream's API, or
/// a repair set) and prints its summary line.
pub(super) async fn drive(
    dir: &mut StateDir,
    run: &Invocation<'_>,
    source: &mut impl Source,
    destination: &mut AnyDestination,
    state: RunState,
) -> anyhow::Result<RunState> {
    let (settings, stop, json) = (&run.settings, run.stop, run.json);
    let summary = run.summaries;
    let (sync, stream) = (state.started.sync.clone(), state.started.stream.clone());
    let run = state.run_id();
    let verb = if state.counts.resumes > 0 || state.last_seq > 1 {
        "resumed"
    } else {
        "started"
    };
    tracing::info!(
        "{sync}/{stream}: run {run} {verb}, window {}, start {}",
        state.window(),
        state
            .fetch_cursor()
            .map_or("at the first page", |c| c.as_str())
    );
    let began = Instant::now();
    let mut progress = Progress::new(&stream, state.counts.records_committed);
    progress.feed = Feed::open(dir.root(), &state);
    let mut observe = |state: &RunState, event: &Event| progress.observe(state, event);
    let (journal, staging) = dir.parts();
    let outcome = driver::drive(
        journal,
        staging,
        source,
        destination,
        &SystemClock,
        settings,
        stop,
        state,
        &mut observe,
    )
    .await;
    drop(progress);
    let state = outcome.with_context(|| format!("run {run} of {sync}/{stream}"))?;
    if summary {
        print_summary(&state, began.elapsed(), json);
    }
    Ok(state)
}

/// What a run shows while it goes: a live line on a terminal (pages, records, records/s,
/// retries, cursor), a log line every few seconds otherwise. Retries are always logged.
struct Progress {
    stream: String,
    bar: Option<indicatif::ProgressBar>,
    began: Instant,
    records_before: u64,
    last_log: Instant,
    last_step: Instant,
    feed: Option<Feed>,
}

/// A live run's feed for `waymark journal --follow` (the journal is locked by this
/// process): each journaled event as a JSON line in `live/<run>.jsonl`, removed when the
/// run stops driving. Best effort: a feed that cannot be written is dropped with a warning.
struct Feed {
    path: PathBuf,
    out: std::io::BufWriter<std::fs::File>,
}

impl Feed {
    fn open(root: &Path, state: &RunState) -> Option<Feed> {
        let dir = root.join("live");
        let path = dir.join(format!("{}.jsonl", state.run_id()));
        let opened = std::fs::create_dir_all(&dir).and_then(|()| std::fs::File::create(&path));
        let mut feed = match opened {
            Ok(file) => Feed {
                path,
                out: std::io::BufWriter::new(file),
            },
            Err(e) => {
                tracing::warn!(
                    "no live feed for `journal --follow`: {}: {e}",
                    path.display()
                );
                return None;
            }
        };
        // How the run got here: its start, or the resume that picked it up.
        let first = match state.last_seq {
            1 => Event::RunStarted(state.started.clone()),
            _ => Event::RunResumed {
                pid: std::process::id(),
                at: state.updated_at,
            },
        };
        feed.write(state.last_seq, state.run_id(), &first);
        Some(feed)
    }

    fn write(&mut self, seq: u64, run: RunId, event: &Event) {
        use std::io::Write;
        let line = serde_json::json!({
            "run": run.to_string(),
            "seq": seq,
            "time": event.at().to_string(),
            "step": event.name(),
            "event": event,
        });
        if writeln!(self.out, "{line}")
            .and_then(|()| self.out.flush())
            .is_err()
        {
            tracing::warn!("the live feed {} stopped", self.path.display());
        }
    }
}

impl Drop for Feed {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

impl Progress {
    fn new(stream: &str, records_before: u64) -> Self {
        use std::io::IsTerminal;
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = indicatif::ProgressBar::new_spinner();
            if let Ok(style) = indicatif::ProgressStyle::with_template("{spinner} {wide_msg}") {
                bar.set_style(style);
            }
            bar.enable_steady_tick(Duration::from_millis(120));
            bar
        });
        Progress {
            stream: stream.to_string(),
            bar,
            began: Instant::now(),
            records_before,
            last_log: Instant::now(),
            last_step: Instant::now(),
            feed: None,
        }
    }

    fn observe(&mut self, state: &RunState, event: &Event) {
        if let Some(feed) = &mut self.feed {
            feed.write(state.last_seq, state.run_id(), event);
        }
        self.step(state, event);
        let c = &state.counts;
        let line = match event {
            Event::RequestRetried {
                attempt,
                wait_ms,
                error,
                rule,
                ..
            } => Some(format!(
                "{}: attempt {attempt} failed, retrying in {wait_ms} ms{}: {error}",
                self.stream,
                rule.as_ref().map_or(String::new(), |r| format!(" ({r})"))
            )),
            Event::WriteRetried {
                page,
                attempt,
                wait_ms,
                error,
                ..
            } => Some(format!(
                "{}: writing page {page} failed (attempt {attempt}), retrying in {wait_ms} ms: \
                 {error}",
                self.stream
            )),
            Event::PageIgnored { page, reason, .. } => Some(format!(
                "{}: page {page} ignored by a response rule: {reason}",
                self.stream
            )),
            _ => None,
        };
        if let Some(line) = line {
            match &self.bar {
                Some(bar) => bar.suspend(|| tracing::warn!("{line}")),
                None => tracing::warn!("{line}"),
            }
        }
        if !matches!(event, Event::CursorCommitted { .. }) {
            return;
        }
        let secs = self.began.elapsed().as_secs_f64().max(0.001);
        let rate = (c.records_committed - self.records_before) as f64 / secs;
        match &self.bar {
            Some(bar) => {
                bar.set_message(format!(
                    "{}: {} pages, {} records, {rate:.0}/s, {} retries, cursor {}",
                    self.stream,
                    c.pages_committed,
                    c.records_committed,
                    c.retries,
                    state.fetch_cursor().map_or("-", |s| s.as_str()),
                ));
            }
            None if self.last_log.elapsed() >= Duration::from_secs(2) => {
                self.last_log = Instant::now();
                tracing::info!(
                    "{}: {} pages, {} records committed ({rate:.0} records/s), {} retries",
                    self.stream,
                    c.pages_committed,
                    c.records_committed,
                    c.retries
                );
            }
            None => {}
        }
    }
}

impl Progress {
    /// One structured event per journaled step (target `waymark_step`: shown by
    /// `--log-format json`, or in text with `--log-level waymark_step=info`).
    fn step(&mut self, state: &RunState, event: &Event) {
        let took = self.last_step.elapsed();
        self.last_step = Instant::now();
        let (page, before, after, records, outcome) = match event {
            Event::PageFetched(p) => (
                Some(p.page),
                p.request_cursor.clone(),
                p.next_cursor.clone(),
                Some(p.records),
                "fetched".to_string(),
            ),
            Event::BatchWritten { page, ack, .. } => (
                Some(*page),
                None,
                None,
                Some(ack.total()),
                format!("{ack}{}", if ack.replayed { " (replayed)" } else { "" }),
            ),
            Event::CursorCommitted { page, .. } => (
                Some(*page),
                None,
                state.committed_cursor.clone(),
                None,
                "committed".into(),
            ),
            Event::RequestRetried {
                page,
                error,
                wait_ms,
                ..
            }
            | Event::WriteRetried {
                page,
                error,
                wait_ms,
                ..
            } => (
                Some(*page),
                None,
                None,
                None,
                format!("retry in {wait_ms} ms: {error}"),
            ),
            Event::PageIgnored { page, reason, .. } => {
                (Some(*page), None, None, None, format!("ignored: {reason}"))
            }
            Event::RunPaused { reason, .. } => {
                (None, None, None, None, format!("paused: {reason}"))
            }
            Event::RunFailed { error, .. } => (None, None, None, None, format!("failed: {error}")),
            other => (None, None, None, None, other.name().to_string()),
        };
        let c = &state.counts;
        tracing::info!(
            target: "waymark_step",
            run = %state.run_id(),
            sync = %state.started.sync,
            stream = %state.started.stream,
            step = event.name(),
            page = page.unwrap_or(0),
            cursor_before = before.as_deref().unwrap_or(""),
            cursor_after = after.as_deref().unwrap_or(""),
            records = records.unwrap_or(0),
            records_committed = c.records_committed,
            pages_committed = c.pages_committed,
            retries = c.retries,
            duration_ms = u64::try_from(took.as_millis()).unwrap_or(u64::MAX),
            outcome = %outcome,
            "step"
        );
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

/// The run's summary: one line, or one JSON object.
fn print_summary(state: &RunState, took: Duration, json: bool) {
    let c = &state.counts;
    let w = &c.written;
    let sync = &state.started.sync;
    if json {
        let reason = match &state.status {
            Status::Failed(e) => Some(e.clone()),
            Status::Paused(reason) => Some(reason.to_string()),
            _ => None,
        };
        out!(
            "{}",
            serde_json::json!({
                "run": state.run_id().to_string(),
                "sync": sync,
                "stream": state.started.stream,
                "status": state.status.name(),
                "reason": reason,
                "records": c.records_committed,
                "pages": c.pages_committed,
                "written": w,
                "dead_lettered": w.dead_lettered,
                "retries": c.retries,
                "ignored_pages": c.ignored,
                "resumes": c.resumes,
                "cursor_start": state.started.start_cursor,
                "cursor_end": state.committed_cursor,
                "window_start": state.window().start.map(|t| t.to_string()),
                "watermark": state.window().end.to_string(),
                "duration_ms": took.as_millis() as u64,
            })
        );
        return;
    }
    let outcome = match &state.status {
        Status::Failed(e) => format!("failed: {e}"),
        Status::Paused(reason) => format!("paused ({reason})"),
        other => other.name().to_string(),
    };
    out!(
        "{sync}/{}: run {} {outcome} — {} records in {} pages this run ({w}), {} retries, {} resumes, window {}, {:.1}s",
        state.started.stream,
        state.run_id(),
        c.records_committed,
        c.pages_committed,
        c.retries,
        c.resumes,
        state.window(),
        took.as_secs_f64()
    );
}

pub(super) fn status_of(states: &[RunState]) -> ExitStatus {
    if states.iter().any(|s| matches!(s.status, Status::Failed(_))) {
        ExitStatus::Failed
    } else if states
        .iter()
        .any(|s| matches!(s.status, Status::Paused(_) | Status::Running))
    {
        ExitStatus::Paused
    } else {
        ExitStatus::Success
    }
}

/// `waymark run <workflow>`.
pub async fn run(state_dir: &Path, args: RunArgs) -> anyhow::Result<ExitStatus> {
    let stop = stop_on_signal()?;
    let workflow = Workflow::load(&args.workflow)?;
    let streams: Vec<&StreamSection> = if args.streams.is_empty() {
        workflow.streams().iter().collect()
    } else {
        args.streams
            .iter()
            .map(|name| workflow.stream(name))
            .collect::<Result<_, _>>()?
    };
    let mut dir = open_state(state_dir)?;
    run_streams(
        &mut dir,
        &workflow,
        &streams,
        args.fresh,
        &args.budget,
        &stop,
    )
    .await
}

/// Runs streams of an already-loaded workflow in an open state directory (also used by
/// `waymark demo`).
pub async fn run_streams(
    dir: &mut StateDir,
    workflow: &Workflow,
    streams: &[&StreamSection],
    fresh: bool,
    budget: &Budget,
    stop: &AtomicBool,
) -> anyhow::Result<ExitStatus> {
    let pruned = dir
        .journal_mut()
        .prune(SystemClock.now(), workflow.keep())?;
    if pruned.runs > 0 {
        tracing::info!(
            "pruned the journals of {} finished runs ({} events)",
            pruned.runs,
            pruned.events
        );
    }
    let cutoff = SystemClock.now().saturating_sub(workflow.audit_keep());
    let forgotten = waymark_connectors::state::audit::Audit::new(dir.root()).prune(cutoff)?;
    if forgotten > 0 {
        tracing::info!(
            "pruned {forgotten} record sightings older than `keep` from the audit index"
        );
    }
    let invocation = Invocation::new(dir, workflow, budget, stop)?;
    let mut finished = Vec::new();
    let mut reconciliation_failed = false;
    for stream in streams {
        if stop.load(Ordering::SeqCst) {
            break;
        }
        let plan = workflow.plan(stream, fresh);
        let states = run_scope(dir, &invocation, workflow, stream, &plan).await?;
        let completed = states.last().is_some_and(|s| s.status == Status::Completed);
        finished.extend(states);
        if completed && super::reconcile::due(dir, workflow, stream)? {
            // A reconciliation that cannot be made is reported, not a reason to stop syncing.
            match due_reconciliation(dir, &invocation, workflow, stream).await {
                Ok(repair) => finished.extend(repair),
                Err(e) => {
                    tracing::error!(
                        "{}/{}: the due reconciliation failed: {e:#}",
                        workflow.name(),
                        stream.name
                    );
                    reconciliation_failed = true;
                }
            }
        }
    }
    Ok(match status_of(&finished) {
        ExitStatus::Success if reconciliation_failed => ExitStatus::Failed,
        status => status,
    })
}

/// The stream's declared reconciliation, run because it is due; its repair run, if any,
/// counts like any other run. Gaps found in report mode are logged (and shown by
/// `waymark status`), not an error of the sync.
async fn due_reconciliation(
    dir: &mut StateDir,
    invocation: &Invocation<'_>,
    workflow: &Workflow,
    stream: &StreamSection,
) -> anyhow::Result<Option<RunState>> {
    let Some(request) = super::reconcile::Request::declared(stream) else {
        return Ok(None);
    };
    let (report, repair) =
        super::reconcile::reconcile(dir, invocation, workflow, stream, &request).await?;
    let Some(report) = report else {
        return Ok(repair);
    };
    let f = &report.figures;
    let line = format!(
        "{}/{}: reconciliation due: {} gaps ({:.2}%): {} missing, {} deleted, {} stale, {} differing",
        workflow.name(),
        stream.name,
        f.gaps(),
        f.gap_rate() * 100.0,
        f.missing,
        f.deleted,
        f.stale,
        f.differing
    );
    match f.gaps() {
        0 => tracing::info!("{line}"),
        _ => tracing::warn!("{line}"),
    }
    Ok(repair)
}

/// Starts or resumes the run of one checkpoint scope, then, while each completed run was
/// a slice cut short by `window.step`, the next slice.
async fn run_scope(
    dir: &mut StateDir,
    invocation: &Invocation<'_>,
    workflow: &Workflow,
    stream: &StreamSection,
    plan: &Plan,
) -> anyhow::Result<Vec<RunState>> {
    let mut destination = destination(dir, workflow, stream, &plan.stream).await?;
    let mut states = Vec::new();
    loop {
        let (journal, staging) = dir.parts();
        let state =
            driver::open(journal, staging, &mut destination, plan, SystemClock.now()).await?;
        let mut source = HttpSource::new(
            workflow,
            stream,
            invocation.api.clone(),
            sink::parents(workflow, stream).await?,
        )?;
        let state = drive(dir, invocation, &mut source, &mut destination, state).await?;
        let next_slice = state.status == Status::Completed
            && driver::sliced(&state.window(), plan)
            && !invocation.stop.load(Ordering::SeqCst);
        states.push(state);
        if !next_slice {
            return Ok(states);
        }
    }
}

/// `waymark backfill <workflow> --stream S --from T1 --to T2`: re-reads `[T1, T2)` under a
/// checkpoint of its own; the stream's incremental checkpoint never moves, and both resume
/// independently.
pub async fn backfill(state_dir: &Path, args: BackfillArgs) -> anyhow::Result<ExitStatus> {
    let stop = stop_on_signal()?;
    let workflow = Workflow::load(&args.workflow)?;
    let stream = workflow.stream(&args.stream)?.clone();
    let (from, to) = (args.from, args.to);
    if from >= to {
        return Err(UsageError(format!("--from {from} is not before --to {to}")).into());
    }
    if stream.window.start_param.is_none() && stream.window.end_param.is_none() {
        return Err(UsageError(format!(
            "stream {} has no window parameters, so the API cannot be asked for a time range",
            stream.name
        ))
        .into());
    }
    let mut dir = open_state(state_dir)?;
    let plan = workflow.backfill_plan(&stream, from, to, args.fresh);
    if let Some(done) = dir.journal().checkpoint(&plan.sync, &plan.stream)? {
        if done.complete && done.window.end >= to {
            out!(
                "{}/{}: already complete (run {}); choose another range to backfill again",
                workflow.name(),
                plan.stream,
                done.run_id
            );
            return Ok(ExitStatus::Success);
        }
    }
    let invocation = Invocation::new(&dir, &workflow, &args.budget, &stop)?;
    let states = run_scope(&mut dir, &invocation, &workflow, &stream, &plan).await?;
    Ok(status_of(&states))
}

/// Finds a run by id, or by a unique prefix or suffix of it.
pub fn find_run(dir: &StateDir, text: &str) -> anyhow::Result<RunId> {
    if let Ok(id) = text.parse::<RunId>() {
        return Ok(id);
    }
    let mut found = Vec::new();
    for head in dir.journal().runs() {
        let id = head?.run_id();
        let full = id.to_string();
        if full.starts_with(text) || full.ends_with(text) {
            found.push(id);
        }
    }
    match found.as_slice() {
        [one] => Ok(*one),
        [] => Err(UsageError(format!(
            "no run id starts or ends with `{text}` (see `waymark runs`)"
        ))
        .into()),
        many => Err(UsageError(format!(
            "`{text}` matches {} runs; give more of the id",
            many.len()
        ))
        .into()),
    }
}

/// `waymark resume <run-id>`.
pub async fn resume(state_dir: &Path, args: ResumeArgs) -> anyhow::Result<ExitStatus> {
    let stop = stop_on_signal()?;
    let mut dir = open_state(state_dir)?;
    let run = find_run(&dir, &args.run_id)?;
    let state = dir.journal().load(run)?;
    let path = PathBuf::from(&state.started.workflow_path);
    let workflow =
        Workflow::load(&path).with_context(|| format!("loading the workflow of run {run}"))?;
    let (name, backfill) = parse_scope(&state.started.stream);
    let stream = workflow.stream(name)?.clone();
    if is_repair_scope(&state.started.stream) {
        let invocation = Invocation::new(&dir, &workflow, &args.budget, &stop)?;
        let state =
            super::reconcile::resume_repair(&mut dir, &invocation, &workflow, &stream, state)
                .await?;
        return Ok(status_of(&[state]));
    }
    let plan = match backfill {
        Some((from, to)) => workflow.backfill_plan(&stream, from, to, false),
        None => workflow.plan(&stream, false),
    };
    let mut destination = destination(&dir, &workflow, &stream, &plan.stream).await?;
    let state = driver::resume(dir.journal_mut(), state, &plan, SystemClock.now())?;
    let invocation = Invocation::new(&dir, &workflow, &args.budget, &stop)?;
    let mut source = HttpSource::new(
        &workflow,
        &stream,
        invocation.api.clone(),
        sink::parents(&workflow, &stream).await?,
    )?;
    let state = drive(&mut dir, &invocation, &mut source, &mut destination, state).await?;
    Ok(status_of(&[state]))
}
