//! The `[destination]` table.

use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

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
