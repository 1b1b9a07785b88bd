//! What a response means: the workflow's `on_response` rules first (a stream's, then the
//! source's), then the defaults — 2xx accepted; 429 rate limited; 5xx retried; 401 fails
//! (or refreshes an OAuth2 token once); 403 and other 4xx fail.

use std::time::Duration;

use reqwest::header::HeaderMap;
use reqwest::StatusCode;

use crate::config::{Action, ResponseRule};

impl ResponseRule {
    fn matches(&self, status: u16, headers: &HeaderMap, body: &[u8]) -> bool {
        self.status.as_ref().is_none_or(|s| s.contains(status))
            && self.header.as_ref().is_none_or(|h| {
                headers.get_all(h.name.as_str()).iter().any(|v| {
                    h.contains
                        .as_ref()
                        .is_none_or(|text| String::from_utf8_lossy(v.as_bytes()).contains(text))
                })
            })
            && self
                .body_contains
                .as_ref()
                .is_none_or(|text| contains(body, text.as_bytes()))
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || haystack.windows(needle.len()).any(|w| w == needle)
}

/// The rules that apply to a stream, each with the key naming it.
#[derive(Clone, Debug, Default)]
pub struct Rules(Vec<(String, ResponseRule)>);

impl Rules {
    /// The stream's rules (named `stream.<name>.on_response[i]`), then the source's.
    pub fn new(stream: &str, own: &[ResponseRule], source: &[ResponseRule]) -> Self {
        let named = |prefix: String, rules: &[ResponseRule]| {
            rules
                .iter()
                .enumerate()
                .map(move |(i, r)| (format!("{prefix}.on_response[{i}]"), r.clone()))
                .collect::<Vec<_>>()
        };
        let mut all = named(format!("stream.{stream}"), own);
        all.extend(named("source".into(), source));
        Rules(all)
    }

    /// These rules with `status` accepted before any of them, named `name` (a stream
    /// sending `If-None-Match` takes its `304`).
    pub fn accepting(mut self, status: u16, name: &str) -> Self {
        let rule = ResponseRule {
            status: Some(crate::config::Statuses::One(status)),
            header: None,
            body_contains: None,
            action: Action::Accept,
            wait: None,
        };
        self.0.insert(0, (name.to_string(), rule));
        self
    }

    /// The verdict on a response.
    pub fn judge(&self, status: StatusCode, headers: &HeaderMap, body: &[u8]) -> Verdict {
        for (name, rule) in &self.0 {
            if rule.matches(status.as_u16(), headers, body) {
                return Verdict {
                    action: rule.action,
                    rule: Some(name.clone()),
                    wait: rule.wait.map(|w| w.0),
                };
            }
        }
        let action = match status.as_u16() {
            200..=299 => Action::Accept,
            429 => Action::RateLimited,
            500..=599 => Action::Retry,
            401 => Action::RefreshAuth,
            _ => Action::Fail,
        };
        Verdict {
            action,
            rule: None,
            wait: None,
        }
    }
}

/// What a response calls for, and which rule said so.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    /// The action.
    pub action: Action,
    /// The rule's key (`None`: the defaults).
    pub rule: Option<String>,
    /// The rule's `wait`.
    pub wait: Option<Duration>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    fn rule(text: &str) -> ResponseRule {
        toml::from_str(text).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn rules_match_in_order_and_fall_back_to_the_defaults() {
        let stream = [rule("status = 404\naction = \"ignore\"")];
        let source = [
            rule("status = [200]\nbody_contains = \"\\\"error\\\"\"\naction = \"retry\""),
            rule("status = 400\nheader = { name = \"X-Throttle\" }\naction = \"rate_limited\"\nwait = \"30s\""),
        ];
        let rules = Rules::new("orders", &stream, &source);
        let none = HeaderMap::new();
        let judge = |code: u16, headers: &HeaderMap, body: &str| {
            let status = StatusCode::from_u16(code).unwrap_or(StatusCode::IM_A_TEAPOT);
            let v = rules.judge(status, headers, body.as_bytes());
            (v.action, v.rule, v.wait)
        };
        assert_eq!(
            judge(404, &none, ""),
            (
                Action::Ignore,
                Some("stream.orders.on_response[0]".into()),
                None
            )
        );
        assert_eq!(
            judge(200, &none, r#"{"error":"busy"}"#),
            (Action::Retry, Some("source.on_response[0]".into()), None)
        );
        assert_eq!(judge(200, &none, r#"{"data":[]}"#).0, Action::Accept);
        let mut throttled = HeaderMap::new();
        throttled.insert("x-throttle", HeaderValue::from_static("1"));
        assert_eq!(
            judge(400, &throttled, ""),
            (
                Action::RateLimited,
                Some("source.on_response[1]".into()),
                Some(Duration::from_secs(30))
            )
        );
        assert_eq!(judge(400, &none, "").0, Action::Fail);
        assert_eq!(judge(429, &none, "").0, Action::RateLimited);
        assert_eq!(judge(503, &none, "").0, Action::Retry);
        assert_eq!(judge(401, &none, "").0, Action::RefreshAuth);
        assert_eq!(judge(403, &none, "").0, Action::Fail);
    }
}
