//! Commands while another process holds the state directory. The holder (a `run`,
//! `resume`, `backfill` or `serve`) listens on `<state-dir>/attach.sock`; a read command
//! (`runs`, `status`, `journal`, `trace`, `dlq list|show`, `checkpoint show`) that finds
//! the directory in use sends its command line there, and the holder runs it against its
//! own open journal and streams back what it prints and its exit status. The answer is the
//! one the command gives once the directory is free, because it is the same code reading
//! the same journal.
//!
//! `serve` also carries out the changing commands a user needs while it runs: `checkpoint
//! set|reset|adopt|restore` and `dlq retry|drop` run here while serve's loop holds their
//! stream (a run of it going pauses at its next step boundary first, and continues after),
//! and `run` asks the loop to run the streams now and prints their summaries when they end
//! (see [`Change`]). Any other holder answers them [`Reply::Busy`], and the caller reports
//! the directory in use, as it would without asking.
//!
//! Protocol: one JSON line `{"args": [...], "cwd": "..."}` from the caller, then JSON lines
//! of [`Reply`] until `Exit`. The socket is the caller's own user's (mode 0600).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};
use tokio::sync::oneshot;

use waymark_connectors::http::excerpt::printable_lines;
use waymark_engine::{RunState, StateDir};

use super::progress::print_summary;
use super::{describe, Cli, Command, ExitStatus};

/// The socket's file name in the state directory.
pub const SOCKET: &str = "attach.sock";

#[derive(Serialize, Deserialize)]
struct Request {
    /// The command line after the program name.
    args: Vec<String>,
    /// The caller's working directory, against which relative paths resolve.
    cwd: PathBuf,
}

/// One line of an answer.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reply {
    /// A line of stdout.
    Out(String),
    /// A line of stderr.
    Note(String),
    /// The command failed: the message, and the exit code.
    Error(String, u8),
    /// The command ended with this exit code.
    Exit(u8),
    /// This holder does not carry out changing commands: the directory is in use.
    Busy,
}

/// A checkpoint scope: the sync and the stream.
pub type Scope = (String, String);

/// What a changing command sent to `serve` asks of its loop.
pub enum Change {
    /// Hold the stream for the command: once no run of it is going (a going one is paused
    /// at its next step boundary), the loop answers with a [`Release`]; no run of the
    /// stream starts until the command drops it.
    Hold(Scope, oneshot::Sender<Release>),
    /// Run the stream now; answered with its runs once they end, or why none could.
    Run(Scope, oneshot::Sender<Result<Vec<RunState>, String>>),
}

/// Held by a changing command while it runs; dropping it lets the stream's runs start.
pub type Release = oneshot::Sender<()>;

/// What a command run for another process uses instead of opening the directory and
/// writing to its own stdout.
struct Attached {
    state: StateDir,
    replies: UnboundedSender<Reply>,
}

tokio::task_local! {
    static ATTACHED: Attached;
}

/// The held state directory, when this command runs for another process.
pub(crate) fn lent_state() -> Option<anyhow::Result<StateDir>> {
    ATTACHED
        .try_with(|a| a.state.share().map_err(Into::into))
        .ok()
}

/// Sends a line of stdout to the caller; false when not answering a caller.
pub(crate) fn out(line: &str) -> bool {
    ATTACHED
        .try_with(|a| {
            let _ = a.replies.send(Reply::Out(line.to_string()));
        })
        .is_ok()
}

/// A message for the user on stderr — the caller's, when answering one.
pub(crate) fn note(text: &str) {
    if ATTACHED
        .try_with(|a| {
            let _ = a.replies.send(Reply::Note(text.to_string()));
        })
        .is_err()
    {
        eprintln!("{}", printable_lines(text));
    }
}

/// Whether a `journal --follow` answering a caller should stop: the caller went away, or
/// this process no longer holds the directory (it is about to exit).
pub(crate) fn stop_following() -> bool {
    ATTACHED
        .try_with(|a| a.replies.is_closed())
        .unwrap_or(false)
        || !HOLDING.load(Ordering::SeqCst)
}

/// Whether this command runs for another process (its state directory is held, live).
pub(crate) fn attached() -> bool {
    ATTACHED.try_with(|_| ()).is_ok()
}

/// Answers read commands for as long as it lives; when dropped, removes the socket and
/// takes no more callers (those being answered finish, see [`finish`]).
pub struct Answering {
    path: PathBuf,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Answering {
    fn drop(&mut self) {
        HOLDING.store(false, Ordering::SeqCst);
        self.task.abort();
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Whether this process answers read commands now.
static HOLDING: AtomicBool = AtomicBool::new(false);

/// The callers being answered.
static CALLERS: Mutex<Vec<tokio::task::JoinHandle<()>>> = Mutex::new(Vec::new());

/// Lets the answers in progress end (a `journal --follow` prints the run's last steps)
/// before the process exits; at most a few seconds.
pub async fn finish() {
    let callers = std::mem::take(&mut *CALLERS.lock().unwrap_or_else(PoisonError::into_inner));
    let all = futures_util::future::join_all(callers);
    let _ = tokio::time::timeout(Duration::from_secs(5), all).await;
}

/// Starts answering read commands on the socket in `dir` — and the changing commands sent
/// through `changes`, when given (by `serve`). Without a socket (a path longer than the OS
/// allows, a filesystem that has none) the run goes on, and says that read commands must
/// wait for it.
pub fn answer(dir: &StateDir, changes: Option<UnboundedSender<Change>>) -> Option<Answering> {
    let path = dir.root().join(SOCKET);
    // A socket a killed holder left behind.
    let _ = std::fs::remove_file(&path);
    let listener = match bind(&path) {
        Ok(listener) => listener,
        Err(e) => {
            tracing::warn!(
                socket = %path.display(),
                "read commands cannot reach this run until it ends: {e}"
            );
            return None;
        }
    };
    let state = match dir.share() {
        Ok(state) => state,
        Err(e) => {
            tracing::warn!("read commands cannot reach this run until it ends: {e}");
            return None;
        }
    };
    let root = dir.root().to_path_buf();
    HOLDING.store(true, Ordering::SeqCst);
    let task = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            match state.share() {
                Ok(state) => {
                    let caller = tokio::spawn(serve(stream, state, root.clone(), changes.clone()));
                    let mut callers = CALLERS.lock().unwrap_or_else(PoisonError::into_inner);
                    callers.retain(|c| !c.is_finished());
                    callers.push(caller);
                }
                Err(e) => tracing::warn!("cannot answer a read command: {e}"),
            }
        }
    });
    Some(Answering { path, task })
}

fn bind(path: &Path) -> std::io::Result<UnixListener> {
    use std::os::unix::fs::PermissionsExt;
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// Answers one caller.
async fn serve(
    stream: UnixStream,
    state: StateDir,
    root: PathBuf,
    changes: Option<UnboundedSender<Change>>,
) {
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read).lines();
    let request = match lines.next_line().await {
        Ok(Some(line)) => serde_json::from_str::<Request>(&line)
            .map_err(|e| Reply::Error(e.to_string(), ExitStatus::BadInput.code())),
        _ => return,
    };
    let cli = request.and_then(|r| command(r, changes.is_some()));
    let mut rx = start(state, root, cli, changes);
    loop {
        tokio::select! {
            reply = rx.recv() => {
                let Some(reply) = reply else { return };
                let last = matches!(reply, Reply::Exit(_) | Reply::Error(..) | Reply::Busy);
                let Ok(mut line) = serde_json::to_string(&reply) else { return };
                line.push('\n');
                if write.write_all(line.as_bytes()).await.is_err() || last {
                    return;
                }
            }
            // The caller hung up (Ctrl-C on `journal --follow`): dropping the receiver
            // tells the command.
            _ = lines.next_line() => return,
        }
    }
}

/// Runs `cli` against `state` on a thread of its own, as for a caller (a changing one
/// through `changes`); its answer line by line, ending with `Exit`, `Error` or `Busy`.
fn start(
    state: StateDir,
    root: PathBuf,
    cli: Result<Cli, Reply>,
    changes: Option<UnboundedSender<Change>>,
) -> UnboundedReceiver<Reply> {
    let (tx, rx) = unbounded_channel();
    match cli {
        Ok(cli) => {
            let attached = Attached {
                state,
                replies: tx.clone(),
            };
            let handle = tokio::runtime::Handle::current();
            // The commands are mostly synchronous (and `journal --follow` sleeps): they get
            // a thread of their own, not one of the runtime's.
            tokio::task::spawn_blocking(move || {
                let work = async {
                    match changes.filter(|_| !cli.command.reads_only()) {
                        Some(changes) => carry_out(&root, cli, &changes).await,
                        None => super::execute(&root, cli).await,
                    }
                };
                let done = handle.block_on(ATTACHED.scope(attached, work));
                let _ = tx.send(match done {
                    Ok(status) => Reply::Exit(status.code()),
                    Err(e) => Reply::Error(describe(&e), ExitStatus::of_error(&e).code()),
                });
            });
        }
        Err(reply) => {
            let _ = tx.send(reply);
        }
    }
    rx
}

/// A changing command for `serve`: `run` asks the loop to run the streams now and prints
/// their summaries as they end; the others run here while the loop holds their stream.
async fn carry_out(
    root: &Path,
    cli: Cli,
    changes: &UnboundedSender<Change>,
) -> anyhow::Result<ExitStatus> {
    let stopping = || anyhow::anyhow!("serve is stopping; run the command again once it has");
    if let Command::Run(args) = &cli.command {
        let (scopes, json) = args.for_serve()?;
        let mut answers = Vec::new();
        for scope in scopes {
            let (tx, rx) = oneshot::channel();
            changes
                .send(Change::Run(scope.clone(), tx))
                .map_err(|_| stopping())?;
            answers.push((scope, rx));
        }
        let (mut states, mut refused) = (Vec::new(), false);
        for ((sync, stream), answer) in answers {
            match answer.await.map_err(|_| stopping())? {
                Ok(ran) => {
                    for state in &ran {
                        print_summary(state, state.active(), json);
                    }
                    states.extend(ran);
                }
                Err(why) => {
                    note(&format!("error: {sync}/{stream}: {why}"));
                    refused = true;
                }
            }
        }
        return Ok(match ExitStatus::of_runs(&states) {
            ExitStatus::Success if refused => ExitStatus::Failed,
            status => status,
        });
    }
    let Some(scope) = cli.command.scope(root)? else {
        return super::execute(root, cli).await;
    };
    let (tx, rx) = oneshot::channel();
    changes
        .send(Change::Hold(scope, tx))
        .map_err(|_| stopping())?;
    let release = rx.await.map_err(|_| stopping())?;
    let done = super::execute(root, cli).await;
    drop(release);
    done
}

/// Runs the read command `args` (after the program name) in this process against the
/// held directory `state`, as for a caller on the socket (`serve`'s local API answers
/// with it): its answer line by line. Dropping the receiver stops a `journal --follow`.
pub fn local(state: &StateDir, args: &[&str]) -> anyhow::Result<UnboundedReceiver<Reply>> {
    let root = state.root().to_path_buf();
    let request = Request {
        args: args.iter().map(|a| a.to_string()).collect(),
        cwd: root.clone(),
    };
    let cli = command(request, false);
    Ok(start(state.share()?, root, cli, None))
}

/// Carries out the changing command `args` (`dlq retry|drop`, `checkpoint …`) in this
/// process as `serve` does for a caller on the socket: its stream is held through
/// `changes` while it runs. The lines it printed (its notes too), or its message and exit
/// code when it failed.
pub async fn local_change(
    state: &StateDir,
    args: &[&str],
    changes: UnboundedSender<Change>,
) -> Result<Vec<String>, (String, u8)> {
    let root = state.root().to_path_buf();
    // Relative paths (a workflow file serve was given) are this process's.
    let request = Request {
        args: args.iter().map(|a| a.to_string()).collect(),
        cwd: std::env::current_dir().unwrap_or_else(|_| root.clone()),
    };
    let cli = command(request, true);
    let share = state.share().map_err(|e| (e.to_string(), 1))?;
    let mut replies = start(share, root, cli, Some(changes));
    let mut out = Vec::new();
    while let Some(reply) = replies.recv().await {
        match reply {
            Reply::Out(line) | Reply::Note(line) => out.push(line),
            Reply::Error(message, code) => return Err((message, code)),
            Reply::Exit(_) => return Ok(out),
            Reply::Busy => return Err(("serve does not carry out this command".into(), 2)),
        }
    }
    Err(("the command ended without an answer".into(), 1))
}

/// [`local`] for a command printing JSON lines (`--json`): the values it printed, or its
/// message and exit code when it failed.
pub async fn local_json(
    state: &StateDir,
    args: &[&str],
) -> Result<Vec<serde_json::Value>, (String, u8)> {
    let mut replies = local(state, args).map_err(|e| (describe(&e), 1))?;
    let mut out = Vec::new();
    while let Some(reply) = replies.recv().await {
        match reply {
            Reply::Out(line) => match serde_json::from_str(&line) {
                Ok(value) => out.push(value),
                Err(e) => return Err((format!("not JSON ({e}): {line}"), 1)),
            },
            Reply::Note(_) => {}
            Reply::Error(message, code) => return Err((message, code)),
            Reply::Exit(_) => return Ok(out),
            Reply::Busy => return Err(("not a read command".into(), 2)),
        }
    }
    Err(("the command ended without an answer".into(), 1))
}

/// The command a request asks for, its relative paths made the caller's: a read, or a
/// change this holder carries out (`changes`: it is `serve`).
fn command(request: Request, changes: bool) -> Result<Cli, Reply> {
    let args = std::iter::once("waymark".to_string()).chain(request.args);
    let mut cli = Cli::try_parse_from(args)
        .map_err(|e| Reply::Error(e.to_string(), ExitStatus::BadInput.code()))?;
    let carried = changes && cli.command.carried_by_serve();
    if !(cli.command.reads_only() || carried) {
        return Err(Reply::Busy);
    }
    cli.command.rebase(&request.cwd);
    Ok(cli)
}

/// Asks the process that holds `state_dir` to run this process's command line; prints its
/// answer and returns its exit status. `busy` (the directory is in use) is returned when no
/// process answers on the socket.
pub async fn ask(state_dir: &Path, busy: anyhow::Error) -> anyhow::Result<ExitStatus> {
    let Ok(stream) = UnixStream::connect(state_dir.join(SOCKET)).await else {
        return Err(busy);
    };
    let Some(args) = std::env::args_os()
        .skip(1)
        .map(std::ffi::OsString::into_string)
        .collect::<Result<Vec<_>, _>>()
        .ok()
    else {
        return Err(busy);
    };
    let request = Request {
        args,
        cwd: std::env::current_dir().context("the working directory")?,
    };
    let (read, mut write) = stream.into_split();
    let mut line = serde_json::to_string(&request)?;
    line.push('\n');
    write.write_all(line.as_bytes()).await?;
    let mut lines = BufReader::new(read).lines();
    while let Some(line) = lines.next_line().await? {
        match serde_json::from_str::<Reply>(&line)? {
            Reply::Out(text) => out!("{text}"),
            Reply::Note(text) => eprintln!("{}", printable_lines(&text)),
            Reply::Error(message, code) => {
                eprintln!("error: {}", printable_lines(&message));
                return Ok(ExitStatus::from_code(code));
            }
            Reply::Exit(code) => return Ok(ExitStatus::from_code(code)),
            Reply::Busy => return Err(busy),
        }
    }
    Err(anyhow::anyhow!(
        "the process holding {} stopped before answering; try again",
        state_dir.display()
    ))
}
