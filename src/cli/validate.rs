//! `waymark validate` and `waymark schema`: check workflow files without running them.

use std::path::PathBuf;

use clap::Args;
use waymark_connectors::config::tenants::{file_path, read_file};
use waymark_connectors::config::{self, PaginationKind};
use waymark_connectors::Workflow;

use super::instances::some_ids;
use super::ExitStatus;

/// Arguments of `waymark validate`.
#[derive(Debug, Args)]
pub struct ValidateArgs {
    /// Workflow files.
    #[arg(required = true)]
    files: Vec<PathBuf>,
    /// Treat warnings as errors (exit 2).
    #[arg(long)]
    strict: bool,
}

/// Validates each file: errors with `file:line:col` and the key path, then warnings.
pub fn validate(args: ValidateArgs) -> anyhow::Result<ExitStatus> {
    let mut status = ExitStatus::Success;
    for path in &args.files {
        let workflow = match Workflow::load(path) {
            Ok(w) => w,
            Err(e) => {
                eprintln!("error: {e}");
                status = ExitStatus::BadInput;
                continue;
            }
        };
        let warnings = workflow.warnings();
        for (key, message) in &warnings {
            let (line, column) = workflow.position(key);
            eprintln!(
                "warning: {}:{line}:{column}: {key}: {message}",
                path.display()
            );
        }
        if args.strict && !warnings.is_empty() {
            // Not valid under --strict: say so, and why, instead of "valid".
            out!(
                "{}: not valid with --strict: {} warning{} (above)",
                path.display(),
                warnings.len(),
                if warnings.len() == 1 { "" } else { "s" }
            );
            status = ExitStatus::BadInput;
            continue;
        }
        let streams: Vec<String> = workflow
            .streams()
            .iter()
            .map(|s| {
                let style = serde_json::to_value(s.pagination.kind)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default();
                match &s.deletes {
                    Some(target) => format!("{} (deletions of {target}, {style})", s.name),
                    None if s.pagination.kind == PaginationKind::Keyset || s.sends_window() => {
                        format!("{} (incremental, {style})", s.name)
                    }
                    None => format!("{} (full refresh, {style})", s.name),
                }
            })
            .collect();
        let tenants = match tenants(&workflow) {
            Ok(tenants) => tenants,
            Err(e) => {
                eprintln!("error: {e}");
                status = ExitStatus::BadInput;
                continue;
            }
        };
        out!(
            "{}: valid — sync {}{tenants}, streams: {}",
            path.display(),
            workflow.name(),
            streams.join(", ")
        );
    }
    Ok(status)
}

/// With `[tenants]` listed in a file: each tenant's instance is checked too, and the
/// tenants are named (`, 3 tenants (acme, beta, gamma)`); a query is not run (it needs the
/// destination: `waymark run` and `serve` list them).
fn tenants(workflow: &Workflow) -> anyhow::Result<String> {
    let Some(section) = workflow.tenants() else {
        return Ok(String::new());
    };
    let Some(file) = file_path(section, workflow.path()) else {
        return Ok(", tenants from a query on the destination (not run here)".into());
    };
    let (rows, row) = read_file(&file)?;
    let listed = section.tenants(&file.display().to_string(), rows, row)?;
    for tenant in &listed {
        workflow.instantiate(tenant)?;
    }
    Ok(format!(
        ", {} tenants ({})",
        listed.len(),
        some_ids(&listed)
    ))
}

/// Prints the JSON Schema of workflow files.
pub fn schema() -> anyhow::Result<ExitStatus> {
    out!("{}", serde_json::to_string_pretty(&config::schema())?);
    Ok(ExitStatus::Success)
}
