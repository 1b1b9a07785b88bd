//! `waymark reconcile`: compares a stream's source and destination — counts per time
//! bucket, key sets, versions, optionally field values — and reports the gaps, or repairs
//! them through a journaled run of their own (`<stream>@repair`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Args;
use serde_json::json;
use waymark_connectors::config::StreamSection;
use waymark_connectors::reconcile::{Gap, Report};
use waymark_engine::{RunState, Window};

use super::context::{hold_state, stop_on_signal, Budget};
use super::instances::instance;
use super::{ExitStatus, UsageError};
use crate::sync::{reconcile, Invocation, Request};

/// Arguments of `waymark reconcile`.
#[derive(Debug, Args)]
pub struct ReconcileArgs {
    /// The workflow file.
    workflow: PathBuf,
    /// Only these streams (repeatable; default: every stream that is not a deletions feed).
    #[arg(long = "stream", value_name = "NAME")]
    streams: Vec<String>,
    /// Compare the records of this last span of source time before the watermark (e.g.
    /// `7d`; default: the stream's `reconcile.window`, else everything).
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration, conflicts_with = "full")]
    window: Option<Duration>,
    /// Compare every record.
    #[arg(long)]
    full: bool,
    /// Also compare the field values of N records (chosen by key hash).
    #[arg(long, value_name = "N")]
    sample: Option<u64>,
    /// The fields compared (comma-separated dotted paths; without --sample: of every
    /// record). Default with --sample: the whole record.
    #[arg(long, value_delimiter = ',', value_name = "PATHS")]
    fields: Vec<String>,
    /// Change nothing; exit 6 when there are gaps (the default).
    #[arg(long, conflicts_with = "repair")]
    report: bool,
    /// Re-write missing, stale and differing records and apply deletions (by the
    /// destination's `delete_mode`) in a journaled repair run.
    #[arg(long)]
    repair: bool,
    /// Keys listed per kind of gap.
    #[arg(long, default_value_t = 10, value_name = "N")]
    show: usize,
    /// A file with [tenants]: the tenant whose streams to compare.
    #[arg(long, value_name = "ID")]
    tenant: Option<String>,
    #[command(flatten)]
    budget: Budget,
}

/// Runs `waymark reconcile`.
pub async fn run(state_dir: &Path, args: ReconcileArgs) -> anyhow::Result<ExitStatus> {
    let stop = stop_on_signal()?;
    let workflow = instance(&args.workflow, args.tenant.as_deref()).await?;
    let streams: Vec<&StreamSection> = if args.streams.is_empty() {
        workflow
            .streams()
            .iter()
            .filter(|s| s.deletes.is_none())
            .collect()
    } else {
        args.streams
            .iter()
            .map(|name| workflow.stream(name))
            .collect::<Result<_, _>>()?
    };
    for s in &streams {
        if s.deletes.is_some() {
            return Err(UsageError(format!(
                "{} is a deletions feed; reconcile the stream it deletes from",
                s.name
            ))
            .into());
        }
    }
    let (mut dir, _answering) = hold_state(state_dir)?;
    let mut invocation = Invocation::new(&dir, &workflow, &args.budget, &stop)?;
    // The report carries the repair run's outcome: one JSON object per stream.
    invocation.summaries = !args.budget.json;
    let mut status = ExitStatus::Success;
    for stream in streams {
        let declared = Request::declared(stream).unwrap_or_default();
        let request = Request {
            window: match args.full {
                true => None,
                false => args.window.or(declared.window),
            },
            sample: args.sample.or(declared.sample),
            fields: match args.fields.is_empty() {
                true => declared.fields,
                false => Some(args.fields.clone()),
            },
            repair: args.repair,
            show: args.show,
        };
        let (report, repair) =
            reconcile(&mut dir, &invocation, &workflow, stream, &request).await?;
        let names = (
            args.workflow.as_path(),
            workflow.name(),
            stream.name.as_str(),
        );
        match &report {
            Some(report) => print(names, report, repair.as_ref(), args.budget.json),
            None => print_unfinished(names.1, names.2, repair.as_ref(), args.budget.json),
        }
        let this = match (&repair, &report) {
            (Some(state), _) => ExitStatus::of_runs(std::slice::from_ref(state)),
            (None, Some(r)) if r.figures.gaps() > 0 && !request.repair => ExitStatus::Drift,
            (None, _) => ExitStatus::Success,
        };
        if this != ExitStatus::Success && status == ExitStatus::Success {
            status = this;
        }
    }
    Ok(status)
}

/// An unfinished repair run that was resumed and did not complete (no new comparison).
fn print_unfinished(sync: &str, stream: &str, repair: Option<&RunState>, as_json: bool) {
    let Some(state) = repair else { return };
    match as_json {
        true => out!(
            "{}",
            json!({
                "sync": sync,
                "stream": stream,
                "repair_run": state.run_id().to_string(),
                "repair_status": state.status.name(),
                "repair_written": state.counts.written,
            })
        ),
        false => out!(
            "{sync}/{stream}: the unfinished repair run {} is {}; no new comparison until it \
             completes",
            state.run_id(),
            state.status.name()
        ),
    }
}

fn print(
    (workflow, sync, stream): (&Path, &str, &str),
    report: &Report,
    repair: Option<&RunState>,
    as_json: bool,
) {
    let f = &report.figures;
    let range = Window {
        start: f.start,
        end: f.end,
    };
    if as_json {
        let keys: serde_json::Map<String, serde_json::Value> = report
            .keys
            .iter()
            .map(|(gap, keys)| (gap.name().to_string(), json!(keys)))
            .collect();
        out!(
            "{}",
            json!({
                "sync": sync,
                "stream": stream,
                "window_start": f.start.map(|t| t.to_string()),
                "watermark": f.end.to_string(),
                "source": f.source,
                "destination": f.destination,
                "missing": f.missing,
                "deleted": f.deleted,
                "stale": f.stale,
                "differing": f.differing,
                "newer": f.newer,
                "compared": f.compared,
                "unreadable": report.unreadable,
                "gaps": f.gaps(),
                "gap_rate": f.gap_rate(),
                "keys": keys,
                "buckets": report.buckets.iter().map(|(t, s, d)| json!({
                    "start": t.to_string(), "source": s, "destination": d
                })).collect::<Vec<_>>(),
                "repaired": report.to_repair,
                "repair_run": repair.map(|r| r.run_id().to_string()),
                "repair_status": repair.map(|r| r.status.name()),
                "repair_written": repair.map(|r| r.counts.written),
            })
        );
        return;
    }
    out!(
        "{sync}/{stream}: reconciled {range} — source {}, destination {}: {} gaps ({:.2}%)",
        f.source,
        f.destination,
        f.gaps(),
        f.gap_rate() * 100.0
    );
    for gap in Gap::ALL {
        let count = match gap {
            Gap::Missing => f.missing,
            Gap::Deleted => f.deleted,
            Gap::Stale => f.stale,
            Gap::Differing => f.differing,
            Gap::Newer => f.newer,
            // Not a gap: shown only when there are some.
            Gap::Unreadable if report.unreadable == 0 => continue,
            Gap::Unreadable => report.unreadable,
        };
        let keys = report
            .keys
            .get(&gap)
            .map(|k| k.join(", "))
            .unwrap_or_default();
        let more = match count > report.keys.get(&gap).map_or(0, |k| k.len() as u64) {
            true => ", …",
            false => "",
        };
        let line = format!("  {:<10} {count:>8}  {keys}{more}", gap.name());
        out!("{}", line.trim_end());
    }
    if f.compared > 0 {
        out!("  field values of {} records compared", f.compared);
    }
    let width = humantime::format_duration(report.bucket);
    for (start, s, d) in report.buckets.iter().take(10) {
        out!("  bucket {start} (+{width}): source {s}, destination {d}");
    }
    if report.buckets.len() > 10 {
        out!("  … {} more buckets differ", report.buckets.len() - 10);
    }
    match repair {
        Some(state) => out!(
            "  repair run {}: {} ({} records written: {})",
            state.run_id(),
            state.status.name(),
            state.counts.records_committed,
            state.counts.written
        ),
        None if f.gaps() > 0 => out!(
            "  nothing changed; `waymark reconcile {} --stream {stream} --repair` fixes them",
            workflow.display()
        ),
        None => {}
    }
}
