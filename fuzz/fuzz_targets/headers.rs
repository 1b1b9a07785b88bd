//! Any response headers through what Waymark reads from them: the `Link` header's next
//! page, `Retry-After` (seconds or an HTTP date) and the quota headers (`RateLimit-*`,
//! `X-RateLimit-*`, combined `RateLimit`). Never a panic, and each answer is one the
//! headers state.
#![no_main]

use libfuzzer_sys::fuzz_target;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use waymark_connectors::http::api::retry_after;
use waymark_connectors::http::rate::Quota;
use waymark_connectors::source::link_next;
use waymark_engine::time::Timestamp;

/// Names the readers look at, so that most lines hit one.
const NAMES: [&str; 10] = [
    "link",
    "retry-after",
    "ratelimit",
    "ratelimit-remaining",
    "ratelimit-limit",
    "ratelimit-reset",
    "x-ratelimit-remaining",
    "x-ratelimit-limit",
    "x-ratelimit-reset",
    "x-other",
];

fuzz_target!(|data: &[u8]| {
    let Some((&now, rest)) = data.split_first() else {
        return;
    };
    // The clock: some time between 1970 and 2100.
    let now = Timestamp(u64::from(now) * 16_000_000_000);
    let mut headers = HeaderMap::new();
    // Each line: a name selector byte, then the value's bytes.
    for line in rest.split(|b| *b == b'\n') {
        let Some((&which, value)) = line.split_first() else {
            continue;
        };
        let name = HeaderName::from_static(NAMES[usize::from(which) % NAMES.len()]);
        if let Ok(value) = HeaderValue::from_bytes(value) {
            headers.append(name, value);
        }
    }

    if let Some(next) = link_next(&headers) {
        let stated = headers
            .get_all("link")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| v.contains(&format!("<{next}>")));
        assert!(stated, "a next link no header holds: {next:?}");
    }

    if let Some(wait) = retry_after(&headers, now) {
        let text = headers
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .expect("a wait from a readable header");
        if let Ok(secs) = text.trim().parse::<u64>() {
            assert_eq!(wait.as_secs(), secs);
        }
    }

    if let Some(quota) = Quota::read(&headers, now) {
        let stated = headers
            .iter()
            .filter(|(n, _)| n.as_str().contains("ratelimit"))
            .filter_map(|(_, v)| v.to_str().ok())
            .any(|v| v.contains(&quota.remaining.to_string()));
        assert!(stated, "remaining {} in no header", quota.remaining);
        if let Some(limit) = quota.limit {
            let stated = headers
                .iter()
                .filter_map(|(_, v)| v.to_str().ok())
                .any(|v| v.contains(&limit.to_string()));
            assert!(stated, "limit {limit} in no header");
        }
    }
});
