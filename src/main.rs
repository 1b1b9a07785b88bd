//! The `waymark` command: checkpointed API syncs that survive `kill -9`.

mod cli;
mod sandbox;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let args = cli::Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_env("WAYMARK_LOG").unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(if args.quiet { "warn" } else { "info" })
    });
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return cli::ExitStatus::Failed.into();
        }
    };
    match runtime.block_on(cli::dispatch(args)) {
        Ok(status) => status.into(),
        Err(e) => {
            eprintln!("error: {e:#}");
            cli::ExitStatus::of_error(&e).into()
        }
    }
}
