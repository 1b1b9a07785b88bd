//! `waymark compact`: merges a JSONL destination's page files into one file per table.

use std::path::{Path, PathBuf};

use clap::Args;
use waymark_connectors::config::DestinationKind;
use waymark_connectors::sink::jsonl;

use super::context::open_state;
use super::instances::instance;
use super::{ExitStatus, UsageError};

/// Arguments of `waymark compact`.
#[derive(Debug, Args)]
pub struct CompactArgs {
    /// The workflow file (its destination must be `jsonl`).
    workflow: PathBuf,
    /// Only these streams' tables (repeatable; default: all).
    #[arg(long = "stream", value_name = "NAME")]
    streams: Vec<String>,
    /// A file with [tenants]: the tenant whose tables to compact.
    #[arg(long, value_name = "ID")]
    tenant: Option<String>,
}

/// Compacts each table; holds the state directory's lock so no run writes meanwhile.
pub async fn run(state_dir: &Path, args: CompactArgs) -> anyhow::Result<ExitStatus> {
    let workflow = instance(&args.workflow, args.tenant.as_deref()).await?;
    if workflow.file().destination.kind != DestinationKind::Jsonl {
        return Err(UsageError(format!(
            "{}: compact works on jsonl destinations only",
            args.workflow.display()
        ))
        .into());
    }
    let _lock = open_state(state_dir)?;
    let mut tables: Vec<&str> = Vec::new();
    for stream in workflow.streams() {
        if !args.streams.is_empty() && !args.streams.contains(&stream.name) {
            continue;
        }
        let table = stream.deletes.as_deref().unwrap_or(&stream.name);
        if !tables.contains(&table) {
            tables.push(table);
        }
    }
    for name in &args.streams {
        workflow.stream(name)?;
    }
    for table in tables {
        let dir = workflow.destination_path().join(table);
        let done = jsonl::compact(&dir)?;
        out!(
            "{table}: merged {} page files ({} lines) into {} — {} keys",
            done.files,
            done.lines,
            dir.join("compacted.jsonl").display(),
            done.keys
        );
    }
    Ok(ExitStatus::Success)
}
