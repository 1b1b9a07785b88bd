//! `waymark journal`: a run's steps, and verifying or resetting the journal.

use std::path::Path;

use clap::{Args, Subcommand};
use serde_json::json;
use waymark_engine::{Event, RunState, StartFrom, StateDir};

use super::run::{find_run, open_state};
use super::{ExitStatus, UsageError};

/// Arguments of `waymark journal`.
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct JournalArgs {
    #[command(subcommand)]
    action: Option<Action>,
    /// The run whose steps to show (a unique prefix or suffix of its id is enough).
    run_id: Option<String>,
    /// One JSON object per line instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Subcommand)]
enum Action {
    /// Check every entry's checksum and re-fold every run; exit 5 if anything is damaged.
    Verify,
    /// Move an unreadable journal aside; the next run recovers checkpoints from the destination.
    Reset,
}

/// Runs `waymark journal`.
pub fn run(state_dir: &Path, args: JournalArgs) -> anyhow::Result<ExitStatus> {
    match (args.action, args.run_id) {
        (Some(Action::Verify), _) => verify(state_dir),
        (Some(Action::Reset), _) => {
            match StateDir::reset_journal(state_dir, "waymark journal reset")? {
                Some(moved) => out!(
                    "journal moved to {}; each stream's next run asks where to continue: `waymark checkpoint adopt <workflow> --stream S --reason …` takes the checkpoint its destination stores",
                    moved.display()
                ),
                None => out!("no journal in {}", state_dir.display()),
            }
            Ok(ExitStatus::Success)
        }
        (None, Some(run)) => show(state_dir, &run, args.json),
        (None, None) => Err(UsageError(
            "give a run id (see `waymark runs`), or `verify` or `reset`".into(),
        )
        .into()),
    }
}

fn verify(state_dir: &Path) -> anyhow::Result<ExitStatus> {
    let dir = open_state(state_dir)?;
    let report = dir.journal().verify()?;
    for damage in &report.damage {
        out!("damaged: {}: {}", damage.entry, damage.problem);
    }
    out!(
        "{} runs, {} events checked, {} damaged entries",
        report.runs,
        report.events,
        report.damage.len()
    );
    Ok(if report.damage.is_empty() {
        ExitStatus::Success
    } else {
        ExitStatus::Corrupt
    })
}

fn or_dash(value: Option<&String>) -> String {
    value.cloned().unwrap_or_else(|| "-".into())
}

/// Step-specific detail for one event, given the state before it.
fn describe(event: &Event, before: Option<&RunState>) -> (String, String, String) {
    match event {
        Event::RunStarted(s) => {
            let from = match &s.start_from {
                StartFrom::Beginning => "the beginning".to_string(),
                StartFrom::Journal(c) => {
                    format!("the journal checkpoint of run {} page {}", c.run_id, c.page)
                }
                StartFrom::Destination(c) => {
                    format!(
                        "the destination's checkpoint of run {} page {}",
                        c.run_id, c.page
                    )
                }
            };
            (
                or_dash(s.start_cursor.as_ref()),
                String::new(),
                format!(
                    "{}/{} window {} from {from} (workflow {})",
                    s.sync, s.stream, s.window, s.workflow_digest
                ),
            )
        }
        Event::RunResumed { pid, .. } => (
            or_dash(before.and_then(|s| s.fetch_cursor())),
            String::new(),
            format!("by pid {pid}"),
        ),
        Event::PageFetched(p) => (
            format!(
                "{} -> {}",
                or_dash(p.request_cursor.as_ref()),
                or_dash(p.next_cursor.as_ref())
            ),
            format!("page {} records {}", p.page, p.records),
            format!("staged {} bytes crc {:08x}", p.bytes, p.checksum),
        ),
        Event::RequestRetried {
            page,
            attempt,
            error,
            status,
            rule,
            wait_ms,
            ..
        } => (
            String::new(),
            format!("page {page}"),
            format!(
                "attempt {attempt} failed{}, wait {wait_ms} ms{}: {error}",
                status.map_or(String::new(), |s| format!(" (HTTP {s})")),
                rule.as_ref()
                    .map_or(String::new(), |r| format!(", rule {r}")),
            ),
        ),
        Event::PageIgnored {
            page,
            status,
            rule,
            reason,
            ..
        } => (
            String::new(),
            format!("page {page}"),
            format!(
                "ignored{} by {}: {reason}",
                status.map_or(String::new(), |s| format!(" HTTP {s}")),
                rule.as_deref().unwrap_or("the default rules"),
            ),
        ),
        Event::BatchWritten { page, ack, .. } => (
            String::new(),
            format!(
                "page {page} ins {} upd {} same {} stale {} del {} dlq {}",
                ack.inserted,
                ack.updated,
                ack.unchanged,
                ack.skipped_stale,
                ack.deleted,
                ack.dead_lettered
            ),
            if ack.replayed {
                "already committed by the destination".into()
            } else {
                "written".into()
            },
        ),
        Event::CursorCommitted { page, .. } => {
            let cursor = before
                .and_then(|s| s.pending.iter().find(|p| p.fetched.page == *page))
                .and_then(|p| p.fetched.next_cursor.clone())
                .unwrap_or_else(|| "end".into());
            (cursor, format!("page {page}"), "checkpoint advanced".into())
        }
        Event::RunPaused { reason, .. } => {
            (String::new(), String::new(), format!("paused: {reason}"))
        }
        Event::RunCompleted { .. } => (String::new(), String::new(), "completed".into()),
        Event::RunFailed { error, .. } => {
            (String::new(), String::new(), format!("failed: {error}"))
        }
        Event::RunAbandoned { reason, .. } => {
            (String::new(), String::new(), format!("abandoned: {reason}"))
        }
    }
}

fn show(state_dir: &Path, run: &str, as_json: bool) -> anyhow::Result<ExitStatus> {
    let dir = open_state(state_dir)?;
    let run = find_run(&dir, run)?;
    let mut state: Option<RunState> = None;
    let mut any = false;
    if !as_json {
        out!(
            "{:>5}  {:<24}  {:<16}  {:<24}  {:<40}  outcome",
            "seq",
            "time",
            "step",
            "cursor",
            "counts"
        );
    }
    for item in dir.journal().events(run) {
        let (seq, event) = item?;
        any = true;
        let (cursor, counts, outcome) = describe(&event, state.as_ref());
        if as_json {
            let line = json!({
                "run": run.to_string(),
                "seq": seq,
                "time": event.at().to_string(),
                "step": event.name(),
                "event": event,
            });
            out!("{line}");
        } else {
            out!(
                "{seq:>5}  {:<24}  {:<16}  {cursor:<24}  {counts:<40}  {outcome}",
                event.at().to_string(),
                event.name()
            );
        }
        state =
            match (state, &event) {
                (None, Event::RunStarted(s)) => Some(RunState::start(s)),
                (Some(s), e) => Some(waymark_engine::apply(s, e).map_err(|source| {
                    waymark_engine::journal::Error::Inconsistent { run, source }
                })?),
                (None, _) => None,
            };
    }
    if !any {
        return Err(waymark_engine::journal::Error::UnknownRun(run).into());
    }
    Ok(ExitStatus::Success)
}
