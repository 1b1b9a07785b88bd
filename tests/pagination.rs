//! Every pagination style of the HTTP source over a real socket against the sandbox: exact
//! on a static dataset, exact on a changing one (the styles that can be), loop checks.

use std::path::{Path, PathBuf};

use crate::util::*;

const WINDOW: &str =
    r#"window = { lag = "0s", start_param = "updated_since", end_param = "updated_before" }"#;

/// `(name, pagination table)` of each style, as the sandbox speaks them.
const STYLES: [(&str, &str); 9] = [
    (
        "cursor",
        r#"{ kind = "cursor", cursor_path = "next_cursor", cursor_param = "cursor", limit_param = "limit" }"#,
    ),
    (
        "cursor_header",
        r#"{ kind = "cursor", cursor_path = "next_cursor", cursor_param = "X-Cursor", cursor_in = "header", limit_param = "limit" }"#,
    ),
    (
        "cursor_body",
        r#"{ kind = "cursor", cursor_path = "next_cursor", cursor_param = "cursor", cursor_in = "body", limit_param = "limit" }"#,
    ),
    (
        "next_url",
        r#"{ kind = "next_url", next_url_path = "next_url", limit_param = "limit" }"#,
    ),
    (
        "link_header",
        r#"{ kind = "link_header", limit_param = "per_page" }"#,
    ),
    (
        "page_number_total",
        r#"{ kind = "page_number", page_param = "page", limit_param = "per_page", total_header = "X-Total-Count" }"#,
    ),
    (
        "page_number_until_empty",
        r#"{ kind = "page_number", page_param = "page", limit_param = "per_page" }"#,
    ),
    (
        "offset_has_more",
        r#"{ kind = "offset", offset_param = "offset", limit_param = "limit", has_more_path = "has_more" }"#,
    ),
    (
        "keyset",
        r#"{ kind = "keyset", since_param = "updated_since", id_param = "since_id", limit_param = "limit" }"#,
    ),
];

fn style_workflow(dir: &Path, pagination: &str, page_size: u32) -> Result<PathBuf> {
    let mut stream = stream_table(
        "orders",
        "/orders",
        "updated_at",
        page_size,
        pagination,
        WINDOW,
    );
    if pagination.contains("cursor_in = \"body\"") {
        // A search endpoint taking its parameters as a JSON body.
        stream = stream.replace(
            "path = \"/orders\"",
            "path = \"/orders/search\"\nmethod = \"post\"",
        ) + "body = { updated_before = \"{window.end}\" }\n";
    }
    write_workflow(dir, "timeout = \"5s\"\nmax_attempts = 3", &stream, "")
}

fn sync(dir: &Path, sandbox: &Sandbox, workflow: &Path) -> Result<std::process::Output> {
    let out = run(waymark(&dir.join("state"), &sandbox.url)
        .arg("run")
        .arg(workflow))?;
    assert_no_panic(&out);
    Ok(out)
}

/// Pages fetched by the stream's runs, in total.
fn pages_fetched(state: &Path) -> Result<u64> {
    Ok(runs(state)?
        .iter()
        .map(|r| r["pages"].as_u64().unwrap_or(0))
        .sum())
}

#[test]
fn every_style_syncs_a_static_api_exactly() -> Result {
    // Tie groups of 120 records are larger than the 50-record pages.
    let sandbox = Sandbox::start(&["--records", "1000", "--tie", "120"])?;
    let truth = sandbox.truth()?;
    for (name, pagination) in STYLES {
        let dir = TempDir::new(&format!("style-{name}"));
        let workflow = style_workflow(dir.path(), pagination, 50)?;
        let out = sync(dir.path(), &sandbox, &workflow)?;
        assert_eq!(out.status.code(), Some(0), "{name}: {}", text(&out.stderr));
        assert_eq!(rows(&dir.path().join("shop.db"))?, truth, "{name}");
        // 20 full pages; styles that only learn the end from an empty page fetch one more.
        let pages = pages_fetched(&dir.path().join("state"))?;
        let expected = match name {
            "page_number_until_empty" | "keyset" => 21,
            _ => 20,
        };
        assert_eq!(pages, expected, "{name}");
    }
    Ok(())
}

#[test]
fn cursor_link_and_keyset_styles_stay_exact_while_the_api_changes() -> Result {
    let sandbox = Sandbox::start(&[
        "--records",
        "4000",
        "--tie",
        "60",
        "--latency",
        "5ms",
        "--mutate",
        "300",
        "--seed",
        "3",
    ])?;
    let chosen = ["cursor", "next_url", "link_header", "keyset"];
    let mut dirs = Vec::new();
    for (name, pagination) in STYLES.iter().filter(|(n, _)| chosen.contains(n)) {
        let dir = TempDir::new(&format!("changing-{name}"));
        let workflow = style_workflow(dir.path(), pagination, 100)?;
        let out = sync(dir.path(), &sandbox, &workflow)?;
        assert_eq!(out.status.code(), Some(0), "{name}: {}", text(&out.stderr));
        dirs.push((name, dir, workflow));
    }
    sandbox.set_mutation_rate(0.0)?;
    std::thread::sleep(std::time::Duration::from_millis(50));
    let stats = sandbox.stats()?;
    assert!(stats["mutations"]["updated"].as_u64() > Some(50), "{stats}");
    let truth = sandbox.truth()?;
    for (name, dir, workflow) in &dirs {
        // The incremental catch-up reads what changed behind the first run's watermark.
        let out = sync(dir.path(), &sandbox, workflow)?;
        assert_eq!(out.status.code(), Some(0), "{name}: {}", text(&out.stderr));
        let live = rows(&dir.path().join("shop.db"))?;
        let missing = truth.keys().filter(|k| !live.contains_key(*k)).count();
        let stale = truth
            .iter()
            .filter(|(k, v)| live.get(*k).is_some_and(|got| got != *v))
            .count();
        assert_eq!((missing, stale), (0, 0), "{name}");
        // Deleted orders stay until a deletions feed removes them (not in this workflow).
        let deleted: std::collections::BTreeSet<String> =
            sandbox.truth_of("orders")?.1.into_iter().collect();
        assert!(
            live.keys()
                .all(|k| truth.contains_key(k) || deleted.contains(k)),
            "{name}: a row the source never had"
        );
    }
    Ok(())
}

#[test]
fn keyset_works_with_inclusive_text_filters_and_tie_groups() -> Result {
    let quirks = ["--quirk", "inclusive-filters", "--quirk", "string-compare"];
    let keyset_without_id =
        r#"{ kind = "keyset", since_param = "updated_since", limit_param = "limit" }"#;
    let keyset = STYLES[8].1;

    // Ties smaller than a page: the records of the boundary value that come back through
    // the inclusive filter are dropped, none is skipped.
    let small_ties = Sandbox::start(&[&["--records", "700", "--tie", "7"][..], &quirks].concat())?;
    let dir = TempDir::new("keyset-inclusive");
    let workflow = style_workflow(dir.path(), keyset_without_id, 50)?;
    let out = sync(dir.path(), &small_ties, &workflow)?;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(rows(&dir.path().join("shop.db"))?, small_ties.truth()?);
    let written: u64 = runs(&dir.path().join("state"))?[0]["records"]
        .as_u64()
        .unwrap_or(0);
    assert_eq!(written, 700, "boundary records were written twice");

    // Ties larger than a page: without the API's tie-breaker the run stops, naming the
    // page and the fix, instead of looping...
    let big_ties = Sandbox::start(&[&["--records", "700", "--tie", "120"][..], &quirks].concat())?;
    let dir = TempDir::new("keyset-loop");
    let workflow = style_workflow(dir.path(), keyset_without_id, 50)?;
    let out = sync(dir.path(), &big_ties, &workflow)?;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let said = text(&out.stdout);
    assert!(
        said.contains("page 2: GET /orders: ")
            && said.contains("returned the cursor it was sent")
            && said.contains("id_param"),
        "{said}"
    );
    // ...and with it, pages through each tie group by key.
    let dir = TempDir::new("keyset-ties");
    let workflow = style_workflow(dir.path(), keyset, 50)?;
    let out = sync(dir.path(), &big_ties, &workflow)?;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(rows(&dir.path().join("shop.db"))?, big_ties.truth()?);
    Ok(())
}

#[test]
fn loops_stop_with_an_error_naming_the_page() -> Result {
    // A cursor still returned on the last page leads to an empty page: the end.
    let sandbox = Sandbox::start(&["--records", "120", "--quirk", "cursor-on-last-page"])?;
    let dir = TempDir::new("last-cursor");
    let workflow = style_workflow(dir.path(), STYLES[0].1, 50)?;
    let out = sync(dir.path(), &sandbox, &workflow)?;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(rows(&dir.path().join("shop.db"))?, sandbox.truth()?);

    // A page parameter the API ignores serves page 1 again and again.
    let dir = TempDir::new("same-page");
    let wrong = r#"{ kind = "page_number", page_param = "pg", limit_param = "per_page" }"#;
    let workflow = style_workflow(dir.path(), wrong, 50)?;
    let out = sync(dir.path(), &sandbox, &workflow)?;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let said = text(&out.stdout);
    assert!(
        said.contains("page 2: GET /orders: ")
            && said.contains("same records as the previous page"),
        "{said}"
    );
    Ok(())
}

#[test]
fn jsonpath_records_composite_keys_filters_and_projection() -> Result {
    let sandbox = Sandbox::start(&["--records", "600"])?;
    let dir = TempDir::new("shape");
    let stream = stream_table("orders", "/orders", "updated_at", 100, STYLES[0].1, WINDOW)
        .replace("records = \"data\"", "records = \"$.data[*]\"")
        .replace(
            "primary_key = \"id\"",
            "primary_key = [\"customer_id\", \"id\"]",
        )
        + "filter = { path = \"status\", one_of = [\"paid\", \"shipped\"] }\n\
           fields = [\"id\", \"customer_id\", \"updated_at\", \"status\"]\n";
    let workflow = write_workflow(dir.path(), "timeout = \"5s\"", &stream, "")?;
    let out = sync(dir.path(), &sandbox, &workflow)?;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));

    let expected: std::collections::BTreeMap<String, serde_json::Value> = sandbox
        .truth()?
        .values()
        .filter(|r| r["status"] == "paid" || r["status"] == "shipped")
        .map(|r| {
            let key = format!("[\"{}\",\"{}\"]", r["customer_id"], r["id"]);
            let kept = serde_json::json!({
                "id": r["id"], "customer_id": r["customer_id"],
                "updated_at": r["updated_at"], "status": r["status"],
            });
            (key, kept)
        })
        .collect();
    assert!(
        expected.len() > 150 && expected.len() < 450,
        "{}",
        expected.len()
    );
    assert_eq!(rows(&dir.path().join("shop.db"))?, expected);
    // All 6 pages were read although most records were filtered out.
    assert_eq!(pages_fetched(&dir.path().join("state"))?, 6);
    Ok(())
}

/// Offset pages of the sandbox's orders, read by windows of `updated_since` (inclusive),
/// capped at `max_records` when given.
fn capped_workflow(dir: &Path, max_records: Option<u64>) -> Result<PathBuf> {
    let cap = max_records.map_or(String::new(), |n| format!(", max_records = {n}"));
    write_workflow(
        dir,
        "timeout = \"5s\"\nmax_attempts = 2",
        &stream_table(
            "orders",
            "/orders",
            "updated_at",
            100,
            &format!(
                r#"{{ kind = "offset", offset_param = "offset", limit_param = "limit"{cap} }}"#
            ),
            r#"window = { lag = "0s", start_param = "updated_since", end_param = "updated_before" }"#,
        ),
        "",
    )
}

#[test]
fn a_query_capped_at_max_records_starts_again_from_the_greatest_value_read() -> Result {
    // Like HubSpot's search: one query serves 250 results at most, then ends silently.
    let sandbox = Sandbox::start(&["--records", "1000", "--tie", "1", "--max-results", "250"])?;
    let truth = sandbox.truth()?;

    // Unaware of the cap, a run ends at it and calls itself complete.
    let dir = TempDir::new("capped-unaware");
    let wf = capped_workflow(dir.path(), None)?;
    let out = sync(dir.path(), &sandbox, &wf)?;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(rows(&dir.path().join("shop.db"))?.len(), 250);

    // With max_records: two pages a query (a third would pass 250), then the query starts
    // again from the greatest `updated_at` read (that record is read twice, written once):
    // queries start at records 1, 200, 399, 598, 797 and 996 — 11 pages, every record.
    let dir = TempDir::new("capped");
    let wf = capped_workflow(dir.path(), Some(250))?;
    let out = sync(dir.path(), &sandbox, &wf)?;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(rows(&dir.path().join("shop.db"))?, truth);
    assert_eq!(pages_fetched(&dir.path().join("state"))?, 11);

    // Paused after 3 pages (mid-query, past a restart) and resumed: the same 11 pages.
    let dir = TempDir::new("capped-resumed");
    let wf = capped_workflow(dir.path(), Some(250))?;
    let state = dir.path().join("state");
    let out = run(waymark(&state, &sandbox.url)
        .args(["run", "--max-pages", "3"])
        .arg(&wf))?;
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    let out = sync(dir.path(), &sandbox, &wf)?;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(rows(&dir.path().join("shop.db"))?, truth);
    assert_eq!(pages_fetched(&state)?, 11);

    // More records sharing one value than a query serves: no way past them, said so.
    let ties = Sandbox::start(&["--records", "1000", "--tie", "300", "--max-results", "250"])?;
    let dir = TempDir::new("capped-ties");
    let wf = capped_workflow(dir.path(), Some(250))?;
    let out = sync(dir.path(), &ties, &wf)?;
    let said = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(
        said.contains("more than max_records (250) records share the `updated_at` value"),
        "{said}"
    );
    Ok(())
}
