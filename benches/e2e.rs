//! End-to-end throughput of the real `waymark` binary against a local page server, side by
//! side with hand-written Rust loops (plain; lean, into its own table and into Waymark's)
//! and with the journal switched off; and the
//! achieved request rate against a rate-limited server.
//!
//! `cargo bench --features bench-unjournaled --bench e2e` (the feature builds the
//! bench-only journal-off switch into the measured binary) — sizes with `WAYMARK_BENCH_SIZES=200000,2000000` (default),
//! each run `WAYMARK_BENCH_ROUNDS=3` times interleaved (median), resume latency over a run of
//! `WAYMARK_BENCH_RESUME_STEPS=1000000` steps, rate-limited run with `WAYMARK_BENCH_RATE=20`
//! requests/s over `WAYMARK_BENCH_SECONDS=30`, a sync of 400 pages with no `rate_limit`
//! against an API allowing `WAYMARK_BENCH_LEARN_RATE=5` requests/s (first run, then again
//! with the first run's saved budget; 0 skips it), a run with nothing new by each window rule
//! (`WAYMARK_BENCH_IDLE_ROUNDS=9`, 0 skips it), a slow API (`WAYMARK_BENCH_LATENCY=150ms`)
//! read sequentially and in `WAYMARK_BENCH_PARTITIONS=8` partitions at once, also under an
//! API limit of `WAYMARK_BENCH_QUOTA=20` requests/s (0 partitions skips it). `WAYMARK_BENCH_BASELINE=<path>` adds another
//! build of waymark (an earlier commit's) to the throughput rounds, side by side.
//!
//! `cargo bench --features bench-unjournaled --bench e2e -- serve <records> <dir>` only serves the pages and writes a
//! workflow for them into `<dir>` (printed), to profile `waymark run` by hand.
//!
//! Needs `/usr/bin/time` (GNU time) for peak RSS. See BENCHMARKS.md.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

mod support;

type Result<T = ()> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;

const PAGE: u64 = 500;

/// Record `id` as JSON, about 400 bytes.
fn record(id: u64, out: &mut String) {
    use std::fmt::Write;
    let r = id.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let _ = write!(
        out,
        r#"{{"id":{id},"updated_at":"2026-01-{:02}T{:02}:{:02}:{:02}.000Z","status":"{}","customer":{{"id":{},"name":"Customer {}","email":"c{}@example.com"}},"currency":"EUR","total_cents":{},"items":[{{"sku":"SKU-{:05}","quantity":{},"unit_price_cents":{}}},{{"sku":"SKU-{:05}","quantity":1,"unit_price_cents":{}}}],"shipping":{{"city":"Lyon","country":"FR","method":"standard"}},"note":"order {id} of the benchmark"}}"#,
        1 + id / 86_400 % 28,
        id / 3600 % 24,
        id / 60 % 60,
        id % 60,
        ["pending", "paid", "shipped", "delivered"][(r % 4) as usize],
        r % 100_000,
        r % 100_000,
        r % 100_000,
        r % 500_000,
        r % 99_999,
        1 + r % 4,
        100 + r % 9_000,
        (r >> 20) % 99_999,
        100 + (r >> 30) % 9_000,
    );
}

/// Page `k` (from 0) of `n` records: `{"data": [...], "next": "k+1"}`.
fn page(k: u64, n: u64) -> String {
    page_from(1, k, n)
}

/// Page `k` (from 0) of the records from id `from` to `n`; record `id` was updated at
/// 2026-01-01T00:00:00Z + `id` seconds (below 28 days of ids), so `updated_since=T` starts at
/// the first id at or after T.
fn page_from(from: u64, k: u64, n: u64) -> String {
    let first = from + k * PAGE;
    let last = (first + PAGE - 1).min(n);
    let mut out = String::with_capacity(PAGE as usize * 420 + 64);
    out.push_str(r#"{"data":["#);
    for id in first..=last {
        if id > first {
            out.push(',');
        }
        record(id, &mut out);
    }
    out.push(']');
    if last < n {
        out.push_str(&format!(r#","next":"{}""#, k + 1));
    }
    out.push('}');
    out
}

/// What the page server counts.
#[derive(Default)]
struct Counters {
    served: AtomicU64,
    refused: AtomicU64,
    first_request: Mutex<Option<Instant>>,
    last_served: Mutex<Option<Instant>>,
}

#[derive(Clone)]
struct Served {
    pages: Arc<Vec<bytes::Bytes>>,
    counters: Arc<Counters>,
    /// GCRA at `rate` requests a second with a burst of 2: the theoretical arrival time.
    limit: Option<Arc<Mutex<Instant>>>,
    rate: u64,
    /// Records in the dataset (pages are rendered on demand beyond the pre-rendered ones).
    n: u64,
}

async fn serve_page(
    State(s): State<Served>,
    Query(q): Query<std::collections::HashMap<String, String>>,
) -> Response {
    {
        let mut first = s
            .counters
            .first_request
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        first.get_or_insert_with(Instant::now);
    }
    let mut headers = HeaderMap::new();
    if let Some(limit) = &s.limit {
        let mut tat = limit.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        let interval = Duration::from_secs(1) / s.rate.max(1) as u32;
        let allowed_at = tat.checked_sub(interval).unwrap_or(now);
        if now < allowed_at {
            s.counters.refused.fetch_add(1, Ordering::Relaxed);
            let wait = (allowed_at - now).as_secs_f64().ceil().max(1.0) as u64;
            headers.insert("retry-after", HeaderValue::from(wait));
            return (StatusCode::TOO_MANY_REQUESTS, headers, "slow down").into_response();
        }
        *tat = (*tat).max(now) + interval;
    }
    let k: u64 = q.get("cursor").and_then(|c| c.parse().ok()).unwrap_or(0);
    s.counters.served.fetch_add(1, Ordering::Relaxed);
    *s.counters
        .last_served
        .lock()
        .unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
    let since = q.get("updated_since").map(|t| {
        let at = humantime::parse_rfc3339(t).map_or(u64::MAX, |t| {
            let from = t.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
            from.as_millis() as u64
        });
        // Ids are seconds after 2026-01-01T00:00:00Z: the first at or after `at`.
        at.saturating_sub(1_767_225_600_000).div_ceil(1000).max(1)
    });
    let body = match (since, s.pages.get(k as usize)) {
        (Some(from), _) => bytes::Bytes::from(page_from(from, k, s.n)),
        (None, Some(b)) => b.clone(),
        (None, None) => bytes::Bytes::from(page(k, s.n)),
    };
    headers.insert("content-type", HeaderValue::from_static("application/json"));
    (headers, body).into_response()
}

/// Serves `n` records as pages of 500 on loopback; pre-renders up to `prerender` pages.
fn start_server(
    rt: &tokio::runtime::Runtime,
    n: u64,
    prerender: u64,
    rate: u64,
) -> Result<(SocketAddr, Arc<Counters>)> {
    let pages: Vec<bytes::Bytes> = (0..prerender.min(n.div_ceil(PAGE)))
        .map(|k| bytes::Bytes::from(page(k, n)))
        .collect();
    let counters = Arc::new(Counters::default());
    let state = Served {
        pages: Arc::new(pages),
        counters: counters.clone(),
        limit: (rate > 0).then(|| Arc::new(Mutex::new(Instant::now()))),
        rate,
        n,
    };
    let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
    let addr = listener.local_addr()?;
    let app = Router::new()
        .route("/items", get(serve_page))
        .with_state(state);
    rt.spawn(async move { axum::serve(listener, app).await });
    Ok((addr, counters))
}

/// Wall time, peak RSS (KiB) and CPU time (user + system) of a process.
type Timed = (Duration, u64, Duration);

/// The middle of `samples` (the upper one of an even count).
fn median<T: Ord + Copy>(mut samples: Vec<T>) -> T {
    samples.sort();
    samples[samples.len() / 2]
}

/// A number from the environment variable `name`, else `default`.
fn setting<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// [`Timed`] of a command run under `/usr/bin/time -v`.
fn timed(cmd: Command) -> Result<Timed> {
    let program = cmd.get_program().to_owned();
    let args: Vec<_> = cmd.get_args().map(|a| a.to_owned()).collect();
    let envs: Vec<_> = cmd
        .get_envs()
        .map(|(k, v)| (k.to_owned(), v.map(|v| v.to_owned())))
        .collect();
    let mut time = Command::new("/usr/bin/time");
    time.arg("-v").arg(program).args(args);
    for (k, v) in envs {
        match v {
            Some(v) => time.env(k, v),
            None => time.env_remove(k),
        };
    }
    let began = Instant::now();
    let out = time.stdin(Stdio::null()).output()?;
    let took = began.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        return Err(format!("{:?} failed: {stderr}", cmd.get_program()).into());
    }
    let rss = stderr
        .lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("Maximum resident set size (kbytes): ")
        })
        .and_then(|v| v.trim().parse().ok())
        .ok_or("no RSS in /usr/bin/time output")?;
    let seconds = |prefix: &str| {
        stderr
            .lines()
            .find_map(|l| l.trim().strip_prefix(prefix))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    let cpu = seconds("User time (seconds): ") + seconds("System time (seconds): ");
    Ok((took, rss, Duration::from_secs_f64(cpu)))
}

fn workflow(dir: &Path, addr: SocketAddr, extra_source: &str, page_size: u64) -> Result<PathBuf> {
    workflow_with(dir, addr, extra_source, page_size, "")
}

/// [`workflow`] with more keys for the stream.
fn workflow_with(
    dir: &Path,
    addr: SocketAddr,
    extra_source: &str,
    page_size: u64,
    extra_stream: &str,
) -> Result<PathBuf> {
    let text = format!(
        r#"[sync]
name = "bench"
audit_keep = "0s"

[source]
kind = "http"
base_url = "http://{addr}"
{extra_source}

[[stream]]
name = "items"
path = "/items"
records = "data"
primary_key = "id"
cursor_field = "updated_at"
page_size = {page_size}
pagination = {{ kind = "cursor", cursor_path = "next", cursor_param = "cursor", limit_param = "limit" }}
{extra_stream}

[destination]
kind = "sqlite"
path = "out.db"
"#
    );
    let path = dir.join("bench.toml");
    std::fs::write(&path, text)?;
    Ok(path)
}

/// The binary under measurement.
fn this_waymark() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_waymark"))
}

fn waymark(bin: &Path, dir: &Path, wf: &Path) -> Command {
    let mut cmd = Command::new(bin);
    cmd.arg("run")
        .arg(wf)
        .arg("-q")
        .env("WAYMARK_STATE_DIR", dir.join("state"))
        .env_remove("WAYMARK_BENCH_UNJOURNALED");
    cmd
}

fn rows(db: &Path) -> Result<u64> {
    let conn = rusqlite::Connection::open(db)?;
    Ok(conn.query_row("SELECT count(*) FROM items", [], |r| r.get::<_, i64>(0))? as u64)
}

/// What the hand-written loops share: the SQLite file (WAL, `synchronous`, the `items` table
/// `table` creates), then page after page of `url`: `write` upserts a page's body in the
/// open transaction and returns the next cursor, then the checkpoint row, commit. Runs in a
/// child process (`e2e baseline|lean|lean-table <url> <db>`), so its RSS is its own.
fn hand_written(
    url: &str,
    db: &Path,
    (synchronous, table): (&str, &str),
    mut write: impl FnMut(&rusqlite::Transaction, &[u8]) -> Result<Option<String>>,
) -> Result {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let client = reqwest::Client::new();
    let conn = rusqlite::Connection::open(db)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", synchronous)?;
    conn.execute_batch(&format!(
        "{table};
         CREATE TABLE IF NOT EXISTS checkpoint (id INTEGER PRIMARY KEY, cursor TEXT);"
    ))?;
    let mut cursor: Option<String> = None;
    loop {
        let mut request = client
            .get(format!("{url}/items"))
            .query(&[("limit", "500")]);
        if let Some(c) = &cursor {
            request = request.query(&[("cursor", c)]);
        }
        let body =
            rt.block_on(async { request.send().await?.error_for_status()?.bytes().await })?;
        let tx = conn.unchecked_transaction()?;
        cursor = write(&tx, &body)?;
        tx.execute(
            "INSERT OR REPLACE INTO checkpoint (id, cursor) VALUES (1, ?1)",
            [&cursor],
        )?;
        tx.commit()?;
        if cursor.is_none() {
            return Ok(());
        }
    }
}

const UPSERT: &str = "INSERT INTO items (key, version, record) VALUES (?1, ?2, ?3)
     ON CONFLICT (key) DO UPDATE SET version = excluded.version, record = excluded.record
     WHERE excluded.version >= items.version";

/// The baseline: each page parsed into a `serde_json::Value`, its records upserted (text
/// keys, each record re-serialised) with the checkpoint in one transaction, WAL with
/// `synchronous=FULL` as Waymark's destination.
fn baseline(url: &str, db: &Path) -> Result {
    let table =
        "CREATE TABLE IF NOT EXISTS items (key TEXT PRIMARY KEY, version TEXT, record TEXT)";
    hand_written(url, db, ("FULL", table), |tx, body| {
        let page: serde_json::Value = serde_json::from_slice(body)?;
        let records = page["data"].as_array().ok_or("no data")?;
        let mut upsert = tx.prepare_cached(UPSERT)?;
        for r in records {
            upsert.execute((r["id"].to_string(), r["updated_at"].as_str(), r.to_string()))?;
        }
        Ok(page["next"].as_str().map(String::from))
    })
}

/// A page as the lean loops read it: its records borrowed as they came, the next cursor.
#[derive(serde::Deserialize)]
struct Page<'a> {
    #[serde(borrow)]
    data: Vec<&'a serde_json::value::RawValue>,
    next: Option<&'a str>,
}

/// The lean loop an engineer would write by hand instead of adopting a tool: the page
/// parsed once into borrowed, typed fields (each record's text kept as it came), a
/// prepared version-checked upsert and a checkpoint row per page in one transaction, WAL
/// with `synchronous=NORMAL` (survives a crash of the process, not a power cut).
fn lean(url: &str, db: &Path) -> Result {
    #[derive(serde::Deserialize)]
    struct Item<'a> {
        id: u64,
        updated_at: &'a str,
    }
    let table =
        "CREATE TABLE IF NOT EXISTS items (key INTEGER PRIMARY KEY, version TEXT, record TEXT)";
    hand_written(url, db, ("NORMAL", table), |tx, body| {
        let page: Page = serde_json::from_slice(body)?;
        let mut upsert = tx.prepare_cached(UPSERT)?;
        for raw in &page.data {
            let item: Item = serde_json::from_str(raw.get())?;
            upsert.execute((item.id, item.updated_at, raw.get()))?;
        }
        Ok(page.next.map(String::from))
    })
}

/// The lean loop writing Waymark's table instead of its own: the key as the text the API
/// wrote (`TEXT PRIMARY KEY`, so an index beside the rows), the run and page that wrote
/// each row, `deleted_at`. What the lean loop would cost with Waymark's storage.
fn lean_in_waymarks_table(url: &str, db: &Path) -> Result {
    #[derive(serde::Deserialize)]
    struct Item<'a> {
        #[serde(borrow)]
        id: &'a serde_json::value::RawValue,
        updated_at: &'a str,
    }
    let table = "CREATE TABLE IF NOT EXISTS items (key TEXT PRIMARY KEY NOT NULL, version TEXT,
         record TEXT NOT NULL, run_id TEXT NOT NULL, page INTEGER NOT NULL, deleted_at TEXT)";
    let run = "01a23def-ec06-71ee-954f-b011937cdff1";
    let mut page_no = 0i64;
    hand_written(url, db, ("NORMAL", table), |tx, body| {
        let page: Page = serde_json::from_slice(body)?;
        page_no += 1;
        let mut upsert = tx.prepare_cached(
            "INSERT INTO items (key, version, record, run_id, page) VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT (key) DO UPDATE SET version = excluded.version, record = excluded.record,
               run_id = excluded.run_id, page = excluded.page, deleted_at = NULL
             WHERE excluded.version >= items.version",
        )?;
        for raw in &page.data {
            let item: Item = serde_json::from_str(raw.get())?;
            upsert.execute((item.id.get(), item.updated_at, raw.get(), run, page_no))?;
        }
        Ok(page.next.map(String::from))
    })
}

/// The server's own limit: fetch every page (body read, not parsed), one at a time.
fn fetch_only(rt: &tokio::runtime::Runtime, url: &str) -> Result<Duration> {
    let client = reqwest::Client::new();
    let began = Instant::now();
    rt.block_on(async {
        let mut k = 0u64;
        loop {
            let body = client
                .get(format!("{url}/items?limit=500&cursor={k}"))
                .send()
                .await?
                .bytes()
                .await?;
            if !body.ends_with(b"]}") {
                k += 1;
                continue;
            }
            return Ok::<_, Box<dyn std::error::Error + Send + Sync>>(());
        }
    })?;
    Ok(began.elapsed())
}

struct Row {
    name: &'static str,
    took: Duration,
    rss_kib: u64,
    cpu: Duration,
}

/// The three runs of `n` records, `rounds` times interleaved (the machines are noisy):
/// median time and largest peak RSS of each.
fn throughput(rt: &tokio::runtime::Runtime, n: u64, rounds: usize) -> Result<Vec<Row>> {
    let (addr, _) = start_server(rt, n, 4_000, 0)?;
    let url = format!("http://{addr}");
    let mut rows_out = vec![Row {
        name: "server limit (fetch only)",
        took: fetch_only(rt, &url)?,
        rss_kib: 0,
        cpu: Duration::ZERO,
    }];
    let scratch = std::env::temp_dir().join(format!("waymark-bench-e2e-{}", std::process::id()));
    // (name, binary, how, stream keys); no binary: one of the hand-written loops (this
    // bench's own subcommand of that name). This build's runs declare the key an integer
    // (`key_type`, as the lean loop's typed parse does) but one, which keeps it as text.
    // `WAYMARK_BENCH_BASELINE` names another build of waymark (an earlier commit's, say)
    // measured in the same rounds, with the stream as such a build reads it.
    let integer = "key_type = \"integer\"";
    let mut runs: Vec<(&'static str, Option<PathBuf>, How, &str)> = vec![
        ("plain Rust loop", None, How::AsIs, ""),
        ("lean Rust loop", None, How::AsIs, ""),
        (
            "lean Rust loop, Waymark's text-key table",
            None,
            How::AsIs,
            "",
        ),
        ("waymark", Some(this_waymark()), How::AsIs, integer),
        (
            "waymark, durability \"process\"",
            Some(this_waymark()),
            How::Process,
            integer,
        ),
        (
            "waymark, durability \"process\", text key",
            Some(this_waymark()),
            How::Process,
            "",
        ),
        (
            "waymark, journal off",
            Some(this_waymark()),
            How::Unjournaled,
            integer,
        ),
        (
            "waymark, durability \"process\", journal off",
            Some(this_waymark()),
            How::ProcessUnjournaled,
            integer,
        ),
    ];
    if let Some(baseline) = std::env::var_os("WAYMARK_BENCH_BASELINE") {
        runs.push((
            "waymark, baseline binary",
            Some(PathBuf::from(baseline)),
            How::AsIs,
            "",
        ));
    }
    let mut samples: Vec<Vec<(Duration, u64, Duration)>> = vec![Vec::new(); runs.len()];
    for _ in 0..rounds.max(1) {
        for (i, (name, bin, how, keys)) in runs.iter().enumerate() {
            let dir = scratch.join(name.replace([' ', ',', '(', ')', '"'], "_"));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir)?;
            let db = dir.join("out.db");
            let sample = match bin {
                None => {
                    let mut cmd = Command::new(std::env::current_exe()?);
                    let loop_ = match *name {
                        "lean Rust loop" => "lean",
                        "lean Rust loop, Waymark's text-key table" => "lean-table",
                        _ => "baseline",
                    };
                    cmd.arg(loop_).arg(&url).arg(&db);
                    timed(cmd)?
                }
                Some(bin) => {
                    let wf = workflow_with(&dir, addr, "", PAGE, keys)?;
                    if matches!(how, How::Process | How::ProcessUnjournaled) {
                        let text = std::fs::read_to_string(&wf)?;
                        let text =
                            text.replacen("[sync]\n", "[sync]\ndurability = \"process\"\n", 1);
                        std::fs::write(&wf, text)?;
                    }
                    let mut cmd = waymark(bin, &dir, &wf);
                    if matches!(how, How::Unjournaled | How::ProcessUnjournaled) {
                        cmd.env("WAYMARK_BENCH_UNJOURNALED", "1");
                    }
                    timed(cmd)?
                }
            };
            let got = rows(&db)?;
            if got != n {
                return Err(format!("{name}: {got} rows, expected {n}").into());
            }
            samples[i].push(sample);
            let _ = std::fs::remove_dir_all(&dir);
        }
    }
    for ((name, ..), taken) in runs.into_iter().zip(samples) {
        rows_out.push(Row {
            name,
            took: median(taken.iter().map(|t| t.0).collect()),
            rss_kib: taken.iter().map(|t| t.1).max().unwrap_or(0),
            cpu: median(taken.iter().map(|t| t.2).collect()),
        });
    }
    Ok(rows_out)
}

/// How a waymark run of [`throughput`] is set up.
#[derive(Clone, Copy, PartialEq, Eq)]
enum How {
    /// The workflow as written: everything on, `durability = "power-loss"`.
    AsIs,
    /// `[sync] durability = "process"`: no fsync per step.
    Process,
    /// The bench-only switch: nothing journaled, pages staged without fsync (the
    /// destination as under `power-loss`).
    Unjournaled,
    /// Both: what the journal costs under `process`.
    ProcessUnjournaled,
}

/// Against a server allowing `rate` requests a second (429 + Retry-After beyond, quota
/// headers on every answer), a run of `seconds`: achieved page rate over `rate`.
fn rate_limited(rt: &tokio::runtime::Runtime, rate: u64, seconds: u64) -> Result<(f64, u64, u64)> {
    let n = rate * seconds * 2 * PAGE;
    let (addr, counters) = start_server(rt, n, 0, rate)?;
    let dir = std::env::temp_dir().join(format!("waymark-bench-rate-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let budget = format!("rate_limit = {{ requests = {rate}, per = \"1s\" }}");
    let wf = workflow(&dir, addr, &budget, 20)?;
    let mut cmd = waymark(&this_waymark(), &dir, &wf);
    cmd.arg("--max-duration").arg(format!("{seconds}s"));
    let out = cmd.output()?;
    let first = counters
        .first_request
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .ok_or("no request")?;
    let last = counters
        .last_served
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .ok_or("nothing served")?;
    let served = counters.served.load(Ordering::Relaxed);
    // Requests after the first, over the time from the first to the last.
    let span = last.duration_since(first).as_secs_f64().max(1e-3);
    let refused = counters.refused.load(Ordering::Relaxed);
    if !matches!(out.status.code(), Some(0 | 3)) {
        return Err(format!("rate-limited run: {}", String::from_utf8_lossy(&out.stderr)).into());
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok((
        served.saturating_sub(1) as f64 / span / rate as f64,
        served,
        refused,
    ))
}

/// Against a server allowing `rate` requests a second (burst 2, 429 + Retry-After beyond)
/// while the workflow declares no `rate_limit`: a whole sync of `pages` pages, then the same
/// sync from scratch with the first run's saved budget (`rate/`) kept. For each, the
/// achieved share of the allowed rate, requests served and refused.
fn unconfigured_limit(
    rt: &tokio::runtime::Runtime,
    rate: u64,
    pages: u64,
) -> Result<Vec<(f64, u64, u64)>> {
    let dir = std::env::temp_dir().join(format!("waymark-bench-learn-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut out = Vec::new();
    for run in 0..2 {
        let (addr, counters) = start_server(rt, pages * PAGE, 0, rate)?;
        // The second run: a fresh state directory and destination, the saved budget kept.
        let kept =
            std::env::temp_dir().join(format!("waymark-bench-rate-kept-{}", std::process::id()));
        let _ = std::fs::rename(dir.join("state/rate"), &kept);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("state"))?;
        let _ = std::fs::rename(&kept, dir.join("state/rate"));
        // The same API on a new port: its budget file renamed to the new origin's.
        if let Ok(files) = std::fs::read_dir(dir.join("state/rate")) {
            for file in files.flatten() {
                let to = dir.join(format!("state/rate/127.0.0.1_{}.json", addr.port()));
                std::fs::rename(file.path(), to)?;
            }
        }
        let wf = workflow(&dir, addr, "", 20)?;
        let done = waymark(&this_waymark(), &dir, &wf).output()?;
        if !done.status.success() {
            let err = String::from_utf8_lossy(&done.stderr);
            return Err(format!("unconfigured-limit run {run}: {err}").into());
        }
        let first = counters
            .first_request
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .ok_or("no request")?;
        let last = counters
            .last_served
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .ok_or("nothing served")?;
        let served = counters.served.load(Ordering::Relaxed);
        let span = last.duration_since(first).as_secs_f64().max(1e-3);
        out.push((
            served.saturating_sub(1) as f64 / span / rate as f64,
            served,
            counters.refused.load(Ordering::Relaxed),
        ));
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(out)
}

/// A run with nothing new, after a first run of `n` records: for each window rule, the
/// requests it sent, and the medians of `rounds` runs' wall time, peak RSS and CPU; beside
/// them the same binary doing nothing (`waymark --version`), the floor of any process.
fn nothing_new(
    rt: &tokio::runtime::Runtime,
    n: u64,
    rounds: usize,
) -> Result<Vec<(&'static str, f64, Timed)>> {
    let (addr, counters) = start_server(rt, n, 0, 0)?;
    let base = std::env::temp_dir().join(format!("waymark-bench-idle-{}", std::process::id()));
    let median = |v: Vec<Timed>| {
        (
            median(v.iter().map(|x| x.0).collect()),
            median(v.iter().map(|x| x.1).collect()),
            median(v.iter().map(|x| x.2).collect()),
        )
    };
    let mut out = Vec::new();
    let mut floor = Vec::new();
    for _ in 0..rounds {
        let mut cmd = Command::new(this_waymark());
        cmd.arg("--version").stdout(Stdio::null());
        floor.push(timed(cmd)?);
    }
    out.push(("`waymark --version` (no run)", 0.0, median(floor)));
    for rule in ["watermark", "max_seen"] {
        let dir = base.join(rule);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let window = format!(
            r#"window = {{ lag = "0s", start = "{rule}", start_param = "updated_since" }}"#
        );
        let wf = workflow_with(&dir, addr, "", PAGE, &window)?;
        let first = waymark(&this_waymark(), &dir, &wf).output()?;
        if !first.status.success() {
            let err = String::from_utf8_lossy(&first.stderr);
            return Err(format!("nothing-new first run: {err}").into());
        }
        if rows(&dir.join("out.db"))? != n {
            return Err("nothing-new: the first run did not write every record".into());
        }
        let before = counters.served.load(Ordering::Relaxed);
        let mut times = Vec::new();
        for _ in 0..rounds {
            times.push(timed(waymark(&this_waymark(), &dir, &wf))?);
        }
        let requests = (counters.served.load(Ordering::Relaxed) - before) as f64 / rounds as f64;
        out.push((rule, requests, median(times)));
    }
    let _ = std::fs::remove_dir_all(&base);
    Ok(out)
}

const AT: waymark_engine::Timestamp = waymark_engine::Timestamp(1_800_000_000_000);

/// A run's start for a state directory built by hand.
fn started(plan: &waymark_engine::Plan) -> waymark_engine::RunStarted {
    waymark_engine::RunStarted {
        run_id: waymark_engine::RunId::new(),
        sync: plan.sync.clone(),
        stream: plan.stream.clone(),
        workflow_digest: plan.workflow_digest.clone(),
        workflow_path: plan.workflow_path.clone(),
        window: waymark_engine::Window {
            start: None,
            end: AT,
        },
        start_cursor: None,
        start_from: waymark_engine::StartFrom::Beginning,
        at: AT,
    }
}

/// Page `page`'s three steps; the cursors are page numbers (what the page server takes).
fn page_steps(page: u64, last: bool) -> [waymark_engine::Event; 3] {
    use waymark_engine::{Event, PageFetched};
    [
        Event::PageFetched(PageFetched {
            page,
            request_cursor: (page > 1).then(|| (page - 1).to_string()),
            next_cursor: (!last).then(|| page.to_string()),
            records: 0,
            bytes: 0,
            checksum: 0,
            at: AT,
            max_seen: None,
        }),
        Event::BatchWritten {
            page,
            ack: Default::default(),
            at: AT,
        },
        Event::CursorCommitted { page, at: AT },
    ]
}

/// A state directory with an unfinished run of `steps` journaled steps of the bench
/// workflow (pages, and retries between them), resumable against the page server.
fn long_run(dir: &Path, wf: &Path, steps: u64) -> Result<()> {
    let workflow = waymark_connectors::Workflow::load(wf)?;
    let plan = workflow.plan(&workflow.streams()[0], false);
    let mut state_dir = waymark_engine::StateDir::open(&dir.join("state"), "bench")?;
    let journal = state_dir.journal_mut();
    let mut s = journal.start(started(&plan), &plan.fingerprint)?;
    let mut page = 0u64;
    while s.last_seq < steps {
        if s.last_seq % 100 == 1 {
            page += 1;
            let states = journal.append_steps(&s, &page_steps(page, false))?;
            s = states.into_iter().last().ok_or("nothing appended")?;
        } else {
            let retry = waymark_engine::Event::RequestRetried {
                page: page + 1,
                attempt: 1,
                error: "HTTP 503".into(),
                status: Some(503),
                rule: None,
                wait_ms: 1,
                at: AT,
            };
            s = journal.append(s, &retry)?;
            s.attempts = 0;
        }
    }
    journal.flush()?;
    Ok(())
}

/// Adds `runs` finished one-page runs (of another stream) to a state directory.
fn history(dir: &Path, runs: u64) -> Result<()> {
    let mut state_dir = waymark_engine::StateDir::open(&dir.join("state"), "bench")?;
    let journal = state_dir.journal_mut();
    let plan = waymark_engine::Plan {
        sync: "bench".into(),
        stream: "finished".into(),
        ..Default::default()
    };
    for _ in 0..runs {
        let s = journal.start(started(&plan), &[])?;
        let mut steps = page_steps(1, true).to_vec();
        steps.push(waymark_engine::Event::RunCompleted { at: AT });
        journal.append_steps(&s, &steps)?;
    }
    journal.flush()?;
    Ok(())
}

/// Time from process start to the first request of a resumed run, after a SIGKILL.
fn resume_latency(rt: &tokio::runtime::Runtime, steps: u64) -> Result<Vec<(u64, Duration)>> {
    let (addr, counters) = start_server(rt, u64::MAX / 2, 0, 0)?;
    let base = std::env::temp_dir().join(format!("waymark-bench-resume-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    let template = base.join("template");
    std::fs::create_dir_all(&template)?;
    let wf = workflow(&template, addr, "", PAGE)?;
    let built = Instant::now();
    long_run(&template, &wf, steps)?;
    eprintln!(
        "resume: a run of {steps} steps journaled in {:.1}s",
        built.elapsed().as_secs_f64()
    );
    let mut out = Vec::new();
    for runs in [1, 1_000, 10_000] {
        let dir = base.join(format!("h{runs}"));
        let copied = Command::new("cp")
            .arg("-r")
            .arg(&template)
            .arg(&dir)
            .status()?;
        if !copied.success() {
            return Err("cp -r failed".into());
        }
        history(&dir, runs)?;
        let mut times = Vec::new();
        for _ in 0..5 {
            *counters
                .first_request
                .lock()
                .unwrap_or_else(|e| e.into_inner()) = None;
            let began = Instant::now();
            let mut child = waymark(&this_waymark(), &dir, &dir.join("bench.toml"))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()?;
            let first = loop {
                if let Some(t) = *counters
                    .first_request
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                {
                    break t;
                }
                if began.elapsed() > Duration::from_secs(60) {
                    return Err("no request within 60 s of a resume".into());
                }
                std::thread::sleep(Duration::from_micros(200));
            };
            child.kill()?;
            child.wait()?;
            times.push(first.duration_since(began));
        }
        times.sort();
        out.push((runs, times[times.len() / 2]));
    }
    let _ = std::fs::remove_dir_all(&base);
    Ok(out)
}

/// What a latency-bound sync did: its wall time, requests served, 429s, and the request
/// rate the API saw (first to last request).
struct Slow {
    records: u64,
    took: Duration,
    requests: u64,
    refused: u64,
    at_api: f64,
}

/// A slow API (`waymark sandbox --latency`): orders one a second, read in pages of 100
/// over `partitions` 20-minute partitions of the window, `concurrency` at a time (1: the
/// slices one after the other); with `quota` > 0 the API answers 429 beyond that many
/// requests a second and the workflow's `rate_limit` says so.
fn latency_bound(latency: &str, partitions: u64, concurrency: u64, quota: u64) -> Result<Slow> {
    // One a second from a minute after the window's start to a minute before its end.
    let records = partitions * 20 * 60 - 120;
    let (records_arg, base, quota_arg) = (
        records.to_string(),
        format!("{}m", partitions * 20 - 1),
        quota.to_string(),
    );
    let (_sandbox, url) = support::sandbox(&[
        "--tie",
        "1",
        "--latency",
        latency,
        "--records",
        &records_arg,
        "--base",
        &base,
        "--quota",
        &quota_arg,
    ])
    .map_err(|e| e.to_string())?;
    let dir = std::env::temp_dir().join(format!(
        "waymark-bench-slow-{}-{concurrency}-{quota}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let budget = match quota {
        0 => String::new(),
        q => format!("rate_limit = {{ requests = {q}, per = \"1s\" }}"),
    };
    let wf = dir.join("slow.toml");
    std::fs::write(
        &wf,
        format!(
            r#"[sync]
name = "bench"

[source]
kind = "http"
base_url = "{url}"
{budget}

[[stream]]
name = "items"
path = "/orders"
records = "data"
primary_key = "id"
cursor_field = "updated_at"
page_size = 100
pagination = {{ kind = "cursor", cursor_path = "next_cursor", cursor_param = "cursor", limit_param = "limit" }}
window = {{ lag = "0s", initial = "{}m", step = "20m", start_param = "updated_since", end_param = "updated_before" }}
concurrency = {concurrency}

[destination]
kind = "sqlite"
path = "out.db"
"#,
            partitions * 20
        ),
    )?;
    let (took, _, _) = timed(waymark(&this_waymark(), &dir, &wf))?;
    if rows(&dir.join("out.db"))? != records {
        return Err("latency-bound: the sync did not write every record".into());
    }
    let _ = std::fs::remove_dir_all(&dir);
    let stats = support::stats(&url).map_err(|e| e.to_string())?;
    let count = |v: &serde_json::Value| v.as_u64().unwrap_or(0);
    let requests = count(&stats["requests"]);
    let seen = count(&stats["last_request_ms"]).saturating_sub(count(&stats["first_request_ms"]));
    Ok(Slow {
        records,
        took,
        requests,
        refused: count(&stats["faults"]["429"]),
        at_api: requests.saturating_sub(1) as f64 * 1e3 / seen.max(1) as f64,
    })
}

fn main() -> Result {
    let args: Vec<String> = std::env::args().collect();
    if let Some(loop_ @ ("baseline" | "lean" | "lean-table")) = args.get(1).map(String::as_str) {
        let (url, db) = (args.get(2).ok_or("url")?, args.get(3).ok_or("db")?);
        return match loop_ {
            "lean" => lean(url, Path::new(db)),
            "lean-table" => lean_in_waymarks_table(url, Path::new(db)),
            _ => baseline(url, Path::new(db)),
        };
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    if args.get(1).map(String::as_str) == Some("serve") {
        // For profiling by hand: serve N records, write a workflow into DIR, wait.
        let n = args
            .get(2)
            .and_then(|n| n.parse().ok())
            .ok_or("serve <records> <dir>")?;
        let dir = Path::new(args.get(3).ok_or("serve <records> <dir>")?);
        std::fs::create_dir_all(dir)?;
        let (addr, _) = start_server(&rt, n, 4_000, 0)?;
        println!("{}", workflow(dir, addr, "", PAGE)?.display());
        rt.block_on(std::future::pending::<()>());
    }
    let sizes: Vec<u64> = std::env::var("WAYMARK_BENCH_SIZES")
        .unwrap_or_else(|_| "200000,2000000".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    println!("| records | run | time | records/s | vs plain loop | peak RSS | CPU (user + sys) |");
    println!("|---:|---|---:|---:|---:|---:|---:|");
    let rounds = setting("WAYMARK_BENCH_ROUNDS", 3);
    for n in sizes {
        let rows = throughput(&rt, n, rounds)?;
        let base = rows
            .iter()
            .find(|r| r.name == "plain Rust loop")
            .map_or(Duration::from_secs(1), |r| r.took);
        for r in &rows {
            println!(
                "| {n} | {} | {:.2} s | {:.0} | {:.2}× | {} | {} |",
                r.name,
                r.took.as_secs_f64(),
                n as f64 / r.took.as_secs_f64(),
                base.as_secs_f64() / r.took.as_secs_f64(),
                match r.rss_kib {
                    0 => "-".to_string(),
                    k => format!("{:.1} MiB", k as f64 / 1024.0),
                },
                match r.cpu.is_zero() {
                    true => "-".to_string(),
                    false => format!("{:.2} s", r.cpu.as_secs_f64()),
                }
            );
        }
    }
    let steps = setting("WAYMARK_BENCH_RESUME_STEPS", 1_000_000);
    if steps > 0 {
        println!("\n| finished runs in the state dir | current run | process start → first fetch (median of 5) |");
        println!("|---:|---:|---:|");
        for (runs, took) in resume_latency(&rt, steps)? {
            println!(
                "| {runs} | {steps} steps | {:.0} ms |",
                took.as_secs_f64() * 1e3
            );
        }
    }
    let rate = setting("WAYMARK_BENCH_RATE", 20);
    let seconds = setting("WAYMARK_BENCH_SECONDS", 30);
    if rate > 0 {
        let (fraction, served, refused) = rate_limited(&rt, rate, seconds)?;
        println!(
            "\nrate-limited: {served} pages in {seconds} s at {rate} req/s allowed: {:.1}% of the allowed rate, {refused} requests refused (429)",
            fraction * 100.0
        );
    }
    let idle = setting("WAYMARK_BENCH_IDLE_ROUNDS", 9);
    if idle > 0 {
        let n = 10_000;
        println!("\n| a run with nothing new, after {n} records (median of {idle}) | requests | wall | peak RSS | CPU (user + sys) |");
        println!("|---|---:|---:|---:|---:|");
        for (what, requests, (took, rss, cpu)) in nothing_new(&rt, n, idle)? {
            println!(
                "| {what} | {requests:.0} | {:.1} ms | {:.1} MiB | {:.1} ms |",
                took.as_secs_f64() * 1e3,
                rss as f64 / 1024.0,
                cpu.as_secs_f64() * 1e3
            );
        }
    }
    let latency = std::env::var("WAYMARK_BENCH_LATENCY").unwrap_or_else(|_| "150ms".into());
    let partitions = setting("WAYMARK_BENCH_PARTITIONS", 8);
    if partitions > 0 && !latency.is_empty() {
        let quota = setting("WAYMARK_BENCH_QUOTA", 20);
        println!("\n| API answering in {latency}, {partitions} partitions of 20 min, 100 records a page | wall | records/s | vs sequential | requests | API saw | 429s |");
        println!("|---|---:|---:|---:|---:|---:|---:|");
        let mut sequential = None;
        for (concurrency, quota) in [(1, 0), (partitions, 0), (partitions, quota)] {
            let slow = latency_bound(&latency, partitions, concurrency, quota)?;
            let rate = slow.records as f64 / slow.took.as_secs_f64();
            let base = *sequential.get_or_insert(rate);
            println!(
                "| concurrency {concurrency}{} | {:.2} s | {rate:.0} | {:.2}× | {} | {:.1}/s | {} |",
                match quota {
                    0 => String::new(),
                    q => format!(", API and rate_limit {q}/s"),
                },
                slow.took.as_secs_f64(),
                rate / base,
                slow.requests,
                slow.at_api,
                slow.refused
            );
        }
    }
    let learn = setting("WAYMARK_BENCH_LEARN_RATE", 5);
    if learn > 0 {
        let pages = 400;
        println!("\n| no rate_limit configured, API allows {learn}/s (burst 2) | pages | share of the allowed rate | refused |");
        println!("|---|---:|---:|---:|");
        for (run, (fraction, served, refused)) in
            unconfigured_limit(&rt, learn, pages)?.iter().enumerate()
        {
            println!(
                "| {} | {served} | {:.1}% | {refused} ({:.2}%) |",
                ["first run", "next run (first run's budget kept)"][run],
                fraction * 100.0,
                *refused as f64 * 100.0 / (*served + *refused) as f64
            );
        }
    }
    Ok(())
}
