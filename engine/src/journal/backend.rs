//! The narrow key-value interface the journal is stored behind, and an in-memory backend
//! for tests that can lose everything not flushed, as a crash would.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

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
}

#[derive(Default)]
struct Disk {
    live: BTreeMap<Vec<u8>, Vec<u8>>,
    durable: BTreeMap<Vec<u8>, Vec<u8>>,
}

/// In-memory backend. Clones share the same "disk"; [`MemoryBackend::crash`] drops
/// everything committed since the last flush, and [`MemoryBackend::fail_after`] makes
/// commits fail from the n-th one on, to inject a crash at an exact step.
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

    /// Lets `n` more commits succeed; every later one fails until [`MemoryBackend::heal`].
    pub fn fail_after(&self, n: u64) {
        self.commits_left.store(n, Ordering::SeqCst);
        self.limited.store(true, Ordering::SeqCst);
    }

    /// Stops injecting failures.
    pub fn heal(&self) {
        self.limited.store(false, Ordering::SeqCst);
    }

    /// Simulates a crash: what was not flushed is lost.
    pub fn crash(&self) {
        let mut disk = self.disk();
        disk.live = disk.durable.clone();
    }

    /// A separate backend holding only what is durable here: what a process that starts
    /// after a crash right now would find.
    pub fn durable_copy(&self) -> MemoryBackend {
        let durable = self.disk().durable.clone();
        let copy = MemoryBackend::new();
        {
            let mut disk = copy.disk();
            disk.live = durable.clone();
            disk.durable = durable;
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
        if self.limited.load(Ordering::SeqCst) {
            let left = self.commits_left.load(Ordering::SeqCst);
            if left == 0 {
                return Err(BackendError("injected crash".into()));
            }
            self.commits_left.store(left - 1, Ordering::SeqCst);
        }
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
}
