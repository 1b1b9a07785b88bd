//! The HTTP client every connector shares: [`Api::send`] is the only way a request leaves
//! (wait at the rate gate, sign, send, read quota headers, judge the response).
//!
//! - [`api`]: [`Api`], what the streams of one source (or an HTTP destination) share.
//! - [`auth`]: credentials from environment variables, OAuth2 tokens.
//! - [`connects`]: counting the connections a client begins (when a request reached the API).
//! - [`secrets`]: [`Secrets`](secrets::Secrets), masking every form of a secret value.
//! - [`excerpt`]: API text fit to show: body excerpts, control characters escaped.
//! - [`rate`]: the request budget (GCRA, quota headers, `Retry-After`), persisted.
//! - [`rules`]: what a response means (`on_response` rules, then the defaults).
//! - [`path_segment`]: a value percent-encoded as one path segment.

pub mod api;
pub mod auth;
mod connects;
pub mod excerpt;
pub mod rate;
pub mod rules;
pub mod secrets;

pub use api::Api;

/// `value` as one URL path segment: RFC 3986's unreserved characters kept, every other
/// byte percent-encoded (a `/` in a value never adds a segment).
pub fn path_segment(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                out.push(char::from(b))
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}
