//! What the subcommands share: the state directory (opened with the command in its lock),
//! stop signals, budgets, a stream's destination, and run ids typed in full or in part.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;

use waymark_connectors::config::{FileKind, StreamSection};
use waymark_connectors::{sink, AnyDestination, Workflow};
use waymark_engine::{state_dir, Clock, RunId, StateDir, SystemClock, Timestamp};

use tokio::sync::mpsc::UnboundedSender;

use super::attach::{Answering, Change};
use super::UsageError;

/// Limits and output of one invocation, shared by `run`, `resume` and `backfill`.
#[derive(Debug, Args, Clone, Default)]
pub struct Budget {
    /// Print each run's summary as one JSON object on stdout instead of a line.
    #[arg(long)]
    pub(crate) json: bool,
    /// Fetch at most N pages per stream, then pause (the next `waymark run` continues).
    #[arg(long, value_name = "N")]
    pub(crate) max_pages: Option<u64>,
    /// Run each stream at most this long (e.g. `10m`), then pause at a step boundary.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub(crate) max_duration: Option<Duration>,
}

pub(crate) fn rfc3339(text: &str) -> Result<Timestamp, String> {
    humantime::parse_rfc3339_weak(text)
        .map(Timestamp::from_system)
        .map_err(|e| format!("`{text}` is not an RFC 3339 time ({e}), e.g. 2026-01-01T00:00:00Z"))
}

/// Stop flag set by SIGINT/SIGTERM: the driver pauses at the next step boundary; a second
/// signal exits at once (safe: that is a crash, which the journal recovers from). The
/// handlers are registered before this returns, so no signal after it kills a step midway.
pub fn stop_on_signal() -> anyhow::Result<Arc<AtomicBool>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    tokio::spawn(async move {
        for _ in 0..2 {
            tokio::select! {
                _ = interrupt.recv() => {}
                _ = terminate.recv() => {}
            }
            if flag.swap(true, Ordering::SeqCst) {
                tracing::warn!(
                    "second stop request: exiting now; the next run resumes from the journal"
                );
                std::process::exit(130);
            }
            tracing::warn!("stop requested: pausing at the next step boundary (again to exit now)");
        }
    });
    Ok(stop)
}

fn command_line() -> String {
    std::env::args().collect::<Vec<_>>().join(" ")
}

/// Opens the state directory, with the command recorded in its lock. In a build with the
/// `bench-unjournaled` feature (for `benches/e2e.rs` only), `WAYMARK_BENCH_UNJOURNALED=1`
/// journals nothing, to measure what the journal costs.
pub fn open_state(dir: &Path) -> anyhow::Result<StateDir> {
    #[cfg(feature = "bench-unjournaled")]
    if std::env::var("WAYMARK_BENCH_UNJOURNALED").as_deref() == Ok("1") {
        tracing::warn!("WAYMARK_BENCH_UNJOURNALED=1: nothing is journaled (benchmarks only)");
        return Ok(StateDir::open_unjournaled(dir, &command_line())?);
    }
    StateDir::open(dir, &command_line()).map_err(|e| match unusable(dir, &e) {
        Some(usage) => usage.into(),
        None => e.into(),
    })
}

/// Opens the state directory for a command that holds it for a while (a run): while it
/// does, the returned [`Answering`] answers other processes' read commands. A run writes
/// beside the journal (`rate/`, `dead_letters/`, `attach.sock`), so a directory it cannot
/// write to is refused now, before any request. A journal that lost steps its witness saw
/// made durable is refused.
pub fn hold_state(dir: &Path) -> anyhow::Result<(StateDir, Option<Answering>)> {
    hold_state_for(dir, None)
}

/// [`hold_state`], carrying out the changing commands other processes send through
/// `changes` too (`serve`, see `attach`).
pub fn hold_state_for(
    dir: &Path,
    changes: Option<UnboundedSender<Change>>,
) -> anyhow::Result<(StateDir, Option<Answering>)> {
    let state = open_state(dir)?;
    if let Some(refused) = probe(dir).err().and_then(|e| refusal(dir, dir, &e)) {
        return Err(refused.into());
    }
    state.check_witness()?;
    let answering = super::attach::answer(&state, changes);
    Ok((state, answering))
}

/// A state directory the user has to change (a file in its place, no permission to write,
/// a read-only file system) said once, with the OS error once, the path and what to do;
/// `None` for other failures (a damaged journal, a full disk), which keep their own error.
fn unusable(dir: &Path, error: &state_dir::Error) -> Option<UsageError> {
    match error {
        state_dir::Error::Io { path, source } => refusal(dir, path, source),
        // sled and staging say why in words of their own: when the directory cannot be
        // written to, that is the cause to report (not a damaged journal).
        state_dir::Error::JournalUnreadable { .. } | state_dir::Error::Staging(_) => {
            ["journal", "staging"].iter().find_map(|sub| {
                let path = dir.join(sub);
                probe(&path).err().and_then(|e| refusal(dir, &path, &e))
            })
        }
        // Another holder, a lost or damaged journal: not the directory's permissions.
        _ => None,
    }
}

/// Writes and removes a file in `dir` (when it is a directory): whether this process can
/// create files there, whatever the permission bits say (root can, a read-only file system
/// refuses everyone).
fn probe(dir: &Path) -> std::io::Result<()> {
    if !dir.is_dir() {
        return Ok(());
    }
    let path = dir.join(format!(".probe-{}", std::process::id()));
    std::fs::File::create_new(&path)?;
    std::fs::remove_file(&path)
}

/// The message for state directory `dir`, whose `path` failed with `error`, when the user
/// has to act.
fn refusal(dir: &Path, path: &Path, error: &std::io::Error) -> Option<UsageError> {
    use std::io::ErrorKind;
    let elsewhere = "or give another with --state-dir or WAYMARK_STATE_DIR";
    let shown = dir.display();
    // The path that failed, when it is not the directory itself.
    let at = match path == dir {
        true => String::new(),
        false => format!("{}: ", path.display()),
    };
    let message = match error.kind() {
        ErrorKind::AlreadyExists | ErrorKind::NotADirectory => {
            // What is in the way: the directory itself, or a file above it.
            let (blocker, kind) = dir
                .ancestors()
                .filter(|p| !p.as_os_str().is_empty())
                .find_map(|p| FileKind::at(p).map(|kind| (p, kind)))
                .filter(|(_, kind)| *kind != FileKind::Directory)?;
            let what = match blocker == dir {
                true => format!("state directory {shown} is {kind}, not a directory"),
                false => format!(
                    "state directory {shown} cannot be made: {} is {kind}, not a directory",
                    blocker.display()
                ),
            };
            match kind {
                FileKind::Regular => format!("{what}: move the file away, {elsewhere}"),
                _ => format!("{what}: give another with --state-dir or WAYMARK_STATE_DIR"),
            }
        }
        ErrorKind::PermissionDenied => format!(
            "state directory {shown} is not writable: {at}{error}; make it writable for this \
             user, {elsewhere}"
        ),
        ErrorKind::ReadOnlyFilesystem => format!(
            "state directory {shown} is on a read-only file system: {at}{error}; give one on a \
             writable file system with --state-dir or WAYMARK_STATE_DIR"
        ),
        _ => return None,
    };
    Some(UsageError(message))
}

/// Opens the state directory for a command that reads what runs left there: a path no
/// run ever used (a typo) is an error, never a new empty directory reported as healthy.
/// Answering another process's read command (see `attach`), it is the held directory.
pub fn open_existing_state(dir: &Path) -> anyhow::Result<StateDir> {
    if let Some(lent) = super::attach::lent_state() {
        return lent;
    }
    must_exist(dir)?;
    let state = open_state(dir)?;
    // What it shows may be missing steps: said first, the command still answers.
    if let Err(lost) = state.check_witness() {
        super::attach::note(&format!("warning: {lost}"));
    }
    Ok(state)
}

/// Opens the state directory to check it, changing nothing: the journal is read from a
/// copy (see `StateDir::inspect`), or from the holder's handle when a run holds it.
pub fn inspect_existing_state(dir: &Path) -> anyhow::Result<StateDir> {
    if let Some(lent) = super::attach::lent_state() {
        return lent;
    }
    must_exist(dir)?;
    Ok(StateDir::inspect(dir, &command_line())?)
}

fn must_exist(dir: &Path) -> anyhow::Result<()> {
    if !dir.join("LOCK").is_file() {
        return Err(UsageError(format!(
            "no state directory at {}: no run has used it (give the one your runs used with \
             --state-dir or WAYMARK_STATE_DIR)",
            dir.display()
        ))
        .into());
    }
    Ok(())
}

/// Whether the error is a state directory held by another process.
pub(crate) fn is_busy(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        matches!(
            c.downcast_ref::<state_dir::Error>(),
            Some(state_dir::Error::Busy { .. })
        )
    })
}

/// The destination of `stream`, its checkpoint row named by `scope` (the stream, or a
/// backfill of it), waiting on `clock` (an API destination's retries and rate budget).
pub(crate) async fn destination(
    dir: &StateDir,
    workflow: &Workflow,
    stream: &StreamSection,
    scope: &str,
    clock: Arc<dyn Clock>,
) -> anyhow::Result<AnyDestination> {
    open_binding(dir, workflow, sink::binding(workflow, stream, scope), clock).await
}

/// The same, taking records that carry the deletion mark as deletions: the destination of
/// repair and webhook runs.
pub(crate) async fn marking_destination(
    dir: &StateDir,
    workflow: &Workflow,
    stream: &StreamSection,
    scope: &str,
) -> anyhow::Result<AnyDestination> {
    let mut binding = sink::binding(workflow, stream, scope);
    binding.marked_deletions = true;
    open_binding(dir, workflow, binding, Arc::new(SystemClock)).await
}

async fn open_binding(
    dir: &StateDir,
    workflow: &Workflow,
    binding: waymark_connectors::Binding,
    clock: Arc<dyn Clock>,
) -> anyhow::Result<AnyDestination> {
    AnyDestination::open(workflow, binding, dir.root(), clock)
        .await
        .with_context(|| format!("opening destination {}", AnyDestination::describe(workflow)))
}

/// Finds a run by id, or by a unique prefix or suffix of it.
pub fn find_run(dir: &StateDir, text: &str) -> anyhow::Result<RunId> {
    if let Ok(id) = text.parse::<RunId>() {
        return Ok(id);
    }
    let mut found = Vec::new();
    for head in dir.journal().runs() {
        let id = head?.run_id();
        let full = id.to_string();
        if full.starts_with(text) || full.ends_with(text) {
            found.push(id);
        }
    }
    match found.as_slice() {
        [one] => Ok(*one),
        [] => Err(UsageError(format!(
            "no run id starts or ends with `{text}` (see `waymark runs`)"
        ))
        .into()),
        many => Err(UsageError(format!(
            "`{text}` matches {} runs; give more of the id",
            many.len()
        ))
        .into()),
    }
}

/// Who runs the command (for audit lines).
pub(crate) fn user() -> String {
    std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| "unknown".into())
}

/// Workflow files this process (a `serve`) failed to reload, with why: `status`, run in
/// this process, reports them (the previous version of each keeps running).
static RELOAD_FAILURES: std::sync::Mutex<Vec<(String, String)>> = std::sync::Mutex::new(Vec::new());

/// The files the last reload failed on (replacing the previous list).
pub(crate) fn set_reload_failures(failures: Vec<(String, String)>) {
    *RELOAD_FAILURES
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner) = failures;
}

/// The files the last reload of this process failed on.
pub(crate) fn reload_failures() -> Vec<(String, String)> {
    RELOAD_FAILURES
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone()
}

/// Scopes (sync, stream) whose last attempt to run in this process (a `serve`) failed
/// before any run was journaled — a destination that cannot be opened, a workflow change
/// that blocks a resume — with why: `status` calls them failing, so they are alerted.
static REFUSED: std::sync::Mutex<BTreeMap<(String, String), String>> =
    std::sync::Mutex::new(BTreeMap::new());

/// Whether the last attempt to run `scope` failed before a run, and why (`None`: it ran).
pub(crate) fn set_refused(scope: &(String, String), why: Option<String>) {
    let mut refused = REFUSED
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    match why {
        Some(why) => refused.insert(scope.clone(), why),
        None => refused.remove(scope),
    };
}

/// The scopes whose last attempt to run in this process failed before a run, and why.
pub(crate) fn refused() -> BTreeMap<(String, String), String> {
    REFUSED
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone()
}
