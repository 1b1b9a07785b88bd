//! `waymark runs`: the runs in the journal.

use std::path::Path;

use clap::Args;
use serde_json::json;

use super::run::open_state;
use super::ExitStatus;

/// Arguments of `waymark runs`.
#[derive(Debug, Args)]
pub struct RunsArgs {
    /// One JSON object per line instead of a table.
    #[arg(long)]
    json: bool,
}

/// Runs `waymark runs`.
pub fn run(state_dir: &Path, args: RunsArgs) -> anyhow::Result<ExitStatus> {
    let dir = open_state(state_dir)?;
    if !args.json {
        out!(
            "{:<36}  {:<24}  {:<9}  {:>6}  {:>9}  {:>7}  {:>7}  updated",
            "run",
            "stream",
            "status",
            "pages",
            "records",
            "retries",
            "resumes"
        );
    }
    for head in dir.journal().runs() {
        let s = head?;
        let stream = format!("{}/{}", s.started.sync, s.started.stream);
        if args.json {
            let line = json!({
                "run": s.run_id().to_string(),
                "sync": s.started.sync,
                "stream": s.started.stream,
                "status": s.status.name(),
                "window_start": s.window().start.map(|t| t.to_string()),
                "watermark": s.window().end.to_string(),
                "pages": s.counts.pages_committed,
                "records": s.counts.records_committed,
                "written": s.counts.written,
                "retries": s.counts.retries,
                "resumes": s.counts.resumes,
                "started": s.started.at.to_string(),
                "updated": s.updated_at.to_string(),
            });
            out!("{line}");
        } else {
            out!(
                "{:<36}  {stream:<24}  {:<9}  {:>6}  {:>9}  {:>7}  {:>7}  {}",
                s.run_id().to_string(),
                s.status.name(),
                s.counts.pages_committed,
                s.counts.records_committed,
                s.counts.retries,
                s.counts.resumes,
                s.updated_at
            );
        }
    }
    Ok(ExitStatus::Success)
}
