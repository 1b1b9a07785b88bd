//! Reconciliation: is the destination what the source says it should be?
//!
//! Both sides are spilled into a scratch SQLite file (`key → version, time, digest`),
//! then compared by joins that SQLite runs with a bounded page cache, so a million keys
//! cost disk, not memory. Each key lands in one [`Gap`] class or none. The time of a
//! record is its version read as a time, so a windowed comparison knows which records the
//! sync was responsible for: the source is read up to *now*, but only records at or before
//! the watermark must be in the destination, and a destination record is only judged
//! deleted when its time is inside the window.
//!
//! A repair writes its records (the source's copy of each missing, stale or differing
//! record, and a deletion record per record gone from the source) into a repair set that
//! [`RepairSource`] serves as pages to an ordinary journaled run.
//!
//! # Layout
//! - [`classify`]: gap classes, figures, the pure classification.
//! - [`compare`]: [`Comparison`], the scratch file and its joins.
//! - [`read`]: reading the source over a window.
//! - [`repair`]: [`RepairSet`] and [`RepairSource`].

mod classify;
mod compare;
mod error;
mod read;
mod repair;
#[cfg(test)]
mod tests;

pub use classify::{classify, compare_values, Digest, Gap, Report, Scope, Values};
pub use compare::Comparison;
pub use error::Error;
pub use read::read_source;
pub use repair::{RepairSet, RepairSource, RepairWriter};
