//! The `[source]` table: the API, its retries and timeouts, and pagination styles.

use std::path::PathBuf;
use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::http::{AuthSection, RateLimit, ResponseRule};
use super::span::Span;

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
    pub rate_limit: Option<RateLimit>,
    /// How requests authenticate; secrets come from environment variables.
    pub auth: Option<AuthSection>,
    /// Rules deciding what a response means, before the defaults.
    #[serde(default)]
    pub on_response: Vec<ResponseRule>,
    /// The largest response body read, in bytes (default 64 MiB): a larger declared
    /// `Content-Length` is refused before reading, a body that grows past it is cut off;
    /// either fails the run (retrying would fetch the same page).
    #[serde(default = "default_max_page_bytes")]
    #[schemars(range(min = 1024))]
    pub max_page_bytes: u64,
    /// The longest next-page cursor (token, URL) a run journals, in bytes (default 4096): a
    /// longer one fails the run instead of growing the journal with every page.
    #[serde(default = "default_max_cursor_bytes")]
    #[schemars(range(min = 64, max = 65536))]
    pub max_cursor_bytes: u32,
}

/// 64 MiB: far above a JSON page of a few thousand records, far below what exhausts a host.
fn default_max_page_bytes() -> u64 {
    64 << 20
}

/// 4 KiB: above real page tokens and next-page URLs (tens to hundreds of bytes; a URL has to
/// fit the 8 KiB request line servers accept), while the few copies of it each page journals
/// stay small values in the journal.
fn default_max_cursor_bytes() -> u32 {
    4096
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
    /// Any style: dotted path of a boolean "more pages follow" (false: this was the last
    /// page, whatever cursor it carries).
    pub has_more_path: Option<String>,
    /// Any style: dotted path of a boolean "this is the last page" (Zendesk's
    /// `end_of_stream`).
    pub end_path: Option<String>,
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
    /// Any style but `keyset`: the most records one query serves (HubSpot's search:
    /// 10,000). Before a page would pass it, the query starts again from the greatest
    /// `cursor_field` value read (the API must sort by it, ascending, and filter the
    /// window's start inclusively).
    #[schemars(range(min = 1))]
    pub max_records: Option<u64>,
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
            PaginationKind::Cursor => (
                &["cursor_path", "cursor_param"],
                &["cursor_in", "has_more_path", "end_path", "max_records"],
            ),
            PaginationKind::NextUrl => (
                &["next_url_path"],
                &["has_more_path", "end_path", "max_records"],
            ),
            PaginationKind::LinkHeader => (&[], &["has_more_path", "end_path", "max_records"]),
            PaginationKind::PageNumber => (
                &["page_param"],
                &[
                    "first_page",
                    "has_more_path",
                    "end_path",
                    "total_path",
                    "total_header",
                    "max_records",
                ],
            ),
            PaginationKind::Offset => (
                &["offset_param"],
                &[
                    "has_more_path",
                    "end_path",
                    "total_path",
                    "total_header",
                    "max_records",
                ],
            ),
            PaginationKind::Keyset => {
                (&["since_param"], &["id_param", "has_more_path", "end_path"])
            }
        }
    }

    /// Every key this style takes besides `kind`: the required ones, the optional ones,
    /// then `limit_param`.
    pub(super) fn takes(kind: PaginationKind) -> Vec<&'static str> {
        let (required, optional) = Self::keys(kind);
        let mut keys = required.to_vec();
        keys.extend_from_slice(optional);
        keys.push("limit_param");
        keys
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
            ("end_path", self.end_path.is_some()),
            ("total_path", self.total_path.is_some()),
            ("total_header", self.total_header.is_some()),
            ("since_param", self.since_param.is_some()),
            ("id_param", self.id_param.is_some()),
            ("max_records", self.max_records.is_some()),
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
