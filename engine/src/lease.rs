//! A lease: the right to run one partition (a checkpoint scope) in a cluster of workers,
//! held by one worker at a time and fenced by a token that only grows. A run started under
//! a lease starts from the destination's checkpoint (another worker may have moved it),
//! and every batch it commits is checked against the token in the destination's own
//! transaction: a worker that lost its lease (paused past its TTL, cut off) cannot commit
//! after another took the partition over.

use serde::{Deserialize, Serialize};

/// The lease a run was started under.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    /// The fencing token: each acquisition of the partition gets a greater one.
    pub token: u64,
    /// The worker holding it.
    pub holder: String,
    /// The worker that held the partition before, when another did (a takeover).
    pub previous: Option<String>,
}

/// A worker's even share of `partitions` among `workers` live workers, rounded up so that
/// every partition can have a holder.
pub fn share(partitions: usize, workers: usize) -> usize {
    partitions.div_ceil(workers.max(1))
}

/// Whether a run under `token` may claim a partition whose destination last saw `stored`
/// (the PostgreSQL destination's `INSERT … ON CONFLICT … WHERE token <= excluded.token`).
pub fn may_claim(stored: Option<u64>, token: u64) -> bool {
    stored.is_none_or(|s| s <= token)
}

/// Whether a batch under `token` may commit where the destination last saw `stored` (its
/// `SELECT token … FOR UPDATE` in the batch's transaction): only under the latest claim.
pub fn may_commit(stored: Option<u64>, token: u64) -> bool {
    stored.is_none_or(|s| s == token)
}
