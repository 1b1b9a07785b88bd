//! What the driver needs from a destination: idempotent batches with their checkpoint.

use std::future::Future;

use crate::checkpoint::Checkpoint;
use crate::event::{RunId, WriteAck};

/// One page's records and the checkpoint that committing them produces.
#[derive(Clone, Copy, Debug)]
pub struct Batch<'a> {
    /// The run writing.
    pub run_id: RunId,
    /// The page number within the run.
    pub page: u64,
    /// The records, one JSON object each.
    pub records: &'a [String],
    /// The stream's checkpoint once this batch is stored.
    pub checkpoint: &'a Checkpoint,
}

/// A destination-wide failure (connection lost, disk full, permission denied): the step
/// fails without advancing the checkpoint.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Error(pub String);

/// Where one stream's records go. Implemented by connectors; called only by the driver.
pub trait Destination: Send {
    /// Stores the batch and its checkpoint in one transaction, upserting by key with a
    /// version check. If the destination already committed this run's `page` (a crash came
    /// between its commit and our journal entry), it must write nothing and return the
    /// acknowledgement stored with that commit, with `replayed` set.
    fn write(&mut self, batch: Batch<'_>) -> impl Future<Output = Result<WriteAck, Error>> + Send;

    /// The checkpoint stored with the last committed batch, if any.
    fn checkpoint(&mut self) -> impl Future<Output = Result<Option<Checkpoint>, Error>> + Send;
}
