//! `waymark runs`: the runs in the journal, as a table that fits the terminal, or one run
//! in full.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use clap::Args;
use serde_json::{json, Value};

use waymark_connectors::config::{parse_scope, split_tenant};
use waymark_connectors::http::excerpt::printable;
use waymark_engine::{RunState, Status};

use super::cluster::Coordinates;
use super::context::{find_run, open_existing_state};
use super::progress::{counted, duration, fit, millis};
use super::{ExitStatus, UsageError};

/// Arguments of `waymark runs`.
#[derive(Debug, Args)]
#[command(
    after_help = "The table fits the terminal (COLUMNS, else 80 columns): RUN is \
the end of the run's id, enough to name it (`waymark runs <id>`, `waymark journal <id>`); \
TOOK is the time the run was being driven, without the time it stood paused or failed; \
STARTED is in UTC. `waymark runs <id>` shows one run in full (window, cursors, counts, \
outcome); --json gives every field of every run. With --cluster, the runs every worker of a \
`serve --cluster` mirrored to the coordinator, with the WORKER that ran each (its step \
journal is in that worker's state directory)."
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
    /// The runs of every worker of a cluster, from its coordinator (not this state
    /// directory).
    #[arg(long)]
    cluster: bool,
    #[command(flatten)]
    coordinates: Coordinates,
}

/// Runs `waymark runs`: oldest first, the newest `--limit` of those that match; or one run.
pub async fn run(state_dir: &Path, args: RunsArgs) -> anyhow::Result<ExitStatus> {
    // Every run, as `--json` prints it, oldest first.
    let all: Vec<Value> = match args.cluster {
        true => super::cluster::runs(&args.coordinates).await?,
        false => {
            let dir = open_existing_state(state_dir)?;
            if let Some(text) = &args.run_id {
                let state = dir.journal().load(find_run(&dir, text)?)?;
                match args.json {
                    true => out!("{}", json_line(&state)),
                    false => show(&state),
                }
                return Ok(ExitStatus::Success);
            }
            let runs = dir.journal().runs().collect::<Result<Vec<_>, _>>()?;
            runs.iter().map(json_line).collect()
        }
    };
    let ids: Vec<&str> = all.iter().filter_map(|r| r["run"].as_str()).collect();
    if let Some(text) = &args.run_id {
        let found: Vec<&Value> = all
            .iter()
            .filter(|r| {
                r["run"]
                    .as_str()
                    .is_some_and(|id| id.starts_with(text.as_str()) || id.ends_with(text.as_str()))
            })
            .collect();
        let [run] = found.as_slice() else {
            return Err(UsageError(format!(
                "{} mirrored run ids start or end with `{text}` (see `waymark runs --cluster`)",
                found.len()
            ))
            .into());
        };
        match args.json {
            true => out!("{run}"),
            false => {
                for (key, value) in run.as_object().into_iter().flatten() {
                    let value = value
                        .as_str()
                        .map_or_else(|| value.to_string(), str::to_string);
                    out!("{:<15} {}", format!("{key}:"), printable(&value));
                }
            }
        }
        return Ok(ExitStatus::Success);
    }
    let mut runs: Vec<&Value> = all
        .iter()
        .filter(|r| {
            let sync = r["sync"].as_str().unwrap_or_default();
            let stream = parse_scope(r["stream"].as_str().unwrap_or_default()).0;
            super::status::wanted(sync, args.sync.as_deref(), &args.tenants)
                && args.stream.as_ref().is_none_or(|w| w == stream)
        })
        .collect();
    if let Some(limit) = args.limit {
        runs.drain(..runs.len().saturating_sub(limit));
    }
    if args.json {
        for run in &runs {
            out!("{run}");
        }
    } else {
        table(&runs, &ids, args.cluster, width());
    }
    Ok(ExitStatus::Success)
}

/// The table: one line per run (`runs --json` objects), `width` columns at most (the
/// stream column gives way and is cut with `…`; the others are as wide as their widest
/// value); with the worker that ran each when `workers`.
fn table(runs: &[&Value], ids: &[&str], workers: bool, width: usize) {
    let id_len = short_len(runs, ids);
    let field = |run: &Value, key: &str| match &run[key] {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    };
    let mut header = vec![
        "run", "stream", "status", "pages", "records", "took", "started",
    ];
    if workers {
        header.push("worker");
    }
    let rows: Vec<Vec<String>> = runs
        .iter()
        .map(|run| {
            let id = field(run, "run");
            let took = Duration::from_millis(run["duration_ms"].as_u64().unwrap_or(0));
            let started = field(run, "started");
            let mut row = vec![
                id[id.len().saturating_sub(id_len)..].to_string(),
                format!("{}/{}", field(run, "sync"), field(run, "stream")),
                field(run, "status"),
                field(run, "pages"),
                field(run, "records"),
                duration(took),
                // To the minute, UTC: `2026-11-25 20:46`.
                started
                    .get(..16)
                    .map_or(started.clone(), |t| t.replacen('T', " ", 1)),
            ];
            if workers {
                row.push(field(run, "worker"));
            }
            row
        })
        .collect();
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    // Two spaces between columns; what the others leave goes to the stream, 8 at least.
    let others: usize = widths.iter().sum::<usize>() - widths[1] + 2 * (widths.len() - 1);
    widths[1] = widths[1].min(width.saturating_sub(others).max(8));
    let line = |cells: &[&str]| {
        let text: Vec<String> = cells
            .iter()
            .zip(&widths)
            .enumerate()
            .map(|(i, (cell, w))| match i {
                1 => format!("{:<w$}", fit(cell, *w)),
                // Counts and durations to the right; the last column unpadded.
                3..=5 => format!("{cell:>w$}"),
                _ if i + 1 == cells.len() => printable(cell).into_owned(),
                _ => format!("{:<w$}", printable(cell)),
            })
            .collect();
        text.join("  ")
    };
    out!("{}", line(&header).trim_end());
    for row in &rows {
        let cells: Vec<&str> = row.iter().map(String::as_str).collect();
        out!("{}", line(&cells));
    }
}

/// How many characters of the end of an id name each listed run: 8, or more if 8 would
/// also match another run's id (`find_run` takes a prefix or a suffix). A suffix, because
/// UUIDv7 ids begin with their start time: runs started together share a prefix.
fn short_len(runs: &[&Value], ids: &[&str]) -> usize {
    let all: Vec<String> = ids.iter().map(|id| id.to_string()).collect();
    let shown: Vec<String> = runs
        .iter()
        .filter_map(|r| r["run"].as_str().map(str::to_string))
        .collect();
    let unique = |len: usize| {
        // How many ids begin or end with each text of `len` characters.
        let mut matching: HashMap<&str, usize> = HashMap::new();
        for id in &all {
            let (Some(head), Some(tail)) = (
                id.get(..len),
                id.len().checked_sub(len).and_then(|i| id.get(i..)),
            ) else {
                continue;
            };
            *matching.entry(tail).or_default() += 1;
            if head != tail {
                *matching.entry(head).or_default() += 1;
            }
        }
        shown.iter().all(|id| {
            let tail = id.get(id.len().saturating_sub(len)..).unwrap_or(id);
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

/// A run as one JSON object (`--json`, a line per run; what a cluster's workers mirror).
pub(crate) fn json_line(s: &RunState) -> serde_json::Value {
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
