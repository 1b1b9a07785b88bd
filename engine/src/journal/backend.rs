//! The narrow storage interface the journal is kept behind — an ordered key space with
//! atomic batches, and an append-only log per run — and an in-memory backend for tests
//! that loses what a power cut or a killed process would.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::run_id::RunId;

/// A storage failure below the journal.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BackendError(pub String);

/// A key and its value.
pub type Entry = (Vec<u8>, Vec<u8>);

/// Entries in key order, each read checked by the backend.
pub type Entries<'a> = Box<dyn Iterator<Item = Result<Entry, BackendError>> + 'a>;

/// One write of an atomic batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// Insert or replace.
    Put(Vec<u8>, Vec<u8>),
    /// Remove.
    Delete(Vec<u8>),
}

/// Ordered key-value storage with atomic batches and an explicit flush.
pub trait Backend: Send {
    /// The value at `key`.
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, BackendError>;
    /// Every entry whose key starts with `prefix`, in key order.
    fn scan<'a>(&'a self, prefix: &[u8]) -> Entries<'a>;
    /// The last entry whose key starts with `prefix`.
    fn last(&self, prefix: &[u8]) -> Result<Option<Entry>, BackendError>;
    /// Applies all ops atomically (all or none are visible, before and after a crash).
    fn commit(&self, ops: Vec<Op>) -> Result<(), BackendError>;
    /// Makes every committed batch durable.
    fn flush(&self) -> Result<(), BackendError>;

    /// Appends `bytes` to the run's log (creating it). Once this returns the bytes survive
    /// the process being killed; a power cut can lose them until [`Backend::log_sync`].
    fn log_append(&self, run: RunId, bytes: &[u8]) -> Result<(), BackendError>;
    /// Makes everything appended to the run's log durable.
    fn log_sync(&self, run: RunId) -> Result<(), BackendError>;
    /// The run's log from byte `from` on (`None`: the run has none).
    fn log_read(&self, run: RunId, from: u64) -> Result<Option<Vec<u8>>, BackendError>;
    /// Cuts the run's log to its first `len` bytes (a write a crash cut short).
    fn log_truncate(&self, run: RunId, len: u64) -> Result<(), BackendError>;
    /// Removes the run's log.
    fn log_remove(&self, run: RunId) -> Result<(), BackendError>;
    /// The runs that have a log.
    fn log_runs(&self) -> Result<Vec<RunId>, BackendError>;
}

/// A run log as the in-memory disk holds it: what the process wrote, and what is synced.
#[derive(Clone, Default)]
struct Log {
    written: Vec<u8>,
    durable: Vec<u8>,
}

#[derive(Default)]
struct Disk {
    live: BTreeMap<Vec<u8>, Vec<u8>>,
    durable: BTreeMap<Vec<u8>, Vec<u8>>,
    logs: BTreeMap<RunId, Log>,
}

/// In-memory backend. Clones share the same "disk"; [`MemoryBackend::crash`] drops
/// everything not flushed or synced, [`MemoryBackend::kill`] what a killed process loses,
/// and [`MemoryBackend::fail_after`] makes a run's steps (appends to its log) fail from
/// the n-th one on, to inject a crash at an exact step.
#[derive(Clone, Default)]
pub struct MemoryBackend {
    disk: Arc<Mutex<Disk>>,
    commits_left: Arc<AtomicU64>,
    limited: Arc<std::sync::atomic::AtomicBool>,
}

impl MemoryBackend {
    /// An empty backend.
    pub fn new() -> Self {
        Self::default()
    }

    fn disk(&self) -> MutexGuard<'_, Disk> {
        self.disk
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Lets `n` more steps (log appends) succeed; every later one fails until
    /// [`MemoryBackend::heal`].
    pub fn fail_after(&self, n: u64) {
        self.commits_left.store(n, Ordering::SeqCst);
        self.limited.store(true, Ordering::SeqCst);
    }

    /// Stops injecting failures.
    pub fn heal(&self) {
        self.limited.store(false, Ordering::SeqCst);
    }

    /// Simulates a power cut: what was not flushed or synced is lost.
    pub fn crash(&self) {
        let mut disk = self.disk();
        disk.live = disk.durable.clone();
        for log in disk.logs.values_mut() {
            log.written = log.durable.clone();
        }
    }

    /// Simulates the process being killed: batches not flushed are lost (sled keeps them
    /// in its own buffers), bytes appended to run logs are kept (the kernel has them).
    pub fn kill(&self) {
        let mut disk = self.disk();
        disk.live = disk.durable.clone();
    }

    /// A separate backend holding only what is durable here: what a process that starts
    /// after a crash right now would find.
    pub fn durable_copy(&self) -> MemoryBackend {
        let (durable, logs) = {
            let disk = self.disk();
            let logs: BTreeMap<RunId, Log> = disk
                .logs
                .iter()
                .map(|(run, log)| {
                    let synced = Log {
                        written: log.durable.clone(),
                        durable: log.durable.clone(),
                    };
                    (*run, synced)
                })
                .collect();
            (disk.durable.clone(), logs)
        };
        let copy = MemoryBackend::new();
        {
            let mut disk = copy.disk();
            disk.live = durable.clone();
            disk.durable = durable;
            disk.logs = logs;
        }
        copy
    }
}

impl Backend for MemoryBackend {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, BackendError> {
        Ok(self.disk().live.get(key).cloned())
    }

    fn scan<'a>(&'a self, prefix: &[u8]) -> Entries<'a> {
        let items: Vec<_> = self
            .disk()
            .live
            .range(prefix.to_vec()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, v)| Ok((k.clone(), v.clone())))
            .collect();
        Box::new(items.into_iter())
    }

    fn last(&self, prefix: &[u8]) -> Result<Option<Entry>, BackendError> {
        Ok(self
            .disk()
            .live
            .range(prefix.to_vec()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .last()
            .map(|(k, v)| (k.clone(), v.clone())))
    }

    fn commit(&self, ops: Vec<Op>) -> Result<(), BackendError> {
        let mut disk = self.disk();
        for op in ops {
            match op {
                Op::Put(k, v) => disk.live.insert(k, v),
                Op::Delete(k) => disk.live.remove(&k),
            };
        }
        Ok(())
    }

    fn flush(&self) -> Result<(), BackendError> {
        let mut disk = self.disk();
        disk.durable = disk.live.clone();
        Ok(())
    }

    fn log_append(&self, run: RunId, bytes: &[u8]) -> Result<(), BackendError> {
        if self.limited.load(Ordering::SeqCst) {
            let left = self.commits_left.load(Ordering::SeqCst);
            if left == 0 {
                return Err(BackendError("injected crash".into()));
            }
            self.commits_left.store(left - 1, Ordering::SeqCst);
        }
        self.disk()
            .logs
            .entry(run)
            .or_default()
            .written
            .extend_from_slice(bytes);
        Ok(())
    }

    fn log_sync(&self, run: RunId) -> Result<(), BackendError> {
        if let Some(log) = self.disk().logs.get_mut(&run) {
            log.durable = log.written.clone();
        }
        Ok(())
    }

    fn log_read(&self, run: RunId, from: u64) -> Result<Option<Vec<u8>>, BackendError> {
        let from = usize::try_from(from).unwrap_or(usize::MAX);
        Ok(self
            .disk()
            .logs
            .get(&run)
            .map(|log| log.written.get(from..).unwrap_or_default().to_vec()))
    }

    fn log_truncate(&self, run: RunId, len: u64) -> Result<(), BackendError> {
        if let Some(log) = self.disk().logs.get_mut(&run) {
            let len = usize::try_from(len).unwrap_or(usize::MAX);
            log.written.truncate(len);
            log.durable.truncate(len);
        }
        Ok(())
    }

    fn log_remove(&self, run: RunId) -> Result<(), BackendError> {
        self.disk().logs.remove(&run);
        Ok(())
    }

    fn log_runs(&self) -> Result<Vec<RunId>, BackendError> {
        Ok(self.disk().logs.keys().copied().collect())
    }
}
