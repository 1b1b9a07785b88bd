//! `waymark checkpoint`: show a stream's checkpoint and its history; set it to a time, reset
//! it to the beginning, adopt the destination's own, or restore an earlier value. Every
//! change needs a reason and is journaled with the previous value, who and why.

use std::path::PathBuf;

use clap::{Args, Subcommand};
use serde_json::json;
use waymark_connectors::http::excerpt::printable;
use waymark_connectors::Workflow;
use waymark_engine::journal::CheckpointChange;
use waymark_engine::{
    Checkpoint, Clock, Destination, Event, RunId, StateDir, SystemClock, Timestamp, Window,
};

use super::context::{destination, open_existing_state, user};
use super::instances::{instance, instances, sync_name};
use super::{ExitStatus, UsageError};

/// Arguments of `waymark checkpoint`.
#[derive(Debug, Args)]
pub struct CheckpointArgs {
    #[command(subcommand)]
    action: Action,
}

/// What to change, and why.
#[derive(Debug, Args)]
struct Target {
    /// The workflow file.
    workflow: PathBuf,
    /// The stream.
    #[arg(long)]
    stream: String,
    /// A file with [tenants]: the tenant whose checkpoint it is.
    #[arg(long, value_name = "ID")]
    tenant: Option<String>,
    /// Why (required; kept in the history).
    #[arg(long)]
    reason: String,
}

#[derive(Debug, Subcommand)]
enum Action {
    /// The streams' checkpoints and their history of changes.
    Show {
        /// The workflow file.
        workflow: PathBuf,
        /// Only this stream.
        #[arg(long)]
        stream: Option<String>,
        /// A file with [tenants]: only these tenants (repeatable; default: every one).
        #[arg(long = "tenant", value_name = "ID")]
        tenants: Vec<String>,
        /// One JSON object per stream.
        #[arg(long)]
        json: bool,
    },
    /// Continue the stream from a time: the next run's window starts there (less overlap).
    Set {
        #[command(flatten)]
        target: Target,
        /// RFC 3339, e.g. 2026-01-01T00:00:00Z.
        #[arg(long, value_parser = super::context::rfc3339)]
        to: Timestamp,
    },
    /// Start the stream again from the beginning.
    Reset {
        #[command(flatten)]
        target: Target,
    },
    /// Take the checkpoint the destination stored with its last batch.
    Adopt {
        #[command(flatten)]
        target: Target,
    },
    /// Return to the checkpoint as it was after change N of the history (`show` numbers
    /// them).
    Restore {
        #[command(flatten)]
        target: Target,
        /// The change.
        #[arg(long, value_name = "N")]
        change: u64,
    },
}

impl CheckpointArgs {
    /// `show` only reads.
    pub(crate) fn reads_only(&self) -> bool {
        matches!(self.action, Action::Show { .. })
    }

    /// The sync and stream a change is to (`None` for `show`).
    pub(crate) fn scope(&self) -> anyhow::Result<Option<(String, String)>> {
        let target = match &self.action {
            Action::Show { .. } => return Ok(None),
            Action::Set { target, .. }
            | Action::Reset { target }
            | Action::Adopt { target }
            | Action::Restore { target, .. } => target,
        };
        let workflow = Workflow::load(&target.workflow)?;
        let stream = workflow.stream(&target.stream)?.name.clone();
        Ok(Some((
            sync_name(&workflow, target.tenant.as_deref())?,
            stream,
        )))
    }

    /// The workflow path made absolute against `cwd`.
    pub(crate) fn rebase(&mut self, cwd: &std::path::Path) {
        let workflow = match &mut self.action {
            Action::Show { workflow, .. } => workflow,
            Action::Set { target, .. }
            | Action::Reset { target }
            | Action::Adopt { target }
            | Action::Restore { target, .. } => &mut target.workflow,
        };
        *workflow = cwd.join(&*workflow);
    }
}

/// Runs `waymark checkpoint`.
pub async fn run(state_dir: &std::path::Path, args: CheckpointArgs) -> anyhow::Result<ExitStatus> {
    let mut dir = open_existing_state(state_dir)?;
    let now = SystemClock.now();
    let (target, new) = match args.action {
        Action::Show {
            workflow,
            stream,
            tenants,
            json,
        } => {
            for workflow in instances(&workflow, &tenants).await? {
                show(&dir, &workflow, stream.as_deref(), json)?;
            }
            return Ok(ExitStatus::Success);
        }
        Action::Set { target, to } => {
            let checkpoint = Checkpoint {
                run_id: RunId::new(),
                window: Window {
                    start: None,
                    end: to,
                },
                cursor: None,
                page: 0,
                records: 0,
                complete: true,
                at: now,
                max_seen: None,
            };
            (target, Some(checkpoint))
        }
        Action::Reset { target } => (target, None),
        Action::Adopt { target } => {
            let workflow = instance(&target.workflow, target.tenant.as_deref()).await?;
            let section = workflow.stream(&target.stream)?.clone();
            let mut theirs = destination(
                &dir,
                &workflow,
                &section,
                &section.name,
                std::sync::Arc::new(waymark_engine::SystemClock),
            )
            .await?;
            match theirs.checkpoint().await? {
                Some(c) => (target, Some(c)),
                None => {
                    return Err(UsageError(format!(
                        "the destination holds no checkpoint for stream {}",
                        target.stream
                    ))
                    .into())
                }
            }
        }
        Action::Restore { target, change } => {
            let workflow = Workflow::load(&target.workflow)?;
            let history = dir.journal().checkpoint_history(
                &sync_name(&workflow, target.tenant.as_deref())?,
                &target.stream,
            )?;
            match history.into_iter().find(|(n, _)| *n == change) {
                Some((_, c)) => (target, c.new),
                None => {
                    return Err(UsageError(format!(
                        "stream {} has no change {change} (see `waymark checkpoint show`)",
                        target.stream
                    ))
                    .into())
                }
            }
        }
    };
    if target.reason.trim().is_empty() {
        return Err(UsageError("--reason must say why the checkpoint changes".into()).into());
    }
    let workflow = Workflow::load(&target.workflow)?;
    let stream = workflow.stream(&target.stream)?.name.clone();
    let sync = sync_name(&workflow, target.tenant.as_deref())?;
    let who = user();
    // An unfinished run would overwrite the new checkpoint with its own: it is abandoned.
    if let Some(active) = dir.journal().active_run(&sync, &stream)? {
        let (journal, staging) = dir.parts();
        let state = journal.load(active)?;
        let reason = format!("checkpoint changed by {who}: {}", target.reason);
        journal.append(state, &Event::RunAbandoned { reason, at: now })?;
        staging.remove_run(active)?;
        out!("{sync}/{stream}: abandoned unfinished run {active}");
    }
    let previous = dir.journal().checkpoint(&sync, &stream).ok().flatten();
    let change = CheckpointChange {
        at: now,
        who,
        why: target.reason,
        previous,
        new,
    };
    dir.journal_mut().set_checkpoint(&sync, &stream, &change)?;
    out!(
        "{sync}/{stream}: checkpoint {} -> {} ({})",
        describe(change.previous.as_ref()),
        describe(change.new.as_ref()),
        change.why
    );
    Ok(ExitStatus::Success)
}

fn describe(c: Option<&Checkpoint>) -> String {
    let Some(c) = c else {
        return "the beginning".into();
    };
    let seen = c
        .max_seen
        .map(|t| format!(", greatest cursor value {t}"))
        .unwrap_or_default();
    match c.complete {
        true => format!("watermark {}{seen} (window complete)", c.window.end),
        false => format!(
            "watermark {}{seen}, cursor {} (run {} page {})",
            c.window.end,
            printable(c.cursor.as_deref().unwrap_or("-")),
            c.run_id,
            c.page
        ),
    }
}

fn show(
    dir: &StateDir,
    workflow: &Workflow,
    only: Option<&str>,
    json: bool,
) -> anyhow::Result<ExitStatus> {
    if let Some(name) = only {
        workflow.stream(name)?;
    }
    for stream in workflow.streams() {
        if only.is_some_and(|o| o != stream.name) {
            continue;
        }
        let current = dir.journal().checkpoint(workflow.name(), &stream.name)?;
        let history = dir
            .journal()
            .checkpoint_history(workflow.name(), &stream.name)?;
        if json {
            let changes: Vec<serde_json::Value> = history
                .iter()
                .map(|(n, c)| {
                    json!({"change": n, "at": c.at.to_string(), "who": c.who, "why": c.why,
                           "previous": c.previous, "new": c.new})
                })
                .collect();
            out!(
                "{}",
                json!({"sync": workflow.name(), "stream": stream.name, "checkpoint": current, "history": changes})
            );
            continue;
        }
        out!(
            "{}/{}: {}",
            workflow.name(),
            stream.name,
            match &current {
                Some(c) => describe(Some(c)),
                None => "no checkpoint".into(),
            }
        );
        for (n, c) in &history {
            out!(
                "  {n:>4}  {}  {:<24}  {} -> {}  ({})",
                c.at,
                c.who,
                describe(c.previous.as_ref()),
                describe(c.new.as_ref()),
                c.why
            );
        }
    }
    Ok(ExitStatus::Success)
}
