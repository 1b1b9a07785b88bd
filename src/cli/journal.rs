//! `waymark journal`: a run's steps, and verifying or resetting the journal.

use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};
use serde_json::json;
use waymark_engine::{Event, RunId, RunState, StartFrom, StateDir};

use super::context::{find_run, open_existing_state, open_state};
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
    /// Keep printing the steps of a live run as they are journaled, until it ends.
    #[arg(long, short)]
    follow: bool,
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
        (None, Some(run)) => show(state_dir, &run, args.json, args.follow),
        (None, None) => Err(UsageError(
            "give a run id (see `waymark runs`), or `verify` or `reset`".into(),
        )
        .into()),
    }
}

fn verify(state_dir: &Path) -> anyhow::Result<ExitStatus> {
    let dir = open_existing_state(state_dir)?;
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

/// Step-specific detail for one event, given the state before it (one arm per event,
/// exhaustive).
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
        Event::WriteRetried {
            page,
            attempt,
            error,
            wait_ms,
            ..
        } => (
            String::new(),
            format!("page {page}"),
            format!("write attempt {attempt} failed, wait {wait_ms} ms: {error}"),
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

/// Prints a run's events as a table or JSON lines, folding them to describe each.
struct Printer {
    run: RunId,
    json: bool,
    state: Option<RunState>,
}

impl Printer {
    fn new(run: RunId, json: bool) -> Self {
        if !json {
            out!(
                "{:>5}  {:<24}  {:<16}  {:<24}  {:<40}  outcome",
                "seq",
                "time",
                "step",
                "cursor",
                "counts"
            );
        }
        Printer {
            run,
            json,
            state: None,
        }
    }

    fn print(&mut self, seq: u64, event: &Event) -> anyhow::Result<()> {
        let run = self.run;
        let (cursor, counts, outcome) = describe(event, self.state.as_ref());
        if self.json {
            out!(
                "{}",
                json!({
                    "run": run.to_string(),
                    "seq": seq,
                    "time": event.at().to_string(),
                    "step": event.name(),
                    "event": event,
                })
            );
        } else {
            out!(
                "{seq:>5}  {:<24}  {:<16}  {cursor:<24}  {counts:<40}  {outcome}",
                event.at().to_string(),
                event.name()
            );
        }
        self.state =
            match (self.state.take(), event) {
                (None, Event::RunStarted(s)) => Some(RunState::start(s)),
                (Some(s), e) => Some(waymark_engine::apply(s, e).map_err(|source| {
                    waymark_engine::journal::Error::Inconsistent { run, source }
                })?),
                (None, _) => None,
            };
        Ok(())
    }
}

fn show(state_dir: &Path, run: &str, as_json: bool, follow: bool) -> anyhow::Result<ExitStatus> {
    let dir = match open_existing_state(state_dir) {
        Ok(dir) => dir,
        // A live run holds the state directory: follow its feed instead.
        Err(e) if follow && is_busy(&e) => return tail(state_dir, run, as_json),
        Err(e) => return Err(e),
    };
    let run = find_run(&dir, run)?;
    let mut printer = Printer::new(run, as_json);
    let mut any = false;
    for item in dir.journal().events(run) {
        let (seq, event) = item?;
        any = true;
        printer.print(seq, &event)?;
    }
    if !any {
        return Err(waymark_engine::journal::Error::UnknownRun(run).into());
    }
    if follow
        && printer
            .state
            .as_ref()
            .is_some_and(|s| !s.status.is_finished())
    {
        eprintln!("run {run} is not running now; `waymark run` resumes it");
    }
    Ok(ExitStatus::Success)
}

fn is_busy(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        matches!(
            c.downcast_ref::<waymark_engine::state_dir::Error>(),
            Some(waymark_engine::state_dir::Error::Busy { .. })
        )
    })
}

/// Follows a live run through the feed its process writes (`live/<run>.jsonl`), until it
/// completes, pauses, fails or the process goes away.
fn tail(state_dir: &Path, text: &str, as_json: bool) -> anyhow::Result<ExitStatus> {
    use std::io::{BufRead, Seek};
    let live = state_dir.join("live");
    let found: Vec<PathBuf> = std::fs::read_dir(&live)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    p.file_stem()
                        .map(|s| s.to_string_lossy().into_owned())
                        .is_some_and(|s| s.starts_with(text) || s.ends_with(text))
                })
                .collect()
        })
        .unwrap_or_default();
    let [path] = found.as_slice() else {
        return Err(UsageError(format!(
            "the state directory is in use, and no live run's id starts or ends with `{text}` \
             (see the running process's log for its run id)"
        ))
        .into());
    };
    let run: RunId = path
        .file_stem()
        .and_then(|s| s.to_str())
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| UsageError(format!("{}: not a run's feed", path.display())))?;
    eprintln!("following live run {run}");
    let mut printer = Printer::new(run, as_json);
    let mut reader = std::io::BufReader::new(std::fs::File::open(path)?);
    let mut line = String::new();
    let mut offset = 0u64;
    let mut idle = 0u32;
    loop {
        line.clear();
        let n = reader.read_line(&mut line)?;
        if n == 0 || !line.ends_with('\n') {
            // Nothing complete yet: wait, unless the run's process is gone (killed: its
            // feed stays, but the state directory is free).
            idle += 1;
            let gone = !path.exists() || (idle.is_multiple_of(20) && open_state(state_dir).is_ok());
            if gone {
                eprintln!("run {run}'s process stopped; `waymark journal {run}` has the rest");
                return Ok(ExitStatus::Success);
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
            reader.seek(std::io::SeekFrom::Start(offset))?;
            continue;
        }
        idle = 0;
        offset += n as u64;
        let entry: serde_json::Value = serde_json::from_str(&line)?;
        let event: Event = serde_json::from_value(entry["event"].clone())?;
        printer.print(entry["seq"].as_u64().unwrap_or(0), &event)?;
        if matches!(
            event,
            Event::RunCompleted { .. }
                | Event::RunFailed { .. }
                | Event::RunPaused { .. }
                | Event::RunAbandoned { .. }
        ) {
            return Ok(ExitStatus::Success);
        }
    }
}
