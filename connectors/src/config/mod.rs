//! Workflow files: one TOML file describes one sync (source, streams, destination).
//!
//! Loading resolves and validates everything before the engine is touched: unknown keys
//! and wrong types are errors with `file:line:col`, then semantic checks run. Each stream's
//! [`Plan`] carries a digest of the canonical form of the parts that affect it, so an
//! unfinished run refuses to resume under a changed file and says which keys changed.

//!
//! # Layout
//! - [`file`], [`source`], [`stream`], [`destination`], [`http`]: the sections, as serde
//!   reads them ([`File`] is the whole file); [`span`]: durations; [`filter`]: `{ path, one_of }`;
//!   [`body`]: an HTTP destination's body mapping.
//! - [`workflow`]: [`Workflow`], loaded and validated, and the engine plans of its streams.
//! - [`shape`]: the file's shape checked against the schema before serde reads it (unknown
//!   and missing keys, types, ranges, durations, enums), in the file's own words, which
//!   [`expect`] finds; [`validate`]: the checks after parsing; [`location`]: key paths ⇄
//!   line and column.
//! - [`digest`]: what a stream's digest is made of; [`scope`]: checkpoint scopes;
//!   [`webhook`]: a stream's webhook section.
//! - [`template`]: the placeholder syntax of request templates; [`env`]: `${VAR}`;
//!   [`url`]: http(s) URLs only.
//! - [`tenants`]: `[tenants]`, the list of tenants and the `{tenant.<field>}` placeholders.
//!
//! Invariant: this folder imports nothing else of the crate; the rest imports it.

mod alerts;
mod body;
mod destination;
mod digest;
mod env;
mod error;
mod expect;
mod file;
mod filter;
mod http;
mod location;
#[cfg(test)]
mod messages_tests;
mod schedule;
mod scope;
mod shape;
mod source;
mod span;
mod stream;
pub mod template;
pub mod tenants;
#[cfg(test)]
mod tests;
mod url;
mod validate;
mod webhook;
mod workflow;

pub use alerts::AlertsSection;
pub use body::{Body, Field, Missing, Source as BodySource};
pub use destination::{
    DeleteMode, DestinationKind, DestinationSection, FileKind, HttpTarget, StreamDestination,
};
pub use env::expand_env;
pub use error::Error;
pub use file::{schema, Durability, File, SyncSection};
pub use filter::RecordFilter;
pub use http::{
    Action, AuthSection, ClientAuth, FromEnv, HeaderMatch, KeyIn, RateLimit, ResponseRule, Setting,
    Statuses,
};
pub use schedule::{Cadence, ScheduleSection};
pub use scope::{
    backfill_scope, is_repair_scope, is_webhook_scope, parse_scope, repair_scope, webhook_scope,
};
pub use source::{
    Backoff, CursorIn, Method, Pagination, PaginationKind, SourceKind, SourceSection,
};
pub use span::Span;
pub use stream::{
    initial_start, ColumnSpec, ColumnType, KeyType, OversizedPages, PrimaryKey, ReconcileMode,
    ReconcileSection, SchemaPolicy, StreamSection, WindowSection, WindowStart, RESERVED,
};
pub use template::TimeFormat;
pub use tenants::{split_tenant, Tenant, TenantsSection};
pub use url::http_url;
pub use webhook::{ApplyMode, HmacEncoding, HmacSection, SchemeName, WebhookSection};
pub use workflow::Workflow;
