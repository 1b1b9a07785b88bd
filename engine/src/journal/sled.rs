//! The journal's sled backend, and opening a sled directory that an abrupt stop left behind.
//!
//! sled 0.34.7 can refuse to open after a kill during snapshot generation: an incomplete
//! `snap.*.generating` file fails its checksum (spacejam/sled #1527, #1533), and some damage
//! panics instead of returning an error. Snapshots are only an index over sled's own log, so
//! [`SledBackend::open`] moves incomplete snapshot files into `quarantine/` and retries;
//! a panic inside sled becomes an error. The journal's own checksums then verify every entry.

use std::path::{Path, PathBuf};

use super::backend::{Backend, BackendError, Entries, Entry, Op};

/// sled's default tree as a journal backend.
pub struct SledBackend {
    db: sled::Db,
}

fn err(e: sled::Error) -> BackendError {
    BackendError(format!("sled: {e}"))
}

impl SledBackend {
    /// Opens (creating if needed) the sled database in `dir`.
    pub fn open(dir: &Path) -> Result<Self, BackendError> {
        let quarantined = quarantine_snapshots(dir, |name| name.ends_with(".generating"))?;
        if !quarantined.is_empty() {
            tracing::warn!(files = ?quarantined, "moved incomplete sled snapshot files aside");
        }
        match try_open(dir) {
            Ok(db) => Ok(SledBackend { db }),
            Err(first) => {
                // A complete-looking but damaged snapshot: sled rebuilds its index from the
                // log without it.
                let moved = quarantine_snapshots(dir, |name| name.starts_with("snap."))?;
                if moved.is_empty() {
                    return Err(first);
                }
                tracing::warn!(files = ?moved, error = %first, "sled snapshot unreadable; retrying without it");
                try_open(dir)
                    .map(|db| SledBackend { db })
                    .map_err(|second| {
                        BackendError(format!(
                            "{second} (and before moving snapshots aside: {first})"
                        ))
                    })
            }
        }
    }

    /// Bytes sled uses on disk.
    pub fn size_on_disk(&self) -> u64 {
        self.db.size_on_disk().unwrap_or(0)
    }
}

fn try_open(dir: &Path) -> Result<sled::Db, BackendError> {
    let config = sled::Config::new()
        .path(dir)
        .cache_capacity(64 * 1024 * 1024)
        .flush_every_ms(None)
        .mode(sled::Mode::LowSpace);
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || config.open()));
    match outcome {
        Ok(Ok(db)) => Ok(db),
        Ok(Err(e)) => Err(err(e)),
        Err(panic) => {
            let what = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "unknown panic".into());
            Err(BackendError(format!("sled panicked while opening: {what}")))
        }
    }
}

/// Moves the snapshot files that `select` picks into `dir/quarantine/`.
fn quarantine_snapshots(
    dir: &Path,
    select: impl Fn(&str) -> bool,
) -> Result<Vec<PathBuf>, BackendError> {
    let io = |e: std::io::Error| BackendError(format!("{}: {e}", dir.display()));
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
        Ok(self.db.get(key).map_err(err)?.map(|v| v.to_vec()))
    }

    fn scan<'a>(&'a self, prefix: &[u8]) -> Entries<'a> {
        Box::new(
            self.db
                .scan_prefix(prefix)
                .map(|r| r.map(|(k, v)| (k.to_vec(), v.to_vec())).map_err(err)),
        )
    }

    fn last(&self, prefix: &[u8]) -> Result<Option<Entry>, BackendError> {
        match self.db.scan_prefix(prefix).next_back() {
            Some(r) => r.map(|(k, v)| Some((k.to_vec(), v.to_vec()))).map_err(err),
            None => Ok(None),
        }
    }

    fn commit(&self, ops: Vec<Op>) -> Result<(), BackendError> {
        let mut batch = sled::Batch::default();
        for op in ops {
            match op {
                Op::Put(k, v) => batch.insert(k, v),
                Op::Delete(k) => batch.remove(k),
            }
        }
        self.db.apply_batch(batch).map_err(err)
    }

    fn flush(&self) -> Result<(), BackendError> {
        self.db.flush().map(|_| ()).map_err(err)
    }
}
