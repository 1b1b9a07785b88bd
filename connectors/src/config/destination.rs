//! The `[destination]` table.

use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::body::{Body, Missing};
use super::http::{AuthSection, FromEnv, RateLimit};
use super::span::Span;

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
    pub url: Option<FromEnv>,
    /// PostgreSQL: the schema of the tables (default `public`).
    pub schema: Option<String>,
    /// PostgreSQL: a PEM file of extra trusted CA certificates for TLS (relative to the
    /// workflow file); the Mozilla roots are always trusted.
    pub ca_file: Option<PathBuf>,
    /// HTTP: the API's base URL (`${VAR}` allowed).
    pub base_url: Option<String>,
    /// HTTP: how requests authenticate (as in `[source.auth]`).
    pub auth: Option<AuthSection>,
    /// HTTP: a request budget for the destination API.
    pub rate_limit: Option<RateLimit>,
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
    /// `external_id`; a dotted path is a nested field: `properties.external_id`).
    pub external_id_field: Option<String>,
    /// HTTP: the body sent for each record, field by field (default: the record whole):
    /// `{ path = "…" }`, `{ template = "…{record.<path>}…" }`, `{ value = … }`,
    /// `{ link = "<stream>", by = "<path>" }`, or a table of fields (a nested object).
    pub body: Option<serde_json::Value>,
    /// HTTP: what a `body` field whose value the record lacks does: `omit` (default),
    /// `null`, or `dead_letter` the record.
    #[serde(default)]
    pub missing: Missing,
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

/// A stream's own `[stream.destination]` on an HTTP destination: each key given replaces
/// the `[destination]` one (an invoice stream writes to `/invoices`, an account stream to
/// `/accounts`).
#[derive(Clone, Debug, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StreamDestination {
    /// The search for a record by its source key, e.g. `"/invoices?external_id={key}"`.
    pub lookup: Option<String>,
    /// Where a new record is POSTed.
    pub create: Option<String>,
    /// Where a known record is PATCHed (`{id}`).
    pub update: Option<String>,
    /// Where a deleted record is DELETEd (`{id}`).
    pub delete: Option<String>,
    /// The destination's id in a create or lookup answer.
    pub id_path: Option<String>,
    /// The field of the sent body that carries the source key.
    pub external_id_field: Option<String>,
    /// The body sent for each record (as `[destination.body]`).
    pub body: Option<serde_json::Value>,
    /// What a `body` field whose value the record lacks does.
    pub missing: Option<Missing>,
}

/// What one stream's records become on an HTTP destination: its endpoints, the field that
/// carries the source key, and the body mapping — the stream's own keys over the
/// destination's.
#[derive(Clone, Debug)]
pub struct HttpTarget {
    /// The search by source key (`{key}`).
    pub lookup: String,
    /// Where a new record is POSTed.
    pub create: String,
    /// Where a known record is PATCHed (`{id}`).
    pub update: String,
    /// Where a deleted record is DELETEd (`{id}`); `None`: deletions are dead letters.
    pub delete: Option<String>,
    /// The destination's id in an answer.
    pub id_path: String,
    /// The body's field (dotted: nested) carrying the source key.
    pub external_id_field: String,
    /// `None`: the record is sent whole.
    pub body: Option<Body>,
    /// The default missing-field policy of `body`.
    pub missing: Missing,
}

impl HttpTarget {
    /// `stream`'s target on `destination`; the key path of a body mapping that does not
    /// read (`stream.<name>.destination.body.…`) and what is wrong with it.
    pub fn of(
        destination: &DestinationSection,
        stream_name: &str,
        own: Option<&StreamDestination>,
    ) -> Result<HttpTarget, (String, String)> {
        let own = own.cloned().unwrap_or_default();
        let pick = |mine: Option<String>, default: &Option<String>| mine.or(default.clone());
        let body = match (&own.body, &destination.body) {
            (Some(body), _) => Some(Body::parse(
                body,
                &format!("stream.{stream_name}.destination.body"),
            )?),
            (None, Some(body)) => Some(Body::parse(body, "destination.body")?),
            (None, None) => None,
        };
        Ok(HttpTarget {
            lookup: pick(own.lookup, &destination.lookup).unwrap_or_default(),
            create: pick(own.create, &destination.create).unwrap_or_default(),
            update: pick(own.update, &destination.update).unwrap_or_default(),
            delete: pick(own.delete, &destination.delete),
            id_path: pick(own.id_path, &destination.id_path).unwrap_or_else(|| "id".into()),
            external_id_field: pick(own.external_id_field, &destination.external_id_field)
                .unwrap_or_else(|| "external_id".into()),
            body,
            missing: own.missing.unwrap_or(destination.missing),
        })
    }
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

/// What is at a path, for a destination that needs a regular file (SQLite: it writes its
/// `-journal` and `-wal` files beside the database) or a directory (JSONL).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileKind {
    /// A regular file.
    Regular,
    /// A directory.
    Directory,
    /// A character device (`/dev/null`, `/dev/full`).
    CharDevice,
    /// A block device.
    BlockDevice,
    /// A named pipe.
    Fifo,
    /// A Unix socket.
    Socket,
}

impl FileKind {
    /// What is at `path` (following symbolic links); `None` when nothing is, or it cannot
    /// be looked at (opening it then says why).
    pub fn at(path: &Path) -> Option<Self> {
        let kind = std::fs::metadata(path).ok()?.file_type();
        Some(if kind.is_dir() {
            FileKind::Directory
        } else if kind.is_char_device() {
            FileKind::CharDevice
        } else if kind.is_block_device() {
            FileKind::BlockDevice
        } else if kind.is_fifo() {
            FileKind::Fifo
        } else if kind.is_socket() {
            FileKind::Socket
        } else {
            FileKind::Regular
        })
    }
}

impl std::fmt::Display for FileKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            FileKind::Regular => "a regular file",
            FileKind::Directory => "a directory",
            FileKind::CharDevice => "a character device",
            FileKind::BlockDevice => "a block device",
            FileKind::Fifo => "a FIFO",
            FileKind::Socket => "a socket",
        })
    }
}
