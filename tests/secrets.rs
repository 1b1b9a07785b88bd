//! The real binary against a scripted API: secrets never reach the state directory, the
//! output or the journal, whatever fails; a time budget pauses a run instead of sleeping
//! through a long `Retry-After`, and the next run continues it.

use std::path::Path;
use std::process::Output;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::resilience::workflow_text;
use crate::scripted::{records, Background, Reply, Request};
use crate::util::{assert_no_panic, bin, journal, text, Result, TempDir};

const TOKEN: &str = "sekrit-Token-4711";
const CLIENT_SECRET: &str = "client-Secret-0815";
const HEADER_SECRET: &str = "hdr-Secret-2323";

fn run_binary(dir: &Path, workflow: &str, args: &[&str]) -> Result<Output> {
    let file = dir.join("workflow.toml");
    std::fs::write(&file, workflow)?;
    let out = std::process::Command::new(bin())
        .env("WAYMARK_STATE_DIR", dir.join("state"))
        .env("WAYMARK_LOG", "debug")
        .env("SEC_TOKEN", TOKEN)
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
    let secrets = [TOKEN, CLIENT_SECRET, HEADER_SECRET];
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
