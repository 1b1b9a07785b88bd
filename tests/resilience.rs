//! HTTP resilience, in process over real loopback sockets: `Retry-After` in both forms,
//! backoff, hung and reset connections, response rules, long waits that pause the run, the
//! shared and persisted request budget, quota headers, auth schemes, OAuth2 refreshes and
//! a custom CA. Waits go through a manual clock, so backoff costs no real time.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use waymark_connectors::config::StreamSection;
use waymark_connectors::{AnyDestination, Api, Binding, HttpSource, Workflow};
use waymark_engine::{driver, Clock, Event, RunState, Settings, StateDir, Status, Timestamp};

use crate::scripted::{records, Reply, Request, Server};
use crate::util::{Result, TempDir};

/// A clock that only moves when something sleeps on it; it logs every sleep.
#[derive(Default)]
pub struct ManualClock {
    now: AtomicU64,
    slept: Mutex<Vec<u64>>,
}

impl ManualClock {
    pub fn at(ms: u64) -> Arc<Self> {
        let clock = ManualClock::default();
        clock.now.store(ms, Ordering::SeqCst);
        Arc::new(clock)
    }

    pub fn ms(&self) -> u64 {
        self.now.load(Ordering::SeqCst)
    }

    pub fn advance(&self, ms: u64) {
        self.now.fetch_add(ms, Ordering::SeqCst);
    }

    pub fn slept(&self) -> Vec<u64> {
        self.slept
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Timestamp {
        Timestamp(self.ms())
    }

    fn sleep(
        &self,
        d: Duration,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + '_>> {
        let ms = d.as_millis() as u64;
        self.advance(ms);
        self.slept
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(ms);
        Box::pin(tokio::task::yield_now())
    }
}

const T0: u64 = 1_780_000_000_000;

/// A workflow over `url` with one stream `items` (cursor pagination: `next` in the body,
/// sent back as `cursor`), `source` lines added to `[source]` and `extra` appended.
pub fn workflow_text(url: &str, source: &str, extra: &str) -> String {
    format!(
        r#"[sync]
name = "res"

[source]
kind = "http"
base_url = "{url}"
timeout = "2s"
{source}

[[stream]]
name = "items"
path = "/items"
records = "data"
primary_key = "id"
page_size = 3
pagination = {{ kind = "cursor", cursor_path = "next", cursor_param = "cursor" }}
{extra}

[destination]
kind = "sqlite"
path = "out.db"
"#
    )
}

/// A page of three records whose next cursor is `next` (none: the last page).
pub fn page(first: u64, next: Option<&str>) -> Reply {
    let next = next.map_or("null".to_string(), |n| format!("\"{n}\""));
    Reply::json(
        200,
        format!(r#"{{"data":{},"next":{next}}}"#, records(first, 3)),
    )
}

/// What a run left: its final state and its journal.
pub struct Outcome {
    pub state: RunState,
    pub events: Vec<Event>,
}

impl Outcome {
    pub fn retries(&self) -> Vec<(Option<u16>, Option<String>, u64, String)> {
        self.events
            .iter()
            .filter_map(|e| match e {
                Event::RequestRetried {
                    status,
                    rule,
                    wait_ms,
                    error,
                    ..
                } => Some((*status, rule.clone(), *wait_ms, error.clone())),
                _ => None,
            })
            .collect()
    }
}

/// Runs every stream of the workflow once (start or resume), through the library, with
/// `clock`; the state directory is `dir/state`.
pub async fn sync(dir: &Path, text: &str, clock: &Arc<ManualClock>) -> Result<Vec<Outcome>> {
    let file = dir.join("workflow.toml");
    std::fs::write(&file, text)?;
    let workflow = Workflow::load(&file)?;
    let mut state_dir = StateDir::open(&dir.join("state"), "test")?;
    let dyn_clock: Arc<dyn Clock> = clock.clone();
    let api = Api::new(&workflow, Some(state_dir.root()), dyn_clock)?;
    let settings = Settings {
        retry: workflow.retry_policy(),
        jitter_seed: 7,
        ..Settings::default()
    };
    let stop = AtomicBool::new(false);
    let mut out = Vec::new();
    for stream in workflow.streams() {
        out.push(
            run_stream(
                &mut state_dir,
                &workflow,
                stream,
                &api,
                &settings,
                &stop,
                clock,
            )
            .await?,
        );
    }
    Ok(out)
}

async fn run_stream(
    dir: &mut StateDir,
    workflow: &Workflow,
    stream: &StreamSection,
    api: &Arc<Api>,
    settings: &Settings,
    stop: &AtomicBool,
    clock: &Arc<ManualClock>,
) -> Result<Outcome> {
    let plan = workflow.plan(stream, false);
    let binding = Binding::new(workflow, stream);
    let mut destination = AnyDestination::open(
        workflow,
        binding,
        dir.root(),
        std::sync::Arc::new(waymark_engine::SystemClock),
    )
    .await?;
    let mut source = HttpSource::new(workflow, stream, api.clone(), None)?;
    let (journal, staging) = dir.parts();
    let state = driver::open(journal, staging, &mut destination, &plan, clock.now()).await?;
    let run = state.run_id();
    let state = driver::drive(
        journal,
        staging,
        &mut source,
        &mut destination,
        clock.as_ref(),
        settings,
        stop,
        state,
        &mut |_, _| {},
    )
    .await?;
    let events = journal
        .events(run)
        .map(|e| e.map(|(_, e)| e))
        .collect::<std::result::Result<Vec<_>, _>>()?;
    Ok(Outcome { state, events })
}

/// Ids in the destination table `items`.
pub fn ids(dir: &Path) -> Result<Vec<u64>> {
    let conn = rusqlite::Connection::open(dir.join("out.db"))?;
    let mut stmt = conn.prepare("SELECT key FROM items ORDER BY CAST(key AS INTEGER)")?;
    let ids = stmt
        .query_map([], |r| r.get::<_, String>(0))?
        .map(|r| Ok(r?.parse()?))
        .collect::<Result<Vec<u64>>>()?;
    Ok(ids)
}

/// Answers from a script: the n-th request gets the n-th reply (then 404s).
fn script(replies: Vec<Reply>) -> impl Fn(&Request) -> Reply + Send + Sync {
    let replies = Mutex::new(replies.into_iter());
    move |_| {
        replies
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .next()
            .unwrap_or_else(|| Reply::json(404, "{}"))
    }
}

fn clock_reader(clock: &Arc<ManualClock>) -> impl Fn() -> u64 + Send + Sync + 'static {
    let clock = clock.clone();
    move || clock.ms()
}

fn http_date(ms: u64) -> String {
    // IMF-fixdate from RFC 3339: "2026-05-28T20:26:40Z" → "Thu, 28 May 2026 20:26:40 GMT".
    let text = humantime::format_rfc3339_seconds(Timestamp(ms).to_system()).to_string();
    let (date, time) = text
        .trim_end_matches('Z')
        .split_once('T')
        .unwrap_or_default();
    let mut parts = date.split('-');
    let (y, m, d) = (
        parts.next().unwrap_or(""),
        parts.next().unwrap_or("1"),
        parts.next().unwrap_or(""),
    );
    let months = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let month = months[m.parse::<usize>().unwrap_or(1) - 1];
    // The weekday is not checked by parsers worth the name; any is fine here.
    format!("Mon, {d} {month} {y} {time} GMT")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_in_seconds_and_dates_is_honoured_and_a_missing_one_backs_off() -> Result {
    let dir = TempDir::new("retry-after");
    let clock = ManualClock::at(T0);
    let date = http_date(T0 + 7_000 + 30_000);
    let server = Server::start(
        clock_reader(&clock),
        script(vec![
            Reply::json(429, r#"{"error":"slow down"}"#).with("Retry-After", "7"),
            Reply::json(503, "{}").with("Retry-After", date),
            Reply::json(429, "{}"),
            Reply::json(429, "{}").with("Retry-After", "0"),
            page(1, Some("c2")),
            Reply::json(500, "oops"),
            page(4, None),
        ]),
    )
    .await?;
    let text = workflow_text(
        &server.url,
        "max_attempts = 5\nbackoff = { base = \"1s\", cap = \"4s\" }",
        "",
    );
    let began = std::time::Instant::now();
    let runs = sync(dir.path(), &text, &clock).await?;
    let run = &runs[0];
    assert_eq!(run.state.status, Status::Completed);
    assert_eq!(ids(dir.path())?, [1, 2, 3, 4, 5, 6]);
    let retries = run.retries();
    let statuses: Vec<_> = retries.iter().map(|r| r.0).collect();
    assert_eq!(
        statuses,
        [Some(429), Some(503), Some(429), Some(429), Some(500)]
    );
    let waits: Vec<u64> = retries.iter().map(|r| r.2).collect();
    // Retry-After: 7 → exactly 7 s (jitter below it is raised to the floor, 1 s base).
    assert_eq!(waits[0], 7_000, "{waits:?}");
    // An HTTP date 30 s after the moment it arrived.
    assert_eq!(waits[1], 30_000, "{waits:?}");
    // Missing and zero: full-jitter backoff, 3rd and 4th attempt → ceilings 4 s (capped).
    assert!((10..=4_000).contains(&waits[2]), "{waits:?}");
    assert!((10..=4_000).contains(&waits[3]), "{waits:?}");
    // The attempt count restarts with each page.
    assert!((10..=1_000).contains(&waits[4]), "{waits:?}");
    assert!(retries[0].3.contains("HTTP 429") && retries[0].3.contains("slow down"));
    // Every retry asked for the same page: the cursor never moved.
    let cursors: Vec<Option<String>> = server
        .received()
        .iter()
        .map(|r| r.param("cursor"))
        .collect();
    assert_eq!(
        cursors,
        [
            None,
            None,
            None,
            None,
            None,
            Some("c2".into()),
            Some("c2".into())
        ]
    );
    // The clock's sleeps are the journaled waits, in order, and the pace the gate learned
    // from the 429s (no `rate_limit` is declared); no real time was spent on them.
    let slept = clock.slept();
    let mut rest = slept.iter();
    assert!(
        waits.iter().all(|w| rest.any(|s| s == w)),
        "journaled waits {waits:?} not all slept, in order: {slept:?}"
    );
    assert!(began.elapsed() < Duration::from_secs(10));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hung_and_reset_connections_are_retried() -> Result {
    let dir = TempDir::new("hang-reset");
    let clock = ManualClock::at(T0);
    let server = Server::start(
        clock_reader(&clock),
        script(vec![Reply::Hang, Reply::Reset, page(1, None)]),
    )
    .await?;
    let text =
        workflow_text(&server.url, "", "").replace("timeout = \"2s\"", "timeout = \"300ms\"");
    let runs = sync(dir.path(), &text, &clock).await?;
    let run = &runs[0];
    assert_eq!(run.state.status, Status::Completed);
    assert_eq!(ids(dir.path())?, [1, 2, 3]);
    let retries = run.retries();
    assert_eq!(retries.len(), 2, "{retries:?}");
    assert!(retries[0].3.contains("timed out"), "{retries:?}");
    assert!(retries.iter().all(|r| r.0.is_none()), "{retries:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn response_rules_retry_error_bodies_throttle_and_ignore() -> Result {
    let dir = TempDir::new("rules");
    let clock = ManualClock::at(T0);
    let server = Server::start(
        clock_reader(&clock),
        script(vec![
            // 200 with an error body: retried by a rule.
            Reply::json(200, r#"{"error":"backend busy"}"#),
            // 400 used as a throttle, marked by a header: rate limited for `wait`.
            Reply::json(400, r#"{"message":"throttled"}"#).with("X-Throttled", "yes"),
            page(1, Some("c2")),
            // 404 on the second page: ignored (journaled), the window ends there.
            Reply::json(404, r#"{"message":"gone"}"#),
        ]),
    )
    .await?;
    let rules = r#"
[[source.on_response]]
status = 200
body_contains = "\"error\""
action = "retry"

[[source.on_response]]
status = [400]
header = { name = "x-throttled", contains = "yes" }
action = "rate_limited"
wait = "45s"
"#;
    let text = workflow_text(
        &server.url,
        "",
        "on_response = [{ status = 404, action = \"ignore\" }]",
    ) + rules;
    let runs = sync(dir.path(), &text, &clock).await?;
    let run = &runs[0];
    assert_eq!(run.state.status, Status::Completed);
    assert_eq!(ids(dir.path())?, [1, 2, 3]);
    let retries = run.retries();
    assert_eq!(
        retries
            .iter()
            .map(|r| (r.0, r.1.as_deref()))
            .collect::<Vec<_>>(),
        [
            (Some(200), Some("source.on_response[0]")),
            (Some(400), Some("source.on_response[1]"))
        ]
    );
    assert_eq!(retries[1].2, 45_000);
    let ignored: Vec<_> = run
        .events
        .iter()
        .filter_map(|e| match e {
            Event::PageIgnored {
                page, status, rule, ..
            } => Some((*page, *status, rule.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(
        ignored,
        [(2, Some(404), Some("stream.items.on_response[0]".into()))]
    );
    assert_eq!(run.state.counts.ignored, 1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_errors_fail_at_once_with_status_and_excerpt() -> Result {
    for (status, expect) in [
        (400, "HTTP 400 Bad Request: {\"message\":\"bad filter\"}"),
        (401, "the API refused the credentials"),
        (403, "the API refused the credentials"),
    ] {
        let dir = TempDir::new("fail-4xx");
        let clock = ManualClock::at(T0);
        let server = Server::start(
            clock_reader(&clock),
            script(vec![Reply::json(status, r#"{"message":"bad filter"}"#)]),
        )
        .await?;
        let runs = sync(dir.path(), &workflow_text(&server.url, "", ""), &clock).await?;
        match &runs[0].state.status {
            Status::Failed(e) => assert!(e.contains(expect), "{status}: {e}"),
            other => panic!("{status}: {other:?}"),
        }
        assert_eq!(server.received().len(), 1, "{status}: retried");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_far_retry_after_pauses_and_the_next_run_waits_without_calling() -> Result {
    let dir = TempDir::new("far-retry");
    let clock = ManualClock::at(T0);
    let server = Server::start(
        clock_reader(&clock),
        script(vec![
            page(1, Some("c2")),
            Reply::json(429, "{}").with("Retry-After", "3600"),
            page(4, None),
        ]),
    )
    .await?;
    let text = workflow_text(&server.url, "max_wait = \"10m\"", "");
    let first = sync(dir.path(), &text, &clock).await?;
    let until = Timestamp(T0 + 3_600_000);
    assert_eq!(
        first[0].state.status,
        Status::Paused(waymark_engine::PauseReason::RateLimited { until })
    );
    assert_eq!(ids(dir.path())?, [1, 2, 3]);
    // The budget is in the state directory.
    let saved: serde_json::Value = serde_json::from_slice(&std::fs::read(rate_file(dir.path())?)?)?;
    assert_eq!(saved["blocked_until"], until.0);
    // An hour has not passed: the next run does not call the API and pauses again.
    clock.advance(60_000);
    let second = sync(dir.path(), &text, &clock).await?;
    assert_eq!(
        second[0].state.status,
        Status::Paused(waymark_engine::PauseReason::RateLimited { until })
    );
    assert_eq!(server.received().len(), 2);
    // Within max_wait of the time: the run sleeps it out, then finishes.
    clock.advance(3_600_000 - 60_000 - 300_000);
    let third = sync(dir.path(), &text, &clock).await?;
    assert_eq!(third[0].state.status, Status::Completed);
    assert_eq!(ids(dir.path())?, [1, 2, 3, 4, 5, 6]);
    let requests = server.received();
    assert_eq!(requests.len(), 3);
    assert!(
        requests[2].at >= until.0,
        "sent before the time the API named"
    );
    Ok(())
}

fn rate_file(dir: &Path) -> Result<PathBuf> {
    let rate = dir.join("state").join("rate");
    let file = std::fs::read_dir(&rate)?
        .next()
        .ok_or("no rate-limit state saved")??;
    Ok(file.path())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_request_budget_spaces_requests_is_shared_and_persists() -> Result {
    let dir = TempDir::new("budget");
    let clock = ManualClock::at(T0);
    // Ten pages per stream; over 5 requests per second the server answers 429.
    let times: Arc<Mutex<Vec<u64>>> = Arc::default();
    let seen = times.clone();
    let server = Server::start(clock_reader(&clock), move |r: &Request| {
        let mut times = seen.lock().unwrap_or_else(PoisonError::into_inner);
        if times.iter().filter(|t| **t + 1000 > r.at).count() >= 5 {
            return Reply::json(429, "{}").with("Retry-After", "1");
        }
        times.push(r.at);
        let n: u64 = r.param("cursor").map_or(1, |c| c.parse().unwrap_or(1));
        page(n * 3 - 2, (n < 10).then(|| (n + 1).to_string()).as_deref())
    })
    .await?;
    let second = "[[stream]]\nname = \"more\"\npath = \"/more\"\nrecords = \"data\"\nprimary_key = \"id\"\npage_size = 3\npagination = { kind = \"cursor\", cursor_path = \"next\", cursor_param = \"cursor\" }\n";
    let text = workflow_text(
        &server.url,
        "rate_limit = { requests = 5, per = \"1s\" }",
        second,
    );
    let runs = sync(dir.path(), &text, &clock).await?;
    assert!(runs.iter().all(|r| r.state.status == Status::Completed));
    assert!(
        runs.iter().all(|r| r.retries().is_empty()),
        "a request went over the budget"
    );
    // 20 requests, evenly spaced by 200 ms across both streams: the budget is shared. The
    // 6th, 11th and 16th also wait for the window: 1 s and a 5 ms margin after the request
    // five back.
    let times = times.lock().unwrap_or_else(PoisonError::into_inner).clone();
    assert_eq!(times.len(), 20);
    let gaps: Vec<u64> = times.windows(2).map(|w| w[1] - w[0]).collect();
    let expected: Vec<u64> = (1..20)
        .map(|i| match i % 5 {
            0 => 205,
            _ => 200,
        })
        .collect();
    assert_eq!(gaps, expected);
    // A new process (a new Api over the same state directory) keeps the spacing.
    let before = clock.ms();
    let again = sync(dir.path(), &text, &clock).await?;
    assert!(again.iter().all(|r| r.state.status == Status::Completed));
    assert!(clock.ms() > before, "the saved budget was ignored");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quota_headers_slow_requests_down_before_a_429() -> Result {
    let dir = TempDir::new("quota");
    let clock = ManualClock::at(T0);
    // A quota of 4 requests per 10 s window; the 5th in a window gets 429.
    let state: Arc<Mutex<(u64, u64)>> = Arc::new(Mutex::new((T0, 0)));
    let server = Server::start(clock_reader(&clock), move |r: &Request| {
        let mut s = state.lock().unwrap_or_else(PoisonError::into_inner);
        if r.at >= s.0 + 10_000 {
            *s = (r.at - (r.at - s.0) % 10_000, 0);
        }
        let reset = (s.0 + 10_000 - r.at).div_ceil(1000);
        if s.1 >= 4 {
            return Reply::json(429, "{}").with("Retry-After", reset.to_string());
        }
        s.1 += 1;
        let n: u64 = r.param("cursor").map_or(1, |c| c.parse().unwrap_or(1));
        page(n * 3 - 2, (n < 9).then(|| (n + 1).to_string()).as_deref())
            .with("X-RateLimit-Limit", "4")
            .with("X-RateLimit-Remaining", (4 - s.1).to_string())
            .with("X-RateLimit-Reset", reset.to_string())
    })
    .await?;
    let runs = sync(dir.path(), &workflow_text(&server.url, "", ""), &clock).await?;
    assert_eq!(runs[0].state.status, Status::Completed);
    assert_eq!(ids(dir.path())?.len(), 27);
    assert!(
        runs[0].retries().is_empty(),
        "hit 429: {:?}",
        runs[0].retries()
    );
    assert!(
        clock.ms() - T0 >= 20_000,
        "9 requests at 4 per 10 s need two resets"
    );
    Ok(())
}

/// Sets an environment variable of the test process (each test uses its own names).
fn set_env(name: &str, value: &str) {
    std::env::set_var(name, value);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_basic_and_api_keys_sign_every_request() -> Result {
    set_env("RES_TOKEN", "tok-abc123");
    set_env("RES_PASSWORD", "pa55word");
    set_env("RES_KEY", "key-xyz789");
    let cases = [
        (
            "[source.auth]\nkind = \"bearer\"\ntoken = { env = \"RES_TOKEN\" }",
            "authorization",
            "Bearer tok-abc123",
        ),
        (
            "[source.auth]\nkind = \"basic\"\nusername = \"alice\"\npassword = { env = \"RES_PASSWORD\" }",
            "authorization",
            // base64("alice:pa55word")
            "Basic YWxpY2U6cGE1NXdvcmQ=",
        ),
        (
            "[source.auth]\nkind = \"api_key\"\nname = \"X-Api-Key\"\nkey = { env = \"RES_KEY\" }",
            "x-api-key",
            "key-xyz789",
        ),
        (
            "[source.auth]\nkind = \"api_key\"\nname = \"api_key\"\nin = \"query\"\nkey = { env = \"RES_KEY\" }",
            "?api_key",
            "key-xyz789",
        ),
    ];
    for (auth, name, expected) in cases {
        let dir = TempDir::new("auth");
        let clock = ManualClock::at(T0);
        let server = Server::start(
            clock_reader(&clock),
            script(vec![page(1, Some("2")), page(4, None)]),
        )
        .await?;
        // `[source.auth]` is a table: it goes after the stream (TOML tables end at the next).
        let text = workflow_text(&server.url, "", "") + auth;
        let runs = sync(dir.path(), &text, &clock).await?;
        assert_eq!(runs[0].state.status, Status::Completed, "{auth}");
        for r in server.received() {
            let got = match name.strip_prefix('?') {
                Some(param) => r.param(param),
                None => r.header(name).map(str::to_string),
            };
            assert_eq!(got.as_deref(), Some(expected), "{auth}: {r:?}");
        }
    }
    // A missing variable is an error before any request.
    let dir = TempDir::new("auth-missing");
    let clock = ManualClock::at(T0);
    let server = Server::start(clock_reader(&clock), script(vec![])).await?;
    let text = workflow_text(&server.url, "", "")
        + "[source.auth]\nkind = \"bearer\"\ntoken = { env = \"RES_NEVER_SET\" }";
    let err = sync(dir.path(), &text, &clock)
        .await
        .err()
        .map(|e| e.to_string());
    assert_eq!(
        err.as_deref(),
        Some("source.auth.token: environment variable RES_NEVER_SET is not set")
    );
    assert!(server.received().is_empty());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oauth2_tokens_are_refreshed_before_expiry_and_once_on_401() -> Result {
    set_env("RES_CLIENT_SECRET", "client-s3cret");
    let dir = TempDir::new("oauth2");
    let clock = ManualClock::at(T0);
    // Tokens live 120 s; the API rejects an expired one, and revokes token 2 once.
    let issued: Arc<Mutex<Vec<u64>>> = Arc::default();
    let tokens = issued.clone();
    let server = Server::start(clock_reader(&clock), move |r: &Request| {
        let mut issued = tokens.lock().unwrap_or_else(PoisonError::into_inner);
        if r.path() == "/oauth/token" {
            // client_secret_basic: base64("crm:client-s3cret")
            if r.header("authorization") != Some("Basic Y3JtOmNsaWVudC1zM2NyZXQ=")
                || !r.body.contains("grant_type=client_credentials")
            {
                return Reply::json(401, r#"{"error":"invalid_client"}"#);
            }
            issued.push(r.at);
            let n = issued.len();
            return Reply::json(
                200,
                format!(r#"{{"access_token":"at-{n}","expires_in":120}}"#),
            );
        }
        let valid = issued.iter().enumerate().any(|(i, at)| {
            r.header("authorization") == Some(&format!("Bearer at-{}", i + 1))
                && r.at < at + 120_000
        });
        let revoked = r.header("authorization") == Some("Bearer at-2") && issued.len() == 2;
        if !valid || revoked {
            return Reply::json(401, r#"{"error":"invalid_token"}"#);
        }
        let n: u64 = r.param("cursor").map_or(1, |c| c.parse().unwrap_or(1));
        page(n * 3 - 2, (n < 8).then(|| (n + 1).to_string()).as_deref())
    })
    .await?;
    // One request every 30 s: the first token (120 s, refreshed 60 s early) lasts 3 pages.
    let auth = format!(
        "[source.auth]\nkind = \"oauth2\"\ntoken_url = \"{}/oauth/token\"\nclient_id = \"crm\"\nclient_secret = {{ env = \"RES_CLIENT_SECRET\" }}\n",
        server.url
    );
    let text = workflow_text(
        &server.url,
        "rate_limit = { requests = 1, per = \"30s\" }",
        "",
    ) + &auth;
    let runs = sync(dir.path(), &text, &clock).await?;
    assert_eq!(
        runs[0].state.status,
        Status::Completed,
        "{:?}",
        runs[0].state.status
    );
    assert_eq!(ids(dir.path())?.len(), 24);
    let received = server.received();
    let data: Vec<&Request> = received.iter().filter(|r| r.path() == "/items").collect();
    // One request every 30 s. Token 1 (0 s) is replaced 60 s before it expires, by token 2,
    // which the API has revoked: its one 401 is answered by token 3 at once. Any request
    // with an expired token would be another 401 (and a second refresh fails the run).
    let refused: Vec<_> = data
        .iter()
        .filter(|r| r.header("authorization") == Some("Bearer at-2"))
        .collect();
    assert_eq!((data.len(), refused.len()), (9, 1));
    let tokens = issued
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    // Pages at 0, 30, 60 (refused), 90 … 240 s; the resent request waits its turn at the
    // budget, and its token lives until 210 s, so it is replaced at 150 s, and so on.
    assert_eq!(
        tokens.iter().map(|t| (t - T0) / 1000).collect::<Vec<_>>(),
        [0, 60, 90, 150, 210]
    );
    assert!(runs[0].retries().is_empty(), "a 401 refresh is not a retry");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oauth2_refresh_tokens_are_used_and_rotated() -> Result {
    set_env("RES_REFRESH_SECRET", "client-s3cret-2");
    set_env("RES_REFRESH_TOKEN", "rt-1");
    let dir = TempDir::new("oauth2-refresh");
    let clock = ManualClock::at(T0);
    // Every refresh token works once and is replaced by the next (rotation); tokens live 30 s.
    let server = Server::start(clock_reader(&clock), |r: &Request| {
        if r.path() == "/token" {
            let n: u64 = r
                .body
                .split('&')
                .find_map(|p| p.strip_prefix("refresh_token=rt-"))
                .and_then(|n| n.parse().ok())
                .unwrap_or(0);
            let client = r
                .body
                .contains("client_id=crm&client_secret=client-s3cret-2");
            if n == 0 || !client || !r.body.contains("grant_type=refresh_token") {
                return Reply::json(400, r#"{"error":"invalid_grant"}"#);
            }
            return Reply::json(
                200,
                format!(
                    r#"{{"access_token":"at-{n}","expires_in":30,"refresh_token":"rt-{}"}}"#,
                    n + 1
                ),
            );
        }
        let n: u64 = r.param("cursor").map_or(1, |c| c.parse().unwrap_or(1));
        page(n * 3 - 2, (n < 4).then(|| (n + 1).to_string()).as_deref())
    })
    .await?;
    let auth = format!(
        "[source.auth]\nkind = \"oauth2\"\ntoken_url = \"{}/token\"\nclient_id = \"crm\"\n\
         client_secret = {{ env = \"RES_REFRESH_SECRET\" }}\nrefresh_token = {{ env = \"RES_REFRESH_TOKEN\" }}\n\
         client_auth = \"body\"\nrefresh_before = \"5s\"\n",
        server.url
    );
    // One page every 30 s: each page needs a new access token, from the rotated refresh token.
    let text = workflow_text(
        &server.url,
        "rate_limit = { requests = 1, per = \"30s\" }",
        "",
    ) + &auth;
    let runs = sync(dir.path(), &text, &clock).await?;
    assert_eq!(
        runs[0].state.status,
        Status::Completed,
        "{:?}",
        runs[0].state.status
    );
    let used: Vec<String> = server
        .received()
        .iter()
        .filter(|r| r.path() == "/items")
        .filter_map(|r| r.header("authorization").map(str::to_string))
        .collect();
    assert_eq!(
        used,
        ["Bearer at-1", "Bearer at-2", "Bearer at-3", "Bearer at-4"]
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_custom_ca_file_makes_a_private_tls_server_trusted() -> Result {
    use rustls::pki_types::pem::PemObject;
    let dir = TempDir::new("tls");
    let (cert, key) = crate::util::self_signed(dir.path(), "localhost", "DNS:localhost")?;
    let certs = rustls::pki_types::CertificateDer::pem_file_iter(&cert)?
        .collect::<std::result::Result<Vec<_>, _>>()?;
    let key = rustls::pki_types::PrivateKeyDer::from_pem_file(&key)?;
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_no_client_auth()
    .with_single_cert(certs, key)?;
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let clock = ManualClock::at(T0);
    let server = Server::start_tls(
        clock_reader(&clock),
        script(vec![page(1, None), page(1, None)]),
        acceptor,
    )
    .await?;
    // Without the CA: the certificate is refused, a clear error.
    let text = workflow_text(&server.url, "max_attempts = 1", "");
    let untrusted = sync(dir.path(), &text, &clock).await?;
    match &untrusted[0].state.status {
        Status::Failed(e) => assert!(
            e.contains("GET /items") && e.contains("certificate") && e.contains("ca_file"),
            "{e}"
        ),
        other => panic!("{other:?}"),
    }
    // With it: trusted.
    let trusted = TempDir::new("tls-ca");
    std::fs::copy(&cert, trusted.path().join("ca.pem"))?;
    let text = workflow_text(&server.url, "ca_file = \"ca.pem\"", "");
    let runs = sync(trusted.path(), &text, &clock).await?;
    assert_eq!(runs[0].state.status, Status::Completed);
    assert_eq!(ids(trusted.path())?, [1, 2, 3]);
    // A CA file that is not PEM is named.
    std::fs::write(trusted.path().join("ca.pem"), "not a certificate")?;
    let err = sync(trusted.path(), &text, &clock)
        .await
        .err()
        .map(|e| e.to_string());
    assert!(
        err.as_deref()
            .is_some_and(|e| e.starts_with("source.ca_file: ") && e.contains("ca.pem")),
        "{err:?}"
    );
    Ok(())
}
