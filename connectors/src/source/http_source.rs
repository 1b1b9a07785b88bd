//! [`HttpSource`]: one request per page through the shared [`Api`], the page read and
//! shaped, the next cursor made journalable.

use std::sync::{Arc, Mutex, PoisonError};

use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use serde_json::Value;

use waymark_engine::destination;
use waymark_engine::source::{self, ErrorKind, Page, PageRequest, SchemaDrift, Source};

use super::children::{ChildCursor, Parents};
use super::cycles::Cycles;
use super::error::Error;
use super::etags::{Entry, Etags};
use super::page::{
    fatal, fingerprint, max_seen, records_at, records_by_query, shape, Document, Fingerprint,
};
use super::pagination::{keyset, StopRules, Style};
use super::partitions::Partitioned;
use super::template::{render, render_json, Context};
use crate::config::{expand_env, CursorIn, Method, StreamSection, WindowStart, Workflow};
use crate::http::api::Accepted;
use crate::http::rules::Rules;
use crate::http::Api;
use crate::record::scalar;
use crate::state::schema::Schema;

/// A paginated JSON API for one stream.
pub struct HttpSource {
    pub(super) api: Arc<Api>,
    pub(super) rules: Rules,
    pub(super) stream: StreamSection,
    pub(super) style: Style,
    pub(super) stop: StopRules,
    /// The previous page: its number, its parent and a hash of its records, to notice the
    /// same page served twice.
    pub(super) previous: Option<(u64, Option<String>, Fingerprint)>,
    /// The cursors this run sent (of the current parent, for a child stream), to notice
    /// pages that cycle.
    pub(super) cycles: Cycles,
    /// The parent whose pages `cycles` holds.
    pub(super) cycles_parent: Option<String>,
    /// `source.max_cursor_bytes`.
    pub(super) max_cursor: usize,
    /// Whether this run warned of an oversized page already (once a run is enough).
    pub(super) warned_oversized: bool,
    /// A child stream's parent records.
    pub(super) parents: Option<Box<dyn Parents>>,
    /// `records` when it is a JSONPath (`$.data[*]`).
    pub(super) records_path: Option<serde_json_path::JsonPath>,
    /// With `concurrency` > 1: the window's partitions, each read by a copy of this source.
    partitions: Option<Box<Partitioned<HttpSource>>>,
    /// With `conditional`: the ETags sent and seen (not in a partition's copy).
    etags: Option<Etags>,
    /// The last page read: records the API served, and their greatest `cursor_field`
    /// value (read with `pagination.max_records`).
    pub(super) served: (usize, Option<waymark_engine::Timestamp>),
    /// The records' observed shape (shared with partitions' copies; none without a state
    /// directory).
    pub(super) schema: Option<Arc<Mutex<Schema>>>,
}

impl HttpSource {
    /// The source of `stream` in `workflow`, sending its requests through `api`; a child
    /// stream reads its parent records through `parents`.
    pub fn new(
        workflow: &Workflow,
        stream: &StreamSection,
        api: Arc<Api>,
        parents: Option<Box<dyn Parents>>,
    ) -> Result<Self, Error> {
        if stream.parent.is_some() != parents.is_some() {
            return Err(Error::Parent(format!(
                "stream `{}`: a child stream is built with its parents' reader, and only a \
                 child stream",
                stream.name
            )));
        }
        let p = &stream.pagination;
        let mut rules = Rules::new(
            &stream.name,
            &stream.on_response,
            &workflow.file().source.on_response,
        );
        if stream.conditional {
            rules = rules.accepting(304, &format!("stream.{}.conditional", stream.name));
        }
        let mut source = HttpSource {
            api,
            rules,
            style: Style::new(stream)?,
            stop: StopRules {
                has_more_path: p.has_more_path.clone(),
                end_path: p.end_path.clone(),
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
            cycles: Cycles::default(),
            cycles_parent: None,
            max_cursor: usize::try_from(workflow.file().source.max_cursor_bytes)
                .unwrap_or(usize::MAX),
            warned_oversized: false,
            parents,
            partitions: None,
            etags: None,
            served: (0, None),
            schema: None,
        };
        if let Some(root) = source.api.state_dir() {
            let file = Schema::file(root, workflow.name(), &stream.name);
            let schema = Schema::open(file, stream.schema_policy, &stream.columns)?;
            source.schema = Some(Arc::new(Mutex::new(schema)));
        }
        if stream.conditional {
            source.etags = Some(Etags::open(
                source.api.state_dir(),
                workflow.name(),
                &stream.name,
            ));
        }
        // `validate` refuses concurrency without a step, or on a child stream.
        if let (Some(n), Some(step), None) =
            (stream.concurrency, stream.window.step, &stream.parent)
        {
            if n > 1 {
                let step_ms = u64::try_from(step.0.as_millis()).unwrap_or(u64::MAX);
                let n = usize::try_from(n).unwrap_or(1);
                let prototype = source.fresh();
                let make = move || prototype.fresh();
                source.partitions = Some(Box::new(Partitioned::new(make, step_ms, n)));
            }
        }
        Ok(source)
    }

    /// A copy with this one's settings and none of its run's state (a partition's source).
    pub(super) fn fresh(&self) -> HttpSource {
        HttpSource {
            api: self.api.clone(),
            rules: self.rules.clone(),
            stream: self.stream.clone(),
            style: self.style.clone(),
            stop: self.stop.clone(),
            previous: None,
            cycles: Cycles::default(),
            cycles_parent: None,
            max_cursor: self.max_cursor,
            warned_oversized: false,
            parents: None,
            records_path: self.records_path.clone(),
            partitions: None,
            etags: None,
            served: (0, None),
            schema: self.schema.clone(),
        }
    }

    /// Reads without observing the records' schema (a reconciliation, not a run).
    pub fn unobserved(self) -> Self {
        if let Some(schema) = &self.schema {
            schema
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .turn_off();
        }
        self
    }

    /// Keeps the ETags this run saw for the next run's conditional requests: only once
    /// the run completed (every page it read was written).
    pub fn keep_etags(&mut self) -> std::io::Result<()> {
        match &mut self.etags {
            Some(etags) => etags.keep(),
            None => Ok(()),
        }
    }

    /// The URL of `path` under the base URL.
    pub(super) fn join(&self, path: &str) -> Result<reqwest::Url, source::Error> {
        let joined = format!(
            "{}/{}",
            self.api.base_url().as_str().trim_end_matches('/'),
            path.trim_start_matches('/')
        );
        reqwest::Url::parse(&joined).map_err(|e| fatal(format!("`{joined}` is not a URL: {e}")))
    }

    /// The request for one page (of `parent`'s children, for a child stream). (Long: URL,
    /// cursor placement per style, window parameters, headers and body, in request order.)
    pub(super) fn request(
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
    pub(super) fn same_origin(&self, next: &str) -> Result<reqwest::Url, source::Error> {
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

impl HttpSource {
    /// One page of the stream (for a child stream: of `parent`'s children).
    pub(super) async fn fetch_page(
        &mut self,
        request: PageRequest<'_>,
        parent: Option<(&str, &Value)>,
    ) -> Result<Page, source::Error> {
        let record = parent.map(|(_, record)| record);
        let key = match &self.etags {
            Some(_) => Some(Etags::key(&self.request(&request, record)?)),
            None => None,
        };
        let known = key
            .as_ref()
            .and_then(|k| self.etags.as_ref()?.known(k).cloned());
        let reply = self
            .api
            .send(&self.rules, || {
                let mut built = self.request(&request, record)?;
                if let Some(value) = known
                    .as_ref()
                    .and_then(|entry| HeaderValue::from_str(&entry.etag).ok())
                {
                    built
                        .headers_mut()
                        .insert(reqwest::header::IF_NONE_MATCH, value);
                }
                Ok(built)
            })
            .await?;
        match reply {
            Ok(accepted) if accepted.status == 304 => {
                self.not_modified(&request, parent, &accepted.what, key, known)
            }
            Ok(accepted) => {
                let parent_key = parent.map(|(key, _)| key);
                let page = self.read_page(&request, parent_key, &accepted)?;
                let etag = accepted.headers.get(reqwest::header::ETAG);
                if let (Some(etags), Some(key), Some(etag)) = (&mut self.etags, key, etag) {
                    if let Ok(etag) = etag.to_str() {
                        let next = page.next_cursor.clone();
                        etags.saw(
                            key,
                            Entry {
                                etag: etag.into(),
                                next,
                            },
                        );
                    }
                }
                Ok(page)
            }
            Err(ignored) => {
                self.previous = None;
                Ok(Page {
                    ignored: Some(ignored),
                    ..Page::default()
                })
            }
        }
    }

    /// A `304 Not Modified` to `request`, sent with the ETag of `known`: the page a
    /// completed run read and wrote, skipped (journaled as ignored), its next page
    /// followed.
    fn not_modified(
        &mut self,
        request: &PageRequest<'_>,
        parent: Option<(&str, &Value)>,
        what: &str,
        key: Option<String>,
        known: Option<Entry>,
    ) -> Result<Page, source::Error> {
        let (Some(key), Some(entry)) = (key, known) else {
            return Err(fatal(format!(
                "{what}: 304 Not Modified to a request sent without If-None-Match"
            )));
        };
        let parent_key = parent.map(|(key, _)| key.to_string());
        self.loop_checks(what, request, parent_key, entry.next.as_deref(), false)?;
        self.previous = None;
        let next_cursor = entry.next.clone();
        if let Some(etags) = &mut self.etags {
            etags.saw(key, entry);
        }
        Ok(Page {
            records: Vec::new(),
            next_cursor,
            ignored: Some(waymark_engine::source::Ignored {
                status: Some(304),
                rule: Some(format!("stream.{}.conditional", self.stream.name)),
                reason: "not modified since the completed run that read it (If-None-Match): \
                         its records are written"
                    .into(),
            }),
            ..Page::default()
        })
    }

    /// What an accepted response to `request` (of `parent`'s children, for a child stream)
    /// is: its records, read and shaped, and the next page's cursor, checked for repeats,
    /// cycles and size. No I/O: [`Source::fetch`] is the exchange and this.
    pub fn read_page(
        &mut self,
        request: &PageRequest<'_>,
        parent: Option<&str>,
        response: &Accepted,
    ) -> Result<Page, source::Error> {
        let Accepted {
            what,
            headers,
            body,
            ..
        } = response;
        let doc = match &self.records_path {
            Some(_) => Document::parse(body)?,
            None => Document::with_records(body, &self.stream.records)?,
        };
        let mut records: Vec<String> = match &self.records_path {
            Some(path) => records_by_query(&doc, path)
                .map_err(|e| fatal(format!("{what}: {e}")))?
                .into_iter()
                .map(str::to_string)
                .collect(),
            None => records_at(&doc, &self.stream.records)?
                .into_iter()
                .map(str::to_string)
                .collect(),
        };
        self.oversized(what, request.page, records.len())?;
        let parent_key = parent.map(str::to_string);
        let print = (request.page, parent_key.clone(), fingerprint(&records));
        // Only the page just before counts (a page fetched again is not a repeat of itself).
        let repeated = !records.is_empty()
            && self.previous.as_ref().is_some_and(|(page, parent, hash)| {
                page + 1 == request.page && (parent, hash) == (&print.1, &print.2)
            });
        self.previous = Some(print);
        let received = records.len();
        let next_cursor = self
            .style
            .next_cursor(
                &self.stop,
                &self.stream,
                request,
                &doc,
                headers,
                &mut records,
            )
            .map_err(|mut e| {
                e.message = format!("{what}: {}", e.message);
                e
            })?;
        let next_cursor = next_cursor.map(|c| self.journalable(c)).transpose()?;
        self.loop_checks(what, request, parent_key, next_cursor.as_deref(), repeated)?;
        // Read before shaping: `filter` and `fields` do not change what the API has served.
        let max_seen_starts = self.stream.window.start == WindowStart::MaxSeen;
        let capped = self.stream.pagination.max_records.is_some();
        let greatest = match (&self.stream.cursor_field, max_seen_starts || capped) {
            (Some(field), true) => max_seen(&records, field),
            _ => None,
        };
        self.served = (received, greatest);
        let max_seen = greatest.filter(|_| max_seen_starts);
        if self.stream.filter.is_some() || self.stream.fields.is_some() {
            records = shape(records, &self.stream).map_err(|e| fatal(format!("{what}: {e}")))?;
        }
        // The schema's scan of each record also finds its top-level fields, for the
        // destination.
        let (drift, fields) = match &self.schema {
            Some(schema) => {
                let mut schema = schema.lock().unwrap_or_else(PoisonError::into_inner);
                let last = next_cursor.is_none();
                let observed = schema
                    .observe(request.page, &records, self.api.now(), last)
                    .map_err(|e| fatal(e.to_string()))?;
                let drift = SchemaDrift {
                    changes: observed.changes,
                    refused: observed.refused,
                };
                (Some(drift), observed.fields)
            }
            None => (None, None),
        };
        Ok(Page {
            records,
            fields,
            next_cursor,
            ignored: None,
            max_seen,
            drift,
        })
    }

    /// A cursor fit for the journal: an API key in the query is taken out of a next-page
    /// URL (it is added to every request anyway); any other secret in it is an error.
    pub(super) fn journalable(&self, cursor: String) -> Result<String, source::Error> {
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
        parents: &dyn Parents,
        request: PageRequest<'_>,
    ) -> Result<Page, source::Error> {
        let parent_error = |e: destination::Error| {
            let kind = match e.retryable() {
                true => ErrorKind::Retry,
                false => ErrorKind::Fatal,
            };
            source::Error::new(kind, format!("parent stream: {}", e.message))
        };
        let position = match request.cursor {
            Some(c) => serde_json::from_str::<ChildCursor>(c)
                .map_err(|e| fatal(format!("journaled child cursor `{c}` unreadable: {e}")))?,
            None => match parents.after(None).await.map_err(parent_error)? {
                Some((parent, _)) => ChildCursor {
                    parent,
                    cursor: None,
                },
                None => return Ok(Page::default()),
            },
        };
        let mut page = match parents.get(&position.parent).await.map_err(parent_error)? {
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
                .await
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
        if let Some(next) = &page.next_cursor {
            // The parent's key joined the inner cursor checked already.
            self.fits(next)
                .map_err(|why| fatal(format!("child stream: {why}")))?;
        }
        Ok(page)
    }
}

impl Source for HttpSource {
    async fn fetch(&mut self, request: PageRequest<'_>) -> Result<Page, source::Error> {
        if let Some(partitions) = &mut self.partitions {
            return partitions.fetch(request).await;
        }
        let parents = self.parents.take();
        let page = match &parents {
            Some(p) => self.fetch_child(p.as_ref(), request).await,
            None => match self.stream.pagination.max_records {
                Some(cap) => self.fetch_capped(request, cap).await,
                None => self.fetch_page(request, None).await,
            },
        };
        self.parents = parents;
        page.map_err(|mut e| {
            e.message = self.api.secrets().redact(&e.message);
            e
        })
    }
}
