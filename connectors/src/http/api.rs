//! What the streams of one source share: the HTTP client (rustls, timeouts, extra CA
//! certificates), the credentials, the request budget and the response rules. [`Api::send`]
//! is the one way a request leaves Waymark.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use reqwest::header::HeaderMap;

use waymark_engine::source::{self, ErrorKind, Ignored};
use waymark_engine::{Clock, Timestamp};

use crate::config::Action;
use crate::config::{expand_env, http_url, Workflow};
use crate::http::auth::{self, Credentials, Secrets};
use crate::http::connects::Connects;
use crate::http::rate::Gate;
use crate::http::rules::Rules;

/// Why the source's connection could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The base URL is unusable (after `${VAR}` expansion): not an http(s) URL.
    #[error("{key}: {why}")]
    Url {
        /// `source.base_url` or `destination.base_url`.
        key: &'static str,
        /// What is wrong.
        why: String,
    },
    /// A credential is missing or unusable.
    #[error(transparent)]
    Auth(#[from] auth::Error),
    /// The CA file cannot be used.
    #[error("source.ca_file: {path}: {why}")]
    CaFile {
        /// The file.
        path: String,
        /// What is wrong.
        why: String,
    },
    /// The HTTP client could not be built.
    #[error("HTTP client: {0}")]
    Client(String),
}

/// A response the rules accepted.
#[derive(Debug)]
pub struct Accepted {
    /// The request: method and URL path (no query: it may hold a key).
    pub what: String,
    /// The response's status.
    pub status: u16,
    /// Its headers.
    pub headers: HeaderMap,
    /// Its body.
    pub body: Vec<u8>,
}

/// Where requests go and how they authenticate.
struct Endpoint<'a> {
    /// `source` or `destination`, for messages.
    table: &'static str,
    /// The key of `base_url`, for messages.
    url_key: &'static str,
    base_url: &'a str,
    auth: Option<&'a crate::config::AuthSection>,
    rate_limit: Option<&'a crate::config::RateLimit>,
}

/// The connection to one API (a source's, or an HTTP destination's).
pub struct Api {
    base_url: reqwest::Url,
    client: reqwest::Client,
    /// The connections `client` began.
    connects: Connects,
    credentials: Credentials,
    gate: Arc<Gate>,
    secrets: Secrets,
    clock: Arc<dyn Clock>,
    /// `source.max_page_bytes`: the largest body read.
    max_body: u64,
    /// Told how long each request took, see [`Api::time_requests`].
    timing: OnceLock<Timing>,
    /// The budget is the application's, shared by the file's tenants.
    across_tenants: bool,
    /// The state directory its budget is saved in (and its sources' ETags).
    state_dir: Option<PathBuf>,
}

/// What makes two tenants' clients the same.
#[derive(Clone, PartialEq, Eq, Hash)]
struct ClientKey {
    workflow: PathBuf,
    timeout: Duration,
    connect_timeout: Duration,
    ca_file: Option<Vec<u8>>,
}

/// How soon after it was sent a request on an open connection has surely reached the API
/// (the time the process may take to write it when it is busy), for the rate gate's window.
const SENT_WITHIN: Duration = Duration::from_millis(50);

/// The most a response body's buffer is given at once when its length is not declared.
const PREALLOCATED_AT_MOST: u64 = 256 << 20;

/// The clients tenants share, by what they are made of.
static CLIENTS: std::sync::LazyLock<Mutex<HashMap<ClientKey, (reqwest::Client, Connects)>>> =
    std::sync::LazyLock::new(Default::default);

/// The gates a file's tenants share (`rate_limit.across_tenants`), by file and origin.
static GATES: std::sync::LazyLock<Mutex<HashMap<GateKey, Arc<Gate>>>> =
    std::sync::LazyLock::new(Default::default);

/// A shared gate's workflow file and origin.
type GateKey = (PathBuf, String);

/// Told, per request, the time to the response's headers (or to the failure) and the HTTP
/// status (`None`: no response).
pub type Timing = Arc<dyn Fn(Duration, Option<u16>) + Send + Sync>;

impl Api {
    /// The connection for `workflow`'s source. Reads every secret now (a missing variable
    /// is an error before any request) and the request budget saved in `state_dir`.
    pub fn new(
        workflow: &Workflow,
        state_dir: Option<&Path>,
        clock: Arc<dyn Clock>,
    ) -> Result<Arc<Api>, Error> {
        let source = &workflow.file().source;
        let secrets = Secrets::default();
        // `${VAR}` values in headers and parameters are as secret as the credentials.
        for stream in workflow.streams() {
            for text in stream.headers.values().chain(stream.params.values()) {
                for var in env_vars(text) {
                    if let Ok(value) = std::env::var(var) {
                        secrets.add(&value);
                    }
                }
            }
        }
        let endpoint = Endpoint {
            table: "source.auth",
            url_key: "source.base_url",
            base_url: &source.base_url,
            auth: source.auth.as_ref(),
            rate_limit: source.rate_limit.as_ref(),
        };
        Self::connect(workflow, &endpoint, secrets, state_dir, clock)
    }

    /// The connection for `workflow`'s HTTP destination (its own URL, credentials and
    /// budget; the source's timeouts, CA file and `max_wait`).
    pub fn for_destination(
        workflow: &Workflow,
        state_dir: Option<&Path>,
        clock: Arc<dyn Clock>,
    ) -> Result<Arc<Api>, Error> {
        let d = &workflow.file().destination;
        let endpoint = Endpoint {
            table: "destination.auth",
            url_key: "destination.base_url",
            base_url: d.base_url.as_deref().unwrap_or_default(),
            auth: d.auth.as_ref(),
            rate_limit: d.rate_limit.as_ref(),
        };
        Self::connect(workflow, &endpoint, Secrets::default(), state_dir, clock)
    }

    fn connect(
        workflow: &Workflow,
        endpoint: &Endpoint<'_>,
        secrets: Secrets,
        state_dir: Option<&Path>,
        clock: Arc<dyn Clock>,
    ) -> Result<Arc<Api>, Error> {
        let source = &workflow.file().source;
        let credentials = Credentials::resolve(endpoint.auth, endpoint.table, &secrets)?;
        // A `${VAR}` inside the URL (some APIs put the token in the path) is a secret too;
        // one that starts it holds the address itself.
        for var in env_vars(endpoint.base_url) {
            let address = endpoint.base_url.starts_with(&format!("${{{var}}}"));
            if let (false, Ok(value)) = (address, std::env::var(var)) {
                secrets.add(&value);
            }
        }
        let url = |why| Error::Url {
            key: endpoint.url_key,
            why,
        };
        let base = expand_env(endpoint.base_url).map_err(url)?;
        let base_url = http_url(base.trim_end_matches('/')).map_err(|why| {
            match base == endpoint.base_url {
                true => url(why),
                false => url(format!("{why}; it is `{}` expanded", endpoint.base_url)),
            }
        })?;
        // A file's tenants share one client (its TLS roots and connection pool): a
        // thousand tenants are not a thousand clients.
        let shared = workflow.tenant().map(|_| ClientKey {
            workflow: workflow.path().to_path_buf(),
            timeout: source.timeout.0,
            connect_timeout: source.connect_timeout.0,
            ca_file: workflow.ca_file().and_then(|f| std::fs::read(f).ok()),
        });
        let cached = shared.as_ref().and_then(|key| {
            CLIENTS
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .get(key)
                .cloned()
        });
        let (client, connects) = match cached {
            Some(client) => client,
            None => Self::build_client(workflow)?,
        };
        if let Some(key) = shared {
            CLIENTS
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .insert(key, (client.clone(), connects.clone()));
        }
        // A tenant's requests count against its own account's budget, unless the budget is
        // the application's (`across_tenants`): then the file's tenants share one gate.
        let across = endpoint.rate_limit.is_some_and(|l| l.across_tenants);
        let name = match workflow.tenant() {
            Some(tenant) if !across => format!("{}@{}", origin_key(&base_url), tenant.id),
            _ => origin_key(&base_url),
        };
        let file = state_dir.map(|dir| dir.join("rate").join(format!("{name}.json")));
        let make = || {
            Arc::new(Gate::new(
                endpoint.rate_limit,
                file.clone(),
                clock.clone(),
                source.max_wait.0,
            ))
        };
        let gate = match (workflow.tenant(), across) {
            (Some(_), true) => {
                let key = (workflow.path().to_path_buf(), name.clone());
                GATES
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .entry(key)
                    .or_insert_with(make)
                    .clone()
            }
            _ => make(),
        };
        Ok(Arc::new(Api {
            base_url,
            client,
            connects,
            credentials,
            gate,
            secrets,
            clock,
            max_body: source.max_page_bytes,
            timing: OnceLock::new(),
            across_tenants: across,
            state_dir: state_dir.map(Path::to_path_buf),
        }))
    }

    /// The HTTP client of `workflow`'s source (its timeouts, CA file and redirect rule),
    /// and the count of the connections it begins.
    fn build_client(workflow: &Workflow) -> Result<(reqwest::Client, Connects), Error> {
        let connects = Connects::default();
        let source = &workflow.file().source;
        // Redirects are followed only within the origin: credentials (headers, query keys)
        // never travel to a host the workflow did not name.
        let redirects = reqwest::redirect::Policy::custom(|attempt| {
            let first = attempt.previous().first().map(|u| u.origin());
            match (attempt.previous().len() >= 10, first) {
                (true, _) => attempt.error("more than 10 redirects"),
                (false, Some(origin)) if origin != attempt.url().origin() => attempt.stop(),
                _ => attempt.follow(),
            }
        });
        let mut builder = reqwest::Client::builder()
            .redirect(redirects)
            .timeout(source.timeout.0)
            .connect_timeout(source.connect_timeout.0.min(source.timeout.0))
            .user_agent(concat!("waymark/", env!("CARGO_PKG_VERSION")))
            .connector_layer(connects.layer());
        if let Some(path) = workflow.ca_file() {
            let shown = path.display().to_string();
            let pem = std::fs::read(&path).map_err(|e| Error::CaFile {
                path: shown.clone(),
                why: e.to_string(),
            })?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| Error::CaFile {
                path: shown.clone(),
                why: format!("not a PEM certificate bundle: {e}"),
            })?;
            if certs.is_empty() {
                return Err(Error::CaFile {
                    path: shown,
                    why: "holds no PEM certificate".into(),
                });
            }
            for cert in certs {
                builder = builder.add_root_certificate(cert);
            }
        }
        let client = builder.build().map_err(|e| Error::Client(e.to_string()))?;
        Ok((client, connects))
    }

    /// The time on this connection's clock.
    pub fn now(&self) -> waymark_engine::Timestamp {
        self.clock.now()
    }

    /// The state directory this connection keeps its files in (none: nothing is kept).
    pub fn state_dir(&self) -> Option<&Path> {
        self.state_dir.as_deref()
    }

    /// The base URL.
    pub fn base_url(&self) -> &reqwest::Url {
        &self.base_url
    }

    /// The HTTP client, to build requests with.
    pub fn client(&self) -> &reqwest::Client {
        &self.client
    }

    /// The secret values of this source, to mask them.
    pub fn secrets(&self) -> &Secrets {
        &self.secrets
    }

    /// The query parameter holding an API key, if the key goes in the query (it is removed
    /// from next-page URLs before they are journaled, and added to every request).
    pub fn key_param(&self) -> Option<&str> {
        self.credentials.query_param()
    }

    /// From now on, `timing` is told how long each request takes (`serve`'s latency
    /// histogram); only the first one given is kept.
    pub fn time_requests(&self, timing: Timing) {
        let _ = self.timing.set(timing);
    }

    /// In a cluster: this worker holds `held` of the `total` partitions whose requests
    /// share this connection's budget, until `valid_until` (see [`Gate::share`]).
    pub fn share_budget(&self, held: u64, total: u64, valid_until: Timestamp) {
        self.gate.share(held, total, valid_until);
    }

    /// Whether this connection's budget is shared by every tenant of its file.
    pub fn budget_across_tenants(&self) -> bool {
        self.across_tenants
    }

    /// Sends the request `build` makes: waits at the gate, signs it, sends it, reads the
    /// quota headers and judges the response by `rules`. A 401 answered by refreshing an
    /// OAuth2 token is sent once more. Every message is free of secrets. (Long, and kept
    /// whole: it is the request's lifecycle, read top to bottom in the order it happens.)
    pub async fn send(
        &self,
        rules: &Rules,
        build: impl Fn() -> Result<reqwest::Request, source::Error>,
    ) -> Result<Result<Accepted, Ignored>, source::Error> {
        let mut refreshed = false;
        loop {
            let admitted = match self.gate.admit().await {
                Ok(admitted) => admitted,
                Err(blocked) => {
                    let wait = blocked.until.since(self.clock.now());
                    return Err(source::Error {
                        retry_after: Some(wait),
                        ..source::Error::new(ErrorKind::RateLimited, blocked.why)
                    });
                }
            };
            let mut request = build()?;
            let what = format!("{} {}", request.method(), request.url().path());
            self.credentials
                .sign(&self.client, self.clock.as_ref(), &mut request)
                .await
                .map_err(|e| self.masked(e))?;
            let began = Instant::now();
            let (sent, connects) = (self.clock.now(), self.connects.begun());
            let response = self.client.execute(request).await;
            // The API surely had it by the answer; and soon after it was sent when no
            // connection began meanwhile (it went out on an open one): within `SENT_WITHIN`,
            // the time a busy process may take to write it.
            let answered = self.clock.now();
            let reached = match self.connects.begun() == connects {
                true => answered.min(sent.saturating_add(SENT_WITHIN)),
                false => answered,
            };
            self.gate.answered(admitted, reached);
            if let Some(timing) = self.timing.get() {
                let status = response.as_ref().ok().map(|r| r.status().as_u16());
                timing(began.elapsed(), status);
            }
            let response = response.map_err(|e| {
                let e = e.without_url();
                let why = causes(&e);
                let (kind, verb, hint) = if why.contains("certificate") {
                    // Retrying cannot make a certificate trusted.
                    let hint = "; if the API uses a private CA, set source.ca_file";
                    (ErrorKind::Fatal, "failed", hint)
                } else if e.is_timeout() {
                    (ErrorKind::Retry, "timed out", "")
                } else if e.is_connect() {
                    (ErrorKind::Retry, "could not connect", "")
                } else {
                    (ErrorKind::Retry, "failed", "")
                };
                self.masked(source::Error::new(
                    kind,
                    format!("{what} {verb}: {why}{hint}"),
                ))
            })?;
            let status = response.status();
            let headers = response.headers().clone();
            self.gate.observe(&headers);
            let body = self.read_body(response, &what).await?;
            let verdict = rules.judge(status, &headers, &body);
            // A 429 is a sign of the rate unless it says to retry at once (`Retry-After:
            // 0`): the gate learns a pace from the others.
            let asked_now = retry_after(&headers, self.clock.now()).is_some_and(|w| w.is_zero());
            self.gate.judged(
                admitted,
                verdict.action == Action::RateLimited && !asked_now,
            );
            let code = Some(status.as_u16());
            let said = || format!("{what}: HTTP {status}: {}", self.secrets.excerpt(&body));
            let error = |kind, retry_after, message: String| {
                self.masked(source::Error {
                    kind,
                    retry_after,
                    status: code,
                    rule: verdict.rule.clone(),
                    message,
                })
            };
            let auth_refused = || {
                format!(
                    "{what}: HTTP {status}: the API refused the credentials{}; check \
                     source.auth and its environment variables",
                    if refreshed {
                        " (even with a new OAuth2 token)"
                    } else {
                        ""
                    }
                )
            };
            return match verdict.action {
                Action::Accept => Ok(Ok(Accepted {
                    what,
                    status: status.as_u16(),
                    headers,
                    body,
                })),
                Action::Ignore => Ok(Err(Ignored {
                    status: code,
                    rule: verdict.rule.clone(),
                    reason: said(),
                })),
                Action::Retry | Action::RateLimited => {
                    // A wait the API asked for holds back every stream of the source, in
                    // this process and (saved with the budget) the next.
                    let wait = retry_after(&headers, self.clock.now())
                        .filter(|w| !w.is_zero())
                        .or(verdict.wait);
                    if let Some(wait) = wait.filter(|w| !w.is_zero()) {
                        let now = self.clock.now();
                        self.gate.block(now.saturating_add(wait));
                    }
                    let kind = match verdict.action {
                        Action::RateLimited => ErrorKind::RateLimited,
                        _ => ErrorKind::Retry,
                    };
                    Err(error(kind, wait, said()))
                }
                Action::RefreshAuth if self.credentials.refreshable() && !refreshed => {
                    tracing::info!("{what}: HTTP {status}; fetching a new OAuth2 token");
                    self.credentials.invalidate().await;
                    refreshed = true;
                    continue;
                }
                Action::RefreshAuth => Err(error(ErrorKind::Fatal, None, auth_refused())),
                Action::Fail if verdict.rule.is_none() && status.as_u16() == 403 => {
                    let message = format!("{}: {}", auth_refused(), self.secrets.excerpt(&body));
                    Err(error(ErrorKind::Fatal, None, message))
                }
                Action::Fail => Err(error(ErrorKind::Fatal, None, said())),
            };
        }
    }

    /// The body of `response`, read chunk by chunk and never beyond `max_page_bytes`: a
    /// declared `Content-Length` above it is refused before reading, a body (chunked, or
    /// delimited by the connection's end) that grows past it is cut off there. Either is
    /// fatal: the same request would bring the same body again.
    async fn read_body(
        &self,
        mut response: reqwest::Response,
        what: &str,
    ) -> Result<Vec<u8>, source::Error> {
        let limit = self.max_body;
        let status = response.status().as_u16();
        let too_large = |size: String| {
            self.masked(source::Error {
                status: Some(status),
                ..source::Error::new(
                    ErrorKind::Fatal,
                    format!(
                        "{what}: the response body {size}, more than source.max_page_bytes = \
                         {limit} ({}); refusing it (raise max_page_bytes if the API's pages \
                         really are this large, or ask for smaller pages)",
                        size_in_words(limit)
                    ),
                )
            })
        };
        let declared = response.content_length();
        if let Some(length) = declared.filter(|&length| length > limit) {
            return Err(too_large(format!(
                "declares {length} bytes ({})",
                size_in_words(length)
            )));
        }
        // Room for the whole body at once: its declared length, or else the limit (at most
        // 256 MiB). Memory is only used as the body fills it (untouched pages of a large
        // allocation are not resident), and the buffer is never grown by copying, which
        // can leave each smaller size behind in the allocator (a body cut at 64 MiB once
        // peaked at 168 MiB).
        let room = declared.unwrap_or(limit.min(PREALLOCATED_AT_MOST));
        let mut body = Vec::new();
        if let Ok(room) = usize::try_from(room) {
            // Refused (no such address space): grown as it comes instead.
            let _ = body.try_reserve_exact(room);
        }
        loop {
            let chunk = response.chunk().await.map_err(|e| {
                self.masked(source::Error::new(
                    ErrorKind::Retry,
                    format!(
                        "{what}: reading the body failed: {}",
                        causes(&e.without_url())
                    ),
                ))
            })?;
            let Some(chunk) = chunk else {
                // The room not used is given back (kept pages hold only what they read).
                body.shrink_to_fit();
                return Ok(body);
            };
            let read = u64::try_from(body.len() + chunk.len()).unwrap_or(u64::MAX);
            if read > limit {
                // Dropping the response closes the connection: nothing more is read.
                return Err(too_large(format!("goes on past {limit} bytes")));
            }
            body.extend_from_slice(&chunk);
        }
    }

    fn masked(&self, mut e: source::Error) -> source::Error {
        e.message = self.secrets.redact(&e.message);
        e
    }
}

/// An error and its causes, `outer: inner: innermost` (reqwest's own text stops at the
/// outermost, which rarely says what went wrong).
fn causes(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let line = cause.to_string();
        if !text.contains(&line) {
            text.push_str(": ");
            text.push_str(&line);
        }
        source = cause.source();
    }
    text
}

/// A byte count in binary units, for messages: `64 MiB`, `1.5 GiB`, `900 bytes`.
fn size_in_words(bytes: u64) -> String {
    let units = [("GiB", 1u64 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)];
    match units.iter().find(|(_, size)| bytes >= *size) {
        Some((unit, size)) if bytes.is_multiple_of(*size) => format!("{} {unit}", bytes / size),
        Some((unit, size)) => {
            let tenths = bytes.saturating_mul(10) / size;
            format!("{}.{} {unit}", tenths / 10, tenths % 10)
        }
        None => format!("{bytes} bytes"),
    }
}

/// The `${VAR}` names in a text.
fn env_vars(text: &str) -> Vec<&str> {
    text.split("${")
        .skip(1)
        .filter_map(|rest| rest.split_once('}').map(|(name, _)| name))
        .collect()
}

/// A file name for a URL's origin: `api.example.com_443`.
fn origin_key(url: &reqwest::Url) -> String {
    let host = url.host_str().unwrap_or("local");
    let port = url.port_or_known_default().unwrap_or(0);
    format!("{host}_{port}")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// `Retry-After` in seconds or as an HTTP date (RFC 9110 §10.2.3); seconds with a
/// fraction too, as Shopify sends them (`2.0`).
pub fn retry_after(headers: &HeaderMap, now: Timestamp) -> Option<Duration> {
    let value = headers.get(reqwest::header::RETRY_AFTER)?.to_str().ok()?;
    if let Ok(secs) = value.trim().parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let fraction = value
        .trim()
        .parse::<f64>()
        .ok()
        .filter(|s| s.is_finite() && *s >= 0.0);
    if let Some(secs) = fraction {
        return Some(Duration::from_secs_f64(secs.min(1e9)));
    }
    let when = http_date(value)?;
    Some(when.since(now))
}

/// An IMF-fixdate, e.g. `Sun, 06 Nov 1994 08:49:37 GMT`.
fn http_date(value: &str) -> Option<Timestamp> {
    let parts: Vec<&str> = value.split_whitespace().collect();
    let [_, day, month, year, time, "GMT"] = parts.as_slice() else {
        return None;
    };
    let months = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let m = months.iter().position(|x| x == month)? + 1;
    let text = format!("{year}-{m:02}-{day:0>2}T{time}Z");
    humantime::parse_rfc3339(&text)
        .ok()
        .map(Timestamp::from_system)
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    #[test]
    fn reads_retry_after_in_both_forms() {
        let now = Timestamp(784_111_777_000 - 30_000); // 30 s before the date below
        let mut h = HeaderMap::new();
        h.insert(reqwest::header::RETRY_AFTER, HeaderValue::from_static("7"));
        assert_eq!(retry_after(&h, now), Some(Duration::from_secs(7)));
        h.insert(
            reqwest::header::RETRY_AFTER,
            HeaderValue::from_static("2.5"),
        );
        assert_eq!(retry_after(&h, now), Some(Duration::from_millis(2500)));
        h.insert(
            reqwest::header::RETRY_AFTER,
            HeaderValue::from_static("-1.0"),
        );
        assert_eq!(retry_after(&h, now), None);
        h.insert(
            reqwest::header::RETRY_AFTER,
            HeaderValue::from_static("Sun, 06 Nov 1994 08:49:37 GMT"),
        );
        assert_eq!(retry_after(&h, now), Some(Duration::from_secs(30)));
        // A date in the past: no wait asked (the backoff applies).
        assert_eq!(
            retry_after(&h, Timestamp(900_000_000_000)),
            Some(Duration::ZERO)
        );
    }

    #[test]
    fn says_sizes_in_binary_units() {
        assert_eq!(size_in_words(64 << 20), "64 MiB");
        assert_eq!(size_in_words(1_610_612_736), "1.5 GiB");
        assert_eq!(size_in_words(4096), "4 KiB");
        assert_eq!(size_in_words(900), "900 bytes");
    }

    #[test]
    fn names_env_vars_and_origins() {
        assert_eq!(env_vars("a ${X} b ${Y_2}"), ["X", "Y_2"]);
        let url =
            reqwest::Url::parse("https://api.example.com/v1").unwrap_or_else(|_| unreachable!());
        assert_eq!(origin_key(&url), "api.example.com_443");
    }
}
