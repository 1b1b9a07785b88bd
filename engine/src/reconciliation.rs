//! A reconciliation's figures: how far a stream's destination had drifted from its source
//! when the two were compared, kept per stream so `waymark status` can flag sustained gaps.

use serde::{Deserialize, Serialize};

use crate::run_id::RunId;
use crate::time::Timestamp;

/// One comparison of a stream's source and destination.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Reconciliation {
    /// When it was made.
    pub at: Timestamp,
    /// Start of the compared range (`None`: from the beginning, a full comparison).
    pub start: Option<Timestamp>,
    /// End of the compared range: the watermark at the time.
    pub end: Timestamp,
    /// Source records in the range.
    pub source: u64,
    /// Live destination records in the range.
    pub destination: u64,
    /// In the source, missing from the destination (or deleted there).
    pub missing: u64,
    /// In the destination, gone from the source.
    pub deleted: u64,
    /// The destination holds an older version than the source.
    pub stale: u64,
    /// The destination holds a newer version than the source (edited there?).
    pub newer: u64,
    /// Same version, different field values (a change that did not bump the version).
    pub differing: u64,
    /// Records whose field values were compared.
    pub compared: u64,
    /// The repair run it started, if it repaired.
    pub repair_run: Option<RunId>,
    /// The gap rate above which `waymark status` flags the stream (the stream's
    /// `reconcile.max_gap_rate` at the time).
    pub max_gap_rate: f64,
}

impl Reconciliation {
    /// Records that are wrong in the destination: missing, deleted, stale or differing
    /// (a newer version in the destination is reported but not a gap of the sync).
    pub fn gaps(&self) -> u64 {
        self.missing + self.deleted + self.stale + self.differing
    }

    /// Gaps as a fraction of the records in the range (the larger side).
    pub fn gap_rate(&self) -> f64 {
        let base = self.source.max(self.destination).max(1);
        self.gaps() as f64 / base as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_gap_rate_counts_wrong_records_against_the_larger_side() {
        let r = Reconciliation {
            source: 990,
            destination: 1000,
            missing: 2,
            deleted: 12,
            stale: 1,
            newer: 5,
            differing: 5,
            ..Reconciliation::default()
        };
        assert_eq!(r.gaps(), 20);
        assert!((r.gap_rate() - 0.02).abs() < 1e-12);
        assert_eq!(Reconciliation::default().gap_rate(), 0.0);
    }
}
