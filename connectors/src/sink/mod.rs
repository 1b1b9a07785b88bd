//! Destinations: where a stream's records go.
//!
//! - [`plan`]: what a batch does to any destination (keys, versions, deletions, dead
//!   letters), decided without I/O.
//! - [`columns`]: declared typed columns.
//! - [`store`]: the [`Store`] trait; [`upserting`]: [`Upserting`], the one write protocol
//!   over any store (replay check → plan → notes → apply → checkpoint → commit).
//! - [`sqlite`], [`postgres`], [`jsonl`]: the stores; [`http`]: another API, with its own
//!   protocol (per-record requests) over the same plan; [`body`]: a record rendered by the
//!   stream's body mapping.
//! - [`any`]: [`AnyDestination`], the one a workflow names.
//! - [`tenants`]: the tenants of a workflow (its file's, or its query's on PostgreSQL).

pub mod any;
pub mod body;
pub mod columns;
pub mod http;
pub mod jsonl;
pub mod plan;
pub mod postgres;
pub mod sqlite;
pub mod store;
pub mod tenants;
pub mod upserting;

pub use any::{binding, parents, AnyDestination};
pub use store::{Commit, Store};
pub use upserting::{Notes, Upserting};
