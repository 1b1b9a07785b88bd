//! The sandbox's HTTP surface.
//!
//! List endpoints (`/orders`, `/customers`, `/{resource}/deleted`,
//! `/customers/{id}/invoices`) sort by `(updated_at, id)` and accept:
//! - filters: `updated_since=T` (`>=`), `updated_after=T` (`>`), `updated_before=T` (`<`);
//!   `T` is RFC 3339, or unix seconds, or unix milliseconds; on the deletions feeds they
//!   filter `deleted_at`;
//! - a page size: `limit` or `per_page` (default 100);
//! - one pagination style: `cursor=` (opaque token from `next_cursor`; or an `X-Cursor`
//!   header), `page=` (1-based),
//!   `offset=`, or keyset `updated_since=T&since_id=I` (records after `(T, I)`); with none
//!   of them, the first page of cursor pagination.
//!
//! `POST /{resource}/search` takes the same parameters as a JSON body (over the query
//! string's).
//!
//! The body is `{"data": [...], "next_cursor", "next_url", "has_more"}` (plus `total` and
//! `page` for page and offset pagination, also as `X-Total-Count`), and a `Link: <…>;
//! rel="next"` header while more pages follow.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::atomic::Ordering as AtomicOrdering;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Json;

use super::filter::Filter;
use super::query::ListQuery;
use super::{error, BadRequest};
use crate::sandbox::data::{self, format_ms, Key, Kind};
use crate::sandbox::faults::Fault;
use crate::sandbox::{now_ms, read, Quirk, Sandbox};

/// The pagination style a request asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Style {
    Cursor(Option<Key>),
    Page(u64),
    Offset(u64),
    Keyset,
}

pub(super) fn encode_cursor((ms, id): Key) -> String {
    format!("c{ms:x}_{id:x}")
}

pub(super) fn decode_cursor(text: &str) -> Option<Key> {
    let (ms, id) = text.strip_prefix('c')?.split_once('_')?;
    Some((
        u64::from_str_radix(ms, 16).ok()?,
        u64::from_str_radix(id, 16).ok()?,
    ))
}

impl Style {
    pub(super) fn parse(q: &ListQuery) -> Result<Style, BadRequest> {
        let given = [
            q.cursor.is_some(),
            q.page.is_some(),
            q.offset.is_some(),
            q.since_id.is_some(),
        ];
        if given.iter().filter(|g| **g).count() > 1 {
            return Err(BadRequest(
                "use one of `cursor`, `page`, `offset`, `since_id`".into(),
            ));
        }
        Ok(match (&q.cursor, q.page, q.offset, q.since_id) {
            (Some(c), ..) => Style::Cursor(Some(
                decode_cursor(c).ok_or_else(|| BadRequest(format!("bad cursor `{c}`")))?,
            )),
            (_, Some(0), ..) => {
                return Err(BadRequest("`page` starts at 1".into()));
            }
            (_, Some(p), ..) => Style::Page(p),
            (_, _, Some(o), _) => Style::Offset(o),
            (.., Some(_)) => Style::Keyset,
            _ => Style::Cursor(None),
        })
    }
}

/// The records of one page, selected from a sorted set.
pub(super) struct Selected<V> {
    pub(super) items: Vec<(Key, V)>,
    pub(super) has_more: bool,
    pub(super) total: Option<usize>,
}

pub(super) fn select<V: Copy>(
    set: &BTreeMap<Key, V>,
    filter: &Filter,
    style: Style,
    limit: usize,
) -> Selected<V> {
    let from = (filter.scan_from, 0);
    let start = match style {
        Style::Cursor(Some(after)) if after >= from => Bound::Excluded(after),
        _ => Bound::Included(from),
    };
    let after = match style {
        Style::Cursor(c) => c,
        _ => None,
    };
    let matching = set
        .range((start, Bound::Unbounded))
        .map(|(k, v)| (*k, *v))
        .skip_while(|(k, _)| !filter.above_lower(*k))
        .filter(move |(k, _)| after.is_none_or(|a| *k > a))
        .take_while(|(k, _)| filter.below_upper(*k));
    let (skip, total) = match style {
        Style::Page(p) => (
            (p - 1).saturating_mul(limit as u64),
            Some(matching.clone().count()),
        ),
        Style::Offset(o) => (o, Some(matching.clone().count())),
        Style::Cursor(_) | Style::Keyset => (0, None),
    };
    let mut items: Vec<(Key, V)> = matching
        .skip(usize::try_from(skip).unwrap_or(usize::MAX))
        .take(limit + 1)
        .collect();
    let has_more = items.len() > limit;
    items.truncate(limit);
    Selected {
        items,
        has_more,
        total,
    }
}

/// The request's URL with `set` parameters replaced (and `drop` ones removed).
pub(super) fn next_url(
    headers: &HeaderMap,
    uri: &Uri,
    set: &[(&str, String)],
    drop: &[&str],
) -> String {
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("127.0.0.1");
    let mut pairs: Vec<String> = uri
        .query()
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .filter(|p| {
            let name = p.split('=').next().unwrap_or("");
            !set.iter().any(|(k, _)| *k == name) && !drop.contains(&name)
        })
        .map(str::to_string)
        .collect();
    pairs.extend(set.iter().map(|(k, v)| format!("{k}={v}")));
    format!("http://{host}{}?{}", uri.path(), pairs.join("&"))
}

/// Counts the request, checks the token, adds latency, and draws a fault: `Err` is the
/// response to send instead; `Ok(Some(..))` is a fault to apply to the body.
pub(super) async fn admit(s: &Sandbox, headers: &HeaderMap) -> Result<Option<Fault>, Response> {
    let n = s.requests.fetch_add(1, AtomicOrdering::Relaxed);
    let arrived = now_ms();
    if n == 0 {
        s.first_request_ms.store(arrived, AtomicOrdering::Relaxed);
    }
    s.last_request_ms
        .fetch_max(arrived, AtomicOrdering::Relaxed);
    if let Some(token) = &s.config.token {
        let expected = format!("Bearer {token}");
        if headers
            .get(header::AUTHORIZATION)
            .and_then(|h| h.to_str().ok())
            != Some(&expected)
        {
            return Err(error(
                StatusCode::UNAUTHORIZED,
                "missing or wrong bearer token",
            ));
        }
    }
    let faults = read(&s.faults).clone();
    if let Err(wait) = s.within_quota(faults.quota_per_second) {
        s.injected.count(Fault::TooManyRequests);
        s.over_quota.fetch_add(1, AtomicOrdering::Relaxed);
        // Whole seconds, rounded up (at least 1), as Retry-After is written.
        let seconds = wait.as_millis().div_ceil(1000).max(1);
        return Err(come_back(StatusCode::TOO_MANY_REQUESTS, seconds));
    }
    if faults.latency_ms > 0 {
        tokio::time::sleep(Duration::from_millis(faults.latency_ms)).await;
    }
    let Some(fault) = faults.draw(s.config.seed, n) else {
        return Ok(None);
    };
    s.injected.count(fault);
    let retry_after = u128::from(faults.retry_after_s);
    match fault {
        Fault::TooManyRequests => Err(come_back(StatusCode::TOO_MANY_REQUESTS, retry_after)),
        Fault::ServerError => Err(error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "injected server error",
        )),
        Fault::Unavailable => Err(come_back(StatusCode::SERVICE_UNAVAILABLE, retry_after)),
        Fault::Hang => {
            tokio::time::sleep(Duration::from_millis(faults.hang_ms)).await;
            Ok(None)
        }
        Fault::Reset | Fault::Malformed => Ok(Some(fault)),
    }
}

/// A 429 or 503 with `Retry-After: seconds`.
fn come_back(status: StatusCode, seconds: u128) -> Response {
    let message = match status {
        StatusCode::TOO_MANY_REQUESTS => "rate limit exceeded",
        _ => "service unavailable",
    };
    (
        status,
        [(header::RETRY_AFTER, seconds.to_string())],
        Json(serde_json::json!({ "error": message })),
    )
        .into_response()
}

/// A JSON body, damaged by `fault` if it is one that damages bodies.
pub(super) fn respond(fault: Option<Fault>, extra: HeaderMap, body: String) -> Response {
    let half = body.len() / 2;
    let half = (0..=half)
        .rev()
        .find(|i| body.is_char_boundary(*i))
        .unwrap_or(0);
    let body = match fault {
        Some(Fault::Malformed) => Body::from(body[..half].to_string()),
        Some(Fault::Reset) => {
            let chunks: [Result<Bytes, std::io::Error>; 2] = [
                Ok(Bytes::from(body[..half].to_string())),
                Err(std::io::Error::new(
                    std::io::ErrorKind::ConnectionReset,
                    "injected connection reset",
                )),
            ];
            Body::from_stream(futures_util::stream::iter(chunks))
        }
        _ => Body::from(body),
    };
    let mut response = (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body,
    )
        .into_response();
    response.headers_mut().extend(extra);
    response
}

/// Which set a list endpoint pages through.
#[derive(Clone, Copy)]
pub(super) enum Feed {
    Live(Kind),
    Deleted(Kind),
    Invoices(u64),
}

/// One page of any list endpoint in any pagination style, with the quirks asked for. (Long:
/// the sandbox serves every style from one place, so they stay comparable.)
/// `GET /{resource}/{id}`: one live record (404 when there is none), through the same
/// faults, quota and latency as the lists.
pub(super) async fn one(s: Arc<Sandbox>, kind: Kind, id: u64, headers: HeaderMap) -> Response {
    let fault = match admit(&s, &headers).await {
        Ok(f) => f,
        Err(response) => return response,
    };
    let mut body = String::with_capacity(512);
    {
        let data = read(&s.data);
        let resource = data.resource(kind);
        match resource.key_of(id) {
            Some(key) if resource.live.contains_key(&key) => resource.render(
                key,
                resource.live.get(&key).copied().unwrap_or(0),
                &mut body,
            ),
            _ => return error(StatusCode::NOT_FOUND, format!("no record {id}")),
        }
    }
    respond(fault, HeaderMap::new(), body)
}

pub(super) async fn list(
    s: Arc<Sandbox>,
    mut q: ListQuery,
    uri: Uri,
    headers: HeaderMap,
    feed: Feed,
) -> Response {
    let fault = match admit(&s, &headers).await {
        Ok(f) => f,
        Err(response) => return response,
    };
    // The cursor may also come as an `X-Cursor` header.
    if q.cursor.is_none() {
        q.cursor = headers
            .get("x-cursor")
            .and_then(|h| h.to_str().ok())
            .map(str::to_string);
    }
    let (filter, style) = match (Filter::parse(&s, &q), Style::parse(&q)) {
        (Ok(f), Ok(st)) => (f, st),
        (Err(r), _) | (_, Err(r)) => return r.into_response(),
    };
    let limit = q.limit.or(q.per_page).unwrap_or(100).clamp(1, 10_000);
    let mut body = String::with_capacity(limit * 450 + 256);
    body.push_str("{\"data\":[");
    let (last, has_more, total) = {
        let data = read(&s.data);
        let (items, has_more, total): (Vec<Key>, bool, Option<usize>) = match feed {
            Feed::Live(kind) => {
                let resource = data.resource(kind);
                let mut page = select(&resource.live, &filter, style, limit);
                if let (Some(cap), Style::Offset(offset)) = (s.config.max_results, style) {
                    if offset >= cap {
                        return error(
                            StatusCode::BAD_REQUEST,
                            format!("offset {offset}: a query serves at most {cap} results"),
                        );
                    }
                    let room = usize::try_from(cap - offset).unwrap_or(usize::MAX);
                    if page.items.len() >= room {
                        page.items.truncate(room);
                        page.has_more = false;
                    }
                }
                for (i, (key, rev)) in page.items.iter().enumerate() {
                    if i > 0 {
                        body.push(',');
                    }
                    resource.render(*key, *rev, &mut body);
                }
                let keys = page.items.iter().map(|(k, _)| *k).collect();
                (keys, page.has_more, page.total)
            }
            Feed::Deleted(kind) => {
                let page = select(&data.resource(kind).deleted, &filter, style, limit);
                for (i, (key, ())) in page.items.iter().enumerate() {
                    if i > 0 {
                        body.push(',');
                    }
                    data::render_deletion(*key, &mut body);
                }
                let keys = page.items.iter().map(|(k, _)| *k).collect();
                (keys, page.has_more, page.total)
            }
            Feed::Invoices(customer) => {
                if data.resource(Kind::Customers).key_of(customer).is_none() {
                    return error(StatusCode::NOT_FOUND, format!("no customer {customer}"));
                }
                let set = data::invoices(customer, s.config.base_ms);
                let page = select(&set, &filter, style, limit);
                for (i, (key, _)) in page.items.iter().enumerate() {
                    if i > 0 {
                        body.push(',');
                    }
                    data::render_invoice(customer, *key, &mut body);
                }
                let keys = page.items.iter().map(|(k, _)| *k).collect();
                (keys, page.has_more, page.total)
            }
        };
        (items.last().copied(), has_more, total)
    };
    body.push(']');

    let next_cursor = match (style, last) {
        _ if has_more => last.map(encode_cursor),
        (_, Some(last)) if s.quirk(Quirk::CursorOnLastPage) => Some(encode_cursor(last)),
        (Style::Cursor(Some(at)), None) if s.quirk(Quirk::CursorOnLastPage) => {
            Some(encode_cursor(at))
        }
        _ => None,
    };
    let next = match (has_more, last) {
        (true, Some(last)) => Some(match style {
            Style::Cursor(_) => next_url(&headers, &uri, &[("cursor", encode_cursor(last))], &[]),
            Style::Page(p) => next_url(&headers, &uri, &[("page", (p + 1).to_string())], &[]),
            Style::Offset(o) => next_url(
                &headers,
                &uri,
                &[("offset", (o + limit as u64).to_string())],
                &[],
            ),
            Style::Keyset => next_url(
                &headers,
                &uri,
                &[
                    ("updated_since", format_ms(last.0)),
                    ("since_id", last.1.to_string()),
                ],
                &["updated_after"],
            ),
        }),
        _ => None,
    };
    let text = |v: &Option<String>| {
        v.as_ref()
            .map_or("null".to_string(), |c| format!("\"{c}\""))
    };
    body.push_str(&format!(
        ",\"next_cursor\":{},\"next_url\":{},\"has_more\":{has_more}",
        text(&next_cursor),
        text(&next)
    ));
    let mut extra = HeaderMap::new();
    if let Some(total) = total {
        let page = match style {
            Style::Page(p) => p,
            Style::Offset(o) => o / limit as u64 + 1,
            _ => 1,
        };
        body.push_str(&format!(",\"total\":{total},\"page\":{page}"));
        extra.insert("x-total-count", HeaderValue::from(total as u64));
    }
    body.push('}');
    if let Some(url) = &next {
        if let Ok(link) = HeaderValue::from_str(&format!("<{url}>; rel=\"next\"")) {
            extra.insert(header::LINK, link);
        }
    }
    // Conditional requests: the page's ETag is a hash of it; asked with it, the page is
    // `304 Not Modified` (an unchanged page, as GitHub answers).
    let digest = ring::digest::digest(&ring::digest::SHA256, body.as_bytes());
    let hex: String = digest.as_ref()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    if let Ok(etag) = HeaderValue::from_str(&format!("\"{hex}\"")) {
        if fault.is_none() && headers.get(header::IF_NONE_MATCH) == Some(&etag) {
            s.not_modified.fetch_add(1, AtomicOrdering::Relaxed);
            return (StatusCode::NOT_MODIFIED, [(header::ETAG, etag)]).into_response();
        }
        extra.insert(header::ETAG, etag);
    }
    respond(fault, extra, body)
}
