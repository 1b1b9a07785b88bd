//! The SQLite destination: [`store`] writes a stream's batches (through
//! [`Upserting`](super::Upserting)), [`parents`] reads a parent stream's records for a child
//! stream.

pub mod parents;
pub mod store;

pub use parents::ParentRecords;
pub use store::{SqliteDestination, SqliteStore};
