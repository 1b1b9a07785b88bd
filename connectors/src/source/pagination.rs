//! The six pagination styles behind the engine's opaque cursor string: the API's token
//! (`cursor`), the next page's URL (`next_url`, `link_header`), a page number, an offset,
//! or the last `(cursor_field, primary_key)` seen as a JSON pair (`keyset`); and the stop
//! rules of page-number and offset pagination.

use reqwest::header::HeaderMap;
use serde_json::Value;

use waymark_engine::source::{self, PageRequest};

use super::error::Error;
use super::page::{fatal, Document};
use crate::config::{CursorIn, Pagination, PaginationKind, StreamSection};
use crate::http::excerpt::excerpt;
use crate::record::{compare_versions, lookup, scalar};

/// When page-number and offset pagination stop, besides an empty or short page.
#[derive(Clone, Debug, Default)]
pub(super) struct StopRules {
    pub(super) has_more_path: Option<String>,
    pub(super) end_path: Option<String>,
    pub(super) total_path: Option<String>,
    pub(super) total_header: Option<String>,
}

/// The resolved pagination style.
#[derive(Clone, Debug)]
pub(super) enum Style {
    Cursor {
        path: String,
        param: String,
        carrier: CursorIn,
    },
    NextUrl {
        path: String,
    },
    LinkHeader,
    PageNumber {
        param: String,
        first: u64,
    },
    Offset {
        param: String,
    },
    Keyset {
        since: String,
        id: Option<String>,
        cursor_field: String,
    },
}

impl Style {
    pub(super) fn new(stream: &StreamSection) -> Result<Style, Error> {
        let p: &Pagination = &stream.pagination;
        let need = |v: &Option<String>, key: &str| {
            v.clone().ok_or_else(|| Error::Pagination {
                stream: stream.name.clone(),
                message: format!("`{key}` is required"),
            })
        };
        Ok(match p.kind {
            PaginationKind::Cursor => Style::Cursor {
                path: need(&p.cursor_path, "cursor_path")?,
                param: need(&p.cursor_param, "cursor_param")?,
                carrier: p.cursor_in.unwrap_or_default(),
            },
            PaginationKind::NextUrl => Style::NextUrl {
                path: need(&p.next_url_path, "next_url_path")?,
            },
            PaginationKind::LinkHeader => Style::LinkHeader,
            PaginationKind::PageNumber => Style::PageNumber {
                param: need(&p.page_param, "page_param")?,
                first: p.first_page.unwrap_or(1),
            },
            PaginationKind::Offset => Style::Offset {
                param: need(&p.offset_param, "offset_param")?,
            },
            PaginationKind::Keyset => Style::Keyset {
                since: need(&p.since_param, "since_param")?,
                id: p.id_param.clone(),
                cursor_field: need(&stream.cursor_field, "cursor_field")?,
            },
        })
    }
}

/// The position a keyset cursor holds: the last `cursor_field` value exactly as the API
/// wrote it, and the last primary key.
pub(super) type Keyset = (String, Value);

pub(super) fn keyset(cursor: &str) -> Result<Keyset, source::Error> {
    serde_json::from_str(cursor)
        .map_err(|e| fatal(format!("journaled keyset cursor unreadable: {e}")))
}

/// The token at `path`: a non-empty string, or a number; nothing there, `null` or `""`:
/// this was the last page. Any other type is an error: taking an object for "no more
/// pages" would end a run early and report it complete.
pub(super) fn token(value: Option<Value>, path: &str) -> Result<Option<String>, source::Error> {
    let kind = match value {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::String(s)) => return Ok(Some(s).filter(|s| !s.is_empty())),
        Some(Value::Number(n)) => return Ok(Some(n.to_string())),
        Some(Value::Bool(b)) => format!("the boolean {b}"),
        Some(Value::Array(items)) => format!("an array ({} items)", items.len()),
        Some(Value::Object(map)) => format!("an object (keys: {})", keys(&map)),
    };
    Err(fatal(format!(
        "the next-page cursor at `{path}` is {kind}, not a string or a number; stopping \
         rather than take it for the last page (check the pagination path)"
    )))
}

/// An object's first keys, for messages (never its values: they may be anything).
fn keys(map: &serde_json::Map<String, Value>) -> String {
    let mut shown: Vec<String> = map.keys().take(5).map(|k| format!("`{k}`")).collect();
    if map.len() > 5 {
        shown.push("…".into());
    }
    match shown.is_empty() {
        true => "none".into(),
        false => shown.join(", "),
    }
}

/// The `rel="next"` target of RFC 8288 `Link` headers.
pub fn link_next(headers: &HeaderMap) -> Option<String> {
    for value in headers.get_all(reqwest::header::LINK) {
        let mut rest = value.to_str().ok()?;
        while let Some(open) = rest.find('<') {
            let close = open + rest[open..].find('>')?;
            let target = &rest[open + 1..close];
            let after = &rest[close + 1..];
            let end = after.find('<').unwrap_or(after.len());
            let is_next = after[..end].split(';').any(|param| {
                param
                    .trim()
                    .trim_end_matches(',')
                    .split_once('=')
                    .is_some_and(|(k, v)| {
                        k.trim().eq_ignore_ascii_case("rel")
                            && v.trim()
                                .trim_matches('"')
                                .split_whitespace()
                                .any(|r| r.eq_ignore_ascii_case("next"))
                    })
            });
            if is_next {
                return Some(target.to_string());
            }
            rest = &after[end..];
        }
    }
    None
}

impl StopRules {
    /// Whether more pages follow, by `has_more_path` or `end_path`; and the total, by
    /// `total_path` or `total_header`.
    fn signals(&self, doc: &Document<'_>, headers: &HeaderMap) -> (Option<bool>, Option<u64>) {
        let flag = |path: &Option<String>| {
            path.as_deref()
                .and_then(|p| doc.value(p))
                .and_then(|v| v.as_bool())
        };
        let more = match (flag(&self.has_more_path), flag(&self.end_path)) {
            (Some(false), _) | (_, Some(true)) => Some(false),
            (more, _) => more,
        };
        let total = self
            .total_path
            .as_deref()
            .and_then(|p| doc.value(p))
            .and_then(|v| v.as_u64().or_else(|| v.as_str()?.parse().ok()))
            .or_else(|| {
                let name = self.total_header.as_deref()?;
                headers.get(name)?.to_str().ok()?.trim().parse().ok()
            });
        (more, total)
    }
}

/// The key and the raw `cursor_field` text of a record.
fn position(record: &str, field: &str, stream: &StreamSection) -> Result<Keyset, source::Error> {
    let value: Value =
        serde_json::from_str(record).map_err(|e| fatal(format!("a record is not JSON: {e}")))?;
    let at = lookup(&value, field).and_then(scalar).ok_or_else(|| {
        fatal(format!(
            "a record has no `{field}` (the keyset cursor field): {}",
            excerpt(record.as_bytes())
        ))
    })?;
    let key_path = stream.primary_key.paths().join(".");
    let key = lookup(&value, &key_path)
        .filter(|k| scalar(k).is_some())
        .cloned()
        .ok_or_else(|| {
            fatal(format!(
                "a record has no primary key `{}`: {}",
                stream.primary_key,
                excerpt(record.as_bytes())
            ))
        })?;
    Ok((at, key))
}

impl Style {
    /// The next page's cursor (`None`: this was the last page). `records` are the page's
    /// records as received; keyset pagination drops those at or before its position.
    pub(super) fn next_cursor(
        &self,
        stop: &StopRules,
        stream: &StreamSection,
        request: &PageRequest<'_>,
        doc: &Document<'_>,
        headers: &HeaderMap,
        records: &mut Vec<String>,
    ) -> Result<Option<String>, source::Error> {
        // Counted before any record is dropped: a short page is the last one.
        let received = records.len();
        let size = stream.page_size as usize;
        let (more, total) = stop.signals(doc, headers);
        let last = received == 0 || more == Some(false);
        let unreadable =
            |what: &str, c: &str| fatal(format!("journaled {what} cursor `{c}` unreadable"));
        Ok(match self {
            _ if last => None,
            Style::Cursor { path, .. } | Style::NextUrl { path } => token(doc.value(path), path)?,
            Style::LinkHeader => link_next(headers),
            Style::PageNumber { first, .. } => {
                let current = match request.cursor {
                    Some(c) => c.parse::<u64>().map_err(|_| unreadable("page", c))?,
                    None => *first,
                };
                let seen = (current + 1).saturating_sub(*first) * size as u64;
                (received >= size && total.is_none_or(|t| seen < t))
                    .then(|| (current + 1).to_string())
            }
            Style::Offset { .. } => {
                let current = match request.cursor {
                    Some(c) => c.parse::<u64>().map_err(|_| unreadable("offset", c))?,
                    None => 0,
                };
                let next = current + received as u64;
                (received >= size && total.is_none_or(|t| next < t)).then(|| next.to_string())
            }
            Style::Keyset { cursor_field, .. } => {
                let next = match records.last() {
                    Some(r) if received >= size => {
                        let position = position(r, cursor_field, stream)?;
                        serde_json::to_string(&position).ok()
                    }
                    _ => None,
                };
                if let Some(cursor) = request.cursor {
                    // An inclusive `>=` filter sends the records sharing the position's
                    // value again; those up to its key were written already.
                    let (at, key) = keyset(cursor)?;
                    let key = scalar(&key).unwrap_or_default();
                    let mut seen = 0;
                    for r in records.iter() {
                        let (r_at, r_key) = position(r, cursor_field, stream)?;
                        let r_key = scalar(&r_key).unwrap_or_default();
                        if r_at != at || compare_versions(&r_key, &key).is_gt() {
                            break;
                        }
                        seen += 1;
                    }
                    records.drain(..seen);
                }
                next
            }
        })
    }
}
