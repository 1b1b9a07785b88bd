//! Waymark's connectors: workflow files, the HTTP source and the destinations.
//!
//! # Layout
//! Each folder is one concept, and dependencies point one way:
//! `config` ◄── `http` ◄── `source`, `sink` ◄── `reconcile`; `state` and `record` are leaves
//! shared by the rest.
//! - [`config`]: the TOML workflow file, validated, with `file:line:col` errors, its
//!   canonical digest, and the engine [`Plan`](waymark_engine::Plan) of each stream.
//! - [`http`]: the HTTP client every connector shares ([`Api`]): auth, rate gate, response
//!   rules, secret masking.
//! - [`source`]: [`HttpSource`], a paginated JSON API: requests, templates, pagination
//!   styles, record shaping, child streams through [`source::Parents`].
//! - [`sink`]: destinations: the pure plan of a batch, one protocol over SQLite, PostgreSQL
//!   and JSONL stores, and another API; [`AnyDestination`], the one a workflow names.
//! - [`state`]: side stores in the state directory: dead letters, the audit index.
//! - [`cluster`]: the tables in PostgreSQL a cluster of workers shares (leases, workers,
//!   runs).
//! - [`reconcile`]: comparing a stream's source and destination, and the repair set.
//! - [`record`]: reading a record's key and version.
#![deny(missing_docs)]
// No silent numeric casts: `try_from` with an error where a value can be out of range.
#![deny(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap
)]

pub mod cluster;
pub mod config;
pub mod http;
pub mod reconcile;
pub mod record;
pub mod sink;
pub mod source;
pub mod state;
pub mod webhook;

pub use config::Workflow;
pub use http::Api;
pub use sink::plan::Binding;
pub use sink::sqlite::SqliteDestination;
pub use sink::AnyDestination;
pub use source::HttpSource;
