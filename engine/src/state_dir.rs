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

use crate::journal::sled::OpenError;
use crate::journal::{Damage, Journal, Lost, SledBackend, Verified};
use crate::staging::Staging;
use crate::time::{Clock, SystemClock};
use crate::witness::Witness;

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
    #[error("state directory {path}: {source}{}", match source.kind() {
        std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded =>
            "; free space on that device and run again (nothing is damaged)",
        _ => "",
    })]
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
    /// The journal lost steps its witness saw made durable.
    #[error(
        "the journal in {dir} lost steps it had made durable (its database was damaged or \
         replaced):{}\nNothing was changed. `waymark journal verify` lists the damage; to go \
         on, `waymark journal reset` moves the journal aside and each stream then continues \
         from its destination's checkpoint (`waymark checkpoint adopt <workflow> --stream S \
         --reason …`)",
        lost.iter().map(|l| format!("\n  {l}")).collect::<String>()
    )]
    JournalLost {
        /// The journal directory.
        dir: PathBuf,
        /// What is missing.
        lost: Vec<Lost>,
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
    /// A copy of the journal this handle reads instead (see [`StateDir::inspect`]),
    /// removed when it is dropped.
    copy: Option<PathBuf>,
}

impl Drop for StateDir {
    fn drop(&mut self) {
        if let Some(copy) = self.copy.take() {
            let _ = fs::remove_dir_all(copy);
        }
    }
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
        let journal = open_journal(root)?.with_witness(Witness::new(&root.join("witness")));
        let staging = Staging::open(&root.join("staging"))?;
        Ok(StateDir {
            root: root.to_path_buf(),
            journal,
            staging,
            lock,
            copy: None,
        })
    }

    /// Locks `root` and opens a copy of its journal in the system's temporary directory, so
    /// that looking changes nothing: opening sled may recover its log or set incomplete
    /// snapshot files aside, which `journal verify` must not do to the original.
    pub fn inspect(root: &Path, command: &str) -> Result<Self, Error> {
        let lock = lock(root, command)?;
        let copy = std::env::temp_dir().join(format!(
            "waymark-inspect-{}-{}",
            std::process::id(),
            SystemClock.now().0
        ));
        let original = root.join("journal");
        if original.exists() {
            copy_tree(&original, &copy.join("journal"))?;
        }
        let opened = open_journal(&copy);
        let journal = match opened {
            Ok(journal) => journal.with_witness(Witness::new(&root.join("witness"))),
            Err(e) => {
                let _ = fs::remove_dir_all(&copy);
                return Err(match e {
                    Error::JournalUnreadable { reason, .. } => Error::JournalUnreadable {
                        dir: original,
                        reason,
                    },
                    other => other,
                });
            }
        };
        Ok(StateDir {
            root: root.to_path_buf(),
            journal,
            staging: Staging::at(&root.join("staging")),
            lock,
            copy: Some(copy),
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
            copy: None,
        })
    }

    /// Moves an unreadable journal aside (to `journal.broken-<millis>`) under the lock, and
    /// returns where it went. Stream checkpoints are then recovered from the destinations.
    /// Refused while another process holds the journal, even one whose `LOCK` file was
    /// removed; the witness goes with the journal (the next one starts empty).
    pub fn reset_journal(root: &Path, command: &str) -> Result<Option<PathBuf>, Error> {
        let _lock = lock(root, command)?;
        let journal = root.join("journal");
        let exists = journal.exists();
        // Healthy or not, an existing journal is this command's to move aside, unless
        // another process holds it.
        if exists {
            if let Err(busy @ Error::Busy { .. }) = open_journal(root) {
                return Err(busy);
            }
        }
        // What witnessed the journal goes with it: the next one starts empty.
        let witness = root.join("witness");
        if witness.exists() {
            fs::remove_dir_all(&witness).map_err(io(&witness))?;
        }
        if !exists {
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
            copy: None,
        })
    }

    /// Checks the journal ([`Journal::verify`], with what its witness saw) and every page
    /// an unfinished run still needs from staging. Changes nothing.
    pub fn verify(&self) -> Result<Verified, crate::journal::Error> {
        let mut report = self.journal.verify()?;
        for head in self.journal.runs() {
            let Ok(state) = head else { continue };
            if state.status.is_finished() {
                continue;
            }
            for pending in &state.pending {
                let page = &pending.fetched;
                if let Err(e) = self.staging.read(state.run_id(), page.page, page.checksum) {
                    report.damage.push(Damage {
                        entry: format!("staged page {} of run {}", page.page, state.run_id()),
                        problem: e.to_string(),
                    });
                }
            }
        }
        Ok(report)
    }

    /// Refuses a journal that lost steps its witness saw it make durable (see
    /// [`crate::witness`]): a run must never continue from a journal that forgot.
    pub fn check_witness(&self) -> Result<(), Error> {
        let dir = self.root.join("journal");
        let (lost, _) = self.journal.lost().map_err(|e| Error::JournalUnreadable {
            dir: dir.clone(),
            reason: e.to_string(),
        })?;
        match lost.is_empty() {
            true => Ok(()),
            false => Err(Error::JournalLost { dir, lost }),
        }
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

/// Copies the files under `from` to `to`.
fn copy_tree(from: &Path, to: &Path) -> Result<(), Error> {
    fs::create_dir_all(to).map_err(io(to))?;
    for entry in fs::read_dir(from).map_err(io(from))? {
        let entry = entry.map_err(io(from))?;
        let (source, target) = (entry.path(), to.join(entry.file_name()));
        if entry.file_type().map_err(io(&source))?.is_dir() {
            copy_tree(&source, &target)?;
        } else {
            fs::copy(&source, &target).map_err(io(&source))?;
        }
    }
    Ok(())
}

/// Opens the journal's database: another process holding it is `Busy` (its `LOCK` file was
/// removed or replaced), a filesystem that refuses is `Io`, anything else is damage.
fn open_journal(root: &Path) -> Result<Journal<SledBackend>, Error> {
    let dir = root.join("journal");
    match SledBackend::open(&dir) {
        Ok(backend) => Ok(Journal::new(backend)),
        Err(OpenError::Held(e)) => Err(Error::Busy {
            dir: root.to_path_buf(),
            holder: format!(
                "a process holds its journal although the LOCK file does not say so — was \
                 LOCK removed while it ran? ({e})"
            ),
        }),
        Err(OpenError::Io(source)) => Err(Error::Io { path: dir, source }),
        Err(OpenError::Unreadable(reason)) => Err(Error::JournalUnreadable { dir, reason }),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_disk_is_said_as_such_never_as_damage() {
        let full = Error::Io {
            path: PathBuf::from("/state/journal"),
            source: std::io::Error::from(std::io::ErrorKind::StorageFull),
        };
        let said = full.to_string();
        assert!(said.contains("free space on that device"), "{said}");
        assert!(!said.contains("journal reset"), "{said}");
        let denied = Error::Io {
            path: PathBuf::from("/state/journal"),
            source: std::io::Error::from(std::io::ErrorKind::PermissionDenied),
        };
        assert!(!denied.to_string().contains("free space"));
    }
}
