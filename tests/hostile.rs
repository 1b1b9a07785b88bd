//! A hostile API (issue 17, items 1 and 7): bodies too large or endless are refused in
//! bounded memory; pages far larger than asked warn once or fail; cursors that cycle, have
//! the wrong type or are too long to journal stop the run, naming the page.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::scripted::{records, Background, Reply, Request};
use crate::util::*;

/// The default `source.max_page_bytes`.
const LIMIT: u64 = 64 << 20;

/// What [`Hostile`] answers every request with.
#[derive(Clone, Copy)]
enum Body {
    /// A chunked body that never ends.
    Endless,
    /// A body of this many bytes, declared by `Content-Length` and sent as it is read.
    Declared(u64),
}

/// A loopback server answering every request with a [`Body`] made up on the fly (never
/// held in memory), counting the requests and the body bytes it managed to send.
struct Hostile {
    url: String,
    requests: Arc<AtomicU64>,
    sent: Arc<AtomicU64>,
    _runtime: tokio::runtime::Runtime,
}

impl Hostile {
    fn start(body: Body) -> Result<Hostile> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()?;
        let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
        let url = format!("http://{}", listener.local_addr()?);
        let (requests, sent) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let (r, s) = (requests.clone(), sent.clone());
        runtime.spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                let (r, s) = (r.clone(), s.clone());
                tokio::spawn(async move {
                    let _ = answer(socket, body, &r, &s).await;
                });
            }
        });
        Ok(Hostile {
            url,
            requests,
            sent,
            _runtime: runtime,
        })
    }

    fn requests(&self) -> u64 {
        self.requests.load(Ordering::SeqCst)
    }

    fn sent(&self) -> u64 {
        self.sent.load(Ordering::SeqCst)
    }
}

/// Reads one request's head, then sends `body` until it ends or the client goes away.
async fn answer(
    mut socket: tokio::net::TcpStream,
    body: Body,
    requests: &AtomicU64,
    sent: &AtomicU64,
) -> std::io::Result<()> {
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        if socket.read(&mut byte).await? == 0 {
            return Ok(());
        }
        head.push(byte[0]);
    }
    requests.fetch_add(1, Ordering::SeqCst);
    // 64 KiB of records, over and over.
    let record = br#"{"id":1,"name":"the same record again and again"},"#;
    let filler: Vec<u8> = record.iter().copied().cycle().take(64 << 10).collect();
    let start = br#"{"next":"c2","data":["#;
    match body {
        Body::Endless => {
            socket
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n")
                .await?;
            let mut chunk = format!("{:x}\r\n", filler.len()).into_bytes();
            chunk.extend_from_slice(&filler);
            chunk.extend_from_slice(b"\r\n");
            socket
                .write_all(format!("{:x}\r\n", start.len()).as_bytes())
                .await?;
            socket.write_all(start).await?;
            socket.write_all(b"\r\n").await?;
            loop {
                socket.write_all(&chunk).await?;
                sent.fetch_add(filler.len() as u64, Ordering::SeqCst);
            }
        }
        Body::Declared(length) => {
            socket
                .write_all(
                    format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {length}\r\n\r\n"
                    )
                    .as_bytes(),
                )
                .await?;
            socket.write_all(start).await?;
            let mut left = length.saturating_sub(start.len() as u64);
            while left > 0 {
                let n = left.min(filler.len() as u64);
                socket.write_all(&filler[..n as usize]).await?;
                sent.fetch_add(n, Ordering::SeqCst);
                left -= n;
            }
            Ok(())
        }
    }
}

/// Three records a page, the next page's cursor at `next`.
const PAGES: &str = r#"page_size = 3
pagination = { kind = "cursor", cursor_path = "next", cursor_param = "cursor" }"#;

/// A workflow of one stream `items` at `url`, with `source` lines added to its table and
/// `stream` lines (page size and pagination among them) to the stream's.
fn workflow(dir: &Path, url: &str, source: &str, stream: &str) -> Result<PathBuf> {
    let text = format!(
        r#"[sync]
name = "hostile"

[source]
kind = "http"
base_url = "{url}"
timeout = "60s"
max_attempts = 3
backoff = {{ base = "10ms", cap = "20ms" }}
{source}

[[stream]]
name = "items"
path = "/items"
records = "data"
primary_key = "id"
{stream}

[destination]
kind = "sqlite"
path = "out.db"
"#
    );
    let path = dir.join("hostile.toml");
    std::fs::write(&path, text)?;
    Ok(path)
}

/// Runs `cmd` to its end while reading its peak resident set (`VmHWM` in
/// `/proc/<pid>/status`, which only grows) until it exits: its output and the peak in
/// bytes.
fn run_measured(cmd: &mut Command) -> Result<(Output, u64)> {
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn()?;
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut text = Vec::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_end(&mut text);
            }
            text
        })
    };
    let stdout = drain(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let stderr = drain(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let status_file = format!("/proc/{}/status", child.id());
    let started = Instant::now();
    let mut peak_kib = 0u64;
    let status = loop {
        if let Some(kib) = std::fs::read_to_string(&status_file)
            .ok()
            .and_then(|s| vm_hwm_kib(&s))
        {
            peak_kib = peak_kib.max(kib);
        }
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if started.elapsed() > Duration::from_secs(120) {
            let _ = child.kill();
            let _ = child.wait();
            return Err("the run did not end within 120 s".into());
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    let output = Output {
        status,
        stdout: stdout.join().map_err(|_| "stdout reader")?,
        stderr: stderr.join().map_err(|_| "stderr reader")?,
    };
    if peak_kib == 0 {
        return Err("never read the run's VmHWM".into());
    }
    Ok((output, peak_kib * 1024))
}

/// `VmHWM:    12345 kB` of a `/proc/<pid>/status` text, in KiB.
fn vm_hwm_kib(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// What a run said: stdout and stderr.
fn said(out: &Output) -> String {
    format!("{}{}", text(&out.stdout), text(&out.stderr))
}

/// The steps journaled by the one run in `state`.
fn steps(state: &Path) -> Result<Vec<String>> {
    let all = runs(state)?;
    let run = all
        .first()
        .and_then(|r| r["run"].as_str())
        .ok_or("no run")?;
    Ok(journal(state, run)?
        .iter()
        .filter_map(|e| e["step"].as_str().map(str::to_string))
        .collect())
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / f64::from(1 << 20)
}

#[test]
fn huge_and_endless_bodies_fail_the_run_in_bounded_memory() -> Result {
    // An endless chunked body is read up to the limit, then refused.
    let endless = Hostile::start(Body::Endless)?;
    let dir = TempDir::new("endless-body");
    let file = workflow(dir.path(), &endless.url, "", PAGES)?;
    let state = dir.path().join("state");
    let (out, peak) = run_measured(waymark(&state, "").arg("run").arg(&file))?;
    assert_no_panic(&out);
    let message = said(&out);
    assert_eq!(out.status.code(), Some(1), "{message}");
    assert!(
        message.contains(&format!(
            "page 1: GET /items: the response body goes on past {LIMIT} bytes, more than \
             source.max_page_bytes = {LIMIT} (64 MiB)"
        )),
        "{message}"
    );
    eprintln!("endless body: peak RSS {:.1} MiB", mib(peak));
    assert!(peak < 100 << 20, "peak RSS {:.1} MiB", mib(peak));
    // Not retried: one request, no retry journaled; the server got about the limit out
    // (a chunk cut short when the client hung up is not counted).
    assert_eq!(endless.requests(), 1);
    assert!(!steps(&state)?.iter().any(|s| s == "request_retried"));
    assert!(endless.sent() + (1 << 20) >= LIMIT, "{}", endless.sent());

    // A declared gigabyte is refused before its body is read.
    let huge = Hostile::start(Body::Declared(1 << 30))?;
    let dir = TempDir::new("huge-body");
    let file = workflow(dir.path(), &huge.url, "", PAGES)?;
    let state = dir.path().join("state");
    let (out, peak) = run_measured(waymark(&state, "").arg("run").arg(&file))?;
    assert_no_panic(&out);
    let message = said(&out);
    assert_eq!(out.status.code(), Some(1), "{message}");
    assert!(
        message.contains(
            "page 1: GET /items: the response body declares 1073741824 bytes (1 GiB), more \
             than source.max_page_bytes = 67108864 (64 MiB)"
        ),
        "{message}"
    );
    eprintln!("1 GiB body: peak RSS {:.1} MiB", mib(peak));
    assert!(peak < 100 << 20, "peak RSS {:.1} MiB", mib(peak));
    assert_eq!(huge.requests(), 1);
    assert!(!steps(&state)?.iter().any(|s| s == "request_retried"));
    // What the server got out before the client hung up is what socket buffers hold,
    // far below the limit: the body was not read.
    assert!(huge.sent() < 16 << 20, "{}", huge.sent());

    // The limit is a setting.
    let dir = TempDir::new("endless-body-1m");
    let file = workflow(
        dir.path(),
        &endless.url,
        "max_page_bytes = 1_048_576",
        PAGES,
    )?;
    let out = run(waymark(&dir.path().join("state"), "").arg("run").arg(&file))?;
    let message = said(&out);
    assert_eq!(out.status.code(), Some(1), "{message}");
    assert!(
        message.contains(
            "goes on past 1048576 bytes, more than source.max_page_bytes = 1048576 (1 MiB)"
        ),
        "{message}"
    );
    Ok(())
}

/// Pages of `per_page` records whatever the `limit` asked: ids from 1, three pages.
fn ignoring_the_limit(per_page: u64) -> impl Fn(&Request) -> Reply {
    move |r: &Request| {
        let page: u64 = r.param("cursor").and_then(|c| c.parse().ok()).unwrap_or(1);
        let next = match page {
            3 => "null".to_string(),
            n => format!("\"{}\"", n + 1),
        };
        Reply::json(
            200,
            format!(
                r#"{{"data":{},"next":{next}}}"#,
                records((page - 1) * per_page + 1, per_page)
            ),
        )
    }
}

#[test]
fn pages_far_larger_than_asked_warn_once_or_fail() -> Result {
    let server = Background::start(ignoring_the_limit(10))?;
    let stream = |extra: &str| {
        format!(
            "page_size = 2\npagination = {{ kind = \"cursor\", cursor_path = \"next\", \
             cursor_param = \"cursor\", limit_param = \"limit\" }}\n{extra}"
        )
    };

    // By default: one warning a run, naming the page, and the records are kept.
    let dir = TempDir::new("oversized-warn");
    let file = workflow(dir.path(), server.url(), "", &stream(""))?;
    let state = dir.path().join("state");
    let out = run(waymark(&state, "").arg("run").arg(&file))?;
    let message = said(&out);
    assert_eq!(out.status.code(), Some(0), "{message}");
    let warning = "records where page_size = 2 were asked (pagination.limit_param `limit`)";
    assert_eq!(message.matches(warning).count(), 1, "{message}");
    assert!(
        message.contains("page 1: GET /items: the page brought 10 records"),
        "{message}"
    );
    assert_eq!(rows_of(&dir.path().join("out.db"))?, 30);
    assert!(server
        .received()
        .iter()
        .all(|r| r.param("limit").as_deref() == Some("2")));

    // `oversized_pages = "fail"`: the run fails at the first such page.
    let dir = TempDir::new("oversized-fail");
    let file = workflow(
        dir.path(),
        server.url(),
        "",
        &stream("oversized_pages = \"fail\""),
    )?;
    let out = run(waymark(&dir.path().join("state"), "").arg("run").arg(&file))?;
    let message = said(&out);
    assert_eq!(out.status.code(), Some(1), "{message}");
    assert!(
        message.contains(
            "page 1: GET /items: the page brought 10 records where page_size = 2 were asked"
        ) && message.contains("stopping as oversized_pages = \"fail\""),
        "{message}"
    );
    assert_eq!(rows_of(&dir.path().join("out.db")).unwrap_or(0), 0);

    // Twice the page size is not suspicious.
    let fair = Background::start(ignoring_the_limit(4))?;
    let dir = TempDir::new("oversized-fair");
    let file = workflow(
        dir.path(),
        fair.url(),
        "",
        &stream("oversized_pages = \"fail\""),
    )?;
    let out = run(waymark(&dir.path().join("state"), "").arg("run").arg(&file))?;
    assert_eq!(out.status.code(), Some(0), "{}", said(&out));
    Ok(())
}

/// The rows of `items` in the SQLite file `db`.
fn rows_of(db: &Path) -> Result<usize> {
    Ok(table(db, "items")?.0.len())
}

/// Pages of three records; page `n`'s cursor is `cursor(n)` and points at `next(n)`.
fn pages(
    cursors: impl Fn(u64) -> Option<String> + Send + Sync + 'static,
) -> impl Fn(&Request) -> Reply {
    move |r: &Request| {
        // Page n is the one requested with cursor(n - 1).
        let page = match r.param("cursor") {
            None => 1,
            Some(sent) => (1..10_000)
                .find(|&n| cursors(n).as_deref() == Some(sent.as_str()))
                .map_or(0, |n| n + 1),
        };
        let next = cursors(page).map_or("null".to_string(), |c| format!("\"{c}\""));
        Reply::json(
            200,
            format!(r#"{{"data":{},"next":{next}}}"#, records(page * 3 + 1, 3)),
        )
    }
}

#[test]
fn cursors_that_cycle_stop_the_run_naming_the_page() -> Result {
    // A → B → A: page 3 points back at the cursor page 2 was fetched with.
    let server = Background::start(|r: &Request| {
        let (first, next) = match r.param("cursor").as_deref() {
            None => (1, "A"),
            Some("A") => (4, "B"),
            _ => (7, "A"),
        };
        Reply::json(
            200,
            format!(r#"{{"data":{},"next":"{next}"}}"#, records(first, 3)),
        )
    })?;
    let dir = TempDir::new("cursor-cycle");
    let file = workflow(dir.path(), server.url(), "", PAGES)?;
    let state = dir.path().join("state");
    let out = run(waymark(&state, "").arg("run").arg(&file))?;
    assert_no_panic(&out);
    let message = said(&out);
    assert_eq!(out.status.code(), Some(1), "{message}");
    assert!(
        message.contains(
            "page 3: GET /items: the API sent back the cursor page 2 was fetched with (`A`): \
             its pages cycle"
        ),
        "{message}"
    );
    assert_eq!(server.received().len(), 3);
    assert_eq!(runs(&state)?[0]["status"], "failed");

    // A cycle longer than the cursors compared exactly (64): ten pages lead into a loop
    // of seventy, and the run stops within a bound instead of running for ever.
    let long = Background::start(pages(|n| {
        Some(match n {
            0..=10 => format!("s{n}"),
            n => format!("c{}", (n - 11) % 70),
        })
    }))?;
    let dir = TempDir::new("cursor-long-cycle");
    let file = workflow(dir.path(), long.url(), "", PAGES)?;
    let out = run(waymark(&dir.path().join("state"), "").arg("run").arg(&file))?;
    let message = said(&out);
    assert_eq!(out.status.code(), Some(1), "{message}");
    assert!(message.contains("its pages cycle"), "{message}");
    let requests = long.received().len();
    assert!(
        (81..=2 * 80 + 70 + 2).contains(&requests),
        "{requests} requests"
    );
    Ok(())
}

#[test]
fn a_cursor_of_the_wrong_type_fails_the_run_instead_of_ending_it() -> Result {
    let server = Background::start(|r: &Request| match r.param("cursor") {
        None => Reply::json(200, format!(r#"{{"data":{},"next":"c2"}}"#, records(1, 3))),
        Some(_) => Reply::json(
            200,
            format!(
                r#"{{"data":{},"next":{{"after":"x","limit":3}}}}"#,
                records(4, 3)
            ),
        ),
    })?;
    let dir = TempDir::new("cursor-object");
    let file = workflow(dir.path(), server.url(), "", PAGES)?;
    let state = dir.path().join("state");
    let out = run(waymark(&state, "").arg("run").arg(&file))?;
    let message = said(&out);
    assert_eq!(out.status.code(), Some(1), "{message}");
    assert!(
        message.contains(
            "page 2: GET /items: the next-page cursor at `next` is an object (keys: `after`, \
             `limit`), not a string or a number"
        ),
        "{message}"
    );
    assert_eq!(runs(&state)?[0]["status"], "failed");
    // Page 1 is committed; page 2, whose cursor is unusable, is not.
    assert_eq!(rows_of(&dir.path().join("out.db"))?, 3);
    Ok(())
}

#[test]
fn a_cursor_too_long_to_journal_stops_the_run_and_the_journal_stays_small() -> Result {
    // Cursors of `size` bytes: three pages.
    let cursor = |size: usize, n: u64| format!("{n}{}", "k".repeat(size - 1));
    let server = |size: usize| Background::start(pages(move |n| (n < 3).then(|| cursor(size, n))));

    // 30 KB cursors: six runs each stop at page 1, and nothing of them reaches the
    // journal (they used to add 39 MB a run).
    let big = server(30_000)?;
    let dir = TempDir::new("cursor-30k");
    let file = workflow(dir.path(), big.url(), "", PAGES)?;
    let state = dir.path().join("state");
    for _ in 0..6 {
        let out = run(waymark(&state, "").arg("run").arg(&file))?;
        let message = said(&out);
        assert_eq!(out.status.code(), Some(1), "{message}");
        assert!(
            message.contains(
                "page 1: GET /items: the next-page cursor is 30000 bytes, more than \
                 source.max_cursor_bytes = 4096; refusing to journal it (it starts `1kkk"
            ),
            "{message}"
        );
    }
    assert_eq!(big.received().len(), 6);
    for run in runs(&state)? {
        let id = run["run"].as_str().ok_or("run id")?;
        for event in journal(&state, id)? {
            assert!(event.to_string().len() < 4096, "{event}");
        }
    }
    let used = du(&state);
    assert!(used < 4 << 20, "state directory {used} bytes");

    // A cursor of exactly the limit is journaled.
    let edge = server(4096)?;
    let dir = TempDir::new("cursor-4k");
    let file = workflow(dir.path(), edge.url(), "", PAGES)?;
    let out = run(waymark(&dir.path().join("state"), "").arg("run").arg(&file))?;
    assert_eq!(out.status.code(), Some(0), "{}", said(&out));
    assert_eq!(rows_of(&dir.path().join("out.db"))?, 9);

    // And the limit is a setting.
    let dir = TempDir::new("cursor-30k-allowed");
    let file = workflow(dir.path(), big.url(), "max_cursor_bytes = 32768", PAGES)?;
    let out = run(waymark(&dir.path().join("state"), "").arg("run").arg(&file))?;
    assert_eq!(out.status.code(), Some(0), "{}", said(&out));
    Ok(())
}
