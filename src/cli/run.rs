//! `waymark run`, `waymark resume` and `waymark backfill`.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Args;
use waymark_connectors::config::StreamSection;
use waymark_connectors::Workflow;
use waymark_engine::Timestamp;

use super::context::{find_run, hold_state, open_existing_state, rfc3339, stop_on_signal, Budget};
use super::instances::{instance, instances, of_sync, sync_name};
use super::{ExitStatus, UsageError};
use crate::sync::{dry_run, resume_run, run_scope, run_streams, Invocation};

/// Arguments of `waymark run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// The workflow file.
    workflow: PathBuf,
    /// Only these streams (repeatable; default: all, in file order).
    #[arg(long = "stream", value_name = "NAME")]
    streams: Vec<String>,
    /// A file with [tenants]: only these tenants (repeatable; default: every tenant
    /// listed, one after the other).
    #[arg(long = "tenant", value_name = "ID")]
    tenants: Vec<String>,
    /// Abandon an unfinished run (journaled) and start a new one from the last committed
    /// checkpoint.
    #[arg(long)]
    fresh: bool,
    /// Read each stream's next run from the API and write nothing (no journal step,
    /// destination row or checkpoint): pages, records, what would be written or
    /// dead-lettered, a few records as they would be written.
    #[arg(long)]
    dry_run: bool,
    #[command(flatten)]
    budget: Budget,
}

/// Arguments of `waymark resume`.
#[derive(Debug, Args)]
pub struct ResumeArgs {
    /// The run to resume (a unique prefix or suffix of its id is enough).
    run_id: String,
    #[command(flatten)]
    budget: Budget,
}

/// Arguments of `waymark backfill`.
#[derive(Debug, Args)]
pub struct BackfillArgs {
    /// The workflow file.
    workflow: PathBuf,
    /// The stream to backfill.
    #[arg(long)]
    stream: String,
    /// A file with [tenants]: the tenant whose stream to backfill.
    #[arg(long, value_name = "ID")]
    tenant: Option<String>,
    /// Start of the range, RFC 3339 (absolute, so the same command resumes it).
    #[arg(long, value_parser = rfc3339)]
    from: Timestamp,
    /// End of the range (exclusive), RFC 3339.
    #[arg(long, value_parser = rfc3339)]
    to: Timestamp,
    /// Abandon the backfill's unfinished run and start it again from its checkpoint.
    #[arg(long)]
    fresh: bool,
    #[command(flatten)]
    budget: Budget,
}

impl RunArgs {
    /// Whether this run only reads (`--dry-run`).
    pub(crate) fn reads_only(&self) -> bool {
        self.dry_run
    }

    /// The workflow path made absolute against `cwd`.
    pub(crate) fn rebase(&mut self, cwd: &Path) {
        self.workflow = cwd.join(&self.workflow);
    }

    /// What `serve` runs for this command: the sync and each stream, in file order; and
    /// whether the summaries are JSON. Limits and `--fresh` are refused: serve runs its
    /// streams as scheduled.
    pub(crate) fn for_serve(&self) -> anyhow::Result<(Vec<(String, String)>, bool)> {
        let budget = &self.budget;
        if self.fresh || budget.max_pages.is_some() || budget.max_duration.is_some() {
            return Err(UsageError(
                "`waymark serve` holds this state directory and runs its streams as \
                 scheduled: --fresh, --max-pages and --max-duration need the directory \
                 (stop serve first), or ask for a plain run"
                    .into(),
            )
            .into());
        }
        let workflow = Workflow::load(&self.workflow)?;
        let names: Vec<String> = match self.streams.is_empty() {
            true => workflow.streams().iter().map(|s| s.name.clone()).collect(),
            false => self.streams.clone(),
        };
        let syncs = match (workflow.tenants(), self.tenants.is_empty()) {
            (Some(_), true) => {
                return Err(UsageError(format!(
                    "{} has [tenants]: `waymark serve` runs each tenant on its schedule; name \
                     the ones to run now with --tenant",
                    workflow.path().display()
                ))
                .into())
            }
            (_, true) => vec![sync_name(&workflow, None)?],
            (_, false) => self
                .tenants
                .iter()
                .map(|t| sync_name(&workflow, Some(t)))
                .collect::<anyhow::Result<_>>()?,
        };
        let mut scopes = Vec::new();
        for sync in &syncs {
            for name in &names {
                scopes.push((sync.clone(), workflow.stream(name)?.name.clone()));
            }
        }
        Ok((scopes, budget.json))
    }
}

/// `waymark run <workflow>`.
pub async fn run(state_dir: &Path, args: RunArgs) -> anyhow::Result<ExitStatus> {
    let workflows = instances(&args.workflow, &args.tenants).await?;
    if args.dry_run {
        // Answered by the process holding the directory (see `attach`), its signals stay
        // its own.
        let stop = match super::attach::attached() {
            true => Default::default(),
            false => stop_on_signal()?,
        };
        // The journal says where each stream's next run starts; a directory no run has
        // used is not created.
        let dir = match state_dir.join("LOCK").is_file() {
            true => Some(open_existing_state(state_dir)?),
            false => None,
        };
        let mut ok = true;
        for workflow in &workflows {
            let streams = selected(workflow, &args.streams)?;
            ok &= dry_run(
                dir.as_ref(),
                workflow,
                &streams,
                args.fresh,
                &args.budget,
                &stop,
            )
            .await?;
        }
        return Ok(match ok {
            true => ExitStatus::Success,
            false => ExitStatus::Failed,
        });
    }
    let stop = stop_on_signal()?;
    let (mut dir, _answering) = hold_state(state_dir)?;
    if let [workflow] = workflows.as_slice() {
        return run_workflow(&mut dir, workflow, &args, &stop).await;
    }
    // Each tenant in turn; one that cannot run does not keep the others from running.
    let mut worst = ExitStatus::Success;
    for workflow in &workflows {
        if stop.load(std::sync::atomic::Ordering::SeqCst) {
            break;
        }
        let status = match run_workflow(&mut dir, workflow, &args, &stop).await {
            Ok(status) => status,
            Err(e) => {
                tracing::error!("{}: {}", workflow.name(), super::describe(&e));
                ExitStatus::Failed
            }
        };
        worst = worst.or_worse(status);
    }
    Ok(worst)
}

async fn run_workflow(
    dir: &mut waymark_engine::StateDir,
    workflow: &Workflow,
    args: &RunArgs,
    stop: &std::sync::atomic::AtomicBool,
) -> anyhow::Result<ExitStatus> {
    let streams = selected(workflow, &args.streams)?;
    run_streams(dir, workflow, &streams, args.fresh, &args.budget, stop).await
}

/// The streams named (all of them, in file order, when none is).
fn selected<'w>(
    workflow: &'w Workflow,
    names: &[String],
) -> anyhow::Result<Vec<&'w StreamSection>> {
    Ok(match names.is_empty() {
        true => workflow.streams().iter().collect(),
        false => names
            .iter()
            .map(|name| workflow.stream(name))
            .collect::<Result<_, _>>()?,
    })
}

/// `waymark backfill <workflow> --stream S --from T1 --to T2`: re-reads `[T1, T2)` under a
/// checkpoint of its own; the stream's incremental checkpoint never moves, and both resume
/// independently.
pub async fn backfill(state_dir: &Path, args: BackfillArgs) -> anyhow::Result<ExitStatus> {
    let stop = stop_on_signal()?;
    let workflow = instance(&args.workflow, args.tenant.as_deref()).await?;
    let stream = workflow.stream(&args.stream)?.clone();
    let (from, to) = (args.from, args.to);
    if from >= to {
        return Err(UsageError(format!("--from {from} is not before --to {to}")).into());
    }
    if !stream.sends_window() {
        return Err(UsageError(format!(
            "stream {} has no window parameters, so the API cannot be asked for a time range",
            stream.name
        ))
        .into());
    }
    let (mut dir, _answering) = hold_state(state_dir)?;
    let plan = workflow.backfill_plan(&stream, from, to, args.fresh);
    if let Some(done) = dir.journal().checkpoint(&plan.sync, &plan.stream)? {
        if done.complete && done.window.end >= to {
            out!(
                "{}/{}: already complete (run {}); choose another range to backfill again",
                workflow.name(),
                plan.stream,
                done.run_id
            );
            return Ok(ExitStatus::Success);
        }
    }
    let invocation = Invocation::new(&dir, &workflow, &args.budget, &stop)?;
    let states = run_scope(&mut dir, &invocation, &workflow, &stream, &plan).await?;
    Ok(ExitStatus::of_runs(&states))
}

/// `waymark resume <run-id>`.
pub async fn resume(state_dir: &Path, args: ResumeArgs) -> anyhow::Result<ExitStatus> {
    let stop = stop_on_signal()?;
    let (mut dir, _answering) = hold_state(state_dir)?;
    let run = find_run(&dir, &args.run_id)?;
    let state = dir.journal().load(run)?;
    let path = PathBuf::from(&state.started.workflow_path);
    let workflow = of_sync(&path, &state.started.sync)
        .await
        .with_context(|| format!("loading the workflow of run {run}"))?;
    let invocation = Invocation::new(&dir, &workflow, &args.budget, &stop)?;
    let state = resume_run(&mut dir, &invocation, &workflow, state).await?;
    Ok(ExitStatus::of_runs(&[state]))
}
