//! What a run is asked to do (`Plan`) and how (`Settings`).

use std::time::Duration;

use crate::decision::RetryPolicy;
use crate::durability::Durability;
use crate::lease::Lease;
use crate::time::Timestamp;
use crate::window::Start;

/// Everything needed to start or resume one stream's run, resolved from the workflow file.
#[derive(Clone, Debug, Default)]
pub struct Plan {
    /// Sync name.
    pub sync: String,
    /// Stream name.
    pub stream: String,
    /// Digest of the workflow's canonical form.
    pub workflow_digest: String,
    /// Path of the workflow file.
    pub workflow_path: String,
    /// The workflow's canonical key/values, to name what changed between two digests.
    pub fingerprint: Vec<(String, String)>,
    /// The watermark is `now − lag`.
    pub lag: Duration,
    /// A new window starts this long before the previous watermark (or the greatest cursor
    /// value seen), to re-read late updates.
    pub overlap: Duration,
    /// Where a window after a completed one starts.
    pub window_start: Start,
    /// Window start of the stream's first run (`None`: from the beginning).
    pub start: Option<Timestamp>,
    /// A fixed upper bound for every window (a backfill's end); `now − lag` if earlier.
    pub until: Option<Timestamp>,
    /// Longest window of one run: a long catch-up is processed as consecutive runs
    /// ("slices"), each checkpointed (applies once the window has a start).
    pub step: Option<Duration>,
    /// Abandon an unfinished run and start a new one.
    pub fresh: bool,
    /// In a cluster: the lease the partition is held under (runs start from the
    /// destination's checkpoint, batches are fenced by its token).
    pub lease: Option<Lease>,
    /// What each step of the run survives; under `process`, a run never trusts the journal
    /// past the destination's own checkpoint (compared when a run opens).
    pub durability: Durability,
}

/// Limits and retry behaviour of one invocation.
#[derive(Clone, Debug, Default)]
pub struct Settings {
    /// Retry policy for fetches.
    pub retry: RetryPolicy,
    /// Fetch at most this many pages, then pause.
    pub max_pages: Option<u64>,
    /// Run at most this long, then pause.
    pub max_duration: Option<Duration>,
    /// Seed of the jitter generator.
    pub jitter_seed: u64,
}
