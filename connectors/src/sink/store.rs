//! What a destination's storage must offer so that [`Upserting`](super::Upserting) can keep
//! the write protocol for it: a transaction, the last commit of a checkpoint scope, what is
//! stored for a batch's keys, applying the planned changes, and the checkpoint stored in
//! the same transaction.

use std::collections::HashMap;
use std::future::Future;

use waymark_engine::destination::Error;
use waymark_engine::{Checkpoint, Lease, WriteAck};

use super::plan::{Plan, Stored};

/// The last batch a checkpoint scope committed: what recognises a replay.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Commit {
    /// The run that wrote it.
    pub run: String,
    /// Its page.
    pub page: u64,
    /// The acknowledgement stored with it.
    pub ack: WriteAck,
}

/// One stream's storage in a destination (its table, and the scope's checkpoint). Every
/// call between [`Store::begin`] and [`Store::commit`] or [`Store::rollback`] belongs to one
/// transaction: nothing of it is visible, or durable, before the commit.
pub trait Store: Send + 'static {
    /// Whether the calls block the thread (SQLite, files): a whole write then runs on a
    /// blocking thread, so the driver fetches the next page meanwhile.
    const BLOCKING: bool;

    /// Begins a batch's transaction (reconnecting first if the connection was lost).
    fn begin(&mut self) -> impl Future<Output = Result<(), Error>> + Send;

    /// The last batch this scope committed, read in the transaction (and locked, where
    /// writers could race).
    fn last_commit(&mut self) -> impl Future<Output = Result<Option<Commit>, Error>> + Send;

    /// What is stored for each of `keys` that is there (for a hard-deleted key: its
    /// remembered deletion).
    fn stored(
        &mut self,
        keys: &[&str],
    ) -> impl Future<Output = Result<HashMap<String, Stored>, Error>> + Send;

    /// Applies the batch's planned changes, written by `run` as `page`.
    fn apply(
        &mut self,
        run: &str,
        page: u64,
        plan: &Plan<'_>,
    ) -> impl Future<Output = Result<(), Error>> + Send;

    /// Stores the scope's checkpoint and the batch's acknowledgement.
    fn put_checkpoint(
        &mut self,
        run: &str,
        page: u64,
        checkpoint: &Checkpoint,
        ack: &WriteAck,
    ) -> impl Future<Output = Result<(), Error>> + Send;

    /// Commits: the batch and its checkpoint become durable together.
    fn commit(&mut self) -> impl Future<Output = Result<(), Error>> + Send;

    /// Abandons the transaction after a failure (best effort: a lost connection has
    /// abandoned it already).
    fn rollback(&mut self) -> impl Future<Output = ()> + Send;

    /// The checkpoint stored with the scope's last committed batch.
    fn checkpoint(&mut self) -> impl Future<Output = Result<Option<Checkpoint>, Error>> + Send;

    /// Claims the scope for a cluster lease (see [`Destination::fence`]); a store that
    /// cannot check a token in its own transaction refuses (the default).
    fn fence(&mut self, lease: &Lease) -> impl Future<Output = Result<(), Error>> + Send {
        let token = lease.token;
        async move {
            Err(Error::permanent(format!(
                "this destination keeps its data in local files and cannot check a lease \
                 token ({token}): a cluster of workers needs a PostgreSQL destination"
            )))
        }
    }
}

/// The checkpoint and acknowledgement as a SQL store keeps them (JSON text).
pub(crate) fn encode(checkpoint: &Checkpoint, ack: &WriteAck) -> Result<(String, String), Error> {
    let checkpoint = serde_json::to_string(checkpoint)
        .map_err(|e| Error::permanent(format!("checkpoint encoding: {e}")))?;
    let ack = serde_json::to_string(ack)
        .map_err(|e| Error::permanent(format!("acknowledgement encoding: {e}")))?;
    Ok((checkpoint, ack))
}

/// A checkpoint a SQL store kept.
pub(crate) fn decode_checkpoint(stored: &str) -> Result<Checkpoint, Error> {
    serde_json::from_str(stored)
        .map_err(|e| Error::permanent(format!("stored checkpoint unreadable: {e}")))
}

/// A SQL store's checkpoint row as the last commit.
pub(crate) fn commit(run: String, page: i64, ack: &str) -> Result<Commit, Error> {
    let page = u64::try_from(page)
        .map_err(|_| Error::permanent(format!("stored page number {page} is negative")))?;
    let ack = serde_json::from_str(ack)
        .map_err(|e| Error::permanent(format!("stored acknowledgement unreadable: {e}")))?;
    Ok(Commit { run, page, ack })
}
