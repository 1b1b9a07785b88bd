//! `waymark record` and `waymark test`: a workflow's exchanges recorded from the sandbox
//! (secrets and chosen fields scrubbed) replay offline into the same destination; a request
//! the fixtures do not hold is named with the closest recorded one; every catalog entry
//! passes on its own fixtures.

use std::path::{Path, PathBuf};

use std::process::Command;

use crate::util::*;

const SECRET: &str = "sk_live_fixture_secret_9f2c41";

/// Orders followed through Link headers, the API key in the query (so it is in every
/// request and every next-page URL the API sends back), the first window starting at an
/// age (counted back from the run's recorded time when replayed).
fn keyed_workflow(dir: &Path) -> Result<PathBuf> {
    write_workflow(
        dir,
        "timeout = \"5s\"\nmax_attempts = 8\nbackoff = { base = \"10ms\", cap = \"50ms\" }\n\
         auth = { kind = \"api_key\", in = \"query\", name = \"api_key\", key = { env = \"SHOP_API_KEY\" } }",
        &stream_table(
            "orders",
            "/orders",
            "updated_at",
            150,
            r#"{ kind = "link_header", limit_param = "per_page" }"#,
            r#"window = { lag = "0s", overlap = "1h", initial = "400d", start_param = "updated_since", end_param = "updated_before" }"#,
        ),
        "",
    )
}

fn waymark_with_key(state: &Path, url: &str) -> std::process::Command {
    let mut cmd = waymark(state, url);
    cmd.env("SHOP_API_KEY", SECRET);
    cmd
}

/// Every file under `dir`, with its text.
fn files(dir: &Path) -> Result<Vec<(PathBuf, String)>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        match path.is_dir() {
            true => out.extend(files(&path)?),
            false => out.push((path.clone(), std::fs::read_to_string(&path)?)),
        }
    }
    out.sort();
    Ok(out)
}

/// The exchange files among `files`, parsed.
fn exchanges(files: &[(PathBuf, String)]) -> Result<Vec<serde_json::Value>> {
    Ok(files
        .iter()
        .filter(|(p, _)| p.extension().is_some_and(|e| e == "json"))
        .map(|(_, t)| serde_json::from_str(t))
        .collect::<std::result::Result<_, _>>()?)
}

/// Rows with `field` taken out of every record.
fn without(
    rows: &std::collections::BTreeMap<String, serde_json::Value>,
    field: &str,
) -> std::collections::BTreeMap<String, serde_json::Value> {
    rows.iter()
        .map(|(k, v)| {
            let mut v = v.clone();
            if let Some(o) = v.as_object_mut() {
                o.remove(field);
            }
            (k.clone(), v)
        })
        .collect()
}

/// Asserts `waymark test` exited 0, showing what it said otherwise.
fn assert_passed(out: &std::process::Output) {
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
}

/// Asserts two tables are equal, naming the first key that differs.
fn same(
    a: &std::collections::BTreeMap<String, serde_json::Value>,
    b: &std::collections::BTreeMap<String, serde_json::Value>,
    what: &str,
) {
    let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    if let Some(key) = keys.into_iter().find(|k| a.get(*k) != b.get(*k)) {
        panic!(
            "{what}: {} and {} rows; `{key}`: {:?} vs {:?}",
            a.len(),
            b.len(),
            a.get(key),
            b.get(key)
        );
    }
}

#[test]
fn recorded_runs_replay_offline_into_the_same_destination_with_secrets_scrubbed() -> Result {
    // A seeded sandbox: its 429s fall on the same requests every time.
    let sandbox = Sandbox::start(&["--records", "600", "--seed", "7"])?;
    sandbox.set_faults(r#"{"rate_429": 0.3, "retry_after_s": 1}"#)?;
    let dir = TempDir::new("fixtures-round-trip");
    let wf = keyed_workflow(dir.path())?;
    let fx = dir.path().join("fx");
    let state = dir.path().join("unused-state");
    let record = |keep: &str| -> Result<std::process::Output> {
        run(waymark_with_key(&state, &sandbox.url)
            .args(["record", "--scrub", "currency", "--keep"])
            .arg(dir.path().join(keep))
            .arg("--to")
            .arg(&fx)
            .arg(&wf))
    };

    let out = record("recorded-1")?;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    // Changes between the runs: the second, incremental run reads them, the third finds
    // nothing new.
    sandbox.set_faults("{}")?;
    sandbox.edit(&[], &[3, 5, 8], &[])?;
    let out = record("recorded-2")?;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("recorded 1 exchanges into"),
        "the incremental run reads one page: {}",
        text(&out.stdout)
    );
    // expect.toml, written after the first run, no longer holds: said, not rewritten.
    let said = text(&out.stdout);
    assert!(
        said.contains("no longer says what the destination holds"),
        "{said}"
    );
    assert!(
        said.contains("orders: checkpoint watermark: expected"),
        "{said}"
    );
    std::fs::remove_file(fx.join("expect.toml"))?;
    let out = record("recorded-3")?;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("wrote"), "{}", text(&out.stdout));
    let recorded = rows(&dir.path().join("recorded-3/destination.db"))?;
    // (The earlier runs, replayed from the fixtures to start the next, wrote stand-ins.)
    let truth = sandbox.truth()?;
    same(
        &without(&recorded, "currency"),
        &without(&truth, "currency"),
        "the recorded runs synced the API",
    );

    // The fixtures: two runs, at least one 429 answered and its retry, pages to the end.
    let manifest = std::fs::read_to_string(fx.join("fixtures.toml"))?;
    assert_eq!(manifest.matches("[[run]]").count(), 3, "{manifest}");
    let all = files(&fx)?;
    let exchanges = exchanges(&all)?;
    let throttled = exchanges
        .iter()
        .filter(|e| e["response"]["status"] == 429)
        .count();
    assert!(throttled >= 1, "seed 7 answers some requests 429");
    assert_eq!(
        exchanges.len(),
        4 + throttled + 2,
        "4 pages, the 429s, 1 page in each incremental run"
    );
    // No secret anywhere: masked in queries and in the Link headers that echo it.
    for (path, content) in &all {
        assert!(
            !content.contains(SECRET),
            "{} holds the secret",
            path.display()
        );
        assert!(
            !content.contains(&SECRET[..12]),
            "{} holds part of it",
            path.display()
        );
    }
    let first = &exchanges[0];
    assert_eq!(first["request"]["query"]["api_key"], "***", "{first}");
    assert!(
        first["scrubbed"].as_array().is_some_and(|notes| notes
            .iter()
            .any(|n| n.as_str().is_some_and(|n| n.contains("request")))),
        "what was scrubbed is said: {first}"
    );
    assert!(
        all.iter()
            .any(|(_, t)| t.contains("value(s) of `currency` replaced")),
        "the scrubbed field is said"
    );

    // Offline: no sandbox, no key in the environment.
    drop(sandbox);
    let out = run(waymark(&state, "http://127.0.0.1:9")
        .env_remove("SHOP_API_KEY")
        .args(["test", "--keep"])
        .arg(dir.path().join("replayed"))
        .arg("--fixtures")
        .arg(&fx)
        .arg(&wf))?;
    assert_passed(&out);
    let replayed = rows(&dir.path().join("replayed/destination.db"))?;
    same(
        &without(&replayed, "currency"),
        &without(&recorded, "currency"),
        "the fixtures reproduce the destination",
    );
    assert!(replayed.values().all(|r| r["currency"]
        .as_str()
        .is_some_and(|c| c.starts_with("scrubbed-"))));
    assert!(
        !state.exists(),
        "record and test keep no state of their own"
    );

    // expect.toml says what the fixtures replay to: the scrubbed values, not the live ones.
    let expect = std::fs::read_to_string(fx.join("expect.toml"))?;
    assert!(
        expect.contains(&format!("records = {}", truth.len())),
        "{expect}"
    );
    assert!(expect.contains("currency = \"scrubbed-"), "{expect}");

    // A request the fixtures do not hold fails the test, naming the closest recorded one.
    for entry in std::fs::read_dir(fx.join("run-1"))? {
        let page = entry?.path();
        let edited = std::fs::read_to_string(&page)?
            .replace("\"per_page\": \"150\"", "\"per_page\": \"149\"");
        std::fs::write(&page, edited)?;
    }
    let out = run(waymark(&state, "http://127.0.0.1:9")
        .env_remove("SHOP_API_KEY")
        .args(["test", "--fixtures"])
        .arg(&fx)
        .arg(&wf))?;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let said = text(&out.stdout);
    assert!(
        said.contains("matches nothing recorded; the closest, run-1/001.json, differs: query `per_page` `150` here, `149` there"),
        "{said}"
    );
    assert!(
        said.contains("run-1/001.json was recorded but never requested"),
        "{said}"
    );
    Ok(())
}

#[test]
fn every_catalog_entry_passes_on_its_fixtures() -> Result {
    let catalog = Path::new(env!("CARGO_MANIFEST_DIR")).join("workflows/catalog");
    let mut entries: Vec<PathBuf> = std::fs::read_dir(&catalog)?
        .map(|e| e.map(|e| e.path()))
        .collect::<std::result::Result<_, _>>()?;
    entries.retain(|p| p.is_dir());
    entries.sort();
    assert!(entries.len() >= 7, "{entries:?}");
    let state = TempDir::new("catalog-state");
    for entry in &entries {
        let fx = entry.join("fixtures");
        for needed in ["workflow.toml", "README.md"] {
            assert!(
                entry.join(needed).is_file(),
                "{} lacks {needed}",
                entry.display()
            );
        }
        let manifest = std::fs::read_to_string(fx.join("fixtures.toml"))?;
        assert!(
            manifest.matches("[[run]]").count() >= 2,
            "{}: a first and an incremental run",
            entry.display()
        );
        let throttled = files(&fx)?.iter().any(|(p, t)| {
            p.extension().is_some_and(|e| e == "json")
                && serde_json::from_str::<serde_json::Value>(t)
                    .is_ok_and(|e| e["response"]["status"] == 429 || e["response"]["status"] == 403)
        });
        assert!(throttled, "{}: a rate-limit answer", entry.display());
        let out = run(Command::new(bin())
            .env("WAYMARK_STATE_DIR", state.path())
            .env("WAYMARK_LOG", "warn")
            .args(["test", "--fixtures"])
            .arg(&fx)
            .arg(entry.join("workflow.toml")))?;
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}:\n{}{}",
            entry.display(),
            text(&out.stdout),
            text(&out.stderr)
        );
    }
    Ok(())
}

#[test]
fn a_workflow_on_oauth2_replays_without_credentials_or_the_token_endpoint() -> Result {
    let dir = TempDir::new("fixtures-oauth2");
    let wf = write_workflow(
        dir.path(),
        "[source.auth]\nkind = \"oauth2\"\ntoken_url = \"https://auth.invalid/oauth/token\"\n\
         client_id = \"waymark\"\nclient_secret = { env = \"SHOP_CLIENT_SECRET\" }\n",
        &stream_table("orders", "/orders", "updated_at", 50, CURSOR, ""),
        "",
    )?;
    let fx = dir.path().join("fx");
    std::fs::create_dir_all(fx.join("run-1"))?;
    std::fs::write(
        fx.join("fixtures.toml"),
        "base_url = \"https://api.shop.example\"\n[[run]]\nat = \"2026-11-30T12:00:00Z\"\ndir = \"run-1\"\n",
    )?;
    let exchange = serde_json::json!({
        "request": { "method": "GET", "path": "/orders", "query": { "limit": "50" } },
        "response": {
            "status": 200,
            "headers": { "content-type": "application/json" },
            "body": { "data": [
                { "id": 1, "updated_at": "2026-11-29T10:00:00Z" },
                { "id": 2, "updated_at": "2026-11-29T11:00:00Z" }
            ], "next_cursor": null }
        }
    });
    std::fs::write(fx.join("run-1/001.json"), exchange.to_string())?;
    std::fs::write(
        fx.join("expect.toml"),
        "[stream.orders]\nrecords = 2\ndead_letters = 0\n\n[[stream.orders.sample]]\nkey = \"2\"\nfields = { updated_at = \"2026-11-29T11:00:00Z\" }\n",
    )?;
    // No secret in the environment, and auth.invalid does not resolve.
    let out = run(waymark(&dir.path().join("state"), "")
        .env_remove("SHOP_CLIENT_SECRET")
        .args(["test", "--fixtures"])
        .arg(&fx)
        .arg(&wf))?;
    assert_passed(&out);
    Ok(())
}

/// A workflow writing into an API: `record` keeps the destination's exchanges too (marked
/// `"side": "destination"`), and `test` replays both APIs offline, comparing every body
/// the mapping sends.
#[test]
fn a_workflow_writing_into_an_api_records_and_replays_both_apis() -> Result {
    use std::sync::PoisonError;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let crm = crate::crm::Shared::default();
    crm.lock()
        .unwrap_or_else(PoisonError::into_inner)
        .fail_every = 9;
    let server = runtime.block_on(crate::scripted::Server::start(
        || 0,
        crate::crm::handler(crm.clone()),
    ))?;
    let sandbox = Sandbox::start(&["--records", "120"])?;
    let dir = TempDir::new("fixtures-api-destination");
    let file = std::fs::read_to_string(keyed_workflow(dir.path())?)?.replace(
        "[destination]\nkind = \"sqlite\"\npath = \"shop.db\"\n",
        &format!(
            "[destination]\n{}\nauth = {{ kind = \"bearer\", token = {{ env = \"CRM_TOKEN\" }} }}\n\
             [destination.body]\nstatus = {{ path = \"status\" }}\n\
             total = {{ path = \"total_cents\" }}\nlabel = {{ template = \"order {{key}}\" }}\n",
            crate::crm::destination(&server.url)
        ),
    );
    let wf = dir.path().join("crm.toml");
    std::fs::write(&wf, file)?;
    let fx = dir.path().join("fx");
    let state = dir.path().join("unused-state");
    let record = || -> Result<std::process::Output> {
        run(waymark_with_key(&state, &sandbox.url)
            .env("CRM_TOKEN", "crm-token-fixture-7f3a9b")
            .args(["record", "--to"])
            .arg(&fx)
            .arg(&wf))
    };
    let out = record()?;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    sandbox.edit(&[], &[3, 5, 8], &[])?;
    // expect.toml written again, from both runs.
    std::fs::remove_file(fx.join("expect.toml"))?;
    let out = record()?;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));

    // What the CRM holds: every order, mapped.
    let truth = sandbox.truth()?;
    let mapped: std::collections::BTreeMap<String, serde_json::Value> = truth
        .iter()
        .map(|(key, o)| {
            let contact = serde_json::json!({
                "status": o["status"], "total": o["total_cents"], "label": format!("order {key}"),
            });
            (key.clone(), contact)
        })
        .collect();
    let live = crm
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .by_external_id();
    same(&live, &mapped, "the recorded runs wrote the mapped orders");

    // The fixtures: each run's lookups, creates and updates (with the 429s and 503s of
    // every ninth request, and their retries), marked as the destination's.
    let manifest = std::fs::read_to_string(fx.join("fixtures.toml"))?;
    assert!(
        manifest.contains(&format!("destination_url = \"{}\"", server.url)),
        "{manifest}"
    );
    let all = files(&fx)?;
    let exchanges = exchanges(&all)?;
    let sent = |method: &str| {
        exchanges
            .iter()
            .filter(|e| e["side"] == "destination" && e["request"]["method"] == method)
            .filter(|e| e["response"]["status"].as_u64().is_some_and(|s| s < 300))
            .count()
    };
    assert_eq!((sent("POST"), sent("PATCH")), (truth.len(), 3));
    assert!(exchanges
        .iter()
        .any(|e| e["side"] == "destination" && e["response"]["status"] == 503));
    for (path, content) in &all {
        assert!(!content.contains("crm-token-fixture"), "{}", path.display());
        assert!(!content.contains(SECRET), "{}", path.display());
    }

    // Offline: neither API, no credentials.
    drop(sandbox);
    drop(server);
    let out = run(waymark(&state, "http://127.0.0.1:9")
        .env_remove("SHOP_API_KEY")
        .args(["test", "--fixtures"])
        .arg(&fx)
        .arg(&wf))?;
    assert_passed(&out);
    // A changed mapping sends other bodies: the test says which.
    let changed = std::fs::read_to_string(&wf)?.replace("order {key}", "Order {key}");
    std::fs::write(&wf, changed)?;
    let out = run(waymark(&state, "http://127.0.0.1:9")
        .args(["test", "--fixtures"])
        .arg(&fx)
        .arg(&wf))?;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("\"label\":\"Order 1\"")
            && text(&out.stdout).contains("matches nothing recorded"),
        "{}",
        text(&out.stdout)
    );
    Ok(())
}
