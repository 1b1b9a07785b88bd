//! `waymark runs`: the runs in the journal.

use std::path::Path;

use clap::Args;
use serde_json::json;

use waymark_connectors::config::parse_scope;
use waymark_engine::Status;

use super::context::open_existing_state;
use super::ExitStatus;

/// Arguments of `waymark runs`.
#[derive(Debug, Args)]
pub struct RunsArgs {
    /// Only runs of this sync.
    #[arg(long)]
    sync: Option<String>,
    /// Only runs of this stream (its backfills too).
    #[arg(long)]
    stream: Option<String>,
    /// Only the newest N runs.
    #[arg(long, value_name = "N")]
    limit: Option<usize>,
    /// One JSON object per line instead of a table.
    #[arg(long)]
    json: bool,
}

/// Runs `waymark runs`: oldest first, the newest `--limit` of those that match.
pub fn run(state_dir: &Path, args: RunsArgs) -> anyhow::Result<ExitStatus> {
    let dir = open_existing_state(state_dir)?;
    let mut runs = Vec::new();
    for head in dir.journal().runs() {
        let s = head?;
        let stream = parse_scope(&s.started.stream).0;
        if args.sync.as_ref().is_some_and(|w| *w != s.started.sync)
            || args.stream.as_ref().is_some_and(|w| w != stream)
        {
            continue;
        }
        runs.push(s);
    }
    if let Some(limit) = args.limit {
        runs.drain(..runs.len().saturating_sub(limit));
    }
    if !args.json {
        out!(
            "{:<36}  {:<24}  {:<9}  {:>6}  {:>9}  {:>7}  {:>5}  {:>8}  {:<52}  cursor",
            "run",
            "stream",
            "status",
            "pages",
            "records",
            "retries",
            "dlq",
            "took",
            "window"
        );
    }
    for s in &runs {
        let stream = format!("{}/{}", s.started.sync, s.started.stream);
        let took = s.updated_at.since(s.started.at);
        let cursor_start = s.started.start_cursor.as_deref();
        let cursor_end = s.committed_cursor.as_deref();
        if args.json {
            let line = json!({
                "run": s.run_id().to_string(),
                "sync": s.started.sync,
                "stream": s.started.stream,
                "status": s.status.name(),
                "outcome": outcome(&s.status),
                "window_start": s.window().start.map(|t| t.to_string()),
                "watermark": s.window().end.to_string(),
                "cursor_start": cursor_start,
                "cursor_end": cursor_end,
                "pages": s.counts.pages_committed,
                "records": s.counts.records_committed,
                "written": s.counts.written,
                "dead_lettered": s.counts.written.dead_lettered,
                "retries": s.counts.retries,
                "resumes": s.counts.resumes,
                "started": s.started.at.to_string(),
                "updated": s.updated_at.to_string(),
                "duration_ms": took.as_millis() as u64,
            });
            out!("{line}");
        } else {
            out!(
                "{:<36}  {stream:<24}  {:<9}  {:>6}  {:>9}  {:>7}  {:>5}  {:>8}  {:<52}  {} -> {}",
                s.run_id().to_string(),
                s.status.name(),
                s.counts.pages_committed,
                s.counts.records_committed,
                s.counts.retries,
                s.counts.written.dead_lettered,
                format!("{:.1}s", took.as_secs_f64()),
                s.window().to_string(),
                cursor_start.unwrap_or("start"),
                cursor_end.unwrap_or("-"),
            );
        }
    }
    Ok(ExitStatus::Success)
}

/// What a failed or paused run said; `None` otherwise.
fn outcome(status: &Status) -> Option<String> {
    match status {
        Status::Failed(e) => Some(e.clone()),
        Status::Paused(reason) => Some(reason.to_string()),
        _ => None,
    }
}
