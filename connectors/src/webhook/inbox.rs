//! The webhook inbox: accepted events, durable before the sender hears 2xx, each event id
//! once. One sled database in `<state>/webhooks/`:
//!
//! - `e` + sync, stream + seq → an accepted event waiting to be applied (its body inline,
//!   or, above [`INLINE`], in `bodies/<seq>`, written and synced before the entry);
//! - `i` + sync, stream, event id → when it was accepted: a second delivery of the id is a
//!   duplicate, answered as accepted (once the first is durable) and stored nowhere;
//! - `t` + accepted-at + the `i` key: the ids in time order, so the ones older than the
//!   dedupe window are forgotten by a range scan.
//!
//! Each event is stamped with its acceptance time by the committer, so stamps grow with
//! sequence numbers; [`Inbox::horizon`] is a time no later event will be stamped at or
//! before, at which every event stamped earlier is readable: the end of a window of events
//! that is complete once chosen (a webhook run's watermark).
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

/// An event read back: its sequence number and acceptance time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Waiting {
    /// Its sequence number.
    pub seq: u64,
    /// When it was accepted.
    pub at: Timestamp,
    /// Its id, when it has one.
    pub id: Option<String>,
    /// The raw body.
    pub body: Vec<u8>,
}

/// Acceptance times: the one the committer is writing, and the lowest the next may take.
#[derive(Default)]
struct Stamps {
    busy: Option<u64>,
    floor: u64,
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
    stamps: Mutex<Stamps>,
}

/// The most events one commit takes.
const BATCH: usize = 4096;

/// The key of the next sequence number.
const NEXT: &[u8] = b"n";

/// The key of the last acceptance time stamped.
const STAMP: &[u8] = b"s";

fn now_ms() -> u64 {
    Timestamp::from_system(std::time::SystemTime::now()).0
}

fn read_u64(value: Option<sled::IVec>) -> Option<u64> {
    value
        .and_then(|v| v.as_ref().try_into().ok())
        .map(u64::from_be_bytes)
}

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
        let next = read_u64(db.get(NEXT).map_err(sled)?).unwrap_or(1);
        // Stamps go on after the last one, even if the clock went back.
        let floor = read_u64(db.get(STAMP).map_err(sled)?).map_or(0, |s| s + 1);
        let (queue, queued) = mpsc::unbounded_channel();
        Ok(Arc::new(Inbox {
            db,
            dir: dir.to_path_buf(),
            queue,
            queued: Mutex::new(Some(queued)),
            next: AtomicU64::new(next),
            flushes: AtomicU64::new(0),
            stamps: Mutex::new(Stamps { busy: None, floor }),
        }))
    }

    fn sled(&self, source: sled::Error) -> Error {
        Error::Sled {
            path: self.dir.clone(),
            source,
        }
    }

    fn stamps(&self) -> std::sync::MutexGuard<'_, Stamps> {
        self.stamps.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A time at which every event stamped at or before it is readable, and after which
    /// every later event is stamped: a window ending here is complete. Never earlier than
    /// one it returned before.
    pub fn horizon(&self) -> Timestamp {
        let mut stamps = self.stamps();
        let horizon = match stamps.busy {
            Some(writing) => writing.saturating_sub(1),
            None => now_ms().max(stamps.floor),
        };
        stamps.floor = stamps.floor.max(horizon + 1);
        Timestamp(horizon)
    }

    /// Stamps after `t` only (a window already applied ended there).
    pub fn stamp_after(&self, t: Timestamp) {
        let mut stamps = self.stamps();
        stamps.floor = stamps.floor.max(t.0 + 1);
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
            let stamp = {
                let mut stamps = self.stamps();
                let stamp = now_ms().max(stamps.floor);
                stamps.busy = Some(stamp);
                stamps.floor = stamp;
                stamp
            };
            let answers = self.store(&mut batch, stamp);
            let flushed = match answers {
                Ok(_) => self.db.flush_async().await.map(|_| ()),
                Err(_) => Ok(()),
            };
            self.stamps().busy = None;
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
    fn store(&self, batch: &mut [Pending], stamp: u64) -> Result<Vec<Accepted>, Error> {
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
                at: stamp,
                body: (event.body.len() <= INLINE).then(|| event.body.clone()),
            };
            let value = bincode::serde::encode_to_vec(&stored, bincode::config::standard())
                .map_err(|e| Error::Damaged {
                    seq,
                    why: e.to_string(),
                })?;
            let at = stamp.to_be_bytes();
            if let Some(key) = id_key {
                writes.insert([b"t".as_slice(), &at, &key].concat(), &[]);
                writes.insert(key, &at);
            }
            writes.insert(event_key(&event.sync, &event.stream, seq), value);
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
        writes.insert(STAMP, &stamp.to_be_bytes());
        self.db.apply_batch(writes).map_err(|e| self.sled(e))?;
        Ok(out)
    }

    /// Flushes done so far (each covers every event written before it began).
    pub fn flushes(&self) -> u64 {
        self.flushes.load(Ordering::Relaxed)
    }

    /// Reads the event stored under `key` (an `e` key).
    fn read(&self, key: &[u8], value: &[u8]) -> Result<Waiting, Error> {
        let seq = seq_of(key);
        let damaged = |why: String| Error::Damaged { seq, why };
        let (stored, _): (Stored, usize) =
            bincode::serde::decode_from_slice(value, bincode::config::standard())
                .map_err(|e| damaged(e.to_string()))?;
        let body = match stored.body {
            Some(body) => body,
            None => {
                let path = self.body_file(seq);
                std::fs::read(&path).map_err(|source| Error::Io { path, source })?
            }
        };
        Ok(Waiting {
            seq,
            at: Timestamp(stored.at),
            id: stored.id,
            body,
        })
    }

    /// The events of one stream accepted in `(start, end]` after sequence number `after`,
    /// in order, at most `limit`; and whether more follow within `end`.
    pub fn page(
        &self,
        (sync, stream): (&str, &str),
        after: Option<u64>,
        (start, end): (Option<Timestamp>, Timestamp),
        limit: usize,
    ) -> Result<(Vec<Waiting>, bool), Error> {
        let from = event_key(sync, stream, after.map_or(0, |a| a.saturating_add(1)));
        let to = event_key(sync, stream, u64::MAX);
        let mut out = Vec::new();
        for item in self.db.range(from..=to) {
            let (key, value) = item.map_err(|e| self.sled(e))?;
            let event = self.read(&key, &value)?;
            if start.is_some_and(|s| event.at <= s) {
                continue;
            }
            if event.at > end {
                break;
            }
            if out.len() == limit {
                return Ok((out, true));
            }
            out.push(event);
        }
        Ok((out, false))
    }

    /// How many events of one stream accepted after `after` wait, and when the oldest
    /// was accepted.
    pub fn backlog(
        &self,
        (sync, stream): (&str, &str),
        after: Option<Timestamp>,
    ) -> Result<(u64, Option<Timestamp>), Error> {
        let (mut n, mut oldest) = (0, None);
        for item in self.db.scan_prefix(stream_prefix(sync, stream)) {
            let (key, value) = item.map_err(|e| self.sled(e))?;
            let (stored, _): (Stored, usize) =
                bincode::serde::decode_from_slice(&value, bincode::config::standard()).map_err(
                    |e| Error::Damaged {
                        seq: seq_of(&key),
                        why: e.to_string(),
                    },
                )?;
            if after.is_some_and(|a| stored.at <= a.0) {
                continue;
            }
            oldest = oldest.or(Some(Timestamp(stored.at)));
            n += 1;
        }
        Ok((n, oldest))
    }

    /// The first event of one stream accepted after `after` (all of them: `None`).
    pub fn oldest(
        &self,
        (sync, stream): (&str, &str),
        after: Option<Timestamp>,
    ) -> Result<Option<Waiting>, Error> {
        let (mut events, _) = self.page((sync, stream), None, (after, Timestamp(u64::MAX)), 1)?;
        Ok(events.pop())
    }

    /// The events of one stream accepted up to `end` were applied (their writes are
    /// durable at the destination): they leave the inbox; their ids stay for the dedupe
    /// window. How many left.
    pub fn applied(&self, (sync, stream): (&str, &str), end: Timestamp) -> Result<usize, Error> {
        let mut batch = sled::Batch::default();
        let mut files = Vec::new();
        let mut n = 0;
        for item in self.db.scan_prefix(stream_prefix(sync, stream)) {
            let (key, value) = item.map_err(|e| self.sled(e))?;
            let seq = seq_of(&key);
            let (stored, _): (Stored, usize) =
                bincode::serde::decode_from_slice(&value, bincode::config::standard()).map_err(
                    |e| Error::Damaged {
                        seq,
                        why: e.to_string(),
                    },
                )?;
            if stored.at > end.0 {
                break;
            }
            if stored.body.is_none() {
                files.push(self.body_file(seq));
            }
            batch.remove(key);
            n += 1;
        }
        self.db.apply_batch(batch).map_err(|e| self.sled(e))?;
        for file in files {
            let _ = std::fs::remove_file(file);
        }
        Ok(n)
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

/// The key of an event: `e`, the sync and stream each ended by a NUL, the sequence number.
fn event_key(sync: &str, stream: &str, seq: u64) -> Vec<u8> {
    let mut key = stream_prefix(sync, stream);
    key.extend_from_slice(&seq.to_be_bytes());
    key
}

/// The sequence number at the end of an event key.
fn seq_of(key: &[u8]) -> u64 {
    key.len()
        .checked_sub(8)
        .and_then(|i| key.get(i..))
        .and_then(|b| b.try_into().ok())
        .map_or(0, u64::from_be_bytes)
}

/// The prefix of a stream's event keys.
fn stream_prefix(sync: &str, stream: &str) -> Vec<u8> {
    let mut key = vec![b'e'];
    for part in [sync, stream] {
        key.extend_from_slice(part.as_bytes());
        key.push(0);
    }
    key
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

    const ORDERS: (&str, &str) = ("shop", "orders");

    fn event(id: Option<&str>, body: &[u8]) -> Event {
        Event {
            sync: ORDERS.0.into(),
            stream: ORDERS.1.into(),
            id: id.map(str::to_string),
            body: body.to_vec(),
        }
    }

    fn temp(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("waymark-inbox-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    const ALL: (Option<Timestamp>, Timestamp) = (None, Timestamp(u64::MAX));

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn accepted_events_survive_a_reopen_and_an_id_is_accepted_once() -> Result<(), Error> {
        let dir = temp("once");
        let large = vec![b'x'; INLINE + 1];
        {
            let inbox = Inbox::open(&dir)?;
            let committer = tokio::spawn(inbox.clone().commit());
            assert!(matches!(
                inbox.accept(event(Some("a"), b"{}")).await?,
                Accepted::New(_)
            ));
            assert_eq!(
                inbox.accept(event(Some("a"), b"{\"again\":1}")).await?,
                Accepted::Duplicate
            );
            assert!(matches!(
                inbox.accept(event(None, b"[]")).await?,
                Accepted::New(_)
            ));
            assert!(matches!(
                inbox.accept(event(Some("b"), &large)).await?,
                Accepted::New(_)
            ));
            // Its handle on the database goes with it.
            committer.abort();
            let _ = committer.await;
        }
        // As a new process finds it (sled's flusher thread lets go of the file lock a
        // moment after the last handle is dropped: wait for that, within reason).
        let began = std::time::Instant::now();
        let inbox = loop {
            match Inbox::open(&dir) {
                Err(Error::Sled { source, .. })
                    if source.to_string().contains("could not acquire lock")
                        && began.elapsed() < std::time::Duration::from_secs(10) =>
                {
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                }
                opened => break opened?,
            }
        };
        let (waiting, more) = inbox.page(ORDERS, None, ALL, 10)?;
        assert!(!more);
        let seen: Vec<(Option<String>, usize)> = waiting
            .iter()
            .map(|e| (e.id.clone(), e.body.len()))
            .collect();
        assert_eq!(
            seen,
            [
                (Some("a".into()), 2),
                (None, 2),
                (Some("b".into()), INLINE + 1)
            ]
        );
        assert_eq!(waiting[0].body, b"{}");
        assert!(waiting
            .windows(2)
            .all(|w| w[0].seq < w[1].seq && w[0].at <= w[1].at));
        // Paging: after the first, two; one at a time says more follow.
        let (rest, _) = inbox.page(ORDERS, Some(waiting[0].seq), ALL, 10)?;
        assert_eq!(rest, waiting[1..]);
        assert!(inbox.page(ORDERS, None, ALL, 1)?.1);
        assert!(inbox
            .page(("shop", "customers"), None, ALL, 10)?
            .0
            .is_empty());
        // Stamps go on after the last one.
        assert!(inbox.horizon() >= waiting[2].at);
        let last = waiting[2].at;
        assert_eq!(inbox.applied(ORDERS, last)?, 3);
        assert!(inbox.page(ORDERS, None, ALL, 10)?.0.is_empty());
        let files = std::fs::read_dir(dir.join("bodies")).map_or(0, |d| d.count());
        assert_eq!(files, 0, "the large body's file is gone with it");
        // Applied, but still within the dedupe window: a redelivery is a duplicate.
        let committer = tokio::spawn(inbox.clone().commit());
        assert_eq!(
            inbox.accept(event(Some("a"), b"{}")).await?,
            Accepted::Duplicate
        );
        // Past the window it is new again.
        let keep = Duration::from_millis(10);
        assert_eq!(inbox.forget(Timestamp(last.0 + 11), keep)?, 2);
        assert!(matches!(
            inbox.accept(event(Some("a"), b"{}")).await?,
            Accepted::New(_)
        ));
        committer.abort();
        let _ = std::fs::remove_dir_all(&dir);
        Ok(())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_window_ending_at_the_horizon_is_complete_once_chosen() -> Result<(), Error> {
        let dir = temp("horizon");
        let inbox = Inbox::open(&dir)?;
        let committer = tokio::spawn(inbox.clone().commit());
        // Senders keep accepting while windows are cut: every event falls in exactly one
        // window, and a window's events are all readable when its end is chosen.
        let sender = {
            let inbox = inbox.clone();
            tokio::spawn(async move {
                for i in 0..2000 {
                    inbox.accept(event(Some(&i.to_string()), b"{}")).await?;
                }
                Ok::<(), Error>(())
            })
        };
        let mut start = None;
        let mut seen = Vec::new();
        loop {
            let done = sender.is_finished();
            let end = inbox.horizon();
            assert!(start.is_none_or(|s| end >= s));
            let (events, more) = inbox.page(ORDERS, None, (start, end), usize::MAX)?;
            assert!(!more);
            seen.extend(events.iter().map(|e| e.id.clone().unwrap_or_default()));
            start = Some(end);
            if done {
                break;
            }
            tokio::task::yield_now().await;
        }
        sender.await.map_err(|_| Error::Stopping)??;
        let expected: Vec<String> = (0..2000).map(|i: u32| i.to_string()).collect();
        assert_eq!(seen, expected, "each event in one window, in order");
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
                        inbox.accept(event(Some(&id), body.as_bytes())).await?
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
        assert_eq!(inbox.page(ORDERS, None, ALL, 10_000)?.0.len(), 640);
        println!("1280 events, {} flushes", inbox.flushes());
        committer.abort();
        let _ = std::fs::remove_dir_all(&dir);
        Ok(())
    }
}
