//! The HTTP source: one GET per page, records and next cursor read from the JSON body.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::value::RawValue;
use waymark_engine::source::{self, Page, PageRequest, Source};

use crate::workflow::{expand_env, StreamSection, Workflow};

/// Why the source could not be built.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The base URL is unusable.
    #[error("source.base_url: {0}")]
    Url(String),
    /// The HTTP client could not be built.
    #[error("HTTP client: {0}")]
    Client(String),
}

/// A paginated JSON API for one stream.
pub struct HttpSource {
    client: reqwest::Client,
    url: reqwest::Url,
    stream: StreamSection,
}

impl HttpSource {
    /// The source of `stream` in `workflow`.
    pub fn new(workflow: &Workflow, stream: &StreamSection) -> Result<Self, Error> {
        let base = expand_env(&workflow.file().source.base_url).map_err(Error::Url)?;
        let joined = format!(
            "{}/{}",
            base.trim_end_matches('/'),
            stream.path.trim_start_matches('/')
        );
        let url =
            reqwest::Url::parse(&joined).map_err(|e| Error::Url(format!("`{joined}`: {e}")))?;
        let timeout = workflow.file().source.timeout.0;
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(10)))
            .user_agent(concat!("waymark/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| Error::Client(e.to_string()))?;
        Ok(HttpSource {
            client,
            url,
            stream: stream.clone(),
        })
    }

    fn request(&self, request: &PageRequest<'_>) -> reqwest::Url {
        let mut url = self.url.clone();
        {
            let mut query = url.query_pairs_mut();
            let p = &self.stream.pagination;
            if let Some(limit) = &p.limit_param {
                query.append_pair(limit, &self.stream.page_size.to_string());
            }
            if let Some(cursor) = request.cursor {
                query.append_pair(&p.cursor_param, cursor);
            }
            let w = &self.stream.window;
            if let (Some(param), Some(start)) = (&w.start_param, request.window.start) {
                query.append_pair(param, &start.to_string());
            }
            if let Some(param) = &w.end_param {
                query.append_pair(param, &request.window.end.to_string());
            }
        }
        url
    }
}

fn retryable(message: String, retry_after: Option<Duration>) -> source::Error {
    source::Error {
        retryable: true,
        retry_after,
        message,
    }
}

fn fatal(message: String) -> source::Error {
    source::Error {
        retryable: false,
        retry_after: None,
        message,
    }
}

fn excerpt(body: &[u8]) -> String {
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

/// Records and next cursor of a page body.
pub fn parse_page(body: &[u8], records: &str, cursor_path: &str) -> Result<Page, source::Error> {
    let doc: &RawValue = serde_json::from_slice(body).map_err(|e| {
        retryable(
            format!("page is not JSON ({e}); it starts: {}", excerpt(body)),
            None,
        )
    })?;
    let array = raw_at(doc, records)
        .map_err(|e| fatal(e.to_string()))?
        .ok_or_else(|| {
            fatal(format!(
                "records path `{records}` is not in the page: {}",
                excerpt(body)
            ))
        })?;
    let items: Vec<&RawValue> = serde_json::from_str(array.get()).map_err(|_| {
        fatal(format!(
            "records path `{records}` is not an array: {}",
            excerpt(array.get().as_bytes())
        ))
    })?;
    let records = items.into_iter().map(|r| r.get().to_string()).collect();
    let next_cursor = match raw_at(doc, cursor_path).map_err(|e| fatal(e.to_string()))? {
        None => None,
        Some(raw) => match serde_json::from_str::<serde_json::Value>(raw.get()) {
            Ok(serde_json::Value::String(s)) if !s.is_empty() => Some(s),
            Ok(serde_json::Value::Number(n)) => Some(n.to_string()),
            _ => None,
        },
    };
    Ok(Page {
        records,
        next_cursor,
    })
}

fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let value = headers.get(reqwest::header::RETRY_AFTER)?.to_str().ok()?;
    if let Ok(secs) = value.trim().parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let when = httpdate_parse(value)?;
    Some(
        when.duration_since(std::time::SystemTime::now())
            .unwrap_or_default(),
    )
}

fn httpdate_parse(value: &str) -> Option<std::time::SystemTime> {
    // IMF-fixdate, e.g. "Sun, 06 Nov 1994 08:49:37 GMT".
    let parts: Vec<&str> = value.split_whitespace().collect();
    let [_, day, month, year, time, "GMT"] = parts.as_slice() else {
        return None;
    };
    let months = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let m = months.iter().position(|x| x == month)? + 1;
    let text = format!("{year}-{m:02}-{day:0>2}T{time}Z");
    humantime::parse_rfc3339(&text).ok()
}

impl Source for HttpSource {
    async fn fetch(&mut self, request: PageRequest<'_>) -> Result<Page, source::Error> {
        let url = self.request(&request);
        let what = format!("GET {} (page {})", self.url.path(), request.page);
        let response = self.client.get(url).send().await.map_err(|e| {
            let e = e.without_url();
            let kind = if e.is_timeout() {
                "timed out"
            } else if e.is_connect() {
                "could not connect"
            } else {
                "failed"
            };
            retryable(format!("{what} {kind}: {e}"), None)
        })?;
        let status = response.status();
        let after = retry_after(response.headers());
        let body = response.bytes().await.map_err(|e| {
            retryable(
                format!("{what}: reading the body failed: {}", e.without_url()),
                None,
            )
        })?;
        if status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error() {
            return Err(retryable(
                format!("{what}: HTTP {status}: {}", excerpt(&body)),
                after,
            ));
        }
        if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
            return Err(fatal(format!(
                "{what}: HTTP {status}: the API refused the credentials"
            )));
        }
        if !status.is_success() {
            return Err(fatal(format!("{what}: HTTP {status}: {}", excerpt(&body))));
        }
        let p = &self.stream.pagination;
        parse_page(&body, &self.stream.records, &p.cursor_path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_records_and_cursor_without_reserialising() -> Result<(), source::Error> {
        let body = br#"{"data":[{"id":1, "a":"x"},{"id":2}],"meta":{"next":"c2"}}"#;
        let page = parse_page(body, "data", "meta.next")?;
        assert_eq!(
            page.records,
            vec![r#"{"id":1, "a":"x"}"#.to_string(), r#"{"id":2}"#.into()]
        );
        assert_eq!(page.next_cursor.as_deref(), Some("c2"));
        let last = parse_page(br#"{"data":[],"meta":{"next":null}}"#, "data", "meta.next")?;
        assert_eq!(
            last,
            Page {
                records: vec![],
                next_cursor: None
            }
        );
        let bare = parse_page(br#"[{"id":1}]"#, "", "next")?;
        assert_eq!(bare.records.len(), 1);
        Ok(())
    }

    #[test]
    fn classifies_bad_pages() {
        let not_json = parse_page(b"<html>oops", "data", "next").unwrap_err();
        assert!(
            not_json.retryable && not_json.message.contains("not JSON"),
            "{not_json:?}"
        );
        let missing = parse_page(br#"{"items":[]}"#, "data", "next").unwrap_err();
        assert!(
            !missing.retryable && missing.message.contains("`data`"),
            "{missing:?}"
        );
    }

    #[test]
    fn reads_retry_after_in_both_forms() {
        let mut h = reqwest::header::HeaderMap::new();
        h.insert(
            reqwest::header::RETRY_AFTER,
            reqwest::header::HeaderValue::from_static("7"),
        );
        assert_eq!(retry_after(&h), Some(Duration::from_secs(7)));
        h.insert(
            reqwest::header::RETRY_AFTER,
            reqwest::header::HeaderValue::from_static("Sun, 06 Nov 1994 08:49:37 GMT"),
        );
        assert_eq!(retry_after(&h), Some(Duration::ZERO));
    }
}
