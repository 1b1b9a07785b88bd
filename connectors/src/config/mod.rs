//! Workflow files: one TOML file describes one sync (source, streams, destination).
//!
//! Loading resolves and validates everything before the engine is touched: unknown keys
//! and wrong types are errors with `file:line:col`, then semantic checks run. Each stream's
//! [`Plan`] carries a digest of the canonical form of the parts that affect it, so an
//! unfinished run refuses to resume under a changed file and says which keys changed.

use std::path::{Path, PathBuf};
use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use waymark_engine::{Plan, RetryPolicy, Timestamp};

/// A workflow file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file cannot be read.
    #[error("{path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// Not valid TOML, an unknown key, or a wrong type.
    #[error("{path}:{line}:{column}: {message}")]
    Syntax {
        /// The file.
        path: PathBuf,
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
        /// What is wrong and what was expected.
        message: String,
    },
    /// Parsed, but does not make sense.
    #[error("{path}:{line}:{column}: {key}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// 1-based line of the key (or of its table when the key is missing).
        line: usize,
        /// 1-based column.
        column: usize,
        /// The key path (`stream.orders.primary_key`).
        key: String,
        /// What is wrong.
        message: String,
    },
    /// No stream of that name.
    #[error("{path}: no stream named `{name}` (streams: {known})")]
    UnknownStream {
        /// The file.
        path: PathBuf,
        /// The name asked for.
        name: String,
        /// The streams the file has.
        known: String,
    },
}

/// A duration written like `30s`, `5m`, `7d`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Span(pub Duration);

impl Serialize for Span {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(self.0).to_string())
    }
}

impl JsonSchema for Span {
    fn schema_name() -> String {
        "Duration".into()
    }

    fn json_schema(_: &mut schemars::gen::SchemaGenerator) -> schemars::schema::Schema {
        let mut schema = schemars::schema::SchemaObject {
            instance_type: Some(schemars::schema::InstanceType::String.into()),
            ..Default::default()
        };
        schema.metadata().description =
            Some("A duration such as \"30s\", \"5m\", \"2h\", \"7d\"".into());
        schema.into()
    }
}

impl<'de> Deserialize<'de> for Span {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_duration(&text).map(Span).map_err(|e| {
            serde::de::Error::custom(format!(
                "`{text}` is not a duration ({e}); write e.g. \"30s\", \"5m\", \"7d\""
            ))
        })
    }
}

/// The JSON Schema of workflow files (for editors).
pub fn schema() -> serde_json::Value {
    serde_json::to_value(schemars::schema_for!(File)).unwrap_or_default()
}

/// The `[sync]` table.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SyncSection {
    /// Name of the sync; with the stream name it identifies checkpoints.
    pub name: String,
    /// How long journals of finished runs are kept (default 30 days).
    #[serde(default = "default_keep")]
    pub keep: Span,
    /// How long `waymark trace` can look back: each record a page brought is noted in the
    /// state directory's audit index (~50 bytes a record) for this long (default 7 days;
    /// `"0s"` turns the index off).
    #[serde(default = "default_audit_keep")]
    pub audit_keep: Span,
}

fn default_audit_keep() -> Span {
    Span(Duration::from_secs(7 * 24 * 3600))
}

fn default_keep() -> Span {
    Span(Duration::from_secs(30 * 24 * 3600))
}

/// The `[source]` table.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SourceSection {
    /// Only `"http"` for now.
    pub kind: SourceKind,
    /// Base URL; `${VAR}` is replaced by the environment variable `VAR` at run time.
    pub base_url: String,
    /// Per-request timeout (default 30s).
    #[serde(default = "default_timeout")]
    pub timeout: Span,
    /// Connect timeout (default 10s, at most `timeout`).
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout: Span,
    /// A PEM file of extra trusted CA certificates (relative to the workflow file).
    pub ca_file: Option<PathBuf>,
    /// Attempts per page before the run fails (default 6).
    #[serde(default = "default_attempts")]
    pub max_attempts: u32,
    /// Exponential backoff with full jitter between attempts.
    #[serde(default)]
    pub backoff: Backoff,
    /// Longest wait a run sleeps through (a far `Retry-After`, an exhausted quota); a longer
    /// one pauses the run until then, and the next `waymark run` continues (default 10m).
    #[serde(default = "default_max_wait")]
    pub max_wait: Span,
    /// A request budget shared by every stream of this source.
    pub rate_limit: Option<crate::http::rate::RateLimit>,
    /// How requests authenticate; secrets come from environment variables.
    pub auth: Option<crate::http::auth::AuthSection>,
    /// Rules deciding what a response means, before the defaults.
    #[serde(default)]
    pub on_response: Vec<crate::http::rules::ResponseRule>,
}

/// `backoff = { base = "250ms", cap = "30s" }`: the n-th retry waits a uniformly random
/// time in `[0, min(cap, base × 2ⁿ⁻¹)]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Backoff {
    /// The first retry's ceiling (default 250ms).
    #[serde(default = "default_base")]
    pub base: Span,
    /// The largest ceiling (default 30s).
    #[serde(default = "default_cap")]
    pub cap: Span,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            base: default_base(),
            cap: default_cap(),
        }
    }
}

fn default_base() -> Span {
    Span(Duration::from_millis(250))
}

fn default_cap() -> Span {
    Span(Duration::from_secs(30))
}

fn default_max_wait() -> Span {
    Span(Duration::from_secs(600))
}

fn default_connect_timeout() -> Span {
    Span(Duration::from_secs(10))
}

fn default_timeout() -> Span {
    Span(Duration::from_secs(30))
}

fn default_attempts() -> u32 {
    6
}

/// Source kinds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum SourceKind {
    /// A paginated JSON API.
    Http,
}

/// `filter = { path = "status", one_of = ["paid", "shipped"] }`
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RecordFilter {
    /// Dotted path of the value tested.
    pub path: String,
    /// Accepted values (compared as text: `"7"` matches `7`).
    pub one_of: Vec<String>,
}

/// A primary key: one dotted path, or several (a composite key).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum PrimaryKey {
    /// `primary_key = "id"`
    One(String),
    /// `primary_key = ["org_id", "id"]`
    Composite(Vec<String>),
}

impl PrimaryKey {
    /// The key's paths.
    pub fn paths(&self) -> Vec<String> {
        match self {
            PrimaryKey::One(path) => vec![path.clone()],
            PrimaryKey::Composite(paths) => paths.clone(),
        }
    }
}

impl std::fmt::Display for PrimaryKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.paths().join(", "))
    }
}

/// HTTP methods a stream can use.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    /// GET
    #[default]
    Get,
    /// POST with a JSON body.
    Post,
}

/// A stream's pagination: `kind` picks the style, and each style reads only its own keys
/// (a key of another style is an error).
#[derive(Clone, Debug, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Pagination {
    /// The style.
    pub kind: PaginationKind,
    /// Query parameter that carries the page size (any style).
    pub limit_param: Option<String>,
    /// `cursor`: dotted path of the next-page token in the body.
    pub cursor_path: Option<String>,
    /// `cursor`: the parameter (or header, or body field) that carries the token back.
    pub cursor_param: Option<String>,
    /// `cursor`: where the token goes: `query` (default), `header` or `body` (a POST).
    pub cursor_in: Option<CursorIn>,
    /// `next_url`: dotted path of the next page's URL in the body.
    pub next_url_path: Option<String>,
    /// `page_number`: query parameter of the page number.
    pub page_param: Option<String>,
    /// `page_number`: number of the first page (default 1).
    pub first_page: Option<u64>,
    /// `offset`: query parameter of the offset.
    pub offset_param: Option<String>,
    /// `page_number`, `offset`, `keyset`: dotted path of a boolean "more pages follow".
    pub has_more_path: Option<String>,
    /// `page_number`, `offset`: dotted path of the total record count in the body.
    pub total_path: Option<String>,
    /// `page_number`, `offset`: header carrying the total record count.
    pub total_header: Option<String>,
    /// `keyset`: parameter receiving the last `cursor_field` value seen, exactly as the API
    /// wrote it (usually the same parameter as `window.start_param`).
    pub since_param: Option<String>,
    /// `keyset`: parameter receiving the last primary key seen, the tie-breaker among
    /// records sharing a `cursor_field` value.
    pub id_param: Option<String>,
}

/// Pagination styles.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum PaginationKind {
    /// A token read from the body, sent back.
    #[default]
    Cursor,
    /// The next page's URL, read from the body.
    NextUrl,
    /// The next page's URL from an RFC 8288 `Link` header, `rel="next"`.
    LinkHeader,
    /// Page numbers.
    PageNumber,
    /// Offsets.
    Offset,
    /// The last `(cursor_field, primary_key)` seen, sent back through filter parameters.
    Keyset,
}

/// Where a cursor token is sent.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum CursorIn {
    /// A query parameter.
    #[default]
    Query,
    /// A request header.
    Header,
    /// A field of a JSON body (the request becomes a POST).
    Body,
}

impl Pagination {
    /// The keys this style requires, and the optional ones it accepts besides
    /// `limit_param`.
    fn keys(kind: PaginationKind) -> (&'static [&'static str], &'static [&'static str]) {
        match kind {
            PaginationKind::Cursor => (&["cursor_path", "cursor_param"], &["cursor_in"]),
            PaginationKind::NextUrl => (&["next_url_path"], &[]),
            PaginationKind::LinkHeader => (&[], &[]),
            PaginationKind::PageNumber => (
                &["page_param"],
                &["first_page", "has_more_path", "total_path", "total_header"],
            ),
            PaginationKind::Offset => (
                &["offset_param"],
                &["has_more_path", "total_path", "total_header"],
            ),
            PaginationKind::Keyset => (&["since_param"], &["id_param", "has_more_path"]),
        }
    }

    /// The style-specific keys that are set.
    fn set_keys(&self) -> Vec<&'static str> {
        [
            ("cursor_path", self.cursor_path.is_some()),
            ("cursor_param", self.cursor_param.is_some()),
            ("cursor_in", self.cursor_in.is_some()),
            ("next_url_path", self.next_url_path.is_some()),
            ("page_param", self.page_param.is_some()),
            ("first_page", self.first_page.is_some()),
            ("offset_param", self.offset_param.is_some()),
            ("has_more_path", self.has_more_path.is_some()),
            ("total_path", self.total_path.is_some()),
            ("total_header", self.total_header.is_some()),
            ("since_param", self.since_param.is_some()),
            ("id_param", self.id_param.is_some()),
        ]
        .into_iter()
        .filter_map(|(k, set)| set.then_some(k))
        .collect()
    }

    /// A key this style needs but lacks, or a key of another style: `(key, message)`.
    pub fn check(&self) -> Result<(), (String, String)> {
        let kind = serde_json::to_value(self.kind)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        let (required, optional) = Self::keys(self.kind);
        let set = self.set_keys();
        if let Some(missing) = required.iter().find(|k| !set.contains(k)) {
            return Err((
                format!("pagination.{missing}"),
                format!("required with kind = \"{kind}\""),
            ));
        }
        if let Some(stray) = set
            .iter()
            .find(|k| !required.contains(k) && !optional.contains(k))
        {
            return Err((
                format!("pagination.{stray}"),
                format!("does not apply to kind = \"{kind}\""),
            ));
        }
        Ok(())
    }
}

/// A stream's incremental window.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WindowSection {
    /// The watermark is `now − lag` (default 2m: records the API commits late still fall
    /// inside the next window).
    #[serde(default = "default_lag")]
    pub lag: Span,
    /// A new window re-reads this much before the last watermark (default 0s).
    #[serde(default)]
    pub overlap: Span,
    /// Start of the first window: an RFC 3339 time, or an age such as `30d` (default: from
    /// the beginning).
    #[serde(alias = "start")]
    pub initial: Option<String>,
    /// Query parameter that receives the window start, if the API filters.
    pub start_param: Option<String>,
    /// Query parameter that receives the watermark, if the API filters.
    pub end_param: Option<String>,
    /// Longest window of one run (e.g. `1d`): a long catch-up runs as consecutive
    /// slices, each checkpointed. Must be longer than `overlap`.
    pub step: Option<Span>,
    /// How window bounds are written: `rfc3339` (default, with milliseconds), `unix`
    /// (seconds), `unix_ms` or `date` (`YYYY-MM-DD`).
    #[serde(default)]
    pub format: TimeFormat,
}

fn default_lag() -> Span {
    Span(Duration::from_secs(120))
}

impl Default for WindowSection {
    fn default() -> Self {
        WindowSection {
            lag: default_lag(),
            overlap: Span::default(),
            initial: None,
            start_param: None,
            end_param: None,
            step: None,
            format: TimeFormat::default(),
        }
    }
}

/// How a time is written in a request.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum TimeFormat {
    /// `2026-01-01T00:00:00.000Z`
    #[default]
    Rfc3339,
    /// Unix seconds.
    Unix,
    /// Unix milliseconds.
    UnixMs,
    /// `2026-01-01` (the day containing the instant, UTC).
    Date,
}

impl TimeFormat {
    /// `t` written in this format.
    pub fn format(self, t: Timestamp) -> String {
        match self {
            TimeFormat::Rfc3339 => t.to_string(),
            TimeFormat::Unix => (t.0 / 1000).to_string(),
            TimeFormat::UnixMs => t.0.to_string(),
            TimeFormat::Date => t.to_string().chars().take(10).collect(),
        }
    }
}

/// One `[[stream]]`.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StreamSection {
    /// Name; also the destination table (letters, digits, `_`).
    pub name: String,
    /// Path appended to the base URL.
    pub path: String,
    /// HTTP method: `get` (default) or `post`.
    #[serde(default)]
    pub method: Method,
    /// JSON body of a `post` (a TOML table); string values may hold templates.
    pub body: Option<serde_json::Value>,
    /// Extra query parameters; values may hold templates (`{window.start|unix}`).
    #[serde(default)]
    pub params: std::collections::BTreeMap<String, String>,
    /// Extra request headers; values may hold templates and `${VAR}` (read at run time,
    /// never journaled or logged).
    #[serde(default)]
    pub headers: std::collections::BTreeMap<String, String>,
    /// Keeps only the records whose value at a path is one of the listed values (the page
    /// size still counts every record received).
    pub filter: Option<RecordFilter>,
    /// Keeps only these fields (dotted paths) of each record.
    pub fields: Option<Vec<String>>,
    /// Records whose value at a path is one of the listed values are deletions (a
    /// soft-delete flag in the source), applied like a deletions feed's.
    pub deleted_when: Option<RecordFilter>,
    /// Makes this a child stream: it is read once per record of the named stream (an
    /// earlier stream of this file, read from its destination table in key order), whose
    /// fields `{parent.<path>}` fill the path, parameters, headers and body.
    pub parent: Option<String>,
    /// Dotted path of the records array in the response body (empty: the body is the array).
    #[serde(default)]
    pub records: String,
    /// Dotted path of the primary key in a record.
    pub primary_key: PrimaryKey,
    /// Dotted path of the version (e.g. `updated_at`): an older version never overwrites a
    /// newer one.
    pub cursor_field: Option<String>,
    /// Records per page requested (default 100).
    #[serde(default = "default_page_size")]
    pub page_size: u32,
    /// How pages follow each other.
    pub pagination: Pagination,
    /// The incremental window.
    #[serde(default)]
    pub window: WindowSection,
    /// Rules deciding what a response means, checked before the source's.
    #[serde(default)]
    pub on_response: Vec<crate::http::rules::ResponseRule>,
    /// Typed destination columns filled from record paths, beside the raw record; a new
    /// one is added to an existing table.
    #[serde(default)]
    pub columns: std::collections::BTreeMap<String, crate::sink::columns::ColumnSpec>,
    /// Makes this stream a deletions feed of the named stream: each record (its
    /// `primary_key`, and its `cursor_field` as the deletion time) marks that stream's
    /// record deleted, unless the stored record is newer than the deletion.
    pub deletes: Option<String>,
    /// Compares this stream's source and destination when due (`waymark run` performs it
    /// after the stream's run): `{ every = "7d", mode = "report" }`.
    pub reconcile: Option<ReconcileSection>,
}

/// A stream's regular reconciliation (`waymark reconcile` does the same on demand).
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ReconcileSection {
    /// How often: a reconciliation is due when the last one is older than this.
    pub every: Span,
    /// `report` (default: record and show the gaps) or `repair` (and fix them through a
    /// journaled repair run).
    #[serde(default)]
    pub mode: ReconcileMode,
    /// Compare only the records of this last span of source time (default: all of them);
    /// the stream needs window parameters.
    pub window: Option<Span>,
    /// Also compare the field values of this many records (chosen by key hash).
    pub sample: Option<u64>,
    /// The fields compared (dotted paths; default: the whole record).
    pub fields: Option<Vec<String>>,
    /// `waymark status` flags the stream when the last gap rate exceeds this (default 0.01).
    #[serde(default = "default_max_gap_rate")]
    pub max_gap_rate: f64,
}

fn default_max_gap_rate() -> f64 {
    0.01
}

/// What a reconciliation does with the gaps it finds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ReconcileMode {
    /// Change nothing.
    #[default]
    Report,
    /// Re-write missing and stale records, apply deletions by the destination's
    /// `delete_mode`.
    Repair,
}

fn default_page_size() -> u32 {
    100
}

/// The `[destination]` table.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DestinationSection {
    /// `sqlite`, `postgres`, `jsonl` or `http`.
    pub kind: DestinationKind,
    /// SQLite: the database file; JSONL: the directory (relative to the workflow file's
    /// directory).
    pub path: Option<String>,
    /// PostgreSQL: the connection string (it may hold a password), from the environment:
    /// `url = { env = "WAYMARK_PG_URL" }`.
    pub url: Option<crate::http::auth::FromEnv>,
    /// PostgreSQL: the schema of the tables (default `public`).
    pub schema: Option<String>,
    /// PostgreSQL: a PEM file of extra trusted CA certificates for TLS (relative to the
    /// workflow file); the Mozilla roots are always trusted.
    pub ca_file: Option<PathBuf>,
    /// HTTP: the API's base URL (`${VAR}` allowed).
    pub base_url: Option<String>,
    /// HTTP: how requests authenticate (as in `[source.auth]`).
    pub auth: Option<crate::http::auth::AuthSection>,
    /// HTTP: a request budget for the destination API.
    pub rate_limit: Option<crate::http::rate::RateLimit>,
    /// HTTP: the search for a record by its source key, e.g.
    /// `"/contacts?external_id={key}"`; the answer (an object, or an array whose first
    /// element is used) holds the destination's id at `id_path`.
    pub lookup: Option<String>,
    /// HTTP: where a new record is POSTed, e.g. `"/contacts"`.
    pub create: Option<String>,
    /// HTTP: where a known record is PATCHed, e.g. `"/contacts/{id}"`.
    pub update: Option<String>,
    /// HTTP: where a deleted record is DELETEd, e.g. `"/contacts/{id}"`.
    pub delete: Option<String>,
    /// HTTP: the destination's id in a create or lookup answer (default `id`).
    pub id_path: Option<String>,
    /// HTTP: the field of the sent body that carries the source key (default
    /// `external_id`).
    pub external_id_field: Option<String>,
    /// What a deletion does: `soft` (default: the row stays, `deleted_at` set) or `hard`
    /// (the row is removed; its key and deletion version are kept in `_waymark_tombstones`
    /// so an older copy read later is not written back).
    #[serde(default)]
    pub delete_mode: DeleteMode,
    /// How long a write waits for a database locked by another process before the step
    /// fails (default 10s).
    #[serde(default = "default_busy_timeout")]
    pub busy_timeout: Span,
}

fn default_busy_timeout() -> Span {
    Span(Duration::from_secs(10))
}

/// What a deletion does in the destination.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum DeleteMode {
    /// Keep the row, set `deleted_at`.
    #[default]
    Soft,
    /// Remove the row; remember the deletion in `_waymark_tombstones`.
    Hard,
}

/// Destination kinds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum DestinationKind {
    /// SQLite file (embedded, nothing to install).
    Sqlite,
    /// A PostgreSQL database.
    Postgres,
    /// JSON Lines files, a directory per table.
    Jsonl,
    /// Another API (e.g. a CRM): look up by external id, then update or create.
    Http,
}

/// The parsed file.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct File {
    /// `[sync]`
    pub sync: SyncSection,
    /// `[source]`
    pub source: SourceSection,
    /// `[[stream]]`
    pub stream: Vec<StreamSection>,
    /// `[destination]`
    pub destination: DestinationSection,
}

/// A loaded, validated workflow.
#[derive(Clone, Debug)]
pub struct Workflow {
    path: PathBuf,
    file: File,
    /// The text, to place errors found after parsing.
    text: String,
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

/// The byte offset of a semantic key path (`stream.orders.pagination.since_param`) in the
/// text: the key itself, else the nearest enclosing key or table that is there.
fn locate(text: &str, key: &str) -> usize {
    let mut parts = key.split('.');
    let Some(table) = parts.next() else {
        return 0;
    };
    let mut rest: Vec<&str> = parts.collect();
    // Stream keys name their stream: `stream.<name>.…`.
    let name = (table == "stream" && !rest.is_empty()).then(|| rest.remove(0));
    let mut blocks = Vec::new();
    let (mut offset, mut open) = (0, None);
    for line in text.split_inclusive('\n') {
        let t = line.trim();
        if t.starts_with('[') {
            if let Some(start) = open.take() {
                blocks.push((start, offset));
            }
            let header = t.trim_start_matches('[').split(']').next().unwrap_or("");
            if header.trim() == table {
                open = Some(offset);
            }
        }
        offset += line.len();
    }
    if let Some(start) = open {
        blocks.push((start, text.len()));
    }
    let named = |body: &str, name: &str| {
        body.lines()
            .any(|l| l.replace(' ', "") == format!("name=\"{name}\""))
    };
    let Some((start, end)) = blocks
        .into_iter()
        .find(|(s, e)| name.is_none_or(|n| named(&text[*s..*e], n)))
    else {
        return 0;
    };
    let body = &text[start..end];
    let (mut found, mut from) = (0, 0);
    for part in rest {
        // `on_response[2]` is found by its key.
        let part = part.split('[').next().unwrap_or(part);
        let is_key = |i: usize| {
            let before = body[..i].chars().last();
            !before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
                && body[i + part.len()..].trim_start().starts_with('=')
        };
        match body[from..]
            .match_indices(part)
            .map(|(i, _)| i + from)
            .find(|&i| is_key(i))
        {
            Some(i) => (found, from) = (i, i + part.len()),
            None => break,
        }
    }
    start + found
}

/// The key path (`stream[1].pagination.kind`) of the key or value at `offset` of a TOML
/// text, for error messages: the enclosing table header, the key of the line, and the key
/// inside an inline table.
fn key_path(text: &str, offset: usize) -> Option<String> {
    let before = text.get(..offset)?;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let ident = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '-';
    // The table: the last header above this line, with the index of an array of tables.
    let mut table = String::new();
    for line in text[..line_start].lines() {
        let line = line.trim();
        if let Some(name) = line.strip_prefix("[[").and_then(|l| l.split("]]").next()) {
            let name = name.trim();
            let index = text[..line_start]
                .lines()
                .filter(|l| {
                    l.trim()
                        .strip_prefix("[[")
                        .and_then(|l| l.split("]]").next())
                        .map(str::trim)
                        == Some(name)
                })
                .count();
            table = format!("{name}[{}]", index.saturating_sub(1));
        } else if let Some(name) = line.strip_prefix('[').and_then(|l| l.split(']').next()) {
            table = name.trim().to_string();
        }
    }
    let line = text[line_start..].lines().next().unwrap_or("");
    let key = line
        .split('=')
        .next()
        .map(str::trim)
        .filter(|k| !k.is_empty() && k.chars().all(ident));
    // Inside an inline table: the key just before the offset's `=` (or at the offset).
    let column = offset - line_start;
    let inner = line.find('{').filter(|open| *open < column).and_then(|_| {
        let head = &line[..column.min(line.len())];
        let word_at: String = line[column.min(line.len())..]
            .chars()
            .take_while(|c| ident(*c))
            .collect();
        if !word_at.is_empty() && !head.ends_with(|c: char| ident(c)) {
            return Some(word_at);
        }
        let eq = head.rfind('=')?;
        let name: String = head[..eq]
            .trim_end()
            .chars()
            .rev()
            .take_while(|c| ident(*c))
            .collect();
        Some(name.chars().rev().collect::<String>()).filter(|n| !n.is_empty())
    });
    let parts: Vec<&str> = [Some(table.as_str()), key, inner.as_deref()]
        .into_iter()
        .flatten()
        .filter(|p| !p.is_empty())
        .collect();
    (!parts.is_empty()).then(|| parts.join("."))
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

impl Workflow {
    /// Reads and validates a workflow file.
    pub fn load(path: &Path) -> Result<Self, Error> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(path, &text)
    }

    /// Parses and validates workflow text; `path` names it in errors.
    pub fn parse(path: &Path, text: &str) -> Result<Self, Error> {
        let file: File = toml::from_str(text).map_err(|e| {
            let start = e.span().map_or(0, |s| s.start);
            let (line, column) = line_col(text, start);
            let message = e.message().trim().to_string();
            Error::Syntax {
                path: path.to_path_buf(),
                line,
                column,
                message: match key_path(text, start) {
                    Some(key) => format!("{key}: {message}"),
                    None => message,
                },
            }
        })?;
        let workflow = Workflow {
            path: path.to_path_buf(),
            file,
            text: text.to_string(),
        };
        workflow.validate()?;
        Ok(workflow)
    }

    /// Line and column of a key path (`stream.orders.pagination.kind`) in the file.
    pub fn position(&self, key: &str) -> (usize, usize) {
        line_col(&self.text, locate(&self.text, key))
    }

    fn invalid(&self, key: String, message: impl Into<String>) -> Error {
        let (line, column) = self.position(&key);
        Error::Invalid {
            path: self.path.clone(),
            line,
            column,
            key,
            message: message.into(),
        }
    }

    fn validate(&self) -> Result<(), Error> {
        if !valid_name(&self.file.sync.name) {
            return Err(self.invalid("sync.name".into(), "use letters, digits, `_` or `-`"));
        }
        if self.file.stream.is_empty() {
            return Err(self.invalid("stream".into(), "declare at least one [[stream]]"));
        }
        let d = &self.file.destination;
        match d.kind {
            DestinationKind::Sqlite | DestinationKind::Jsonl if d.path.is_none() => {
                return Err(self.invalid(
                    "destination".into(),
                    "sqlite and jsonl destinations need `path` (the database file, or the \
                     directory)",
                ))
            }
            DestinationKind::Postgres if d.url.is_none() => {
                return Err(self.invalid(
                    "destination".into(),
                    "a postgres destination needs `url = { env = \"…\" }` (the connection \
                     string, read from the environment)",
                ))
            }
            DestinationKind::Http => {
                for (k, v) in [
                    ("base_url", &d.base_url),
                    ("lookup", &d.lookup),
                    ("create", &d.create),
                    ("update", &d.update),
                ] {
                    if v.is_none() {
                        return Err(self.invalid(
                            "destination".into(),
                            format!("an http destination needs `{k}`"),
                        ));
                    }
                }
            }
            _ => {}
        }
        let source = &self.file.source;
        if source.max_attempts == 0 {
            return Err(self.invalid("source.max_attempts".into(), "must be at least 1"));
        }
        if source.backoff.base.0.is_zero() || source.backoff.base.0 > source.backoff.cap.0 {
            return Err(self.invalid(
                "source.backoff".into(),
                "needs 0 < base <= cap, e.g. { base = \"250ms\", cap = \"30s\" }",
            ));
        }
        if source.backoff.cap.0 > source.max_wait.0 {
            return Err(self.invalid(
                "source.max_wait".into(),
                "must be at least backoff.cap (a backoff would otherwise pause the run)",
            ));
        }
        if let Some(limit) = &source.rate_limit {
            if limit.requests == 0 || limit.per.0.is_zero() || limit.burst == 0 {
                return Err(self.invalid(
                    "source.rate_limit".into(),
                    "needs requests >= 1, a non-zero `per` and burst >= 1, e.g. \
                     { requests = 10, per = \"1s\" }",
                ));
            }
        }
        if let Some(crate::http::auth::AuthSection::Oauth2 { token_url, .. }) = &source.auth {
            if let Err(e) = reqwest::Url::parse(token_url) {
                return Err(self.invalid(
                    "source.auth.token_url".into(),
                    format!("`{token_url}` is not a URL: {e}"),
                ));
            }
        }
        let rules = source
            .on_response
            .iter()
            .enumerate()
            .map(|(i, r)| (format!("source.on_response[{i}]"), r))
            .chain(self.file.stream.iter().flat_map(|s| {
                s.on_response
                    .iter()
                    .enumerate()
                    .map(move |(i, r)| (format!("stream.{}.on_response[{i}]", s.name), r))
            }));
        for (key, rule) in rules {
            if !rule.has_condition() {
                return Err(self.invalid(
                    key,
                    "give at least one condition: `status`, `header` or `body_contains`",
                ));
            }
        }
        let mut seen = std::collections::HashSet::new();
        for s in &self.file.stream {
            let key = |k: &str| format!("stream.{}.{k}", s.name);
            if !s
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_')
                || s.name.is_empty()
            {
                return Err(self.invalid(
                    key("name"),
                    "use letters, digits and `_` (it names a table)",
                ));
            }
            if s.name.starts_with("_waymark") {
                return Err(
                    self.invalid(key("name"), "names starting with `_waymark` are reserved")
                );
            }
            if !seen.insert(&s.name) {
                return Err(self.invalid(key("name"), "two streams have this name"));
            }
            if s.records.starts_with('$') {
                serde_json_path::JsonPath::parse(&s.records)
                    .map_err(|e| self.invalid(key("records"), format!("not a JSONPath: {e}")))?;
            }
            if s.primary_key.paths().iter().any(|p| p.trim().is_empty()) {
                return Err(self.invalid(key("primary_key"), "every stream needs a primary key"));
            }
            for name in s.columns.keys() {
                let key = key(&format!("columns.{name}"));
                if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                    return Err(self.invalid(key, "a column name uses letters, digits and `_`"));
                }
                if crate::sink::columns::RESERVED.contains(&name.as_str()) {
                    return Err(self.invalid(
                        key,
                        format!("`{name}` is a column of every table; choose another name"),
                    ));
                }
            }
            if s.page_size == 0 {
                return Err(self.invalid(key("page_size"), "must be at least 1"));
            }
            if let Some(target) = &s.deletes {
                let Some(t) = self.file.stream.iter().find(|t| &t.name == target) else {
                    return Err(self.invalid(
                        key("deletes"),
                        format!("no stream named `{target}` in this file"),
                    ));
                };
                if t.name == s.name || t.deletes.is_some() {
                    return Err(self.invalid(
                        key("deletes"),
                        format!("`{target}` is itself a deletions feed"),
                    ));
                }
                if s.cursor_field.is_none() || t.cursor_field.is_none() {
                    return Err(self.invalid(
                        key("deletes"),
                        format!(
                            "a deletions feed and `{target}` both need a `cursor_field` (the \
                             deletion time and the record version), so a delete never removes \
                             a newer record"
                        ),
                    ));
                }
            }
            if let Some(r) = &s.reconcile {
                if r.every.0.is_zero() {
                    return Err(self.invalid(key("reconcile.every"), "must be longer than 0s"));
                }
                if !(0.0..=1.0).contains(&r.max_gap_rate) {
                    return Err(self.invalid(
                        key("reconcile.max_gap_rate"),
                        "a fraction between 0 and 1, e.g. 0.01 for 1%",
                    ));
                }
                if s.deletes.is_some() {
                    return Err(self.invalid(
                        key("reconcile"),
                        "a deletions feed is reconciled with the stream it deletes from",
                    ));
                }
                if r.window.is_some()
                    && (s.window.start_param.is_none() && s.window.end_param.is_none())
                {
                    return Err(self.invalid(
                        key("reconcile.window"),
                        "the stream has no window parameters, so only a full reconciliation \
                         is possible: remove `window`",
                    ));
                }
            }
            if let Some(initial) = &s.window.initial {
                initial_start(initial, Timestamp(0))
                    .map_err(|e| self.invalid(key("window.initial"), e))?;
            }
            let child = s.parent.is_some();
            let templates = std::iter::once(("path".to_string(), s.path.clone()))
                .chain(
                    s.params
                        .iter()
                        .map(|(k, v)| (format!("params.{k}"), v.clone())),
                )
                .chain(
                    s.headers
                        .iter()
                        .map(|(k, v)| (format!("headers.{k}"), v.clone())),
                )
                .chain(
                    s.body
                        .iter()
                        .flat_map(json_strings)
                        .map(|v| ("body".to_string(), v)),
                );
            for (k, template) in templates {
                crate::source::template::check(&template, child).map_err(|e| self.invalid(key(&k), e))?;
            }
            if let Some(parent) = &s.parent {
                if d.kind != DestinationKind::Sqlite {
                    return Err(self.invalid(
                        key("parent"),
                        "child streams read their parents from a sqlite destination",
                    ));
                }
                let position = self.file.stream.iter().position(|t| &t.name == parent);
                let me = self.file.stream.iter().position(|t| t.name == s.name);
                match (position, me) {
                    (Some(p), Some(m)) if p < m => {
                        if self.file.stream[p].deletes.is_some() {
                            return Err(self.invalid(
                                key("parent"),
                                format!("`{parent}` is a deletions feed"),
                            ));
                        }
                    }
                    (Some(_), _) => {
                        return Err(self.invalid(
                            key("parent"),
                            format!("`{parent}` must come before this stream in the file"),
                        ))
                    }
                    (None, _) => {
                        return Err(self.invalid(
                            key("parent"),
                            format!("no stream named `{parent}` in this file"),
                        ))
                    }
                }
            }
            if s.deleted_when.is_some() && s.cursor_field.is_none() {
                return Err(self.invalid(
                    key("deleted_when"),
                    "needs a `cursor_field` (the version compared with later copies)",
                ));
            }
            if let Some(step) = s.window.step {
                if step.0 <= s.window.overlap.0 {
                    return Err(self.invalid(
                        key("window.step"),
                        "must be longer than window.overlap (each slice must move forward)",
                    ));
                }
            }
            s.pagination
                .check()
                .map_err(|(k, message)| self.invalid(key(&k), message))?;
            if s.pagination.kind == PaginationKind::Keyset
                && matches!(s.primary_key, PrimaryKey::Composite(_))
            {
                return Err(self.invalid(
                    key("pagination.kind"),
                    "keyset pagination needs a single-path primary_key (its tie-breaker)",
                ));
            }
            if s.pagination.kind == PaginationKind::Keyset && s.cursor_field.is_none() {
                return Err(self.invalid(
                    key("cursor_field"),
                    "keyset pagination needs a `cursor_field` (with `primary_key`, the position \
                     sent back)",
                ));
            }
            if s.pagination.cursor_in == Some(CursorIn::Body) && s.method != Method::Post {
                return Err(self.invalid(
                    key("pagination.cursor_in"),
                    "a cursor in the body needs `method = \"post\"`",
                ));
            }
        }
        Ok(())
    }

    /// Things that work but probably not as meant: `(key, message)`.
    pub fn warnings(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for s in &self.file.stream {
            let incremental = s.window.start_param.is_some() || s.window.end_param.is_some();
            if incremental
                && matches!(
                    s.pagination.kind,
                    PaginationKind::PageNumber | PaginationKind::Offset
                )
            {
                out.push((
                    format!("stream.{}.pagination.kind", s.name),
                    "page-number and offset pagination skip or repeat records while the data \
                     changes during a run (a record updated out of the window shifts every later \
                     page); prefer cursor, next_url, link_header or keyset pagination for an \
                     incremental stream"
                        .to_string(),
                ));
            }
            if s.cursor_field.is_some() && !incremental && s.deletes.is_none() {
                out.push((
                    format!("stream.{}.window", s.name),
                    "the stream has a cursor_field but no window parameters: every run reads \
                     everything (a full refresh)"
                        .to_string(),
                ));
            }
        }
        out
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The parsed file.
    pub fn file(&self) -> &File {
        &self.file
    }

    /// The sync's name.
    pub fn name(&self) -> &str {
        &self.file.sync.name
    }

    /// Retention of finished runs' journals.
    pub fn keep(&self) -> Duration {
        self.file.sync.keep.0
    }

    /// How long the audit index keeps what it noted (zero: no index).
    pub fn audit_keep(&self) -> Duration {
        self.file.sync.audit_keep.0
    }

    /// The engine's retry policy from `[source]`.
    pub fn retry_policy(&self) -> RetryPolicy {
        let source = &self.file.source;
        RetryPolicy {
            max_attempts: source.max_attempts,
            base: source.backoff.base.0,
            cap: source.backoff.cap.0,
            max_wait: source.max_wait.0,
        }
    }

    /// `source.ca_file`, relative to the workflow file.
    pub fn ca_file(&self) -> Option<PathBuf> {
        self.file.source.ca_file.as_deref().map(|f| self.beside(f))
    }

    /// `destination.ca_file`, relative to the workflow file.
    pub fn destination_ca_file(&self) -> Option<PathBuf> {
        self.file
            .destination
            .ca_file
            .as_deref()
            .map(|f| self.beside(f))
    }

    /// `file` relative to the workflow file's directory (unless absolute).
    fn beside(&self, file: &Path) -> PathBuf {
        match self.path.parent() {
            Some(dir) if file.is_relative() => dir.join(file),
            _ => file.to_path_buf(),
        }
    }

    /// The streams, in file order.
    pub fn streams(&self) -> &[StreamSection] {
        &self.file.stream
    }

    /// The stream called `name`.
    pub fn stream(&self, name: &str) -> Result<&StreamSection, Error> {
        self.file
            .stream
            .iter()
            .find(|s| s.name == name)
            .ok_or_else(|| Error::UnknownStream {
                path: self.path.clone(),
                name: name.to_string(),
                known: self
                    .file
                    .stream
                    .iter()
                    .map(|s| s.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            })
    }

    /// The destination database path, resolved against the workflow file's directory.
    pub fn destination_path(&self) -> PathBuf {
        let base = self.path.parent().unwrap_or(Path::new("."));
        base.join(self.file.destination.path.as_deref().unwrap_or_default())
    }

    /// The canonical key/values of everything that decides which records `stream`'s runs
    /// read and where they go, sorted by key. Operational knobs (retention, timeouts,
    /// retries, rate limits, auth, response rules, declared columns) are left out: changing
    /// them never blocks a resume.
    pub fn fingerprint(&self, stream: &StreamSection) -> Vec<(String, String)> {
        let source = &self.file.source;
        let mut value = serde_json::json!({
            "sync": { "name": self.file.sync.name },
            "source": { "kind": source.kind, "base_url": source.base_url },
            "stream": stream,
            "destination": {
                "kind": self.file.destination.kind,
                "path": self.file.destination.path,
                "url": self.file.destination.url,
                "schema": self.file.destination.schema,
            },
        });
        if let Some(stream) = value.get_mut("stream").and_then(|s| s.as_object_mut()) {
            stream.remove("on_response");
            stream.remove("columns");
            stream.remove("reconcile");
        }
        let mut out = Vec::new();
        flatten("", &value, &mut out);
        out.sort();
        out
    }

    /// The plan of a backfill of `stream` over `[from, to)`, under its own scope.
    pub fn backfill_plan(
        &self,
        stream: &StreamSection,
        from: Timestamp,
        to: Timestamp,
        fresh: bool,
    ) -> Plan {
        Plan {
            stream: backfill_scope(&stream.name, from, to),
            start: Some(from),
            until: Some(to),
            overlap: Duration::ZERO,
            ..self.plan(stream, fresh)
        }
    }

    /// The plan of a reconciliation's repair of `stream`: its own scope, a window that is
    /// only a label (the repair set is the source), never sliced.
    pub fn repair_plan(&self, stream: &StreamSection) -> Plan {
        Plan {
            stream: repair_scope(&stream.name),
            lag: Duration::ZERO,
            overlap: Duration::ZERO,
            start: None,
            until: None,
            step: None,
            ..self.plan(stream, false)
        }
    }

    /// The engine's plan for one stream's run.
    pub fn plan(&self, stream: &StreamSection, fresh: bool) -> Plan {
        let fingerprint = self.fingerprint(stream);
        let mut hasher = Sha256::new();
        for (k, v) in &fingerprint {
            hasher.update(k.as_bytes());
            hasher.update([0]);
            hasher.update(v.as_bytes());
            hasher.update([0]);
        }
        let digest: String = hasher
            .finalize()
            .iter()
            .take(16)
            .map(|b| format!("{b:02x}"))
            .collect();
        let start = stream.window.initial.as_deref().and_then(|s| {
            initial_start(s, Timestamp::from_system(std::time::SystemTime::now())).ok()
        });
        Plan {
            sync: self.file.sync.name.clone(),
            stream: stream.name.clone(),
            workflow_digest: digest,
            workflow_path: std::fs::canonicalize(&self.path)
                .unwrap_or_else(|_| self.path.clone())
                .display()
                .to_string(),
            fingerprint,
            lag: stream.window.lag.0,
            overlap: stream.window.overlap.0,
            start,
            until: None,
            step: stream.window.step.map(|s| s.0),
            fresh,
        }
    }
}

fn flatten(prefix: &str, value: &serde_json::Value, out: &mut Vec<(String, String)>) {
    match value {
        serde_json::Value::Object(map) => {
            for (k, v) in map {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&key, v, out);
            }
        }
        serde_json::Value::Null => {}
        other => out.push((prefix.to_string(), other.to_string())),
    }
}

/// Every string inside a JSON value.
fn json_strings(value: &serde_json::Value) -> Vec<String> {
    match value {
        serde_json::Value::String(s) => vec![s.clone()],
        serde_json::Value::Array(items) => items.iter().flat_map(json_strings).collect(),
        serde_json::Value::Object(map) => map.values().flat_map(json_strings).collect(),
        _ => Vec::new(),
    }
}

/// The checkpoint scope of a backfill of `stream` over `[from, to)`: its runs and
/// checkpoint are its own, so it never moves the stream's incremental checkpoint.
pub fn backfill_scope(stream: &str, from: Timestamp, to: Timestamp) -> String {
    format!("{stream}@backfill:{from}..{to}")
}

/// The checkpoint scope of a reconciliation's repair runs of `stream`.
pub fn repair_scope(stream: &str) -> String {
    format!("{stream}{REPAIR}")
}

const REPAIR: &str = "@repair";

/// Whether a checkpoint scope is a reconciliation's repair.
pub fn is_repair_scope(scope: &str) -> bool {
    scope.ends_with(REPAIR)
}

/// The stream of a checkpoint scope (a stream, a backfill, a repair or a dead-letter
/// retry of it), and the range if it is a backfill's.
pub fn parse_scope(scope: &str) -> (&str, Option<(Timestamp, Timestamp)>) {
    let Some((stream, range)) = scope.split_once("@backfill:") else {
        return (
            scope.split_once('@').map_or(scope, |(stream, _)| stream),
            None,
        );
    };
    let parse = |t: &str| {
        humantime::parse_rfc3339_weak(t)
            .ok()
            .map(Timestamp::from_system)
    };
    let bounds = range
        .split_once("..")
        .and_then(|(from, to)| Some((parse(from)?, parse(to)?)));
    (stream, bounds)
}

/// The start of a first window: an RFC 3339 time, or an age (`30d`) before `now`.
pub fn initial_start(text: &str, now: Timestamp) -> Result<Timestamp, String> {
    if let Ok(t) = humantime::parse_rfc3339_weak(text) {
        return Ok(Timestamp::from_system(t));
    }
    humantime::parse_duration(text)
        .map(|age| now.saturating_sub(age))
        .map_err(|_| format!("`{text}` is neither an RFC 3339 time nor an age such as \"30d\""))
}

/// Replaces `${VAR}` with the environment variable `VAR`; a missing variable is an error
/// naming it (its value is never printed).
pub fn expand_env(text: &str) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find('}') else {
            return Err(format!("unclosed `${{` in `{text}`"));
        };
        let name = &after[..end];
        let value =
            std::env::var(name).map_err(|_| format!("environment variable {name} is not set"))?;
        out.push_str(&value);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[sync]
name = "shop"

[source]
kind = "http"
base_url = "http://127.0.0.1:1"

[[stream]]
name = "orders"
path = "/orders"
records = "data"
primary_key = "id"
cursor_field = "updated_at"
pagination = { kind = "cursor", cursor_path = "next_cursor", cursor_param = "cursor" }

[destination]
kind = "sqlite"
path = "shop.db"
"#;

    #[test]
    fn unknown_key_is_reported_with_line_and_column() {
        let text = GOOD.replace("records = \"data\"", "recrods = \"data\"");
        let err = Workflow::parse(Path::new("w.toml"), &text)
            .map(|_| ())
            .unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.starts_with("w.toml:12:1: stream[0].recrods: unknown field `recrods`"),
            "{msg}"
        );
    }

    #[test]
    fn wrong_type_and_bad_duration_are_reported() {
        let text = GOOD.replace("kind = \"http\"", "kind = \"http\"\ntimeout = \"soon\"");
        let msg = Workflow::parse(Path::new("w.toml"), &text)
            .map(|_| ())
            .unwrap_err()
            .to_string();
        assert!(
            msg.starts_with("w.toml:7:11: source.timeout: ")
                && msg.contains("`soon` is not a duration"),
            "{msg}"
        );
        let text = GOOD.replace("path = \"/orders\"", "path = 3");
        let msg = Workflow::parse(Path::new("w.toml"), &text)
            .map(|_| ())
            .unwrap_err()
            .to_string();
        assert!(
            msg.starts_with("w.toml:11:8: stream[0].path: ") && msg.contains("expected a string"),
            "{msg}"
        );
    }

    fn error(text: &str) -> String {
        Workflow::parse(Path::new("w.toml"), text)
            .map(|_| ())
            .map_err(|e| e.to_string())
            .err()
            .unwrap_or_default()
    }

    #[test]
    fn keys_inside_inline_tables_and_later_tables_are_named() {
        let text = GOOD.replace("cursor_param = \"cursor\"", "cursor_parm = \"cursor\"");
        let msg = error(&text);
        assert!(
            msg.starts_with("w.toml:15:62: stream[0].pagination.cursor_parm: unknown field"),
            "{msg}"
        );
        let two = format!("{GOOD}\n[[stream]]\nname = \"b\"\npath = 7\n");
        let msg = error(&two.replace("[destination]\nkind = \"sqlite\"\npath = \"shop.db\"\n", ""));
        assert!(msg.contains("stream[1].path: "), "{msg}");
    }

    #[test]
    fn each_pagination_style_checks_its_own_keys() {
        let keyset = GOOD.replace(
            "{ kind = \"cursor\", cursor_path = \"next_cursor\", cursor_param = \"cursor\" }",
            "{ kind = \"keyset\", id_param = \"since_id\" }",
        );
        assert_eq!(
            error(&keyset),
            "w.toml:15:1: stream.orders.pagination.since_param: required with kind = \"keyset\""
        );
        let stray = GOOD.replace(
            "cursor_param = \"cursor\"",
            "cursor_param = \"c\", page_param = \"p\"",
        );
        assert_eq!(
            error(&stray),
            "w.toml:15:82: stream.orders.pagination.page_param: does not apply to kind = \"cursor\""
        );
        let no_field = keyset
            .replace("id_param", "since_param")
            .replace("cursor_field = \"updated_at\"\n", "");
        assert!(error(&no_field).contains("stream.orders.cursor_field: keyset pagination needs"));
    }

    #[test]
    fn warns_about_offset_pages_on_an_incremental_stream() -> Result<(), Error> {
        let text = GOOD
            .replace(
                "{ kind = \"cursor\", cursor_path = \"next_cursor\", cursor_param = \"cursor\" }",
                "{ kind = \"offset\", offset_param = \"offset\" }\nwindow = { start_param = \"since\" }",
            );
        let w = Workflow::parse(Path::new("w.toml"), &text)?;
        let warnings = w.warnings();
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert_eq!(warnings[0].0, "stream.orders.pagination.kind");
        assert!(warnings[0].1.contains("skip or repeat records"));
        Ok(())
    }

    #[test]
    fn backfill_scopes_round_trip() {
        let scope = backfill_scope("orders", Timestamp(1_000), Timestamp(2_000));
        assert_eq!(
            scope,
            "orders@backfill:1970-01-01T00:00:01.000Z..1970-01-01T00:00:02.000Z"
        );
        assert_eq!(
            parse_scope(&scope),
            ("orders", Some((Timestamp(1_000), Timestamp(2_000))))
        );
        assert_eq!(parse_scope("orders"), ("orders", None));
        assert_eq!(parse_scope(&repair_scope("orders")), ("orders", None));
        assert!(is_repair_scope(&repair_scope("orders")));
        assert_eq!(parse_scope("orders@dlq-retry"), ("orders", None));
    }

    #[test]
    fn initial_is_a_time_or_an_age() {
        let now = Timestamp(1_000_000_000_000);
        assert_eq!(initial_start("30s", now), Ok(Timestamp(999_999_970_000)));
        assert_eq!(
            initial_start("2001-09-09T01:46:40Z", now),
            Ok(Timestamp(1_000_000_000_000))
        );
        assert!(initial_start("last tuesday", now).is_err());
    }

    #[test]
    fn semantic_errors_name_the_key() {
        let text = GOOD.replace("primary_key = \"id\"", "primary_key = \"\"");
        let msg = Workflow::parse(Path::new("w.toml"), &text)
            .map(|_| ())
            .unwrap_err()
            .to_string();
        assert_eq!(
            msg,
            "w.toml:13:1: stream.orders.primary_key: every stream needs a primary key"
        );
    }

    #[test]
    fn digest_ignores_formatting_and_names_changes() -> Result<(), Error> {
        let a = Workflow::parse(Path::new("w.toml"), GOOD)?;
        let b = Workflow::parse(Path::new("w.toml"), &format!("# comment\n{GOOD}"))?;
        let c = Workflow::parse(Path::new("w.toml"), &GOOD.replace("\"id\"", "\"order_id\""))?;
        let plan = |w: &Workflow| w.plan(&w.streams()[0], false);
        assert_eq!(plan(&a).workflow_digest, plan(&b).workflow_digest);
        assert_ne!(plan(&a).workflow_digest, plan(&c).workflow_digest);
        assert!(plan(&a)
            .fingerprint
            .contains(&("stream.primary_key".into(), "\"id\"".into())));
        Ok(())
    }

    #[test]
    fn operational_knobs_do_not_change_the_digest() -> Result<(), Error> {
        let a = Workflow::parse(Path::new("w.toml"), GOOD)?;
        let tuned = GOOD.replace(
            "kind = \"http\"",
            "kind = \"http\"\ntimeout = \"5s\"\nmax_attempts = 9\nrate_limit = { requests = 2, per = \"1s\" }\n\
             auth = { kind = \"bearer\", token = { env = \"T\" } }\n\
             on_response = [{ status = 400, action = \"retry\" }]",
        );
        let tuned = tuned.replace(
            "cursor_field = \"updated_at\"",
            "cursor_field = \"updated_at\"\non_response = [{ status = 404, action = \"ignore\" }]",
        );
        let b = Workflow::parse(
            Path::new("w.toml"),
            &tuned.replace("name = \"shop\"", "name = \"shop\"\nkeep = \"1d\""),
        )?;
        assert_eq!(
            a.plan(&a.streams()[0], false).workflow_digest,
            b.plan(&b.streams()[0], false).workflow_digest
        );
        Ok(())
    }

    #[test]
    fn resilience_settings_are_checked() {
        let with = |source: &str| {
            let text = GOOD.replace("kind = \"http\"", &format!("kind = \"http\"\n{source}"));
            Workflow::parse(Path::new("w.toml"), &text)
                .map(|_| ())
                .err()
                .map(|e| e.to_string())
        };
        assert_eq!(
            with("on_response = [{ action = \"retry\" }]").as_deref(),
            Some(
                "w.toml:7:1: source.on_response[0]: give at least one condition: `status`, \
                 `header` or `body_contains`"
            )
        );
        assert!(with("backoff = { base = \"5s\", cap = \"1s\" }")
            .is_some_and(|e| e.contains("source.backoff: needs 0 < base <= cap")));
        assert!(with("max_wait = \"1s\"")
            .is_some_and(|e| e.contains("source.max_wait: must be at least backoff.cap")));
        assert!(with("rate_limit = { requests = 0, per = \"1s\" }")
            .is_some_and(|e| e.contains("source.rate_limit: needs requests >= 1")));
        assert!(
            with("auth = { kind = \"bearer\", token = { env = \"T\" }, extra = 1 }")
                .is_some_and(|e| e.contains("unknown field `extra`")),
            "{:?}",
            with("auth = { kind = \"bearer\", token = { env = \"T\" }, extra = 1 }")
        );
        assert!(with("auth = { kind = \"magic\" }").is_some_and(|e| e.contains("magic")));
        assert!(with(
            "auth = { kind = \"oauth2\", token_url = \"nope\", client_id = \"a\", \
             client_secret = { env = \"S\" } }"
        )
        .is_some_and(|e| e.contains("source.auth.token_url: `nope` is not a URL")));
        assert_eq!(
            with("auth = { kind = \"bearer\", token = { env = \"T\" } }\nrate_limit = { requests = 3, per = \"1s\", burst = 2 }"),
            None
        );
    }

    #[test]
    fn expands_environment_variables() {
        std::env::set_var("WAYMARK_TEST_HOST", "example.test");
        assert_eq!(
            expand_env("http://${WAYMARK_TEST_HOST}/x").as_deref(),
            Ok("http://example.test/x")
        );
        assert!(expand_env("${WAYMARK_TEST_MISSING_VAR}").is_err());
    }
}
