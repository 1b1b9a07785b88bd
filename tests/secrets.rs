//! The real binary against a scripted API: secrets never reach the state directory, the
//! output or the journal, whatever fails and in whatever encoding the API echoes them; a
//! time budget pauses a run instead of sleeping through a long `Retry-After`, and the next
//! run continues it; an absurd `Retry-After` is believed for a day, and `status` says so.

use std::path::Path;
use std::process::Output;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::resilience::workflow_text;
use crate::scripted::{records, Background, Reply, Request};
use waymark_engine::Timestamp;

use crate::util::{assert_no_panic, bin, journal, text, Result, TempDir};

const TOKEN: &str = "sekrit-Token-4711";
const CLIENT_SECRET: &str = "client-Secret-0815";
const HEADER_SECRET: &str = "hdr-Secret-2323";

fn run_binary(dir: &Path, workflow: &str, args: &[&str]) -> Result<Output> {
    run_with_token(dir, workflow, TOKEN, args)
}

/// `run_binary` with `token` in `SEC_TOKEN`.
fn run_with_token(dir: &Path, workflow: &str, token: &str, args: &[&str]) -> Result<Output> {
    let file = dir.join("workflow.toml");
    std::fs::write(&file, workflow)?;
    let out = std::process::Command::new(bin())
        .env("WAYMARK_STATE_DIR", dir.join("state"))
        .env("WAYMARK_LOG", "debug")
        .env("SEC_TOKEN", token)
        .env("SEC_CLIENT_SECRET", CLIENT_SECRET)
        .env("SEC_HEADER", HEADER_SECRET)
        .arg("run")
        .arg(&file)
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()?;
    assert_no_panic(&out);
    Ok(out)
}

/// The resilience tests' workflow (cursor pagination), failing fast: two attempts, short
/// backoff; `next_url` swaps in next-URL pagination.
fn workflow(url: &str, stream: &str, next_url: bool) -> String {
    let source = "max_attempts = 2\nbackoff = { base = \"10ms\", cap = \"20ms\" }";
    let text = workflow_text(url, source, stream);
    match next_url {
        true => text.replace(
            "pagination = { kind = \"cursor\", cursor_path = \"next\", cursor_param = \"cursor\" }",
            "pagination = { kind = \"next_url\", next_url_path = \"next\" }",
        ),
        false => text,
    }
}

/// Every file under `dir` and every output: none holds a secret.
fn assert_nowhere(dir: &Path, outputs: &[&[u8]]) -> Result {
    assert_absent(dir, outputs, &[TOKEN, CLIENT_SECRET, HEADER_SECRET])
}

/// Every file under `dir` and every output: none holds any of `secrets`.
pub(crate) fn assert_absent(dir: &Path, outputs: &[&[u8]], secrets: &[&str]) -> Result {
    let mut files = vec![dir.to_path_buf()];
    let mut scanned = 0;
    while let Some(path) = files.pop() {
        if path.is_dir() {
            for entry in std::fs::read_dir(&path)? {
                files.push(entry?.path());
            }
            continue;
        }
        if path.file_name().is_some_and(|n| n == "workflow.toml") {
            continue;
        }
        let bytes = std::fs::read(&path)?;
        scanned += 1;
        for secret in secrets {
            assert!(
                !contains(&bytes, secret.as_bytes()),
                "{secret} found in {}",
                path.display()
            );
        }
    }
    assert!(scanned > 3, "nothing was written");
    for output in outputs {
        for secret in secrets {
            assert!(
                !contains(output, secret.as_bytes()),
                "{secret} in output: {}",
                text(output)
            );
        }
    }
    Ok(())
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// What careless APIs do in errors: echo the request's headers and body.
fn echo(r: &Request) -> String {
    serde_json::json!({ "headers": r.headers, "body": r.body }).to_string()
}

#[test]
fn secrets_never_reach_the_journal_the_state_directory_or_the_output() -> Result {
    let server = Background::start(|r: &Request| {
        let keyed = r.param("api_key").as_deref() == Some(TOKEN);
        let bearer = r.header("authorization") == Some(&format!("Bearer {TOKEN}"));
        match r.path() {
            "/oauth/token" => Reply::json(400, echo(r)),
            // The key in the query, echoed into the next URL.
            "/keyed" if keyed && r.param("page").is_none() => Reply::json(
                200,
                format!(
                    r#"{{"data":{},"next":"/keyed?page=2&api_key={TOKEN}"}}"#,
                    records(1, 3)
                ),
            ),
            "/keyed" if keyed => Reply::json(200, format!(r#"{{"data":{}}}"#, records(4, 2))),
            "/fine" if bearer => Reply::json(200, format!(r#"{{"data":{}}}"#, records(1, 2))),
            "/broken" => Reply::json(500, echo(r)),
            _ => Reply::json(400, echo(r)),
        }
    })?;
    let url = server.url();
    let bearer = "[source.auth]\nkind = \"bearer\"\ntoken = { env = \"SEC_TOKEN\" }\n";
    let at = |path: &str, stream: &str| workflow(url, stream, false).replace("/items", path);
    // (case, workflow, exit code, what the failure says)
    let cases = [
        ("bearer", at("/fine", "") + bearer, 0, ""),
        ("500s echoing the token", at("/broken", "") + bearer, 1, "Bearer ***"),
        (
            "a ${VAR} header echoed in a 400",
            at("/echo", "headers = { X-Custom = \"v=${SEC_HEADER}\" }"),
            1,
            "v=***",
        ),
        (
            "an API key in the query, echoed in next URLs",
            workflow(url, "", true).replace("/items", "/keyed")
                + "[source.auth]\nkind = \"api_key\"\nname = \"api_key\"\nin = \"query\"\nkey = { env = \"SEC_TOKEN\" }\n",
            0,
            "",
        ),
        (
            "an OAuth2 token endpoint echoing the client secret",
            at("/items", "")
                + &format!(
                    "[source.auth]\nkind = \"oauth2\"\ntoken_url = \"{url}/oauth/token\"\nclient_id = \"app\"\nclient_secret = {{ env = \"SEC_CLIENT_SECRET\" }}\nclient_auth = \"body\"\n"
                ),
            1,
            "client_secret=***",
        ),
    ];
    for (case, text_of_workflow, code, says) in &cases {
        let dir = TempDir::new("secrets");
        let out = run_binary(dir.path(), text_of_workflow, &[])?;
        let said = format!("{}{}", text(&out.stdout), text(&out.stderr));
        assert_eq!(out.status.code(), Some(*code), "{case}: {said}");
        assert!(
            text(&out.stdout).contains(says),
            "{case}: {}",
            text(&out.stdout)
        );
        let state = dir.path().join("state");
        let runs = crate::util::runs(&state)?;
        let run = runs[0]["run"].as_str().ok_or("no run id")?.to_string();
        let events = serde_json::to_vec(&journal(&state, &run)?)?;
        let table = std::process::Command::new(bin())
            .env("WAYMARK_STATE_DIR", &state)
            .args(["journal", &run])
            .output()?;
        if case.starts_with("500s") {
            // `waymark journal` shows each retry with its status (and rule, if one matched).
            let shown = text(&table.stdout);
            assert!(
                shown.contains("attempt 1 failed (HTTP 500), wait "),
                "{shown}"
            );
        }
        let runs = serde_json::to_vec(&runs)?;
        assert_nowhere(
            dir.path(),
            &[&out.stdout, &out.stderr, &events, &runs, &table.stdout],
        )?;
    }
    // The requests did carry the secrets (the test would prove nothing otherwise).
    let received = server.received();
    let sent = |f: &dyn Fn(&Request) -> bool| received.iter().any(f);
    assert!(sent(
        &|r| r.header("authorization") == Some(&format!("Bearer {TOKEN}"))
    ));
    assert!(sent(
        &|r| r.header("x-custom") == Some(&format!("v={HEADER_SECRET}"))
    ));
    assert!(sent(&|r| r.body.contains(CLIENT_SECRET)));
    let keyed = received.iter().filter(|r| r.path() == "/keyed");
    assert_eq!(
        keyed
            .filter(|r| r.param("api_key").as_deref() == Some(TOKEN))
            .count(),
        2
    );
    Ok(())
}

#[test]
fn a_time_budget_pauses_instead_of_sleeping_and_the_next_run_continues() -> Result {
    let dir = TempDir::new("time-budget");
    let calls = Arc::new(Mutex::new(0u32));
    let count = calls.clone();
    let server = Background::start(move |_| {
        let mut n = count.lock().unwrap_or_else(PoisonError::into_inner);
        *n += 1;
        match *n {
            1 => Reply::json(503, "{}").with("Retry-After", "2"),
            _ => Reply::json(200, format!(r#"{{"data":{}}}"#, records(1, 2))),
        }
    })?;
    let text_of_workflow = workflow(server.url(), "", false);
    let began = Instant::now();
    let paused = run_binary(dir.path(), &text_of_workflow, &["--max-duration", "1s"])?;
    assert_eq!(paused.status.code(), Some(3), "{}", text(&paused.stderr));
    assert!(
        began.elapsed() < Duration::from_millis(1500),
        "slept instead of pausing"
    );
    assert!(
        text(&paused.stdout).contains("paused (rate limited until "),
        "{}",
        text(&paused.stdout)
    );
    let state = dir.path().join("state");
    let run = crate::util::runs(&state)?[0]["run"]
        .as_str()
        .ok_or("no run")?
        .to_string();
    let events = journal(&state, &run)?;
    let steps: Vec<&str> = events.iter().filter_map(|e| e["step"].as_str()).collect();
    assert_eq!(steps, ["run_started", "run_paused"]);
    // The next run resumes it, waits out the rest of Retry-After, and finishes.
    let done = run_binary(dir.path(), &text_of_workflow, &[])?;
    assert_eq!(done.status.code(), Some(0), "{}", text(&done.stderr));
    let requests = server.received();
    assert_eq!(requests.len(), 2);
    assert!(
        requests[1].at >= requests[0].at + 2000,
        "the second request came {} ms after the 503 asked for 2 s",
        requests[1].at - requests[0].at
    );
    let steps: Vec<String> = journal(&state, &run)?
        .iter()
        .filter_map(|e| e["step"].as_str().map(str::to_string))
        .collect();
    assert_eq!(
        steps,
        [
            "run_started",
            "run_paused",
            "run_resumed",
            "page_fetched",
            "batch_written",
            "cursor_committed",
            "run_completed"
        ]
    );
    Ok(())
}

/// A token with characters every encoding changes (`"`, `\`, `/`, `+`, `=`, `~`).
const ODD_TOKEN: &str = r#"pa"ss\wo/rd+X9=Zq~k"#;

/// base64 (RFC 4648) with the standard or the URL-safe alphabet, padded or not: written
/// here so the test does not share the code under test.
fn base64(bytes: &[u8], url_safe: bool, pad: bool) -> String {
    let mut alphabet: Vec<u8> = (b'A'..=b'Z')
        .chain(b'a'..=b'z')
        .chain(b'0'..=b'9')
        .collect();
    alphabet.extend_from_slice(if url_safe { b"-_" } else { b"+/" });
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..=chunk.len() {
            out.push(char::from(alphabet[(n >> (18 - 6 * i) & 63) as usize]));
        }
        if pad {
            out.push_str(&"=".repeat(3 - chunk.len()));
        }
    }
    out
}

/// The forms of [`ODD_TOKEN`] an API may echo: (name, what the API writes, whether it
/// comes back in a next URL rather than a cursor, the texts that must appear nowhere).
fn echoed_forms() -> Vec<(&'static str, String, bool, Vec<String>)> {
    let json = r#"pa\"ss\\wo/rd+X9=Zq~k"#.to_string();
    let slashed = json.replace('/', "\\/");
    let url = "pa%22ss%5Cwo%2Frd%2BX9%3DZq~k".to_string();
    let standard = base64(ODD_TOKEN.as_bytes(), false, true);
    let url_safe = base64(ODD_TOKEN.as_bytes(), true, false);
    // Inside a longer value: "user:" + token (5 bytes before it, so not on a 3-byte
    // boundary); what the token alone decides is the middle.
    let inside = base64(format!("user:{ODD_TOKEN}").as_bytes(), false, true);
    let middle = inside[7..30].to_string();
    let cut = ODD_TOKEN[..ODD_TOKEN.len() - 2].to_string();
    let cut_json = json[..json.len() - 2].to_string();
    vec![
        ("JSON-escaped", json.clone(), false, vec![json]),
        ("slash-escaped", slashed.clone(), false, vec![slashed]),
        ("URL-encoded", url.clone(), true, vec![url]),
        ("base64", standard.clone(), false, vec![standard]),
        ("base64url", url_safe.clone(), false, vec![url_safe]),
        (
            "base64 inside a value",
            inside.clone(),
            false,
            vec![inside, middle],
        ),
        ("cut short by two", cut.clone(), false, vec![cut, cut_json]),
    ]
}

#[test]
fn secrets_echoed_in_other_encodings_are_masked_and_stop_a_cursor() -> Result {
    for (form, echoed, in_next_url, never) in echoed_forms() {
        let dir = TempDir::new("encoded-secret");
        let first = std::sync::atomic::AtomicBool::new(true);
        let body = echoed.clone();
        let server = Background::start(move |_: &Request| {
            if first.swap(false, std::sync::atomic::Ordering::SeqCst) {
                // An error body, written as is.
                return Reply::json(500, format!(r#"{{"error":"bad token {body}"}}"#));
            }
            // A record and the next page's cursor (or URL), as JSON values.
            let next = match in_next_url {
                true => format!("/items?page=2&token={body}"),
                false => format!("after-{body}"),
            };
            let page = serde_json::json!({
                "data": [{"id": 1, "updated_at": "2026-01-01T00:00:01Z", "name": body}],
                "next": next,
            });
            Reply::json(200, page.to_string())
        })?;
        let mut text_of_workflow = workflow(server.url(), "", in_next_url);
        text_of_workflow
            .push_str("[source.auth]\nkind = \"bearer\"\ntoken = { env = \"SEC_TOKEN\" }\n");
        let out = run_with_token(dir.path(), &text_of_workflow, ODD_TOKEN, &[])?;
        let said = text(&out.stdout);
        assert_eq!(
            out.status.code(),
            Some(1),
            "{form}: {said}{}",
            text(&out.stderr)
        );
        assert!(
            said.contains("the API put a credential into the next-page cursor"),
            "{form}: {said}"
        );
        let state = dir.path().join("state");
        let runs = crate::util::runs(&state)?;
        let run = runs[0]["run"].as_str().ok_or("no run id")?.to_string();
        let events = journal(&state, &run)?;
        // The error body was there, masked.
        let retried = events
            .iter()
            .find_map(|e| e["event"]["RequestRetried"]["error"].as_str())
            .ok_or(format!("{form}: no retry"))?;
        assert!(
            retried.contains("bad token ") && retried.contains("***"),
            "{form}: {retried}"
        );
        let events = serde_json::to_vec(&events)?;
        let table = std::process::Command::new(bin())
            .env("WAYMARK_STATE_DIR", &state)
            .args(["journal", &run])
            .output()?;
        let runs = serde_json::to_vec(&runs)?;
        let never: Vec<&str> = never.iter().map(String::as_str).collect();
        assert_absent(
            dir.path(),
            &[&out.stdout, &out.stderr, &events, &runs, &table.stdout],
            &never,
        )?;
        // The request did carry the token.
        let sent = format!("Bearer {ODD_TOKEN}");
        assert!(server.received()[0].header("authorization") == Some(sent.as_str()));
    }
    Ok(())
}

#[test]
fn an_absurd_retry_after_pauses_for_a_day_and_status_says_so() -> Result {
    let wall = || Timestamp::from_system(std::time::SystemTime::now());
    let day = 24 * 3_600_000;
    for asked in [
        "1000000000000",
        "18446744073709551615",
        "Fri, 31 Dec 9999 23:59:59 GMT",
    ] {
        let dir = TempDir::new("retry-after");
        let server = Background::start(move |_| Reply::json(429, "{}").with("Retry-After", asked))?;
        let text_of_workflow = workflow(server.url(), "", false);
        let before = wall();
        let paused = run_binary(dir.path(), &text_of_workflow, &[])?;
        let after = wall();
        assert_eq!(
            paused.status.code(),
            Some(3),
            "{asked}: {}",
            text(&paused.stderr)
        );
        let state = dir.path().join("state");
        let run = crate::util::runs(&state)?[0]["run"]
            .as_str()
            .ok_or("no run")?
            .to_string();
        let events = journal(&state, &run)?;
        let until = events
            .iter()
            .find_map(|e| e["event"]["RunPaused"]["reason"]["RateLimited"]["until"].as_u64())
            .ok_or(format!("{asked}: not paused for a rate limit: {events:?}"))?;
        assert!(
            (before.0 + day..=after.0 + day).contains(&until),
            "{asked}: paused until {until}, not a day after {}",
            before.0
        );
        // Said as a time, the same in every text output.
        let shown = Timestamp(until).to_string();
        let table = crate::util::waymark(&state, "")
            .args(["journal", &run])
            .output()?;
        for (what, out) in [("run", &paused), ("journal", &table)] {
            let said = text(&out.stdout);
            assert!(
                said.contains(&format!("rate limited until {shown}")),
                "{what}: {said}"
            );
            assert!(!said.contains("18446744073709551615"), "{what}: {said}");
        }
        // `status`: waiting, and unhealthy (a wait of more than an hour).
        let status = crate::util::waymark(&state, "").arg("status").output()?;
        let said = text(&status.stdout);
        assert_eq!(status.status.code(), Some(1), "{asked}: {said}");
        let line = said.lines().nth(1).unwrap_or_default();
        assert!(
            line.starts_with("waiting ")
                && line.contains(&format!("rate limited until {shown} (in 23h")),
            "{asked}: {said}"
        );
        let json = crate::util::waymark(&state, "")
            .args(["status", "--json"])
            .output()?;
        let json: serde_json::Value = serde_json::from_str(text(&json.stdout).trim())?;
        assert_eq!(
            (&json["health"], &json["unhealthy"]),
            (&"waiting".into(), &true.into())
        );
        // The next run sends nothing before that time: it pauses at once.
        let again = run_binary(dir.path(), &text_of_workflow, &[])?;
        assert_eq!(
            again.status.code(),
            Some(3),
            "{asked}: {}",
            text(&again.stderr)
        );
        assert_eq!(server.received().len(), 1, "{asked}");
    }
    Ok(())
}
