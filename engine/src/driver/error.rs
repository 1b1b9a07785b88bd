//! A failure that stops the driver.

use crate::checkpoint::Checkpoint;
use crate::destination::{self};
use crate::journal::{self};
use crate::run_id::RunId;
use crate::staging::{self};

/// A failure that stops the driver. Source and destination failures are not here: they
/// are journaled as `RunFailed` and the run can be resumed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The journal failed.
    #[error(transparent)]
    Journal(#[from] journal::Error),
    /// Staging failed.
    #[error(transparent)]
    Staging(#[from] staging::Error),
    /// The workflow changed since the unfinished run started.
    #[error(
        "run {run} of {stream} started under a different version of {path}; changed: {}. \
         Restore the file to finish that run, or pass --fresh to abandon it and start a new \
         run from the last committed checkpoint",
        changes.join("; ")
    )]
    WorkflowChanged {
        /// The unfinished run.
        run: RunId,
        /// The stream.
        stream: String,
        /// The workflow file.
        path: String,
        /// What changed, one entry per key.
        changes: Vec<String>,
    },
    /// The run is finished and cannot be resumed.
    #[error("run {run} is {status}; nothing to resume (`waymark run` starts a new one)")]
    Finished {
        /// The run.
        run: RunId,
        /// Its status.
        status: &'static str,
    },
    /// The destination could not tell its checkpoint.
    #[error("reading the destination's checkpoint failed: {0}")]
    Destination(#[from] destination::Error),
    /// The journal has no usable checkpoint for a stream that has synced before: where to
    /// continue is the operator's choice, never a guess.
    #[error(
        "{sync}/{stream}: {why}. Nothing is guessed; choose where the stream continues:{}\n  \
         waymark checkpoint set <workflow> --stream {stream} --to <RFC 3339 time> --reason \"…\"\n  \
         waymark checkpoint reset <workflow> --stream {stream} --reason \"…\"   (from the beginning)",
        match destination {
            Some(c) => format!(
                "\n  waymark checkpoint adopt <workflow> --stream {stream} --reason \"…\"   \
                 (the destination's own: run {}, page {}, watermark {})",
                c.run_id, c.page, c.window.end
            ),
            None => String::new(),
        }
    )]
    CheckpointLost {
        /// The sync.
        sync: String,
        /// The stream (checkpoint scope).
        stream: String,
        /// What is missing or damaged.
        why: String,
        /// The destination's own checkpoint, if it has one.
        destination: Option<Box<Checkpoint>>,
    },
}
