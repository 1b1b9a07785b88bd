//! `waymark serve`, a real process against the sandbox: streams of several workflow files
//! run at their cadence, a few at once and never two of one stream at once; read commands
//! are answered while it serves; SIGTERM pauses every run at a step boundary and exits 0; a
//! SIGKILL loses nothing (the next serve resumes the run first); edited files are picked
//! up, broken ones keep the previous version; changing commands sent to it are carried out
//! between steps.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use crate::util::{
    request, request_with, rows, runs, wait_for, wait_for_lock, waymark, Result, Sandbox, TempDir,
    ONCE,
};

/// A workflow file for sync `sync` with `streams` (sandbox resources) scheduled `every`.
fn flow(dir: &Path, sync: &str, every: &str, streams: &[(&str, &str)]) -> Result<PathBuf> {
    let mut text = format!(
        "[sync]\nname = \"{sync}\"\nschedule = {{ every = \"{every}\" }}\n\n[source]\n\
         kind = \"http\"\nbase_url = \"${{WAYMARK_SANDBOX_URL}}\"\ntimeout = \"5s\"\n\
         max_attempts = 8\n"
    );
    for (name, path) in streams {
        text.push_str(&format!(
            "\n[[stream]]\nname = \"{name}\"\npath = \"{path}\"\nrecords = \"data\"\n\
             primary_key = \"id\"\ncursor_field = \"updated_at\"\npage_size = 100\n\
             pagination = {{ kind = \"cursor\", cursor_path = \"next_cursor\", \
             cursor_param = \"cursor\", limit_param = \"limit\" }}\n\
             window = {{ lag = \"0s\", start_param = \"updated_since\", \
             end_param = \"updated_before\" }}\n"
        ));
    }
    text.push_str(&format!(
        "\n[destination]\nkind = \"sqlite\"\npath = \"{sync}.db\"\n"
    ));
    let path = dir.join(format!("{sync}.toml"));
    std::fs::write(&path, text)?;
    Ok(path)
}

/// `waymark serve <args>` in `dir` with its API on a free loopback port: the process and
/// the API's base URL. Its log (warnings and errors) goes to `dir/serve.log`.
fn serve(state: &Path, url: &str, dir: &Path, args: &[&str]) -> Result<(Child, String)> {
    serve_with(state, url, dir, args, &[])
}

/// The same with `env` set.
pub(crate) fn serve_with(
    state: &Path,
    url: &str,
    dir: &Path,
    args: &[&str],
    env: &[(&str, &str)],
) -> Result<(Child, String)> {
    let log = std::fs::File::create(dir.join("serve.log"))?;
    let out = dir.join("serve.out");
    let child = waymark(state, url)
        .current_dir(dir)
        .arg("serve")
        .args(args)
        .args(["--listen", "127.0.0.1:0"])
        .envs(env.iter().copied())
        .stdout(std::fs::File::create(&out)?)
        .stderr(log)
        .spawn()?;
    let mut api = String::new();
    wait_for(
        || {
            let first = std::fs::read_to_string(&out).unwrap_or_default();
            match first.lines().next().and_then(|l| l.rsplit(' ').next()) {
                Some(url) if url.starts_with("http://") => {
                    api = url.to_string();
                    true
                }
                _ => false,
            }
        },
        Duration::from_secs(30),
    );
    if api.is_empty() {
        return Err(format!(
            "serve did not say where its API is: {}",
            std::fs::read_to_string(dir.join("serve.log"))?
        )
        .into());
    }
    Ok((child, api))
}

/// Sends SIGTERM and waits for the exit: its code, how long it took, and its log.
pub(crate) fn terminate(mut child: Child, dir: &Path) -> Result<(Option<i32>, Duration, String)> {
    let asked = Instant::now();
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()?;
    assert!(status.success());
    let code = loop {
        if let Some(status) = child.try_wait()? {
            break status.code();
        }
        if asked.elapsed() > Duration::from_secs(30) {
            child.kill()?;
            return Err("serve did not exit within 30 s of SIGTERM".into());
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let took = asked.elapsed();
    Ok((code, took, std::fs::read_to_string(dir.join("serve.log"))?))
}

/// The runs of each `sync/stream`, oldest first.
fn by_stream(state: &Path) -> Result<BTreeMap<String, Vec<serde_json::Value>>> {
    let mut out: BTreeMap<String, Vec<serde_json::Value>> = BTreeMap::new();
    for run in runs(state)? {
        let key = format!(
            "{}/{}",
            run["sync"].as_str().unwrap_or(""),
            run["stream"].as_str().unwrap_or("")
        );
        out.entry(key).or_default().push(run);
    }
    for list in out.values_mut() {
        list.sort_by(|a, b| a["started"].as_str().cmp(&b["started"].as_str()));
    }
    Ok(out)
}

fn completed(runs: &[serde_json::Value]) -> usize {
    runs.iter().filter(|r| r["status"] == "completed").count()
}

#[test]
fn streams_of_several_files_run_at_their_cadence_and_sigterm_pauses_them_all() -> Result {
    let sandbox = Sandbox::start(&[
        "--records",
        "1500",
        "--customers",
        "300",
        "--rate-429",
        "0.05",
        "--rate-503",
        "0.05",
        "--retry-after",
        "0",
        "--latency",
        "2ms",
    ])?;
    let dir = TempDir::new("serve-cadence");
    let flows = dir.path().join("flows");
    std::fs::create_dir_all(&flows)?;
    flow(
        &flows,
        "shop",
        "1s",
        &[("orders", "/orders"), ("orders_b", "/orders")],
    )?;
    flow(&flows, "crm", "2s", &[("customers", "/customers")])?;
    let state = dir.path().join("state");
    let (child, api) = serve(
        &state,
        &sandbox.url,
        dir.path(),
        &["flows", "--max-concurrent-runs", "2"],
    )?;
    assert!(
        wait_for_lock(&state, child.id()),
        "serve holds the state directory"
    );

    // `runs` is answered by serve itself while it holds the directory.
    let streams = ["shop/orders", "shop/orders_b", "crm/customers"];
    let enough = wait_for(
        || {
            by_stream(&state).is_ok_and(|by| {
                streams
                    .iter()
                    .all(|s| by.get(*s).is_some_and(|r| completed(r) >= 3))
            })
        },
        Duration::from_secs(90),
    );
    // While serve runs: its API answers what the CLI prints, and /metrics counts what
    // the journal says (compared when no run is going between two reads).
    let mut agreed = None;
    let consistent = wait_for(
        || match snapshot(&api, &state) {
            Ok(Some(found)) => {
                agreed = Some(found);
                true
            }
            _ => false,
        },
        Duration::from_secs(60),
    );
    // A run's journal as Server-Sent Events: its steps, then the end.
    let first = runs(&state)?
        .into_iter()
        .find(|r| r["status"] == "completed")
        .ok_or("a completed run")?;
    let id = first["run"].as_str().ok_or("run id")?;
    let sse = request(
        "GET",
        &api,
        &format!("/api/runs/{id}/journal?follow=1"),
        None,
    )?;
    let sse_text = String::from_utf8(sse.body)?;
    let steps: Vec<serde_json::Value> = sse_text
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter(|d| !d.is_empty())
        .map(serde_json::from_str)
        .collect::<std::result::Result<_, _>>()?;
    assert_eq!(steps, crate::util::journal(&state, id)?, "{sse_text}");
    assert!(sse_text.contains("event: end"), "{sse_text}");
    let now = request("POST", &api, "/api/streams/crm/customers/run", None)?;
    let unknown = request("POST", &api, "/api/streams/crm/nope/run", None)?;
    let (code, took, stderr) = terminate(child, dir.path())?;
    assert!(
        consistent,
        "a quiet moment to compare /metrics with runs\n{stderr}"
    );
    let (api_runs, cli_runs, metrics) = agreed.ok_or("a snapshot")?;
    assert_eq!(api_runs, cli_runs, "GET /api/runs is `runs --json`");
    for stream in streams {
        let (sync, name) = stream.split_once('/').ok_or("sync/stream")?;
        let mine: Vec<&serde_json::Value> = cli_runs
            .iter()
            .filter(|r| r["sync"] == sync && r["stream"] == name)
            .collect();
        let sum = |f: &dyn Fn(&serde_json::Value) -> u64| mine.iter().map(|r| f(r)).sum::<u64>();
        let metric = |name: &str, extra: &[(&str, &str)]| {
            value(
                &metrics,
                name,
                &[&[("sync", sync), ("stream", name_of(stream))], extra].concat(),
            )
        };
        for (fate, field) in [
            ("inserted", "inserted"),
            ("updated", "updated"),
            ("unchanged", "unchanged"),
            ("stale", "skipped_stale"),
            ("deleted", "deleted"),
            ("dead_lettered", "dead_lettered"),
        ] {
            let want = sum(&|r| r["written"][field].as_u64().unwrap_or(0));
            assert_eq!(
                metric("waymark_records_total", &[("fate", fate)]),
                want as f64,
                "{stream} {fate}"
            );
        }
        let pages = sum(&|r| r["pages_fetched"].as_u64().unwrap_or(0));
        assert_eq!(
            metric("waymark_pages_total", &[]),
            pages as f64,
            "{stream} pages"
        );
        let retries = sum(&|r| r["retries"].as_u64().unwrap_or(0));
        assert_eq!(
            metric("waymark_retries_total", &[]),
            retries as f64,
            "{stream} retries"
        );
        let done = mine.iter().filter(|r| r["status"] == "completed").count();
        assert_eq!(
            metric("waymark_runs_total", &[("outcome", "completed")]),
            done as f64,
            "{stream} completed runs"
        );
        assert!(done >= 3, "{stream}: {done} completed runs");
    }
    assert!(
        metrics
            .iter()
            .any(|m| m.metric == "waymark_requests_total" && m.labels.get("class") == Some("5xx")),
        "the sandbox's 503s are counted"
    );
    // Every request is timed: the latency histogram of a source counts what the status
    // classes of its streams do.
    for sync in ["shop", "crm"] {
        let requests: f64 = metrics
            .iter()
            .filter(|m| m.metric == "waymark_requests_total" && m.labels.get("sync") == Some(sync))
            .map(|m| match m.value {
                prometheus_parse::Value::Counter(v) | prometheus_parse::Value::Untyped(v) => v,
                _ => f64::NAN,
            })
            .sum();
        let timed = value(
            &metrics,
            "waymark_request_duration_seconds_count",
            &[("sync", sync)],
        );
        assert!(requests > 0.0, "{sync}");
        assert_eq!(timed, requests, "{sync}: requests timed");
    }
    assert!(
        now.status == 202 || now.status == 409,
        "run now: {} {}",
        now.status,
        String::from_utf8_lossy(&now.body)
    );
    assert_eq!(unknown.status, 404);
    assert!(
        enough,
        "three completed runs of each stream: {:?}\n{stderr}",
        by_stream(&state)?
    );
    assert_eq!(code, Some(0), "{stderr}");
    assert!(took < Duration::from_secs(2), "stopped in {took:?}");
    assert!(!stderr.contains("panicked"), "{stderr}");

    let by = by_stream(&state)?;
    for stream in streams {
        let list = &by[stream];
        // Never two runs of one stream at once.
        for pair in list.windows(2) {
            assert!(
                pair[1]["started"].as_str() >= pair[0]["updated"].as_str(),
                "{stream}: overlapping runs {} and {}",
                pair[0],
                pair[1]
            );
        }
        for run in list {
            let status = run["status"].as_str().unwrap_or("");
            assert!(
                status == "completed" || status == "paused",
                "{stream}: a run left {status} after SIGTERM: {run}"
            );
        }
    }
    // Each stream's first run read everything; the destination is the source.
    let truth = sandbox.truth()?;
    assert_eq!(rows(&flows.join("shop.db"))?, truth);
    let customers = crate::util::table(&flows.join("crm.db"), "customers")?.0;
    assert_eq!(customers, sandbox.truth_of("customers")?.0);
    Ok(())
}

/// Waits (up to 30 s) for a run in `state` to be going with 3 pages committed.
fn mid_run(state: &Path) -> bool {
    wait_for(
        || {
            runs(state).is_ok_and(|r| {
                r.iter()
                    .any(|r| r["status"] == "running" && r["pages"].as_u64() >= Some(3))
            })
        },
        Duration::from_secs(30),
    )
}

#[test]
fn a_killed_serve_resumes_the_unfinished_run_first_and_loses_nothing() -> Result {
    // 4,000 orders in pages of 100, 40 ms each: a run takes well over a second.
    let sandbox = Sandbox::start(&["--records", "4000", "--latency", "40ms"])?;
    let dir = TempDir::new("serve-kill");
    flow(dir.path(), "shop", ONCE, &[("orders", "/orders")])?;
    let state = dir.path().join("state");
    let (mut child, _) = serve(&state, &sandbox.url, dir.path(), &["shop.toml"])?;
    assert!(wait_for_lock(&state, child.id()));
    let mid_run = mid_run(&state);
    child.kill()?; // SIGKILL
    child.wait()?;
    assert!(mid_run, "a run in progress before the kill");
    let killed = runs(&state)?;
    assert_eq!(killed.len(), 1, "{killed:?}");
    assert_eq!(killed[0]["status"], "running");
    let run_id = killed[0]["run"].as_str().ok_or("run id")?.to_string();

    let (child, _) = serve(&state, &sandbox.url, dir.path(), &["shop.toml"])?;
    assert!(wait_for_lock(&state, child.id()));
    let resumed = wait_for(
        || {
            runs(&state).is_ok_and(|r| {
                r.iter()
                    .any(|r| r["run"] == run_id.as_str() && r["status"] == "completed")
            })
        },
        Duration::from_secs(60),
    );
    let (code, _, stderr) = terminate(child, dir.path())?;
    assert!(
        resumed,
        "the killed run completed: {:?}\n{stderr}",
        runs(&state)?
    );
    assert_eq!(code, Some(0), "{stderr}");
    // The same run went on (resumed once); no second run was started for the stream,
    // since the next one is due an hour after it started.
    let after = runs(&state)?;
    assert_eq!(after.len(), 1, "{after:?}");
    assert_eq!(after[0]["resumes"], 1);
    assert_eq!(rows(&dir.path().join("shop.db"))?, sandbox.truth()?);
    Ok(())
}

#[test]
fn changing_commands_sent_to_serve_are_carried_out_between_steps() -> Result {
    // 4,000 orders in pages of 100, 100 ms each: a run takes 4 s, time enough for the
    // commands below to find it going.
    let sandbox = Sandbox::start(&["--records", "4000", "--latency", "100ms"])?;
    let dir = TempDir::new("serve-changes");
    flow(dir.path(), "shop", ONCE, &[("orders", "/orders")])?;
    let state = dir.path().join("state");
    let (child, api) = serve(&state, &sandbox.url, dir.path(), &["shop.toml"])?;
    assert!(wait_for_lock(&state, child.id()));
    let mid_run = mid_run(&state);
    assert!(mid_run, "a run in progress");
    let first = runs(&state)?.remove(0);
    let first_id = first["run"].as_str().ok_or("run id")?.to_string();
    let watermark = first["watermark"].as_str().ok_or("watermark")?.to_string();

    // The read commands while serve runs: `journal --follow` until the run ends, `status`
    // and `trace` as the API answers them.
    let followed = dir.path().join("follow.out");
    let mut follow = waymark(&state, &sandbox.url)
        .args(["journal", &first_id, "--follow", "--json"])
        .stdout(std::fs::File::create(&followed)?)
        .spawn()?;
    let status = waymark(&state, &sandbox.url)
        .args(["status", "--json"])
        .output()?;
    let line: serde_json::Value = serde_json::from_slice(&status.stdout)?;
    assert_eq!(
        (line["sync"].as_str(), line["last_status"].as_str()),
        (Some("shop"), Some("running")),
        "{line}"
    );
    let trace = waymark(&state, &sandbox.url)
        .args(["trace", "orders", "1", "--json"])
        .output()?;
    assert!(
        trace.status.success(),
        "{}",
        crate::util::text(&trace.stderr)
    );
    let traced: serde_json::Value = serde_json::from_slice(&trace.stdout)?;
    assert_eq!(
        request("GET", &api, "/api/trace/orders/1", None)?.json()?,
        serde_json::json!([traced])
    );

    // `checkpoint set` while the stream's run is going: serve pauses the run at its next
    // step boundary, the command abandons it (as it does without serve), and the stream
    // continues from the new checkpoint.
    let set = waymark(&state, &sandbox.url)
        .current_dir(dir.path())
        .args(["checkpoint", "set", "shop.toml", "--stream", "orders"])
        .args(["--to", &watermark, "--reason", "skip ahead"])
        .output()?;
    let said = crate::util::text(&set.stdout);
    assert!(
        set.status.success(),
        "{said}{}",
        crate::util::text(&set.stderr)
    );
    let lines: Vec<&str> = said.lines().collect();
    assert_eq!(lines.len(), 2, "{said}");
    assert_eq!(
        lines[0],
        format!("shop/orders: abandoned unfinished run {first_id}")
    );
    // From the page the run had committed when it paused, to the new one.
    assert!(
        lines[1].starts_with(&format!(
            "shop/orders: checkpoint watermark {watermark}, cursor "
        )) && lines[1].contains(&format!("(run {first_id} page "))
            && lines[1].ends_with(&format!(
                " -> watermark {watermark} (window complete) (skip ahead)"
            )),
        "{said}"
    );
    let steps: Vec<String> = crate::util::journal(&state, &first_id)?
        .iter()
        .map(|e| e["step"].as_str().unwrap_or("").to_string())
        .collect();
    let last: Vec<&str> = steps
        .iter()
        .rev()
        .take(3)
        .rev()
        .map(String::as_str)
        .collect();
    assert_eq!(
        last,
        ["cursor_committed", "run_paused", "run_abandoned"],
        "paused at a step boundary, then abandoned: {steps:?}"
    );
    // `journal --follow` printed every step, and ended with the run.
    let ended = wait_for(
        || matches!(follow.try_wait(), Ok(Some(_))),
        Duration::from_secs(30),
    );
    assert!(ended, "journal --follow ended with the run");
    let printed: Vec<serde_json::Value> = std::fs::read_to_string(&followed)?
        .lines()
        .map(serde_json::from_str)
        .collect::<std::result::Result<_, _>>()?;
    // It ends when the run stops running: at its pause, or at the abandonment journaled
    // a moment later, whichever it saw last (it polls).
    let journaled = crate::util::journal(&state, &first_id)?;
    let upto = journaled
        .iter()
        .position(|e| e["step"] == "run_paused")
        .ok_or("no pause")?;
    assert!(
        printed.len() > upto && journaled.starts_with(&printed),
        "followed {printed:?} of {journaled:?}"
    );
    let continued = wait_for(
        || {
            runs(&state).is_ok_and(|r| {
                r.iter()
                    .any(|r| r["run"] != first_id.as_str() && r["status"] == "completed")
            })
        },
        Duration::from_secs(30),
    );
    assert!(continued, "the stream continued: {:?}", runs(&state)?);
    let second = runs(&state)?
        .into_iter()
        .find(|r| r["run"] != first_id.as_str())
        .ok_or("a second run")?;
    assert_eq!(
        second["window_start"].as_str(),
        Some(watermark.as_str()),
        "from the new checkpoint: {second}"
    );
    assert_eq!(second["records"], 0, "nothing changed since: {second}");

    // `run` asks serve to run the stream now and prints its summary when it ends.
    let ran = waymark(&state, &sandbox.url)
        .current_dir(dir.path())
        .args(["run", "shop.toml", "--stream", "orders", "--json"])
        .output()?;
    assert!(ran.status.success(), "{}", crate::util::text(&ran.stderr));
    let summary: serde_json::Value = serde_json::from_slice(&ran.stdout)?;
    assert_eq!(summary["status"], "completed", "{summary}");
    assert_eq!(runs(&state)?.len(), 3);
    // What serve cannot honour is refused, exit 2, and nothing runs.
    let fresh = waymark(&state, &sandbox.url)
        .current_dir(dir.path())
        .args(["run", "shop.toml", "--fresh"])
        .output()?;
    assert_eq!(fresh.status.code(), Some(2));
    assert!(
        crate::util::text(&fresh.stderr).contains("--fresh"),
        "{}",
        crate::util::text(&fresh.stderr)
    );
    let (code, _, stderr) = terminate(child, dir.path())?;
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(runs(&state)?.len(), 3);
    Ok(())
}

#[test]
fn an_edited_file_is_picked_up_and_a_broken_one_keeps_the_previous_version() -> Result {
    let sandbox = Sandbox::start(&["--records", "200"])?;
    let dir = TempDir::new("serve-reload");
    let path = flow(dir.path(), "shop", ONCE, &[("orders", "/orders")])?;
    let state = dir.path().join("state");
    let (child, api) = serve(&state, &sandbox.url, dir.path(), &["shop.toml"])?;
    assert!(wait_for_lock(&state, child.id()));
    let count = || runs(&state).map(|r| r.len()).unwrap_or(0);
    assert!(
        wait_for(|| count() == 1, Duration::from_secs(30)),
        "the first run"
    );

    // Every second now: picked up without a signal.
    flow(dir.path(), "shop", "1s", &[("orders", "/orders")])?;
    let reloaded = wait_for(|| count() >= 3, Duration::from_secs(30));

    // A broken file: the previous version keeps running.
    std::fs::write(
        &path,
        "[sync]\nname = \"shop\"\nschedule = { every = \"soon\" }\n",
    )?;
    let before = count();
    let kept = wait_for(|| count() >= before + 2, Duration::from_secs(30));
    // `status` (answered by serve) and /metrics say so too.
    let status = waymark(&state, &sandbox.url)
        .args(["status", "--json"])
        .output()?;
    let scrape = request("GET", &api, "/metrics", None)?;
    let (code, _, stderr) = terminate(child, dir.path())?;
    assert_eq!(
        status.status.code(),
        Some(1),
        "unhealthy while a file is refused"
    );
    let refusal = String::from_utf8(status.stdout)?
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|l| l["health"] == "reload-failed")
        .ok_or("no reload failure in status")?;
    assert!(
        refusal["file"]
            .as_str()
            .is_some_and(|f| f.ends_with("shop.toml")),
        "{refusal}"
    );
    let why = refusal["reason"].as_str().unwrap_or("");
    assert!(why.contains("sync.schedule.every"), "{refusal}");
    let text = String::from_utf8(scrape.body)?;
    let samples = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string())))?;
    let failures = value(
        &samples.samples,
        "waymark_workflow_reload_failures_total",
        &[],
    );
    assert!(failures >= 1.0, "{text}");
    assert!(reloaded, "the edited schedule: {} runs\n{stderr}", count());
    assert!(
        kept,
        "the previous version kept running: {} runs\n{stderr}",
        count()
    );
    assert_eq!(code, Some(0), "{stderr}");
    let refused = stderr
        .lines()
        .find(|l| l.contains("not reloaded"))
        .ok_or_else(|| format!("no reload failure in the log:\n{stderr}"))?;
    assert!(refused.contains("shop.toml"), "{refused}");
    assert!(refused.contains("sync.schedule.every"), "{refused}");
    assert!(
        refused.contains("previous version keeps running"),
        "{refused}"
    );
    Ok(())
}

/// `GET /api/runs`, `runs --json` and the parsed `/metrics`, when no run went on between
/// the two reads of the runs (`None`: try again).
#[allow(clippy::type_complexity)]
fn snapshot(
    api: &str,
    state: &Path,
) -> Result<
    Option<(
        Vec<serde_json::Value>,
        Vec<serde_json::Value>,
        Vec<prometheus_parse::Sample>,
    )>,
> {
    let before = runs(state)?;
    if before.iter().any(|r| r["status"] == "running") {
        return Ok(None);
    }
    let reply = request("GET", api, "/metrics", None)?;
    assert_eq!(reply.status, 200);
    let text = String::from_utf8(reply.body)?;
    let lines = text.lines().map(|l| Ok(l.to_string()));
    let scrape = prometheus_parse::Scrape::parse(lines)?;
    let listed = request("GET", api, "/api/runs", None)?.json()?;
    let after = runs(state)?;
    if after != before {
        return Ok(None);
    }
    let listed = listed.as_array().ok_or("an array")?.clone();
    Ok(Some((listed, after, scrape.samples)))
}

fn name_of(stream: &str) -> &str {
    stream.split_once('/').map_or(stream, |(_, name)| name)
}

/// The value of the sample `name` with exactly these labels (0 when absent: a counter not
/// yet incremented).
fn value(samples: &[prometheus_parse::Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .find(|s| {
            s.metric == name
                && s.labels.len() == labels.len()
                && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v))
        })
        .map_or(0.0, |s| match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => f64::NAN,
        })
}

#[test]
fn beyond_loopback_the_api_needs_a_token() -> Result {
    let sandbox = Sandbox::start(&["--records", "10"])?;
    let dir = TempDir::new("serve-token");
    flow(dir.path(), "shop", ONCE, &[("orders", "/orders")])?;
    let state = dir.path().join("state");
    let refused = waymark(&state, &sandbox.url)
        .current_dir(dir.path())
        .args(["serve", "shop.toml", "--listen", "0.0.0.0:0"])
        .env_remove("WAYMARK_API_TOKEN")
        .output()?;
    assert_eq!(refused.status.code(), Some(2));
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(said.contains("WAYMARK_API_TOKEN"), "{said}");

    // With a token (here on loopback, where it is optional): required on every request
    // but the health checks.
    let token = "s3cret-token";
    let (child, api) = serve_with(
        &state,
        &sandbox.url,
        dir.path(),
        &["shop.toml"],
        &[("WAYMARK_API_TOKEN", token)],
    )?;
    let result = (|| -> Result {
        assert_eq!(request("GET", &api, "/healthz", None)?.status, 200);
        assert_eq!(request("GET", &api, "/readyz", None)?.status, 200);
        assert_eq!(request("GET", &api, "/api/runs", None)?.status, 401);
        assert_eq!(request("GET", &api, "/metrics", None)?.status, 401);
        let wrong = [("Authorization", "Bearer s3cret-tokeN")];
        assert_eq!(
            request_with("GET", &api, "/api/runs", None, &wrong)?.status,
            401
        );
        let right = [("Authorization", "Bearer s3cret-token")];
        let ok = request_with("GET", &api, "/api/runs", None, &right)?;
        assert_eq!(ok.status, 200, "{}", String::from_utf8_lossy(&ok.body));
        assert!(ok.json()?.is_array());
        Ok(())
    })();
    let (code, _, log) = terminate(child, dir.path())?;
    result?;
    assert_eq!(code, Some(0), "{log}");
    assert!(!log.contains(token), "the token never reaches the log");
    Ok(())
}

/// `shop.toml` in `dir`: stream `orders` every second, the file changed by `edit`, its
/// alerts POSTed to `receiver` (`alerts`: more keys of `[alerts]`).
fn alerted_flow(
    dir: &Path,
    receiver: &crate::scripted::Server,
    edit: impl Fn(String) -> String,
    alerts: &str,
) -> Result {
    let path = flow(dir, "shop", "1s", &[("orders", "/orders")])?;
    let mut text = edit(std::fs::read_to_string(&path)?);
    text.push_str(&format!(
        "\n[alerts]\nwebhook = \"{}/hook\"\n{alerts}",
        receiver.url
    ));
    std::fs::write(&path, text)?;
    Ok(())
}

/// The bodies of the alerts `receiver` got, in order.
fn hooks(receiver: &crate::scripted::Server) -> Vec<String> {
    receiver
        .requests
        .lock()
        .map(|r| r.iter().map(|q| q.body.clone()).collect())
        .unwrap_or_default()
}

/// Stops serve (exit 0) after `result`, the test's part while it ran; the alerts
/// `receiver` got, as JSON.
fn alerts_sent(
    child: Child,
    dir: &Path,
    result: Result,
    receiver: &crate::scripted::Server,
) -> Result<Vec<serde_json::Value>> {
    let (code, _, log) = terminate(child, dir)?;
    result.map_err(|e| format!("{e}\n{log}"))?;
    assert_eq!(code, Some(0), "{log}");
    Ok(hooks(receiver)
        .iter()
        .map(|b| serde_json::from_str(b))
        .collect::<std::result::Result<_, _>>()?)
}

/// How many runs in `state` are `status`.
fn ended(state: &Path, status: &str) -> usize {
    runs(state)
        .map(|r| r.iter().filter(|r| r["status"] == status).count())
        .unwrap_or(0)
}

#[test]
fn a_stream_that_starts_failing_alerts_once_and_once_more_when_it_recovers() -> Result {
    let receiver = crate::scripted::Background::start(|_| crate::scripted::Reply::json(200, "{}"))?;
    let receiver = &receiver.server;
    let sandbox = Sandbox::start(&["--records", "50"])?;
    let dir = TempDir::new("serve-alerts");
    // Only failing and its recovery here: a run that straddles the switch back meets a 500
    // and would also be `erroring` (the 5xx share is unit-tested in `serve::traffic`).
    alerted_flow(
        dir.path(),
        receiver,
        |text| text.replace("max_attempts = 8", "max_attempts = 2"),
        "server_errors_above = 1.0\n",
    )?;
    let state = dir.path().join("state");
    let (child, _) = serve(&state, &sandbox.url, dir.path(), &["shop.toml"])?;
    let hooks = || hooks(receiver);
    let ended = |status: &str| ended(&state, status);
    let result = (|| -> Result {
        assert!(wait_for(
            || ended("completed") >= 2,
            Duration::from_secs(30)
        ));
        assert!(hooks().is_empty(), "healthy: no alert");
        sandbox.set_faults(r#"{"rate_500": 1.0}"#)?;
        assert!(
            wait_for(|| hooks().len() == 1, Duration::from_secs(30)),
            "an alert"
        );
        // It keeps failing, run after run: no second alert.
        let failed = |n| {
            runs(&state).is_ok_and(|r| {
                r.iter()
                    .map(|r| r["retries"].as_u64().unwrap_or(0))
                    .sum::<u64>()
                    >= n
            })
        };
        let retries_now: u64 = runs(&state)?
            .iter()
            .map(|r| r["retries"].as_u64().unwrap_or(0))
            .sum();
        assert!(wait_for(
            || failed(retries_now + 3),
            Duration::from_secs(30)
        ));
        assert_eq!(hooks().len(), 1, "one alert per transition: {:?}", hooks());
        sandbox.set_faults(r#"{"rate_500": 0.0}"#)?;
        assert!(
            wait_for(|| hooks().len() == 2, Duration::from_secs(30)),
            "a resolution"
        );
        let completed = ended("completed");
        assert!(wait_for(
            || ended("completed") >= completed + 2,
            Duration::from_secs(30)
        ));
        assert_eq!(hooks().len(), 2, "{:?}", hooks());
        Ok(())
    })();
    let sent = alerts_sent(child, dir.path(), result, receiver)?;
    assert_eq!(sent[0]["health"], "failing", "{}", sent[0]);
    assert_eq!(sent[0]["previous"], "ok");
    assert_eq!(
        (sent[0]["sync"].as_str(), sent[0]["stream"].as_str()),
        (Some("shop"), Some("orders"))
    );
    let text = sent[0]["text"].as_str().unwrap_or("");
    assert!(
        text.starts_with("waymark: shop/orders is failing: "),
        "{text}"
    );
    assert_eq!(sent[1]["health"], "ok", "{}", sent[1]);
    assert_eq!(sent[1]["previous"], "failing");
    let text = sent[1]["text"].as_str().unwrap_or("");
    assert!(
        text.starts_with("waymark: shop/orders recovered (was failing"),
        "{text}"
    );
    Ok(())
}

#[test]
fn a_stream_answered_429_more_than_once_a_run_alerts_rate_limited_once() -> Result {
    let receiver = crate::scripted::Background::start(|_| crate::scripted::Reply::json(200, "{}"))?;
    let receiver = &receiver.server;
    // 100 orders in pages of 10, all read by every run (no time window), against an API
    // that admits 3 requests a second while the workflow declares 20 (a declared
    // rate_limit is not second-guessed by the pace learned from 429s): every run is
    // answered 429 (Retry-After: 1) at least three times.
    let sandbox = Sandbox::start(&["--records", "100", "--quota", "3"])?;
    let dir = TempDir::new("serve-429");
    alerted_flow(
        dir.path(),
        receiver,
        |text| {
            text.replace("page_size = 100", "page_size = 10")
                .replace(
                    ", start_param = \"updated_since\", end_param = \"updated_before\"",
                    "",
                )
                .replace(
                    "timeout = \"5s\"\n",
                    "timeout = \"5s\"\nrate_limit = { requests = 20, per = \"1s\" }\n",
                )
        },
        "",
    )?;
    let state = dir.path().join("state");
    let (child, _) = serve(&state, &sandbox.url, dir.path(), &["shop.toml"])?;
    let hooks = || hooks(receiver);
    let completed = || ended(&state, "completed");
    let result = (|| -> Result {
        assert!(
            wait_for(|| hooks().len() == 1, Duration::from_secs(30)),
            "an alert"
        );
        // Rate limited run after run: no second alert.
        let now = completed();
        assert!(wait_for(|| completed() >= now + 2, Duration::from_secs(30)));
        assert_eq!(hooks().len(), 1, "{:?}", hooks());
        // The API lifts its limit: the next run is answered 2xx only, a resolution.
        sandbox.set_faults("{}")?;
        assert!(
            wait_for(|| hooks().len() == 2, Duration::from_secs(30)),
            "a resolution"
        );
        Ok(())
    })();
    let sent = alerts_sent(child, dir.path(), result, receiver)?;
    assert_eq!(sent[0]["health"], "rate-limited", "{}", sent[0]);
    let reason = sent[0]["reason"].as_str().unwrap_or("");
    assert!(
        reason.starts_with("its last run was answered 429 ") && reason.ends_with(" (limit 1)"),
        "{reason}"
    );
    assert_eq!(sent[1]["health"], "ok", "{}", sent[1]);
    assert_eq!(sent[1]["previous"], "rate-limited");
    Ok(())
}

#[test]
fn the_streams_of_one_source_share_its_rate_budget_across_concurrent_runs() -> Result {
    // An API that admits 10 requests a second; three streams of one source, 15 pages each,
    // run at once under `rate_limit = 8 per second`. Each run alone would stay under the
    // API's limit; only a budget shared by the three keeps them all under it.
    let sandbox = Sandbox::start(&["--records", "300", "--customers", "300", "--quota", "10"])?;
    let dir = TempDir::new("serve-budget");
    let path = flow(
        dir.path(),
        "shop",
        ONCE,
        &[
            ("orders", "/orders"),
            ("orders_b", "/orders"),
            ("customers", "/customers"),
        ],
    )?;
    let text = std::fs::read_to_string(&path)?
        .replace("page_size = 100", "page_size = 20")
        .replace(
            "max_attempts = 8\n",
            "max_attempts = 8\nrate_limit = { requests = 8, per = \"1s\" }\n",
        );
    std::fs::write(&path, text)?;
    let state = dir.path().join("state");
    let (child, _) = serve(
        &state,
        &sandbox.url,
        dir.path(),
        &["shop.toml", "--max-concurrent-runs", "3"],
    )?;
    let done = wait_for(
        || runs(&state).is_ok_and(|r| r.iter().filter(|r| r["status"] == "completed").count() == 3),
        Duration::from_secs(60),
    );
    let (code, _, log) = terminate(child, dir.path())?;
    assert!(done, "three completed runs: {:?}\n{log}", runs(&state)?);
    assert_eq!(code, Some(0), "{log}");
    let all = runs(&state)?;
    // They did run at once: each started before another ended.
    let latest_start = all.iter().filter_map(|r| r["started"].as_str()).max();
    let earliest_end = all.iter().filter_map(|r| r["updated"].as_str()).min();
    assert!(latest_start < earliest_end, "concurrent runs: {all:?}");
    let stats = sandbox.stats()?;
    assert_eq!(
        stats["faults"]["429"], 0,
        "no request over the API's limit: {stats}"
    );
    assert_eq!(stats["requests"], 45, "15 pages per stream: {stats}");
    let retries: u64 = all.iter().map(|r| r["retries"].as_u64().unwrap_or(0)).sum();
    assert_eq!(retries, 0, "{all:?}");
    assert_eq!(rows(&dir.path().join("shop.db"))?, sandbox.truth()?);
    Ok(())
}

/// A stream that cannot even start a run (its destination cannot be opened) journals
/// nothing; serve's `status` still calls it failing, with why, so it is alerted, until a
/// run goes through.
#[test]
fn a_stream_that_cannot_run_is_failing_until_it_can() -> Result {
    let sandbox = Sandbox::start(&["--records", "10"])?;
    let dir = TempDir::new("serve-refused");
    let path = flow(dir.path(), "shop", "1s", &[("orders", "/orders")])?;
    // The destination's directory is a file: SQLite cannot be opened there.
    let text =
        std::fs::read_to_string(&path)?.replace("path = \"shop.db\"", "path = \"in/shop.db\"");
    std::fs::write(&path, text)?;
    std::fs::write(dir.path().join("in"), "not a directory")?;
    let state = dir.path().join("state");
    let (child, _) = serve(&state, &sandbox.url, dir.path(), &["shop.toml"])?;
    assert!(wait_for_lock(&state, child.id()));
    let orders = || -> Option<serde_json::Value> {
        let out = waymark(&state, "")
            .args(["status", "--json"])
            .output()
            .ok()?;
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|r| r["stream"] == "orders")
    };
    let failing = wait_for(
        || orders().is_some_and(|r| r["health"] == "failing"),
        Duration::from_secs(30),
    );
    let seen = orders();
    std::fs::remove_file(dir.path().join("in"))?;
    let recovered = wait_for(
        || orders().is_some_and(|r| r["health"] == "ok" && r["last_status"] == "completed"),
        Duration::from_secs(30),
    );
    let (code, _, log) = terminate(child, dir.path())?;
    assert!(failing, "{seen:?}\n{log}");
    let reason = seen
        .as_ref()
        .and_then(|r| r["reason"].as_str())
        .unwrap_or_default();
    assert!(reason.starts_with("it could not run: "), "{reason}");
    assert!(reason.contains("in/shop.db"), "{reason}");
    assert!(recovered, "{:?}\n{log}", orders());
    assert_eq!(code, Some(0), "{log}");
    Ok(())
}
