//! `waymark serve`: run workflows on their schedules until stopped.

use std::path::{Path, PathBuf};

use clap::Args;

use super::context::{hold_state_for, stop_on_signal};
use super::ExitStatus;
use crate::serve::{serve, Options};

/// Arguments of `waymark serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Workflow files, or directories of them (their `*.toml` files).
    #[arg(required = true, value_name = "WORKFLOW")]
    paths: Vec<PathBuf>,
    /// At most this many runs at once (runs mostly wait on the network, so a few per core).
    #[arg(long, value_name = "N", default_value_t = 4,
          value_parser = clap::value_parser!(u16).range(1..))]
    max_concurrent_runs: u16,
    /// The local API's address (`/api/…`, `/metrics`, `/healthz`, `/readyz`); beyond
    /// loopback it needs `WAYMARK_API_TOKEN` (the bearer token every request must carry).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:7300")]
    listen: std::net::SocketAddr,
    /// Receive webhooks (`POST /hooks/{sync}/{stream}`) on this address instead of the
    /// local API's: the one facing the senders (the internet, through a proxy), while the
    /// API stays on loopback. Webhooks need no token: each is checked by its signature.
    #[arg(long, value_name = "ADDR")]
    webhook_listen: Option<std::net::SocketAddr>,
}

/// `waymark serve <workflows…>`.
pub async fn run(state_dir: &Path, args: ServeArgs) -> anyhow::Result<ExitStatus> {
    let stop = stop_on_signal()?;
    let (changes, changes_rx) = tokio::sync::mpsc::unbounded_channel();
    let (dir, _answering) = hold_state_for(state_dir, Some(changes.clone()))?;
    let options = Options {
        paths: args.paths,
        max_concurrent_runs: usize::from(args.max_concurrent_runs),
        listen: args.listen,
        webhook_listen: args.webhook_listen,
        changes,
    };
    serve(dir, options, changes_rx, stop).await
}
