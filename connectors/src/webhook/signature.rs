//! Webhook signatures, as the senders document them. Every scheme is HMAC-SHA256, computed
//! over the exact raw body (and, for some, a timestamp and an id) before anything parses
//! it, compared in constant time, against each of several secrets (a rotation keeps the
//! old one beside the new one for a while). A timestamp outside the tolerance is refused,
//! so a captured request cannot be replayed later. [`sign`] writes the same headers the way
//! a sender does (the sandbox's webhooks, and tests).
//!
//! | scheme | signature | signed | id | timestamp |
//! |---|---|---|---|---|
//! | `standard` (Standard Webhooks) | `webhook-signature: v1,<base64> …` | `id.timestamp.body` | `webhook-id` | `webhook-timestamp` (Unix s) |
//! | `stripe` | `Stripe-Signature: t=…,v1=<hex>[,v1=…]` | `t.body` | the body's `id` | `t` |
//! | `github` | `X-Hub-Signature-256: sha256=<hex>` | body | `X-GitHub-Delivery` | — |
//! | `shopify` | `X-Shopify-Hmac-Sha256: <base64>` | body | `X-Shopify-Webhook-Id` | — |
//! | `hmac` | a header, hex or base64, an optional prefix | body, or a template | a header | a header (Unix s) |

use std::time::Duration;

use base64::Engine;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use ring::hmac;
use waymark_engine::Timestamp;

/// How the signature is written: the presets, or a generic HMAC.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scheme {
    /// Standard Webhooks (Svix and others): secrets are `whsec_<base64>`.
    Standard,
    /// Stripe.
    Stripe,
    /// GitHub.
    Github,
    /// Shopify.
    Shopify,
    /// Any HMAC-SHA256 in a header.
    Hmac(Generic),
}

/// A generic HMAC-SHA256 signature.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Generic {
    /// The header holding the signature.
    pub header: String,
    /// What is signed: the body (`None`), or a template in which `{body}` is the body and
    /// `{header:Name}` a header's value, e.g. `{header:X-Timestamp}.{body}`.
    pub signed: Option<String>,
    /// How the signature is written.
    pub encoding: Encoding,
    /// Text before the signature in the header, e.g. `sha256=`.
    pub prefix: Option<String>,
    /// A header with the Unix time (seconds) the request was signed at, checked against
    /// the tolerance.
    pub timestamp_header: Option<String>,
    /// A header with the event's id.
    pub id_header: Option<String>,
}

/// Hex or base64.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Encoding {
    /// Lower- or upper-case hex.
    Hex,
    /// Standard base64.
    Base64,
}

/// What a verified request says about itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verified {
    /// The event's id, when the scheme carries one in a header.
    pub event_id: Option<String>,
    /// When it was signed, when the scheme says.
    pub signed_at: Option<Timestamp>,
}

/// Why a request is refused. For the log and a metric by reason; the sender gets a generic
/// answer.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// A header the scheme needs is missing (or not text).
    #[error("missing header {0}")]
    Missing(String),
    /// A header is there but not in the scheme's form.
    #[error("malformed header {0}")]
    Malformed(String),
    /// No signature matches any secret.
    #[error("no signature matches")]
    Mismatch,
    /// Signed longer ago than the tolerance.
    #[error("signed {0:?} ago, beyond the tolerance")]
    TooOld(Duration),
    /// Signed later than now by more than the tolerance.
    #[error("signed {0:?} in the future, beyond the tolerance")]
    InTheFuture(Duration),
}

impl Refusal {
    /// A short name, for a metric label.
    pub fn reason(&self) -> &'static str {
        match self {
            Refusal::Missing(_) => "missing_header",
            Refusal::Malformed(_) => "malformed_header",
            Refusal::Mismatch => "bad_signature",
            Refusal::TooOld(_) => "too_old",
            Refusal::InTheFuture(_) => "in_the_future",
        }
    }
}

/// The keys of a scheme's secrets as written (a Standard Webhooks secret `whsec_<base64>` is
/// its decoded bytes; any other secret is its text). `None` for a Standard Webhooks secret
/// that is not in that form.
pub fn key(scheme: &Scheme, secret: &str) -> Option<Vec<u8>> {
    match scheme {
        Scheme::Standard => {
            let encoded = secret.strip_prefix("whsec_").unwrap_or(secret);
            base64::engine::general_purpose::STANDARD
                .decode(encoded)
                .ok()
        }
        _ => Some(secret.as_bytes().to_vec()),
    }
}

/// Verifies a request of `scheme` with `headers` and the raw `body` against `keys` (see
/// [`key`]) at `now`, allowing `tolerance` between its timestamp and now.
pub fn verify(
    scheme: &Scheme,
    keys: &[Vec<u8>],
    headers: &HeaderMap,
    body: &[u8],
    now: Timestamp,
    tolerance: Duration,
) -> Result<Verified, Refusal> {
    let (signed, signatures, event_id, seconds) = match scheme {
        Scheme::Standard => {
            let id = text(headers, "webhook-id")?;
            let seconds = text(headers, "webhook-timestamp")?;
            let signed = [id.as_bytes(), b".", seconds.as_bytes(), b".", body].concat();
            let signatures = text(headers, "webhook-signature")?
                .split(' ')
                .filter_map(|s| s.strip_prefix("v1,"))
                .filter_map(|s| base64::engine::general_purpose::STANDARD.decode(s).ok())
                .collect();
            (
                signed,
                signatures,
                Some(id),
                Some(("webhook-timestamp", seconds)),
            )
        }
        Scheme::Stripe => {
            let header = text(headers, "stripe-signature")?;
            let pairs: Vec<(&str, &str)> = header
                .split(',')
                .filter_map(|p| p.trim().split_once('='))
                .collect();
            let seconds = pairs
                .iter()
                .find(|(k, _)| *k == "t")
                .map(|(_, v)| v.to_string())
                .ok_or_else(|| Refusal::Malformed("stripe-signature".into()))?;
            let signed = [seconds.as_bytes(), b".", body].concat();
            let signatures = pairs
                .iter()
                .filter(|(k, _)| *k == "v1")
                .filter_map(|(_, v)| hex(v))
                .collect();
            (
                signed,
                signatures,
                None,
                Some(("stripe-signature", seconds)),
            )
        }
        Scheme::Github => {
            let header = text(headers, "x-hub-signature-256")?;
            let signature = header
                .strip_prefix("sha256=")
                .and_then(hex)
                .ok_or_else(|| Refusal::Malformed("x-hub-signature-256".into()))?;
            let id = optional(headers, "x-github-delivery");
            (body.to_vec(), vec![signature], id, None)
        }
        Scheme::Shopify => {
            let header = text(headers, "x-shopify-hmac-sha256")?;
            let signature = base64::engine::general_purpose::STANDARD
                .decode(header.trim())
                .map_err(|_| Refusal::Malformed("x-shopify-hmac-sha256".into()))?;
            let id = optional(headers, "x-shopify-webhook-id");
            (body.to_vec(), vec![signature], id, None)
        }
        Scheme::Hmac(generic) => {
            let header = text(headers, &generic.header)?;
            let written = match &generic.prefix {
                Some(prefix) => header
                    .strip_prefix(prefix.as_str())
                    .ok_or_else(|| Refusal::Malformed(generic.header.clone()))?,
                None => header.as_str(),
            };
            let signature = match generic.encoding {
                Encoding::Hex => hex(written.trim()),
                Encoding::Base64 => base64::engine::general_purpose::STANDARD
                    .decode(written.trim())
                    .ok(),
            }
            .ok_or_else(|| Refusal::Malformed(generic.header.clone()))?;
            let signed = match &generic.signed {
                Some(template) => fill(template, headers, body)?,
                None => body.to_vec(),
            };
            let id = match &generic.id_header {
                Some(name) => Some(text(headers, name)?),
                None => None,
            };
            let seconds = match &generic.timestamp_header {
                Some(name) => Some((name.as_str(), text(headers, name)?)),
                None => None,
            };
            (signed, vec![signature], id, seconds)
        }
    };
    // The signature first: a forged request learns nothing from the timestamp check.
    let matches = keys.iter().any(|key| {
        let key = hmac::Key::new(hmac::HMAC_SHA256, key);
        signatures
            .iter()
            .any(|s: &Vec<u8>| hmac::verify(&key, &signed, s).is_ok())
    });
    if !matches {
        return Err(Refusal::Mismatch);
    }
    let signed_at = match seconds {
        Some((name, seconds)) => {
            let seconds: u64 = seconds
                .trim()
                .parse()
                .map_err(|_| Refusal::Malformed(name.to_string()))?;
            let at = Timestamp(seconds.saturating_mul(1000));
            if now.0 > at.0 && now.since(at) > tolerance {
                return Err(Refusal::TooOld(now.since(at)));
            }
            if at.0 > now.0 && at.since(now) > tolerance {
                return Err(Refusal::InTheFuture(at.since(now)));
            }
            Some(at)
        }
        None => None,
    };
    Ok(Verified {
        event_id,
        signed_at,
    })
}

/// The headers a sender of `scheme` puts on a request carrying event `id` with the raw
/// `body`, signed with `key` (see [`key`]) at `at` (whole seconds; the table at the top
/// says which header holds what). A Stripe event's id travels in its body, so no header
/// carries it. `None` only for a generic scheme whose `signed` template names a header
/// other than its timestamp and id headers: the sender cannot know that header's value.
pub fn sign<'a>(
    scheme: &'a Scheme,
    key: &[u8],
    id: &str,
    at: Timestamp,
    body: &[u8],
) -> Option<Vec<(&'a str, String)>> {
    let seconds = (at.0 / 1000).to_string();
    let key = hmac::Key::new(hmac::HMAC_SHA256, key);
    let mac = |signed: &[u8]| hmac::sign(&key, signed);
    let base64 = |tag: hmac::Tag| base64::engine::general_purpose::STANDARD.encode(tag);
    let headers = match scheme {
        Scheme::Standard => {
            let signed = [id.as_bytes(), b".", seconds.as_bytes(), b".", body].concat();
            let signature = format!("v1,{}", base64(mac(&signed)));
            vec![
                ("webhook-id", id.to_string()),
                ("webhook-timestamp", seconds),
                ("webhook-signature", signature),
            ]
        }
        Scheme::Stripe => {
            let signed = [seconds.as_bytes(), b".", body].concat();
            let signature = format!("t={seconds},v1={}", to_hex(mac(&signed).as_ref()));
            vec![("Stripe-Signature", signature)]
        }
        Scheme::Github => vec![
            (
                "X-Hub-Signature-256",
                format!("sha256={}", to_hex(mac(body).as_ref())),
            ),
            ("X-GitHub-Delivery", id.to_string()),
        ],
        Scheme::Shopify => vec![
            ("X-Shopify-Hmac-Sha256", base64(mac(body))),
            ("X-Shopify-Webhook-Id", id.to_string()),
        ],
        Scheme::Hmac(generic) => {
            let mut headers: Vec<(&str, String)> = Vec::with_capacity(3);
            if let Some(name) = &generic.timestamp_header {
                headers.push((name.as_str(), seconds));
            }
            if let Some(name) = &generic.id_header {
                headers.push((name.as_str(), id.to_string()));
            }
            let signed = match &generic.signed {
                Some(template) => {
                    let known: HeaderMap = headers
                        .iter()
                        .filter_map(|(name, value)| {
                            Some((
                                HeaderName::from_bytes(name.as_bytes()).ok()?,
                                HeaderValue::from_str(value).ok()?,
                            ))
                        })
                        .collect();
                    fill(template, &known, body).ok()?
                }
                None => body.to_vec(),
            };
            let tag = mac(&signed);
            let written = match generic.encoding {
                Encoding::Hex => to_hex(tag.as_ref()),
                Encoding::Base64 => base64(tag),
            };
            let prefix = generic.prefix.as_deref().unwrap_or("");
            headers.push((generic.header.as_str(), format!("{prefix}{written}")));
            headers
        }
    };
    Some(headers)
}

/// A header's value as text, or why not.
fn text(headers: &HeaderMap, name: &str) -> Result<String, Refusal> {
    let value = headers
        .get(name)
        .ok_or_else(|| Refusal::Missing(name.to_ascii_lowercase()))?;
    value
        .to_str()
        .map(str::to_string)
        .map_err(|_| Refusal::Missing(name.to_ascii_lowercase()))
}

fn optional(headers: &HeaderMap, name: &str) -> Option<String> {
    text(headers, name).ok().filter(|v| !v.is_empty())
}

/// A template with `{body}` and `{header:Name}` filled in.
fn fill(template: &str, headers: &HeaderMap, body: &[u8]) -> Result<Vec<u8>, Refusal> {
    let mut out = Vec::with_capacity(template.len() + body.len());
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        out.extend_from_slice(&rest.as_bytes()[..open]);
        let after = &rest[open + 1..];
        let Some(close) = after.find('}') else {
            out.extend_from_slice(&rest.as_bytes()[open..]);
            return Ok(out);
        };
        match &after[..close] {
            "body" => out.extend_from_slice(body),
            field => match field.strip_prefix("header:") {
                Some(name) => out.extend_from_slice(text(headers, name)?.as_bytes()),
                None => out.extend_from_slice(&rest.as_bytes()[open..open + close + 2]),
            },
        }
        rest = &after[close + 1..];
    }
    out.extend_from_slice(rest.as_bytes());
    Ok(out)
}

/// Bytes as lower-case hex digits.
fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Hex digits as bytes.
fn hex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
#[path = "signature_tests.rs"]
mod tests;
