//! `waymark schema-history <workflow> --stream S`: the shape a stream's records were
//! observed to have (each field's types, nulls, presence, first and last seen) and every
//! change of it, with what the stream's `schema_policy` did.

use std::path::{Path, PathBuf};

use clap::Args;
use waymark_connectors::state::schema::Schema;
use waymark_connectors::Workflow;

use super::{ExitStatus, UsageError};

/// Arguments of `waymark schema-history`.
#[derive(Debug, Args)]
pub struct SchemaHistoryArgs {
    /// The workflow file.
    workflow: PathBuf,
    /// The stream.
    #[arg(long)]
    stream: String,
    /// The shape and its history as one JSON object.
    #[arg(long)]
    json: bool,
}

/// Runs `waymark schema-history`. It reads one file the runs replace whole, so it needs no
/// lock: it answers while `serve` or a run holds the state directory.
pub fn run(state_dir: &Path, args: SchemaHistoryArgs) -> anyhow::Result<ExitStatus> {
    let workflow = Workflow::load(&args.workflow)?;
    let stream = workflow.stream(&args.stream).map_err(|_| {
        let names: Vec<&str> = workflow.streams().iter().map(|s| s.name.as_str()).collect();
        UsageError(format!(
            "{} has no stream `{}` (streams: {})",
            args.workflow.display(),
            args.stream,
            names.join(", ")
        ))
    })?;
    let file = Schema::file(state_dir, workflow.name(), &stream.name);
    let shape = Schema::read(&file)?;
    if args.json {
        out!("{}", serde_json::to_string(&shape)?);
        return Ok(ExitStatus::Success);
    }
    if shape.records == 0 {
        out!(
            "{}/{}: no records observed yet (a run records their shape)",
            workflow.name(),
            stream.name
        );
        return Ok(ExitStatus::Success);
    }
    out!(
        "{}/{}: {} records observed, {} fields; schema_policy = \"{}\"",
        workflow.name(),
        stream.name,
        shape.records,
        shape.fields.len(),
        format!("{:?}", stream.schema_policy).to_lowercase()
    );
    let width = shape
        .fields
        .keys()
        .map(|p| p.len())
        .max()
        .unwrap_or(5)
        .max(5);
    out!(
        "  {:<width$}  {:<16}  {:<5}  {:<6}  {:<24}  last seen",
        "field",
        "types",
        "null",
        "always",
        "first seen"
    );
    for (path, f) in &shape.fields {
        out!(
            "  {path:<width$}  {:<16}  {:<5}  {:<6}  {:<24}  {}",
            f.types.join("|"),
            if f.nullable { "yes" } else { "no" },
            if f.required { "yes" } else { "" },
            f.first_seen.to_string(),
            f.last_seen
        );
    }
    match shape.history.is_empty() {
        true => out!("no change since the first records"),
        false => {
            out!("changes, oldest first:");
            for c in &shape.history {
                out!("  {} page {}: {} — {}", c.at, c.page, c.change, c.action);
            }
        }
    }
    Ok(ExitStatus::Success)
}
