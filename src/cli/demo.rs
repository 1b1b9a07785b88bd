//! `waymark demo`: a real sync, with nothing to install, against an in-process sandbox.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use waymark_connectors::Workflow;

use super::context::{hold_state, stop_on_signal, Budget};
use super::ExitStatus;
use crate::sandbox::{self, Config};
use crate::sync::run_streams;

/// Arguments of `waymark demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Orders the sandbox serves.
    #[arg(long, default_value_t = 200_000)]
    records: u64,
    /// Directory for the workflow file, the SQLite database and the state.
    #[arg(long, default_value = "waymark-demo")]
    dir: PathBuf,
    #[command(flatten)]
    budget: Budget,
}

/// Runs `waymark demo`, its state in `state_dir` (`--state-dir`, `WAYMARK_STATE_DIR`), by
/// default `<dir>/state`.
pub async fn run(args: DemoArgs, state_dir: Option<PathBuf>) -> anyhow::Result<ExitStatus> {
    let stop = stop_on_signal()?;
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
    let addr = listener.local_addr()?;
    let config = Config {
        orders: args.records,
        ..Config::default()
    };
    tokio::spawn(async move {
        if let Err(e) = sandbox::serve(listener, config).await {
            tracing::error!("sandbox stopped: {e}");
        }
    });
    std::fs::create_dir_all(&args.dir)
        .with_context(|| format!("creating {}", args.dir.display()))?;
    let workflow_path = args.dir.join("demo.toml");
    let text = include_str!("../../workflows/orders.toml");
    std::fs::write(&workflow_path, text)
        .with_context(|| format!("writing {}", workflow_path.display()))?;
    // The workflow reads the sandbox address from this variable.
    std::env::set_var("WAYMARK_SANDBOX_URL", format!("http://{addr}"));
    let workflow = Workflow::load(&workflow_path)?;
    let state_dir = state_dir.unwrap_or_else(|| args.dir.join("state"));
    let (mut dir, _answering) = hold_state(&state_dir)?;
    let streams: Vec<_> = workflow.streams().iter().collect();
    out!(
        "sandbox serving {} orders on http://{addr}; syncing into {}",
        args.records,
        workflow.destination_path().display()
    );
    let status = run_streams(&mut dir, &workflow, &streams, false, &args.budget, &stop).await?;
    let state = state_dir.display();
    let me = std::env::args().next().unwrap_or_else(|| "waymark".into());
    out!("");
    out!("Inspect what happened:");
    out!("  {me} --state-dir {state} runs");
    out!("  {me} --state-dir {state} journal <run-id>     # every step, journaled before the next");
    out!(
        "  sqlite3 {} 'SELECT count(*) FROM orders'",
        workflow.destination_path().display()
    );
    match status {
        ExitStatus::Paused => {
            out!("The run paused: run the demo again (same --dir) and it resumes where it stopped.")
        }
        _ => out!(
            "Run the demo again: the sandbox's data is unchanged, so the next run re-reads the \
             overlap and writes nothing new."
        ),
    }
    out!(
        "Start over: remove {} (workflow, database and state).",
        args.dir.display()
    );
    Ok(status)
}
