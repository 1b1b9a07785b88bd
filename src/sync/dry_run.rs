//! `waymark run --dry-run`: each stream's next run read from the live API and written
//! nowhere — no journal step, staged page, destination row, checkpoint, dead letter or
//! saved rate budget — and what it would write, said per stream.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;
use waymark_connectors::config::StreamSection;
use waymark_connectors::{reconcile, sink, Api, HttpSource, Workflow};
use waymark_engine::{driver, Clock, StateDir, SystemClock};

use crate::cli::context::Budget;

/// Records shown per stream.
const SAMPLES: usize = 3;

/// What one stream's next run would do, as read from the API.
#[derive(Debug, Default, Serialize)]
pub(crate) struct Preview {
    sync: String,
    stream: String,
    /// The unfinished run it would resume (from its last committed page), if any.
    resumes: Option<String>,
    window_start: Option<String>,
    watermark: String,
    /// The cursor it would start from (`None`: the window's first page).
    start_cursor: Option<String>,
    pages: u64,
    records: u64,
    /// Records it would upsert, and of them deletions.
    writes: u64,
    deletions: u64,
    /// Records it would dead-letter, by reason.
    dead_letters: BTreeMap<String, u64>,
    /// Read to the window's end (`false`: stopped by `--max-pages`, `--max-duration` or a
    /// stop request).
    complete: bool,
    /// Later slices of the same catch-up follow (`window.step`).
    more_slices: bool,
    samples: Vec<Sample>,
}

/// One record as the run would write it.
#[derive(Debug, Serialize)]
struct Sample {
    key: Option<String>,
    version: Option<String>,
    deletion: bool,
    /// Why it would be dead-lettered instead.
    refused: Option<String>,
    record: Box<serde_json::value::RawValue>,
}

/// Previews `streams` of `workflow`: the next run of each, from the state directory's
/// journal when there is one (`None`: no run has used it; every stream starts afresh).
/// Errors of one stream are said and do not stop the others; `Ok(false)` if any failed.
pub(crate) async fn dry_run(
    dir: Option<&StateDir>,
    workflow: &Workflow,
    streams: &[&StreamSection],
    fresh: bool,
    budget: &Budget,
    stop: &AtomicBool,
) -> anyhow::Result<bool> {
    // No rate budget is saved (`None`): a dry run leaves the state directory as it was.
    let api = Api::new(workflow, None, Arc::new(SystemClock))?;
    let mut ok = true;
    for stream in streams {
        if stop.load(Ordering::SeqCst) {
            break;
        }
        match preview(dir, api.clone(), workflow, stream, fresh, budget, stop).await {
            Ok(preview) => show(&preview, budget.json),
            Err(e) => {
                ok = false;
                tracing::error!(
                    "{}/{}: dry run failed: {}",
                    workflow.name(),
                    stream.name,
                    crate::cli::describe(&e)
                );
            }
        }
    }
    if !budget.json {
        out!(
            "dry run: nothing was written (no journal step, staged page, destination row, \
             checkpoint, dead letter or rate budget)"
        );
    }
    Ok(ok)
}

async fn preview(
    dir: Option<&StateDir>,
    api: Arc<Api>,
    workflow: &Workflow,
    stream: &StreamSection,
    fresh: bool,
    budget: &Budget,
    stop: &AtomicBool,
) -> anyhow::Result<Preview> {
    let plan = workflow.plan(stream, fresh);
    let journal = dir.map(StateDir::journal);
    let unfinished = match journal {
        Some(j) if !fresh => match j.active_run(&plan.sync, &plan.stream)? {
            Some(run) => Some(j.load(run)?).filter(|s| !s.status.is_finished()),
            None => None,
        },
        _ => None,
    };
    let (resumes, window, cursor, done) = match unfinished {
        Some(state) => (
            Some(state.run_id().to_string()),
            state.window(),
            state.committed_cursor.clone(),
            state.committed_page > 0 && state.committed_cursor.is_none(),
        ),
        None => {
            let checkpoint = journal
                .map(|j| j.checkpoint(&plan.sync, &plan.stream))
                .transpose()?
                .flatten();
            let (window, cursor) =
                driver::window_after(checkpoint.as_ref(), &plan, SystemClock.now());
            (None, window, cursor, false)
        }
    };
    let mut preview = Preview {
        sync: plan.sync.clone(),
        stream: plan.stream.clone(),
        resumes,
        window_start: window.start.map(|t| t.to_string()),
        watermark: window.end.to_string(),
        start_cursor: cursor.clone(),
        more_slices: driver::sliced(&window, &plan),
        complete: true,
        ..Preview::default()
    };
    if done {
        return Ok(preview);
    }
    let binding = sink::binding(workflow, stream, &plan.stream);
    let mut source = HttpSource::new(
        workflow,
        stream,
        api,
        sink::parents(workflow, stream).await?,
    )?;
    let began = Instant::now();
    let mut stopped = false;
    let read = reconcile::read_source(
        &mut source,
        window,
        cursor,
        &workflow.retry_policy(),
        &SystemClock,
        |records| {
            preview.pages += 1;
            for record in records {
                preview.records += 1;
                let seen = binding.preview(record);
                match &seen {
                    Ok((_, _, deletion)) => {
                        preview.writes += 1;
                        preview.deletions += u64::from(*deletion);
                    }
                    Err(why) => *preview.dead_letters.entry(why.clone()).or_default() += 1,
                }
                if preview.samples.len() < SAMPLES {
                    preview.samples.push(sample(record, seen));
                }
            }
            let out_of_budget = budget.max_pages.is_some_and(|n| preview.pages >= n)
                || budget.max_duration.is_some_and(|d| began.elapsed() >= d);
            stopped = out_of_budget || stop.load(Ordering::SeqCst);
            match stopped {
                true => Err(reconcile::Error::Interrupted),
                false => Ok(()),
            }
        },
    )
    .await;
    match read {
        Ok(_) => {}
        Err(reconcile::Error::Interrupted) if stopped => preview.complete = false,
        Err(e) => return Err(e.into()),
    }
    Ok(preview)
}

fn sample(record: &str, seen: Result<(String, Option<String>, bool), String>) -> Sample {
    let record = serde_json::value::RawValue::from_string(record.to_string())
        .or_else(|_| serde_json::value::to_raw_value(record))
        .unwrap_or_default();
    match seen {
        Ok((key, version, deletion)) => Sample {
            key: Some(key),
            version,
            deletion,
            refused: None,
            record,
        },
        Err(why) => Sample {
            key: None,
            version: None,
            deletion: false,
            refused: Some(why),
            record,
        },
    }
}

/// Longest record text shown in a line.
const SHOWN: usize = 200;

fn show(p: &Preview, json: bool) {
    if json {
        match serde_json::to_string(p) {
            Ok(line) => out!("{line}"),
            Err(e) => tracing::error!("{}/{}: {e}", p.sync, p.stream),
        }
        return;
    }
    let window = format!(
        "({}, {}]",
        p.window_start.as_deref().unwrap_or("beginning"),
        p.watermark
    );
    let from = p
        .start_cursor
        .as_deref()
        .map_or("the first page".to_string(), |c| format!("cursor {c}"));
    match &p.resumes {
        Some(run) => out!(
            "{}/{}: the next run resumes run {run}, window {window}, from {from}",
            p.sync,
            p.stream
        ),
        None => out!(
            "{}/{}: the next run starts a new run, window {window}, from {from}",
            p.sync,
            p.stream
        ),
    }
    let refused: u64 = p.dead_letters.values().sum();
    out!(
        "  read {} pages, {} records{}: {} to write ({} deletions), {} to dead-letter",
        p.pages,
        p.records,
        match p.complete {
            true => " (to the window's end)",
            false => " (stopped early; more follow)",
        },
        p.writes,
        p.deletions,
        refused
    );
    for (why, n) in &p.dead_letters {
        out!("    {n} × {why}");
    }
    if p.more_slices {
        out!("  then the next slices of window.step, each a run of its own");
    }
    for s in &p.samples {
        let mut text = s.record.get().to_string();
        if text.len() > SHOWN {
            let cut = (0..=SHOWN)
                .rev()
                .find(|i| text.is_char_boundary(*i))
                .unwrap_or(0);
            text.truncate(cut);
            text.push('…');
        }
        match (&s.key, &s.refused) {
            (Some(key), _) => out!(
                "  key {key}, version {}{}: {text}",
                s.version.as_deref().unwrap_or("-"),
                if s.deletion { " (a deletion)" } else { "" }
            ),
            (None, why) => out!("  dead letter ({}): {text}", why.as_deref().unwrap_or("")),
        }
    }
}
