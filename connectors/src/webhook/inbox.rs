//! The webhook inbox: accepted events, durable before the sender hears 2xx, each event id
//! once. One sled database in `<state>/webhooks/`:
//!
//! - `e` + seq → an accepted event waiting to be applied (its body inline, or, above
//!   [`INLINE`], in `bodies/<seq>`, written and synced before the entry);
//! - `i` + sync, stream, event id → when it was accepted: a second delivery of the id is a
//!   duplicate, answered as accepted (once the first is durable) and stored nowhere;
//! - `t` + accepted-at + the `i` key: the ids in time order, so the ones older than the
//!   dedupe window are forgotten by a range scan.
//!
//! Durability is a group commit: one committer takes every event waiting, writes the new
//! ones in one atomic batch (the ids with their events: a crash keeps both or neither, and
//! a sender never answered delivers again), flushes once and answers them all — so
//! concurrent senders share the fsync and the writing. Being the only writer, it checks
//! ids without a transaction.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};
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

/// An event on its way to the committer, and where its answer goes.
struct Pending {
    event: Event,
    /// Its body's file, when it is too large to be inline (already written and synced).
    file: Option<PathBuf>,
    answer: oneshot::Sender<Result<Accepted, Error>>,
}

/// The inbox of a state directory.
pub struct Inbox {
    db: sled::Db,
    dir: PathBuf,
    /// Events for the committer.
    queue: mpsc::UnboundedSender<Pending>,
    /// Taken by the committer when it starts.
    queued: Mutex<Option<mpsc::UnboundedReceiver<Pending>>>,
    /// Numbers the next event.
    next: AtomicU64,
    /// Flushes done, for measurement.
    flushes: AtomicU64,
}

/// The most events one commit takes.
const BATCH: usize = 4096;

/// The key of the next sequence number.
const NEXT: &[u8] = b"n";

impl Inbox {
    /// Opens (or creates) the inbox in `dir`. Run [`Inbox::commit`] beside it.
    pub fn open(dir: &Path) -> Result<Arc<Inbox>, Error> {
        let bodies = dir.join("bodies");
        std::fs::create_dir_all(&bodies).map_err(|source| Error::Io {
            path: bodies,
            source,
        })?;
        let sled = |source| Error::Sled {
            path: dir.to_path_buf(),
            source,
        };
        let db = sled::Config::new()
            .path(dir.join("db"))
            .open()
            .map_err(sled)?;
        // Numbers go on from the last batch's (kept with it: applied events are gone).
        let next = db
            .get(NEXT)
            .map_err(sled)?
            .and_then(|v| v.as_ref().try_into().ok())
            .map_or(1, u64::from_be_bytes);
        let (queue, queued) = mpsc::unbounded_channel();
        Ok(Arc::new(Inbox {
            db,
            dir: dir.to_path_buf(),
            queue,
            queued: Mutex::new(Some(queued)),
            next: AtomicU64::new(next),
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

    /// Stores `event` unless its id was accepted before; returns once it is durable (a
    /// duplicate, once the first delivery is).
    pub async fn accept(&self, event: Event) -> Result<Accepted, Error> {
        // A large body goes to its own file first, here, so senders write theirs in
        // parallel; the committer only links it.
        let file = match event.body.len() > INLINE {
            true => {
                let path = self
                    .dir
                    .join("bodies")
                    .join(format!("in-{}", uuid::Uuid::now_v7()));
                write_synced(&path, &event.body).map_err(|source| Error::Io {
                    path: path.clone(),
                    source,
                })?;
                Some(path)
            }
            false => None,
        };
        let (answer, answered) = oneshot::channel();
        self.queue
            .send(Pending {
                event,
                file,
                answer,
            })
            .map_err(|_| Error::Stopping)?;
        answered.await.map_err(|_| Error::Stopping)?
    }

    /// The group commit: takes every event waiting (up to 4,096), stores the new ones in
    /// one atomic batch (an id already accepted, or twice in the batch, is a duplicate),
    /// flushes once, then answers them all. Runs until the inbox is dropped, or a flush
    /// fails: then the events of that batch are not acknowledged (their senders deliver
    /// again) and the committer stops.
    pub async fn commit(self: Arc<Self>) -> Result<(), Error> {
        let taken = self
            .queued
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        let Some(mut queued) = taken else {
            return Ok(());
        };
        let mut batch = Vec::with_capacity(BATCH);
        while queued.recv_many(&mut batch, BATCH).await > 0 {
            let answers = self.store(&mut batch);
            let flushed = match answers {
                Ok(_) => self.db.flush_async().await.map(|_| ()),
                Err(_) => Ok(()),
            };
            if answers.is_ok() && flushed.is_ok() {
                self.flushes.fetch_add(1, Ordering::Relaxed);
            }
            match (answers, flushed) {
                (Ok(answers), Ok(())) => {
                    for (pending, accepted) in batch.drain(..).zip(answers) {
                        let _ = pending.answer.send(Ok(accepted));
                    }
                }
                (Err(e), _) => {
                    let why = e.to_string();
                    for pending in batch.drain(..) {
                        let _ = pending.answer.send(Err(Error::Stopping));
                    }
                    tracing::error!("webhook inbox: {why}");
                }
                (Ok(_), Err(e)) => {
                    batch.clear();
                    return Err(self.sled(e));
                }
            }
        }
        Ok(())
    }

    /// Writes the new events of `batch` in one atomic sled batch; what each became.
    fn store(&self, batch: &mut [Pending]) -> Result<Vec<Accepted>, Error> {
        let mut writes = sled::Batch::default();
        let mut seen = std::collections::HashSet::new();
        let mut out = Vec::with_capacity(batch.len());
        let mut renamed = false;
        for pending in batch.iter_mut() {
            let event = &pending.event;
            let id_key = event
                .id
                .as_deref()
                .map(|id| id_key(&event.sync, &event.stream, id));
            if let Some(key) = &id_key {
                let known = self.db.contains_key(key).map_err(|e| self.sled(e))?;
                if known || !seen.insert(key.clone()) {
                    if let Some(file) = pending.file.take() {
                        let _ = std::fs::remove_file(file);
                    }
                    out.push(Accepted::Duplicate);
                    continue;
                }
            }
            let seq = self.next.fetch_add(1, Ordering::SeqCst);
            if let Some(file) = pending.file.take() {
                let path = self.body_file(seq);
                std::fs::rename(&file, &path).map_err(|source| Error::Io { path, source })?;
                renamed = true;
            }
            let stored = Stored {
                sync: event.sync.clone(),
                stream: event.stream.clone(),
                id: event.id.clone(),
                at: event.at.0,
                body: (event.body.len() <= INLINE).then(|| event.body.clone()),
            };
            let value = bincode::serde::encode_to_vec(&stored, bincode::config::standard())
                .map_err(|e| Error::Damaged {
                    seq,
                    why: e.to_string(),
                })?;
            let at = event.at.0.to_be_bytes();
            if let Some(key) = id_key {
                writes.insert([b"t".as_slice(), &at, &key].concat(), &[]);
                writes.insert(key, &at);
            }
            writes.insert([b"e".as_slice(), &seq.to_be_bytes()].concat(), value);
            out.push(Accepted::New(seq));
        }
        if renamed {
            // The bodies' new names are durable before the entries naming them.
            let bodies = self.dir.join("bodies");
            std::fs::File::open(&bodies)
                .and_then(|d| d.sync_all())
                .map_err(|source| Error::Io {
                    path: bodies,
                    source,
                })?;
        }
        let next = self.next.load(Ordering::SeqCst);
        writes.insert(NEXT, &next.to_be_bytes());
        self.db.apply_batch(writes).map_err(|e| self.sled(e))?;
        Ok(out)
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
