//! The PostgreSQL destination ([`store`]) and its TLS through rustls ([`tls`]).

pub mod store;
pub mod tls;

pub use store::PostgresDestination;
