//! One stream's webhook, ready to receive: its scheme, its secrets read from the
//! environment, its limits. [`Hook::receive`] decides on a request — size, content type,
//! signature, timestamp, event id — before anything else reads the body.

use std::time::Duration;

use reqwest::header::{HeaderMap, CONTENT_TYPE};
use serde_json::Value;
use waymark_engine::Timestamp;

use super::signature::{self, Encoding, Generic, Refusal, Scheme};
use crate::config::{HmacEncoding, SchemeName, WebhookSection};
use crate::record::{lookup, scalar};

/// A stream's webhook as the receiver checks requests.
#[derive(Clone)]
pub struct Hook {
    scheme: Scheme,
    keys: Vec<Vec<u8>>,
    tolerance: Duration,
    max_body: usize,
    id_path: Option<String>,
    /// How long ids are remembered.
    pub dedupe_keep: Duration,
}

/// Why a request is refused. The sender hears a generic answer with [`Refused::status`];
/// the reason goes to the log and to a metric ([`Refused::reason`]).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// The body is larger than `max_body_bytes`.
    #[error("the body is larger than {0} bytes")]
    TooLarge(usize),
    /// Not JSON by its content type.
    #[error("content type {0:?} is not JSON")]
    ContentType(Option<String>),
    /// The signature or its timestamp.
    #[error("{0}")]
    Signature(#[from] Refusal),
    /// The event has no id where the workflow says (or its body is not JSON).
    #[error("the event has no id at `{0}`")]
    NoId(String),
}

impl Refused {
    /// The HTTP status answered.
    pub fn status(&self) -> u16 {
        match self {
            Refused::TooLarge(_) => 413,
            Refused::ContentType(_) => 415,
            Refused::Signature(_) => 401,
            Refused::NoId(_) => 400,
        }
    }

    /// A short name, for a metric label.
    pub fn reason(&self) -> &'static str {
        match self {
            Refused::TooLarge(_) => "too_large",
            Refused::ContentType(_) => "content_type",
            Refused::Signature(r) => r.reason(),
            Refused::NoId(_) => "no_event_id",
        }
    }
}

impl Hook {
    /// The hook of `section`; `Err` names an environment variable that is unset or holds
    /// no usable secret (never a value).
    pub fn new(section: &WebhookSection) -> Result<Hook, String> {
        let scheme = match section.scheme {
            SchemeName::Standard => Scheme::Standard,
            SchemeName::Stripe => Scheme::Stripe,
            SchemeName::Github => Scheme::Github,
            SchemeName::Shopify => Scheme::Shopify,
            SchemeName::Hmac => {
                let h = section
                    .hmac
                    .as_ref()
                    .ok_or("`scheme = \"hmac\"` needs an `hmac` table")?;
                Scheme::Hmac(Generic {
                    header: h.header.clone(),
                    signed: h.signed.clone(),
                    encoding: match h.encoding {
                        HmacEncoding::Hex => Encoding::Hex,
                        HmacEncoding::Base64 => Encoding::Base64,
                    },
                    prefix: h.prefix.clone(),
                    timestamp_header: h.timestamp_header.clone(),
                    id_header: h.id_header.clone(),
                })
            }
        };
        let mut keys = Vec::new();
        for secret in &section.secrets {
            let value = std::env::var(&secret.env)
                .ok()
                .filter(|v| !v.is_empty())
                .ok_or_else(|| format!("the webhook secret ${} is not set", secret.env))?;
            let key = signature::key(&scheme, &value).ok_or_else(|| {
                format!(
                    "the webhook secret ${} is not a Standard Webhooks secret (whsec_<base64>)",
                    secret.env
                )
            })?;
            keys.push(key);
        }
        Ok(Hook {
            scheme,
            keys,
            tolerance: section.tolerance.0,
            max_body: usize::try_from(section.max_body_bytes).unwrap_or(usize::MAX),
            id_path: section.id_path().map(str::to_string),
            dedupe_keep: section.dedupe_keep.0,
        })
    }

    /// The largest body taken.
    pub fn max_body(&self) -> usize {
        self.max_body
    }

    /// Checks a request (`body` as received, at most [`Hook::max_body`] bytes read) at
    /// `now`: its event id if it is to be accepted.
    pub fn receive(
        &self,
        headers: &HeaderMap,
        body: &[u8],
        now: Timestamp,
    ) -> Result<Option<String>, Refused> {
        if body.len() > self.max_body {
            return Err(Refused::TooLarge(self.max_body));
        }
        let content_type = headers
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|v| {
                v.split(';')
                    .next()
                    .unwrap_or_default()
                    .trim()
                    .to_ascii_lowercase()
            });
        let json = content_type
            .as_deref()
            .is_some_and(|t| t == "application/json" || t.ends_with("+json"));
        if !json {
            return Err(Refused::ContentType(content_type));
        }
        let verified =
            signature::verify(&self.scheme, &self.keys, headers, body, now, self.tolerance)?;
        match &self.id_path {
            None => Ok(verified.event_id),
            Some(path) => serde_json::from_slice::<Value>(body)
                .ok()
                .and_then(|v| lookup(&v, path).and_then(scalar))
                .map(Some)
                .ok_or_else(|| Refused::NoId(path.clone())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::FromEnv;
    use crate::config::WebhookSection;
    use reqwest::header::HeaderValue;

    fn section(scheme: &str, extra: &str) -> WebhookSection {
        let text = format!(
            r#"scheme = "{scheme}"
secrets = [{{ env = "WAYMARK_TEST_HOOK_SECRET" }}]
max_body_bytes = 1024
{extra}"#
        );
        toml::from_str(&text).unwrap_or_else(|e| panic!("{e}"))
    }

    fn headers(signed: Vec<(&str, String)>, content_type: Option<&str>) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in signed {
            if let (Ok(name), Ok(value)) = (
                reqwest::header::HeaderName::from_bytes(name.as_bytes()),
                HeaderValue::from_str(&value),
            ) {
                map.insert(name, value);
            }
        }
        if let Some(t) = content_type.and_then(|t| HeaderValue::from_str(t).ok()) {
            map.insert(CONTENT_TYPE, t);
        }
        map
    }

    #[test]
    fn a_request_is_refused_for_its_size_type_signature_or_missing_id_before_anything_else() {
        // One variable for the whole test binary: set once, never changed.
        std::env::set_var("WAYMARK_TEST_HOOK_SECRET", "shh");
        let stripe = Hook::new(&section("stripe", "")).unwrap_or_else(|e| panic!("{e}"));
        let now = Timestamp(1_800_000_000_000);
        let body = br#"{"id":"evt_1","type":"order.updated"}"#;
        let key = b"shh".to_vec();
        let sign =
            |body: &[u8]| signature::sign(&Scheme::Stripe, &key, "", now, body).unwrap_or_default();
        let ok = headers(sign(body), Some("application/json; charset=utf-8"));
        assert_eq!(stripe.receive(&ok, body, now), Ok(Some("evt_1".into())));
        // `+json` types are JSON too.
        let vendor = headers(sign(body), Some("application/vnd.api+json"));
        assert!(stripe.receive(&vendor, body, now).is_ok());
        let refused = |h: &HeaderMap, b: &[u8]| {
            stripe
                .receive(h, b, now)
                .map_err(|r| (r.status(), r.reason()))
        };
        let large = vec![b' '; 1025];
        assert_eq!(refused(&ok, &large), Err((413, "too_large")));
        let text = headers(sign(body), Some("text/plain"));
        assert_eq!(refused(&text, body), Err((415, "content_type")));
        let none = headers(sign(body), None);
        assert_eq!(refused(&none, body), Err((415, "content_type")));
        assert_eq!(
            refused(&ok, br#"{"id":"evt_2","type":"order.updated"}"#),
            Err((401, "bad_signature"))
        );
        // Signed, but no id where the scheme reads it.
        let anonymous = br#"{"type":"order.updated"}"#;
        let signed = headers(sign(anonymous), Some("application/json"));
        assert_eq!(refused(&signed, anonymous), Err((400, "no_event_id")));
        // A secret that is not set is named, never shown.
        let mut unset = section("github", "");
        unset.secrets = vec![FromEnv {
            env: "WAYMARK_TEST_HOOK_UNSET".into(),
        }];
        assert_eq!(
            Hook::new(&unset).err(),
            Some("the webhook secret $WAYMARK_TEST_HOOK_UNSET is not set".into())
        );
    }
}
