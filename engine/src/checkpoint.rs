//! The stream's checkpoint: how far a stream is durably synced.

use serde::{Deserialize, Serialize};

use crate::run_id::RunId;
use crate::time::Timestamp;
use crate::window::Window;

/// Cursor + watermark + counts of a stream, advanced only after the destination confirmed
/// the write it covers. The destination stores the same value in the same transaction as
/// the batch, so the two never disagree by more than the one page in flight.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// The run that committed it.
    pub run_id: RunId,
    /// That run's window; `window.end` is the watermark.
    pub window: Window,
    /// Cursor of the next page to fetch (`None` with `complete`: the window is done).
    pub cursor: Option<String>,
    /// The last page of the run covered by this checkpoint.
    pub page: u64,
    /// Records the run has written up to here.
    pub records: u64,
    /// True when the run that committed it completed its window.
    pub complete: bool,
    /// When it was committed.
    pub at: Timestamp,
    /// The greatest cursor value (`cursor_field`, read as a time) of the records committed
    /// by this stream's runs so far, when the stream tracks it (`window.start =
    /// "max_seen"`): where its next window starts.
    #[serde(default, deserialize_with = "crate::format::added_in_v5")]
    pub max_seen: Option<Timestamp>,
}
