//! `waymark status`: per stream, how far it is synced, how it went lately, what the last
//! reconciliation found, and a verdict — ok, waiting, stalled, failing or drifting — with
//! the reason. Exits 1 when anything is unhealthy, so cron jobs and monitors can use it.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use clap::Args;
use serde_json::json;
use waymark_connectors::config::{is_webhook_scope, parse_scope, split_tenant};
use waymark_connectors::http::excerpt::printable;
use waymark_connectors::state::dead_letters::DeadLetters;
use waymark_connectors::state::schema::Schema;
use waymark_connectors::webhook::inbox::Inbox;
use waymark_engine::{
    Checkpoint, Clock, PauseReason, Reconciliation, RunState, Status, SystemClock, Timestamp,
};

use super::cluster::Coordinates;
use super::context::{open_existing_state, refused, reload_failures};
use super::ExitStatus;
use crate::sync::{existing_inbox, WEBHOOK_RUNS_KEEP};

/// Arguments of `waymark status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// A stream is stalled when its checkpoint has not advanced for this long (default:
    /// twice the usual interval between its runs, when it has run at least three times).
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    stalled_after: Option<Duration>,
    /// One JSON object per line instead of a table.
    #[arg(long)]
    json: bool,
    /// Only this sync (with [tenants]: every tenant's instance of it, `shop:acme` is one).
    #[arg(long)]
    sync: Option<String>,
    /// Only this tenant (repeatable).
    #[arg(long = "tenant", value_name = "ID")]
    tenants: Vec<String>,
    /// One line per tenant instead of per stream: its worst health, its streams by health,
    /// its largest lag and its dead letters.
    #[arg(long)]
    by_tenant: bool,
    /// Every partition of a cluster, from the runs its workers mirrored to the
    /// coordinator (not this state directory): its worker, its latest run, and how far
    /// its latest completed run synced.
    #[arg(long)]
    cluster: bool,
    #[command(flatten)]
    coordinates: Coordinates,
}

/// A rate-limit pause ending within this time is routine (`waiting`, healthy); one ending
/// later means the API has stopped the stream for longer than any retry (unhealthy).
const LONG_PAUSE: Duration = Duration::from_secs(3600);

/// What is known of one checkpoint scope.
#[derive(Default)]
struct Stream {
    checkpoint: Option<Checkpoint>,
    runs: Vec<RunState>,
    reconciled: Option<Reconciliation>,
    /// A webhook scope's events.
    webhook: Option<Webhook>,
    /// Inside `serve`: why its last attempt to run failed before a run was journaled.
    refused: Option<String>,
}

/// A webhook scope's events: waiting, and applied lately.
#[derive(Default)]
struct Webhook {
    /// Accepted, not applied yet.
    waiting: u64,
    /// When the oldest of them was accepted.
    oldest: Option<Timestamp>,
    /// Records its runs of the last hour wrote (their journals are kept that long).
    applied: u64,
    /// Of those, the ones the destination already had (the polling, or an earlier event,
    /// came first): unchanged or stale.
    known: u64,
}

/// A webhook scope whose oldest waiting event is older than this is stalled (unless
/// `--stalled-after` says otherwise).
const WEBHOOK_STALLED: Duration = Duration::from_secs(600);

impl Webhook {
    fn of(inbox: &Inbox, key: (&str, &str), s: &Stream, now: Timestamp) -> anyhow::Result<Self> {
        // Events up to the last completed window were applied (a crash may have left them).
        let applied_up_to = s.checkpoint.as_ref().map(|c| match c.complete {
            true => c.window.end,
            false => c.window.start.unwrap_or(Timestamp(0)),
        });
        let (waiting, oldest) = inbox.backlog((key.0, parse_scope(key.1).0), applied_up_to)?;
        let hour_ago = now.saturating_sub(WEBHOOK_RUNS_KEEP);
        let (mut applied, mut known) = (0, 0);
        for run in s.runs.iter().filter(|r| r.started.at >= hour_ago) {
            let w = &run.counts.written;
            applied += run.counts.records_committed;
            known += w.unchanged + w.skipped_stale;
        }
        Ok(Webhook {
            waiting,
            oldest,
            applied,
            known,
        })
    }
}

/// Runs `waymark status`.
pub async fn run(state_dir: &Path, args: StatusArgs) -> anyhow::Result<ExitStatus> {
    let rows = match args.cluster {
        true => cluster_rows(&args).await?,
        false => local_rows(state_dir, &args)?,
    };
    let mut unhealthy = false;
    let mut tenants: BTreeMap<(String, String), TenantRollUp> = BTreeMap::new();
    if !args.json && !args.by_tenant {
        out!(
            "{:<8}  {:<32}  {:<24}  {:>10}  {:<10}  {:>5}  {:>7}  reason",
            "health",
            "sync/stream",
            "watermark",
            "lag",
            "last run",
            "dlq",
            "gaps"
        );
    }
    for row in &rows {
        let text = |key: &str| row[key].as_str().unwrap_or("-").to_string();
        let bad = row["unhealthy"].as_bool().unwrap_or(false);
        unhealthy |= bad;
        let lag = row["lag_s"].as_u64().map(Duration::from_secs);
        let letters = row["dead_letters"].as_u64().unwrap_or(0);
        if args.by_tenant {
            let (name, tenant) = split_tenant(row["sync"].as_str().unwrap_or_default());
            let key = (name.to_string(), tenant.unwrap_or_default().to_string());
            tenants
                .entry(key)
                .or_default()
                .add(text("health"), bad, lag, letters);
        } else if args.json {
            out!("{row}");
        } else {
            out!(
                "{:<8}  {:<32}  {:<24}  {:>10}  {:<10}  {letters:>5}  {:>7}  {}",
                text("health"),
                format!("{}/{}", text("sync"), text("stream")),
                text("watermark"),
                lag.map_or("-".into(), |l| humantime::format_duration(l).to_string()),
                text("last_status"),
                row["gap_rate"]
                    .as_f64()
                    .map_or("-".into(), |r| format!("{:.2}%", r * 100.0)),
                printable(&text("reason")),
            );
        }
    }
    if args.by_tenant && !args.json {
        out!(
            "{:<9}  {:<32}  {:>10}  {:>5}  streams",
            "health",
            "sync:tenant",
            "max lag",
            "dlq"
        );
    }
    for ((sync, tenant), t) in &tenants {
        t.print(sync, tenant, args.json);
    }
    // Inside `serve`: workflow files whose edit it refused.
    for (file, why) in reload_failures() {
        unhealthy = true;
        let reason = format!("not reloaded, the previous version keeps running: {why}");
        if args.json {
            out!(
                "{}",
                json!({ "file": file, "health": "reload-failed", "unhealthy": true, "reason": reason })
            );
        } else {
            out!("{:<8}  {file}: {}", "reload", printable(&reason));
        }
    }
    Ok(if unhealthy {
        ExitStatus::Failed
    } else {
        ExitStatus::Success
    })
}

/// A cluster partition waiting this long for a worker is unhealthy.
const UNLEASED: Duration = Duration::from_secs(60);

/// `status --json`'s rows for every partition of a cluster, from the coordinator.
async fn cluster_rows(args: &StatusArgs) -> anyhow::Result<Vec<serde_json::Value>> {
    let now = SystemClock.now();
    let mut rows = Vec::new();
    for p in super::cluster::partitions(&args.coordinates).await? {
        if !wanted(&p.sync, args.sync.as_deref(), &args.tenants) {
            continue;
        }
        let last = p.last.unwrap_or_default();
        let watermark = p
            .last_completed
            .as_ref()
            .and_then(|c| c["watermark"].as_str());
        let lag = watermark
            .and_then(|w| humantime::parse_rfc3339(w).ok())
            .map(Timestamp::from_system)
            .map(|w| now.since(w).as_secs());
        let waited = p.waiting_s.unwrap_or(0.0);
        let (health, bad, reason) = match (last["status"].as_str(), &p.holder) {
            (_, None) if waited > UNLEASED.as_secs_f64() => (
                "unleased",
                true,
                format!("no worker has held it for {waited:.0}s"),
            ),
            (Some("failed"), _) => (
                "failing",
                true,
                format!(
                    "its last run failed on {}: {}",
                    last["worker"].as_str().unwrap_or("-"),
                    last["outcome"].as_str().unwrap_or("-")
                ),
            ),
            (None, _) => ("new", false, "no run yet".to_string()),
            (Some(_), holder) => (
                "ok",
                false,
                holder
                    .as_ref()
                    .map_or("waiting for a worker".into(), |h| format!("held by {h}")),
            ),
        };
        rows.push(json!({
            "sync": p.sync,
            "tenant": split_tenant(&p.sync).1,
            "stream": p.stream,
            "health": health,
            "unhealthy": bad,
            "reason": reason,
            "holder": p.holder,
            "watermark": watermark,
            "lag_s": lag,
            "last_run": last["run"],
            "last_status": last["status"],
            "last_records": last["records"],
            "last_worker": last["worker"],
            "dead_letters": last["dead_lettered"].as_u64().unwrap_or(0),
        }));
    }
    Ok(rows)
}

/// `status --json`'s rows for every scope of this state directory.
fn local_rows(state_dir: &Path, args: &StatusArgs) -> anyhow::Result<Vec<serde_json::Value>> {
    let dir = open_existing_state(state_dir)?;
    let now = SystemClock.now();
    let mut streams: BTreeMap<(String, String), Stream> = BTreeMap::new();
    for item in dir.journal().checkpoints() {
        let (sync, stream, checkpoint) = item?;
        streams.entry((sync, stream)).or_default().checkpoint = Some(checkpoint);
    }
    for head in dir.journal().runs() {
        let s = head?;
        let key = (s.started.sync.clone(), s.started.stream.clone());
        streams.entry(key).or_default().runs.push(s);
    }
    // Inside `serve`: scopes it could not run (no run in the journal says so).
    for (key, why) in refused() {
        streams.entry(key).or_default().refused = Some(why);
    }
    let inbox = existing_inbox(&dir)?;
    streams.retain(|(sync, _), _| wanted(sync, args.sync.as_deref(), &args.tenants));
    for ((sync, scope), s) in streams.iter_mut() {
        s.reconciled = dir
            .journal()
            .reconciliations(sync, scope)?
            .pop()
            .map(|(_, r)| r);
        if let Some(inbox) = inbox.as_ref().filter(|_| is_webhook_scope(scope)) {
            s.webhook = Some(Webhook::of(inbox, (sync, scope), s, now)?);
        }
    }
    let mut rows = Vec::new();
    for ((sync, scope), s) in &streams {
        let letters = DeadLetters::new(dir.root(), sync, parse_scope(scope).0)
            .list()
            .map_or(0, |l| l.len());
        let (mut health, bad, mut reason) = verdict(s, now, args.stalled_after);
        let drift = drift(&dir, sync, scope, s.runs.last());
        if health == "ok" && !drift.is_empty() {
            health = "schema_changed";
            reason = format!("the last run's records changed shape: {}", drift.join("; "));
        }
        let watermark = s.checkpoint.as_ref().map(|c| c.window.end);
        let lag = watermark.map(|w| now.since(w));
        let last = s.runs.last();
        let failures = s
            .runs
            .iter()
            .rev()
            .take(5)
            .filter(|r| matches!(r.status, Status::Failed(_)))
            .count();
        rows.push(json!({
            "sync": sync,
            "tenant": split_tenant(sync).1,
            "stream": scope,
            "health": health,
            "unhealthy": bad,
            "reason": reason,
            "watermark": watermark.map(|w| w.to_string()),
            "lag_s": lag.map(|l| l.as_secs()),
            "checkpoint_at": s.checkpoint.as_ref().map(|c| c.at.to_string()),
            "cursor": s.checkpoint.as_ref().and_then(|c| c.cursor.clone()),
            "last_run": last.map(|r| r.run_id().to_string()),
            "last_status": last.map(|r| r.status.name()),
            "last_records": last.map(|r| r.counts.records_committed),
            "failures_of_last_5": failures,
            "dead_letters": letters,
            "drift": drift,
            "reconciled_at": s.reconciled.as_ref().map(|r| r.at.to_string()),
            "gap_rate": s.reconciled.as_ref().map(Reconciliation::gap_rate),
            "gaps": s.reconciled.as_ref().map(Reconciliation::gaps),
            "webhook": s.webhook.as_ref().map(|w| json!({
                "waiting": w.waiting,
                "oldest_waiting_s": w.oldest.map(|o| now.since(o).as_secs()),
                "applied_last_hour": w.applied,
                "polled_first_last_hour": w.known,
            })),
        }));
    }
    Ok(rows)
}

/// The schema changes the stream's records showed in its last run (`schema/`), as text.
fn drift(
    dir: &waymark_engine::StateDir,
    sync: &str,
    scope: &str,
    last: Option<&RunState>,
) -> Vec<String> {
    let Some(last) = last.filter(|_| parse_scope(scope).0 == scope) else {
        return Vec::new();
    };
    let file = Schema::file(dir.root(), sync, scope);
    let Ok(shape) = Schema::read(&file) else {
        return Vec::new();
    };
    shape
        .history
        .iter()
        .filter(|c| c.at >= last.started.at)
        .map(|c| format!("{} ({})", c.change, c.action))
        .collect()
}

/// Whether a scope of `sync` is among those asked for: `only` is a sync (all its tenants'
/// instances) or one instance; `tenants`, when given, the tenants.
pub(crate) fn wanted(sync: &str, only: Option<&str>, tenants: &[String]) -> bool {
    let (name, tenant) = split_tenant(sync);
    only.is_none_or(|o| o == sync || o == name)
        && (tenants.is_empty() || tenant.is_some_and(|t| tenants.iter().any(|w| w == t)))
}

/// One tenant's streams, summed up.
#[derive(Default)]
struct TenantRollUp {
    /// Streams by health.
    healths: BTreeMap<String, usize>,
    unhealthy: usize,
    lag: Option<Duration>,
    dead_letters: u64,
}

impl TenantRollUp {
    fn add(&mut self, health: String, bad: bool, lag: Option<Duration>, letters: u64) {
        *self.healths.entry(health).or_default() += 1;
        self.unhealthy += usize::from(bad);
        self.lag = self.lag.max(lag);
        self.dead_letters += letters;
    }

    fn print(&self, sync: &str, tenant: &str, json: bool) {
        let streams: usize = self.healths.values().sum();
        let health = match self.unhealthy {
            0 => "ok",
            _ => "unhealthy",
        };
        let lag = self.lag.map(|l| l.as_secs());
        if json {
            out!(
                "{}",
                json!({
                    "sync": sync,
                    "tenant": tenant,
                    "health": health,
                    "streams": streams,
                    "unhealthy_streams": self.unhealthy,
                    "by_health": self.healths,
                    "max_lag_s": lag,
                    "dead_letters": self.dead_letters,
                })
            );
            return;
        }
        let by: Vec<String> = self
            .healths
            .iter()
            .map(|(h, n)| format!("{n} {h}"))
            .collect();
        out!(
            "{health:<9}  {:<32}  {:>10}  {:>5}  {streams} stream{}: {}",
            match tenant.is_empty() {
                true => sync.to_string(),
                false => format!("{sync}:{tenant}"),
            },
            lag.map_or("-".into(), |l| humantime::format_duration(
                Duration::from_secs(l)
            )
            .to_string()),
            self.dead_letters,
            if streams == 1 { "" } else { "s" },
            by.join(", ")
        );
    }
}

/// `ok`, `waiting`, `stalled`, `failing` or `drifting`, whether that is unhealthy, and why.
/// `waiting`: the latest run is paused by a rate limit (`Retry-After`, a used-up quota)
/// that has not ended; unhealthy when it ends more than [`LONG_PAUSE`] from now.
fn verdict(
    s: &Stream,
    now: Timestamp,
    stalled_after: Option<Duration>,
) -> (&'static str, bool, String) {
    if let Some(why) = &s.refused {
        return ("failing", true, format!("it could not run: {why}"));
    }
    if let Some(last) = s.runs.last() {
        if let Status::Failed(e) = &last.status {
            return ("failing", true, format!("the last run failed: {e}"));
        }
    }
    let rate_limited = s.runs.last().and_then(|r| match &r.status {
        Status::Paused(PauseReason::RateLimited { until }) if *until > now => Some(*until),
        _ => None,
    });
    let waiting = |until: Timestamp, long: bool| {
        let left = humantime::format_duration(Duration::from_secs(until.since(now).as_secs()));
        let said = match long {
            true => "the API asked for a wait of more than an hour (believed up to 24 hours)",
            false => "a run after that resumes it",
        };
        (
            "waiting",
            long,
            format!("rate limited until {until} (in {left}); {said}"),
        )
    };
    if let Some(r) = s
        .reconciled
        .as_ref()
        .filter(|r| r.gap_rate() > r.max_gap_rate)
    {
        return (
            "drifting",
            true,
            format!(
                "the last reconciliation ({}) found {} gaps ({:.2}% > {:.2}%): {} missing, {} \
                 deleted, {} stale, {} differing; the incremental sync misses changes — \
                 investigate before repairing",
                r.at,
                r.gaps(),
                r.gap_rate() * 100.0,
                r.max_gap_rate * 100.0,
                r.missing,
                r.deleted,
                r.stale,
                r.differing
            ),
        );
    }
    if let Some(until) = rate_limited.filter(|u| u.since(now) > LONG_PAUSE) {
        return waiting(until, true);
    }
    // A webhook scope runs when events come: it is behind when they wait, not when none came.
    if let Some(w) = &s.webhook {
        let limit = stalled_after.unwrap_or(WEBHOOK_STALLED);
        let first_part = match w.oldest.filter(|o| now.since(*o) > limit) {
            Some(oldest) => {
                return (
                    "stalled",
                    true,
                    format!(
                        "{} webhook events wait, the oldest accepted {} ago (limit {})",
                        w.waiting,
                        humantime::format_duration(Duration::from_secs(
                            now.since(oldest).as_secs()
                        )),
                        humantime::format_duration(limit)
                    ),
                )
            }
            None => format!("{} webhook events waiting", w.waiting),
        };
        let share = match w.applied {
            0 => String::new(),
            n => format!(
                "; last hour: {n} applied, {:.1}% already written by the polling or an earlier event",
                w.known as f64 * 100.0 / n as f64
            ),
        };
        return ("ok", false, format!("{first_part}{share}"));
    }
    // Usual interval: the median gap between the starts of the recent runs.
    let starts: Vec<u64> = s
        .runs
        .iter()
        .rev()
        .take(10)
        .map(|r| r.started.at.0)
        .collect();
    let usual = match starts.len() >= 3 {
        true => {
            let mut gaps: Vec<u64> = starts
                .windows(2)
                .map(|w| w[0].saturating_sub(w[1]))
                .collect();
            gaps.sort_unstable();
            Some(Duration::from_millis(gaps[gaps.len() / 2]))
        }
        false => None,
    };
    let limit = stalled_after.or(usual.map(|u| u * 2));
    let advanced = s.checkpoint.as_ref().map(|c| c.at);
    match (limit, advanced) {
        (Some(limit), Some(at)) if now.since(at) > limit => (
            "stalled",
            true,
            format!(
                "no checkpoint advance for {} (limit {})",
                humantime::format_duration(Duration::from_secs(now.since(at).as_secs())),
                humantime::format_duration(limit)
            ),
        ),
        (Some(_), None) if s.runs.len() >= 3 => ("stalled", true, "no checkpoint yet".into()),
        _ => match (rate_limited, s.runs.last().map(|r| &r.status)) {
            (Some(until), _) => waiting(until, false),
            (None, Some(Status::Paused(reason))) => ("ok", false, format!("paused: {reason}")),
            (None, Some(Status::Running)) => (
                "ok",
                false,
                "a run is unfinished (resumes next time)".into(),
            ),
            _ => ("ok", false, String::new()),
        },
    }
}

#[cfg(test)]
mod tests {
    use waymark_engine::{Event, RunId, RunStarted, StartFrom, Window};

    use super::*;

    /// A stream whose one run started at `at` and paused for a rate limit until `until`.
    fn paused_until(at: u64, until: u64) -> anyhow::Result<Stream> {
        let started = RunStarted {
            run_id: RunId::new(),
            sync: "s".into(),
            stream: "t".into(),
            workflow_digest: "d".into(),
            workflow_path: "w.toml".into(),
            window: Window {
                start: None,
                end: Timestamp(at),
            },
            start_cursor: None,
            start_from: StartFrom::Beginning,
            at: Timestamp(at),
        };
        let paused = Event::RunPaused {
            reason: PauseReason::RateLimited {
                until: Timestamp(until),
            },
            at: Timestamp(at),
        };
        let run = waymark_engine::apply(RunState::start(&started), &paused)?;
        Ok(Stream {
            runs: vec![run],
            ..Stream::default()
        })
    }

    #[test]
    fn a_rate_limit_pause_is_waiting_and_unhealthy_beyond_an_hour() -> anyhow::Result<()> {
        let now = Timestamp(1_700_000_000_000);
        let minute = 60_000;
        let (health, bad, reason) = verdict(&paused_until(now.0, now.0 + 10 * minute)?, now, None);
        assert_eq!((health, bad), ("waiting", false), "{reason}");
        assert!(
            reason.starts_with("rate limited until 2023-11-14T22:23:20.000Z (in 10m);"),
            "{reason}"
        );
        let (health, bad, reason) =
            verdict(&paused_until(now.0, now.0 + 1440 * minute)?, now, None);
        assert_eq!((health, bad), ("waiting", true), "{reason}");
        assert!(reason.contains("(in 1day)"), "{reason}");
        // Once the time has passed, the pause is ordinary: the next run resumes.
        let (health, bad, reason) = verdict(&paused_until(now.0, now.0 - minute)?, now, None);
        assert_eq!((health, bad), ("ok", false), "{reason}");
        assert!(
            reason.starts_with("paused: rate limited until "),
            "{reason}"
        );
        Ok(())
    }
}
