//! `waymark journal`: a run's steps, and verifying or resetting the journal.

use std::path::Path;
use std::time::Duration;

use clap::{Args, Subcommand};
use serde_json::json;
use waymark_connectors::http::excerpt::printable;
use waymark_engine::{Event, RunId, RunState, StartFrom, StateDir, Status, Timestamp};

use super::attach;
use super::context::{find_run, inspect_existing_state, open_existing_state};
use super::progress::millis;
use super::{ExitStatus, UsageError};
use waymark_connectors::state::audit::Audit;
use waymark_engine::journal::Damage;

/// Arguments of `waymark journal`.
#[derive(Debug, Args)]
#[command(
    args_conflicts_with_subcommands = true,
    after_help = "A run's steps are shown in journal order (seq), the order they took effect. \
SINCE START is when each step happened, counted from the run's start. While pages are \
written the next ones are already fetched (pipelining); they are journaled after those \
writes, so they can show an earlier time than the line above: such a line says `fetched ahead`. \
The table cuts long cursors with `…`; --json has every value in full, with `time` (when \
the step happened), `offset_ms` and `ahead`."
)]
pub struct JournalArgs {
    #[command(subcommand)]
    action: Option<Action>,
    /// The run whose steps to show (a unique prefix or suffix of its id is enough).
    run_id: Option<String>,
    /// One JSON object per line instead of a table.
    #[arg(long)]
    json: bool,
    /// Keep printing the steps of the run as its process journals them, until it ends,
    /// pauses or fails (without a run id: the run in progress).
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

impl JournalArgs {
    /// Showing (following) a run and `verify` only read.
    pub(crate) fn reads_only(&self) -> bool {
        !matches!(self.action, Some(Action::Reset))
    }
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
        (None, None) if !args.follow => Err(UsageError(
            "give a run id (see `waymark runs`), --follow for the run in progress, or `verify` \
             or `reset`"
                .into(),
        )
        .into()),
        (None, run) => show(state_dir, run.as_deref(), args.json, args.follow),
    }
}

/// `journal verify`: the journal (with its witness), the staged pages unfinished runs
/// need, and the audit index; what to do about each kind of damage. Changes nothing.
fn verify(state_dir: &Path) -> anyhow::Result<ExitStatus> {
    let dir = inspect_existing_state(state_dir)?;
    let mut report = dir.verify()?;
    if let Some(problem) = Audit::new(dir.root()).check() {
        report.damage.push(Damage {
            entry: "audit.db".into(),
            problem,
        });
    }
    for damage in &report.damage {
        out!("damaged: {}: {}", damage.entry, damage.problem);
    }
    out!(
        "{} runs, {} events checked, {} damaged entries",
        report.runs,
        report.events,
        report.damage.len()
    );
    let any = |prefix: &str| report.damage.iter().any(|d| d.entry.starts_with(prefix));
    if any("staged page") {
        out!(
            "a damaged staged page: `waymark run <workflow> --fresh` abandons its run and \
             continues from the stream's committed checkpoint"
        );
    }
    if any("audit.db") {
        out!("a damaged audit.db only affects `waymark trace`: delete it; the next run starts a new one");
    }
    if report
        .damage
        .iter()
        .any(|d| !d.entry.starts_with("staged page") && !d.entry.starts_with("audit.db"))
    {
        out!(
            "a damaged journal: `waymark journal reset` moves it aside; each stream then \
             continues from its destination's checkpoint (`waymark checkpoint adopt <workflow> \
             --stream S --reason …`)"
        );
    }
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
                StartFrom::Leased { lease, checkpoint } => {
                    let from = match checkpoint {
                        Some(c) => format!(
                            "the destination's checkpoint of run {} page {}",
                            c.run_id, c.page
                        ),
                        None => "the beginning (no checkpoint in the destination)".into(),
                    };
                    let took = match &lease.previous {
                        Some(previous) if *previous != lease.holder => {
                            format!(", taken over from worker {previous}")
                        }
                        _ => String::new(),
                    };
                    format!(
                        "{from} under lease token {} of worker {}{took}",
                        lease.token, lease.holder
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
                cut(&or_dash(p.request_cursor.as_ref()), HALF),
                cut(&or_dash(p.next_cursor.as_ref()), HALF)
            ),
            format!("page {} records {}", p.page, p.records),
            format!(
                "staged {} bytes crc {:08x}{}",
                p.bytes,
                p.checksum,
                p.max_seen
                    .map(|t| format!(", greatest cursor value {t}"))
                    .unwrap_or_default()
            ),
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
        Event::SchemaChanged {
            page,
            changes,
            refused,
            ..
        } => (
            String::new(),
            format!("page {page}"),
            format!(
                "{}{}",
                changes
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("; "),
                if *refused {
                    " — refused (schema_policy = \"fail\")"
                } else {
                    ""
                }
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
///
/// The lines are in journal order (seq): the order the steps took effect, and the only
/// order a resume relies on. The time shown is each event's own time — the journal keeps
/// no other (not when the event was appended) — as an offset from the run's start.
/// While pages are written, the next ones are fetched ahead (pipelining, see
/// `decision::lookahead`); their `page_fetched` are journaled only with those pages'
/// commits, after them, and carry the time each page arrived, which can be earlier than
/// the commits'. Rather than reorder the lines by time (which would show a page fetched
/// before the pages before it were committed, an order the run never journaled) such a
/// line is marked `fetched ahead`.
struct Printer {
    run: RunId,
    json: bool,
    state: Option<RunState>,
    /// The run's start: times are shown as offsets from it.
    origin: Option<Timestamp>,
    /// The latest event time shown so far.
    latest: Option<Timestamp>,
}

/// Width of the cursor column; longer cursors are cut (`--json` has them in full).
const CURSOR: usize = 36;
/// Width of each cursor of a `before -> after` pair.
const HALF: usize = (CURSOR - 4) / 2;
/// Width of the counts column (a write's counts fit).
const COUNTS: usize = 48;

/// `cursor` cut to `width` characters in its middle: a cursor's beginning and its end
/// both tell it apart.
fn cut(cursor: &str, width: usize) -> String {
    let n = cursor.chars().count();
    if n <= width {
        return cursor.to_string();
    }
    let tail = (width - 1) / 2;
    let head: String = cursor.chars().take(width - 1 - tail).collect();
    let end: String = cursor.chars().skip(n - tail).collect();
    format!("{head}…{end}")
}

impl Printer {
    fn new(run: RunId, json: bool) -> Self {
        if !json {
            out!(
                "{:>5}  {:<12}  {:<16}  {:<CURSOR$}  {:<COUNTS$}  outcome",
                "seq",
                "since start",
                "step",
                "cursor",
                "counts"
            );
        }
        Printer {
            run,
            json,
            state: None,
            origin: None,
            latest: None,
        }
    }

    fn print(&mut self, seq: u64, event: &Event) -> anyhow::Result<()> {
        let line = self.line(seq, event)?;
        out!("{line}");
        Ok(())
    }

    /// The line of one event (a table row or a JSON object); folds the event in.
    fn line(&mut self, seq: u64, event: &Event) -> anyhow::Result<String> {
        let run = self.run;
        let at = event.at();
        let origin = *self.origin.get_or_insert(match event {
            Event::RunStarted(s) => s.at,
            _ => self.state.as_ref().map_or(at, |s| s.started.at),
        });
        let offset = at.since(origin);
        // A page that arrived before the line above: fetched while the page before it was
        // written, journaled after that write.
        let fetched = match event {
            Event::PageFetched(p) => Some(p.page),
            Event::PageIgnored { page, .. } => Some(*page),
            _ => None,
        };
        let ahead = fetched.filter(|_| self.latest.is_some_and(|latest| at < latest));
        self.latest = self.latest.max(Some(at));
        let (cursor, counts, mut outcome) = describe(event, self.state.as_ref());
        if let Some(page) = ahead {
            outcome =
                format!("fetched ahead, while the pages before {page} were written; {outcome}");
        }
        let line = if self.json {
            json!({
                "run": run.to_string(),
                "seq": seq,
                "time": at.to_string(),
                "offset_ms": millis(offset),
                "ahead": ahead.is_some(),
                "step": event.name(),
                "cursor": cursor,
                "counts": counts,
                "outcome": outcome,
                "event": event,
            })
            .to_string()
        } else {
            // Cursors and outcomes are the API's text.
            format!(
                "{seq:>5}  {:<12}  {:<16}  {:<CURSOR$}  {counts:<COUNTS$}  {}",
                since_start(offset),
                event.name(),
                cut(&printable(&cursor), CURSOR),
                printable(&outcome),
            )
        };
        self.state =
            match (self.state.take(), event) {
                (None, Event::RunStarted(s)) => Some(RunState::start(s)),
                (Some(s), e) => Some(waymark_engine::apply(s, e).map_err(|source| {
                    waymark_engine::journal::Error::Inconsistent { run, source }
                })?),
                (None, _) => None,
            };
        Ok(line)
    }
}

/// An offset from the run's start: `+0:00:01.234` (hours, minutes, seconds, milliseconds).
fn since_start(offset: Duration) -> String {
    let ms = offset.as_millis();
    format!(
        "+{}:{:02}:{:02}.{:03}",
        ms / 3_600_000,
        ms / 60_000 % 60,
        ms / 1_000 % 60,
        ms % 1_000
    )
}

/// Prints a run's steps. With `follow`, while the process holding the state directory
/// (answering this command, see `attach`) drives the run, keeps printing its steps as they
/// are journaled until it ends, pauses or fails. No run id: the run in progress (the newest
/// unfinished one).
fn show(
    state_dir: &Path,
    run: Option<&str>,
    as_json: bool,
    follow: bool,
) -> anyhow::Result<ExitStatus> {
    let dir = open_existing_state(state_dir)?;
    let live = follow && attach::attached();
    let run = match run {
        Some(text) => find_run(&dir, text)?,
        None => current_run(&dir, live)?,
    };
    let mut printer = Printer::new(run, as_json);
    let mut printed = 0;
    loop {
        for item in dir.journal().events(run).skip(printed) {
            let (seq, event) = item?;
            printed += 1;
            printer.print(seq, &event)?;
        }
        if printed == 0 {
            return Err(waymark_engine::journal::Error::UnknownRun(run).into());
        }
        let unfinished = printer
            .state
            .as_ref()
            .is_some_and(|s| !s.status.is_finished());
        let running = printer
            .state
            .as_ref()
            .is_some_and(|s| matches!(s.status, Status::Running));
        let stopped = live && running && attach::stop_following();
        if !follow || !running || !live || stopped {
            if follow && unfinished && (!live || stopped) {
                attach::note(&format!(
                    "run {run} is not running now; `waymark run` resumes it"
                ));
            }
            return Ok(ExitStatus::Success);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The run in progress: the newest of those still running, else the newest run. `live`
/// (the process holding the directory answers): one that has not started its run yet is
/// waited for.
fn current_run(dir: &StateDir, live: bool) -> anyhow::Result<RunId> {
    loop {
        let mut newest: Option<RunState> = None;
        let mut running: Option<RunState> = None;
        for head in dir.journal().runs() {
            let s = head?;
            let newer = |than: &Option<RunState>| {
                than.as_ref().is_none_or(|t| s.started.at >= t.started.at)
            };
            if matches!(s.status, Status::Running) && newer(&running) {
                running = Some(s.clone());
            }
            if newer(&newest) {
                newest = Some(s);
            }
        }
        if let Some(s) = running.or(if live { None } else { newest }) {
            return Ok(s.run_id());
        }
        if !live || attach::stop_following() {
            return Err(UsageError("no run is in progress".into()).into());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[cfg(test)]
mod tests {
    use waymark_engine::{PageFetched, RunStarted, Window, WriteAck};

    use super::*;

    fn page(page: u64, at: u64) -> Event {
        Event::PageFetched(PageFetched {
            page,
            request_cursor: Some(format!("{}{page}", "x".repeat(100))),
            next_cursor: Some(format!("c{page}")),
            records: 1,
            bytes: 1,
            checksum: 1,
            at: Timestamp(at),
            max_seen: None,
        })
    }

    #[test]
    fn times_count_from_the_start_and_a_page_fetched_ahead_says_so() -> anyhow::Result<()> {
        let run = RunId::new();
        let started = RunStarted {
            run_id: run,
            sync: "s".into(),
            stream: "t".into(),
            workflow_digest: "d".into(),
            workflow_path: "w.toml".into(),
            window: Window {
                start: None,
                end: Timestamp(1),
            },
            start_cursor: None,
            start_from: StartFrom::Beginning,
            at: Timestamp(1_000),
        };
        let ack = WriteAck::default();
        let events = [
            Event::RunStarted(started),
            page(1, 1_100),
            Event::BatchWritten {
                page: 1,
                ack,
                at: Timestamp(1_300),
            },
            Event::CursorCommitted {
                page: 1,
                at: Timestamp(1_300),
            },
            page(2, 1_250),
            Event::RunPaused {
                reason: waymark_engine::PauseReason::Interrupted,
                at: Timestamp(3_661_000 + 1_000),
            },
        ];
        let mut table = Printer::new(run, false);
        let mut json = Printer::new(run, true);
        let mut lines = Vec::new();
        for (seq, event) in (1..).zip(&events) {
            lines.push((table.line(seq, event)?, json.line(seq, event)?));
        }
        let times: Vec<&str> = lines
            .iter()
            .filter_map(|(l, _)| l.split_whitespace().nth(1))
            .collect();
        assert_eq!(
            times,
            [
                "+0:00:00.000",
                "+0:00:00.100",
                "+0:00:00.300",
                "+0:00:00.300",
                "+0:00:00.250",
                "+1:01:01.000"
            ]
        );
        for (i, (line, json)) in lines.iter().enumerate() {
            let json: serde_json::Value = serde_json::from_str(json)?;
            assert_eq!(json["seq"], i + 1);
            assert_eq!(json["ahead"], i == 4, "{json}");
            assert_eq!(line.contains("fetched ahead"), i == 4, "{line}");
        }
        assert!(lines[4]
            .0
            .contains("fetched ahead, while the pages before 2 were written"));
        assert!(lines[4].1.contains("\"offset_ms\":250"));
        // A long cursor is cut, so the columns after it stay in line.
        let counts = lines[1].0.find("page 1 records 1");
        assert_eq!(counts, lines[4].0.find("page 2 records 1"));
        assert!(lines[4].0.contains('…'));
        assert_eq!(cut("abcdefghij", 5), "ab…ij");
        assert_eq!(cut("abcde", 5), "abcde");
        Ok(())
    }
}
