//! Child streams (one request sequence per parent record) and request templates.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use crate::util::*;

/// Customers, then their invoices (a child stream, `invoice_page` invoices a page), into
/// `dir/shop.db`.
pub(crate) fn customers_and_invoices(dir: &Path, invoice_page: u32) -> Result<PathBuf> {
    let mut streams = stream_table("customers", "/customers", "updated_at", 100, CURSOR, "");
    streams += &stream_table(
        "invoices",
        "/customers/{parent.id}/invoices",
        "updated_at",
        invoice_page,
        CURSOR,
        "parent = \"customers\"",
    );
    write_workflow(dir, "timeout = \"5s\"\nmax_attempts = 3", &streams, "")
}

/// Every invoice the sandbox serves, by id, asked customer by customer.
pub(crate) fn invoices(sandbox: &Sandbox) -> Result<BTreeMap<String, serde_json::Value>> {
    let mut all = BTreeMap::new();
    for id in sandbox.truth_of("customers")?.0.keys() {
        let page: serde_json::Value = serde_json::from_slice(&get(
            &sandbox.url,
            &format!("/customers/{id}/invoices?limit=100"),
        )?)?;
        for invoice in page["data"].as_array().ok_or("no data")? {
            all.insert(invoice["id"].to_string(), invoice.clone());
        }
    }
    Ok(all)
}

/// The ids of [`invoices`].
fn invoice_truth(sandbox: &Sandbox) -> Result<BTreeSet<String>> {
    Ok(invoices(sandbox)?.into_keys().collect())
}

#[test]
fn a_child_stream_reads_each_parents_children_once_and_resumes_mid_parent() -> Result {
    let sandbox = Sandbox::start(&["--records", "10", "--customers", "300"])?;
    let expected = invoice_truth(&sandbox)?;
    assert_eq!(expected.len(), 450, "0–3 invoices per customer");
    let dir = TempDir::new("children");
    // Pages of 2 invoices: customers with 3 have two pages.
    let workflow = customers_and_invoices(dir.path(), 2)?;
    let state = dir.path().join("state");

    let out = run(waymark(&state, &sandbox.url)
        .args(["run", "--max-pages", "120"])
        .arg(&workflow))?;
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    let out = run(waymark(&state, &sandbox.url).arg("run").arg(&workflow))?;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));

    let (invoices, _) = table(&dir.path().join("shop.db"), "invoices")?;
    let got: BTreeSet<String> = invoices.keys().cloned().collect();
    assert_eq!(got, expected);
    assert!(invoices.values().all(|i| i["customer_id"]
        .as_u64()
        .is_some_and(|c| i["id"].as_u64() == Some(c * 10 + i["id"].as_u64().unwrap_or(0) % 10))));

    let all = runs(&state)?;
    let child = all
        .iter()
        .find(|r| r["stream"] == "invoices")
        .ok_or("no invoices run")?;
    assert_eq!(child["records"], 450, "each invoice written once: {child}");
    assert_eq!(child["resumes"], 1);
    // The journaled cursor holds one parent key and one page cursor, however many parents.
    let run_id = child["run"].as_str().ok_or("id")?;
    let longest = journal(&state, run_id)?
        .iter()
        .filter_map(|e| {
            e["event"]["PageFetched"]["next_cursor"]
                .as_str()
                .map(str::len)
        })
        .max()
        .unwrap_or(0);
    assert!(longest < 80, "cursor grows: {longest} bytes");
    Ok(())
}

#[test]
fn responses_ignored_by_a_rule_are_counted_in_the_summary_not_warned_one_by_one() -> Result {
    let sandbox = Sandbox::start(&["--records", "10", "--customers", "300"])?;
    let dir = TempDir::new("children-ignored");
    let mut streams = stream_table("customers", "/customers", "updated_at", 100, CURSOR, "");
    // A customer without invoices answers an empty page: ignored by a rule.
    streams += &stream_table(
        "invoices",
        "/customers/{parent.id}/invoices",
        "updated_at",
        10,
        CURSOR,
        "parent = \"customers\"\non_response = [{ status = 200, body_contains = '\"data\":[]', action = \"ignore\" }]",
    );
    let workflow = write_workflow(dir.path(), "timeout = \"5s\"", &streams, "")?;
    let state = dir.path().join("state");
    let out = run(waymark(&state, &sandbox.url)
        .env("WAYMARK_LOG", "info")
        .arg("run")
        .arg(&workflow))?;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        !text(&out.stderr).contains("ignored by a response rule"),
        "{}",
        text(&out.stderr)
    );
    let child = runs(&state)?
        .into_iter()
        .find(|r| r["stream"] == "invoices")
        .ok_or("no invoices run")?;
    let run_id = child["run"].as_str().ok_or("id")?;
    let ignored = journal(&state, run_id)?
        .iter()
        .filter(|e| e["event"].get("PageIgnored").is_some())
        .count();
    assert!(ignored > 0, "{child}");
    let summary = text(&out.stdout);
    assert!(
        summary.contains(&format!("{ignored} responses ignored by response rules")),
        "{summary}"
    );
    Ok(())
}

#[test]
fn templates_fill_parameters_and_headers_and_secrets_stay_out_of_the_journal() -> Result {
    let sandbox = Sandbox::start(&["--records", "500", "--token", "s3cret-token"])?;
    let dir = TempDir::new("templates");
    let workflow = write_workflow(
        dir.path(),
        "timeout = \"5s\"\nmax_attempts = 2",
        &stream_table(
            "orders",
            "/orders",
            "updated_at",
            100,
            CURSOR,
            r#"window = { lag = "0s" }
params = { updated_before = "{window.end|unix_ms}", updated_since = "{window.start|unix}" }
headers = { Authorization = "Bearer ${SHOP_TOKEN}" }"#,
        ),
        "",
    )?;
    let state = dir.path().join("state");
    let out = run(waymark(&state, &sandbox.url)
        .env("SHOP_TOKEN", "s3cret-token")
        .arg("run")
        .arg(&workflow))?;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(rows(&dir.path().join("shop.db"))?, sandbox.truth()?);

    // Without the variable: a clear error before anything is journaled as fetched.
    let out = run(waymark(&state, &sandbox.url)
        .env_remove("SHOP_TOKEN")
        .args(["run", "--fresh"])
        .arg(&workflow))?;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("environment variable SHOP_TOKEN is not set"),
        "{}",
        text(&out.stdout)
    );

    // A wrong token is refused by the API; the secret appears nowhere.
    let out = run(waymark(&state, &sandbox.url)
        .env("SHOP_TOKEN", "wrong-secret")
        .args(["run", "--fresh"])
        .arg(&workflow))?;
    assert_eq!(out.status.code(), Some(1));
    let mut seen = format!("{}{}", text(&out.stdout), text(&out.stderr));
    for r in runs(&state)? {
        let id = r["run"].as_str().ok_or("id")?;
        seen += &serde_json::to_string(&journal(&state, id)?)?;
    }
    assert!(seen.contains("refused the credentials"), "{seen}");
    assert!(!seen.contains("s3cret") && !seen.contains("wrong-secret"));
    Ok(())
}
