//! `waymark sandbox`: serve the fake API until stopped.

use std::time::Duration;

use clap::Args;

use super::ExitStatus;
use crate::sandbox::{self, Config};

/// Arguments of `waymark sandbox`.
#[derive(Debug, Args)]
pub struct SandboxArgs {
    /// Port on 127.0.0.1 (0: any free port; the address is printed on stdout).
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// Number of orders.
    #[arg(long, default_value_t = 10_000)]
    records: u64,
    /// Orders sharing each `updated_at` value.
    #[arg(long, default_value_t = 5)]
    tie: u64,
    /// Seed of the generated data and of injected faults.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Latency added to every page (e.g. `20ms`).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "0s")]
    latency: Duration,
    /// Fraction of page requests answered with HTTP 500 (0.0 – 1.0).
    #[arg(long, default_value_t = 0.0)]
    fail_rate: f64,
}

/// Runs `waymark sandbox`.
pub async fn run(args: SandboxArgs) -> anyhow::Result<ExitStatus> {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", args.port)).await?;
    let addr = listener.local_addr()?;
    out!("sandbox listening on http://{addr}");
    let config = Config {
        records: args.records,
        tie: args.tie.max(1),
        seed: args.seed,
        latency: args.latency,
        fail_rate: args.fail_rate.clamp(0.0, 1.0),
        ..Config::default()
    };
    sandbox::serve(listener, config).await?;
    Ok(ExitStatus::Success)
}
