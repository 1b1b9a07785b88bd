//! Accepted events as the pages of a journaled run: [`EventSource`] serves a stream's
//! events accepted within the run's window (their acceptance times), in order, as records
//! the stream's destination writes through its versioned upsert — so a webhook and the
//! polling may deliver a record in any order and the newest version stays.
//!
//! The cursor is the last sequence number served; the window's end is an
//! [`Inbox::horizon`], complete when chosen, so a resumed run serves exactly the same
//! pages. Events leave the inbox once the run that applied them completed.

use std::sync::Arc;

use serde_json::Value;
use waymark_engine::source::{self, ErrorKind, Page, PageRequest, Source};

use super::inbox::{Inbox, Waiting};
use crate::config::{ApplyMode, RecordFilter, StreamSection, WebhookSection, Workflow};
use crate::http::api::Api;
use crate::http::path_segment;
use crate::http::rules::Rules;
use crate::record::{lookup, scalar};
use crate::sink::plan::{DELETION_MARK, NOT_JSON_MARK};

/// The source of a stream's webhook runs.
pub struct EventSource {
    inbox: Arc<Inbox>,
    sync: String,
    stream: String,
    section: WebhookSection,
    page_size: usize,
    /// With `apply = "fetch"`: the API and the stream's response rules.
    fetcher: Option<(Arc<Api>, Rules)>,
    /// A fetch that failed after others of its page succeeded: those were served as a page,
    /// this is the next fetch's answer.
    deferred: Option<source::Error>,
}

fn fatal(message: String) -> source::Error {
    source::Error::new(ErrorKind::Fatal, message)
}

impl EventSource {
    /// The source of `stream`'s webhook events in `inbox`; `api` is the source's (used
    /// with `apply = "fetch"`).
    pub fn new(
        inbox: Arc<Inbox>,
        workflow: &Workflow,
        stream: &StreamSection,
        api: Arc<Api>,
    ) -> Result<Self, source::Error> {
        let section = stream
            .webhook
            .clone()
            .ok_or_else(|| fatal(format!("stream `{}` has no webhook", stream.name)))?;
        let fetcher = (section.apply == ApplyMode::Fetch).then(|| {
            let rules = Rules::new(
                &stream.name,
                &stream.on_response,
                &workflow.file().source.on_response,
            );
            (api, rules)
        });
        Ok(EventSource {
            inbox,
            sync: workflow.name().to_string(),
            stream: stream.name.clone(),
            section,
            page_size: usize::try_from(stream.page_size.max(1)).unwrap_or(100),
            fetcher,
            deferred: None,
        })
    }

    /// The record an event applies (none: a fetched record gone, or ignored by a response
    /// rule). An event that is not JSON is passed on as its text and the parser's error
    /// under [`NOT_JSON_MARK`]: the destination dead-letters it, saying so.
    async fn record(&self, event: &Waiting) -> Result<Option<String>, source::Error> {
        let body = match serde_json::from_slice::<Value>(&event.body) {
            Ok(body) => body,
            Err(e) => {
                let text = String::from_utf8_lossy(&event.body);
                let mark = serde_json::json!({ "body": text, "error": e.to_string() });
                return Ok(Some(serde_json::json!({ NOT_JSON_MARK: mark }).to_string()));
            }
        };
        let named = at(&body, &self.section.record_path);
        if matches(self.section.deleted_when.as_ref(), &body) {
            let mut record = named.cloned().unwrap_or(Value::Null);
            if let Value::Object(map) = &mut record {
                map.insert(DELETION_MARK.into(), Value::Bool(true));
            }
            return Ok(Some(record.to_string()));
        }
        let Some((api, rules)) = &self.fetcher else {
            return Ok(Some(named.unwrap_or(&body).to_string()));
        };
        let template = self.section.fetch.as_deref().unwrap_or_default();
        let path = match render(template, &body) {
            Ok(path) => path,
            // Nothing names the record: the event itself is dead-lettered.
            Err(_) => return Ok(Some(named.unwrap_or(&body).to_string())),
        };
        let url = format!(
            "{}/{}",
            api.base_url().as_str().trim_end_matches('/'),
            path.trim_start_matches('/')
        );
        let url = reqwest::Url::parse(&url).map_err(|e| fatal(format!("`{path}`: {e}")))?;
        let answer = api
            .send(rules, || {
                Ok(reqwest::Request::new(reqwest::Method::GET, url.clone()))
            })
            .await;
        match answer {
            Ok(Ok(accepted)) => {
                let value: Value = serde_json::from_slice(&accepted.body).map_err(|e| {
                    fatal(format!("{}: the answer is not JSON: {e}", accepted.what))
                })?;
                Ok(Some(
                    at(&value, &self.section.fetch_record_path)
                        .unwrap_or(&value)
                        .to_string(),
                ))
            }
            // Ignored by a response rule: nothing to apply.
            Ok(Err(_)) => Ok(None),
            // Gone since the event: its deletion comes by its own event or the polling.
            Err(e) if e.status == Some(404) => {
                tracing::info!(
                    "{}/{}: GET {path} answered 404; the event's record is gone",
                    self.sync,
                    self.stream
                );
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }
}

impl Source for EventSource {
    async fn fetch(&mut self, request: PageRequest<'_>) -> Result<Page, source::Error> {
        if let Some(e) = self.deferred.take() {
            return Err(e);
        }
        let after = match request.cursor {
            None => None,
            Some(c) => Some(
                c.parse::<u64>()
                    .map_err(|_| fatal(format!("webhook cursor `{c}` is not a sequence number")))?,
            ),
        };
        let window = (request.window.start, request.window.end);
        let (events, more) = self
            .inbox
            .page((&self.sync, &self.stream), after, window, self.page_size)
            .map_err(|e| fatal(e.to_string()))?;
        let mut records = Vec::with_capacity(events.len());
        let mut done = None;
        for event in &events {
            match self.record(event).await {
                Ok(record) => {
                    records.extend(record);
                    done = Some(event.seq);
                }
                // Nothing done yet: the driver journals the failure and retries the page.
                Err(e) if done.is_none() => return Err(e),
                // The events done so far are a page of their own; the failure is the next
                // page's (journaled, waited out), so a retry never starts over.
                Err(e) => {
                    self.deferred = Some(e);
                    return Ok(Page {
                        records,
                        next_cursor: done.map(|seq| seq.to_string()),
                        ..Page::default()
                    });
                }
            }
        }
        Ok(Page {
            records,
            next_cursor: more
                .then(|| events.last().map(|e| e.seq.to_string()))
                .flatten(),
            ..Page::default()
        })
    }
}

/// The value at a dotted path; the whole value for an empty path.
fn at<'a>(value: &'a Value, path: &str) -> Option<&'a Value> {
    match path {
        "" => Some(value),
        path => lookup(value, path),
    }
}

/// Whether `filter` matches `value`.
fn matches(filter: Option<&RecordFilter>, value: &Value) -> bool {
    filter.is_some_and(|f| {
        at(value, &f.path)
            .and_then(scalar)
            .is_some_and(|v| f.one_of.contains(&v))
    })
}

/// `template` with each `{event.<path>}` replaced by that value of `event`, percent-encoded
/// as a path segment; `Err` naming a path with no scalar value.
pub fn render(template: &str, event: &Value) -> Result<String, String> {
    let mut out = String::new();
    let mut rest = template;
    while let Some(open) = rest.find("{event.") {
        out.push_str(&rest[..open]);
        let after = &rest[open + "{event.".len()..];
        let close = after
            .find('}')
            .ok_or_else(|| format!("`{template}`: a `{{event.` is not closed"))?;
        let path = &after[..close];
        let value = at(event, path)
            .and_then(scalar)
            .ok_or_else(|| format!("the event has no value at `{path}`"))?;
        out.push_str(&path_segment(&value));
        rest = &after[close + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fetch_path_takes_the_events_values_encoded() {
        let event = serde_json::json!({"data": {"id": 42, "shop": "a/b c"}});
        assert_eq!(
            render("/shops/{event.data.shop}/orders/{event.data.id}", &event),
            Ok("/shops/a%2Fb%20c/orders/42".into())
        );
        assert_eq!(
            render("/orders/{event.data.nope}", &event),
            Err("the event has no value at `data.nope`".into())
        );
    }
}
