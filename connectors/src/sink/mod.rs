//! Destinations: where a stream's records go.
//!
//! - [`plan`]: what a batch does to any destination (keys, versions, deletions, dead
//!   letters), decided without I/O.
//! - [`columns`]: declared typed columns.
//! - [`sqlite`], [`postgres`], [`jsonl`]: the stores; [`http`]: another API.
//! - [`any`]: [`AnyDestination`], the one a workflow names.

pub mod any;
pub mod columns;
pub mod http;
pub mod jsonl;
pub mod plan;
pub mod postgres;
pub mod sqlite;

pub use any::{binding, parents, AnyDestination};
