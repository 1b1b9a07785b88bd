//! The run's window: the fixed range of source time a run is responsible for.

use serde::{Deserialize, Serialize};

use crate::time::Timestamp;

/// `(start, end]` of source time for one run. `end` is the watermark (`now − lag`), chosen
/// once when the run starts and kept when it is resumed, so a run never chases a moving
/// target. `start` is `None` for the first run of a stream (everything up to the watermark).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Window {
    /// Lower bound (exclusive in intent; sources that only filter `>=` re-read it, which
    /// idempotent writes absorb). `None` means from the beginning.
    pub start: Option<Timestamp>,
    /// The watermark: the run's fixed upper bound.
    pub end: Timestamp,
}

impl std::fmt::Display for Window {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.start {
            Some(start) => write!(f, "({start}, {}]", self.end),
            None => write!(f, "(beginning, {}]", self.end),
        }
    }
}

/// Where a window after a completed one starts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Start {
    /// At the previous watermark (Waymark's clock at the last run, minus lag), less the
    /// overlap.
    #[default]
    Watermark,
    /// At the greatest cursor value the stream's runs wrote (the API's own clock), or the
    /// previous watermark if that is earlier, less the overlap; the watermark until a
    /// record with a cursor value was seen.
    MaxSeen,
}
