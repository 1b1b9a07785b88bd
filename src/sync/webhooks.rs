//! Applying a stream's accepted webhook events: a journaled run of the stream's webhook
//! scope (`<stream>@webhook`) whose window is a span of acceptance times ending at the
//! inbox's horizon, written through the stream's destination (newer versions win, deletion
//! events delete), its checkpoint apart from the polling's. The events leave the inbox once
//! the run completed.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::{Duration, Instant};

use waymark_connectors::config::{is_webhook_scope, StreamSection};
use waymark_connectors::webhook::apply::EventSource;
use waymark_connectors::webhook::inbox::Inbox;
use waymark_connectors::{AnyDestination, Workflow};
use waymark_engine::{driver, Clock, RunState, StateDir, Status, SystemClock};

use super::invocation::{drive, Invocation};
use crate::cli::context::marking_destination;

/// The inbox open in this process (`serve` holds it for as long as it runs), by path.
static OPEN: Mutex<Option<(PathBuf, Weak<Inbox>)>> = Mutex::new(None);

/// The inbox of a state directory (`<state>/webhooks/`): the one this process has open,
/// else opened (sled allows one holder).
pub(crate) fn open_inbox(dir: &StateDir) -> anyhow::Result<Arc<Inbox>> {
    let path = dir.root().join("webhooks");
    let mut open = OPEN.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(inbox) = open
        .as_ref()
        .filter(|(at, _)| *at == path)
        .and_then(|(_, inbox)| inbox.upgrade())
    {
        return Ok(inbox);
    }
    let inbox = Inbox::open(&path)?;
    *open = Some((path, Arc::downgrade(&inbox)));
    Ok(inbox)
}

/// The inbox, if this state directory has one (never creates it).
pub(crate) fn existing_inbox(dir: &StateDir) -> anyhow::Result<Option<Arc<Inbox>>> {
    match dir.root().join("webhooks").join("db").exists() {
        true => open_inbox(dir).map(Some),
        false => Ok(None),
    }
}

/// Applies the events of `stream` waiting in `inbox`: finishes an unfinished webhook run
/// first, else starts one over the events accepted since the last one.
pub(crate) async fn apply_events(
    dir: &mut StateDir,
    invocation: &Invocation<'_>,
    workflow: &Workflow,
    stream: &StreamSection,
    inbox: &Arc<Inbox>,
) -> anyhow::Result<RunState> {
    let plan = workflow.webhook_plan(stream);
    let mut destination = marking_destination(dir, workflow, stream, &plan.stream).await?;
    let (journal, staging) = dir.parts();
    // A new run's window ends at the horizon: every event up to it is readable, none is
    // stamped at or before it later.
    let state = driver::open(journal, staging, &mut destination, &plan, inbox.horizon()).await?;
    drive_events(
        dir,
        invocation,
        workflow,
        stream,
        &mut destination,
        state,
        inbox,
    )
    .await
}

/// Resumes an unfinished webhook run by id (`waymark resume`, or `serve` starting).
pub(crate) async fn resume_events(
    dir: &mut StateDir,
    invocation: &Invocation<'_>,
    workflow: &Workflow,
    stream: &StreamSection,
    state: RunState,
) -> anyhow::Result<RunState> {
    let inbox = match &invocation.inbox {
        Some(inbox) => inbox.clone(),
        None => open_inbox(dir)?,
    };
    let plan = workflow.webhook_plan(stream);
    let mut destination = marking_destination(dir, workflow, stream, &plan.stream).await?;
    let state = driver::resume(dir.journal_mut(), state, &plan, SystemClock.now())?;
    drive_events(
        dir,
        invocation,
        workflow,
        stream,
        &mut destination,
        state,
        &inbox,
    )
    .await
}

async fn drive_events(
    dir: &mut StateDir,
    invocation: &Invocation<'_>,
    workflow: &Workflow,
    stream: &StreamSection,
    destination: &mut AnyDestination,
    state: RunState,
    inbox: &Arc<Inbox>,
) -> anyhow::Result<RunState> {
    let end = state.started.window.end;
    inbox.stamp_after(end);
    let mut source = EventSource::new(inbox.clone(), workflow, stream, invocation.api.clone())?;
    let state = drive(dir, invocation, &mut source, destination, state).await?;
    if state.status == Status::Completed {
        let key = (workflow.name(), stream.name.as_str());
        inbox.applied(key, end)?;
        if let Some(section) = &stream.webhook {
            inbox.forget(SystemClock.now(), section.dedupe_keep.0)?;
        }
        prune_runs(dir)?;
    }
    Ok(state)
}

/// How long the journals of a webhook scope's finished runs are kept: with events coming
/// all the time it has a run a second, which `keep` (days) would pile up. What they wrote
/// stays in the destination and in the audit index (`waymark trace`) for `keep`.
pub(crate) const RUNS_KEEP: Duration = Duration::from_secs(3600);

/// When this process last pruned webhook runs: at most every minute.
static PRUNED: Mutex<Option<Instant>> = Mutex::new(None);

/// Prunes the journals of every webhook scope's runs finished more than [`RUNS_KEEP`] ago.
fn prune_runs(dir: &mut StateDir) -> anyhow::Result<()> {
    {
        let mut pruned = PRUNED.lock().unwrap_or_else(PoisonError::into_inner);
        if pruned.is_some_and(|at| at.elapsed() < Duration::from_secs(60)) {
            return Ok(());
        }
        *pruned = Some(Instant::now());
    }
    let cutoff = SystemClock.now().saturating_sub(RUNS_KEEP);
    dir.journal_mut()
        .prune_where(|head| is_webhook_scope(&head.started.stream) && head.updated_at <= cutoff)?;
    Ok(())
}
