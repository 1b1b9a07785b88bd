//! Settings of the HTTP client a source (or an HTTP destination) uses: credentials
//! (`auth`), the request budget (`rate_limit`) and response rules (`on_response`).

use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::span::Span;

/// A secret read from an environment variable: `{ env = "SHOP_TOKEN" }`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FromEnv {
    /// The environment variable's name.
    pub env: String,
}

/// A value written in the file (`"alice"`) or read from the environment (`{ env = "X" }`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum Setting {
    /// Written in the file.
    Literal(String),
    /// Read from an environment variable.
    Env(FromEnv),
}

/// Where an API key goes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum KeyIn {
    /// A request header (default).
    #[default]
    Header,
    /// A query parameter.
    Query,
}

/// How OAuth2 client credentials reach the token endpoint.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ClientAuth {
    /// HTTP basic authentication (RFC 6749 §2.3.1; default).
    #[default]
    Basic,
    /// `client_id` and `client_secret` form fields.
    Body,
}

/// `[source.auth]`: how requests authenticate.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum AuthSection {
    /// `Authorization: Bearer <token>`.
    Bearer {
        /// The token.
        token: FromEnv,
    },
    /// `Authorization: Basic …`.
    Basic {
        /// The user name.
        username: Setting,
        /// The password.
        password: FromEnv,
    },
    /// An API key in a header or a query parameter.
    ApiKey {
        /// Header or parameter name, e.g. `X-Api-Key`.
        name: String,
        /// `header` (default) or `query`.
        #[serde(rename = "in", default)]
        location: KeyIn,
        /// The key.
        key: FromEnv,
    },
    /// OAuth2: client credentials, or a refresh token when one is given. The access token
    /// is kept in memory only, refreshed `refresh_before` its expiry and once on a 401.
    Oauth2 {
        /// The token endpoint.
        token_url: String,
        /// The client id.
        client_id: Setting,
        /// The client secret.
        client_secret: FromEnv,
        /// A refresh token: use the `refresh_token` grant instead of `client_credentials`.
        refresh_token: Option<FromEnv>,
        /// Requested scope.
        scope: Option<String>,
        /// `basic` (default) or `body`.
        #[serde(default)]
        client_auth: ClientAuth,
        /// Refresh this long before the token expires (default 60s).
        #[serde(default = "default_refresh_before")]
        refresh_before: Span,
    },
}

fn default_refresh_before() -> Span {
    Span(Duration::from_secs(60))
}

/// `rate_limit = { requests = 10, per = "1s" }`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    /// Requests allowed…
    pub requests: u32,
    /// …per this period.
    pub per: Span,
    /// Requests that may go back to back after a quiet spell (default 1: evenly spaced).
    #[serde(default = "one")]
    pub burst: u32,
    /// With `[tenants]`: one budget for every tenant together (an API that limits the
    /// application, not each account); by default each tenant has its own.
    #[serde(default)]
    pub across_tenants: bool,
    /// A response header stating the API's leaky bucket as `used/size` (Shopify's
    /// `X-Shopify-Shop-Api-Call-Limit: 32/40`): the bucket is shared with the account's other
    /// clients, so its level as the API counts it is believed over the local count when
    /// higher. Describe the bucket itself as its size in `requests` and `burst`, and the
    /// time it takes to leak empty in `per` (Shopify: 40 per 20s, burst 40).
    pub bucket_header: Option<String>,
}

fn one() -> u32 {
    1
}

/// What to do with a response.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Use the response (the default for 2xx).
    Accept,
    /// Retry after a backoff (or the `Retry-After` the response carries).
    Retry,
    /// Fail the run with the status and an excerpt of the body.
    Fail,
    /// Skip: journaled, and the page counts as an empty last page (a child stream moves on
    /// to its next parent).
    Ignore,
    /// A throttle: retry after `Retry-After` (or `wait`, or a backoff); every stream of
    /// the source holds back until then.
    RateLimited,
    /// Fetch a new OAuth2 token and send the request again, once.
    RefreshAuth,
}

/// A status code or a list of them: `status = 400` or `status = [400, 409]`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum Statuses {
    /// One code.
    One(u16),
    /// Several.
    Many(Vec<u16>),
}

impl Statuses {
    /// Whether `status` is one of them.
    pub fn contains(&self, status: u16) -> bool {
        match self {
            Statuses::One(s) => *s == status,
            Statuses::Many(all) => all.contains(&status),
        }
    }
}

/// `header = { name = "X-Error", contains = "quota" }`: the header is present (and holds
/// the text, when `contains` is given).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HeaderMatch {
    /// Header name (any case).
    pub name: String,
    /// Text the value must contain.
    pub contains: Option<String>,
}

/// One `[[source.on_response]]` (or `[[stream.on_response]]`) rule: every condition given
/// must hold.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ResponseRule {
    /// The status is one of these.
    pub status: Option<Statuses>,
    /// A header is present (and contains a text).
    pub header: Option<HeaderMatch>,
    /// The body contains this text.
    pub body_contains: Option<String>,
    /// What to do.
    pub action: Action,
    /// For `retry` and `rate_limited` when the response has no `Retry-After`: wait this
    /// long (default: the backoff).
    pub wait: Option<Span>,
}

impl ResponseRule {
    /// Whether the rule has a condition at all (a rule without one is a mistake).
    pub fn has_condition(&self) -> bool {
        self.status.is_some() || self.header.is_some() || self.body_contains.is_some()
    }
}
