//! The witness: an account of the journal kept outside it, so that a journal that lost
//! steps — a damaged sled database that recovered to an older state, a truncated or deleted
//! one — is detected instead of trusted.
//!
//! For each checkpoint scope it keeps the latest run and the last sequence number of that
//! run that the journal had made durable, in `<state-dir>/witness/<hash of the scope>`:
//!
//! ```text
//! [b'W' b'1'][crc32 of the rest: u32 LE][run: 16 bytes][seq: u64 LE][scope: UTF-8]
//! ```
//!
//! The file of a scope always has the same length, so each note overwrites it in place
//! with one small write after a journal flush. It is not synced itself: after a power loss
//! it can only be behind the journal, which is never mistaken for damage; after a crash or
//! a kill the page cache keeps it. A torn or unreadable file is reported, never trusted.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use crate::run_id::RunId;

const MAGIC: [u8; 2] = *b"W1";
const FIXED: usize = 2 + 4 + 16 + 8;

/// What the witness saw journaled for one checkpoint scope.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Seen {
    /// The sync.
    pub sync: String,
    /// The checkpoint scope (a stream, or one of its backfills).
    pub stream: String,
    /// The scope's latest run.
    pub run: RunId,
    /// The last sequence number of that run the journal had made durable.
    pub seq: u64,
}

/// The witness files of a state directory; clones share the open files.
#[derive(Clone)]
pub struct Witness {
    dir: PathBuf,
    open: Arc<Mutex<BTreeMap<String, File>>>,
}

/// A witness file that could not be read back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unreadable {
    /// The file.
    pub path: PathBuf,
    /// Why.
    pub problem: String,
}

fn file_name(sync: &str, stream: &str) -> String {
    // A stable, dependency-free name; the file holds the scope itself.
    let hash = stable_hash(sync.bytes().chain([0]).chain(stream.bytes()));
    format!("{hash:016x}")
}

/// FNV-1a of `bytes`: the same on every machine and in every version (unlike `std`'s
/// hasher), for names and offsets that must not move.
pub fn stable_hash(bytes: impl IntoIterator<Item = u8>) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in bytes {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

impl Witness {
    /// The witness in `dir` (created when first written).
    pub fn new(dir: &Path) -> Self {
        Witness {
            dir: dir.to_path_buf(),
            open: Arc::new(Mutex::new(BTreeMap::new())),
        }
    }

    /// Notes that the journal made `run`'s events up to `seq` durable. Best effort: a
    /// witness that cannot be written weakens the check, it never stops a run.
    pub fn note(&self, sync: &str, stream: &str, run: RunId, seq: u64) {
        let mut body = Vec::with_capacity(FIXED + sync.len() + stream.len() + 1);
        body.extend_from_slice(run.as_bytes());
        body.extend_from_slice(&seq.to_le_bytes());
        body.extend_from_slice(sync.as_bytes());
        body.push(b'\n');
        body.extend_from_slice(stream.as_bytes());
        let mut bytes = Vec::with_capacity(body.len() + 6);
        bytes.extend_from_slice(&MAGIC);
        bytes.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
        bytes.extend_from_slice(&body);
        let name = file_name(sync, stream);
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        let written = match open.get(&name) {
            Some(file) => file.write_all_at(&bytes, 0),
            None => fs::create_dir_all(&self.dir)
                .and_then(|()| {
                    OpenOptions::new()
                        .create(true)
                        .truncate(false)
                        .write(true)
                        .open(self.dir.join(&name))
                })
                .and_then(|file| {
                    file.write_all_at(&bytes, 0)?;
                    open.insert(name.clone(), file);
                    Ok(())
                }),
        };
        if let Err(e) = written {
            tracing::warn!(
                "the journal's witness {} cannot be written ({e}): a damaged journal may go \
                 unnoticed",
                self.dir.join(&name).display()
            );
        }
    }

    /// Forgets a scope whose latest run the journal pruned.
    pub fn forget(&self, sync: &str, stream: &str, run: RunId) {
        let name = file_name(sync, stream);
        let path = self.dir.join(&name);
        if read(&path).is_ok_and(|seen| seen.run == run) {
            self.open
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(&name);
            let _ = fs::remove_file(path);
        }
    }

    /// Everything the witness saw, and the files it cannot read.
    pub fn seen(&self) -> (Vec<Seen>, Vec<Unreadable>) {
        let (mut seen, mut unreadable) = (Vec::new(), Vec::new());
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return (seen, unreadable);
        };
        for entry in entries.flatten() {
            let path = entry.path();
            match read(&path) {
                Ok(s) => seen.push(s),
                Err(problem) => unreadable.push(Unreadable { path, problem }),
            }
        }
        seen.sort_by(|a, b| (&a.sync, &a.stream).cmp(&(&b.sync, &b.stream)));
        (seen, unreadable)
    }
}

fn read(path: &Path) -> Result<Seen, String> {
    let bytes = fs::read(path).map_err(|e| e.to_string())?;
    if bytes.len() < FIXED || bytes[..2] != MAGIC {
        return Err("not a witness file".into());
    }
    let stored = u32::from_le_bytes([bytes[2], bytes[3], bytes[4], bytes[5]]);
    let body = &bytes[6..];
    if crc32fast::hash(body) != stored {
        return Err("checksum mismatch".into());
    }
    let mut run = [0u8; 16];
    run.copy_from_slice(&body[..16]);
    let mut seq = [0u8; 8];
    seq.copy_from_slice(&body[16..24]);
    let scope = std::str::from_utf8(&body[24..]).map_err(|e| e.to_string())?;
    let (sync, stream) = scope.split_once('\n').ok_or("no scope")?;
    Ok(Seen {
        sync: sync.to_string(),
        stream: stream.to_string(),
        run: RunId(uuid::Uuid::from_bytes(run)),
        seq: u64::from_le_bytes(seq),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notes_overwrite_in_place_and_damage_is_reported_not_trusted() {
        let dir = std::env::temp_dir().join(format!("waymark-witness-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let witness = Witness::new(&dir);
        let (a, b) = (RunId::new(), RunId::new());
        witness.note("shop", "orders", a, 3);
        witness.note("shop", "orders", a, 17);
        witness.note("shop", "orders@backfill:1..2", b, 5);
        let (seen, unreadable) = Witness::new(&dir).seen();
        assert!(unreadable.is_empty());
        assert_eq!(
            seen.iter()
                .map(|s| (s.stream.as_str(), s.run, s.seq))
                .collect::<Vec<_>>(),
            [("orders", a, 17), ("orders@backfill:1..2", b, 5)]
        );
        // A pruned run is forgotten only if it is still the scope's latest.
        witness.forget("shop", "orders", b);
        assert_eq!(Witness::new(&dir).seen().0.len(), 2);
        witness.forget("shop", "orders", a);
        assert_eq!(Witness::new(&dir).seen().0.len(), 1);
        // A flipped bit is reported.
        let path = dir.join(file_name("shop", "orders@backfill:1..2"));
        let mut bytes = fs::read(&path).unwrap_or_default();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        let _ = fs::write(&path, bytes);
        let (seen, unreadable) = Witness::new(&dir).seen();
        assert!(seen.is_empty());
        assert_eq!(unreadable.len(), 1);
        let _ = fs::remove_dir_all(&dir);
    }
}
