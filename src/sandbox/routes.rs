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
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde::Deserialize;

use super::data::{self, format_ms, Key, Kind};
use super::faults::{Fault, Faults};
use super::{read, write, Quirk, Sandbox};

type Shared = State<Arc<Sandbox>>;

/// The query parameters of list endpoints.
#[derive(Debug, Default, Deserialize)]
pub struct ListQuery {
    limit: Option<usize>,
    per_page: Option<usize>,
    cursor: Option<String>,
    page: Option<u64>,
    offset: Option<u64>,
    since_id: Option<u64>,
    updated_since: Option<String>,
    updated_after: Option<String>,
    updated_before: Option<String>,
}

impl ListQuery {
    /// These parameters, completed by `other`'s (a search body over its query string).
    fn or(self, other: ListQuery) -> ListQuery {
        ListQuery {
            limit: self.limit.or(other.limit),
            per_page: self.per_page.or(other.per_page),
            cursor: self.cursor.or(other.cursor),
            page: self.page.or(other.page),
            offset: self.offset.or(other.offset),
            since_id: self.since_id.or(other.since_id),
            updated_since: self.updated_since.or(other.updated_since),
            updated_after: self.updated_after.or(other.updated_after),
            updated_before: self.updated_before.or(other.updated_before),
        }
    }
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(serde_json::json!({ "error": message.into() }))).into_response()
}

/// A request the sandbox refuses with 400 and this message.
struct BadRequest(String);

impl IntoResponse for BadRequest {
    fn into_response(self) -> Response {
        error(StatusCode::BAD_REQUEST, self.0)
    }
}

/// One end of a time filter.
enum Edge {
    /// Compare instants.
    Ms(u64),
    /// Compare the stored text with this text (quirk `string-compare`).
    Text(String),
}

impl Edge {
    fn compare(&self, ms: u64) -> std::cmp::Ordering {
        match self {
            Edge::Ms(t) => ms.cmp(t),
            Edge::Text(t) => format_ms(ms).as_str().cmp(t.as_str()),
        }
    }
}

/// Parses a filter value: RFC 3339, unix seconds, or unix milliseconds.
fn instant(name: &str, text: &str) -> Result<u64, BadRequest> {
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        let n: u64 = text
            .parse()
            .map_err(|_| BadRequest(format!("{name}: out of range")))?;
        // Up to 11 digits are seconds (until year 5138), more are milliseconds.
        return Ok(if text.len() <= 11 { n * 1000 } else { n });
    }
    humantime::parse_rfc3339_weak(text)
        .map(|t| waymark_engine::Timestamp::from_system(t).0)
        .map_err(|e| {
            BadRequest(format!(
                "{name}: `{text}` is not RFC 3339, unix seconds or milliseconds ({e})"
            ))
        })
}

/// The time filters of a request.
struct Filter {
    /// Lower edge and whether it is inclusive.
    lower: Option<(Edge, bool)>,
    /// Approximate lower instant, where the scan starts.
    scan_from: u64,
    since_id: Option<u64>,
    upper: Option<(Edge, bool)>,
}

impl Filter {
    fn parse(s: &Sandbox, q: &ListQuery) -> Result<Filter, BadRequest> {
        let text = s.quirk(Quirk::StringCompare);
        let inclusive_only = s.quirk(Quirk::InclusiveFilters);
        let edge = |name: &str, value: &str| -> Result<(Edge, u64), BadRequest> {
            let ms = instant(name, value)?;
            Ok(if text {
                (Edge::Text(value.to_string()), ms.saturating_sub(1000))
            } else {
                (Edge::Ms(ms), ms)
            })
        };
        if inclusive_only && q.updated_after.is_some() {
            return Err(BadRequest(
                "unknown parameter `updated_after`; use `updated_since` (inclusive)".into(),
            ));
        }
        let (lower, scan_from) = match (&q.updated_since, &q.updated_after) {
            (Some(_), Some(_)) => {
                return Err(BadRequest(
                    "give `updated_since` or `updated_after`, not both".into(),
                ))
            }
            (Some(v), None) => {
                let (e, ms) = edge("updated_since", v)?;
                (Some((e, true)), ms)
            }
            (None, Some(v)) => {
                let (e, ms) = edge("updated_after", v)?;
                (Some((e, false)), ms)
            }
            (None, None) => (None, 0),
        };
        if q.since_id.is_some() && q.updated_since.is_none() {
            return Err(BadRequest(
                "`since_id` needs `updated_since` (keyset pagination)".into(),
            ));
        }
        let upper = match &q.updated_before {
            Some(v) => Some((edge("updated_before", v)?.0, inclusive_only)),
            None => None,
        };
        Ok(Filter {
            lower,
            scan_from,
            since_id: q.since_id,
            upper,
        })
    }

    fn above_lower(&self, (ms, id): Key) -> bool {
        use std::cmp::Ordering::*;
        match &self.lower {
            None => true,
            Some((edge, inclusive)) => match edge.compare(ms) {
                Greater => true,
                Less => false,
                Equal => self.since_id.map_or(*inclusive, |since| id > since),
            },
        }
    }

    fn below_upper(&self, (ms, _): Key) -> bool {
        use std::cmp::Ordering::*;
        match &self.upper {
            None => true,
            Some((edge, inclusive)) => match edge.compare(ms) {
                Less => true,
                Equal => *inclusive,
                Greater => false,
            },
        }
    }
}

/// The pagination style a request asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Style {
    Cursor(Option<Key>),
    Page(u64),
    Offset(u64),
    Keyset,
}

fn encode_cursor((ms, id): Key) -> String {
    format!("c{ms:x}_{id:x}")
}

fn decode_cursor(text: &str) -> Option<Key> {
    let (ms, id) = text.strip_prefix('c')?.split_once('_')?;
    Some((
        u64::from_str_radix(ms, 16).ok()?,
        u64::from_str_radix(id, 16).ok()?,
    ))
}

impl Style {
    fn parse(q: &ListQuery) -> Result<Style, BadRequest> {
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
struct Selected<V> {
    items: Vec<(Key, V)>,
    has_more: bool,
    total: Option<usize>,
}

fn select<V: Copy>(
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
fn next_url(headers: &HeaderMap, uri: &Uri, set: &[(&str, String)], drop: &[&str]) -> String {
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
async fn admit(s: &Sandbox, headers: &HeaderMap) -> Result<Option<Fault>, Response> {
    let n = s.requests.fetch_add(1, AtomicOrdering::Relaxed);
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
    if faults.latency_ms > 0 {
        tokio::time::sleep(Duration::from_millis(faults.latency_ms)).await;
    }
    let Some(fault) = faults.draw(s.config.seed, n) else {
        return Ok(None);
    };
    s.injected.count(fault);
    let retry_after = [(header::RETRY_AFTER, faults.retry_after_s.to_string())];
    match fault {
        Fault::TooManyRequests => Err((
            StatusCode::TOO_MANY_REQUESTS,
            retry_after,
            Json(serde_json::json!({"error": "rate limit exceeded"})),
        )
            .into_response()),
        Fault::ServerError => Err(error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "injected server error",
        )),
        Fault::Unavailable => Err((
            StatusCode::SERVICE_UNAVAILABLE,
            retry_after,
            Json(serde_json::json!({"error": "service unavailable"})),
        )
            .into_response()),
        Fault::Hang => {
            tokio::time::sleep(Duration::from_millis(faults.hang_ms)).await;
            Ok(None)
        }
        Fault::Reset | Fault::Malformed => Ok(Some(fault)),
    }
}

/// A JSON body, damaged by `fault` if it is one that damages bodies.
fn respond(fault: Option<Fault>, extra: HeaderMap, body: String) -> Response {
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
enum Feed {
    Live(Kind),
    Deleted(Kind),
    Invoices(u64),
}

/// One page of any list endpoint in any pagination style, with the quirks asked for. (Long:
/// the sandbox serves every style from one place, so they stay comparable.)
async fn list(
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
                let page = select(&resource.live, &filter, style, limit);
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
    respond(fault, extra, body)
}

async fn truth(s: Arc<Sandbox>, kind: Kind) -> Response {
    let data = read(&s.data);
    let resource = data.resource(kind);
    let ids = resource.sorted_ids();
    let mut body = String::with_capacity(ids.len() * 450 + 64);
    body.push_str(&format!("{{\"count\":{},\"data\":[", ids.len()));
    for (i, id) in ids.iter().enumerate() {
        if let Some(key) = resource.key_of(*id) {
            if i > 0 {
                body.push(',');
            }
            resource.render(
                key,
                resource.live.get(&key).copied().unwrap_or(0),
                &mut body,
            );
        }
    }
    let gone: Vec<String> = resource.gone_ids().iter().map(u64::to_string).collect();
    body.push_str(&format!("],\"deleted\":[{}]}}", gone.join(",")));
    respond(None, HeaderMap::new(), body)
}

async fn stats(State(s): Shared) -> Response {
    let data = read(&s.data);
    let [inserted, updated, deleted] = &s.mutations;
    Json(serde_json::json!({
        "requests": s.requests.load(AtomicOrdering::Relaxed),
        "faults": s.injected.to_json(),
        "mutations": {
            "inserted": inserted.load(AtomicOrdering::Relaxed),
            "updated": updated.load(AtomicOrdering::Relaxed),
            "deleted": deleted.load(AtomicOrdering::Relaxed),
        },
        "mutate_rate": *read(&s.mutate_rate),
        "orders": data.orders.len(),
        "customers": data.customers.len(),
    }))
    .into_response()
}

async fn set_faults(State(s): Shared, Json(faults): Json<Faults>) -> Response {
    *write(&s.faults) = faults.clone();
    Json(faults).into_response()
}

/// `PUT /_control/mutator`: `{"rate": per_second}` changes the background rate, and
/// `{"apply": n}` applies `n` mutations before answering (deterministic tests).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MutatorControl {
    rate: Option<f64>,
    apply: Option<u64>,
}

async fn set_mutator(State(s): Shared, Json(c): Json<MutatorControl>) -> Response {
    if let Some(rate) = c.rate {
        *write(&s.mutate_rate) = rate.max(0.0);
    }
    s.apply_mutations(c.apply.unwrap_or(0));
    Json(serde_json::json!({ "rate": *read(&s.mutate_rate) })).into_response()
}

/// `PUT /_control/edit`: `{"resource": "orders", "touch": [ids], "update": [ids],
/// "delete": [ids]}` gives records a new revision without bumping `updated_at` (what an
/// incremental sync misses and a reconciliation finds), a new revision at the current time,
/// or deletes them. Answers how many of each it did.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Edit {
    resource: String,
    #[serde(default)]
    touch: Vec<u64>,
    #[serde(default)]
    update: Vec<u64>,
    #[serde(default)]
    delete: Vec<u64>,
}

async fn edit(State(s): Shared, Json(edit): Json<Edit>) -> Response {
    let kind = match edit.resource.as_str() {
        "orders" => Kind::Orders,
        "customers" => Kind::Customers,
        other => {
            return (
                StatusCode::BAD_REQUEST,
                format!("unknown resource `{other}` (orders, customers)"),
            )
                .into_response()
        }
    };
    let [touched, updated, deleted] = s.edit(kind, [&edit.touch, &edit.update, &edit.delete]);
    Json(serde_json::json!({ "touched": touched, "updated": updated, "deleted": deleted }))
        .into_response()
}

/// The sandbox's routes.
pub fn router(sandbox: Arc<Sandbox>) -> Router {
    let mut router = Router::new();
    for (name, kind) in [("orders", Kind::Orders), ("customers", Kind::Customers)] {
        router = router
            .route(
                &format!("/{name}"),
                get(
                    move |State(s): Shared, Query(q): Query<ListQuery>, uri: Uri, h: HeaderMap| {
                        list(s, q, uri, h, Feed::Live(kind))
                    },
                ),
            )
            .route(
                &format!("/{name}/deleted"),
                get(
                    move |State(s): Shared, Query(q): Query<ListQuery>, uri: Uri, h: HeaderMap| {
                        list(s, q, uri, h, Feed::Deleted(kind))
                    },
                ),
            )
            .route(
                &format!("/{name}/search"),
                post(
                    move |State(s): Shared,
                          Query(q): Query<ListQuery>,
                          uri: Uri,
                          h: HeaderMap,
                          Json(body): Json<ListQuery>| {
                        list(s, body.or(q), uri, h, Feed::Live(kind))
                    },
                ),
            )
            .route(
                &format!("/_truth/{name}"),
                get(move |State(s): Shared| truth(s, kind)),
            );
    }
    router
        .route(
            "/customers/{id}/invoices",
            get(
                |State(s): Shared,
                 Path(id): Path<u64>,
                 Query(q): Query<ListQuery>,
                 uri: Uri,
                 h: HeaderMap| list(s, q, uri, h, Feed::Invoices(id)),
            ),
        )
        .route("/_stats", get(stats))
        .route("/_control/faults", put(set_faults))
        .route("/_control/mutator", put(set_mutator))
        .route("/_control/edit", put(edit))
        .with_state(sandbox)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_reject_junk() {
        let key = (1_767_225_600_123, 42);
        assert_eq!(decode_cursor(&encode_cursor(key)), Some(key));
        assert_eq!(decode_cursor("p12"), None);
        assert_eq!(decode_cursor("c12"), None);
    }

    #[test]
    fn parses_instants_in_three_forms() {
        assert_eq!(instant("t", "1767225600").ok(), Some(1_767_225_600_000));
        assert_eq!(instant("t", "1767225600123").ok(), Some(1_767_225_600_123));
        assert_eq!(
            instant("t", "2026-01-01T00:00:00.123Z").ok(),
            Some(1_767_225_600_123)
        );
        assert!(instant("t", "yesterday").is_err());
    }
}
