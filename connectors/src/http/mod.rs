//! The HTTP client every connector shares: [`Api::send`] is the only way a request leaves
//! (wait at the rate gate, sign, send, read quota headers, judge the response).
//!
//! - [`api`]: [`Api`], what the streams of one source (or an HTTP destination) share.
//! - [`auth`]: credentials from environment variables, OAuth2 tokens.
//! - [`secrets`]: [`Secrets`](secrets::Secrets), masking every form of a secret value.
//! - [`excerpt`]: API text fit to show: body excerpts, control characters escaped.
//! - [`rate`]: the request budget (GCRA, quota headers, `Retry-After`), persisted.
//! - [`rules`]: what a response means (`on_response` rules, then the defaults).

pub mod api;
pub mod auth;
pub mod excerpt;
pub mod rate;
pub mod rules;
pub mod secrets;

pub use api::Api;
