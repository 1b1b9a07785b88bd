//! The webhook inbox: accepted events, durable before the sender hears 2xx, each event id
//! once. One sled database in `<state>/webhooks/`:
//!
//! - `e` + seq → an accepted event waiting to be applied (its body inline, or, above
//!   [`INLINE`], in `bodies/<seq>`, written and synced before the entry);
//! - `i` + sync, stream, event id → when it was accepted and its seq: a second delivery of
//!   the id is a duplicate, answered as accepted (once the first is durable) and stored
//!   nowhere;
//! - `t` + accepted-at + the `i` key: the ids in time order, so the ones older than the
//!   dedupe window are forgotten by a range scan.
//!
//! The id and the event go in one transaction; a crash keeps both or neither (then the
//! sender, never answered, delivers again). Durability is a group commit: each accepted
//! event waits until a flush that began after it was written has ended; one committer
//! flushes for every event written meanwhile, so concurrent senders share the fsyncs.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sled::transaction::{ConflictableTransactionError, TransactionError};
use tokio::sync::{watch, Notify};
use waymark_engine::Timestamp;

/// Bodies larger than this are kept in files, not in sled values (sled rewrites large
/// values as blobs on every change of their page; staged pages are kept out for the same
/// reason).
pub const INLINE: usize = 16 * 1024;

/// Why the inbox failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The database could not be opened, read or written.
    #[error("webhook inbox {path}: {source}")]
    Sled {
        /// Its directory.
        path: PathBuf,
        /// What sled said.
        source: sled::Error,
    },
    /// A body file could not be written, read or removed.
    #[error("webhook inbox {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// An entry cannot be read back.
    #[error("webhook inbox: event {seq} is unreadable: {why}")]
    Damaged {
        /// The event.
        seq: u64,
        /// Why.
        why: String,
    },
    /// The committer stopped (the process is ending): the event may not be durable.
    #[error("webhook inbox: stopping, the event is not acknowledged")]
    Stopping,
}

/// One event as the receiver hands it over.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    /// The sync it feeds.
    pub sync: String,
    /// The stream it feeds.
    pub stream: String,
    /// Its id (from the signature scheme or the body), when it has one.
    pub id: Option<String>,
    /// When it was accepted.
    pub at: Timestamp,
    /// The raw body, as signed.
    pub body: Vec<u8>,
}

/// What became of an event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Accepted {
    /// Stored under this sequence number, durably.
    New(u64),
    /// Its id was accepted before, within the dedupe window: nothing stored.
    Duplicate,
}

#[derive(Serialize, Deserialize)]
struct Stored {
    sync: String,
    stream: String,
    id: Option<String>,
    at: u64,
    /// `None`: the body is in `bodies/<seq>`.
    body: Option<Vec<u8>>,
}

/// The inbox of a state directory.
pub struct Inbox {
    db: sled::Db,
    dir: PathBuf,
    /// The highest sequence number written (not yet necessarily durable).
    written: AtomicU64,
    /// The highest sequence number known durable; `None` once a flush failed (nothing
    /// after it is acknowledged).
    durable: watch::Sender<Option<u64>>,
    /// Wakes the committer.
    wake: Notify,
    /// Flushes done, for measurement.
    flushes: AtomicU64,
}

impl Inbox {
    /// Opens (or creates) the inbox in `dir`. Run [`Inbox::commit`] beside it.
    pub fn open(dir: &Path) -> Result<Arc<Inbox>, Error> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| Error::Io { path, source }
        };
        std::fs::create_dir_all(dir.join("bodies")).map_err(io(&dir.join("bodies")))?;
        let db = sled::Config::new()
            .path(dir.join("db"))
            .open()
            .map_err(|source| Error::Sled {
                path: dir.to_path_buf(),
                source,
            })?;
        // What a previous process wrote is on disk (sled recovered it): durable. Every
        // sequence number from now on is above this one.
        let before = db.generate_id().map_err(|source| Error::Sled {
            path: dir.to_path_buf(),
            source,
        })?;
        Ok(Arc::new(Inbox {
            db,
            dir: dir.to_path_buf(),
            written: AtomicU64::new(0),
            durable: watch::Sender::new(Some(before + 1)),
            wake: Notify::new(),
            flushes: AtomicU64::new(0),
        }))
    }

    fn sled(&self, source: sled::Error) -> Error {
        Error::Sled {
            path: self.dir.clone(),
            source,
        }
    }

    fn body_file(&self, seq: u64) -> PathBuf {
        self.dir.join("bodies").join(seq.to_string())
    }

    /// Stores `event` unless its id was accepted before; returns once it is durable.
    pub async fn accept(&self, event: Event) -> Result<Accepted, Error> {
        // Sequence numbers from 1; sled's ids survive restarts.
        let seq = self.db.generate_id().map_err(|e| self.sled(e))? + 1;
        let inline = event.body.len() <= INLINE;
        if !inline {
            let path = self.body_file(seq);
            write_synced(&path, &event.body).map_err(|source| Error::Io { path, source })?;
        }
        let stored = Stored {
            sync: event.sync.clone(),
            stream: event.stream.clone(),
            id: event.id.clone(),
            at: event.at.0,
            body: inline.then_some(event.body),
        };
        let value =
            bincode::serde::encode_to_vec(&stored, bincode::config::standard()).map_err(|e| {
                Error::Damaged {
                    seq,
                    why: e.to_string(),
                }
            })?;
        let id_key = event
            .id
            .as_deref()
            .map(|id| id_key(&event.sync, &event.stream, id));
        let at = event.at.0.to_be_bytes();
        let accepted = [at, seq.to_be_bytes()].concat();
        let outcome = self.db.transaction(|tx| {
            if let Some(key) = &id_key {
                if let Some(first) = tx.get(key)? {
                    let first = first
                        .get(8..16)
                        .and_then(|b| b.try_into().ok())
                        .map_or(0, u64::from_be_bytes);
                    return Err(ConflictableTransactionError::Abort(first));
                }
                tx.insert(key.as_slice(), accepted.as_slice())?;
                tx.insert([b"t".as_slice(), &at, key].concat(), &[])?;
            }
            tx.insert(
                [b"e".as_slice(), &seq.to_be_bytes()].concat(),
                value.as_slice(),
            )?;
            Ok(())
        });
        match outcome {
            Ok(()) => {
                self.written.fetch_max(seq, Ordering::SeqCst);
                self.wake.notify_one();
                self.durable_upto(seq).await?;
                Ok(Accepted::New(seq))
            }
            Err(TransactionError::Abort(first)) => {
                if !inline {
                    let _ = std::fs::remove_file(self.body_file(seq));
                }
                // The first delivery may still be on its way to the disk: the sender hears
                // 2xx for its duplicate only once it is there.
                self.durable_upto(first).await?;
                Ok(Accepted::Duplicate)
            }
            Err(TransactionError::Storage(e)) => Err(self.sled(e)),
        }
    }

    /// Waits until the events up to `seq` are durable.
    async fn durable_upto(&self, seq: u64) -> Result<(), Error> {
        let mut durable = self.durable.subscribe();
        let done = durable
            .wait_for(|d| d.is_none_or(|d| d >= seq))
            .await
            .map_err(|_| Error::Stopping)?;
        match *done {
            Some(_) => Ok(()),
            None => Err(Error::Stopping),
        }
    }

    /// The group commit: flushes whatever was written since the last flush, then tells the
    /// events it covered. Runs until it is dropped, or a flush fails: then no event waiting
    /// or to come is acknowledged (their senders deliver again).
    pub async fn commit(self: Arc<Self>) -> Result<(), Error> {
        loop {
            self.wake.notified().await;
            let upto = self.written.load(Ordering::SeqCst);
            if self.durable.borrow().is_some_and(|d| upto <= d) {
                continue;
            }
            if let Err(e) = self.db.flush_async().await {
                self.durable.send_replace(None);
                return Err(self.sled(e));
            }
            self.flushes.fetch_add(1, Ordering::Relaxed);
            self.durable.send_replace(Some(upto));
        }
    }

    /// Flushes done so far (each covers every event written before it began).
    pub fn flushes(&self) -> u64 {
        self.flushes.load(Ordering::Relaxed)
    }

    /// Up to `limit` events waiting to be applied, oldest first, with their sequence
    /// numbers.
    pub fn waiting(&self, limit: usize) -> Result<Vec<(u64, Event)>, Error> {
        let mut out = Vec::new();
        for item in self.db.scan_prefix(b"e").take(limit) {
            let (key, value) = item.map_err(|e| self.sled(e))?;
            let seq = key
                .get(1..9)
                .and_then(|b| b.try_into().ok())
                .map_or(0, u64::from_be_bytes);
            let damaged = |why: String| Error::Damaged { seq, why };
            let (stored, _): (Stored, usize) =
                bincode::serde::decode_from_slice(&value, bincode::config::standard())
                    .map_err(|e| damaged(e.to_string()))?;
            let body = match stored.body {
                Some(body) => body,
                None => {
                    let path = self.body_file(seq);
                    std::fs::read(&path).map_err(|source| Error::Io { path, source })?
                }
            };
            let event = Event {
                sync: stored.sync,
                stream: stored.stream,
                id: stored.id,
                at: Timestamp(stored.at),
                body,
            };
            out.push((seq, event));
        }
        Ok(out)
    }

    /// The events `seqs` were applied (their writes are durable at the destination): they
    /// leave the inbox; their ids stay for the dedupe window.
    pub fn applied(&self, seqs: &[u64]) -> Result<(), Error> {
        let mut batch = sled::Batch::default();
        for seq in seqs {
            batch.remove([b"e".as_slice(), &seq.to_be_bytes()].concat());
        }
        self.db.apply_batch(batch).map_err(|e| self.sled(e))?;
        for seq in seqs {
            // Most bodies were inline: no file.
            let _ = std::fs::remove_file(self.body_file(*seq));
        }
        Ok(())
    }

    /// Forgets the ids accepted more than `keep` before `now` (a later delivery of one is
    /// new again); how many.
    pub fn forget(&self, now: Timestamp, keep: Duration) -> Result<usize, Error> {
        let cutoff = now
            .0
            .saturating_sub(u64::try_from(keep.as_millis()).unwrap_or(u64::MAX));
        let end = [b"t".as_slice(), &cutoff.to_be_bytes()].concat();
        let mut batch = sled::Batch::default();
        let mut n = 0;
        for item in self.db.range(b"t".to_vec()..end) {
            let (key, _) = item.map_err(|e| self.sled(e))?;
            if let Some(id) = key.get(9..) {
                batch.remove(id);
            }
            batch.remove(key);
            n += 1;
        }
        self.db.apply_batch(batch).map_err(|e| self.sled(e))?;
        Ok(n)
    }
}

/// The dedupe key of an id: `i`, then the sync, stream and id, each ended by a NUL.
fn id_key(sync: &str, stream: &str, id: &str) -> Vec<u8> {
    let mut key = vec![b'i'];
    for part in [sync, stream, id] {
        key.extend_from_slice(part.as_bytes());
        key.push(0);
    }
    key
}

/// Writes `bytes` to `path` and syncs the file and its directory.
fn write_synced(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut file = std::fs::File::create(path)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(id: Option<&str>, at: u64, body: &[u8]) -> Event {
        Event {
            sync: "shop".into(),
            stream: "orders".into(),
            id: id.map(str::to_string),
            at: Timestamp(at),
            body: body.to_vec(),
        }
    }

    fn temp(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("waymark-inbox-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn accepted_events_survive_a_reopen_and_an_id_is_accepted_once() -> Result<(), Error> {
        let dir = temp("once");
        let large = vec![b'x'; INLINE + 1];
        {
            let inbox = Inbox::open(&dir)?;
            let committer = tokio::spawn(inbox.clone().commit());
            assert!(matches!(
                inbox.accept(event(Some("a"), 1, b"{}")).await?,
                Accepted::New(_)
            ));
            assert_eq!(
                inbox.accept(event(Some("a"), 2, b"{\"again\":1}")).await?,
                Accepted::Duplicate
            );
            assert!(matches!(
                inbox.accept(event(None, 3, b"[]")).await?,
                Accepted::New(_)
            ));
            assert!(matches!(
                inbox.accept(event(Some("b"), 4, &large)).await?,
                Accepted::New(_)
            ));
            // Its handle on the database goes with it.
            committer.abort();
            let _ = committer.await;
        }
        // As a new process finds it.
        let inbox = Inbox::open(&dir)?;
        let waiting = inbox.waiting(10)?;
        let seen: Vec<(Option<String>, usize)> = waiting
            .iter()
            .map(|(_, e)| (e.id.clone(), e.body.len()))
            .collect();
        assert_eq!(
            seen,
            [
                (Some("a".into()), 2),
                (None, 2),
                (Some("b".into()), INLINE + 1)
            ]
        );
        assert_eq!(waiting[0].1, event(Some("a"), 1, b"{}"));
        let seqs: Vec<u64> = waiting.iter().map(|(s, _)| *s).collect();
        inbox.applied(&seqs)?;
        assert!(inbox.waiting(10)?.is_empty());
        let files = std::fs::read_dir(dir.join("bodies")).map_or(0, |d| d.count());
        assert_eq!(files, 0, "the large body's file is gone with it");
        // Applied, but still within the dedupe window: a redelivery is a duplicate.
        let committer = tokio::spawn(inbox.clone().commit());
        assert_eq!(
            inbox.accept(event(Some("a"), 5, b"{}")).await?,
            Accepted::Duplicate
        );
        // Past the window it is new again.
        assert_eq!(
            inbox.forget(Timestamp(10 + 3), Duration::from_millis(10))?,
            1
        );
        assert_eq!(inbox.forget(Timestamp(100), Duration::from_millis(10))?, 1);
        assert!(matches!(
            inbox.accept(event(Some("a"), 200, b"{}")).await?,
            Accepted::New(_)
        ));
        committer.abort();
        let _ = std::fs::remove_dir_all(&dir);
        Ok(())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_senders_share_flushes_and_each_id_is_stored_once() -> Result<(), Error> {
        let dir = temp("group");
        let inbox = Inbox::open(&dir)?;
        let committer = tokio::spawn(inbox.clone().commit());
        // 64 senders, 20 events each; every id sent twice, by two senders at once.
        let mut senders = Vec::new();
        for sender in 0..64u64 {
            let inbox = inbox.clone();
            senders.push(tokio::spawn(async move {
                let mut new = 0;
                for i in 0..20u64 {
                    let id = format!("{}", (sender * 20 + i) % 640);
                    let body = format!("{{\"n\":{i}}}");
                    if let Accepted::New(_) =
                        inbox.accept(event(Some(&id), i, body.as_bytes())).await?
                    {
                        new += 1;
                    }
                }
                Ok::<u64, Error>(new)
            }));
        }
        let mut new = 0;
        for sender in senders {
            new += sender.await.map_err(|_| Error::Stopping)??;
        }
        assert_eq!(new, 640, "each of the 640 ids once");
        assert_eq!(inbox.waiting(10_000)?.len(), 640);
        println!("1280 events, {} flushes", inbox.flushes());
        committer.abort();
        let _ = std::fs::remove_dir_all(&dir);
        Ok(())
    }
}
