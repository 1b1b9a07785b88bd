//! Syncing a workflow's streams: each stream's checkpoint scope run (slice after slice
//! when `window.step` cuts the window), then its reconciliation when one is due.

use std::sync::atomic::{AtomicBool, Ordering};

use waymark_connectors::config::{is_repair_scope, is_webhook_scope, parse_scope, StreamSection};
use waymark_connectors::Workflow;
use waymark_engine::{driver, Clock, Plan, RunState, StateDir, Status, SystemClock};

use super::invocation::{drive, Invocation};
use super::reconciliation::{due, reconcile, resume_repair, Request};
use super::webhooks::resume_events;
use crate::cli::context::{destination, Budget};
use crate::cli::ExitStatus;

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
    prune(dir, workflow)?;
    let invocation = Invocation::new(dir, workflow, budget, stop)?;
    let mut finished = Vec::new();
    let mut reconciliation_failed = false;
    for stream in streams {
        if stop.load(Ordering::SeqCst) {
            break;
        }
        let ran = run_stream(dir, &invocation, workflow, stream, fresh).await?;
        finished.extend(ran.states);
        reconciliation_failed |= ran.reconciliation_failed;
    }
    Ok(match ExitStatus::of_runs(&finished) {
        ExitStatus::Success if reconciliation_failed => ExitStatus::Failed,
        status => status,
    })
}

/// Forgets what the workflow keeps no longer: journals of finished runs older than `keep`,
/// record sightings older than `audit_keep`.
pub(crate) fn prune(dir: &mut StateDir, workflow: &Workflow) -> anyhow::Result<()> {
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
    Ok(())
}

/// What running one stream did.
pub(crate) struct Ran {
    /// Its runs (slices, then a repair), in order.
    pub(crate) states: Vec<RunState>,
    /// Its due reconciliation could not be made (logged).
    pub(crate) reconciliation_failed: bool,
}

/// One stream: its checkpoint scope's run (slice after slice), then its reconciliation if
/// one is due.
pub(crate) async fn run_stream(
    dir: &mut StateDir,
    invocation: &Invocation<'_>,
    workflow: &Workflow,
    stream: &StreamSection,
    fresh: bool,
) -> anyhow::Result<Ran> {
    let mut plan = workflow.plan(stream, fresh);
    plan.lease = invocation.lease.clone();
    let mut states = run_scope(dir, invocation, workflow, stream, &plan).await?;
    let completed = states.last().is_some_and(|s| s.status == Status::Completed);
    let mut reconciliation_failed = false;
    // A cluster's workers run no reconciliation (its repair runs are not leased).
    if completed && plan.lease.is_none() && due(dir, workflow, stream)? {
        // A reconciliation that cannot be made is reported, not a reason to stop syncing.
        match due_reconciliation(dir, invocation, workflow, stream).await {
            Ok(repair) => states.extend(repair),
            Err(e) => {
                tracing::error!(
                    "{}/{}: the due reconciliation failed: {}",
                    workflow.name(),
                    stream.name,
                    crate::cli::describe(&e)
                );
                reconciliation_failed = true;
            }
        }
    }
    Ok(Ran {
        states,
        reconciliation_failed,
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
    let Some(request) = Request::declared(stream) else {
        return Ok(None);
    };
    let (report, repair) = reconcile(dir, invocation, workflow, stream, &request).await?;
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
pub(crate) async fn run_scope(
    dir: &mut StateDir,
    invocation: &Invocation<'_>,
    workflow: &Workflow,
    stream: &StreamSection,
    plan: &Plan,
) -> anyhow::Result<Vec<RunState>> {
    let mut destination = destination(
        dir,
        workflow,
        stream,
        &plan.stream,
        invocation.clock.clone(),
    )
    .await?;
    let mut states = Vec::new();
    loop {
        let root = dir.root().display().to_string();
        let (journal, staging) = dir.parts();
        let state = driver::open(
            journal,
            staging,
            &mut destination,
            plan,
            invocation.clock.now(),
        )
        .await
        .map_err(|e| match e {
            // The usual cause: this is not the state directory the stream's runs used.
            driver::Error::CheckpointLost { .. } => {
                anyhow::Error::new(e).context(format!("state directory {root}"))
            }
            e => e.into(),
        })?;
        let mut source = invocation.source(workflow, stream).await?;
        let state = drive(dir, invocation, &mut source, &mut destination, state).await?;
        keep_etags(&mut source, &state, stream);
        let next_slice = state.status == Status::Completed
            && driver::sliced(&state.window(), plan)
            && !invocation.stop.load(Ordering::SeqCst);
        states.push(state);
        if !next_slice {
            return Ok(states);
        }
    }
}

/// Resumes `state`, an unfinished run of `workflow` in any checkpoint scope (a stream's
/// own, a backfill's, a repair's, a webhook's).
pub(crate) async fn resume_run(
    dir: &mut StateDir,
    invocation: &Invocation<'_>,
    workflow: &Workflow,
    state: RunState,
) -> anyhow::Result<RunState> {
    let (name, backfill) = parse_scope(&state.started.stream);
    let stream = workflow.stream(name)?.clone();
    if is_repair_scope(&state.started.stream) {
        return resume_repair(dir, invocation, workflow, &stream, state).await;
    }
    if is_webhook_scope(&state.started.stream) {
        return resume_events(dir, invocation, workflow, &stream, state).await;
    }
    let plan = match backfill {
        Some((from, to)) => workflow.backfill_plan(&stream, from, to, false),
        None => workflow.plan(&stream, false),
    };
    let mut destination = destination(
        dir,
        workflow,
        &stream,
        &plan.stream,
        invocation.clock.clone(),
    )
    .await?;
    let state = driver::resume(dir.journal_mut(), state, &plan, invocation.clock.now())?;
    let mut source = invocation.source(workflow, &stream).await?;
    let state = drive(dir, invocation, &mut source, &mut destination, state).await?;
    keep_etags(&mut source, &state, &stream);
    Ok(state)
}

/// Keeps a completed run's ETags for the stream's next conditional requests (a backfill's
/// requests are not the stream's: its ETags are not kept). Failing to keep them costs only
/// full answers next time.
fn keep_etags(
    source: &mut waymark_connectors::HttpSource,
    state: &RunState,
    stream: &StreamSection,
) {
    if state.status == Status::Completed && state.started.stream == stream.name {
        if let Err(e) = source.keep_etags() {
            tracing::warn!("{}: the run's ETags were not kept: {e}", stream.name);
        }
    }
}
