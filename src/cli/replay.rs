//! `waymark replay <run-id> --dry-run`: re-executes a run from its journal alone — no
//! network, no destination. Each journaled step is checked against what the engine decides
//! from the state before it (the replay is deterministic, or it says where it is not), and
//! for an unfinished run the steps a resume would take next are printed, with the writes a
//! staged page would make, planned against an empty dry-run destination.

use std::path::{Path, PathBuf};

use clap::Args;
use serde_json::json;
use waymark_connectors::config::parse_scope;
use waymark_connectors::sink::plan::{plan, Binding, Identified, Op};
use waymark_connectors::Workflow;
use waymark_engine::decision::lookahead;
use waymark_engine::{decide, Action, Budget, Event, RunState};

use super::context::{find_run, open_existing_state};
use super::{ExitStatus, UsageError};

/// Arguments of `waymark replay`.
#[derive(Debug, Args)]
pub struct ReplayArgs {
    /// The run (a unique prefix or suffix of its id is enough).
    run_id: String,
    /// Required: nothing is fetched or written, the steps are only printed.
    #[arg(long)]
    dry_run: bool,
    /// One JSON object per line.
    #[arg(long)]
    json: bool,
}

/// Whether `event` is what `action` leads to.
fn fits(action: &Action, event: &Event) -> bool {
    match (action, event) {
        (Action::Fetch { page, .. }, Event::PageFetched(p)) => p.page == *page,
        (Action::Fetch { page, .. }, Event::RequestRetried { page: p, .. })
        | (Action::Fetch { page, .. }, Event::PageIgnored { page: p, .. }) => p == page,
        (Action::Fetch { .. }, Event::RunPaused { .. } | Event::RunFailed { .. }) => true,
        (Action::Write { page }, Event::BatchWritten { page: p, .. })
        | (Action::Write { page }, Event::WriteRetried { page: p, .. }) => p == page,
        (Action::Write { .. }, Event::RunFailed { .. }) => true,
        (Action::Commit { page }, Event::CursorCommitted { page: p, .. }) => p == page,
        (Action::Complete, Event::RunCompleted { .. }) => true,
        // Budgets and signals are outside the journal: a pause may come before any fetch.
        (_, Event::RunPaused { .. } | Event::RunAbandoned { .. } | Event::RunResumed { .. }) => {
            true
        }
        _ => false,
    }
}

fn describe(action: &Action) -> String {
    match action {
        Action::Fetch { page, cursor } => format!(
            "fetch page {page} with cursor {}",
            cursor.as_deref().unwrap_or("(first page of the window)")
        ),
        Action::Write { page } => format!("write page {page}"),
        Action::Commit { page } => format!("commit the cursor after page {page}"),
        Action::Complete => "complete the run".into(),
        Action::Pause(reason) => format!("pause ({reason})"),
        Action::Stop => "nothing (the run is not running)".into(),
    }
}

/// Runs `waymark replay`.
pub fn run(state_dir: &Path, args: ReplayArgs) -> anyhow::Result<ExitStatus> {
    if !args.dry_run {
        return Err(UsageError(
            "replay only re-executes a run without effects: add --dry-run".into(),
        )
        .into());
    }
    let dir = open_existing_state(state_dir)?;
    let run = find_run(&dir, &args.run_id)?;
    let mut state: Option<RunState> = None;
    let mut mismatches = 0;
    for item in dir.journal().events(run) {
        let (seq, event) = item?;
        let next = match (&state, &event) {
            (None, Event::RunStarted(started)) => RunState::start(started),
            (None, _) => return Err(UsageError(format!("run {run}'s journal has no start")).into()),
            (Some(s), e) => waymark_engine::apply(s.clone(), e)?,
        };
        // Before a resume or on a stopped run the engine had nothing to decide.
        let decided = state.as_ref().map(|s| {
            let running = RunState {
                status: waymark_engine::Status::Running,
                ..s.clone()
            };
            decide(&running, &Budget::default())
        });
        // Pages fetched ahead while the pending ones were written (pipelining) are journaled
        // after those pages' `BatchWritten` and `CursorCommitted`.
        let ahead = state.as_ref().and_then(|s| {
            let running = RunState {
                status: waymark_engine::Status::Running,
                ..s.clone()
            };
            lookahead(&running, &Budget::default())
        });
        let ok = match (&decided, &event) {
            (None, _) | (_, Event::RunStarted(_)) => true,
            (Some(action), e) => {
                fits(action, e)
                    || matches!(e, Event::PageFetched(_) | Event::PageIgnored { .. })
                        && ahead.as_ref().is_some_and(|a| fits(a, e))
            }
        };
        if !ok {
            mismatches += 1;
        }
        let decision = decided
            .as_ref()
            .map(describe)
            .unwrap_or_else(|| "start".into());
        if args.json {
            out!(
                "{}",
                json!({"seq": seq, "step": event.name(), "decided": decision, "consistent": ok})
            );
        } else {
            out!(
                "{seq:>5}  {:<18}  {}{decision}",
                event.name(),
                if ok {
                    ""
                } else {
                    "NOT WHAT THE ENGINE DECIDES: "
                }
            );
        }
        state = Some(next);
    }
    let Some(state) = state else {
        return Err(waymark_engine::journal::Error::UnknownRun(run).into());
    };
    if !state.status.is_finished() {
        resume_preview(&dir, &state, args.json)?;
    }
    if mismatches > 0 {
        eprintln!("{mismatches} journaled steps differ from what the engine decides");
        return Ok(ExitStatus::Corrupt);
    }
    Ok(ExitStatus::Success)
}

/// What a resume would do next: each staged page's writes (planned against an empty
/// dry-run destination), then the next fetch.
fn resume_preview(
    dir: &waymark_engine::StateDir,
    state: &RunState,
    json: bool,
) -> anyhow::Result<()> {
    let run = state.run_id();
    let workflow = Workflow::load(&PathBuf::from(&state.started.workflow_path)).ok();
    let stream = parse_scope(&state.started.stream).0;
    let binding = workflow.as_ref().and_then(|w| {
        let section = w.stream(stream).ok()?;
        Some(Binding::new(w, section))
    });
    if !json {
        out!("a resume would:");
    }
    for pending in &state.pending {
        let page = pending.fetched.page;
        if pending.written.is_some() {
            out!("  commit the cursor after page {page}");
            continue;
        }
        let records = dir.staging().read(run, page, pending.fetched.checksum)?;
        let staged = records.len();
        let planned = binding.as_ref().map(|b| (b, Identified::new(b, records)));
        let planned = planned
            .as_ref()
            .map(|(b, records)| plan(b, &run.to_string(), page, records, |_| Ok::<_, ()>(None)));
        match planned {
            Some(Ok(p)) => {
                for op in &p.ops {
                    let (what, key, version) = match op {
                        Op::Put { key, version, .. } => ("put", key, version),
                        Op::Tombstone { key, version, .. } => ("mark deleted", key, version),
                        Op::Remove { key, version } => ("delete", key, version),
                    };
                    let version = version.as_deref().unwrap_or("-");
                    if json {
                        out!(
                            "{}",
                            json!({"page": page, "op": what, "key": key, "version": version})
                        );
                    } else {
                        out!("  page {page}: {what} {key} (version {version})");
                    }
                }
                for d in &p.dead {
                    out!("  page {page}: dead letter ({})", d.reason);
                }
            }
            _ => out!("  write page {page}: {staged} staged records"),
        }
    }
    // The pending pages written and committed (in the fold only), then the next decision.
    let mut after = RunState {
        status: waymark_engine::Status::Running,
        ..state.clone()
    };
    let at = state.updated_at;
    for pending in &state.pending {
        let page = pending.fetched.page;
        if pending.written.is_none() {
            let ack = waymark_engine::WriteAck::default();
            after = waymark_engine::apply(after, &Event::BatchWritten { page, ack, at })?;
        }
        after = waymark_engine::apply(after, &Event::CursorCommitted { page, at })?;
    }
    out!("  then {}", describe(&decide(&after, &Budget::default())));
    Ok(())
}
