//! The PostgreSQL destination: [`store`] writes a stream's batches, [`parents`] reads a
//! parent stream's records for a child stream, [`client`] connects, [`tls`] is rustls.

mod client;
pub mod parents;
pub mod store;
pub mod tls;

pub(crate) use client::connect;
pub use parents::PostgresParents;
pub use store::{PostgresDestination, PostgresStore};
