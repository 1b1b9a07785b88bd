//! A stream's reconciliation: compare source and destination, record the figures in the
//! journal, and repair the gaps through a journaled run of their own (`<stream>@repair`).

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;

use waymark_connectors::config::{ReconcileMode, StreamSection};
use waymark_connectors::reconcile::{self, Comparison, RepairSet, Report, Scope};
use waymark_connectors::{sink, AnyDestination, Binding, Workflow};
use waymark_engine::{driver, Clock, Event, RunState, StateDir, Status, SystemClock, Window};

use super::invocation::{drive, Invocation};
use crate::cli::context::marking_destination;
use crate::cli::UsageError;

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
    if request.window.is_some() && !stream.sends_window() {
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
    let mut source = invocation.source(workflow, stream).await?.unobserved();
    let window = Window {
        start: scope.start,
        end: now,
    };
    let pages = reconcile::read_source(
        &mut source,
        window,
        None,
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
    scan_destination(dir, workflow, binding, &mut comparison).await?;
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

/// Adds the destination's rows to the comparison, `CHUNK` at a time.
async fn scan_destination(
    dir: &StateDir,
    workflow: &Workflow,
    binding: Binding,
    comparison: &mut Comparison,
) -> anyhow::Result<()> {
    let mut destination =
        AnyDestination::open(workflow, binding, dir.root(), Arc::new(SystemClock))
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
    Ok(())
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
    let mut destination = marking_destination(dir, workflow, stream, &plan.stream).await?;
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
    let mut destination = marking_destination(dir, workflow, stream, &plan.stream).await?;
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
