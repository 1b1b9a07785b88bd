//! Command-line interface: one module per subcommand, each resolving its arguments into a
//! validated configuration before touching the engine. Data goes to stdout, logs to stderr.

/// Prints one line of data on stdout; a closed pipe (`waymark runs | head`) ends the
/// process quietly instead of panicking.
macro_rules! out {
    ($($arg:tt)*) => { $crate::cli::emit(format_args!($($arg)*)) };
}

pub mod attach;
mod checkpoint;
mod cluster;
mod compact;
pub mod context;
mod demo;
mod dlq;
mod fixtures;
pub(crate) mod instances;
mod journal;
pub mod progress;
mod reconcile;
mod replay;
mod run;
pub(crate) mod runs;
mod sandbox;
mod schema_history;
mod serve;
mod shell;
pub(crate) mod status;
mod trace;
mod validate;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use waymark_connectors::http::excerpt::printable_lines;
use waymark_connectors::{config, http::api};
use waymark_engine::{driver, journal as engine_journal, staging, state_dir};

/// Durable, checkpointed API syncs: every step journaled, every run resumable.
#[derive(Debug, Parser)]
#[command(name = "waymark", version, about)]
pub struct Cli {
    /// State directory (journal, staged pages, lock). Default: the nearest `.waymark` that a
    /// run used, in the working directory or one above it (as git finds `.git`), else
    /// `.waymark` here; for `demo`, its `--dir`/state.
    #[arg(
        long,
        global = true,
        env = "WAYMARK_STATE_DIR",
        help_heading = "Global options"
    )]
    pub state_dir: Option<PathBuf>,
    /// Only warnings and errors on stderr (`WAYMARK_LOG` overrides, e.g. `debug`).
    #[arg(long, short, global = true, help_heading = "Global options")]
    pub quiet: bool,
    /// Log level or filter (`info`, `debug`, `waymark_step=info`…); `WAYMARK_LOG` and
    /// `RUST_LOG` are read too.
    #[arg(
        long,
        global = true,
        value_name = "FILTER",
        help_heading = "Global options"
    )]
    pub log_level: Option<String>,
    /// `text` (default) or `json`: one JSON object per line, and one per journaled step
    /// (run, sync, stream, step, cursor before/after, counts, duration_ms, outcome).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, help_heading = "Global options")]
    pub log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run every stream of a workflow: start a run, or resume the stream's unfinished one.
    Run(run::RunArgs),
    /// Run workflows on their schedules, several streams at once, until SIGTERM/SIGINT
    /// (then every run pauses at a step boundary and it exits 0).
    Serve(serve::ServeArgs),
    /// Resume one unfinished run by id.
    Resume(run::ResumeArgs),
    /// Re-read a time range of one stream under its own checkpoint.
    Backfill(run::BackfillArgs),
    /// Show a run's step journal, or verify / reset the journal.
    Journal(journal::JournalArgs),
    /// List the runs in the journal.
    Runs(runs::RunsArgs),
    /// Serve the sandbox API on loopback (a fake SaaS API for demos and tests).
    Sandbox(sandbox::SandboxArgs),
    /// Run a real sync against an in-process sandbox into a SQLite file.
    Demo(demo::DemoArgs),
    /// Run a workflow against its live API and keep every request/response pair as fixture
    /// files (secrets and --scrub fields scrubbed); again into the same directory: the next,
    /// incremental run.
    Record(fixtures::RecordArgs),
    /// Run a workflow offline against recorded fixtures (served on loopback) into a scratch
    /// destination and check the fixtures' expect.toml (exit 1 when it falls short).
    Test(fixtures::TestArgs),
    /// Check workflow files (errors with file:line:col and the key; warnings) without
    /// running them.
    Validate(validate::ValidateArgs),
    /// Per stream: checkpoint, lag, last runs, dead letters and a health verdict (exit 1
    /// when unhealthy).
    Status(status::StatusArgs),
    /// A stream's checkpoint: show its history; set, reset, adopt the destination's, or
    /// restore an earlier value (each with a reason).
    Checkpoint(checkpoint::CheckpointArgs),
    /// Re-execute a run from its journal alone (--dry-run): checks each step against the
    /// engine's decision and shows what a resume would do.
    Replay(replay::ReplayArgs),
    /// Compare a stream's source and destination (counts per time bucket, keys, versions,
    /// optionally field values); report the gaps (exit 6) or --repair them in a journaled run.
    Reconcile(reconcile::ReconcileArgs),
    /// Every run and page that saw a record, its version and what became of it.
    Trace(trace::TraceArgs),
    /// The shape a stream's records were observed to have, and every change of it.
    SchemaHistory(schema_history::SchemaHistoryArgs),
    /// Dead letters by stream: list, show, retry through the destination, drop.
    Dlq(dlq::DlqArgs),
    /// Merge a JSONL destination's page files into one file per table (newest line per key).
    Compact(compact::CompactArgs),
    /// A cluster of `serve --cluster` workers: its workers, leases and waiting partitions.
    Cluster(cluster::ClusterArgs),
    /// Print the JSON Schema of workflow files (for editors).
    Schema,
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions(shell::CompletionsArgs),
    /// Print the man page (roff).
    Man,
}

impl Cli {
    /// The command line's definition, each global option hidden from the help of the
    /// subcommands it means nothing to (the sandbox keeps no state; `schema` logs nothing).
    pub fn definition() -> clap::Command {
        const STATE: &[&str] = &["state_dir"];
        const ALL: &[&str] = &["state_dir", "quiet", "log_level", "log_format"];
        let mut cmd = <Cli as clap::CommandFactory>::command();
        for (name, hidden) in [
            ("sandbox", STATE),
            ("validate", STATE),
            ("record", STATE),
            ("test", STATE),
            ("schema", ALL),
            ("completions", ALL),
            ("man", ALL),
        ] {
            // A subcommand's own copy of a global option is not replaced by the global one.
            let copies: Vec<clap::Arg> = cmd
                .get_arguments()
                .filter(|arg| hidden.contains(&arg.get_id().as_str()))
                .map(|arg| arg.clone().hide(true))
                .collect();
            cmd = cmd.mut_subcommand(name, |sub| sub.args(copies));
        }
        cmd
    }

    /// Parses the process's command line (exits with usage on bad input, as clap does).
    pub fn from_command_line() -> Self {
        use clap::FromArgMatches;
        Self::from_arg_matches(&Self::definition().get_matches()).unwrap_or_else(|e| e.exit())
    }
}

/// How log lines look.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Documented exit codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    /// 0: every run completed (or the command succeeded).
    Success,
    /// 1: a run failed (source or destination error); it can be resumed.
    Failed,
    /// 2: bad input: usage, invalid workflow file, changed workflow, unknown run.
    BadInput,
    /// 3: a run paused (budget reached or interrupted); `waymark run` continues it.
    Paused,
    /// 4: the state directory is in use by another process.
    Busy,
    /// 5: the journal or a staged page is damaged.
    Corrupt,
    /// 6: a reconciliation found gaps between source and destination (and did not repair).
    Drift,
}

impl From<ExitStatus> for ExitCode {
    fn from(status: ExitStatus) -> Self {
        ExitCode::from(status.code())
    }
}

impl ExitStatus {
    /// The status of a set of runs: failed if any failed, else paused if any is not done.
    pub(crate) fn of_runs(states: &[waymark_engine::RunState]) -> ExitStatus {
        use waymark_engine::Status;
        if states.iter().any(|s| matches!(s.status, Status::Failed(_))) {
            ExitStatus::Failed
        } else if states
            .iter()
            .any(|s| matches!(s.status, Status::Paused(_) | Status::Running))
        {
            ExitStatus::Paused
        } else {
            ExitStatus::Success
        }
    }

    /// The worse of two statuses of runs: failed, else paused, else success (for one
    /// command running several workflows: a file's tenants).
    pub(crate) fn or_worse(self, other: ExitStatus) -> ExitStatus {
        let rank = |s: ExitStatus| match s {
            ExitStatus::Success => 0,
            ExitStatus::Paused => 1,
            _ => 2,
        };
        match rank(other) > rank(self) {
            true => other,
            false => self,
        }
    }

    const ALL: [ExitStatus; 7] = [
        ExitStatus::Success,
        ExitStatus::Failed,
        ExitStatus::BadInput,
        ExitStatus::Paused,
        ExitStatus::Busy,
        ExitStatus::Corrupt,
        ExitStatus::Drift,
    ];

    /// The process exit code.
    pub fn code(self) -> u8 {
        match self {
            ExitStatus::Success => 0,
            ExitStatus::Failed => 1,
            ExitStatus::BadInput => 2,
            ExitStatus::Paused => 3,
            ExitStatus::Busy => 4,
            ExitStatus::Corrupt => 5,
            ExitStatus::Drift => 6,
        }
    }

    /// The status of an exit code (an unknown one is a failure).
    pub fn from_code(code: u8) -> Self {
        Self::ALL
            .into_iter()
            .find(|s| s.code() == code)
            .unwrap_or(ExitStatus::Failed)
    }

    /// The exit status an error chain stands for.
    pub fn of_error(error: &anyhow::Error) -> Self {
        for cause in error.chain() {
            if let Some(e) = cause.downcast_ref::<state_dir::Error>() {
                return match e {
                    state_dir::Error::Busy { .. } => ExitStatus::Busy,
                    state_dir::Error::JournalUnreadable { .. }
                    | state_dir::Error::JournalLost { .. } => ExitStatus::Corrupt,
                    state_dir::Error::Io { .. } => ExitStatus::Failed,
                    state_dir::Error::Staging(_) => ExitStatus::Failed,
                };
            }
            if let Some(e) = cause.downcast_ref::<engine_journal::Error>() {
                return match e {
                    engine_journal::Error::Corrupt { .. }
                    | engine_journal::Error::Inconsistent { .. } => ExitStatus::Corrupt,
                    engine_journal::Error::UnknownRun(_) => ExitStatus::BadInput,
                    engine_journal::Error::Storage(_) => ExitStatus::Failed,
                };
            }
            if let Some(e) = cause.downcast_ref::<staging::Error>() {
                return match e {
                    staging::Error::Corrupt { .. } => ExitStatus::Corrupt,
                    staging::Error::Io { .. } | staging::Error::RecordTooLarge { .. } => {
                        ExitStatus::Failed
                    }
                };
            }
            if let Some(e) = cause.downcast_ref::<driver::Error>() {
                match e {
                    driver::Error::WorkflowChanged { .. }
                    | driver::Error::Finished { .. }
                    | driver::Error::CheckpointLost { .. } => return ExitStatus::BadInput,
                    // The wrapped journal or staging error decides.
                    driver::Error::Journal(_) | driver::Error::Staging(_) => {}
                    driver::Error::Destination(_) => return ExitStatus::Failed,
                }
            }
            if cause.downcast_ref::<config::Error>().is_some()
                || cause.downcast_ref::<api::Error>().is_some()
                || cause.downcast_ref::<UsageError>().is_some()
            {
                return ExitStatus::BadInput;
            }
        }
        ExitStatus::Failed
    }
}

/// An error and its causes on one line, `a: b: c`. A cause is left out when the text
/// before it already says it (an error that shows its source in its own message), so
/// nothing is said twice.
pub fn describe(error: &anyhow::Error) -> String {
    let mut text = error.to_string();
    for cause in error.chain().skip(1) {
        let cause = cause.to_string();
        if !text.contains(&cause) {
            text.push_str(": ");
            text.push_str(&cause);
        }
    }
    text
}

/// Writes one line to stdout (see `out!`), its control characters escaped (line breaks and
/// tabs aside): text from an API never drives the terminal. A JSON line reads as the same
/// JSON (see `printable`).
pub fn emit(args: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let text = args.to_string();
    let line = printable_lines(&text);
    if attach::out(&line) {
        return;
    }
    let mut stdout = std::io::stdout().lock();
    let written = stdout
        .write_all(line.as_bytes())
        .and_then(|()| stdout.write_all(b"\n"));
    if let Err(e) = written {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
    }
}

/// A command-line argument that does not make sense.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// Runs the chosen subcommand. A read command that finds the state directory held by a
/// running process asks that process instead, and so does a changing command that `serve`
/// carries out (see `attach`).
pub async fn dispatch(cli: Cli) -> anyhow::Result<ExitStatus> {
    let state_dir = cli.state_dir.clone().unwrap_or_else(nearest_state_dir);
    let asks = cli.command.reads_only() || cli.command.carried_by_serve();
    let done = match execute(&state_dir, cli).await {
        Err(e) if asks && context::is_busy(&e) => attach::ask(&state_dir, e).await,
        done => done,
    };
    attach::finish().await;
    done
}

/// The nearest `.waymark` a run used (it has a `LOCK`), from the working directory up;
/// none: `.waymark` in the working directory.
fn nearest_state_dir() -> PathBuf {
    let here = PathBuf::from(".waymark");
    let Ok(cwd) = std::env::current_dir() else {
        return here;
    };
    cwd.ancestors()
        .map(|dir| dir.join(".waymark"))
        .find(|dir| dir.join("LOCK").is_file())
        .map_or(here, |found| {
            // Said relative when it is here, so messages stay short.
            found
                .strip_prefix(&cwd)
                .map_or(found.clone(), Path::to_path_buf)
        })
}

async fn execute(state_dir: &Path, cli: Cli) -> anyhow::Result<ExitStatus> {
    match cli.command {
        Command::Run(args) => run::run(state_dir, args).await,
        Command::Resume(args) => run::resume(state_dir, args).await,
        Command::Serve(args) => serve::run(state_dir, args).await,
        Command::Backfill(args) => run::backfill(state_dir, args).await,
        Command::Journal(args) => journal::run(state_dir, args),
        Command::Runs(args) => runs::run(state_dir, args).await,
        Command::Sandbox(args) => sandbox::run(args).await,
        // The demo keeps its state beside its files unless told otherwise.
        Command::Demo(args) => demo::run(args, cli.state_dir).await,
        Command::Validate(args) => validate::validate(args),
        Command::Record(args) => fixtures::record(args).await,
        Command::Test(args) => fixtures::test(args).await,
        Command::Compact(args) => compact::run(state_dir, args).await,
        Command::Cluster(args) => cluster::run(args).await,
        Command::Dlq(args) => dlq::run(state_dir, args).await,
        Command::Status(args) => status::run(state_dir, args).await,
        Command::Replay(args) => replay::run(state_dir, args),
        Command::Reconcile(args) => reconcile::run(state_dir, args).await,
        Command::Trace(args) => trace::run(state_dir, args),
        Command::SchemaHistory(args) => schema_history::run(state_dir, args),
        Command::Checkpoint(args) => checkpoint::run(state_dir, args).await,
        Command::Schema => validate::schema(),
        Command::Completions(args) => shell::completions(args),
        Command::Man => shell::man(),
    }
}

impl Command {
    /// Whether the command only reads the state directory, so that the process holding it
    /// can answer it.
    fn reads_only(&self) -> bool {
        match self {
            Command::Runs(_) | Command::Status(_) | Command::Trace(_) => true,
            Command::Run(args) => args.reads_only(),
            Command::Journal(args) => args.reads_only(),
            Command::Dlq(args) => args.reads_only(),
            Command::Checkpoint(args) => args.reads_only(),
            _ => false,
        }
    }

    /// Whether the process holding the state directory carries it out when it is `serve`
    /// (see `attach`): the changing commands a user needs while serve runs.
    fn carried_by_serve(&self) -> bool {
        matches!(
            self,
            Command::Run(_) | Command::Checkpoint(_) | Command::Dlq(_)
        )
    }

    /// The sync and stream a changing command changes (`None`: it only reads).
    fn scope(&self, root: &Path) -> anyhow::Result<Option<(String, String)>> {
        match self {
            Command::Checkpoint(args) => args.scope(),
            Command::Dlq(args) => args.scope(root),
            _ => Ok(None),
        }
    }

    /// Relative paths in the arguments made absolute against `cwd` (a caller's directory).
    fn rebase(&mut self, cwd: &Path) {
        match self {
            Command::Checkpoint(args) => args.rebase(cwd),
            Command::Dlq(args) => args.rebase(cwd),
            Command::Run(args) => args.rebase(cwd),
            _ => {}
        }
    }
}
