//! `waymark serve`: run workflows on their schedules until stopped.

use std::path::{Path, PathBuf};

use clap::Args;

use super::context::{hold_state_for, stop_on_signal};
use super::ExitStatus;
use super::UsageError;
use crate::serve::cluster::ClusterOptions;
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
    /// Share the work with other `serve --cluster` workers through PostgreSQL: each
    /// (sync, tenant, stream) partition runs on one worker at a time, under a lease. The
    /// connection string is read from the environment variable named by --cluster-url-env.
    #[arg(long)]
    cluster: bool,
    /// The environment variable holding the coordinator's PostgreSQL connection string.
    #[arg(
        long,
        value_name = "VAR",
        default_value = "WAYMARK_CLUSTER_URL",
        requires = "cluster"
    )]
    cluster_url_env: String,
    /// How long a lease lasts without renewal (renewed every third of it): a worker that
    /// died is taken over after at most this long.
    #[arg(long, value_name = "DURATION", default_value = "15s", requires = "cluster",
          value_parser = humantime::parse_duration)]
    lease_ttl: std::time::Duration,
    /// This worker's id in the cluster (default: host name and process id).
    #[arg(long, value_name = "ID", requires = "cluster")]
    worker_id: Option<String>,
    /// A PEM file of extra CA certificates for the coordinator's TLS.
    #[arg(long, value_name = "FILE", requires = "cluster")]
    cluster_ca_file: Option<PathBuf>,
}

/// `waymark serve <workflows…>`.
pub async fn run(state_dir: &Path, args: ServeArgs) -> anyhow::Result<ExitStatus> {
    let stop = stop_on_signal()?;
    let (changes, changes_rx) = tokio::sync::mpsc::unbounded_channel();
    let cluster = match args.cluster {
        false => None,
        true => Some(cluster_options(&args)?),
    };
    let (dir, _answering) = hold_state_for(state_dir, Some(changes.clone()))?;
    let options = Options {
        paths: args.paths,
        max_concurrent_runs: usize::from(args.max_concurrent_runs),
        listen: args.listen,
        webhook_listen: args.webhook_listen,
        changes,
        cluster,
    };
    serve(dir, options, changes_rx, stop).await
}

fn cluster_options(args: &ServeArgs) -> anyhow::Result<ClusterOptions> {
    let var = &args.cluster_url_env;
    let url = std::env::var(var).map_err(|_| {
        UsageError(format!(
            "serve --cluster: environment variable {var} is not set (the coordinator's \
             PostgreSQL connection string)"
        ))
    })?;
    if args.lease_ttl < std::time::Duration::from_secs(1) {
        return Err(UsageError("--lease-ttl must be at least 1s".into()).into());
    }
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "worker".into());
    Ok(ClusterOptions {
        url,
        url_env: var.clone(),
        ca_file: args.cluster_ca_file.clone(),
        worker: args
            .worker_id
            .clone()
            .unwrap_or_else(|| format!("{host}-{}", std::process::id())),
        ttl: args.lease_ttl,
    })
}
