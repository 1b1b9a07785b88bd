//! The journaled facts of a run.
//!
//! Every step transition of a run is one [`Event`], appended to the journal before the next
//! step starts. Events are plain data: they carry the time they happened and everything the
//! fold needs, so replaying them never touches the network, the clock or the destination.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::checkpoint::Checkpoint;
use crate::lease::Lease;
pub use crate::run_id::RunId;
use crate::time::Timestamp;
use crate::window::Window;

/// What the destination reported for one written batch.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WriteAck {
    /// Records that were new.
    pub inserted: u64,
    /// Records that replaced an older version.
    pub updated: u64,
    /// Records identical to what was stored.
    pub unchanged: u64,
    /// Records older than the stored version, left alone.
    pub skipped_stale: u64,
    /// Records the destination refused individually and put in the dead-letter store.
    pub dead_lettered: u64,
    /// Records marked deleted (by a deletions feed).
    pub deleted: u64,
    /// True when the destination had already committed this batch (a crash came between its
    /// commit and our journal entry); the counts are the ones stored with that commit.
    pub replayed: bool,
}

impl WriteAck {
    /// Records the destination handled, whatever the outcome.
    pub fn total(&self) -> u64 {
        self.inserted
            + self.updated
            + self.unchanged
            + self.skipped_stale
            + self.dead_lettered
            + self.deleted
    }
}

impl fmt::Display for WriteAck {
    /// `inserted 3, updated 1, unchanged 0, stale 0, deleted 0, dead-lettered 0`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "inserted {}, updated {}, unchanged {}, stale {}, deleted {}, dead-lettered {}",
            self.inserted,
            self.updated,
            self.unchanged,
            self.skipped_stale,
            self.deleted,
            self.dead_lettered
        )
    }
}

/// Where a new run's starting point came from; journaled so the choice is never silent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum StartFrom {
    /// No checkpoint anywhere: the stream's first run.
    Beginning,
    /// The stream's committed checkpoint in the journal.
    Journal(Checkpoint),
    /// The journal had no checkpoint but the destination held one (journal lost or reset).
    Destination(Checkpoint),
    /// Started under a cluster lease: from the destination's checkpoint (if any), which is
    /// the partition's, whichever worker committed it.
    Leased {
        /// The lease.
        lease: Box<Lease>,
        /// The destination's checkpoint.
        checkpoint: Option<Checkpoint>,
    },
}

impl StartFrom {
    /// The checkpoint the run starts after.
    pub fn checkpoint(&self) -> Option<&Checkpoint> {
        match self {
            StartFrom::Beginning => None,
            StartFrom::Journal(c) | StartFrom::Destination(c) => Some(c),
            StartFrom::Leased { checkpoint, .. } => checkpoint.as_ref(),
        }
    }

    /// The lease the run was started under.
    pub fn lease(&self) -> Option<&Lease> {
        match self {
            StartFrom::Leased { lease, .. } => Some(lease),
            _ => None,
        }
    }
}

/// Why a run paused (it can be continued by the next `waymark run`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PauseReason {
    /// `--max-pages` pages were fetched in this invocation.
    PageBudget(u64),
    /// `--max-duration` ran out.
    TimeBudget,
    /// The process was asked to stop (SIGINT/SIGTERM) and stopped at a step boundary.
    Interrupted,
    /// The API asked for a wait longer than `max_wait` (or the time budget left); the next
    /// `waymark run` continues, and does not call the API before `until`.
    RateLimited {
        /// When the API allows requests again.
        until: Timestamp,
    },
}

impl fmt::Display for PauseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PauseReason::PageBudget(n) => write!(f, "page budget of {n} reached"),
            PauseReason::TimeBudget => write!(f, "time budget reached"),
            PauseReason::Interrupted => write!(f, "interrupted"),
            PauseReason::RateLimited { until } => write!(f, "rate limited until {until}"),
        }
    }
}

/// The start of a run, with everything fixed for its whole life.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunStarted {
    /// This run.
    pub run_id: RunId,
    /// The sync (workflow) name.
    pub sync: String,
    /// The stream name.
    pub stream: String,
    /// Digest of the workflow's canonical form; resuming under another digest is refused.
    pub workflow_digest: String,
    /// Path of the workflow file, so `waymark resume <run-id>` can find it.
    pub workflow_path: String,
    /// The window, whose end is the watermark.
    pub window: Window,
    /// Cursor of the first fetch (`None`: the source's first page).
    pub start_cursor: Option<String>,
    /// Where the start came from.
    pub start_from: StartFrom,
    /// When the run started.
    pub at: Timestamp,
}

/// A fetched page whose records are staged (durably, with a checksum) before any write.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PageFetched {
    /// Page number within the run, from 1.
    pub page: u64,
    /// The cursor the page was requested with.
    pub request_cursor: Option<String>,
    /// The cursor of the page after it (`None`: this was the last page).
    pub next_cursor: Option<String>,
    /// Records on the page.
    pub records: u64,
    /// Size of the staged page in bytes.
    pub bytes: u64,
    /// CRC-32 of the staged page, checked when it is read back.
    pub checksum: u32,
    /// When the page arrived.
    pub at: Timestamp,
    /// The greatest cursor value on the page, read as a time (only for a stream whose
    /// windows start there: `window.start = "max_seen"`).
    #[serde(default, deserialize_with = "crate::format::added_in_v5")]
    pub max_seen: Option<Timestamp>,
}

/// One journaled fact about a run. Match exhaustively: a new variant must be handled
/// everywhere before it compiles.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Event {
    /// The run began with a fixed window.
    RunStarted(RunStarted),
    /// A process picked the run up again (after a crash, pause or failure).
    RunResumed {
        /// Process id of the resuming process.
        pid: u32,
        /// When.
        at: Timestamp,
    },
    /// A page was fetched and its records staged.
    PageFetched(PageFetched),
    /// A fetch failed and will be retried after `wait_ms`; the cursor does not move.
    RequestRetried {
        /// The page being fetched.
        page: u64,
        /// Attempt that failed, from 1.
        attempt: u32,
        /// What went wrong (never contains secrets).
        error: String,
        /// The HTTP status, when there was a response.
        status: Option<u16>,
        /// The workflow's response rule that matched (`None`: the default rules).
        rule: Option<String>,
        /// How long the driver waits before the next attempt.
        wait_ms: u64,
        /// When.
        at: Timestamp,
    },
    /// A response was ignored by a response rule (`action = "ignore"`): the page counts as
    /// an empty last page (of its parent, for a child stream).
    PageIgnored {
        /// The page.
        page: u64,
        /// The HTTP status.
        status: Option<u16>,
        /// The rule that matched.
        rule: Option<String>,
        /// What the response said (never contains secrets).
        reason: String,
        /// When.
        at: Timestamp,
    },
    /// The destination confirmed a page's batch.
    BatchWritten {
        /// The page.
        page: u64,
        /// The destination's acknowledgement.
        ack: WriteAck,
        /// When.
        at: Timestamp,
    },
    /// The stream's checkpoint advanced past a written page (flushed before the next fetch).
    CursorCommitted {
        /// The page.
        page: u64,
        /// When.
        at: Timestamp,
    },
    /// The run stopped at a step boundary and can be continued.
    RunPaused {
        /// Why.
        reason: PauseReason,
        /// When.
        at: Timestamp,
    },
    /// Every page up to the watermark is written and committed.
    RunCompleted {
        /// When.
        at: Timestamp,
    },
    /// The run stopped on an error; the checkpoint is intact and the run can be resumed.
    RunFailed {
        /// What went wrong.
        error: String,
        /// When.
        at: Timestamp,
    },
    /// The run was given up (`--fresh`); the next run starts from the committed checkpoint.
    RunAbandoned {
        /// Why.
        reason: String,
        /// When.
        at: Timestamp,
    },
    // New variants go last: the journal encodes a variant by its position.
    /// A write failed transiently (database busy, connection reset) and will be retried
    /// after `wait_ms`; nothing of the page was committed.
    WriteRetried {
        /// The page being written.
        page: u64,
        /// Attempt that failed, from 1.
        attempt: u32,
        /// What went wrong (never contains secrets).
        error: String,
        /// How long the driver waits before the next attempt.
        wait_ms: u64,
        /// When.
        at: Timestamp,
    },
    /// A page's records differ in shape from the stream's records before it (fields new,
    /// gone, or of another type). `refused`: the stream's `schema_policy = "fail"` stopped
    /// the run before the page was staged, and the run fails.
    SchemaChanged {
        /// The page.
        page: u64,
        /// What changed.
        changes: Vec<FieldChange>,
        /// Whether the page was refused.
        refused: bool,
        /// When.
        at: Timestamp,
    },
}

/// One field's change of shape: new (`was` is `None`), gone (`now` is `None`), or of
/// another type. Types are named as JSON's, `|`-joined (`integer|string`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FieldChange {
    /// Its dotted path (`[]` for the elements of an array: `items[].sku`).
    pub path: String,
    /// Its types before.
    pub was: Option<String>,
    /// Its types now.
    pub now: Option<String>,
    /// The declared column filled from it, if any.
    pub column: Option<String>,
}

impl std::fmt::Display for FieldChange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let path = &self.path;
        match (&self.was, &self.now) {
            (None, Some(now)) => write!(f, "new field `{path}` ({now})"),
            (Some(was), None) => write!(f, "field `{path}` gone (was {was})"),
            (Some(was), Some(now)) => write!(f, "field `{path}`: {was} → {now}"),
            (None, None) => write!(f, "field `{path}`"),
        }?;
        match &self.column {
            Some(column) => write!(f, " (declared column `{column}`)"),
            None => Ok(()),
        }
    }
}

impl Event {
    /// Short name of the step, as shown by `waymark journal`.
    pub fn name(&self) -> &'static str {
        match self {
            Event::RunStarted(_) => "run_started",
            Event::RunResumed { .. } => "run_resumed",
            Event::PageFetched(_) => "page_fetched",
            Event::RequestRetried { .. } => "request_retried",
            Event::WriteRetried { .. } => "write_retried",
            Event::PageIgnored { .. } => "page_ignored",
            Event::BatchWritten { .. } => "batch_written",
            Event::CursorCommitted { .. } => "cursor_committed",
            Event::RunPaused { .. } => "run_paused",
            Event::RunCompleted { .. } => "run_completed",
            Event::RunFailed { .. } => "run_failed",
            Event::RunAbandoned { .. } => "run_abandoned",
            Event::SchemaChanged { .. } => "schema_changed",
        }
    }

    /// When the event happened.
    pub fn at(&self) -> Timestamp {
        match self {
            Event::RunStarted(e) => e.at,
            Event::PageFetched(e) => e.at,
            Event::RunResumed { at, .. }
            | Event::RequestRetried { at, .. }
            | Event::WriteRetried { at, .. }
            | Event::PageIgnored { at, .. }
            | Event::BatchWritten { at, .. }
            | Event::CursorCommitted { at, .. }
            | Event::RunPaused { at, .. }
            | Event::RunCompleted { at }
            | Event::RunFailed { at, .. }
            | Event::RunAbandoned { at, .. }
            | Event::SchemaChanged { at, .. } => *at,
        }
    }

    /// Whether the journal must reach the disk before the driver takes its next step.
    ///
    /// Staged pages are flushed before they are written, cursor commits before the next
    /// fetch, and every change of run status at once. A lost `BatchWritten` or
    /// `RequestRetried` or `WriteRetried` is harmless: the destination recognises a batch it
    /// already committed, and a retry is only a retry.
    pub fn needs_flush(&self) -> bool {
        match self {
            Event::RunStarted(_)
            | Event::PageFetched(_)
            | Event::CursorCommitted { .. }
            | Event::RunPaused { .. }
            | Event::RunCompleted { .. }
            | Event::RunFailed { .. }
            | Event::RunAbandoned { .. } => true,
            // A refusal fails the run: a change of status.
            Event::SchemaChanged { refused, .. } => *refused,
            Event::RunResumed { .. }
            | Event::RequestRetried { .. }
            | Event::WriteRetried { .. }
            | Event::PageIgnored { .. }
            | Event::BatchWritten { .. } => false,
        }
    }
}
