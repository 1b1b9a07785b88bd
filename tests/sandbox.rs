//! The sandbox is the oracle of the other tests: each pagination style, filter, quirk and
//! fault is checked here over a real socket against its own `/_truth`.

use std::collections::BTreeSet;

use crate::util::*;

/// Ids in `(updated_at, id)` order, as the sandbox sorts them.
fn sorted_truth(sandbox: &Sandbox, resource: &str) -> Result<Vec<u64>> {
    let (truth, _) = sandbox.truth_of(resource)?;
    let mut keyed: Vec<(String, u64)> = truth
        .values()
        .map(|r| {
            (
                r["updated_at"].as_str().unwrap_or("").to_string(),
                r["id"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    keyed.sort();
    Ok(keyed.into_iter().map(|(_, id)| id).collect())
}

fn ids(page: &serde_json::Value) -> Vec<u64> {
    page["data"]
        .as_array()
        .map(|a| a.iter().filter_map(|r| r["id"].as_u64()).collect())
        .unwrap_or_default()
}

/// Follows a style from `first` to the end; `next` gives the following path (or `None`).
fn walk(
    sandbox: &Sandbox,
    first: &str,
    mut next: impl FnMut(&Reply, &serde_json::Value) -> Option<String>,
    mut between_pages: impl FnMut() -> Result,
) -> Result<Vec<u64>> {
    let mut path = Some(first.to_string());
    let mut seen = Vec::new();
    let mut pages = 0;
    while let Some(p) = path {
        let reply = request("GET", &sandbox.url, &p, None)?;
        assert_eq!(reply.status, 200, "{p}: {}", text(&reply.body));
        let page = reply.json()?;
        seen.extend(ids(&page));
        path = next(&reply, &page);
        pages += 1;
        assert!(pages < 10_000, "pagination does not end");
        between_pages()?;
    }
    Ok(seen)
}

fn strip_host(url: &str) -> String {
    let rest = url.trim_start_matches("http://");
    rest.find('/')
        .map_or(String::from("/"), |i| rest[i..].to_string())
}

fn none() -> Result {
    Ok(())
}

#[test]
fn every_pagination_style_returns_each_record_once_in_order() -> Result {
    // Tie groups of 120 are larger than the 50-record pages.
    let sandbox = Sandbox::start(&["--records", "1000", "--tie", "120"])?;
    let truth = sorted_truth(&sandbox, "orders")?;
    assert_eq!(truth.len(), 1000);

    let cursor = walk(
        &sandbox,
        "/orders?limit=50",
        |_, page| {
            page["next_cursor"]
                .as_str()
                .map(|c| format!("/orders?limit=50&cursor={c}"))
        },
        none,
    )?;
    let next_url = walk(
        &sandbox,
        "/orders?limit=50",
        |_, page| page["next_url"].as_str().map(strip_host),
        none,
    )?;
    let link = walk(
        &sandbox,
        "/orders?per_page=50",
        |reply, _| {
            let link = reply.header("link")?;
            assert!(link.ends_with("; rel=\"next\""), "{link}");
            Some(strip_host(link.trim_start_matches('<').split('>').next()?))
        },
        none,
    )?;
    let mut number = 0;
    let pages = walk(
        &sandbox,
        "/orders?limit=50&page=1",
        |reply, page| {
            assert_eq!(reply.header("x-total-count").as_deref(), Some("1000"));
            number += 1;
            (page["has_more"] == true).then(|| format!("/orders?limit=50&page={}", number + 1))
        },
        none,
    )?;
    let mut offset = 0;
    let offsets = walk(
        &sandbox,
        "/orders?limit=50&offset=0",
        |_, page| {
            offset += 50;
            (page["has_more"] == true).then(|| format!("/orders?limit=50&offset={offset}"))
        },
        none,
    )?;
    let keyset = walk(
        &sandbox,
        "/orders?limit=50",
        |_, page| {
            let last = page["data"].as_array()?.last()?;
            (page["has_more"] == true).then(|| {
                format!(
                    "/orders?limit=50&updated_since={}&since_id={}",
                    last["updated_at"].as_str().unwrap_or(""),
                    last["id"]
                )
            })
        },
        none,
    )?;
    for (style, got) in [
        ("cursor", cursor),
        ("next_url", next_url),
        ("link", link),
        ("page", pages),
        ("offset", offsets),
        ("keyset", keyset),
    ] {
        assert_eq!(got, truth, "{style}");
    }
    Ok(())
}

#[test]
fn time_filters_tile_windows_and_quirks_change_them() -> Result {
    let sandbox = Sandbox::start(&["--records", "100", "--tie", "10"])?;
    // Record updated_at: 2026-01-01T00:00:00Z + (id-1)/10 seconds.
    let get_ids = |s: &Sandbox, q: &str| -> Result<Vec<u64>> {
        let reply = request("GET", &s.url, &format!("/orders?limit=1000&{q}"), None)?;
        assert_eq!(reply.status, 200, "{q}: {}", text(&reply.body));
        Ok(ids(&reply.json()?))
    };
    // [since, before): adjacent windows share no record and miss none.
    let a = get_ids(&sandbox, "updated_before=2026-01-01T00:00:03Z")?;
    let b = get_ids(
        &sandbox,
        "updated_since=2026-01-01T00:00:03Z&updated_before=1767225605",
    )?;
    assert_eq!(a, (1..=30).collect::<Vec<_>>());
    assert_eq!(b, (31..=50).collect::<Vec<_>>());
    let after = get_ids(&sandbox, "updated_after=1767225608000")?;
    assert_eq!(after, (91..=100).collect::<Vec<_>>());
    let bad = request("GET", &sandbox.url, "/orders?updated_since=yesterday", None)?;
    assert_eq!(bad.status, 400);
    assert!(
        text(&bad.body).contains("updated_since"),
        "{}",
        text(&bad.body)
    );

    let quirky = Sandbox::start(&[
        "--records",
        "100",
        "--tie",
        "10",
        "--quirk",
        "inclusive-filters",
        "--quirk",
        "string-compare",
    ])?;
    // `<=`: the boundary second is in both windows.
    let inclusive = get_ids(&quirky, "updated_before=2026-01-01T00:00:03.000Z")?;
    assert_eq!(inclusive, (1..=40).collect::<Vec<_>>());
    // Compared as text, "…00:03Z" sorts after "…00:03.000Z": that second is skipped.
    let text_cmp = get_ids(&quirky, "updated_since=2026-01-01T00:00:03Z")?;
    assert_eq!(text_cmp, (41..=100).collect::<Vec<_>>());
    let refused = request("GET", &quirky.url, "/orders?updated_after=1767225600", None)?;
    assert_eq!(refused.status, 400);
    Ok(())
}

#[test]
fn mutations_keep_truth_and_deletions_feed_consistent() -> Result {
    let sandbox = Sandbox::start(&["--records", "500", "--seed", "11", "--quirk", "reuse-ids"])?;
    let before = sandbox.truth_of("orders")?.0;
    // In four bursts: an id is only reused after the millisecond it was deleted in.
    for _ in 0..4 {
        sandbox.apply_mutations(100)?;
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let stats = sandbox.stats()?;
    let (truth, gone) = sandbox.truth_of("orders")?;
    let deleted_feed: BTreeSet<u64> = walk(
        &sandbox,
        "/orders/deleted?limit=30",
        |_, page| page["next_url"].as_str().map(strip_host),
        none,
    )?
    .into_iter()
    .collect();
    // Every id gone from the source is in the deletions feed; with reused ids some ids of
    // the feed are live again, with a newer `updated_at` than their deletion.
    for id in &gone {
        assert!(deleted_feed.contains(&id.parse()?), "{id} not in the feed");
    }
    let reused: Vec<&u64> = deleted_feed
        .iter()
        .filter(|id| truth.contains_key(&id.to_string()))
        .collect();
    assert!(!reused.is_empty(), "no id was reused: {stats}");
    let updated = truth
        .values()
        .filter(|r| r["rev"].as_u64() > Some(0))
        .count();
    assert!(updated > 0);
    assert_ne!(before, truth);
    // All live records, listed by any style, match the truth.
    let listed: BTreeSet<u64> = walk(
        &sandbox,
        "/orders?limit=100",
        |_, page| page["next_url"].as_str().map(strip_host),
        none,
    )?
    .into_iter()
    .collect();
    let expected: BTreeSet<u64> = truth
        .keys()
        .map(|k| k.parse())
        .collect::<std::result::Result<_, _>>()?;
    assert_eq!(listed, expected);
    Ok(())
}

#[test]
fn offset_pagination_serves_records_twice_while_data_changes() -> Result {
    let sandbox = Sandbox::start(&[
        "--records",
        "2000",
        "--seed",
        "5",
        "--quirk",
        "backdated-inserts",
    ])?;
    let mutate = || sandbox.apply_mutations(20);
    let mut offset = 0;
    let walked = walk(
        &sandbox,
        "/orders?limit=100&offset=0",
        |_, page| {
            offset += 100;
            (page["has_more"] == true).then(|| format!("/orders?limit=100&offset={offset}"))
        },
        mutate,
    )?;
    let unique: BTreeSet<&u64> = walked.iter().collect();
    assert!(
        unique.len() < walked.len(),
        "no record was served twice although inserts shifted the offsets"
    );
    Ok(())
}

#[test]
fn the_last_page_can_keep_returning_a_cursor() -> Result {
    let sandbox = Sandbox::start(&["--records", "30", "--quirk", "cursor-on-last-page"])?;
    let last = request("GET", &sandbox.url, "/orders?limit=50", None)?.json()?;
    assert_eq!(ids(&last).len(), 30);
    assert_eq!(last["has_more"], false);
    let cursor = last["next_cursor"]
        .as_str()
        .ok_or("no cursor on the last page")?;
    let empty = request(
        "GET",
        &sandbox.url,
        &format!("/orders?limit=50&cursor={cursor}"),
        None,
    )?
    .json()?;
    assert_eq!(ids(&empty), Vec::<u64>::new());
    assert_eq!(empty["next_cursor"], cursor, "the same cursor, forever");
    Ok(())
}

#[test]
fn faults_and_auth_answer_as_configured() -> Result {
    let sandbox = Sandbox::start(&["--records", "10", "--token", "s3cret"])?;
    let denied = request("GET", &sandbox.url, "/orders", None)?;
    assert_eq!(denied.status, 401);
    // `request` sends no Authorization header; the truth endpoint needs none.
    assert_eq!(sandbox.truth()?.len(), 10);

    let open = Sandbox::start(&["--records", "10"])?;
    let fault = |faults: &str| -> Result<Reply> {
        open.set_faults(faults)?;
        request("GET", &open.url, "/orders", None)
    };
    let limited = fault(r#"{"rate_429": 1.0, "retry_after_s": 7}"#)?;
    assert_eq!(limited.status, 429);
    assert_eq!(limited.header("retry-after").as_deref(), Some("7"));
    let unavailable = fault(r#"{"rate_503": 1.0, "retry_after_s": 2}"#)?;
    assert_eq!(unavailable.status, 503);
    assert_eq!(unavailable.header("retry-after").as_deref(), Some("2"));
    assert_eq!(fault(r#"{"rate_500": 1.0}"#)?.status, 500);
    let malformed = fault(r#"{"rate_malformed": 1.0}"#)?;
    assert_eq!(malformed.status, 200);
    assert!(malformed.json().is_err(), "the body should not be JSON");
    let reset = fault(r#"{"rate_reset": 1.0}"#);
    assert!(reset.is_err(), "the body should be cut off");
    let started = std::time::Instant::now();
    let hung = fault(r#"{"rate_hang": 1.0, "hang_ms": 700}"#)?;
    assert_eq!(hung.status, 200);
    assert!(started.elapsed() >= std::time::Duration::from_millis(700));
    let stats = open.stats()?;
    for kind in ["429", "503", "500", "malformed", "reset", "hang"] {
        assert_eq!(stats["faults"][kind], 1, "{kind}: {stats}");
    }
    assert_eq!(fault("{}")?.status, 200);
    Ok(())
}

#[test]
fn customers_have_child_invoices() -> Result {
    let sandbox = Sandbox::start(&["--records", "10", "--customers", "8"])?;
    let invoices = |id: u64| -> Result<Reply> {
        request(
            "GET",
            &sandbox.url,
            &format!("/customers/{id}/invoices"),
            None,
        )
    };
    let three = invoices(7)?.json()?;
    assert_eq!(ids(&three), vec![70, 71, 72]);
    assert!(three["data"]
        .as_array()
        .is_some_and(|a| a.iter().all(|i| i["customer_id"] == 7)));
    assert_eq!(ids(&invoices(8)?.json()?), Vec::<u64>::new());
    assert_eq!(invoices(99)?.status, 404);
    let customers = request("GET", &sandbox.url, "/customers", None)?.json()?;
    assert_eq!(customers["data"][6]["invoices"], 3);
    Ok(())
}
