//! Webhooks beside polling, end to end: the sandbox signs an event for every change and
//! delivers it (with duplicates, reordering, delays, bursts and dropped events, retrying
//! until answered 2xx) to `waymark serve`, which is killed -9 again and again; polling
//! catches what the webhooks missed. Then the destination equals the source, each accepted
//! event was applied exactly once (counted from the journal), and the inbox is empty.

use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

use crate::chaos::assert_matches_source;
use crate::serve::{serve_with, terminate};
use crate::util::{
    request, request_with, runs, stream_table, wait_for, wait_for_lock, waymark, write_workflow,
    Result, Sandbox, TempDir, CURSOR,
};

/// A Standard Webhooks secret (`whsec_` + base64 of 24 bytes).
const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// Orders and customers polled every 2 s, each with its deletions feed and a webhook.
fn webhook_workflow(dir: &Path, webhook: &str) -> Result<PathBuf> {
    let window = r#"window = { lag = "1s", overlap = "5s", start_param = "updated_since", end_param = "updated_before" }"#;
    let mut streams = String::new();
    for resource in ["orders", "customers"] {
        let hook = webhook.replace("{resource}", resource);
        streams += &stream_table(
            resource,
            &format!("/{resource}"),
            "updated_at",
            200,
            CURSOR,
            &format!("{window}\nschedule = {{ every = \"2s\" }}\n{hook}"),
        );
        streams += &stream_table(
            &format!("{resource}_deleted"),
            &format!("/{resource}/deleted"),
            "deleted_at",
            200,
            CURSOR,
            &format!("{window}\nschedule = {{ every = \"2s\" }}\ndeletes = \"{resource}\""),
        );
    }
    write_workflow(
        dir,
        "timeout = \"5s\"\nmax_attempts = 15",
        &streams,
        "busy_timeout = \"2s\"",
    )
}

const PAYLOAD: &str = r#"webhook = { scheme = "standard", secrets = [{ env = "SHOP_WEBHOOK_SECRET" }], record_path = "data", deleted_when = { path = "type", one_of = ["{resource}.deleted"] } }"#;

/// A free loopback port (for serve's webhook listener, which the sandbox must know before
/// serve starts).
fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn start_serve(state: &Path, sandbox: &Sandbox, dir: &Path, hooks: &str) -> Result<Child> {
    let (child, _) = serve_with(
        state,
        &sandbox.url,
        dir,
        &["shop.toml", "--webhook-listen", hooks],
        &[("SHOP_WEBHOOK_SECRET", SECRET)],
    )?;
    assert!(wait_for_lock(state, child.id()));
    Ok(child)
}

fn webhook_stats(sandbox: &Sandbox) -> Result<serde_json::Value> {
    Ok(sandbox.stats()?["webhooks"].clone())
}

/// Records the journaled webhook runs applied (each committed page counted once, however
/// often its run was resumed), and whether every such run completed.
fn applied(state: &Path) -> Result<(u64, bool)> {
    let hooked: Vec<serde_json::Value> = runs(state)?
        .into_iter()
        .filter(|r| {
            r["stream"]
                .as_str()
                .is_some_and(|s| s.ends_with("@webhook"))
        })
        .collect();
    let records = hooked.iter().filter_map(|r| r["records"].as_u64()).sum();
    Ok((records, hooked.iter().all(|r| r["status"] == "completed")))
}

#[test]
fn webhook_events_survive_kill_9_and_polling_catches_what_was_dropped() -> Result {
    let port = free_port()?;
    let hooks = format!("127.0.0.1:{port}");
    let seed = std::env::var("WAYMARK_TEST_SEED")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(7, |d| d.as_secs())
        });
    eprintln!("seed {seed} (WAYMARK_TEST_SEED={seed} repeats the sandbox's draws)");
    let sandbox = Sandbox::start(&[
        "--records",
        "2000",
        "--customers",
        "300",
        "--seed",
        &seed.to_string(),
        "--webhooks-to",
        &format!("http://{hooks}/hooks/shop/{{resource}}"),
        "--webhook-secret",
        SECRET,
        "--webhook-duplicates",
        "0.1",
        "--webhook-reorder",
        "0.1",
        "--webhook-drop",
        "0.05",
        "--webhook-delay-ms",
        "50",
        "--webhook-burst",
        "20",
    ])?;
    let dir = TempDir::new("webhooks-kill");
    webhook_workflow(dir.path(), PAYLOAD)?;
    let state = dir.path().join("state");
    let mut child = start_serve(&state, &sandbox, dir.path(), &hooks)?;
    // ~300 changes a second for ~33 s: ~10,000 events; serve killed every ~6 s.
    sandbox.set_mutation_rate(300.0)?;
    let began = Instant::now();
    let mut kills = 0;
    while began.elapsed() < Duration::from_secs(33) {
        let before = webhook_stats(&sandbox)?["delivered"].as_u64().unwrap_or(0);
        // Wait for progress, not for time: a few hundred events accepted by this serve.
        let progressed = wait_for(
            || {
                webhook_stats(&sandbox)
                    .is_ok_and(|w| w["delivered"].as_u64().unwrap_or(0) >= before + 1500)
            },
            Duration::from_secs(60),
        );
        assert!(
            progressed,
            "events delivered: {:?}",
            webhook_stats(&sandbox)?
        );
        child.kill()?; // SIGKILL
        child.wait()?;
        kills += 1;
        child = start_serve(&state, &sandbox, dir.path(), &hooks)?;
    }
    sandbox.set_mutation_rate(0.0)?;
    let settled = wait_for(
        || {
            webhook_stats(&sandbox).is_ok_and(|w| {
                w["pending"].as_u64() == Some(0) && w["duplicates_pending"].as_u64() == Some(0)
            })
        },
        Duration::from_secs(120),
    );
    let stats = webhook_stats(&sandbox)?;
    eprintln!("after {kills} kills: {stats}");
    assert!(settled, "every event not dropped was delivered: {stats}");
    assert!(stats["generated"].as_u64() >= Some(8_000), "{stats}");
    assert!(stats["dropped"].as_u64() > Some(0), "{stats}");
    assert!(stats["duplicated"].as_u64() > Some(0), "{stats}");
    let delivered = stats["delivered"].as_u64().ok_or("delivered")?;

    // Every delivered event applied once, by completed runs; the polling then caught up.
    let caught_up_from = now_text();
    let done = wait_for(
        || {
            applied(&state).is_ok_and(|(n, all)| n == delivered && all)
                && polled_since(&state, &caught_up_from)
        },
        Duration::from_secs(120),
    );
    let (records, all_completed) = applied(&state)?;
    let (code, _, log) = terminate(child, dir.path())?;
    assert_eq!(code, Some(0), "{log}");
    assert!(
        done,
        "applied {records} of {delivered} (all completed: {all_completed})\n{log}"
    );
    assert_eq!(
        records, delivered,
        "each accepted event applied exactly once"
    );
    // The webhooks did write (the polling did not do it all), and the polling found some
    // records the webhooks were late for or never sent.
    let hooked_wrote: u64 = runs(&state)?
        .iter()
        .filter(|r| {
            r["stream"]
                .as_str()
                .is_some_and(|s| s.ends_with("@webhook"))
        })
        .map(|r| {
            r["written"]["inserted"].as_u64().unwrap_or(0)
                + r["written"]["updated"].as_u64().unwrap_or(0)
        })
        .sum();
    eprintln!("the webhook runs inserted or updated {hooked_wrote} of {records} records");
    assert!(hooked_wrote > 0);
    let db = dir.path().join("shop.db");
    assert_matches_source(&sandbox, &db, "orders")?;
    assert_matches_source(&sandbox, &db, "customers")?;

    // The inbox is empty and small: applied events and their bodies are gone.
    let status = waymark(&state, &sandbox.url)
        .args(["status", "--json"])
        .output()?;
    let status = String::from_utf8_lossy(&status.stdout).into_owned();
    for line in status.lines().filter(|l| l.contains("@webhook")) {
        let row: serde_json::Value = serde_json::from_str(line)?;
        assert_eq!(row["webhook"]["waiting"], 0, "{row}");
        assert_eq!(row["health"], "ok", "{row}");
    }
    let inbox = crate::util::du(&state.join("webhooks"));
    eprintln!("inbox after {delivered} events: {inbox} bytes");
    assert!(inbox < 16 << 20, "the inbox holds {inbox} bytes");
    Ok(())
}

fn now_text() -> String {
    humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string()
}

/// Whether each polled stream has completed a run started after `since` (RFC 3339, as
/// `runs --json` writes times: they compare as text).
fn polled_since(state: &Path, since: &str) -> bool {
    let Ok(all) = runs(state) else {
        return false;
    };
    ["orders", "orders_deleted", "customers", "customers_deleted"]
        .iter()
        .all(|stream| {
            all.iter().any(|r| {
                r["stream"] == *stream
                    && r["status"] == "completed"
                    && r["started"].as_str().is_some_and(|s| s > since)
            })
        })
}

type Headers = Vec<(String, String)>;

/// Deliveries are checked before anything is stored: a bad signature, an old timestamp, a
/// body too large are refused with a bare status; a duplicate is
/// answered 200 and stored once; the refusals are counted by reason.
#[test]
fn refused_deliveries_say_nothing_and_are_counted_by_reason() -> Result {
    let sandbox = Sandbox::start(&["--records", "10"])?;
    let dir = TempDir::new("webhooks-refused");
    let hook = PAYLOAD.replace("record_path", "max_body_bytes = 2048, record_path");
    webhook_workflow(dir.path(), &hook)?;
    let state = dir.path().join("state");
    let port = free_port()?;
    let hooks = format!("127.0.0.1:{port}");
    let (child, api) = serve_with(
        &state,
        &sandbox.url,
        dir.path(),
        &["shop.toml", "--webhook-listen", &hooks],
        &[("SHOP_WEBHOOK_SECRET", SECRET)],
    )?;
    let base = format!("http://{hooks}");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    let body = r#"{"type":"orders.updated","data":{"id":1,"updated_at":"2030-01-01T00:00:00.000Z","rev":9}}"#;
    let signed = |id: &str, at: u64, body: &str| -> Headers {
        use waymark_connectors::webhook::signature::{key, sign, Scheme};
        let key = key(&Scheme::Standard, SECRET).unwrap_or_default();
        sign(
            &Scheme::Standard,
            &key,
            id,
            waymark_engine::Timestamp(at * 1000),
            body.as_bytes(),
        )
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    };
    let post = |headers: &[(String, String)], body: &str| {
        let headers: Vec<(&str, &str)> = headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        request_with("POST", &base, "/hooks/shop/orders", Some(body), &headers)
    };
    // Accepted, then the same id again: 200, stored once.
    let good = signed("evt_1", now, body);
    for _ in 0..2 {
        let reply = post(&good, body)?;
        assert_eq!(
            reply.status,
            200,
            "{}",
            String::from_utf8_lossy(&reply.body)
        );
    }
    // Tampered body, wrong secret, ten minutes old, missing headers: 401, bare.
    let tampered = body.replace("\"rev\":9", "\"rev\":8");
    let old = signed("evt_2", now - 600, body);
    let cases: Vec<(Headers, String, u16, &str)> = vec![
        (good.clone(), tampered, 401, "bad_signature"),
        (old, body.to_string(), 401, "too_old"),
        (Vec::new(), body.to_string(), 401, "missing_header"),
        (
            signed("evt_3", now, &"x".repeat(3000)),
            format!("{{\"pad\":\"{}\"}}", "x".repeat(3000)),
            413,
            "too_large",
        ),
    ];
    for (headers, body, status, _) in &cases {
        let reply = post(headers, body)?;
        assert_eq!(
            reply.status,
            *status,
            "{}",
            String::from_utf8_lossy(&reply.body)
        );
        let text = String::from_utf8_lossy(&reply.body).into_owned();
        assert!(
            !text.contains("signature") && !text.contains("old") && text.len() < 30,
            "a refusal says nothing: {text}"
        );
    }
    // An unknown hook: 404.
    assert_eq!(
        request("POST", &base, "/hooks/shop/nope", Some(body))?.status,
        404
    );
    // The event is applied once: a webhook run with one record.
    let applied_once = wait_for(
        || applied(&state).is_ok_and(|(n, all)| n == 1 && all),
        Duration::from_secs(30),
    );
    let metrics =
        String::from_utf8_lossy(&request("GET", &api, "/metrics", None)?.body).into_owned();
    let (code, _, log) = terminate(child, dir.path())?;
    assert_eq!(code, Some(0), "{log}");
    assert!(applied_once, "{:?}", runs(&state)?);
    let count = |outcome: &str| {
        metrics
            .lines()
            .filter(|l| {
                l.starts_with("waymark_webhook_deliveries_total")
                    && l.contains("stream=\"orders\"")
                    && l.contains(&format!("outcome=\"{outcome}\""))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>()
    };
    assert_eq!(count("accepted"), 1.0, "{metrics}");
    assert_eq!(count("duplicate"), 1.0, "{metrics}");
    for (_, _, _, reason) in &cases {
        assert_eq!(count(reason), 1.0, "{reason}: {metrics}");
    }
    assert!(
        !log.contains(SECRET) && !log.contains(&SECRET[6..]),
        "the secret is never logged"
    );
    // The record is in the destination at the event's version.
    let (live, _) = crate::util::table(&dir.path().join("shop.db"), "orders")?;
    assert_eq!(live["1"]["rev"], 9, "{:?}", live.get("1"));
    Ok(())
}

/// `apply = "fetch"`: each event only names its record, which is read from an API that
/// admits 10 requests a second and answers 429 now and then. The source's budget keeps
/// every request within the quota, each 429's `Retry-After` is waited out, and every change
/// arrives: after a first polled load, the webhooks alone bring the destination to the
/// source's state.
#[test]
fn fetched_events_respect_the_budget_through_429s_and_lose_nothing() -> Result {
    let port = free_port()?;
    let hooks = format!("127.0.0.1:{port}");
    let sandbox = Sandbox::start(&[
        "--records",
        "300",
        "--customers",
        "20",
        "--quota",
        "10",
        "--rate-429",
        "0.15",
        "--retry-after",
        "1s",
        "--webhooks-to",
        &format!("http://{hooks}/hooks/shop/{{resource}}"),
        "--webhook-secret",
        SECRET,
        "--webhook-reorder",
        "0.2",
    ])?;
    let dir = TempDir::new("webhooks-fetch");
    let mut streams = String::new();
    for resource in ["orders", "customers"] {
        let hook = format!(
            r#"webhook = {{ scheme = "standard", secrets = [{{ env = "SHOP_WEBHOOK_SECRET" }}], apply = "fetch", fetch = "/{resource}/{{event.data.id}}", record_path = "data", deleted_when = {{ path = "type", one_of = ["{resource}.deleted"] }} }}"#
        );
        streams += &stream_table(
            resource,
            &format!("/{resource}"),
            "updated_at",
            200,
            CURSOR,
            &hook,
        );
    }
    write_workflow(
        dir.path(),
        "timeout = \"5s\"\nmax_attempts = 30\nrate_limit = { requests = 10, per = \"1s\" }",
        &streams,
        "",
    )?;
    let state = dir.path().join("state");
    // The first load, polled.
    let out = waymark(&state, &sandbox.url)
        .current_dir(dir.path())
        .args(["run", "shop.toml"])
        .output()?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let child = start_serve(&state, &sandbox, dir.path(), &hooks)?;
    sandbox.set_mutation_rate(20.0)?;
    let changed = wait_for(
        || webhook_stats(&sandbox).is_ok_and(|w| w["generated"].as_u64() >= Some(100)),
        Duration::from_secs(30),
    );
    sandbox.set_mutation_rate(0.0)?;
    assert!(changed, "{:?}", webhook_stats(&sandbox)?);
    let settled = wait_for(
        || webhook_stats(&sandbox).is_ok_and(|w| w["pending"].as_u64() == Some(0)),
        Duration::from_secs(60),
    );
    let delivered = webhook_stats(&sandbox)?["delivered"]
        .as_u64()
        .ok_or("delivered")?;
    let done = wait_for(
        || applied(&state).is_ok_and(|(_, all)| all) && drained(&state),
        Duration::from_secs(120),
    );
    let (code, _, log) = terminate(child, dir.path())?;
    assert_eq!(code, Some(0), "{log}");
    assert!(
        settled && done,
        "applied {:?} of {delivered}\n{log}",
        applied(&state)?
    );
    let db = dir.path().join("shop.db");
    assert_matches_source(&sandbox, &db, "orders")?;
    assert_matches_source(&sandbox, &db, "customers")?;
    // Within the API's quota throughout; the random 429s were waited out as asked.
    let stats = sandbox.stats()?;
    assert_eq!(stats["over_quota"], 0, "{stats}");
    let mut waits = Vec::new();
    for run in runs(&state)? {
        if !run["stream"]
            .as_str()
            .is_some_and(|s| s.ends_with("@webhook"))
        {
            continue;
        }
        for step in crate::util::journal(&state, run["run"].as_str().ok_or("run")?)? {
            let retried = &step["event"]["RequestRetried"];
            if retried["status"] == 429 {
                waits.push(retried["wait_ms"].as_u64().unwrap_or(0));
            }
        }
    }
    eprintln!("429s met by the webhook runs, waits in ms: {waits:?}");
    assert!(!waits.is_empty(), "the API answered 429 to some fetches");
    assert!(
        waits.iter().all(|w| *w >= 1000),
        "Retry-After honoured: {waits:?}"
    );
    Ok(())
}

/// Whether no webhook scope has events waiting (`status`, answered by serve).
fn drained(state: &Path) -> bool {
    let Ok(out) = waymark(state, "").args(["status", "--json"]).output() else {
        return false;
    };
    let rows: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .filter(|r: &serde_json::Value| {
            r["stream"]
                .as_str()
                .is_some_and(|s| s.ends_with("@webhook"))
        })
        .collect();
    !rows.is_empty() && rows.iter().all(|r| r["webhook"]["waiting"] == 0)
}
