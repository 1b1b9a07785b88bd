//! `[tenants]`: one workflow file run once per account, each tenant with its own API, its
//! own credentials from its own environment variable, its own destination, checkpoints
//! and runs.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::secrets::assert_absent;
use crate::serve::{serve_with, terminate};
use crate::util::{
    request, rows, run, stream_table, text, wait_for, waymark, Result, Sandbox, TempDir, CURSOR,
    ONCE,
};

/// A workflow whose source, token and destination come from the tenant: `{tenant.url}`,
/// `SHOP_TOKEN_{tenant.id}`, `{tenant.id}.db`.
fn tenants_workflow(dir: &Path, list: &str, extra_sync: &str) -> Result<PathBuf> {
    let window =
        r#"window = { lag = "0s", start_param = "updated_since", end_param = "updated_before" }"#;
    let text = format!(
        r#"[sync]
name = "shop"
{extra_sync}

[tenants]
file = "{list}"

[source]
kind = "http"
base_url = "{{tenant.url}}"
timeout = "5s"
auth = {{ kind = "bearer", token = {{ env = "SHOP_TOKEN_{{tenant.id}}" }} }}
{streams}
[destination]
kind = "sqlite"
path = "{{tenant.id}}.db"
"#,
        streams = stream_table("orders", "/orders", "updated_at", 100, CURSOR, window)
    );
    let path = dir.join("shop.toml");
    std::fs::write(&path, text)?;
    Ok(path)
}

fn sandbox(records: &str, seed: &str, token: &str) -> Result<Sandbox> {
    Sandbox::start(&["--records", records, "--seed", seed, "--token", token])
}

#[test]
fn each_tenant_syncs_its_own_api_into_its_own_destination_under_its_own_checkpoint() -> Result {
    let tmp = TempDir::new("tenants-run");
    let state = tmp.path().join("state");
    let (acme, beta) = (
        sandbox("250", "1", "acme-secret-7f3a")?,
        sandbox("130", "2", "beta-secret-91cd")?,
    );
    std::fs::write(
        tmp.path().join("tenants.csv"),
        format!("id,url\nacme,{}\nbeta,{}\n", acme.url, beta.url),
    )?;
    let workflow = tenants_workflow(tmp.path(), "tenants.csv", "")?;
    let tokens = [
        ("SHOP_TOKEN_acme", "acme-secret-7f3a"),
        ("SHOP_TOKEN_beta", "beta-secret-91cd"),
    ];
    let out = run(waymark(&state, "").arg("run").arg(&workflow).envs(tokens))?;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(rows(&tmp.path().join("acme.db"))?, acme.truth()?);
    assert_eq!(rows(&tmp.path().join("beta.db"))?, beta.truth()?);

    // Each tenant's runs and checkpoint are its own: `<sync>:<tenant>`.
    let runs = crate::util::runs(&state)?;
    let syncs: Vec<(&str, &str, u64)> = runs
        .iter()
        .map(|r| {
            (
                r["sync"].as_str().unwrap_or(""),
                r["tenant"].as_str().unwrap_or(""),
                r["records"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    assert_eq!(
        syncs,
        [("shop:acme", "acme", 250), ("shop:beta", "beta", 130)]
    );
    let show = run(waymark(&state, "")
        .args(["checkpoint", "show"])
        .arg(&workflow)
        .args(["--tenant", "beta"]))?;
    let shown = text(&show.stdout);
    assert!(show.status.success(), "{}", text(&show.stderr));
    assert!(shown.starts_with("shop:beta/orders: watermark"), "{shown}");
    assert!(!shown.contains("acme"), "{shown}");

    // Only the tenant asked for runs; the other's checkpoint does not move.
    acme.edit(&[], &[3, 4], &[])?;
    let again = run(waymark(&state, "")
        .arg("run")
        .arg(&workflow)
        .args(["--tenant", "acme", "--json"])
        .envs(tokens))?;
    assert!(again.status.success(), "{}", text(&again.stderr));
    let summaries: Vec<serde_json::Value> = text(&again.stdout)
        .lines()
        .map(serde_json::from_str)
        .collect::<std::result::Result<_, _>>()?;
    assert_eq!(summaries.len(), 1, "{summaries:?}");
    assert_eq!(summaries[0]["sync"], "shop:acme");
    assert_eq!(rows(&tmp.path().join("acme.db"))?, acme.truth()?);
    assert_eq!(crate::util::runs(&state)?.len(), 3);

    // One tenant without its token: the other still syncs; the exit says a tenant
    // failed, and names the variable, never a value.
    beta.edit(&[], &[5], &[])?;
    acme.edit(&[], &[6], &[])?;
    let partial = run(waymark(&state, "")
        .arg("run")
        .arg(&workflow)
        .env("SHOP_TOKEN_acme", "acme-secret-7f3a"))?;
    let stderr = text(&partial.stderr);
    assert_eq!(partial.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("SHOP_TOKEN_beta"), "{stderr}");
    assert_eq!(rows(&tmp.path().join("acme.db"))?, acme.truth()?);
    assert_ne!(rows(&tmp.path().join("beta.db"))?, beta.truth()?);

    // `status` rolls each tenant up; the tokens are nowhere.
    let status = run(waymark(&state, "").args(["status", "--by-tenant", "--json"]))?;
    let lines: Vec<serde_json::Value> = text(&status.stdout)
        .lines()
        .map(serde_json::from_str)
        .collect::<std::result::Result<_, _>>()?;
    let tenants: Vec<(&str, &str, u64)> = lines
        .iter()
        .map(|l| {
            (
                l["sync"].as_str().unwrap_or(""),
                l["tenant"].as_str().unwrap_or(""),
                l["streams"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    assert_eq!(tenants, [("shop", "acme", 1), ("shop", "beta", 1)]);
    let outputs = [
        &out.stderr[..],
        &again.stderr,
        &partial.stderr,
        &status.stdout,
    ];
    assert_absent(&state, &outputs, &["acme-secret-7f3a", "beta-secret-91cd"])?;
    Ok(())
}

#[test]
fn tenant_lists_in_toml_json_and_csv_say_the_same_and_bad_ones_are_named() -> Result {
    let tmp = TempDir::new("tenants-lists");
    let dir = tmp.path();
    let lists = [
        ("t.csv", "id,url\nacme,http://127.0.0.1:1\n\"beta\",\"http://127.0.0.1:2\"\n"),
        (
            "t.json",
            r#"[{"id": "acme", "url": "http://127.0.0.1:1"}, {"id": "beta", "url": "http://127.0.0.1:2", "seats": 4}]"#,
        ),
        (
            "t.toml",
            "[[tenant]]\nid = \"acme\"\nurl = \"http://127.0.0.1:1\"\n\n[[tenant]]\nid = \"beta\"\nurl = \"http://127.0.0.1:2\"\n",
        ),
    ];
    for (name, content) in lists {
        std::fs::write(dir.join(name), content)?;
        let workflow = tenants_workflow(dir, name, "")?;
        let out = run(waymark(dir, "").arg("validate").arg(&workflow))?;
        assert!(out.status.success(), "{name}: {}", text(&out.stderr));
        assert!(
            text(&out.stdout)
                .contains("valid — sync shop, 2 tenants (acme, beta), streams: orders"),
            "{name}: {}",
            text(&out.stdout)
        );
    }

    // Each problem, named where it is.
    let cases = [
        (
            "id,url\nacme,http://127.0.0.1:1\nacme,http://127.0.0.1:2\n",
            "t.csv: line 3: the tenant `acme` is listed twice",
        ),
        (
            "url\nhttp://127.0.0.1:1\n",
            "t.csv: line 2 has no `id` field",
        ),
        (
            "id,url\n../etc,http://127.0.0.1:1\n",
            "t.csv: line 2: the tenant id `../etc` may only hold letters, digits",
        ),
        ("id,url\nacme\n", "t.csv: line 2: "),
    ];
    for (list, expected) in cases {
        std::fs::write(dir.join("t.csv"), list)?;
        let workflow = tenants_workflow(dir, "t.csv", "")?;
        let out = run(waymark(dir, "").arg("validate").arg(&workflow))?;
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{list}: {stderr}");
        assert!(stderr.contains(expected), "{list}: {stderr}");
    }

    // A placeholder a tenant has no field for: the file's line and column, the tenant.
    std::fs::write(dir.join("t.csv"), "id,address\nacme,http://127.0.0.1:1\n")?;
    let workflow = tenants_workflow(dir, "t.csv", "")?;
    let out = run(waymark(dir, "").arg("validate").arg(&workflow))?;
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains(
            "shop.toml:10:1: source.base_url: tenant `acme`: `{tenant.url}`: the tenant has no \
             field `url` (its fields: address, id)"
        ),
        "{stderr}"
    );
    // A value that makes the file invalid is named with the tenant too.
    std::fs::write(dir.join("t.csv"), "id,url\nacme,ftp://127.0.0.1\n")?;
    let out = run(waymark(dir, "").arg("validate").arg(&workflow))?;
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("shop.toml:10:1: source.base_url: tenant `acme`: "),
        "{stderr}"
    );

    // Tenants sharing one destination table would overwrite each other: refused.
    let shared = std::fs::read_to_string(&workflow)?.replace("{tenant.id}.db", "all.db");
    std::fs::write(&workflow, shared)?;
    let out = run(waymark(dir, "").arg("validate").arg(&workflow))?;
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("destination.path: with [tenants], each tenant's records need a place"),
        "{stderr}"
    );
    Ok(())
}

/// The `tenant="<id>"` label of a scraped series of `shop`'s orders, if any.
fn scraped_tenants(api: &str, metric: &str) -> Result<Vec<String>> {
    let scrape = text(&request("GET", api, "/metrics", None)?.body);
    let mut found: Vec<String> = scrape
        .lines()
        .filter(|l| l.starts_with(metric) && l.contains("sync=\"shop\""))
        .filter_map(|l| {
            let at = l.find("tenant=\"")? + "tenant=\"".len();
            Some(l[at..].split('"').next()?.to_string())
        })
        .collect();
    found.sort();
    found.dedup();
    Ok(found)
}

#[test]
fn serve_starts_a_tenant_added_to_the_list_and_stops_scheduling_one_removed() -> Result {
    let tmp = TempDir::new("tenants-serve");
    let state = tmp.path().join("state");
    // beta's API answers slowly: its run still goes when it is removed.
    let acme = sandbox("120", "1", "ta")?;
    let beta = Sandbox::start(&[
        "--records",
        "80",
        "--seed",
        "2",
        "--token",
        "tb",
        "--latency",
        "1500ms",
    ])?;
    let list = tmp.path().join("tenants.csv");
    std::fs::write(&list, format!("id,url\nacme,{}\n", acme.url))?;
    let workflow = tenants_workflow(
        tmp.path(),
        "tenants.csv",
        &format!("schedule = {{ every = \"{ONCE}\" }}"),
    )?;
    let env = [("SHOP_TOKEN_acme", "ta"), ("SHOP_TOKEN_beta", "tb")];
    let workflow_arg = workflow.display().to_string();
    let (child, api) = serve_with(&state, "", tmp.path(), &[&workflow_arg], &env)?;
    let synced = |db: &str, sandbox: &Sandbox| {
        let truth = sandbox.truth().unwrap_or_default();
        let db = tmp.path().join(db);
        move || rows(&db).is_ok_and(|r| !truth.is_empty() && r == truth)
    };
    assert!(wait_for(synced("acme.db", &acme), Duration::from_secs(30)));
    assert_eq!(scraped_tenants(&api, "waymark_runs_total")?, ["acme"]);

    // Added to the list: its first run starts, from its initial window.
    std::fs::write(
        &list,
        format!("id,url\nacme,{}\nbeta,{}\n", acme.url, beta.url),
    )?;
    assert!(wait_for(synced("beta.db", &beta), Duration::from_secs(30)));
    // Serve runs what it knows of when asked (202, or 409 while its run goes); 404: unknown.
    let known = |tenant: &str| {
        let path = format!("/api/streams/shop:{tenant}/orders/run");
        request("POST", &api, &path, None).is_ok_and(|r| r.status != 404)
    };
    assert!(known("acme") && known("beta"));
    assert_eq!(
        scraped_tenants(&api, "waymark_runs_total")?,
        ["acme", "beta"]
    );

    // Removed (while the run just asked for goes): no longer scheduled once that run
    // ended, nor run when asked; its data and checkpoint stay.
    std::fs::write(&list, format!("id,url\nacme,{}\n", acme.url))?;
    assert!(wait_for(|| !known("beta"), Duration::from_secs(30)));
    assert!(known("acme"));
    let (code, _, log) = terminate(child, tmp.path())?;
    assert_eq!(code, Some(0), "{log}");
    assert_eq!(rows(&tmp.path().join("beta.db"))?, beta.truth()?);
    let show = run(waymark(&state, "")
        .args(["checkpoint", "show"])
        .arg(&workflow)
        .args(["--tenant", "acme"]))?;
    assert!(show.status.success(), "{}", text(&show.stderr));
    let status = run(waymark(&state, "").args(["status", "--tenant", "beta", "--json"]))?;
    let line: serde_json::Value = serde_json::from_str(text(&status.stdout).trim())?;
    assert_eq!(line["sync"], "shop:beta");
    assert_eq!(line["last_status"], "completed");
    let first = crate::util::runs(&state)?
        .into_iter()
        .find(|r| r["sync"] == "shop:beta")
        .ok_or("no run of beta")?;
    assert_eq!(first["records"], 80);
    Ok(())
}

#[test]
fn tenants_listed_by_a_query_on_the_postgres_destination_each_get_a_schema() -> Result {
    let Some(pg) = crate::pg::shared() else {
        return Ok(());
    };
    let url = pg.database()?;
    let tmp = TempDir::new("tenants-pg");
    let state = tmp.path().join("state");
    let (acme, beta) = (sandbox("90", "1", "qa")?, sandbox("60", "2", "qb")?);
    crate::pg::execute(
        &url,
        &format!(
            "CREATE TABLE accounts (slug text, api text, active boolean);
             INSERT INTO accounts VALUES ('acme', '{}', true), ('beta', '{}', true),
                                         ('gone', 'http://127.0.0.1:1', false);",
            acme.url, beta.url
        ),
    )?;
    let window =
        r#"window = { lag = "0s", start_param = "updated_since", end_param = "updated_before" }"#;
    let workflow = tmp.path().join("shop.toml");
    std::fs::write(
        &workflow,
        format!(
            r#"[sync]
name = "shop"

[tenants]
query = "SELECT slug, api AS url FROM accounts WHERE active ORDER BY slug"
id = "slug"

[source]
kind = "http"
base_url = "{{tenant.url}}"
auth = {{ kind = "bearer", token = {{ env = "TOKEN_{{tenant.slug}}" }} }}
{streams}
[destination]
kind = "postgres"
url = {{ env = "PG_URL" }}
schema = "t_{{tenant.slug}}"
"#,
            streams = stream_table("orders", "/orders", "updated_at", 50, CURSOR, window)
        ),
    )?;
    let out = run(waymark(&state, "").arg("run").arg(&workflow).envs([
        ("PG_URL", url.as_str()),
        ("TOKEN_acme", "qa"),
        ("TOKEN_beta", "qb"),
    ]))?;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(crate::pg::table(&url, "t_acme.orders")?.0.len(), 90);
    assert_eq!(crate::pg::table(&url, "t_beta.orders")?.0, beta.truth()?);
    let syncs: Vec<String> = crate::util::runs(&state)?
        .iter()
        .map(|r| r["sync"].as_str().unwrap_or("").to_string())
        .collect();
    assert_eq!(syncs, ["shop:acme", "shop:beta"]);

    // A tenant that is not listed is refused by name.
    let out = run(waymark(&state, "")
        .arg("run")
        .arg(&workflow)
        .args(["--tenant", "gone"])
        .env("PG_URL", &url))?;
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("no tenant `gone`"), "{stderr}");
    assert!(stderr.contains("(acme, beta)"), "{stderr}");
    Ok(())
}
