//! The journal's sled backend, and opening a sled directory that an abrupt stop left behind.
//!
//! sled 0.34.7 can refuse to open after a kill during snapshot generation: an incomplete
//! `snap.*.generating` file fails its checksum (spacejam/sled #1527, #1533), and some damage
//! panics instead of returning an error. Snapshots are only an index over sled's own log, so
//! [`SledBackend::open`] moves incomplete snapshot files into `quarantine/` and retries;
//! a panic inside sled becomes an error. The journal's own checksums then verify every entry.
//!
//! Run logs are plain files beside sled's, `runs/<run id>.log` in the same directory, each
//! appended with one `write` per step and synced with `fdatasync` when asked.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use super::backend::{Backend, BackendError, Entries, Entry, Op};
use crate::run_id::RunId;

/// sled's default tree as a journal backend, with the run logs beside it; a clone is
/// another handle on the same open database and logs.
#[derive(Clone)]
pub struct SledBackend {
    /// `None`: the bench-only discarding mode (nothing is kept).
    db: Option<sled::Db>,
    logs: Option<Logs>,
}

/// The run logs' directory and the logs open for appending (one writer per run).
#[derive(Clone)]
struct Logs {
    dir: PathBuf,
    open: Arc<Mutex<HashMap<RunId, File>>>,
}

/// Logs kept open for appending at most; a process drives few runs at once.
const OPEN_LOGS: usize = 64;

impl Logs {
    fn path(&self, run: RunId) -> PathBuf {
        self.dir.join(format!("{run}.log"))
    }

    fn fail(&self, run: RunId, what: &str) -> impl FnOnce(std::io::Error) -> BackendError {
        let path = self.path(run);
        let what = what.to_string();
        move |e| BackendError(format!("{what} {}: {e}", path.display()))
    }

    /// Runs `f` on the run's log opened for appending.
    fn with<T>(
        &self,
        run: RunId,
        f: impl FnOnce(&mut File) -> std::io::Result<T>,
        what: &str,
    ) -> Result<T, BackendError> {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        if !open.contains_key(&run) {
            if open.len() >= OPEN_LOGS {
                open.clear();
            }
            let created = !self.path(run).exists();
            std::fs::create_dir_all(&self.dir)
                .map_err(self.fail(run, "creating the directory of"))?;
            let file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(self.path(run))
                .map_err(self.fail(run, "opening"))?;
            if created {
                // The new file's name must survive a power cut like its contents.
                File::open(&self.dir)
                    .and_then(|d| d.sync_all())
                    .map_err(self.fail(run, "syncing the directory of"))?;
            }
            open.insert(run, file);
        }
        match open.get_mut(&run) {
            Some(file) => f(file).map_err(self.fail(run, what)),
            None => Err(BackendError(format!("run log of {run} not open"))),
        }
    }
}

fn err(e: sled::Error) -> BackendError {
    BackendError(format!("sled: {e}"))
}

/// Why the journal's database did not open.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// Another process holds sled's own lock on it.
    #[error("another process holds the journal: {0}")]
    Held(String),
    /// The filesystem refused (no space, no permission, read-only): not damage.
    #[error(transparent)]
    Io(std::io::Error),
    /// The database cannot be opened.
    #[error("{0}")]
    Unreadable(String),
}

impl From<std::io::Error> for OpenError {
    fn from(e: std::io::Error) -> Self {
        OpenError::Io(e)
    }
}

impl From<BackendError> for OpenError {
    fn from(e: BackendError) -> Self {
        OpenError::Unreadable(e.0)
    }
}

impl From<Opened> for OpenError {
    fn from(opened: Opened) -> Self {
        match opened {
            Opened::LockHeld(e) => OpenError::Held(e.to_string()),
            Opened::Failed(Failure::Io(e)) => OpenError::Io(e),
            Opened::Failed(Failure::Other(e)) => OpenError::Unreadable(e.0),
        }
    }
}

impl SledBackend {
    /// Opens (creating if needed) the sled database in `dir`.
    pub fn open(dir: &Path) -> Result<Self, OpenError> {
        let quarantined = quarantine_snapshots(dir, |name| name.ends_with(".generating"))?;
        if !quarantined.is_empty() {
            tracing::warn!(files = ?quarantined, "moved incomplete sled snapshot files aside");
        }
        match try_open(dir) {
            Ok(db) => Ok(SledBackend::with_logs(db, dir)),
            Err(held @ Opened::LockHeld(_)) => Err(held.into()),
            Err(io @ Opened::Failed(Failure::Io(_))) => Err(io.into()),
            Err(Opened::Failed(Failure::Other(first))) => {
                // A complete-looking but damaged snapshot: sled rebuilds its index from the
                // log without it.
                let moved = quarantine_snapshots(dir, |name| name.starts_with("snap."))?;
                if moved.is_empty() {
                    return Err(first.into());
                }
                tracing::warn!(files = ?moved, error = %first, "sled snapshot unreadable; retrying without it");
                try_open(dir)
                    .map(|db| SledBackend::with_logs(db, dir))
                    .map_err(|second| match second {
                        Opened::Failed(Failure::Other(second)) => OpenError::Unreadable(format!(
                            "{second} (and before moving snapshots aside: {first})"
                        )),
                        other => other.into(),
                    })
            }
        }
    }

    /// A backend that keeps nothing: every write is dropped, every read finds nothing.
    /// Only for measuring what the journal costs (`WAYMARK_BENCH_UNJOURNALED`); a run on it
    /// cannot be resumed.
    #[cfg(feature = "bench-unjournaled")]
    pub fn discarding() -> Self {
        SledBackend {
            db: None,
            logs: None,
        }
    }

    fn with_logs(db: sled::Db, dir: &Path) -> Self {
        SledBackend {
            db: Some(db),
            logs: Some(Logs {
                dir: dir.join("runs"),
                open: Arc::default(),
            }),
        }
    }

    /// Bytes sled uses on disk.
    pub fn size_on_disk(&self) -> u64 {
        self.db
            .as_ref()
            .and_then(|db| db.size_on_disk().ok())
            .unwrap_or(0)
    }
}

/// How long [`try_open`] waits for sled's own file lock. The caller holds the state
/// directory's lock, so only this process can hold sled's: a `Db` dropped a moment ago whose
/// background threads have not let go of the file yet.
const SLED_LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

fn try_open(dir: &Path) -> Result<sled::Db, Opened> {
    let started = std::time::Instant::now();
    loop {
        match open_once(dir) {
            Err(Opened::LockHeld(e)) if started.elapsed() < SLED_LOCK_WAIT => {
                tracing::debug!(error = %e, "sled's file lock is still held; retrying");
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            other => return other,
        }
    }
}

/// Why one attempt to open sled failed: its file lock is held, the filesystem refused,
/// or anything else.
enum Opened {
    LockHeld(sled::Error),
    Failed(Failure),
}

enum Failure {
    Io(std::io::Error),
    Other(BackendError),
}

fn open_once(dir: &Path) -> Result<sled::Db, Opened> {
    let config = sled::Config::new()
        .path(dir)
        .cache_capacity(8 * 1024 * 1024)
        .flush_every_ms(None)
        .mode(sled::Mode::LowSpace);
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || config.open()));
    match outcome {
        Ok(Ok(db)) => Ok(db),
        Ok(Err(e)) if e.to_string().contains("could not acquire lock") => Err(Opened::LockHeld(e)),
        // Refusals of the filesystem, not damage: no space, no permission, read-only.
        Ok(Err(sled::Error::Io(e)))
            if matches!(
                e.kind(),
                std::io::ErrorKind::StorageFull
                    | std::io::ErrorKind::PermissionDenied
                    | std::io::ErrorKind::ReadOnlyFilesystem
                    | std::io::ErrorKind::QuotaExceeded
            ) =>
        {
            Err(Opened::Failed(Failure::Io(e)))
        }
        Ok(Err(e)) => Err(Opened::Failed(Failure::Other(err(e)))),
        Err(panic) => {
            let what = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "unknown panic".into());
            Err(Opened::Failed(Failure::Other(BackendError(format!(
                "sled panicked while opening: {what}"
            )))))
        }
    }
}

/// Moves the snapshot files that `select` picks into `dir/quarantine/`.
fn quarantine_snapshots(
    dir: &Path,
    select: impl Fn(&str) -> bool,
) -> Result<Vec<PathBuf>, std::io::Error> {
    let io = |e: std::io::Error| std::io::Error::new(e.kind(), format!("{}: {e}", dir.display()));
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(Vec::new());
    };
    let mut moved = Vec::new();
    for entry in entries {
        let entry = entry.map_err(io)?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.starts_with("snap.") || !select(&name) {
            continue;
        }
        let quarantine = dir.join("quarantine");
        std::fs::create_dir_all(&quarantine).map_err(io)?;
        let target = quarantine.join(&name);
        std::fs::rename(entry.path(), &target).map_err(io)?;
        moved.push(target);
    }
    Ok(moved)
}

impl Backend for SledBackend {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, BackendError> {
        let Some(db) = &self.db else { return Ok(None) };
        Ok(db.get(key).map_err(err)?.map(|v| v.to_vec()))
    }

    fn scan<'a>(&'a self, prefix: &[u8]) -> Entries<'a> {
        let Some(db) = &self.db else {
            return Box::new(std::iter::empty());
        };
        Box::new(
            db.scan_prefix(prefix)
                .map(|r| r.map(|(k, v)| (k.to_vec(), v.to_vec())).map_err(err)),
        )
    }

    fn last(&self, prefix: &[u8]) -> Result<Option<Entry>, BackendError> {
        let Some(db) = &self.db else { return Ok(None) };
        match db.scan_prefix(prefix).next_back() {
            Some(r) => r.map(|(k, v)| Some((k.to_vec(), v.to_vec()))).map_err(err),
            None => Ok(None),
        }
    }

    fn commit(&self, ops: Vec<Op>) -> Result<(), BackendError> {
        let Some(db) = &self.db else { return Ok(()) };
        let mut batch = sled::Batch::default();
        for op in ops {
            match op {
                Op::Put(k, v) => batch.insert(k, v),
                Op::Delete(k) => batch.remove(k),
            }
        }
        db.apply_batch(batch).map_err(err)
    }

    fn flush(&self) -> Result<(), BackendError> {
        let Some(db) = &self.db else { return Ok(()) };
        db.flush().map(|_| ()).map_err(err)
    }

    fn log_append(&self, run: RunId, bytes: &[u8]) -> Result<(), BackendError> {
        let Some(logs) = &self.logs else {
            return Ok(());
        };
        logs.with(run, |file| file.write_all(bytes), "appending to")
    }

    fn log_sync(&self, run: RunId) -> Result<(), BackendError> {
        let Some(logs) = &self.logs else {
            return Ok(());
        };
        logs.with(run, |file| file.sync_data(), "syncing")
    }

    fn log_read(&self, run: RunId, from: u64) -> Result<Option<Vec<u8>>, BackendError> {
        let Some(logs) = &self.logs else {
            return Ok(None);
        };
        let mut bytes = Vec::new();
        let read = File::open(logs.path(run)).and_then(|mut f| {
            f.seek(SeekFrom::Start(from))?;
            f.read_to_end(&mut bytes)
        });
        match read {
            Ok(_) => Ok(Some(bytes)),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(logs.fail(run, "reading")(e)),
        }
    }

    fn log_truncate(&self, run: RunId, len: u64) -> Result<(), BackendError> {
        let Some(logs) = &self.logs else {
            return Ok(());
        };
        logs.with(
            run,
            |file| {
                file.set_len(len)?;
                file.sync_data()
            },
            "truncating",
        )
    }

    fn log_remove(&self, run: RunId) -> Result<(), BackendError> {
        let Some(logs) = &self.logs else {
            return Ok(());
        };
        logs.open
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&run);
        match std::fs::remove_file(logs.path(run)) {
            Err(e) if e.kind() != ErrorKind::NotFound => Err(logs.fail(run, "removing")(e)),
            _ => Ok(()),
        }
    }

    fn log_runs(&self) -> Result<Vec<RunId>, BackendError> {
        let Some(logs) = &self.logs else {
            return Ok(Vec::new());
        };
        let entries = match std::fs::read_dir(&logs.dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(BackendError(format!("{}: {e}", logs.dir.display()))),
        };
        let mut runs = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| BackendError(format!("{}: {e}", logs.dir.display())))?;
            // Anything else in the directory is not a run log (and left alone).
            let name = entry.file_name();
            let run = name
                .to_str()
                .and_then(|n| n.strip_suffix(".log")?.parse::<RunId>().ok());
            runs.extend(run);
        }
        Ok(runs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lock_held_by_a_handle_about_to_go_is_waited_for() -> Result<(), OpenError> {
        let dir = std::env::temp_dir().join(format!("waymark-sled-lock-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let first = SledBackend::open(&dir)?;
        let releaser = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(300));
            drop(first);
        });
        let second = SledBackend::open(&dir);
        let _ = releaser.join();
        drop(second?);
        let _ = std::fs::remove_dir_all(&dir);
        Ok(())
    }

    #[test]
    fn the_runs_with_a_log_are_listed_and_nothing_else() -> Result<(), Box<dyn std::error::Error>> {
        let dir = std::env::temp_dir().join(format!("waymark-sled-logs-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let backend = SledBackend::open(&dir)?;
        assert!(backend.log_runs()?.is_empty());
        let (kept, removed) = (RunId::new(), RunId::new());
        backend.log_append(kept, b"kept")?;
        backend.log_append(removed, b"removed")?;
        backend.log_remove(removed)?;
        std::fs::write(dir.join("runs").join("notes.txt"), "not a log")?;
        std::fs::write(dir.join("runs").join("not-a-run.log"), "")?;
        assert_eq!(backend.log_runs()?, [kept]);
        drop(backend);
        let _ = std::fs::remove_dir_all(&dir);
        Ok(())
    }
}
