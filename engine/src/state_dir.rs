//! The state directory: the lock that keeps it to one process, the journal, the staging area.
//!
//! ```text
//! <state-dir>/LOCK       who holds the directory (pid, command, since)
//! <state-dir>/journal/   sled database (see `journal`)
//! <state-dir>/staging/   staged pages (see `staging`)
//! ```

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

use crate::journal::{Journal, SledBackend};
use crate::staging::Staging;
use crate::time::{Clock, SystemClock};

/// Why the state directory could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Another process holds the directory.
    #[error("state directory {dir} is in use by another process ({holder}); wait for it to finish or stop it, or use another --state-dir")]
    Busy {
        /// The directory.
        dir: PathBuf,
        /// What the lock file says about its holder.
        holder: String,
    },
    /// The filesystem refused.
    #[error("state directory {path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The journal database does not open, even without its snapshot files.
    #[error("the journal in {dir} cannot be opened: {reason}. Run `waymark journal reset` to move it aside; the next run recovers each stream's checkpoint from the destination's own copy")]
    JournalUnreadable {
        /// The journal directory.
        dir: PathBuf,
        /// sled's error.
        reason: String,
    },
    /// Staging could not be prepared.
    #[error(transparent)]
    Staging(#[from] crate::staging::Error),
}

/// An open, locked state directory.
pub struct StateDir {
    root: PathBuf,
    journal: Journal<SledBackend>,
    staging: Staging,
    lock: File,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Takes the directory's lock, recording who holds it, or reports the holder.
fn lock(root: &Path, command: &str) -> Result<File, Error> {
    fs::create_dir_all(root).map_err(io(root))?;
    let path = root.join("LOCK");
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(io(&path))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(fs::TryLockError::WouldBlock) => {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            let holder = holder.trim().replace('\n', ", ");
            let holder = if holder.is_empty() {
                "unknown holder".into()
            } else {
                holder
            };
            return Err(Error::Busy {
                dir: root.to_path_buf(),
                holder,
            });
        }
        Err(fs::TryLockError::Error(e)) => return Err(io(&path)(e)),
    }
    let note = format!(
        "pid {}\ncommand {command}\nsince {}\n",
        std::process::id(),
        SystemClock.now()
    );
    file.set_len(0).map_err(io(&path))?;
    file.rewind().map_err(io(&path))?;
    file.write_all(note.as_bytes()).map_err(io(&path))?;
    file.sync_all().map_err(io(&path))?;
    Ok(file)
}

impl StateDir {
    /// Locks `root` (creating it) and opens its journal and staging area. `command` is
    /// recorded in the lock file so a second process can say who holds it.
    pub fn open(root: &Path, command: &str) -> Result<Self, Error> {
        let lock = lock(root, command)?;
        let journal_dir = root.join("journal");
        let backend = SledBackend::open(&journal_dir).map_err(|e| Error::JournalUnreadable {
            dir: journal_dir.clone(),
            reason: e.0,
        })?;
        let staging = Staging::open(&root.join("staging"))?;
        Ok(StateDir {
            root: root.to_path_buf(),
            journal: Journal::new(backend),
            staging,
            lock,
        })
    }

    /// Locks `root` like [`open`](Self::open) but journals nothing and stages pages without
    /// fsync: the bench-only switch that measures what the journal costs. A run here
    /// cannot be resumed; never use it for real syncs.
    #[cfg(feature = "bench-unjournaled")]
    pub fn open_unjournaled(root: &Path, command: &str) -> Result<Self, Error> {
        let lock = lock(root, command)?;
        let staging = Staging::open(&root.join("staging"))?.without_fsync();
        Ok(StateDir {
            root: root.to_path_buf(),
            journal: Journal::new(SledBackend::discarding()),
            staging,
            lock,
        })
    }

    /// Moves an unreadable journal aside (to `journal.broken-<millis>`) under the lock, and
    /// returns where it went. Stream checkpoints are then recovered from the destinations.
    pub fn reset_journal(root: &Path, command: &str) -> Result<Option<PathBuf>, Error> {
        let _lock = lock(root, command)?;
        let journal = root.join("journal");
        if !journal.exists() {
            return Ok(None);
        }
        let target = root.join(format!("journal.broken-{}", SystemClock.now().0));
        fs::rename(&journal, &target).map_err(io(&journal))?;
        let staging = root.join("staging");
        if staging.exists() {
            fs::remove_dir_all(&staging).map_err(io(&staging))?;
        }
        Ok(Some(target))
    }

    /// Another handle on this open directory, for reading it on another thread while this
    /// one runs: the holder answers other processes' read commands with it. The lock stays
    /// held until every handle is dropped.
    pub fn share(&self) -> Result<StateDir, Error> {
        let lock = self.lock.try_clone().map_err(io(&self.root))?;
        Ok(StateDir {
            root: self.root.clone(),
            journal: self.journal.clone(),
            staging: self.staging.clone(),
            lock,
        })
    }

    /// The directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The staged pages.
    pub fn staging(&self) -> &Staging {
        &self.staging
    }

    /// The journal.
    pub fn journal(&self) -> &Journal<SledBackend> {
        &self.journal
    }

    /// The journal, for appending.
    pub fn journal_mut(&mut self) -> &mut Journal<SledBackend> {
        &mut self.journal
    }

    /// Journal and staging together, as the driver needs them.
    pub fn parts(&mut self) -> (&mut Journal<SledBackend>, &Staging) {
        (&mut self.journal, &self.staging)
    }
}

/// Total size in bytes of the files under `path`.
pub fn disk_usage(path: &Path) -> u64 {
    let Ok(meta) = fs::symlink_metadata(path) else {
        return 0;
    };
    if !meta.is_dir() {
        return meta.len();
    }
    fs::read_dir(path)
        .map(|entries| entries.flatten().map(|e| disk_usage(&e.path())).sum())
        .unwrap_or(0)
}
