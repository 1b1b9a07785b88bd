//! Starting or resuming a stream's run: the window (overlap, slices, a backfill's end),
//! where it starts from, the workflow digest check.

use super::error::Error;
use super::plan::Plan;
use crate::checkpoint::Checkpoint;
use crate::destination::Destination;
use crate::durability::Durability;
use crate::event::{Event, RunStarted, StartFrom};
use crate::journal::{self, Backend, CheckpointChange, Journal};
use crate::run_id::RunId;
use crate::staging::Staging;
use crate::state::RunState;
use crate::time::{millis, Timestamp};
use crate::window::{Start, Window};

/// Starts a new run of the plan's stream, or resumes its unfinished run.
pub async fn open<B: Backend, D: Destination>(
    journal: &mut Journal<B>,
    staging: &Staging,
    destination: &mut D,
    plan: &Plan,
    now: Timestamp,
) -> Result<RunState, Error> {
    journal.set_durability(plan.durability);
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
            // Under a lease, only a run of the same lease continues: after another worker
            // held the partition, the destination's checkpoint is where it stands.
            Ok(state)
                if plan.lease.is_some()
                    && state.started.start_from.lease() != plan.lease.as_ref() =>
            {
                let reason = match &plan.lease {
                    Some(lease) => format!(
                        "the partition's lease moved (now token {} of worker {}); the run \
                         starts again from the destination's checkpoint",
                        lease.token, lease.holder
                    ),
                    None => String::new(),
                };
                journal.append(state, &Event::RunAbandoned { reason, at: now })?;
                staging.remove_run(run)?;
            }
            Ok(state) if !plan.fresh => {
                let ours = state
                    .checkpoint()
                    .or_else(|| state.started.start_from.checkpoint().cloned());
                match destination_behind(journal, destination, ours.as_ref(), Some(run), plan)
                    .await?
                {
                    None => return resume(journal, state, plan, now),
                    Some(behind) => {
                        let reason = behind.said(plan);
                        tracing::warn!("{reason}");
                        journal.append(state, &Event::RunAbandoned { reason, at: now })?;
                        staging.remove_run(run)?;
                        return start(journal, behind.start_from(), plan, now);
                    }
                }
            }
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
    // A process killed between a run's last journaled step and the removal of its staged
    // pages left them behind; a finished run never reads them again.
    for run in staging.runs() {
        if journal
            .load(run)
            .is_ok_and(|state| state.status.is_finished())
        {
            staging.remove_run(run)?;
        }
    }
    if let Some(lease) = &plan.lease {
        // The partition's checkpoint is the destination's, claimed for this token first.
        destination.fence(lease).await?;
        let checkpoint = destination.checkpoint().await?;
        let start_from = StartFrom::Leased {
            lease: Box::new(lease.clone()),
            checkpoint,
        };
        return start(journal, start_from, plan, now);
    }
    // The journal's checkpoint. If it is missing (a lost or reset journal) or damaged while
    // the destination holds one, or it was damaged, the operator chooses how to continue;
    // only a stream with no checkpoint anywhere, or one reset on purpose, starts afresh.
    let (ours, damaged) = match journal.checkpoint(&plan.sync, &plan.stream) {
        Ok(ours) => (ours, None),
        Err(e @ journal::Error::Corrupt { .. }) => (None, Some(e)),
        Err(e) => return Err(e.into()),
    };
    if let Some(behind) =
        destination_behind(journal, destination, ours.as_ref(), None, plan).await?
    {
        tracing::warn!("{}", behind.said(plan));
        return start(journal, behind.start_from(), plan, now);
    }
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
                                      destination holds one: was the journal lost or reset, or \
                                      did the stream's runs use another state directory?"
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
    start(journal, start_from, plan, now)
}

/// The destination's checkpoint when it is behind the journal's `ours`.
struct Behind {
    ours: Checkpoint,
    theirs: Option<Checkpoint>,
}

impl Behind {
    fn start_from(self) -> StartFrom {
        match self.theirs {
            Some(theirs) => StartFrom::Destination(theirs),
            None => StartFrom::Beginning,
        }
    }

    fn said(&self, plan: &Plan) -> String {
        let theirs = match &self.theirs {
            Some(c) => format!("at page {} of run {}", c.page, c.run_id),
            None => "at no checkpoint".into(),
        };
        format!(
            "{}/{}: the destination is behind the journal (journal at page {} of run {}, \
             destination {theirs}): with durability = \"process\" a power cut can take a \
             destination's last commits back; continuing from the destination's checkpoint",
            plan.sync, plan.stream, self.ours.page, self.ours.run_id
        )
    }
}

/// Under `process` durability the journal is never trusted past the destination's own
/// checkpoint: after a power cut the destination may have lost commits the journal kept.
/// `Some` when it is behind `ours` (the journal's, committed by one of its runs; `active`:
/// the stream's unfinished run): an earlier page of the same run, another run's (one
/// committed before the journal's), or none. The destination holding the unfinished run's
/// own commits is ahead, never behind (the journal lost them; their replay is recognised).
async fn destination_behind<B: Backend, D: Destination>(
    journal: &Journal<B>,
    destination: &mut D,
    ours: Option<&Checkpoint>,
    active: Option<RunId>,
    plan: &Plan,
) -> Result<Option<Behind>, Error> {
    let (Durability::Process, None, Some(ours)) = (plan.durability, &plan.lease, ours) else {
        return Ok(None);
    };
    // A checkpoint an operator set (`waymark checkpoint set`) is no run's: nothing to
    // compare it with. One of a run the journal no longer holds (pruned by `keep`) is.
    if journal.load(ours.run_id).is_err() && set_by_operator(journal, ours, plan)? {
        return Ok(None);
    }
    let theirs = destination.checkpoint().await?;
    let behind = match &theirs {
        None => true,
        Some(t) if t.run_id == ours.run_id => t.page < ours.page,
        Some(t) => Some(t.run_id) != active,
    };
    Ok(behind.then(|| Behind {
        ours: ours.clone(),
        theirs,
    }))
}

/// Whether the stream's latest checkpoint change set `ours` by hand (not a run's commit).
fn set_by_operator<B: Backend>(
    journal: &Journal<B>,
    ours: &Checkpoint,
    plan: &Plan,
) -> Result<bool, Error> {
    let history = journal.checkpoint_history(&plan.sync, &plan.stream)?;
    Ok(history.last().is_some_and(|(_, change)| {
        change.new.as_ref().is_some_and(|c| c.run_id == ours.run_id)
            && change.who != CheckpointChange::run_author(ours.run_id)
    }))
}

/// Journals the start of a new run after `start_from`.
fn start<B: Backend>(
    journal: &mut Journal<B>,
    start_from: StartFrom,
    plan: &Plan,
    now: Timestamp,
) -> Result<RunState, Error> {
    let (window, start_cursor) = window_after(start_from.checkpoint(), plan, now);
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

/// The window and start cursor of a new run after `previous`. Pure.
///
/// After a completed window the new one starts `overlap` before the old watermark (with
/// `Start::MaxSeen`, before the greatest cursor value seen if that is earlier; never for a
/// slice, so slices tile the range), from the source's first page. After an unfinished one
/// (abandoned, or a lost journal) it keeps the old start and continues from the committed
/// cursor, up to a new watermark.
pub fn window_after(
    previous: Option<&Checkpoint>,
    plan: &Plan,
    now: Timestamp,
) -> (Window, Option<String>) {
    let limit = now.saturating_sub(plan.lag);
    let limit = plan.until.map_or(limit, |until| until.min(limit));
    let (start, cursor, end) = match previous {
        None => (plan.start, None, None),
        Some(c) if c.complete => {
            let from = match (plan.window_start, c.max_seen) {
                (Start::MaxSeen, Some(seen)) if !sliced(&c.window, plan) => seen.min(c.window.end),
                _ => c.window.end,
            };
            (Some(from.saturating_sub(plan.overlap)), None, None)
        }
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
