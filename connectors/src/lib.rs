//! Waymark's connectors: workflow files, the HTTP source and the SQLite destination.
//!
//! # Layout
//! - [`workflow`]: the TOML workflow file, validated, with `file:line:col` errors, its
//!   canonical digest, and the engine [`Plan`](waymark_engine::Plan) of each stream.
//! - [`http`]: [`HttpSource`], a paginated JSON API over reqwest (rustls).
//! - [`sqlite`]: [`SqliteDestination`], idempotent versioned upserts with the checkpoint in
//!   the same transaction (rusqlite, bundled SQLite).
//! - [`postgres`]: the same in PostgreSQL (tokio-postgres, COPY into a temporary table);
//!   [`pg_tls`]: its TLS through rustls.
//! - [`jsonl`]: JSON Lines files, one atomically renamed file per page, and compaction.
//! - [`http_destination`]: another API (look up, update or create; idempotency keys).
//! - [`destinations`]: [`AnyDestination`], the one a workflow names.
//! - [`upsert`]: what a batch does to any destination (versions, deletions, dead letters).
//! - [`columns`]: declared typed columns; [`dead_letters`]: the dead-letter store.
//! - [`record`]: reading a record's key and version.
//! - [`template`]: `{window.start|unix}`, `{parent.id}`… in requests.
//! - [`api`]: [`Api`], what the streams of one source share: the HTTP client, credentials,
//!   request budget and response rules.
//! - [`auth`]: credentials from environment variables, OAuth2 tokens, secret masking.
//! - [`rate`]: the request budget (GCRA, quota headers, `Retry-After`), persisted.
//! - [`rules`]: what a response means (`on_response` rules, then the defaults).
//! - [`reconcile`]: comparing a stream's source and destination, and the repair set.
#![deny(missing_docs)]

pub mod api;
pub mod audit;
pub mod auth;
pub mod columns;
pub mod dead_letters;
pub mod destinations;
pub mod http;
pub mod http_destination;
pub mod jsonl;
pub mod pg_tls;
pub mod postgres;
pub mod rate;
pub mod reconcile;
pub mod record;
pub mod rules;
pub mod sqlite;
pub mod template;
pub mod upsert;
pub mod workflow;

pub use api::Api;
pub use destinations::AnyDestination;
pub use http::HttpSource;
pub use sqlite::SqliteDestination;
pub use upsert::Binding;
pub use workflow::Workflow;
