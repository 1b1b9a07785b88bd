//! `waymark dlq`: the dead letters of each stream — list, show, retry through the
//! destination after a fix, or drop with a reason.

use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};
use serde_json::json;
use waymark_connectors::http::excerpt::printable;
use waymark_connectors::state::dead_letters::{DeadLetter, DeadLetters};
use waymark_connectors::Workflow;

use waymark_engine::{Batch, Checkpoint, Clock, Destination, RunId, StateDir, SystemClock, Window};

use super::context::{marking_destination, open_existing_state, user};
use super::instances::{instance, sync_name};
use super::{ExitStatus, UsageError};

/// Arguments of `waymark dlq`.
#[derive(Debug, Args)]
pub struct DlqArgs {
    #[command(subcommand)]
    action: Action,
}

#[derive(Debug, Subcommand)]
enum Action {
    /// Dead letters per stream: how many, and the newest reason.
    List {
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
    /// A stream's dead letters: run, page, key, reason, record.
    Show {
        /// The stream.
        #[arg(long)]
        stream: String,
        /// The sync (needed when two syncs have a stream of that name).
        #[arg(long)]
        sync: Option<String>,
        /// Show at most this many (newest last).
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// One JSON object per line (the whole record).
        #[arg(long)]
        json: bool,
    },
    /// Write a stream's dead letters through its destination again (after fixing what
    /// refused them); those refused again stay, under the retry's run.
    Retry {
        /// The workflow file.
        workflow: PathBuf,
        /// The stream.
        #[arg(long)]
        stream: String,
        /// A file with [tenants]: the tenant whose dead letters to retry.
        #[arg(long, value_name = "ID")]
        tenant: Option<String>,
    },
    /// Remove a stream's dead letters for good; the reason goes to the store's audit log.
    Drop {
        /// The stream.
        #[arg(long)]
        stream: String,
        /// The sync (needed when two syncs have a stream of that name).
        #[arg(long)]
        sync: Option<String>,
        /// Why (required).
        #[arg(long)]
        reason: String,
    },
}

impl DlqArgs {
    /// `list` and `show` only read.
    pub(crate) fn reads_only(&self) -> bool {
        matches!(self.action, Action::List { .. } | Action::Show { .. })
    }

    /// The sync and stream `retry` or `drop` changes (`None` for a read).
    pub(crate) fn scope(&self, root: &Path) -> anyhow::Result<Option<(String, String)>> {
        Ok(Some(match &self.action {
            Action::List { .. } | Action::Show { .. } => return Ok(None),
            Action::Retry {
                workflow,
                stream,
                tenant,
            } => {
                let workflow = Workflow::load(workflow)?;
                let stream = workflow.stream(stream)?.name.clone();
                (sync_name(&workflow, tenant.as_deref())?, stream)
            }
            Action::Drop { stream, sync, .. } => owner(root, sync.as_deref(), stream)?,
        }))
    }

    /// The workflow path made absolute against `cwd`.
    pub(crate) fn rebase(&mut self, cwd: &Path) {
        if let Action::Retry { workflow, .. } = &mut self.action {
            *workflow = cwd.join(&*workflow);
        }
    }
}

/// Runs `waymark dlq`.
pub async fn run(state_dir: &Path, args: DlqArgs) -> anyhow::Result<ExitStatus> {
    let dir = open_existing_state(state_dir)?;
    match args.action {
        Action::List { json } => list(dir.root(), json),
        Action::Show {
            stream,
            sync,
            limit,
            json,
        } => show(dir.root(), sync.as_deref(), &stream, limit, json),
        Action::Retry {
            workflow,
            stream,
            tenant,
        } => {
            retry(
                &dir,
                &instance(&workflow, tenant.as_deref()).await?,
                &stream,
            )
            .await
        }
        Action::Drop {
            stream,
            sync,
            reason,
        } => drop(dir.root(), sync.as_deref(), &stream, &reason),
    }
}

/// `dlq list`: dead letters per stream.
fn list(root: &Path, json: bool) -> anyhow::Result<ExitStatus> {
    let streams = DeadLetters::streams(root);
    if !json {
        out!("{:<32}  {:>8}  newest reason", "sync/stream", "letters");
    }
    for (sync, stream) in streams {
        let letters = DeadLetters::new(root, &sync, &stream).list()?;
        let newest = letters.last().map_or("", |l| l.reason.as_str());
        if json {
            out!(
                "{}",
                json!({"sync": sync, "stream": stream, "letters": letters.len(), "newest_reason": newest})
            );
        } else {
            out!(
                "{:<32}  {:>8}  {}",
                format!("{sync}/{stream}"),
                letters.len(),
                printable(newest)
            );
        }
    }
    Ok(ExitStatus::Success)
}

/// `dlq show`: a stream's dead letters, the newest `limit`.
fn show(
    root: &Path,
    sync: Option<&str>,
    stream: &str,
    limit: usize,
    json: bool,
) -> anyhow::Result<ExitStatus> {
    let store = store(root, sync, stream)?;
    let letters = store.list()?;
    let shown = &letters[letters.len().saturating_sub(limit)..];
    if !json {
        out!(
            "{} dead letters of {stream}{}",
            letters.len(),
            if shown.len() < letters.len() {
                format!(", the newest {}", shown.len())
            } else {
                String::new()
            }
        );
    }
    for l in shown {
        if json {
            out!("{}", serde_json::to_string(l)?);
        } else {
            // Keys, reasons and records are the API's text.
            out!(
                "run {} page {} key {}: {}\n    {}",
                l.run_id,
                l.page,
                printable(l.key.as_deref().unwrap_or("-")),
                printable(&l.reason),
                printable(&excerpt(&l.record))
            );
        }
    }
    Ok(ExitStatus::Success)
}

/// `dlq retry`: a stream's dead letters written again, as one page of a run of the
/// `@dlq-retry` scope.
async fn retry(dir: &StateDir, workflow: &Workflow, stream: &str) -> anyhow::Result<ExitStatus> {
    let root = dir.root();
    let section = workflow.stream(stream)?.clone();
    let store = DeadLetters::new(root, workflow.name(), &section.name);
    let files = store.files()?;
    let letters: Vec<DeadLetter> = store.read(&files)?;
    // Records are JSON past the edges that read them (the write reads only the fields it
    // needs): a letter whose record is not (edited by hand, or older than webhooks marking
    // such events) is not retried; it stays a dead letter, saying why. So does one with no
    // record (an API destination's refused deletion): there is nothing to write again.
    let mut kept = Vec::new();
    let mut records = Vec::new();
    for l in letters {
        if l.record.is_empty() {
            kept.push(l);
            continue;
        }
        match serde_json::from_str::<serde::de::IgnoredAny>(&l.record) {
            Ok(_) => records.push(l.record),
            Err(e) => kept.push(DeadLetter {
                reason: format!("not JSON: {e} (fix the record, or drop the letters)"),
                ..l
            }),
        }
    }
    if records.is_empty() {
        return Ok(match kept.len() {
            0 => {
                out!("{}/{stream}: no dead letters to retry", workflow.name());
                ExitStatus::Success
            }
            n => {
                out!(
                    "{}/{stream}: no dead letters to retry; {n} kept (not JSON, or without a record: fix or drop them)",
                    workflow.name()
                );
                ExitStatus::Failed
            }
        });
    }
    // Its own checkpoint scope: the stream's checkpoint never moves. The letters of
    // webhook and repair runs carry their marks (a deletion, an event that was not JSON),
    // read as those runs read them.
    let scope = format!("{stream}@dlq-retry");
    let mut target = marking_destination(dir, workflow, &section, &scope).await?;
    let run_id = RunId::new();
    let now = SystemClock.now();
    let checkpoint = Checkpoint {
        run_id,
        window: Window {
            start: None,
            end: now,
        },
        cursor: None,
        page: 1,
        records: records.len() as u64,
        complete: true,
        at: now,
        max_seen: None,
    };
    let count = records.len();
    let prepared = target.preparer()(records, None);
    let ack = target
        .write(Batch {
            run_id,
            page: 1,
            records: &prepared,
            checkpoint: &checkpoint,
        })
        .await?;
    // Page 0: the retry's own dead letters are its page 1.
    store.put(&run_id.to_string(), 0, &kept)?;
    store.remove(&files)?;
    let said = match kept.len() {
        0 => String::new(),
        n => format!("; {n} kept as dead letters (not JSON, or without a record)"),
    };
    let summary = format!("retried {count} dead letters as run {run_id}: {ack}{said}");
    store.audit(&format!("{now} {} {summary}", user()))?;
    out!("{}/{stream}: {summary}", workflow.name());
    Ok(if ack.dead_lettered > 0 || !kept.is_empty() {
        ExitStatus::Failed
    } else {
        ExitStatus::Success
    })
}

/// `dlq drop`: a stream's dead letters removed, the reason in the store's audit log.
fn drop(root: &Path, sync: Option<&str>, stream: &str, reason: &str) -> anyhow::Result<ExitStatus> {
    if reason.trim().is_empty() {
        return Err(UsageError("--reason must say why the letters are dropped".into()).into());
    }
    let store = store(root, sync, stream)?;
    let files = store.files()?;
    let count = store.read(&files)?.len();
    store.audit(&format!(
        "{} {} dropped {count} dead letters: {reason}",
        SystemClock.now(),
        user()
    ))?;
    store.remove(&files)?;
    out!("{stream}: dropped {count} dead letters ({reason})");
    Ok(ExitStatus::Success)
}

/// The store of `stream`, whose sync is `sync` or the only one with such a stream.
fn store(root: &Path, sync: Option<&str>, stream: &str) -> anyhow::Result<DeadLetters> {
    let (sync, stream) = owner(root, sync, stream)?;
    Ok(DeadLetters::new(root, &sync, &stream))
}

/// The sync and stream whose dead letters `stream` (of `sync`, or the only sync with such
/// a stream) names.
fn owner(root: &Path, sync: Option<&str>, stream: &str) -> anyhow::Result<(String, String)> {
    let all = DeadLetters::streams(root);
    let matching: Vec<&(String, String)> = all
        .iter()
        .filter(|(s, t)| t == stream && sync.is_none_or(|wanted| wanted == s))
        .collect();
    match matching.as_slice() {
        [owner] => Ok((*owner).clone()),
        [] => {
            let known: Vec<String> = all.iter().map(|(s, t)| format!("{s}/{t}")).collect();
            Err(UsageError(format!(
                "no dead letters for stream `{stream}`{}",
                match known.is_empty() {
                    true => String::new(),
                    false => format!(" (streams with dead letters: {})", known.join(", ")),
                }
            ))
            .into())
        }
        many => Err(UsageError(format!(
            "{} syncs have a stream `{stream}`; choose one with --sync ({})",
            many.len(),
            many.iter()
                .map(|(s, _)| s.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ))
        .into()),
    }
}

fn excerpt(record: &str) -> String {
    match record.chars().count() > 160 {
        true => format!("{}…", record.chars().take(160).collect::<String>()),
        false => record.to_string(),
    }
}
