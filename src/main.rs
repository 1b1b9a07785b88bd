//! The `waymark` command: checkpointed API syncs that survive `kill -9`.

mod cli;
mod sandbox;
mod sync;

use std::io::IsTerminal;
use std::process::ExitCode;

fn main() -> ExitCode {
    let args = cli::Cli::from_command_line();
    let json = args.log_format == cli::LogFormat::Json;
    // Per-step events (target `waymark_step`) are for JSON logs; text shows them on request.
    let default = match (args.quiet, json) {
        (true, _) => "warn".to_string(),
        (false, true) => "info".to_string(),
        (false, false) => "info,waymark_step=off".to_string(),
    };
    // --log-level, else WAYMARK_LOG, else RUST_LOG, else the default.
    use tracing_subscriber::EnvFilter;
    let flag = match args.log_level.as_deref().map(EnvFilter::try_new) {
        Some(Err(e)) => {
            eprintln!("error: --log-level: {e} (e.g. `info`, `debug`, `waymark_step=info`)");
            return cli::ExitStatus::BadInput.into();
        }
        Some(Ok(filter)) => Some(filter),
        None => None,
    };
    let filter = flag
        .or_else(|| EnvFilter::try_from_env("WAYMARK_LOG").ok())
        .or_else(|| EnvFilter::try_from_default_env().ok())
        .unwrap_or_else(|| EnvFilter::new(default));
    // Colour only on a terminal: never escape codes in a file or a pipe.
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match json {
        true => logs.json().flatten_event(true).init(),
        false => logs.with_target(false).init(),
    }
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
            eprintln!("error: {}", cli::describe(&e));
            cli::ExitStatus::of_error(&e).into()
        }
    }
}
