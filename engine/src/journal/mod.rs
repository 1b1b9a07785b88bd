//! The run journal: every event of every run, per-run heads, stream checkpoints.
//!
//! A run's events go to its own append-only log ([`log`]: one `write` per step, synced when
//! the run's [`Durability`] asks), so a long run never grows the ordered key space below
//! and a step costs no database batch. The key space (sled) holds the rest:
//!
//! | key                          | value                                  |
//! |------------------------------|----------------------------------------|
//! | `h` run-id(16)               | [`RunState`] at its last status change (or every 1,024 events) |
//! | `l` run-id(16)               | the head's seq and where its event's frame starts in the log |
//! | `a` sync `\0` stream         | [`RunId`] of the stream's unfinished run |
//! | `c` sync `\0` stream         | the stream's committed [`Checkpoint`] as of its last settled run |
//! | `w` digest                   | the workflow's canonical key/values    |
//! | `k` sync `\0` stream `\0` seq | a [`CheckpointChange`] (the last 200)   |
//! | `r` sync `\0` stream `\0` seq | a [`Reconciliation`] (the last 200)     |
//! | `e` run-id(16) seq(u64 BE)   | an [`Event`] of a run journaled before run logs |
//!
//! Every value is framed by [`codec`] (format version + CRC-32). A run's state is its head
//! folded with the events its log holds past it; its checkpoint, the last commit among
//! those (or the stored one). When a run changes status (starts, pauses, fails, completes,
//! is abandoned), and every 1,024 events, its log is synced and the head, the
//! checkpoint, the history and the unfinished-run pointer are written in one flushed batch:
//! what every other reader sees, and where a resume starts folding.

mod backend;
pub mod codec;
mod log;
pub mod sled;

use std::collections::BTreeMap;
use std::time::Duration;

pub use self::backend::{Backend, BackendError, Entries, Entry, MemoryBackend, Op};
pub use self::codec::{Error as CodecError, FORMAT_VERSION};
pub use self::sled::SledBackend;

use crate::checkpoint::Checkpoint;
use crate::durability::Durability;
use crate::event::{Event, RunStarted};
use crate::reconciliation::Reconciliation;
use crate::run_id::RunId;
use crate::state::{apply, fold, Invalid, RunState};
use crate::time::Timestamp;
use crate::witness::{Seen, Unreadable, Witness};

/// A journal failure. All of these are fail-stop: the run cannot continue safely.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The storage below failed.
    #[error("journal storage failed: {0}")]
    Storage(#[from] BackendError),
    /// An entry fails its checksum, is truncated, or is from a newer Waymark.
    #[error(
        "journal entry {entry} is unreadable: {source}. Run `waymark journal verify` to list \
         every damaged entry; `waymark run <workflow> --fresh` abandons a damaged run and \
         continues from the stream's committed checkpoint"
    )]
    Corrupt {
        /// Which entry ("run R seq N", "head of run R", ...).
        entry: String,
        /// What is wrong with it.
        source: codec::Error,
    },
    /// The events of a run do not fold (a step out of order).
    #[error("journal of run {run} is inconsistent: {source}")]
    Inconsistent {
        /// The run.
        run: RunId,
        /// The transition that failed.
        source: Invalid,
    },
    /// No run with that id is in the journal (never existed, or pruned).
    #[error("no run {0} in the journal (it never existed or was pruned by retention)")]
    UnknownRun(RunId),
}

fn run_key(tag: u8, run: RunId) -> Vec<u8> {
    let mut key = Vec::with_capacity(17);
    key.push(tag);
    key.extend_from_slice(run.as_bytes());
    key
}

fn stream_key(tag: u8, sync: &str, stream: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(2 + sync.len() + stream.len());
    key.push(tag);
    key.extend_from_slice(sync.as_bytes());
    key.push(0);
    key.extend_from_slice(stream.as_bytes());
    key
}

/// `tag` sync `\0` stream `\0`: the prefix of one of a stream's histories (`k`: checkpoint
/// changes, `r`: reconciliations).
fn history_prefix(tag: u8, sync: &str, stream: &str) -> Vec<u8> {
    let mut key = stream_key(tag, sync, stream);
    key.push(0);
    key
}

/// Entries kept per stream and history (the oldest go first).
const HISTORY: usize = 200;

/// One change of a stream's checkpoint: set by an operator (`waymark checkpoint`), or the
/// final checkpoint of a completed run. Kept so any earlier value can be restored.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CheckpointChange {
    /// When.
    pub at: Timestamp,
    /// Who: a user name, or `run <id>`.
    pub who: String,
    /// Why (an operator's `--reason`, or `completed`).
    pub why: String,
    /// The checkpoint before.
    pub previous: Option<Checkpoint>,
    /// The checkpoint after; `None`: the stream starts again from the beginning.
    pub new: Option<Checkpoint>,
}

impl CheckpointChange {
    /// Who a run is in a checkpoint history.
    pub fn run_author(run: RunId) -> String {
        format!("run {run}")
    }
}

fn digest_key(digest: &str) -> Vec<u8> {
    let mut key = vec![b'w'];
    key.extend_from_slice(digest.as_bytes());
    key
}

/// What a pruning pass removed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Pruned {
    /// Finished runs whose journal was removed.
    pub runs: u64,
    /// Events removed.
    pub events: u64,
}

/// One damaged or inconsistent entry found by [`Journal::verify`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Damage {
    /// Which entry.
    pub entry: String,
    /// What is wrong.
    pub problem: String,
}

/// The result of [`Journal::verify`].
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Verified {
    /// Runs checked.
    pub runs: u64,
    /// Events checked.
    pub events: u64,
    /// Problems found (empty: the journal is sound).
    pub damage: Vec<Damage>,
}

/// A run's head is stored again (with its log synced) every this many events, so that
/// resuming a long run folds at most this many.
const HEAD_EVERY: u64 = 1024;

/// Where a run's log stands: its length, and where its last frame starts.
#[derive(Clone, Copy, Debug, Default)]
struct Position {
    end: u64,
    last: u64,
}

/// A run's state as its head and log give it.
struct Replayed {
    state: RunState,
    /// The checkpoint of its last commit past the head.
    checkpoint: Option<Checkpoint>,
    position: Position,
    /// Bytes after the log's readable prefix, and why.
    tail: Option<(usize, String)>,
}

/// The format version since which a run's head is stored as this build reads it.
const HEAD_VERSION: u8 = 4;

/// The journal over a storage backend.
#[derive(Clone)]
pub struct Journal<B> {
    backend: B,
    witness: Option<Witness>,
    durability: Durability,
    /// Runs this handle is appending to (since their start or last status change), their
    /// logs checked for a torn tail, and where their logs stand.
    opened: BTreeMap<RunId, Position>,
    /// Each run's checkpoint after its last commit not yet settled into the key space.
    committed: BTreeMap<RunId, Checkpoint>,
}

/// A scope whose journal lost steps that the witness saw it make durable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lost {
    /// What the witness saw.
    pub seen: Seen,
    /// The run's last sequence number in the journal (`None`: the run is gone, or its head
    /// cannot be read — `problem` says which).
    pub journal_seq: Option<u64>,
    /// What the journal has instead.
    pub problem: String,
}

impl std::fmt::Display for Lost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}/{}: run {} had journaled {} steps; {}",
            self.seen.sync, self.seen.stream, self.seen.run, self.seen.seq, self.problem
        )
    }
}

impl<B: Backend> Journal<B> {
    /// A journal stored in `backend`.
    pub fn new(backend: B) -> Self {
        Journal {
            backend,
            witness: None,
            durability: Durability::default(),
            opened: BTreeMap::new(),
            committed: BTreeMap::new(),
        }
    }

    /// Sets what each step of a run survives from now on (see [`Durability`]).
    pub fn set_durability(&mut self, durability: Durability) {
        self.durability = durability;
    }

    /// What each step of a run survives.
    pub fn durability(&self) -> Durability {
        self.durability
    }

    /// The same, with a witness of what it makes durable (see [`crate::witness`]).
    pub fn with_witness(mut self, witness: Witness) -> Self {
        self.witness = Some(witness);
        self
    }

    fn note(&self, state: &RunState) {
        if let Some(witness) = &self.witness {
            witness.note(
                &state.started.sync,
                &state.started.stream,
                state.run_id(),
                state.last_seq,
            );
        }
    }

    /// The scopes whose steps the witness saw made durable but the journal no longer has
    /// (a damaged database that recovered to an older state, a truncated or replaced
    /// one), and the witness files that cannot be read.
    pub fn lost(&self) -> Result<(Vec<Lost>, Vec<Unreadable>), Error> {
        let Some(witness) = &self.witness else {
            return Ok((Vec::new(), Vec::new()));
        };
        let (seen, unreadable) = witness.seen();
        let mut lost = Vec::new();
        for seen in seen {
            let (journal_seq, problem) = match self.load(seen.run) {
                Ok(state) if state.last_seq >= seen.seq => continue,
                Ok(state) => (
                    Some(state.last_seq),
                    format!("the journal has {}", state.last_seq),
                ),
                Err(Error::UnknownRun(_)) => (None, "the journal has no such run".into()),
                Err(Error::Storage(e)) => return Err(Error::Storage(e)),
                Err(e) => (None, format!("its journal cannot be read ({e})")),
            };
            lost.push(Lost {
                seen,
                journal_seq,
                problem,
            });
        }
        Ok((lost, unreadable))
    }

    fn read<T: serde::de::DeserializeOwned>(
        &self,
        key: &[u8],
        entry: impl FnOnce() -> String,
    ) -> Result<Option<T>, Error> {
        match self.backend.get(key)? {
            None => Ok(None),
            Some(bytes) => codec::decode(&bytes)
                .map(Some)
                .map_err(|source| Error::Corrupt {
                    entry: entry(),
                    source,
                }),
        }
    }

    /// Starts a run: journals `RunStarted`, makes it the stream's unfinished run, remembers
    /// the workflow's canonical form under its digest, and flushes.
    pub fn start(
        &mut self,
        started: RunStarted,
        fingerprint: &[(String, String)],
    ) -> Result<RunState, Error> {
        let run = started.run_id;
        let state = RunState::start(&started);
        let event = Event::RunStarted(started);
        let mut frame = Vec::new();
        log::frame(&mut frame, state.last_seq, &event);
        self.backend.log_append(run, &frame)?;
        self.backend.log_sync(run)?;
        let position = Position {
            end: frame.len() as u64,
            last: 0,
        };
        self.opened.insert(run, position);
        let ops = vec![
            Op::Put(run_key(b'h', run), codec::encode(&state)),
            Op::Put(
                run_key(b'l', run),
                codec::encode(&(state.last_seq, position.last)),
            ),
            Op::Put(
                stream_key(b'a', &state.started.sync, &state.started.stream),
                codec::encode(&run),
            ),
            Op::Put(
                digest_key(&state.started.workflow_digest),
                codec::encode(&fingerprint),
            ),
        ];
        self.backend.commit(ops)?;
        self.backend.flush()?;
        self.note(&state);
        Ok(state)
    }

    /// Appends `event` to the run, folds it into `state`, and returns the new state (see
    /// [`Journal::append_steps`]).
    pub fn append(&mut self, state: RunState, event: &Event) -> Result<RunState, Error> {
        let states = self.append_steps(&state, std::slice::from_ref(event))?;
        Ok(states.into_iter().next_back().unwrap_or(state))
    }

    /// Appends `events` in order to the run's log with one write, synced once if any of
    /// them needs it ([`Event::needs_flush`]) and the durability is `power-loss`. Returns
    /// the state after each event. A step that changes the run's status also settles it
    /// (see the module's description).
    pub fn append_steps(
        &mut self,
        state: &RunState,
        events: &[Event],
    ) -> Result<Vec<RunState>, Error> {
        let run = state.run_id();
        self.open(run)?;
        let mut states: Vec<RunState> = Vec::with_capacity(events.len());
        let mut frames = Vec::with_capacity(256 * events.len());
        let mut last_frame = 0;
        let mut committed = self.committed.get(&run).cloned();
        for event in events {
            let before = states.last().unwrap_or(state).clone();
            let next = advance(before, event, &mut committed)?;
            last_frame = frames.len();
            log::frame(&mut frames, next.last_seq, event);
            states.push(next);
        }
        if let Some(checkpoint) = committed {
            self.committed.insert(run, checkpoint);
        }
        let Some(last) = states.last() else {
            return Ok(states);
        };
        self.backend.log_append(run, &frames)?;
        if let Some(position) = self.opened.get_mut(&run) {
            position.last = position.end + last_frame as u64;
            position.end += frames.len() as u64;
        }
        let changed = last.status != state.status || last.status.is_finished();
        if changed || last.last_seq / HEAD_EVERY != state.last_seq / HEAD_EVERY {
            self.backend.log_sync(run)?;
            self.settle(last, events)?;
            self.note(last);
            if changed {
                // Whoever continues the run next (this handle or another) opens it again.
                self.opened.remove(&run);
            }
        } else if self.durability.syncs() && events.iter().any(Event::needs_flush) {
            self.backend.log_sync(run)?;
            // Only what is durable: the witness must never be ahead of the journal.
            self.note(last);
        }
        Ok(states)
    }

    /// The first append to a run by this handle: a write a crash cut short is cut from its
    /// log, and the checkpoint of its last commit past the head is taken up.
    fn open(&mut self, run: RunId) -> Result<(), Error> {
        if self.opened.contains_key(&run) {
            return Ok(());
        }
        let replayed = self.replay(run)?;
        if let Some((bytes, why)) = &replayed.tail {
            tracing::warn!(%run, bytes, why, "cutting a write a crash cut short from the run's log");
            self.backend.log_truncate(run, replayed.position.end)?;
        }
        if let Some(checkpoint) = replayed.checkpoint {
            self.committed.insert(run, checkpoint);
        }
        self.opened.insert(run, replayed.position);
        Ok(())
    }

    /// Writes the run's head (with where its last event's frame starts in its log), its
    /// checkpoint, the history entry of a completion and the stream's unfinished-run
    /// pointer in one flushed batch.
    fn settle(&mut self, last: &RunState, events: &[Event]) -> Result<(), Error> {
        let run = last.run_id();
        let (sync, stream) = (&last.started.sync, &last.started.stream);
        let checkpoint = self.committed.remove(&run);
        let mut ops = vec![Op::Put(run_key(b'h', run), codec::encode(last))];
        if let Some(position) = self.opened.get(&run) {
            ops.push(Op::Put(
                run_key(b'l', run),
                codec::encode(&(last.last_seq, position.last)),
            ));
        }
        if let Some(at) = events.iter().find_map(|e| match e {
            Event::RunCompleted { at } => Some(*at),
            _ => None,
        }) {
            let change = CheckpointChange {
                at,
                who: CheckpointChange::run_author(run),
                why: "completed".into(),
                previous: last.started.start_from.checkpoint().cloned(),
                new: match &checkpoint {
                    Some(c) => Some(c.clone()),
                    None => self.checkpoint_stored(sync, stream)?,
                },
            };
            ops.extend(self.history_ops(b'k', sync, stream, &change)?);
        }
        if let Some(checkpoint) = checkpoint {
            ops.push(Op::Put(
                stream_key(b'c', sync, stream),
                codec::encode(&checkpoint),
            ));
        }
        if last.status.is_finished() {
            ops.push(Op::Delete(stream_key(b'a', sync, stream)));
        }
        self.backend.commit(ops)?;
        self.backend.flush()?;
        Ok(())
    }

    /// A run's head as stored: a head older than [`HEAD_VERSION`] (before the run's active
    /// time was kept) is rebuilt by folding the run's events, which it shares the format of.
    fn head(&self, run: RunId, value: &[u8]) -> Result<RunState, Error> {
        if codec::version(value).is_some_and(|v| v < HEAD_VERSION) {
            return self.fold(run);
        }
        codec::decode(value).map_err(|source| Error::Corrupt {
            entry: format!("head of run {run}"),
            source,
        })
    }

    /// The run's state folded from all its events.
    fn fold(&self, run: RunId) -> Result<RunState, Error> {
        let events: Vec<Event> = self
            .events(run)
            .map(|item| item.map(|(_, event)| event))
            .collect::<Result<_, _>>()?;
        fold(&events)
            .map_err(|source| Error::Inconsistent { run, source })?
            .ok_or(Error::UnknownRun(run))
    }

    /// The run's state: its head folded with the events its log holds past it.
    pub fn load(&self, run: RunId) -> Result<RunState, Error> {
        Ok(self.replay(run)?.state)
    }

    /// The run's head folded with the events its log holds past it, read from where the
    /// head's own event starts in the log (from the start when that is not known or not
    /// found there).
    fn replay(&self, run: RunId) -> Result<Replayed, Error> {
        let value = self
            .backend
            .get(&run_key(b'h', run))?
            .ok_or(Error::UnknownRun(run))?;
        self.replay_from(self.head(run, &value)?)
    }

    /// [`Journal::replay`] from the run's head as read already.
    fn replay_from(&self, head: RunState) -> Result<Replayed, Error> {
        let run = head.run_id();
        let mut state = head;
        let stored: Option<(u64, u64)> = self
            .read(&run_key(b'l', run), || format!("log position of run {run}"))
            .ok()
            .flatten();
        let mut from = match stored {
            Some((seq, at)) if seq == state.last_seq => at,
            _ => 0,
        };
        let mut parsed = self.log(run, from)?;
        let found = matches!(parsed.frames.first(), Some(Ok((seq, _))) if *seq == state.last_seq);
        if from > 0 && !found {
            from = 0;
            parsed = self.log(run, 0)?;
        }
        let mut checkpoint = None;
        for frame in parsed.frames {
            // Damage in what the head already holds is history, not state.
            let event = match frame {
                Ok((seq, _)) | Err((seq, _)) if seq <= state.last_seq => continue,
                Ok((_, event)) => event,
                Err((seq, source)) => return Err(corrupt(run, seq, source)),
            };
            state = advance(state, &event, &mut checkpoint)?;
        }
        Ok(Replayed {
            state,
            checkpoint,
            position: Position {
                end: from + parsed.valid as u64,
                last: from + parsed.last as u64,
            },
            tail: parsed.tail,
        })
    }

    /// The run's log from byte `from` as it reads (empty when it has none).
    fn log(&self, run: RunId, from: u64) -> Result<log::Parsed, Error> {
        Ok(self
            .backend
            .log_read(run, from)?
            .map(|bytes| log::parse(&bytes))
            .unwrap_or_default())
    }

    /// The run's events in order, each checked against its checksum: those journaled
    /// before run logs, then its log's.
    pub fn events(&self, run: RunId) -> impl Iterator<Item = Result<(u64, Event), Error>> + '_ {
        let stored = self.backend.scan(&run_key(b'e', run)).map(move |item| {
            let (key, value) = item?;
            let seq = seq_of(&key);
            let event = codec::decode(&value).map_err(|source| corrupt(run, seq, source))?;
            Ok((seq, event))
        });
        let logged: Vec<Result<(u64, Event), Error>> = match self.log(run, 0) {
            Ok(parsed) => parsed
                .frames
                .into_iter()
                .map(|frame| frame.map_err(|(seq, source)| corrupt(run, seq, source)))
                .collect(),
            Err(e) => vec![Err(e)],
        };
        stored.chain(logged)
    }

    /// The unfinished run of a stream, if any.
    pub fn active_run(&self, sync: &str, stream: &str) -> Result<Option<RunId>, Error> {
        self.read(&stream_key(b'a', sync, stream), || {
            format!("unfinished-run pointer of {sync}/{stream}")
        })
    }

    /// Forgets the stream's unfinished run (used when its journal is damaged beyond folding
    /// and the operator chose `--fresh`).
    pub fn clear_active_run(&mut self, sync: &str, stream: &str) -> Result<(), Error> {
        self.backend
            .commit(vec![Op::Delete(stream_key(b'a', sync, stream))])?;
        self.backend.flush()?;
        Ok(())
    }

    /// The stream's committed checkpoint, if any: its unfinished run's last commit, else
    /// the one stored when its last run settled.
    pub fn checkpoint(&self, sync: &str, stream: &str) -> Result<Option<Checkpoint>, Error> {
        if let Some(checkpoint) = self.running_checkpoint(sync, stream) {
            return Ok(Some(checkpoint));
        }
        self.checkpoint_stored(sync, stream)
    }

    /// The checkpoint stored when the stream's last run settled.
    fn checkpoint_stored(&self, sync: &str, stream: &str) -> Result<Option<Checkpoint>, Error> {
        self.read(&stream_key(b'c', sync, stream), || {
            format!("checkpoint of {sync}/{stream}")
        })
    }

    /// The last commit of the stream's unfinished run past its settled head (`None` if
    /// there is none, or the run does not read: the stored checkpoint then stands).
    fn running_checkpoint(&self, sync: &str, stream: &str) -> Option<Checkpoint> {
        // From the log, not this handle's memory: another handle may be driving the run.
        let run = self.active_run(sync, stream).ok()??;
        self.replay(run).ok()?.checkpoint
    }

    /// Every stream's committed checkpoint: `(sync, stream, checkpoint)`.
    pub fn checkpoints(
        &self,
    ) -> impl Iterator<Item = Result<(String, String, Checkpoint), Error>> + '_ {
        let mut all: BTreeMap<(String, String), Checkpoint> = BTreeMap::new();
        let mut failed = Vec::new();
        for item in self.backend.scan(b"c") {
            let read = item.map_err(Error::from).and_then(|(key, value)| {
                let (sync, stream) = stream_of(&key);
                match codec::decode(&value) {
                    Ok(checkpoint) => Ok(((sync, stream), checkpoint)),
                    Err(source) => Err(Error::Corrupt {
                        entry: format!("checkpoint of {sync}/{stream}"),
                        source,
                    }),
                }
            });
            match read {
                Ok((name, checkpoint)) => {
                    all.insert(name, checkpoint);
                }
                Err(e) => failed.push(Err(e)),
            }
        }
        for (key, _) in self.backend.scan(b"a").flatten() {
            let (sync, stream) = stream_of(&key);
            if let Some(checkpoint) = self.running_checkpoint(&sync, &stream) {
                all.insert((sync, stream), checkpoint);
            }
        }
        let listed: Vec<_> = all
            .into_iter()
            .map(|((sync, stream), checkpoint)| Ok((sync, stream, checkpoint)))
            .collect();
        listed.into_iter().chain(failed)
    }

    /// Sets (or, with `change.new == None`, clears: from the beginning) the stream's
    /// checkpoint, recording the change in its history. Flushed before it returns.
    pub fn set_checkpoint(
        &mut self,
        sync: &str,
        stream: &str,
        change: &CheckpointChange,
    ) -> Result<(), Error> {
        let key = stream_key(b'c', sync, stream);
        let mut ops = match &change.new {
            Some(c) => vec![Op::Put(key, codec::encode(c))],
            None => vec![Op::Delete(key)],
        };
        ops.extend(self.history_ops(b'k', sync, stream, change)?);
        self.backend.commit(ops)?;
        self.backend.flush()?;
        Ok(())
    }

    /// The stream's checkpoint history, oldest first, numbered.
    pub fn checkpoint_history(
        &self,
        sync: &str,
        stream: &str,
    ) -> Result<Vec<(u64, CheckpointChange)>, Error> {
        self.history(b'k', sync, stream, "checkpoint history")
    }

    /// Records a reconciliation of the stream (flushed before it returns).
    pub fn record_reconciliation(
        &mut self,
        sync: &str,
        stream: &str,
        reconciliation: &Reconciliation,
    ) -> Result<(), Error> {
        let ops = self.history_ops(b'r', sync, stream, reconciliation)?;
        self.backend.commit(ops)?;
        self.backend.flush()?;
        Ok(())
    }

    /// The stream's reconciliations, oldest first, numbered.
    pub fn reconciliations(
        &self,
        sync: &str,
        stream: &str,
    ) -> Result<Vec<(u64, Reconciliation)>, Error> {
        self.history(b'r', sync, stream, "reconciliations")
    }

    /// The entries of one of a stream's histories, oldest first, numbered.
    fn history<T: serde::de::DeserializeOwned>(
        &self,
        tag: u8,
        sync: &str,
        stream: &str,
        what: &str,
    ) -> Result<Vec<(u64, T)>, Error> {
        let prefix = history_prefix(tag, sync, stream);
        self.backend
            .scan(&prefix)
            .map(|item| {
                let (key, value) = item?;
                let mut seq = [0u8; 8];
                if let Some(tail) = key.get(prefix.len()..prefix.len() + 8) {
                    seq.copy_from_slice(tail);
                }
                let entry = codec::decode(&value).map_err(|source| Error::Corrupt {
                    entry: format!("{what} of {sync}/{stream}"),
                    source,
                })?;
                Ok((u64::from_be_bytes(seq), entry))
            })
            .collect()
    }

    /// The writes that append `entry` to a history (dropping the oldest beyond the bound).
    fn history_ops<T: serde::Serialize>(
        &self,
        tag: u8,
        sync: &str,
        stream: &str,
        entry: &T,
    ) -> Result<Vec<Op>, Error> {
        let prefix = history_prefix(tag, sync, stream);
        let keys: Vec<Vec<u8>> = self
            .backend
            .scan(&prefix)
            .map(|item| item.map(|(k, _)| k))
            .collect::<Result<_, _>>()?;
        let last = keys
            .last()
            .and_then(|k| k.get(prefix.len()..prefix.len() + 8))
            .map_or(0, |b| {
                let mut seq = [0u8; 8];
                seq.copy_from_slice(b);
                u64::from_be_bytes(seq)
            });
        let mut key = prefix;
        key.extend_from_slice(&(last + 1).to_be_bytes());
        let mut ops = vec![Op::Put(key, codec::encode(entry))];
        let excess = (keys.len() + 1).saturating_sub(HISTORY);
        ops.extend(keys.into_iter().take(excess).map(Op::Delete));
        Ok(ops)
    }

    /// The workflow key/values recorded under `digest`.
    pub fn fingerprint(&self, digest: &str) -> Result<Option<Vec<(String, String)>>, Error> {
        self.read(&digest_key(digest), || format!("workflow {digest}"))
    }

    /// The heads of all runs in the journal, oldest first.
    pub fn runs(&self) -> impl Iterator<Item = Result<RunState, Error>> + '_ {
        self.backend.scan(b"h").map(|item| {
            let (key, value) = item?;
            match run_of(&key[1..]) {
                Some(run) => match self.head(run, &value)? {
                    head if head.status.is_finished() => Ok(head),
                    head => Ok(self.replay_from(head)?.state),
                },
                None => codec::decode(&value).map_err(|source| Error::Corrupt {
                    entry: format!("head {}", hex(&key[1..])),
                    source,
                }),
            }
        })
    }

    /// Removes the journals of runs that finished more than `keep` before `now`, and the
    /// logs of runs without a head that started before then (a crash between a new run's
    /// first step and its head: a run writes its head right after its first step, so while
    /// no run is starting — callers prune before their runs — such a log is no run's).
    /// Active runs and stream checkpoints are never pruned. Returns what was removed.
    pub fn prune(&mut self, now: Timestamp, keep: Duration) -> Result<Pruned, Error> {
        let cutoff = now.saturating_sub(keep);
        let mut pruned = self.prune_where(|head| head.updated_at <= cutoff)?;
        for run in self.backend.log_runs()? {
            if self.backend.get(&run_key(b'h', run))?.is_some() {
                continue;
            }
            let log = self.log(run, 0)?;
            let started = match log.frames.first() {
                Some(Ok((_, first))) => first.at(),
                _ => continue,
            };
            if started <= cutoff {
                pruned.events += log.frames.len() as u64;
                self.backend.log_remove(run)?;
                pruned.runs += 1;
            }
        }
        Ok(pruned)
    }

    /// Removes the journals of the finished runs `doomed` picks (by their heads). Active
    /// runs and stream checkpoints are never pruned.
    pub fn prune_where(&mut self, doomed: impl Fn(&RunState) -> bool) -> Result<Pruned, Error> {
        let mut picked = Vec::new();
        // Heads as stored: only finished runs are pruned, so an unfinished run is not
        // replayed, and one whose head or log is damaged does not stop the pruning (nor
        // the `--fresh` run that abandons it, which prunes first).
        for item in self.backend.scan(b"h") {
            let (key, value) = item?;
            let Some(run) = run_of(&key[1..]) else {
                continue;
            };
            match self.head(run, &value) {
                Ok(head) if head.status.is_finished() && doomed(&head) => picked.push(head),
                Ok(_) => {}
                Err(e) => tracing::warn!(%run, error = %e, "not pruned: its head does not read"),
            }
        }
        let doomed = picked;
        let mut pruned = Pruned::default();
        for head in doomed {
            let run = head.run_id();
            if let Some(witness) = &self.witness {
                witness.forget(&head.started.sync, &head.started.stream, run);
            }
            let mut ops: Vec<Op> = Vec::new();
            for item in self.backend.scan(&run_key(b'e', run)) {
                ops.push(Op::Delete(item?.0));
            }
            pruned.events += ops.len() as u64;
            pruned.events += self.log(run, 0)?.frames.len() as u64;
            ops.push(Op::Delete(run_key(b'h', run)));
            ops.push(Op::Delete(run_key(b'l', run)));
            self.backend.commit(ops)?;
            self.backend.log_remove(run)?;
            pruned.runs += 1;
        }
        if pruned.runs > 0 {
            self.backend.flush()?;
        }
        Ok(pruned)
    }

    /// Reads every entry, checks every checksum, folds every run and compares the fold with
    /// its head. Reports damage instead of stopping at the first problem.
    pub fn verify(&self) -> Result<Verified, Error> {
        let mut report = Verified::default();
        let (lost, unreadable) = self.lost()?;
        for l in lost {
            report.damage.push(Damage {
                entry: format!("run {} ({}/{})", l.seen.run, l.seen.sync, l.seen.stream),
                problem: format!(
                    "the witness saw {} steps made durable; {}",
                    l.seen.seq, l.problem
                ),
            });
        }
        for u in unreadable {
            report.damage.push(Damage {
                entry: format!("witness {}", u.path.display()),
                problem: u.problem,
            });
        }
        let mut heads = Vec::new();
        for item in self.backend.scan(b"h") {
            let (key, value) = item?;
            let run = run_of(&key[1..]);
            let head = match run {
                // An older head is rebuilt from the events, which are checked below.
                Some(run) if codec::version(&value).is_some_and(|v| v < HEAD_VERSION) => {
                    heads.push((Some(run), None));
                    continue;
                }
                _ => codec::decode::<RunState>(&value),
            };
            match head {
                Ok(head) => heads.push((run, Some(head))),
                Err(e) => {
                    report.damage.push(Damage {
                        entry: format!("head of run {}", describe(run, &key)),
                        problem: e.to_string(),
                    });
                    heads.push((run, None));
                }
            }
        }
        for (run, head) in heads {
            let Some(run) = run else { continue };
            report.runs += 1;
            let mut state: Option<RunState> = None;
            let mut broken = false;
            for item in self.events(run) {
                report.events += 1;
                match item {
                    Err(Error::Corrupt { entry, source }) => {
                        report.damage.push(Damage {
                            entry,
                            problem: source.to_string(),
                        });
                        broken = true;
                    }
                    Err(other) => return Err(other),
                    Ok((seq, event)) if !broken => {
                        let folded = match (state.take(), &event) {
                            (None, Event::RunStarted(s)) => Ok(RunState::start(s)),
                            (None, e) => {
                                Err(format!("first event is {}, not run_started", e.name()))
                            }
                            (Some(s), e) => apply(s, e).map_err(|e| e.to_string()),
                        };
                        match folded {
                            Ok(s) => state = Some(s),
                            Err(problem) => {
                                report.damage.push(Damage {
                                    entry: format!("run {run} seq {seq}"),
                                    problem,
                                });
                                broken = true;
                            }
                        }
                    }
                    Ok(_) => {}
                }
            }
            if let (Some((bytes, why)), Some(head)) = (self.log(run, 0)?.tail, &head) {
                // An unfinished run's log may end in a write a crash cut short (cut when
                // the run resumes); a finished run's may not.
                if head.status.is_finished() {
                    report.damage.push(Damage {
                        entry: format!("log of run {run}"),
                        problem: format!("{bytes} bytes after its last readable event: {why}"),
                    });
                }
            }
            let head = head.and_then(|_| self.load(run).ok());
            if let (false, Some(folded), Some(head)) = (broken, state, head) {
                if folded != head {
                    report.damage.push(Damage {
                        entry: format!("head of run {run}"),
                        problem: format!(
                            "head (seq {}) differs from the fold of its events (seq {})",
                            head.last_seq, folded.last_seq
                        ),
                    });
                }
            }
        }
        for item in self.backend.scan(b"c") {
            let (key, value) = item?;
            if let Err(e) = codec::decode::<Checkpoint>(&value) {
                let stream = String::from_utf8_lossy(&key[1..]).replace('\0', "/");
                report.damage.push(Damage {
                    entry: format!("checkpoint of {stream}"),
                    problem: e.to_string(),
                });
            }
        }
        Ok(report)
    }

    /// Makes everything written so far durable.
    pub fn flush(&self) -> Result<(), Error> {
        Ok(self.backend.flush()?)
    }
}

/// Folds `event` into `state`; a commit sets `checkpoint` to the checkpoint after its page.
fn advance(
    state: RunState,
    event: &Event,
    checkpoint: &mut Option<Checkpoint>,
) -> Result<RunState, Error> {
    if let Event::CursorCommitted { page, at } = event {
        if let Some(after) = state.checkpoint_after(*page, *at) {
            *checkpoint = Some(after);
        }
    }
    let run = state.run_id();
    apply(state, event).map_err(|source| Error::Inconsistent { run, source })
}

/// The sync and stream named by a stream key (`tag` sync `\0` stream).
fn stream_of(key: &[u8]) -> (String, String) {
    let name = String::from_utf8_lossy(key.get(1..).unwrap_or_default());
    match name.split_once('\0') {
        Some((sync, stream)) => (sync.to_string(), stream.to_string()),
        None => (name.into_owned(), String::new()),
    }
}

fn corrupt(run: RunId, seq: u64, source: codec::Error) -> Error {
    Error::Corrupt {
        entry: format!("run {run} seq {seq}"),
        source,
    }
}

fn seq_of(key: &[u8]) -> u64 {
    let mut bytes = [0u8; 8];
    if key.len() >= 25 {
        bytes.copy_from_slice(&key[17..25]);
    }
    u64::from_be_bytes(bytes)
}

fn run_of(bytes: &[u8]) -> Option<RunId> {
    <[u8; 16]>::try_from(bytes)
        .ok()
        .map(|b| RunId(uuid::Uuid::from_bytes(b)))
}

fn describe(run: Option<RunId>, key: &[u8]) -> String {
    run.map(|r| r.to_string()).unwrap_or_else(|| hex(key))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
