//! The HTTP source: one request per page, in any of six pagination styles, with loop
//! checks.
//!
//! The engine's cursor is an opaque string; each style decides what it holds: the API's
//! token (`cursor`), the next page's URL (`next_url`, `link_header`), a page number, an
//! offset, or the last `(cursor_field, primary_key)` seen as a JSON pair (`keyset`).

pub mod template;

use std::sync::Arc;

use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::Value;
use waymark_engine::source::{self, ErrorKind, Page, PageRequest, Source};

use crate::http::Api;

use crate::config::{
    expand_env, CursorIn, Method, Pagination, PaginationKind, StreamSection, Workflow,
};
use crate::http::rules::Rules;
use crate::record::{compare_versions, lookup, scalar};
use crate::sink::sqlite::ParentRecords;
use crate::source::template::{render, render_json, Context};

/// Why the source could not be built.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The records path is not a JSONPath.
    #[error("records: {0}")]
    Records(String),
    /// A child stream's parent records cannot be read.
    #[error("{0}")]
    Parent(String),
    /// The pagination settings are incomplete (validation normally catches this first).
    #[error("stream.{stream}.pagination: {message}")]
    Pagination {
        /// The stream.
        stream: String,
        /// What is missing.
        message: String,
    },
}

/// When page-number and offset pagination stop, besides an empty or short page.
#[derive(Clone, Debug, Default)]
struct StopRules {
    has_more_path: Option<String>,
    total_path: Option<String>,
    total_header: Option<String>,
}

/// The resolved pagination style.
#[derive(Clone, Debug)]
enum Style {
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
    fn new(stream: &StreamSection) -> Result<Style, Error> {
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
type Keyset = (String, Value);

/// A paginated JSON API for one stream.
pub struct HttpSource {
    api: Arc<Api>,
    rules: Rules,
    stream: StreamSection,
    style: Style,
    stop: StopRules,
    /// The parent of the previous page and a hash of its records, to notice the same page
    /// served twice.
    previous: Option<(Option<String>, (usize, usize, u32))>,
    /// A child stream's parent records.
    parents: Option<ParentRecords>,
    /// `records` when it is a JSONPath (`$.data[*]`).
    records_path: Option<serde_json_path::JsonPath>,
}

/// A child stream's position: the current parent and the cursor within its pages.
#[derive(Debug, Serialize, Deserialize)]
struct ChildCursor {
    parent: String,
    cursor: Option<String>,
}

impl HttpSource {
    /// The source of `stream` in `workflow`, sending its requests through `api`.
    pub fn new(workflow: &Workflow, stream: &StreamSection, api: Arc<Api>) -> Result<Self, Error> {
        let parents = match &stream.parent {
            Some(parent) => Some(
                ParentRecords::open(&workflow.destination_path(), parent)
                    .map_err(|e| Error::Parent(e.to_string()))?,
            ),
            None => None,
        };
        let p = &stream.pagination;
        let rules = Rules::new(
            &stream.name,
            &stream.on_response,
            &workflow.file().source.on_response,
        );
        Ok(HttpSource {
            api,
            rules,
            style: Style::new(stream)?,
            stop: StopRules {
                has_more_path: p.has_more_path.clone(),
                total_path: p.total_path.clone(),
                total_header: p.total_header.clone(),
            },
            records_path: match stream.records.starts_with('$') {
                true => Some(
                    serde_json_path::JsonPath::parse(&stream.records)
                        .map_err(|e| Error::Records(e.to_string()))?,
                ),
                false => None,
            },
            stream: stream.clone(),
            previous: None,
            parents,
        })
    }

    /// The URL of `path` under the base URL.
    fn join(&self, path: &str) -> Result<reqwest::Url, source::Error> {
        let joined = format!(
            "{}/{}",
            self.api.base_url().as_str().trim_end_matches('/'),
            path.trim_start_matches('/')
        );
        reqwest::Url::parse(&joined).map_err(|e| fatal(format!("`{joined}` is not a URL: {e}")))
    }

    /// The request for one page (of `parent`'s children, for a child stream).
    fn request(
        &self,
        request: &PageRequest<'_>,
        parent: Option<&Value>,
    ) -> Result<reqwest::Request, source::Error> {
        let ctx = Context {
            window: request.window,
            format: self.stream.window.format,
            cursor: request.cursor,
            parent,
        };
        let render = |t: &str| render(t, &ctx).map_err(fatal);
        let mut body = self
            .stream
            .body
            .as_ref()
            .map(|b| render_json(b, &ctx).map_err(fatal))
            .transpose()?;
        let mut headers = HeaderMap::new();
        for (name, value) in &self.stream.headers {
            let value = expand_env(&render(value)?).map_err(fatal)?;
            let name = HeaderName::from_bytes(name.as_bytes())
                .map_err(|e| fatal(format!("header `{name}`: {e}")))?;
            // The value may hold a secret: the error never shows it.
            let value = HeaderValue::from_str(&value)
                .map_err(|_| fatal(format!("header `{name}`: the value is not a valid header")))?;
            headers.insert(name, value);
        }
        let url = match (&self.style, request.cursor) {
            (Style::NextUrl { .. } | Style::LinkHeader, Some(next)) => self.same_origin(next)?,
            _ => {
                let mut params: Vec<(String, String)> = Vec::new();
                for (k, v) in &self.stream.params {
                    let v = render(v)?;
                    if !v.is_empty() {
                        params.push((k.clone(), v));
                    }
                }
                let mut set = |k: &str, v: String| {
                    params.retain(|(name, _)| name != k);
                    params.push((k.to_string(), v));
                };
                let p = &self.stream.pagination;
                if let Some(limit) = &p.limit_param {
                    set(limit, self.stream.page_size.to_string());
                }
                let w = &self.stream.window;
                if let (Some(param), Some(start)) = (&w.start_param, request.window.start) {
                    set(param, w.format.format(start));
                }
                if let Some(param) = &w.end_param {
                    set(param, w.format.format(request.window.end));
                }
                match (&self.style, request.cursor) {
                    (Style::Cursor { param, carrier, .. }, Some(cursor)) => match carrier {
                        CursorIn::Query => set(param, cursor.to_string()),
                        CursorIn::Header => {
                            let name = HeaderName::from_bytes(param.as_bytes())
                                .map_err(|e| fatal(format!("cursor header `{param}`: {e}")))?;
                            let value = HeaderValue::from_str(cursor)
                                .map_err(|e| fatal(format!("cursor is not a header value: {e}")))?;
                            headers.insert(name, value);
                        }
                        CursorIn::Body => {
                            let mut object = match body.take() {
                                Some(Value::Object(map)) => map,
                                _ => serde_json::Map::new(),
                            };
                            object.insert(param.clone(), Value::String(cursor.to_string()));
                            body = Some(Value::Object(object));
                        }
                    },
                    (Style::PageNumber { param, first }, cursor) => {
                        set(param, cursor.map_or(first.to_string(), str::to_string));
                    }
                    (Style::Offset { param }, cursor) => {
                        set(param, cursor.unwrap_or("0").to_string());
                    }
                    (Style::Keyset { since, id, .. }, Some(cursor)) => {
                        let (value, key) = keyset(cursor)?;
                        set(since, value);
                        if let Some(id) = id {
                            set(id, scalar(&key).unwrap_or_default());
                        }
                    }
                    _ => {}
                }
                let mut url = self.join(&render(&self.stream.path)?)?;
                if !params.is_empty() {
                    url.query_pairs_mut().extend_pairs(params);
                }
                url
            }
        };
        let client = self.api.client();
        let builder = match self.stream.method {
            Method::Get => client.get(url),
            Method::Post => client
                .post(url)
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(
                    body.unwrap_or(Value::Object(serde_json::Map::new()))
                        .to_string(),
                ),
        };
        builder
            .headers(headers)
            .build()
            .map_err(|e| fatal(format!("building the request: {}", e.without_url())))
    }

    /// A next-page URL, resolved against the stream's URL; another origin is refused so
    /// credentials never leave for a host the workflow did not name.
    fn same_origin(&self, next: &str) -> Result<reqwest::Url, source::Error> {
        let base = self.api.base_url();
        let url = base
            .join(next)
            .map_err(|e| fatal(format!("next URL `{next}` is not a URL: {e}")))?;
        if url.origin() != base.origin() {
            return Err(fatal(format!(
                "the API sent a next URL on another host ({}); refusing to follow it",
                url.origin().ascii_serialization()
            )));
        }
        Ok(url)
    }
}

fn keyset(cursor: &str) -> Result<Keyset, source::Error> {
    serde_json::from_str(cursor)
        .map_err(|e| fatal(format!("journaled keyset cursor unreadable: {e}")))
}

fn fatal(message: String) -> source::Error {
    source::Error::new(ErrorKind::Fatal, message)
}

/// The first 200 bytes of a body, on one line, for error messages.
pub(crate) fn excerpt(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(&body[..body.len().min(200)]);
    let text = text.replace(['\n', '\r'], " ");
    if body.len() > 200 {
        format!("{text}…")
    } else {
        text
    }
}

/// The raw JSON at a dotted path of a document, without parsing what it does not need.
fn raw_at<'a>(doc: &'a RawValue, path: &str) -> Result<Option<&'a RawValue>, serde_json::Error> {
    let mut current = doc;
    for part in path.split('.').filter(|p| !p.is_empty()) {
        let map: std::collections::HashMap<String, &RawValue> =
            match serde_json::from_str(current.get()) {
                Ok(map) => map,
                Err(_) => return Ok(None),
            };
        match map.get(part) {
            Some(v) => current = v,
            None => return Ok(None),
        }
    }
    Ok(Some(current))
}

/// The page body as a JSON document, without parsing what is not needed.
pub fn document(body: &[u8]) -> Result<&RawValue, source::Error> {
    serde_json::from_slice(body).map_err(|e| {
        source::Error::new(
            ErrorKind::Retry,
            format!("the page is not JSON ({e}); it starts: {}", excerpt(body)),
        )
    })
}

/// The records array at `path` (empty: the document is the array), each record's text as
/// the API sent it.
pub fn records_at<'a>(doc: &'a RawValue, path: &str) -> Result<Vec<&'a RawValue>, source::Error> {
    let array = raw_at(doc, path)
        .map_err(|e| fatal(e.to_string()))?
        .ok_or_else(|| {
            fatal(format!(
                "records path `{path}` is not in the page: {}",
                excerpt(doc.get().as_bytes())
            ))
        })?;
    serde_json::from_str(array.get()).map_err(|_| {
        fatal(format!(
            "records path `{path}` is not an array: {}",
            excerpt(array.get().as_bytes())
        ))
    })
}

/// The JSON value at a dotted path, if present.
fn value_at(doc: &RawValue, path: &str) -> Option<Value> {
    raw_at(doc, path)
        .ok()
        .flatten()
        .and_then(|raw| serde_json::from_str(raw.get()).ok())
}

/// A token: a non-empty string, or a number.
fn token(value: Value) -> Option<String> {
    match value {
        Value::String(s) if !s.is_empty() => Some(s),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
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

/// Applies the stream's record filter and field projection.
fn shape(records: Vec<String>, stream: &StreamSection) -> Result<Vec<String>, String> {
    let mut out = Vec::with_capacity(records.len());
    for text in records {
        let value: Value =
            serde_json::from_str(&text).map_err(|e| format!("a record is not JSON: {e}"))?;
        if let Some(filter) = &stream.filter {
            let found = lookup(&value, &filter.path).and_then(scalar);
            if !found.is_some_and(|v| filter.one_of.contains(&v)) {
                continue;
            }
        }
        let Some(fields) = &stream.fields else {
            out.push(text);
            continue;
        };
        let mut kept = Value::Object(serde_json::Map::new());
        for path in fields {
            if let Some(v) = lookup(&value, path) {
                let mut slot = &mut kept;
                let parts: Vec<&str> = path.split('.').collect();
                for (i, part) in parts.iter().enumerate() {
                    let Value::Object(map) = slot else { break };
                    slot = if i + 1 == parts.len() {
                        map.insert((*part).to_string(), v.clone());
                        break;
                    } else {
                        map.entry((*part).to_string())
                            .or_insert_with(|| Value::Object(serde_json::Map::new()))
                    };
                }
            }
        }
        out.push(kept.to_string());
    }
    Ok(out)
}

/// A cheap fingerprint of a page's records, to notice the same page served twice: their
/// number, their length and a CRC-32 of them (hardware-accelerated; a byte-wise hash of
/// every page was a visible share of a sync's CPU).
fn fingerprint(records: &[String]) -> (usize, usize, u32) {
    let mut crc = crc32fast::Hasher::new();
    let mut len = 0;
    for r in records {
        crc.update(r.as_bytes());
        crc.update(&[0]);
        len += r.len();
    }
    (records.len(), len, crc.finalize())
}

impl HttpSource {
    /// Whether more pages follow, by `has_more_path`; and the total, by `total_path` or
    /// `total_header`.
    fn stop_signals(&self, doc: &RawValue, headers: &HeaderMap) -> (Option<bool>, Option<u64>) {
        let more = self
            .stop
            .has_more_path
            .as_deref()
            .and_then(|p| value_at(doc, p))
            .and_then(|v| v.as_bool());
        let total = self
            .stop
            .total_path
            .as_deref()
            .and_then(|p| value_at(doc, p))
            .and_then(|v| v.as_u64().or_else(|| v.as_str()?.parse().ok()))
            .or_else(|| {
                let name = self.stop.total_header.as_deref()?;
                headers.get(name)?.to_str().ok()?.trim().parse().ok()
            });
        (more, total)
    }

    /// The key and the raw `cursor_field` text of a record.
    fn position(&self, record: &str, field: &str) -> Result<Keyset, source::Error> {
        let value: Value = serde_json::from_str(record)
            .map_err(|e| fatal(format!("a record is not JSON: {e}")))?;
        let at = lookup(&value, field).and_then(scalar).ok_or_else(|| {
            fatal(format!(
                "a record has no `{field}` (the keyset cursor field): {}",
                excerpt(record.as_bytes())
            ))
        })?;
        let key_path = self.stream.primary_key.paths().join(".");
        let key = lookup(&value, &key_path)
            .filter(|k| scalar(k).is_some())
            .cloned()
            .ok_or_else(|| {
                fatal(format!(
                    "a record has no primary key `{}`: {}",
                    self.stream.primary_key,
                    excerpt(record.as_bytes())
                ))
            })?;
        Ok((at, key))
    }

    /// The next page's cursor (`None`: this was the last page). `records` are the page's
    /// records as received; keyset pagination drops those at or before its position.
    fn next_cursor(
        &self,
        request: &PageRequest<'_>,
        doc: &RawValue,
        headers: &HeaderMap,
        records: &mut Vec<String>,
    ) -> Result<Option<String>, source::Error> {
        // Counted before any record is dropped: a short page is the last one.
        let received = records.len();
        let size = self.stream.page_size as usize;
        let (more, total) = self.stop_signals(doc, headers);
        let last = received == 0 || more == Some(false);
        let unreadable =
            |what: &str, c: &str| fatal(format!("journaled {what} cursor `{c}` unreadable"));
        Ok(match &self.style {
            _ if last => None,
            Style::Cursor { path, .. } => value_at(doc, path).and_then(token),
            Style::NextUrl { path } => value_at(doc, path).and_then(token),
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
                        let position = self.position(r, cursor_field)?;
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
                        let (r_at, r_key) = self.position(r, cursor_field)?;
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

impl HttpSource {
    /// One page of the stream (for a child stream: of `parent`'s children).
    async fn fetch_page(
        &mut self,
        request: PageRequest<'_>,
        parent: Option<(&str, &Value)>,
    ) -> Result<Page, source::Error> {
        let reply = self
            .api
            .send(&self.rules, || {
                self.request(&request, parent.map(|(_, record)| record))
            })
            .await?;
        let (what, headers, body) = match reply {
            Ok(accepted) => (accepted.what, accepted.headers, accepted.body),
            Err(ignored) => {
                self.previous = None;
                return Ok(Page {
                    ignored: Some(ignored),
                    ..Page::default()
                });
            }
        };
        let doc = document(&body)?;
        let mut records: Vec<String> = match &self.records_path {
            Some(path) => {
                let value: Value =
                    serde_json::from_str(doc.get()).map_err(|e| fatal(format!("{what}: {e}")))?;
                path.query(&value)
                    .all()
                    .into_iter()
                    .map(Value::to_string)
                    .collect()
            }
            None => records_at(doc, &self.stream.records)?
                .into_iter()
                .map(|r| r.get().to_string())
                .collect(),
        };
        let print = (
            parent.map(|(key, _)| key.to_string()),
            fingerprint(&records),
        );
        let repeated = !records.is_empty() && self.previous.as_ref() == Some(&print);
        self.previous = Some(print);
        let next_cursor = self.next_cursor(&request, doc, &headers, &mut records)?;
        if next_cursor.is_some() && next_cursor.as_deref() == request.cursor {
            return Err(fatal(format!(
                "{what}: the API returned the cursor it was sent (`{}`); stopping instead of \
                 looping{}",
                request.cursor.unwrap_or_default(),
                match self.style {
                    Style::Keyset { id: None, .. } => {
                        " (more records share one cursor_field value than fit on a page: set \
                         pagination.id_param, the API's tie-breaker filter, or a larger page_size)"
                    }
                    _ => "",
                }
            )));
        }
        if repeated {
            return Err(fatal(format!(
                "{what}: the API served the same records as the previous page; stopping \
                 instead of looping (check the pagination settings)"
            )));
        }
        if self.stream.filter.is_some() || self.stream.fields.is_some() {
            records = shape(records, &self.stream).map_err(|e| fatal(format!("{what}: {e}")))?;
        }
        let next_cursor = next_cursor.map(|c| self.journalable(c)).transpose()?;
        Ok(Page {
            records,
            next_cursor,
            ignored: None,
        })
    }

    /// A cursor fit for the journal: an API key in the query is taken out of a next-page
    /// URL (it is added to every request anyway); any other secret in it is an error.
    fn journalable(&self, cursor: String) -> Result<String, source::Error> {
        let cursor = match (self.api.key_param(), &self.style) {
            (Some(key), Style::NextUrl { .. } | Style::LinkHeader) => {
                match self.api.base_url().join(&cursor) {
                    Ok(mut url) => {
                        let kept: Vec<(String, String)> = url
                            .query_pairs()
                            .filter(|(k, _)| k != key)
                            .map(|(k, v)| (k.into_owned(), v.into_owned()))
                            .collect();
                        url.set_query(None);
                        if !kept.is_empty() {
                            url.query_pairs_mut().extend_pairs(kept);
                        }
                        url.to_string()
                    }
                    Err(_) => cursor,
                }
            }
            _ => cursor,
        };
        if self.api.secrets().reveals(&cursor) {
            return Err(fatal(
                "the API put a credential into the next-page cursor; refusing to journal it \
                 (with an API key, use `in = \"header\"` if the API allows it)"
                    .into(),
            ));
        }
        Ok(cursor)
    }

    /// One page of a child stream: the current parent's next page, then the next parent.
    async fn fetch_child(
        &mut self,
        parents: &ParentRecords,
        request: PageRequest<'_>,
    ) -> Result<Page, source::Error> {
        let parent_error = |e: waymark_engine::destination::Error| fatal(e.to_string());
        let position = match request.cursor {
            Some(c) => serde_json::from_str::<ChildCursor>(c)
                .map_err(|e| fatal(format!("journaled child cursor `{c}` unreadable: {e}")))?,
            None => match parents.after(None).map_err(parent_error)? {
                Some((parent, _)) => ChildCursor {
                    parent,
                    cursor: None,
                },
                None => return Ok(Page::default()),
            },
        };
        let mut page = match parents.get(&position.parent).map_err(parent_error)? {
            Some(record) => {
                let inner = PageRequest {
                    cursor: position.cursor.as_deref(),
                    ..request
                };
                self.fetch_page(inner, Some((&position.parent, &record)))
                    .await?
            }
            // Deleted since the run started: nothing to read under it.
            None => Page::default(),
        };
        let next = match page.next_cursor.take() {
            Some(inner) => Some(ChildCursor {
                parent: position.parent,
                cursor: Some(inner),
            }),
            None => parents
                .after(Some(&position.parent))
                .map_err(parent_error)?
                .map(|(parent, _)| ChildCursor {
                    parent,
                    cursor: None,
                }),
        };
        page.next_cursor = next
            .map(|c| serde_json::to_string(&c))
            .transpose()
            .map_err(|e| fatal(e.to_string()))?;
        Ok(page)
    }
}

impl Source for HttpSource {
    async fn fetch(&mut self, request: PageRequest<'_>) -> Result<Page, source::Error> {
        let parents = self.parents.take();
        let page = match &parents {
            Some(p) => self.fetch_child(p, request).await,
            None => self.fetch_page(request, None).await,
        };
        self.parents = parents;
        page.map_err(|mut e| {
            e.message = self.api.secrets().redact(&e.message);
            e
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_records_without_reserialising() -> Result<(), source::Error> {
        let body = br#"{"data":[{"id":1, "a":"x"},{"id":2}],"meta":{"next":"c2"}}"#;
        let doc = document(body)?;
        let records: Vec<&str> = records_at(doc, "data")?.iter().map(|r| r.get()).collect();
        assert_eq!(records, [r#"{"id":1, "a":"x"}"#, r#"{"id":2}"#]);
        assert_eq!(
            value_at(doc, "meta.next").and_then(token).as_deref(),
            Some("c2")
        );
        let bare = document(br#"[{"id":1}]"#)?;
        assert_eq!(records_at(bare, "")?.len(), 1);
        Ok(())
    }

    #[test]
    fn classifies_bad_pages_and_names_the_page() {
        let not_json = document(b"<html>oops").unwrap_err();
        assert!(
            not_json.kind == ErrorKind::Retry && not_json.message.contains("the page is not JSON"),
            "{not_json:?}"
        );
        let doc = document(br#"{"items":[]}"#).unwrap_or_else(|_| unreachable!());
        let missing = records_at(doc, "data").unwrap_err();
        assert!(
            missing.kind == ErrorKind::Fatal
                && missing
                    .message
                    .contains("records path `data` is not in the page"),
            "{missing:?}"
        );
    }

    #[test]
    fn filters_and_projects_records() -> Result<(), String> {
        let stream: StreamSection = toml::from_str(
            r#"
name = "s"
path = "/s"
primary_key = "id"
pagination = { kind = "link_header" }
filter = { path = "status", one_of = ["paid", "7"] }
fields = ["id", "customer.id", "missing"]
"#,
        )
        .map_err(|e| e.to_string())?;
        let records = vec![
            r#"{"id":1,"status":"paid","customer":{"id":5,"name":"x"},"big":[1,2]}"#.into(),
            r#"{"id":2,"status":"open"}"#.into(),
            r#"{"id":3,"status":7}"#.into(),
        ];
        assert_eq!(
            shape(records, &stream)?,
            [r#"{"customer":{"id":5},"id":1}"#, r#"{"id":3}"#]
        );
        Ok(())
    }

    #[test]
    fn finds_the_next_link_among_several() {
        let mut h = HeaderMap::new();
        h.append(
            reqwest::header::LINK,
            HeaderValue::from_static(
                r#"<https://a.test/x?page=1>; rel="first", <https://a.test/x?page=3&q=a,b>; rel="prev next""#,
            ),
        );
        assert_eq!(
            link_next(&h).as_deref(),
            Some("https://a.test/x?page=3&q=a,b")
        );
        let mut none = HeaderMap::new();
        none.append(
            reqwest::header::LINK,
            HeaderValue::from_static(r#"<https://a.test/x?page=1>; rel="prev""#),
        );
        assert_eq!(link_next(&none), None);
    }
}
