//! `waymark trace <stream> <key>`: every run and page that saw a record, the version it had
//! and what became of it — the answer to "why is record X missing (or old)?".

use std::path::Path;

use clap::Args;
use serde_json::json;
use waymark_connectors::config::split_tenant;
use waymark_connectors::http::excerpt::printable;
use waymark_connectors::state::audit::Audit;
use waymark_connectors::state::dead_letters::DeadLetters;

use super::context::open_existing_state;
use super::{ExitStatus, UsageError};

/// Arguments of `waymark trace`.
#[derive(Debug, Args)]
pub struct TraceArgs {
    /// The stream.
    stream: String,
    /// The record's key (a composite key as its JSON array, e.g. `["eu","42"]`).
    key: String,
    /// The sync (needed when two syncs have a stream of that name).
    #[arg(long)]
    sync: Option<String>,
    /// The tenant (with [tenants]: each tenant's instance of a sync is a sync of its own).
    #[arg(long, value_name = "ID")]
    tenant: Option<String>,
    /// One JSON object per line.
    #[arg(long)]
    json: bool,
}

/// Runs `waymark trace`.
pub fn run(state_dir: &Path, args: TraceArgs) -> anyhow::Result<ExitStatus> {
    let dir = open_existing_state(state_dir)?;
    let tenants: Vec<String> = args.tenant.iter().cloned().collect();
    let audit = Audit::new(dir.root());
    let known = audit.streams()?;
    let base = |s: &str| s.split('@').next().unwrap_or(s).to_string();
    let mut syncs: Vec<String> = known
        .iter()
        .filter(|(sync, stream)| {
            base(stream) == args.stream
                && super::status::wanted(sync, args.sync.as_deref(), &tenants)
        })
        .map(|(sync, _)| sync.clone())
        .collect();
    syncs.dedup();
    let sync = match syncs.as_slice() {
        [one] => one.clone(),
        [] => {
            let mut names: Vec<String> = known
                .iter()
                .map(|(s, t)| format!("{s}/{}", base(t)))
                .collect();
            names.dedup();
            return Err(UsageError(format!(
                "no stream `{}` in the audit index{}",
                args.stream,
                match names.is_empty() {
                    true => " (no run has written anything yet)".to_string(),
                    false => format!("; streams: {}", names.join(", ")),
                }
            ))
            .into());
        }
        many => {
            // Instances of one sync, one per tenant: the tenant is what to choose.
            let names: Vec<&str> = many.iter().map(|s| split_tenant(s).0).collect();
            let tenanted =
                names.windows(2).all(|w| w[0] == w[1]) && split_tenant(&many[0]).1.is_some();
            let shown = many.iter().take(10).cloned().collect::<Vec<_>>().join(", ");
            let more = match many.len() > 10 {
                true => format!(" and {} more", many.len() - 10),
                false => String::new(),
            };
            return Err(UsageError(match tenanted {
                true => format!(
                    "{} tenants of sync {} have a stream `{}`; choose one with --tenant ({shown}{more})",
                    many.len(),
                    names[0],
                    args.stream,
                ),
                false => format!(
                    "{} syncs have a stream `{}`; choose one with --sync ({shown}{more})",
                    many.len(),
                    args.stream,
                ),
            })
            .into());
        }
    };
    let sightings = audit.trace(&sync, &args.stream, &args.key)?;
    let letters: Vec<_> = DeadLetters::new(dir.root(), &sync, &args.stream)
        .list()?
        .into_iter()
        .filter(|l| l.key.as_deref() == Some(args.key.as_str()))
        .collect();
    if args.json {
        for s in &sightings {
            out!("{}", serde_json::to_string(s)?);
        }
        for l in &letters {
            out!("{}", json!({"dead_letter": l}));
        }
        return Ok(ExitStatus::Success);
    }
    if sightings.is_empty() {
        out!(
            "no run of {sync}/{} has seen key {} (within the audit's retention, the sync's \
             `keep`): the API never returned it in a window synced so far — check the \
             stream's filters and window, or reconcile",
            args.stream,
            printable(&args.key)
        );
        return Ok(ExitStatus::Success);
    }
    // Keys, versions and reasons are the API's text.
    out!("{sync}/{} key {}:", args.stream, printable(&args.key));
    for s in &sightings {
        out!(
            "  {}  run {} page {:>5}  version {:<28}  {}",
            s.at,
            s.run_id,
            s.page,
            printable(s.version.as_deref().unwrap_or("-")),
            printable(&s.outcome)
        );
    }
    for l in &letters {
        out!(
            "  dead letter (run {} page {}): {}",
            l.run_id,
            l.page,
            printable(&l.reason)
        );
    }
    Ok(ExitStatus::Success)
}
