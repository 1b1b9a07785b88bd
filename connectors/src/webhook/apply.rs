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
use crate::http::rules::Rules;
use crate::record::{lookup, scalar};
use crate::sink::plan::DELETION_MARK;

/// The source of a stream's webhook runs.
pub struct EventSource {
    inbox: Arc<Inbox>,
    sync: String,
    stream: String,
    section: WebhookSection,
    page_size: usize,
    /// With `apply = "fetch"`: the API and the stream's response rules.
    fetcher: Option<(Arc<Api>, Rules)>,
    /// Records fetched for the page being read (its cursor): a page retried after a 429
    /// goes on from where it stopped.
    partial: Option<(Option<String>, Vec<String>)>,
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
            partial: None,
        })
    }

    /// The record an event applies: `Err` with the event as text when it is not JSON (the
    /// destination dead-letters it, saying so).
    async fn record(&self, event: &Waiting) -> Result<Option<String>, source::Error> {
        let Ok(body) = serde_json::from_slice::<Value>(&event.body) else {
            return Ok(Some(String::from_utf8_lossy(&event.body).into_owned()));
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
        let cursor = request.cursor.map(str::to_string);
        let mut records = match self.partial.take() {
            Some((c, done)) if c == cursor => done,
            _ => Vec::new(),
        };
        // With `fetch`, `records` holds one entry per event done (`None` texts are kept as
        // empty strings and left out at the end).
        for event in events.iter().skip(records.len()) {
            match self.record(event).await {
                Ok(record) => records.push(record.unwrap_or_default()),
                Err(e) => {
                    self.partial = Some((cursor, records));
                    return Err(e);
                }
            }
        }
        Ok(Page {
            records: records.into_iter().filter(|r| !r.is_empty()).collect(),
            next_cursor: more
                .then(|| events.last().map(|e| e.seq.to_string()))
                .flatten(),
            ignored: None,
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
        for b in value.bytes() {
            match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                    out.push(char::from(b))
                }
                _ => out.push_str(&format!("%{b:02X}")),
            }
        }
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
