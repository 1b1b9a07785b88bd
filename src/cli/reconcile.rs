//! `waymark reconcile`: compares a stream's source and destination — counts per time
//! bucket, key sets, versions, optionally field values — and reports the gaps, or repairs
//! them through a journaled run of their own (`<stream>@repair`).

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use serde_json::json;
use waymark_connectors::config::{ReconcileMode, StreamSection};
use waymark_connectors::reconcile::{self, Comparison, Gap, RepairSet, Report, Scope};
use waymark_connectors::{sink, AnyDestination, HttpSource, Workflow};
use waymark_engine::{driver, Clock, Event, RunState, StateDir, Status, SystemClock, Window};

use super::run::{drive, open_state, stop_on_signal, Budget, Invocation};
use super::{ExitStatus, UsageError};

/// Arguments of `waymark reconcile`.
#[derive(Debug, Args)]
pub struct ReconcileArgs {
    /// The workflow file.
    workflow: PathBuf,
    /// Only these streams (repeatable; default: every stream that is not a deletions feed).
    #[arg(long = "stream", value_name = "NAME")]
    streams: Vec<String>,
    /// Compare the records of this last span of source time before the watermark (e.g.
    /// `7d`; default: the stream's `reconcile.window`, else everything).
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration, conflicts_with = "full")]
    window: Option<Duration>,
    /// Compare every record.
    #[arg(long)]
    full: bool,
    /// Also compare the field values of N records (chosen by key hash).
    #[arg(long, value_name = "N")]
    sample: Option<u64>,
    /// The fields compared (comma-separated dotted paths; without --sample: of every
    /// record). Default with --sample: the whole record.
    #[arg(long, value_delimiter = ',', value_name = "PATHS")]
    fields: Vec<String>,
    /// Change nothing; exit 6 when there are gaps (the default).
    #[arg(long, conflicts_with = "repair")]
    report: bool,
    /// Re-write missing, stale and differing records and apply deletions (by the
    /// destination's `delete_mode`) in a journaled repair run.
    #[arg(long)]
    repair: bool,
    /// Keys listed per kind of gap.
    #[arg(long, default_value_t = 10, value_name = "N")]
    show: usize,
    #[command(flatten)]
    budget: Budget,
}

/// What one reconciliation of one stream is asked to do.
#[derive(Clone, Debug, Default)]
pub struct Request {
    /// The last span of source time (`None`: everything).
    pub window: Option<Duration>,
    /// Field values of this many records.
    pub sample: Option<u64>,
    /// The fields compared.
    pub fields: Option<Vec<String>>,
    /// Repair the gaps.
    pub repair: bool,
    /// Keys listed per gap class.
    pub show: usize,
}

impl Request {
    /// The request a stream's `reconcile` section declares.
    pub fn declared(stream: &StreamSection) -> Option<Request> {
        stream.reconcile.as_ref().map(|r| Request {
            window: r.window.map(|w| w.0),
            sample: r.sample,
            fields: r.fields.clone(),
            repair: r.mode == ReconcileMode::Repair,
            show: 10,
        })
    }
}

/// Runs `waymark reconcile`.
pub async fn run(state_dir: &Path, args: ReconcileArgs) -> anyhow::Result<ExitStatus> {
    let stop = stop_on_signal()?;
    let workflow = Workflow::load(&args.workflow)?;
    let streams: Vec<&StreamSection> = if args.streams.is_empty() {
        workflow
            .streams()
            .iter()
            .filter(|s| s.deletes.is_none())
            .collect()
    } else {
        args.streams
            .iter()
            .map(|name| workflow.stream(name))
            .collect::<Result<_, _>>()?
    };
    for s in &streams {
        if s.deletes.is_some() {
            return Err(UsageError(format!(
                "{} is a deletions feed; reconcile the stream it deletes from",
                s.name
            ))
            .into());
        }
    }
    let mut dir = open_state(state_dir)?;
    let mut invocation = Invocation::new(&dir, &workflow, &args.budget, &stop)?;
    // The report carries the repair run's outcome: one JSON object per stream.
    invocation.summaries = !args.budget.json;
    let mut status = ExitStatus::Success;
    for stream in streams {
        let declared = Request::declared(stream).unwrap_or_default();
        let request = Request {
            window: match args.full {
                true => None,
                false => args.window.or(declared.window),
            },
            sample: args.sample.or(declared.sample),
            fields: match args.fields.is_empty() {
                true => declared.fields,
                false => Some(args.fields.clone()),
            },
            repair: args.repair,
            show: args.show,
        };
        let (report, repair) =
            reconcile(&mut dir, &invocation, &workflow, stream, &request).await?;
        let names = (
            args.workflow.as_path(),
            workflow.name(),
            stream.name.as_str(),
        );
        match &report {
            Some(report) => print(names, report, repair.as_ref(), args.budget.json),
            None => print_unfinished(names.1, names.2, repair.as_ref(), args.budget.json),
        }
        let this = match (&repair, &report) {
            (Some(state), _) => super::run::status_of(std::slice::from_ref(state)),
            (None, Some(r)) if r.figures.gaps() > 0 && !request.repair => ExitStatus::Drift,
            (None, _) => ExitStatus::Success,
        };
        if this != ExitStatus::Success && status == ExitStatus::Success {
            status = this;
        }
    }
    Ok(status)
}

/// The repair set of a stream in the state directory.
fn repair_set(root: &Path, sync: &str, stream: &str) -> RepairSet {
    RepairSet::new(
        root.join("reconcile")
            .join(sync)
            .join(format!("{stream}.repair")),
    )
}

/// Compares one stream's source and destination, records the figures in the journal and,
/// when asked, repairs: first any unfinished repair run of the stream, then the new gaps.
/// No report when an unfinished repair run did not complete this time either.
pub async fn reconcile(
    dir: &mut StateDir,
    invocation: &Invocation<'_>,
    workflow: &Workflow,
    stream: &StreamSection,
    request: &Request,
) -> anyhow::Result<(Option<Report>, Option<RunState>)> {
    if request.window.is_some()
        && stream.window.start_param.is_none()
        && stream.window.end_param.is_none()
    {
        return Err(UsageError(format!(
            "stream {} has no window parameters, so the API cannot be asked for a time range; \
             use --full",
            stream.name
        ))
        .into());
    }
    let set = repair_set(dir.root(), workflow.name(), &stream.name);
    if request.repair {
        if let Some(state) = unfinished_repair(dir, invocation, workflow, stream, &set).await? {
            if state.status != Status::Completed {
                return Ok((None, Some(state)));
            }
        }
    }
    let now = SystemClock.now();
    let end = now.saturating_sub(stream.window.lag.0);
    let scope = Scope {
        start: request.window.map(|w| end.saturating_sub(w)),
        end,
        sample: request.sample,
        fields: request.fields.clone(),
        show: request.show,
    };
    let binding = sink::binding(workflow, stream, &stream.name);
    let scratch = dir
        .root()
        .join("reconcile")
        .join(workflow.name())
        .join(format!("{}.scratch", stream.name));
    let mut comparison = Comparison::create(&scratch, binding.clone(), scope.clone())?;
    // The source up to now: a record updated since the watermark is still found (and not
    // taken for a deletion); only those at or before the watermark must be synced.
    let mut source = HttpSource::new(
        workflow,
        stream,
        invocation.api.clone(),
        sink::parents(workflow, stream).await?,
    )?;
    let window = Window {
        start: scope.start,
        end: now,
    };
    let pages = reconcile::read_source(
        &mut source,
        window,
        &invocation.settings.retry,
        &SystemClock,
        |records| match invocation.stop.load(Ordering::SeqCst) {
            true => Err(reconcile::Error::Interrupted),
            false => comparison.add_source(records),
        },
    )
    .await
    .with_context(|| format!("reconciling {}/{}", workflow.name(), stream.name))?;
    drop(source);
    {
        let mut destination = AnyDestination::open(workflow, binding, dir.root())
            .await
            .with_context(|| {
                format!("opening destination {}", AnyDestination::describe(workflow))
            })?;
        let mut chunk = Vec::with_capacity(CHUNK);
        let mut spill = None;
        let scanned = destination
            .scan(&mut |key, stored| {
                chunk.push((key, stored));
                if chunk.len() == CHUNK {
                    if let Err(e) = comparison.add_destination(&chunk) {
                        let message = e.to_string();
                        spill = Some(e);
                        return Err(waymark_engine::destination::Error::permanent(message));
                    }
                    chunk.clear();
                }
                Ok(())
            })
            .await;
        if let Some(e) = spill {
            return Err(e.into());
        }
        scanned?;
        comparison.add_destination(&chunk)?;
    }
    tracing::info!(
        "{}/{}: read {pages} source pages; comparing",
        workflow.name(),
        stream.name
    );
    let mut report = comparison.finish(request.repair.then_some(&set))?;
    report.figures.at = now;
    report.figures.max_gap_rate = stream
        .reconcile
        .as_ref()
        .map_or(DEFAULT_MAX_GAP_RATE, |r| r.max_gap_rate);
    let mut repair = None;
    if request.repair {
        match report.to_repair {
            0 => set.remove()?,
            _ => {
                let state = repair_run(dir, invocation, workflow, stream, &set).await?;
                report.figures.repair_run = Some(state.run_id());
                repair = Some(state);
            }
        }
    }
    dir.journal_mut()
        .record_reconciliation(workflow.name(), &stream.name, &report.figures)?;
    Ok((Some(report), repair))
}

/// The gap rate `waymark status` tolerates when the stream declares none.
const DEFAULT_MAX_GAP_RATE: f64 = 0.01;

/// Destination rows spilled to the scratch file at a time.
const CHUNK: usize = 2_000;

/// Finishes a repair run that an earlier `reconcile --repair` left unfinished.
async fn unfinished_repair(
    dir: &mut StateDir,
    invocation: &Invocation<'_>,
    workflow: &Workflow,
    stream: &StreamSection,
    set: &RepairSet,
) -> anyhow::Result<Option<RunState>> {
    let plan = workflow.repair_plan(stream);
    let Some(run) = dir.journal().active_run(&plan.sync, &plan.stream)? else {
        return Ok(None);
    };
    if !set.exists() {
        // Nothing left to write it from: abandoned (journaled); a new comparison follows.
        let state = dir.journal().load(run)?;
        let reason = "its repair set is gone".to_string();
        let at = SystemClock.now();
        let (journal, staging) = dir.parts();
        journal.append(state, &Event::RunAbandoned { reason, at })?;
        staging.remove_run(run)?;
        return Ok(None);
    }
    tracing::info!(
        "{}/{}: finishing the unfinished repair first",
        plan.sync,
        plan.stream
    );
    repair_run(dir, invocation, workflow, stream, set)
        .await
        .map(Some)
}

/// Starts (or resumes) the stream's repair run over its repair set and drives it; the set
/// is removed once the run completed.
pub async fn repair_run(
    dir: &mut StateDir,
    invocation: &Invocation<'_>,
    workflow: &Workflow,
    stream: &StreamSection,
    set: &RepairSet,
) -> anyhow::Result<RunState> {
    let plan = workflow.repair_plan(stream);
    let mut binding = sink::binding(workflow, stream, &plan.stream);
    binding.repair = true;
    let mut destination = AnyDestination::open(workflow, binding, dir.root())
        .await
        .with_context(|| format!("opening destination {}", AnyDestination::describe(workflow)))?;
    let (journal, staging) = dir.parts();
    let state = driver::open(journal, staging, &mut destination, &plan, SystemClock.now()).await?;
    drive_repair(dir, invocation, stream, &mut destination, state, set).await
}

/// Drives an opened repair run (also `waymark resume` of one).
pub async fn drive_repair(
    dir: &mut StateDir,
    invocation: &Invocation<'_>,
    stream: &StreamSection,
    destination: &mut AnyDestination,
    state: RunState,
    set: &RepairSet,
) -> anyhow::Result<RunState> {
    let mut source = set.source(stream.page_size)?;
    let state = drive(dir, invocation, &mut source, destination, state).await?;
    if state.status == Status::Completed {
        set.remove()?;
    }
    Ok(state)
}

/// Resumes a repair run by id (`waymark resume`).
pub async fn resume_repair(
    dir: &mut StateDir,
    invocation: &Invocation<'_>,
    workflow: &Workflow,
    stream: &StreamSection,
    state: RunState,
) -> anyhow::Result<RunState> {
    let plan = workflow.repair_plan(stream);
    let set = repair_set(dir.root(), workflow.name(), &stream.name);
    let mut binding = sink::binding(workflow, stream, &plan.stream);
    binding.repair = true;
    let mut destination = AnyDestination::open(workflow, binding, dir.root()).await?;
    let state = driver::resume(dir.journal_mut(), state, &plan, SystemClock.now())?;
    drive_repair(dir, invocation, stream, &mut destination, state, &set).await
}

/// Whether the stream's declared reconciliation is due at the time of its last one.
pub fn due(dir: &StateDir, workflow: &Workflow, stream: &StreamSection) -> anyhow::Result<bool> {
    let Some(section) = &stream.reconcile else {
        return Ok(false);
    };
    let last = dir
        .journal()
        .reconciliations(workflow.name(), &stream.name)?
        .pop()
        .map(|(_, r)| r.at);
    Ok(last.is_none_or(|at| SystemClock.now().since(at) >= section.every.0))
}

/// An unfinished repair run that was resumed and did not complete (no new comparison).
fn print_unfinished(sync: &str, stream: &str, repair: Option<&RunState>, as_json: bool) {
    let Some(state) = repair else { return };
    match as_json {
        true => out!(
            "{}",
            json!({
                "sync": sync,
                "stream": stream,
                "repair_run": state.run_id().to_string(),
                "repair_status": state.status.name(),
                "repair_written": state.counts.written,
            })
        ),
        false => out!(
            "{sync}/{stream}: the unfinished repair run {} is {}; no new comparison until it \
             completes",
            state.run_id(),
            state.status.name()
        ),
    }
}

fn print(
    (workflow, sync, stream): (&Path, &str, &str),
    report: &Report,
    repair: Option<&RunState>,
    as_json: bool,
) {
    let f = &report.figures;
    let range = Window {
        start: f.start,
        end: f.end,
    };
    if as_json {
        let keys: serde_json::Map<String, serde_json::Value> = report
            .keys
            .iter()
            .map(|(gap, keys)| (gap.name().to_string(), json!(keys)))
            .collect();
        out!(
            "{}",
            json!({
                "sync": sync,
                "stream": stream,
                "window_start": f.start.map(|t| t.to_string()),
                "watermark": f.end.to_string(),
                "source": f.source,
                "destination": f.destination,
                "missing": f.missing,
                "deleted": f.deleted,
                "stale": f.stale,
                "differing": f.differing,
                "newer": f.newer,
                "compared": f.compared,
                "gaps": f.gaps(),
                "gap_rate": f.gap_rate(),
                "keys": keys,
                "buckets": report.buckets.iter().map(|(t, s, d)| json!({
                    "start": t.to_string(), "source": s, "destination": d
                })).collect::<Vec<_>>(),
                "repaired": report.to_repair,
                "repair_run": repair.map(|r| r.run_id().to_string()),
                "repair_status": repair.map(|r| r.status.name()),
                "repair_written": repair.map(|r| r.counts.written),
            })
        );
        return;
    }
    out!(
        "{sync}/{stream}: reconciled {range} — source {}, destination {}: {} gaps ({:.2}%)",
        f.source,
        f.destination,
        f.gaps(),
        f.gap_rate() * 100.0
    );
    for gap in Gap::ALL {
        let count = match gap {
            Gap::Missing => f.missing,
            Gap::Deleted => f.deleted,
            Gap::Stale => f.stale,
            Gap::Differing => f.differing,
            Gap::Newer => f.newer,
        };
        let keys = report
            .keys
            .get(&gap)
            .map(|k| k.join(", "))
            .unwrap_or_default();
        let more = match count > report.keys.get(&gap).map_or(0, |k| k.len() as u64) {
            true => ", …",
            false => "",
        };
        let line = format!("  {:<10} {count:>8}  {keys}{more}", gap.name());
        out!("{}", line.trim_end());
    }
    if f.compared > 0 {
        out!("  field values of {} records compared", f.compared);
    }
    let width = humantime::format_duration(report.bucket);
    for (start, s, d) in report.buckets.iter().take(10) {
        out!("  bucket {start} (+{width}): source {s}, destination {d}");
    }
    if report.buckets.len() > 10 {
        out!("  … {} more buckets differ", report.buckets.len() - 10);
    }
    match repair {
        Some(state) => out!(
            "  repair run {}: {} ({} records written: {})",
            state.run_id(),
            state.status.name(),
            state.counts.records_committed,
            state.counts.written
        ),
        None if f.gaps() > 0 => out!(
            "  nothing changed; `waymark reconcile {} --stream {stream} --repair` fixes them",
            workflow.display()
        ),
        None => {}
    }
}
