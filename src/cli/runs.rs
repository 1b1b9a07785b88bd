//! `waymark runs`: the runs in the journal, as a table that fits the terminal, or one run
//! in full.

use std::collections::HashMap;
use std::path::Path;

use clap::Args;
use serde_json::json;

use waymark_connectors::config::{parse_scope, split_tenant};
use waymark_connectors::http::excerpt::printable;
use waymark_engine::{RunId, RunState, Status};

use super::context::{find_run, open_existing_state};
use super::progress::{counted, duration, fit, millis};
use super::ExitStatus;

/// Arguments of `waymark runs`.
#[derive(Debug, Args)]
#[command(
    after_help = "The table fits the terminal (COLUMNS, else 80 columns): RUN is \
the end of the run's id, enough to name it (`waymark runs <id>`, `waymark journal <id>`); \
TOOK is the time the run was being driven, without the time it stood paused or failed; \
STARTED is in UTC. `waymark runs <id>` shows one run in full (window, cursors, counts, \
outcome); --json gives every field of every run."
)]
pub struct RunsArgs {
    /// Show this run in full (a unique prefix or suffix of its id is enough).
    #[arg(value_name = "RUN", conflicts_with_all = ["sync", "tenants", "stream", "limit"])]
    run_id: Option<String>,
    /// Only runs of this sync (with [tenants]: of every tenant's instance of it,
    /// `shop:acme` is one).
    #[arg(long)]
    sync: Option<String>,
    /// Only runs of this tenant (repeatable).
    #[arg(long = "tenant", value_name = "ID")]
    tenants: Vec<String>,
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

/// Runs `waymark runs`: oldest first, the newest `--limit` of those that match; or one run.
pub fn run(state_dir: &Path, args: RunsArgs) -> anyhow::Result<ExitStatus> {
    let dir = open_existing_state(state_dir)?;
    if let Some(text) = &args.run_id {
        let state = dir.journal().load(find_run(&dir, text)?)?;
        match args.json {
            true => out!("{}", json_line(&state)),
            false => show(&state),
        }
        return Ok(ExitStatus::Success);
    }
    let mut runs = Vec::new();
    let mut ids = Vec::new();
    for head in dir.journal().runs() {
        let s = head?;
        ids.push(s.run_id());
        let stream = parse_scope(&s.started.stream).0;
        if !super::status::wanted(&s.started.sync, args.sync.as_deref(), &args.tenants)
            || args.stream.as_ref().is_some_and(|w| w != stream)
        {
            continue;
        }
        runs.push(s);
    }
    if let Some(limit) = args.limit {
        runs.drain(..runs.len().saturating_sub(limit));
    }
    if args.json {
        for s in &runs {
            out!("{}", json_line(s));
        }
    } else {
        table(&runs, &ids, width());
    }
    Ok(ExitStatus::Success)
}

/// The table: one line per run, `width` columns at most (the stream column gives way and
/// is cut with `…`; the others are as wide as their widest value).
fn table(runs: &[RunState], ids: &[RunId], width: usize) {
    let id_len = short_len(runs, ids);
    let rows: Vec<[String; 7]> = runs
        .iter()
        .map(|s| {
            let id = s.run_id().to_string();
            [
                id[id.len() - id_len..].to_string(),
                format!("{}/{}", s.started.sync, s.started.stream),
                s.status.name().to_string(),
                s.counts.pages_committed.to_string(),
                s.counts.records_committed.to_string(),
                duration(s.active()),
                started(s),
            ]
        })
        .collect();
    let header = [
        "run", "stream", "status", "pages", "records", "took", "started",
    ];
    let mut widths = header.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    // Two spaces between columns; what the others leave goes to the stream, 8 at least.
    let others: usize = widths.iter().sum::<usize>() - widths[1] + 2 * (widths.len() - 1);
    widths[1] = widths[1].min(width.saturating_sub(others).max(8));
    let line = |cells: [&str; 7]| {
        let [run, stream, status, pages, records, took, started] = cells;
        let [w0, w1, w2, w3, w4, w5, _] = widths;
        format!(
            "{run:<w0$}  {:<w1$}  {status:<w2$}  {pages:>w3$}  {records:>w4$}  {took:>w5$}  \
             {started}",
            fit(stream, w1),
        )
    };
    out!("{}", line(header).trim_end());
    for row in &rows {
        out!("{}", line(row.each_ref().map(String::as_str)));
    }
}

/// How many characters of the end of an id name each listed run: 8, or more if 8 would
/// also match another run's id (`find_run` takes a prefix or a suffix). A suffix, because
/// UUIDv7 ids begin with their start time: runs started together share a prefix.
fn short_len(runs: &[RunState], ids: &[RunId]) -> usize {
    let all: Vec<String> = ids.iter().map(RunId::to_string).collect();
    let shown: Vec<String> = runs.iter().map(|s| s.run_id().to_string()).collect();
    let unique = |len: usize| {
        // How many ids begin or end with each text of `len` characters.
        let mut matching: HashMap<&str, usize> = HashMap::new();
        for id in &all {
            let (head, tail) = (&id[..len], &id[id.len() - len..]);
            *matching.entry(tail).or_default() += 1;
            if head != tail {
                *matching.entry(head).or_default() += 1;
            }
        }
        shown.iter().all(|id| {
            let tail = &id[id.len() - len..];
            // A tail beginning with `-` would read as an option.
            !tail.starts_with('-') && matching.get(tail) == Some(&1)
        })
    };
    (8..36).find(|&len| unique(len)).unwrap_or(36)
}

/// The table's width: `COLUMNS` when set (a shell exports it, or the user does), else 80.
fn width() -> usize {
    std::env::var("COLUMNS")
        .ok()
        .and_then(|c| c.trim().parse().ok())
        .filter(|&c| c >= 40)
        .unwrap_or(80)
}

/// When the run started, to the minute, UTC: `2026-11-25 20:46`.
fn started(s: &RunState) -> String {
    let text = s.started.at.to_string();
    text.get(..16)
        .map_or(text.clone(), |t| t.replacen('T', " ", 1))
}

/// One run in full, one `key: value` line each.
fn show(s: &RunState) {
    let c = &s.counts;
    let cursor_end = match (&s.committed_cursor, s.committed_page) {
        (_, 0) => "- (no page committed yet)".to_string(),
        (Some(cursor), _) => cursor.clone(),
        (None, _) => "- (the last page is committed)".to_string(),
    };
    let lines = [
        ("run", s.run_id().to_string()),
        ("sync", s.started.sync.clone()),
        ("stream", s.started.stream.clone()),
        ("status", s.status.name().to_string()),
        ("outcome", outcome(&s.status).unwrap_or_else(|| "-".into())),
        ("window", s.window().to_string()),
        ("watermark", s.window().end.to_string()),
        (
            "cursor start",
            s.started
                .start_cursor
                .clone()
                .unwrap_or_else(|| "- (the first page)".into()),
        ),
        ("cursor end", cursor_end),
        (
            "pages",
            format!(
                "{} committed, {} fetched",
                c.pages_committed, c.pages_fetched
            ),
        ),
        (
            "records",
            format!(
                "{} committed, {} fetched",
                c.records_committed, c.records_fetched
            ),
        ),
        ("written", c.written.to_string()),
        ("dead letters", c.written.dead_lettered.to_string()),
        ("retries", c.retries.to_string()),
        ("ignored", counted(c.ignored, "response")),
        ("resumes", c.resumes.to_string()),
        ("started", s.started.at.to_string()),
        ("updated", s.updated_at.to_string()),
        (
            "took",
            format!(
                "{} (paused time not counted; {} from start to the last step)",
                duration(s.active()),
                duration(s.updated_at.since(s.started.at)),
            ),
        ),
        (
            "workflow",
            format!(
                "{} (digest {})",
                s.started.workflow_path, s.started.workflow_digest
            ),
        ),
    ];
    for (key, value) in lines {
        // Cursors and outcomes are the API's text.
        out!("{:<13} {}", format!("{key}:"), printable(&value));
    }
}

/// A run as one JSON object (`--json`, a line per run).
fn json_line(s: &RunState) -> serde_json::Value {
    json!({
        "run": s.run_id().to_string(),
        "sync": s.started.sync,
        "tenant": split_tenant(&s.started.sync).1,
        "stream": s.started.stream,
        "status": s.status.name(),
        "outcome": outcome(&s.status),
        "lease": s.started.start_from.lease().map(|l| json!({
            "token": l.token, "holder": l.holder, "previous": l.previous
        })),
        "window_start": s.window().start.map(|t| t.to_string()),
        "watermark": s.window().end.to_string(),
        "cursor_start": s.started.start_cursor,
        "cursor_end": s.committed_cursor,
        "pages": s.counts.pages_committed,
        "pages_fetched": s.counts.pages_fetched,
        "records": s.counts.records_committed,
        "written": s.counts.written,
        "dead_lettered": s.counts.written.dead_lettered,
        "retries": s.counts.retries,
        "ignored_pages": s.counts.ignored,
        "resumes": s.counts.resumes,
        "started": s.started.at.to_string(),
        "updated": s.updated_at.to_string(),
        "duration_ms": s.active_ms,
        "elapsed_ms": millis(s.updated_at.since(s.started.at)),
    })
}

/// What a failed or paused run said; `None` otherwise.
fn outcome(status: &Status) -> Option<String> {
    match status {
        Status::Failed(e) => Some(e.clone()),
        Status::Paused(reason) => Some(reason.to_string()),
        _ => None,
    }
}
