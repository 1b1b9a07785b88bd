//! The changing commands sent to `serve` (see `attach`): streams held for a command while
//! it runs, the runs paused for one, and `run` commands waiting for a stream's run to end.
//! The loop owns it; the scheduler keeps a held stream from starting.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use tokio::sync::{mpsc, oneshot};
use waymark_engine::{RunState, Status, Timestamp};

use super::scheduler::Scheduler;
use super::Key;
use crate::cli::attach::Release;

/// How a run ended, for a `run` command waiting on it.
pub type Ended = Result<Vec<RunState>, String>;

/// What changing commands wait for.
pub struct Holds {
    /// Commands waiting for their stream (its run to pause or end, another command to be
    /// done), first come first served.
    waiting: BTreeMap<Key, VecDeque<oneshot::Sender<Release>>>,
    /// Streams whose run paused for a command: it continues once the command is done.
    paused: BTreeSet<Key>,
    /// `run` commands waiting for their stream's run to end.
    runs: BTreeMap<Key, Vec<oneshot::Sender<Ended>>>,
    /// Where a held stream is said released (when the command drops its [`Release`]).
    released: mpsc::UnboundedSender<Key>,
}

impl Holds {
    /// Releases are sent to `released`, for the loop to call [`Holds::release`].
    pub fn new(released: mpsc::UnboundedSender<Key>) -> Self {
        Holds {
            waiting: BTreeMap::new(),
            paused: BTreeSet::new(),
            runs: BTreeMap::new(),
            released,
        }
    }

    /// A command asks to hold `key`. Returns whether a run of it is going that must pause
    /// first (the loop asks it to; the command is granted when it has).
    pub fn claim(
        &mut self,
        key: Key,
        reply: oneshot::Sender<Release>,
        scheduler: &mut Scheduler<Key>,
        running: bool,
    ) -> bool {
        self.waiting
            .entry(key.clone())
            .or_default()
            .push_back(reply);
        if running {
            self.paused.insert(key);
            return true;
        }
        self.grant(&key, scheduler);
        false
    }

    /// Grants `key` to the first command waiting for it, if no run or command has it.
    pub fn grant(&mut self, key: &Key, scheduler: &mut Scheduler<Key>) {
        let Some(queue) = self.waiting.get_mut(key) else {
            return;
        };
        while let Some(reply) = queue.pop_front() {
            if !scheduler.hold(key) {
                queue.push_front(reply);
                return;
            }
            let (release, released) = oneshot::channel::<()>();
            if reply.send(release).is_err() {
                // The caller went away while waiting.
                scheduler.release(key);
                continue;
            }
            let (key, tell) = (key.clone(), self.released.clone());
            tokio::task::spawn_local(async move {
                // Resolves when the command drops its release.
                let _ = released.await;
                let _ = tell.send(key);
            });
            break;
        }
        if queue.is_empty() {
            self.waiting.remove(key);
        }
    }

    /// The command holding `key` is done: the next one waiting gets it, or else a run that
    /// paused for it continues now.
    pub fn release(&mut self, key: &Key, scheduler: &mut Scheduler<Key>, now: Timestamp) {
        scheduler.release(key);
        self.grant(key, scheduler);
        if !self.waiting.contains_key(key) && self.paused.remove(key) {
            scheduler.run_now(key, now);
        }
    }

    /// A `run` command waits for the end of `key`'s run (started now, or going).
    pub fn wait(&mut self, key: Key, reply: oneshot::Sender<Ended>) {
        self.runs.entry(key).or_default().push(reply);
    }

    /// A run of `key` ended (or could not start): a command waiting for the stream gets
    /// it, and the `run` commands waiting on it are answered — unless it paused for that
    /// command, then they wait for the run to continue and end.
    pub fn ended(&mut self, key: &Key, how: &Ended, scheduler: &mut Scheduler<Key>) {
        let paused = matches!(how, Ok(states)
            if states.last().is_some_and(|s| matches!(s.status, Status::Paused(_))));
        if !paused {
            // It ended before it could pause: nothing to continue.
            self.paused.remove(key);
        }
        if !self.paused.contains(key) {
            for reply in self.runs.remove(key).unwrap_or_default() {
                let _ = reply.send(how.clone());
            }
        }
        self.grant(key, scheduler);
    }
}
