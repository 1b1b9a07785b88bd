//! What the driver needs from a destination: idempotent batches with their checkpoint.

use std::future::Future;
use std::sync::Arc;

use crate::checkpoint::Checkpoint;
use crate::event::WriteAck;
use crate::fields::FieldIndex;
use crate::lease::Lease;
use crate::run_id::RunId;

/// One page's records and the checkpoint that committing them produces.
#[derive(Debug)]
pub struct Batch<'a, P> {
    /// The run writing.
    pub run_id: RunId,
    /// The page number within the run.
    pub page: u64,
    /// The records, as the destination's [`Preparer`] made them ready.
    pub records: &'a P,
    /// The stream's checkpoint once this batch is stored.
    pub checkpoint: &'a Checkpoint,
}

/// What a failed write calls for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// Worth retrying after a backoff: the database is locked or busy, the connection was
    /// reset, the server is restarting. Nothing of the batch was committed.
    Transient,
    /// Retrying cannot help (permission denied, disk full, a schema the destination
    /// refuses, unreadable bookkeeping): the run fails.
    Permanent,
}

/// A failed write or checkpoint read: the step fails without advancing the checkpoint.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Error {
    /// What it calls for.
    pub kind: ErrorKind,
    /// What happened, free of secrets.
    pub message: String,
}

impl Error {
    /// A failure retrying cannot help.
    pub fn permanent(message: impl Into<String>) -> Self {
        Error {
            kind: ErrorKind::Permanent,
            message: message.into(),
        }
    }

    /// A failure worth retrying after a backoff.
    pub fn transient(message: impl Into<String>) -> Self {
        Error {
            kind: ErrorKind::Transient,
            message: message.into(),
        }
    }

    /// Whether a retry can help.
    pub fn retryable(&self) -> bool {
        self.kind == ErrorKind::Transient
    }
}

impl<P> Clone for Batch<'_, P> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<P> Copy for Batch<'_, P> {}

/// Makes a page's records (one JSON object each) ready for a destination's `write` —
/// reading each for its key and version, say, where the source's [`FieldIndex`] (when it
/// gave one) says its fields are. Pure work without I/O, shared with the
/// driver, which runs it while the page before is written (pipelining), off the write's
/// critical path.
pub type Preparer<P> = Arc<dyn Fn(Vec<String>, Option<FieldIndex>) -> P + Send + Sync>;

/// Where one stream's records go. Implemented by connectors; called only by the driver.
pub trait Destination: Send {
    /// A page's records as [`Destination::preparer`] makes them ready.
    type Page: Send + Sync + 'static;

    /// What makes a page's records ready for [`Destination::write`].
    fn preparer(&self) -> Preparer<Self::Page>;

    /// Stores the batch and its checkpoint in one transaction, upserting by key with a
    /// version check. If the destination already committed this run's `page` (a crash came
    /// between its commit and our journal entry), it must write nothing and return the
    /// acknowledgement stored with that commit, with `replayed` set. The driver writes up
    /// to [`REPLAYABLE`](crate::group::REPLAYABLE) pages before the journal hears of them, so a destination keeps the
    /// acknowledgements of that many of a run's last pages.
    fn write(
        &mut self,
        batch: Batch<'_, Self::Page>,
    ) -> impl Future<Output = Result<WriteAck, Error>> + Send;

    /// Writes `batches` in order, as [`Destination::write`] each, up to the first failure:
    /// one result a batch written or failed. A destination that blocks a thread to write
    /// writes them all in one go, so no page waits for the driver's task between two.
    fn write_pages(
        &mut self,
        batches: &[Batch<'_, Self::Page>],
    ) -> impl Future<Output = Vec<Result<WriteAck, Error>>> + Send
    where
        Self: Sized,
    {
        write_in_turn(self, batches)
    }

    /// The checkpoint stored with the last committed batch, if any.
    fn checkpoint(&mut self) -> impl Future<Output = Result<Option<Checkpoint>, Error>> + Send;

    /// Claims the partition for `lease` before a run under it reads the checkpoint: from
    /// now on the destination refuses, in each batch's own transaction, a batch under an
    /// older token. Refused (permanent) if a newer token claimed it already, or if the
    /// destination cannot check a token (the default).
    fn fence(&mut self, lease: &Lease) -> impl Future<Output = Result<(), Error>> + Send {
        let token = lease.token;
        async move {
            Err(Error::permanent(format!(
                "this destination cannot check a lease token ({token}) in its own \
                 transaction, so it cannot be written by a cluster of workers"
            )))
        }
    }
}

/// Writes `batches` one after the other with [`Destination::write`], up to the first
/// failure.
pub async fn write_in_turn<D: Destination>(
    destination: &mut D,
    batches: &[Batch<'_, D::Page>],
) -> Vec<Result<WriteAck, Error>> {
    let mut results = Vec::with_capacity(batches.len());
    for batch in batches {
        let written = destination.write(*batch).await;
        let failed = written.is_err();
        results.push(written);
        if failed {
            break;
        }
    }
    results
}
