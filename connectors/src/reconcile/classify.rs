//! The figures and gap classes of a comparison, and `classify`, which puts each key in
//! one class or none (pure).

use std::collections::BTreeMap;
use std::time::Duration;

use waymark_engine::{Reconciliation, Timestamp};

use crate::record::compare_versions;

/// The classes of gap, in report order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Gap {
    /// In the source, missing from the destination (or deleted there).
    Missing,
    /// In the destination, gone from the source.
    Deleted,
    /// The destination holds an older version.
    Stale,
    /// Same version, different field values.
    Differing,
    /// The destination holds a newer version (reported, not repaired).
    Newer,
    /// Not a gap: the record cannot be judged (reported, not repaired, not counted in the
    /// gap rate). The sync refuses it too (a dead letter: no version, a column that does
    /// not fit), or its field values cannot be compared (a record nested deeper than a
    /// JSON tree allows, or holding a lone surrogate, whose text differs from the
    /// destination's).
    Unreadable,
}

impl Gap {
    /// All classes.
    pub const ALL: [Gap; 6] = [
        Gap::Missing,
        Gap::Deleted,
        Gap::Stale,
        Gap::Differing,
        Gap::Newer,
        Gap::Unreadable,
    ];

    /// Its name in reports.
    pub fn name(self) -> &'static str {
        match self {
            Gap::Missing => "missing",
            Gap::Deleted => "deleted",
            Gap::Stale => "stale",
            Gap::Differing => "differing",
            Gap::Newer => "newer",
            Gap::Unreadable => "unreadable",
        }
    }

    /// Whether a repair rewrites it.
    pub(super) fn repaired(self) -> bool {
        !matches!(self, Gap::Newer | Gap::Unreadable)
    }
}

/// What to compare.
#[derive(Clone, Debug)]
pub struct Scope {
    /// Records after this time (`None`: all).
    pub start: Option<Timestamp>,
    /// The watermark: later records are not expected in the destination yet.
    pub end: Timestamp,
    /// Compare field values of this many records (by key hash); `None` with `fields`: all.
    pub sample: Option<u64>,
    /// The fields compared (`None`: the whole record).
    pub fields: Option<Vec<String>>,
    /// Keys listed per gap class.
    pub show: usize,
}

impl Scope {
    /// Whether field values are compared at all.
    pub(super) fn compares_values(&self) -> bool {
        self.sample.is_some() || self.fields.is_some()
    }

    /// Whether a record of time `t` belongs to the compared range.
    pub(super) fn contains(&self, t: Option<Timestamp>) -> bool {
        match t {
            None => true,
            Some(t) => self.start.is_none_or(|s| t > s) && t <= self.end,
        }
    }
}

/// A reconciliation's outcome: the figures, the first keys of each gap class, and the
/// time buckets whose counts differ.
#[derive(Clone, Debug, Default)]
pub struct Report {
    /// The figures (recorded in the journal).
    pub figures: Reconciliation,
    /// Up to `show` keys per class.
    pub keys: BTreeMap<Gap, Vec<String>>,
    /// `(bucket start, source count, destination count)` where they differ, oldest first.
    pub buckets: Vec<(Timestamp, u64, u64)>,
    /// Bucket width.
    pub bucket: Duration,
    /// Records in the repair set.
    pub to_repair: u64,
    /// Records that could not be judged ([`Gap::Unreadable`]; not in the journaled
    /// figures, which count gaps).
    pub unreadable: u64,
}

impl Report {
    pub(super) fn note(&mut self, gap: Gap, key: &str, show: usize) {
        let f = &mut self.figures;
        *match gap {
            Gap::Missing => &mut f.missing,
            Gap::Deleted => &mut f.deleted,
            Gap::Stale => &mut f.stale,
            Gap::Differing => &mut f.differing,
            Gap::Newer => &mut f.newer,
            Gap::Unreadable => &mut self.unreadable,
        } += 1;
        let keys = self.keys.entry(gap).or_default();
        if keys.len() < show {
            keys.push(key.to_string());
        }
    }
}

/// How a record's field values compare with its destination row's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Values {
    /// The same.
    Same,
    /// Different.
    Different,
    /// They cannot be compared (see [`Gap::Unreadable`]).
    Unreadable,
}

/// A record's digest for a comparison of values: of its compared fields, parsed as a tree;
/// or, when it cannot be parsed as one, of its whole text (`raw`), which only the same
/// text matches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Digest {
    /// The hash.
    pub hash: i64,
    /// Of the text, not of the parsed fields.
    pub raw: bool,
}

/// How the values of a source record (digest `source`; `None`: values are not compared)
/// compare with its destination row's. Pure.
pub fn compare_values(source: Option<Digest>, stored: Option<Digest>) -> Option<Values> {
    let s = source?;
    Some(match stored {
        None => Values::Different,
        Some(d) if s.raw || d.raw => match s.raw && d.raw && s.hash == d.hash {
            true => Values::Same,
            false => Values::Unreadable,
        },
        Some(d) if d.hash == s.hash => Values::Same,
        Some(_) => Values::Different,
    })
}

/// The gap of one source record against its destination row `stored` (version, deleted),
/// if any; `values` when its field values were compared. Pure.
pub fn classify(
    version: Option<&str>,
    deletion: bool,
    stored: Option<(Option<&str>, bool)>,
    values: Option<Values>,
) -> Option<Gap> {
    match (deletion, stored) {
        (true, Some((_, false))) => Some(Gap::Deleted),
        (true, _) => None,
        (false, None) | (false, Some((_, true))) => Some(Gap::Missing),
        (false, Some((stored_version, false))) => {
            match version
                .zip(stored_version)
                .map(|(a, b)| compare_versions(a, b))
            {
                Some(std::cmp::Ordering::Greater) => Some(Gap::Stale),
                Some(std::cmp::Ordering::Less) => Some(Gap::Newer),
                _ => match values {
                    Some(Values::Different) => Some(Gap::Differing),
                    Some(Values::Unreadable) => Some(Gap::Unreadable),
                    Some(Values::Same) | None => None,
                },
            }
        }
    }
}
