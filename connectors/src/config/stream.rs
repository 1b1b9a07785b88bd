//! A `[[stream]]` table: one endpoint's records, their key and version, its window,
//! declared columns and reconciliation.

use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use waymark_engine::Timestamp;

use super::destination::StreamDestination;
use super::filter::RecordFilter;
use super::http::ResponseRule;
use super::schedule::ScheduleSection;
use super::source::{Method, Pagination};
use super::span::Span;
use super::template::TimeFormat;
use super::webhook::WebhookSection;

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

/// `key_type`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum KeyType {
    /// Any scalar, kept as its text.
    #[default]
    Text,
    /// A whole number from −2⁶³ to 2⁶³ − 1, written without a plus sign or leading zeros.
    Integer,
}

impl KeyType {
    /// Whether `key` (a key's text) is a key of this type.
    pub fn admits(self, key: &str) -> bool {
        match self {
            KeyType::Text => true,
            KeyType::Integer => key.parse::<i64>().is_ok_and(|i| i.to_string() == key),
        }
    }
}

impl std::fmt::Display for PrimaryKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.paths().join(", "))
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
    pub initial: Option<String>,
    /// Where each later window starts: `watermark` (default: the previous run's watermark,
    /// Waymark's clock) or `max_seen` (the greatest `cursor_field` value written, the API's
    /// clock, if earlier); less `overlap` either way.
    #[serde(default)]
    pub start: WindowStart,
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
            start: WindowStart::default(),
            start_param: None,
            end_param: None,
            step: None,
            format: TimeFormat::default(),
        }
    }
}

/// Where a window after a completed one starts (`window.start`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum WindowStart {
    /// At the previous watermark.
    #[default]
    Watermark,
    /// At the greatest `cursor_field` value written, if earlier than the watermark.
    MaxSeen,
}

impl From<WindowStart> for waymark_engine::window::Start {
    fn from(start: WindowStart) -> Self {
        match start {
            WindowStart::Watermark => Self::Watermark,
            WindowStart::MaxSeen => Self::MaxSeen,
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
    /// What the key is: `text` (default: any scalar, kept as its text) or `integer` (a
    /// whole number written canonically; SQLite keeps it as the row id, with no index
    /// beside the rows; a record whose key is not one is dead-lettered).
    #[serde(default)]
    pub key_type: KeyType,
    /// Dotted path of the version (e.g. `updated_at`): an older version never overwrites a
    /// newer one.
    pub cursor_field: Option<String>,
    /// Records per page requested (default 100).
    #[serde(default = "default_page_size")]
    pub page_size: u32,
    /// What a page of more than twice `page_size` records does, when
    /// `pagination.limit_param` asked for `page_size`: `warn` (default, once a run) or
    /// `fail` the run.
    #[serde(default)]
    pub oversized_pages: OversizedPages,
    /// How pages follow each other.
    pub pagination: Pagination,
    /// The incremental window.
    #[serde(default)]
    pub window: WindowSection,
    /// Read this many `window.step` partitions of the window at once (default 1: one
    /// after the other): for slow APIs, where a run waits on each answer. One run, one
    /// writer; the cursor holds every open partition's position.
    #[schemars(range(min = 1, max = 64))]
    pub concurrency: Option<u32>,
    /// Conditional requests: send `If-None-Match` with the ETag a completed run got for
    /// the same request; a `304 Not Modified` is that page again, whose records were
    /// written then, so it is skipped and its next page followed (GitHub does not count
    /// 304s against the rate limit).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub conditional: bool,
    /// Rules deciding what a response means, checked before the source's.
    #[serde(default)]
    pub on_response: Vec<ResponseRule>,
    /// Typed destination columns filled from record paths, beside the raw record; a new
    /// one is added to an existing table.
    #[serde(default)]
    pub columns: std::collections::BTreeMap<String, ColumnSpec>,
    /// Makes this stream a deletions feed of the named stream: each record (its
    /// `primary_key`, and its `cursor_field` as the deletion time) marks that stream's
    /// record deleted, unless the stored record is newer than the deletion.
    pub deletes: Option<String>,
    /// Compares this stream's source and destination when due (`waymark run` performs it
    /// after the stream's run): `{ every = "7d", mode = "report" }`.
    pub reconcile: Option<ReconcileSection>,
    /// When `waymark serve` runs this stream (default: `[sync]`'s schedule; with neither,
    /// serve does not run it): `{ every = "15m", jitter = "1m" }` or
    /// `{ cron = "0 2 * * *", timezone = "Europe/Berlin" }`.
    pub schedule: Option<ScheduleSection>,
    /// Change events the API pushes to `waymark serve`, applied beside the polling:
    /// `{ scheme = "standard", secrets = [{ env = "SHOP_WEBHOOK_SECRET" }] }`.
    pub webhook: Option<WebhookSection>,
    /// On an HTTP destination, this stream's own endpoints and body mapping (each key
    /// replaces `[destination]`'s): `lookup`, `create`, `update`, `delete`, `id_path`,
    /// `external_id_field`, `body`, `missing`.
    pub destination: Option<StreamDestination>,
    /// What a change in the records' shape (a field new, gone, or of another type) does:
    /// `evolve` (default: noted, and the shape follows), `freeze` (noted; records with a
    /// field or type the shape does not have are dead-lettered), `fail` (the run stops
    /// before writing the page).
    #[serde(default)]
    pub schema_policy: SchemaPolicy,
}

/// `schema_policy`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum SchemaPolicy {
    /// Note the change; the shape takes it in.
    #[default]
    Evolve,
    /// Note the change; the shape stays; records that do not fit it are dead-lettered.
    Freeze,
    /// Note the change and stop the run before the page is written.
    Fail,
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

/// What a page far larger than the `page_size` asked for does (an API ignoring the limit
/// parameter, or a misnamed one).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum OversizedPages {
    /// Log a warning, once a run, and keep the page.
    #[default]
    Warn,
    /// Fail the run, naming the page.
    Fail,
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

/// A column's type.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ColumnType {
    /// Text (numbers and booleans as written; objects and arrays as JSON).
    Text,
    /// A 64-bit integer (also from a string of digits).
    Integer,
    /// A floating-point number (also from a numeric string).
    Real,
    /// `true`/`false` (also `"true"`, `"false"`, `0`, `1`).
    Boolean,
    /// An instant: RFC 3339 text, or Unix seconds/milliseconds; stored in UTC.
    Timestamp,
    /// Any JSON value.
    Json,
}

impl StreamSection {
    /// Whether requests carry the window's `bound` (`"start"` or `"end"`): its parameter,
    /// or `{window.<bound>}` in the path, a parameter, a header or the body.
    pub fn sends(&self, bound: &str) -> bool {
        let param = match bound {
            "start" => &self.window.start_param,
            _ => &self.window.end_param,
        };
        let placeholder = format!("{{window.{bound}");
        param.is_some()
            || [&self.path]
                .into_iter()
                .chain(self.params.values())
                .chain(self.headers.values())
                .any(|t| t.contains(&placeholder))
            || self
                .body
                .as_ref()
                .is_some_and(|b| b.to_string().contains(&placeholder))
    }

    /// Whether the API is asked for a time range (either bound): an incremental stream,
    /// which a backfill or a windowed reconciliation can narrow.
    pub fn sends_window(&self) -> bool {
        self.sends("start") || self.sends("end")
    }
}

impl ColumnType {
    /// The SQL type in PostgreSQL.
    pub fn postgres(self) -> &'static str {
        match self {
            ColumnType::Text => "text",
            ColumnType::Integer => "bigint",
            ColumnType::Real => "double precision",
            ColumnType::Boolean => "boolean",
            ColumnType::Timestamp => "timestamptz",
            ColumnType::Json => "jsonb",
        }
    }

    /// The SQL type in SQLite.
    pub fn sqlite(self) -> &'static str {
        match self {
            ColumnType::Text | ColumnType::Timestamp | ColumnType::Json => "TEXT",
            ColumnType::Integer => "INTEGER",
            ColumnType::Real => "REAL",
            ColumnType::Boolean => "INTEGER",
        }
    }
}

/// `columns = { status = "text", total = { path = "amount.total", type = "real" } }`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum ColumnSpec {
    /// The column's type; its path is its name.
    Type(ColumnType),
    /// A path and a type.
    Full {
        /// Dotted path of the value in a record.
        path: String,
        /// The column's type.
        #[serde(rename = "type")]
        kind: ColumnType,
    },
}

/// Names every table has; declared columns cannot take them.
pub const RESERVED: [&str; 6] = ["key", "version", "record", "run_id", "page", "deleted_at"];
