//! Side stores kept in the state directory beside the journal.
//!
//! - [`dead_letters`]: refused records, one file per `(run, page)`.
//! - [`audit`]: the per-record audit index behind `waymark trace`.
//! - [`schema`]: the observed shape of each stream's records, and its history.

pub mod audit;
pub mod dead_letters;
pub mod schema;
