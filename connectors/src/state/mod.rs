//! Side stores kept in the state directory beside the journal.
//!
//! - [`dead_letters`]: refused records, one file per `(run, page)`.
//! - [`audit`]: the per-record audit index behind `waymark trace`.

pub mod audit;
pub mod dead_letters;
