//! `webhook = { … }` on a stream: `waymark serve` also takes the stream's change events at
//! `POST /hooks/{sync}/{stream}`, checks their signature, keeps them durably and applies
//! them beside the polling (see the `webhook` folder of this crate).

use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::filter::RecordFilter;
use super::http::FromEnv;
use super::span::Span;

/// A stream's webhook.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WebhookSection {
    /// How requests are signed: `standard` (Standard Webhooks), `stripe`, `github`,
    /// `shopify`, or `hmac` (described by the `hmac` table).
    pub scheme: SchemeName,
    /// The signing secrets, each from an environment variable; more than one while a
    /// secret is rotated (a signature by any of them is accepted).
    pub secrets: Vec<FromEnv>,
    /// A generic HMAC-SHA256 signature (with `scheme = "hmac"`).
    pub hmac: Option<HmacSection>,
    /// A request signed longer ago, or later, than this is refused (a replay).
    #[serde(default = "default_tolerance")]
    pub tolerance: Span,
    /// A larger body is refused (413).
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: u64,
    /// Dotted path of the event's id in the body (default: the scheme's id header;
    /// `id` for Stripe). Events are deduplicated by it.
    pub event_id: Option<String>,
    /// `payload` (default): the record is in the event, at `record_path`; `fetch`: the
    /// event names the record, which is read from the API at `fetch`.
    #[serde(default)]
    pub apply: ApplyMode,
    /// Dotted path of the record in the event (empty: the whole body). With `fetch`, what
    /// is there only has to name the record, and a deletion event's record is applied
    /// from it (its key, and its version at the stream's `cursor_field`).
    #[serde(default)]
    pub record_path: String,
    /// With `apply = "fetch"`: the path (after the base URL) of the record an event
    /// names; `{event.<path>}` is a value of the event, e.g. `/orders/{event.data.id}`.
    pub fetch: Option<String>,
    /// With `apply = "fetch"`: dotted path of the record in the API's answer (empty: the
    /// whole answer).
    #[serde(default)]
    pub fetch_record_path: String,
    /// Events whose value at a path is one of the listed values are deletions of their
    /// record (with `fetch`, nothing is fetched for them).
    pub deleted_when: Option<RecordFilter>,
    /// How long an event id is remembered: a delivery of the same id within it is a
    /// duplicate (answered 200, changing nothing).
    #[serde(default = "default_dedupe_keep")]
    pub dedupe_keep: Span,
}

/// The signature schemes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum SchemeName {
    /// Standard Webhooks (`webhook-id`, `webhook-timestamp`, `webhook-signature`).
    Standard,
    /// `Stripe-Signature`.
    Stripe,
    /// `X-Hub-Signature-256`.
    Github,
    /// `X-Shopify-Hmac-Sha256`.
    Shopify,
    /// A generic HMAC-SHA256 in a header.
    Hmac,
}

/// A generic HMAC-SHA256 signature.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HmacSection {
    /// The header holding the signature.
    pub header: String,
    /// What is signed: the body (default), or a template in which `{body}` is the body
    /// and `{header:Name}` a header's value, e.g. `"{header:X-Timestamp}.{body}"`.
    pub signed: Option<String>,
    /// `hex` (default) or `base64`.
    #[serde(default)]
    pub encoding: HmacEncoding,
    /// Text before the signature in the header, e.g. `"sha256="`.
    pub prefix: Option<String>,
    /// A header with the Unix time (seconds) of signing, checked against `tolerance`.
    pub timestamp_header: Option<String>,
    /// A header with the event's id.
    pub id_header: Option<String>,
}

/// How a generic signature is written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum HmacEncoding {
    /// Hex.
    #[default]
    Hex,
    /// Standard base64.
    Base64,
}

/// Where an applied event's record comes from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ApplyMode {
    /// The event carries it.
    #[default]
    Payload,
    /// The API, asked with the source's credentials, retries and rate budget.
    Fetch,
}

fn default_tolerance() -> Span {
    Span(Duration::from_secs(300))
}

fn default_max_body_bytes() -> u64 {
    1024 * 1024
}

fn default_dedupe_keep() -> Span {
    Span(Duration::from_secs(7 * 24 * 3600))
}

impl WebhookSection {
    /// The dotted path of the event id in the body, if the id is read from the body.
    pub fn id_path(&self) -> Option<&str> {
        match (&self.event_id, self.scheme) {
            (Some(path), _) => Some(path),
            (None, SchemeName::Stripe) => Some("id"),
            _ => None,
        }
    }

    /// What is wrong with the section: the key (below `webhook`) and why.
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        if self.secrets.is_empty() {
            return Err((
                "secrets",
                "give at least one, e.g. [{ env = \"SHOP_WEBHOOK_SECRET\" }]".into(),
            ));
        }
        match (self.scheme, &self.hmac) {
            (SchemeName::Hmac, None) => {
                return Err((
                    "hmac",
                    "`scheme = \"hmac\"` needs an `hmac` table: { header = \"X-Signature\" }"
                        .into(),
                ))
            }
            (SchemeName::Hmac, Some(h)) => {
                if h.header.trim().is_empty() {
                    return Err((
                        "hmac.header",
                        "name the header holding the signature".into(),
                    ));
                }
                if h.signed.as_ref().is_some_and(|s| !s.contains("{body}")) {
                    return Err((
                        "hmac.signed",
                        "the signed text must contain `{body}`, e.g. \"{header:X-Timestamp}.{body}\""
                            .into(),
                    ));
                }
                if h.id_header.is_none() && self.event_id.is_none() {
                    return Err((
                        "hmac",
                        "events need an id to be deduplicated: give `hmac.id_header` or \
                         `event_id` (a path in the body)"
                            .into(),
                    ));
                }
            }
            (_, Some(_)) => {
                return Err((
                    "hmac",
                    "applies to `scheme = \"hmac\"` only (the presets know their headers)".into(),
                ))
            }
            (_, None) => {}
        }
        if self.tolerance.0 < Duration::from_secs(1) {
            return Err(("tolerance", "must be at least 1s".into()));
        }
        if self.max_body_bytes < 1024 {
            return Err(("max_body_bytes", "must be at least 1024".into()));
        }
        if self.dedupe_keep.0 < Duration::from_secs(60) {
            return Err((
                "dedupe_keep",
                "must be at least 1m: a sender retries for hours".into(),
            ));
        }
        match (self.apply, &self.fetch) {
            (ApplyMode::Fetch, None) => Err((
                "fetch",
                "`apply = \"fetch\"` needs the record's path, e.g. \"/orders/{event.data.id}\""
                    .into(),
            )),
            (ApplyMode::Fetch, Some(path)) if !path.contains("{event.") => Err((
                "fetch",
                "name the record with a value of the event, e.g. \"/orders/{event.data.id}\""
                    .into(),
            )),
            (ApplyMode::Payload, Some(_)) => {
                Err(("fetch", "applies to `apply = \"fetch\"` only".into()))
            }
            (ApplyMode::Payload, None) if !self.fetch_record_path.is_empty() => Err((
                "fetch_record_path",
                "applies to `apply = \"fetch\"` only".into(),
            )),
            _ => Ok(()),
        }
    }
}
