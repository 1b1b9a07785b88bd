//! Credentials: how a request proves who sends it. Secrets are read from environment
//! variables when the source is built (a missing one is an error before any request), and
//! every value that could reveal one is registered with [`Secrets`], which masks it (in
//! every form an API may echo it in) in every message the source produces.

use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use base64::Engine as _;
use reqwest::header::{HeaderName, HeaderValue, AUTHORIZATION};
use serde::Deserialize;

use waymark_engine::source::{self, ErrorKind};
use waymark_engine::{Clock, Timestamp};

use crate::config::{AuthSection, ClientAuth, FromEnv, KeyIn, Setting};
pub use crate::http::secrets::Secrets;

/// Why credentials could not be resolved.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A variable the workflow names is not set.
    #[error("{at}.{key}: environment variable {var} is not set")]
    Missing {
        /// The table: `source.auth` or `destination.auth`.
        at: &'static str,
        /// The key naming it.
        key: &'static str,
        /// The variable.
        var: String,
    },
    /// A value cannot be sent (not a valid header, not a URL).
    #[error("{at}.{key}: {why}")]
    Invalid {
        /// The table: `source.auth` or `destination.auth`.
        at: &'static str,
        /// The key.
        key: &'static str,
        /// What is wrong (never the secret itself).
        why: String,
    },
}

/// Reads `var`, registering its value as a secret.
fn read(
    at: &'static str,
    key: &'static str,
    var: &FromEnv,
    secrets: &Secrets,
) -> Result<String, Error> {
    let value = std::env::var(&var.env).map_err(|_| Error::Missing {
        at,
        key,
        var: var.env.clone(),
    })?;
    secrets.add(&value);
    Ok(value)
}

fn setting(
    at: &'static str,
    key: &'static str,
    value: &Setting,
    secrets: &Secrets,
) -> Result<String, Error> {
    match value {
        Setting::Literal(text) => Ok(text.clone()),
        Setting::Env(var) => read(at, key, var, secrets),
    }
}

fn header(at: &'static str, key: &'static str, value: &str) -> Result<HeaderValue, Error> {
    let mut value = HeaderValue::from_str(value).map_err(|_| Error::Invalid {
        at,
        key,
        why: "the value is not a valid header value".into(),
    })?;
    value.set_sensitive(true);
    Ok(value)
}

/// An OAuth2 access token and when it expires.
#[derive(Clone, Debug)]
struct Token {
    value: HeaderValue,
    /// When to fetch the next one: `refresh_before` the expiry, or half-way through a
    /// token that lives shorter than twice that.
    refresh_at: Option<Timestamp>,
}

#[derive(Debug)]
struct OAuth2 {
    token_url: reqwest::Url,
    client_id: String,
    client_secret: String,
    refresh_token: Mutex<Option<String>>,
    scope: Option<String>,
    client_auth: ClientAuth,
    refresh_before: Duration,
    token: tokio::sync::Mutex<Option<Token>>,
}

/// Resolved credentials, ready to sign requests.
#[derive(Debug)]
enum Scheme {
    None,
    Header(HeaderName, HeaderValue),
    Query(String, String),
    OAuth2(Box<OAuth2>),
}

/// The credentials of one source, shared by its streams.
#[derive(Debug)]
pub struct Credentials {
    scheme: Scheme,
    secrets: Secrets,
}

impl Credentials {
    /// Reads the secrets `section` (the table `at`: `source.auth` or `destination.auth`)
    /// names from the environment.
    pub fn resolve(
        section: Option<&AuthSection>,
        at: &'static str,
        secrets: &Secrets,
    ) -> Result<Self, Error> {
        let scheme = match section {
            None => Scheme::None,
            Some(AuthSection::Bearer { token }) => {
                let token = read(at, "token", token, secrets)?;
                Scheme::Header(
                    AUTHORIZATION,
                    header(at, "token", &format!("Bearer {token}"))?,
                )
            }
            Some(AuthSection::Basic { username, password }) => {
                let user = setting(at, "username", username, secrets)?;
                let password = read(at, "password", password, secrets)?;
                let encoded =
                    base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
                secrets.add(&encoded);
                Scheme::Header(
                    AUTHORIZATION,
                    header(at, "password", &format!("Basic {encoded}"))?,
                )
            }
            Some(AuthSection::ApiKey {
                name,
                location,
                key,
            }) => {
                let key = read(at, "key", key, secrets)?;
                match location {
                    KeyIn::Header => {
                        let name = HeaderName::from_bytes(name.as_bytes()).map_err(|e| {
                            Error::Invalid {
                                at,
                                key: "name",
                                why: format!("`{name}` is not a header name: {e}"),
                            }
                        })?;
                        Scheme::Header(name, header(at, "key", &key)?)
                    }
                    KeyIn::Query => Scheme::Query(name.clone(), key),
                }
            }
            Some(AuthSection::Oauth2 {
                token_url,
                client_id,
                client_secret,
                refresh_token,
                scope,
                client_auth,
                refresh_before,
            }) => {
                let token_url = reqwest::Url::parse(token_url).map_err(|e| Error::Invalid {
                    at,
                    key: "token_url",
                    why: format!("`{token_url}` is not a URL: {e}"),
                })?;
                Scheme::OAuth2(Box::new(OAuth2 {
                    token_url,
                    client_id: setting(at, "client_id", client_id, secrets)?,
                    client_secret: read(at, "client_secret", client_secret, secrets)?,
                    refresh_token: Mutex::new(
                        refresh_token
                            .as_ref()
                            .map(|t| read(at, "refresh_token", t, secrets))
                            .transpose()?,
                    ),
                    scope: scope.clone(),
                    client_auth: *client_auth,
                    refresh_before: refresh_before.0,
                    token: tokio::sync::Mutex::new(None),
                }))
            }
        };
        Ok(Credentials {
            scheme,
            secrets: secrets.clone(),
        })
    }

    /// The query parameter holding an API key, if the key goes in the query.
    pub fn query_param(&self) -> Option<&str> {
        match &self.scheme {
            Scheme::Query(name, _) => Some(name),
            _ => None,
        }
    }

    /// Whether a 401 can be cured by fetching a new token.
    pub fn refreshable(&self) -> bool {
        matches!(self.scheme, Scheme::OAuth2(_))
    }

    /// Forgets the current OAuth2 token, so the next request fetches a new one.
    pub async fn invalidate(&self) {
        if let Scheme::OAuth2(oauth) = &self.scheme {
            *oauth.token.lock().await = None;
        }
    }

    /// Adds the credentials to `request`, fetching or refreshing an OAuth2 token first
    /// when needed.
    pub async fn sign(
        &self,
        client: &reqwest::Client,
        clock: &dyn Clock,
        request: &mut reqwest::Request,
    ) -> Result<(), source::Error> {
        match &self.scheme {
            Scheme::None => {}
            Scheme::Header(name, value) => {
                request.headers_mut().insert(name.clone(), value.clone());
            }
            Scheme::Query(name, value) => {
                request.url_mut().query_pairs_mut().append_pair(name, value);
            }
            Scheme::OAuth2(oauth) => {
                let mut token = oauth.token.lock().await;
                let now = clock.now();
                let fresh = token
                    .as_ref()
                    .is_some_and(|t| t.refresh_at.is_none_or(|at| now < at));
                if !fresh {
                    *token = Some(self.fetch_token(oauth, client, now).await?);
                }
                if let Some(t) = token.as_ref() {
                    request.headers_mut().insert(AUTHORIZATION, t.value.clone());
                }
            }
        }
        Ok(())
    }

    async fn fetch_token(
        &self,
        oauth: &OAuth2,
        client: &reqwest::Client,
        now: Timestamp,
    ) -> Result<Token, source::Error> {
        let refresh = oauth
            .refresh_token
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let mut form: Vec<(&str, &str)> = match &refresh {
            Some(r) => vec![("grant_type", "refresh_token"), ("refresh_token", r)],
            None => vec![("grant_type", "client_credentials")],
        };
        if let Some(scope) = &oauth.scope {
            form.push(("scope", scope));
        }
        let mut builder = client.post(oauth.token_url.clone());
        match oauth.client_auth {
            ClientAuth::Basic => {
                builder = builder.basic_auth(&oauth.client_id, Some(&oauth.client_secret));
            }
            ClientAuth::Body => {
                form.push(("client_id", &oauth.client_id));
                form.push(("client_secret", &oauth.client_secret));
            }
        }
        let what = format!("OAuth2 token request to {}", oauth.token_url.path());
        let response = builder.form(&form).send().await.map_err(|e| {
            source::Error::new(
                ErrorKind::Retry,
                format!("{what} failed: {}", e.without_url()),
            )
        })?;
        let status = response.status();
        let body = response.bytes().await.map_err(|e| {
            source::Error::new(
                ErrorKind::Retry,
                format!("{what}: reading the answer failed: {}", e.without_url()),
            )
        })?;
        if !status.is_success() {
            let kind = if status.is_server_error() || status.as_u16() == 429 {
                ErrorKind::Retry
            } else {
                ErrorKind::Fatal
            };
            let excerpt = self.secrets.excerpt(&body);
            return Err(source::Error {
                status: Some(status.as_u16()),
                ..source::Error::new(kind, format!("{what}: HTTP {status}: {excerpt}"))
            });
        }
        #[derive(Deserialize)]
        struct Answer {
            access_token: String,
            expires_in: Option<u64>,
            refresh_token: Option<String>,
        }
        let answer: Answer = serde_json::from_slice(&body).map_err(|e| {
            source::Error::new(
                ErrorKind::Fatal,
                format!("{what}: the answer has no usable access_token ({e})"),
            )
        })?;
        self.secrets.add(&answer.access_token);
        if let Some(rotated) = answer.refresh_token {
            self.secrets.add(&rotated);
            *oauth
                .refresh_token
                .lock()
                .unwrap_or_else(PoisonError::into_inner) = Some(rotated);
        }
        let value = header(
            "oauth2",
            "access_token",
            &format!("Bearer {}", answer.access_token),
        )
        .map_err(|e| source::Error::new(ErrorKind::Fatal, e.to_string()))?;
        tracing::info!(
            "fetched an OAuth2 access token{}",
            answer
                .expires_in
                .map_or(String::new(), |s| format!(" valid for {s}s"))
        );
        let refresh_at = answer.expires_in.map(|secs| {
            let life = Duration::from_secs(secs);
            let early = oauth.refresh_before.min(life / 2);
            Timestamp(
                now.0
                    .saturating_add(u64::try_from((life - early).as_millis()).unwrap_or(u64::MAX)),
            )
        });
        Ok(Token { value, refresh_at })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_variable_is_named_before_any_request() {
        let section = AuthSection::Bearer {
            token: FromEnv {
                env: "WAYMARK_TEST_SURELY_UNSET".into(),
            },
        };
        let err = Credentials::resolve(Some(&section), "source.auth", &Secrets::default())
            .err()
            .map(|e| e.to_string());
        assert_eq!(
            err.as_deref(),
            Some("source.auth.token: environment variable WAYMARK_TEST_SURELY_UNSET is not set")
        );
    }
}
