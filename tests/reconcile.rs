//! `waymark reconcile` against the sandbox: changes an incremental sync cannot see (a new
//! revision without a new `updated_at`, deletions without a feed, rows edited in the
//! destination) are found with their keys, reported without changing anything, and
//! repaired through a journaled, resumable run; a clean sync reconciles to zero gaps.

use std::path::Path;

use serde_json::Value;

use crate::resilience::workflow_text;
use crate::scripted::{Background, Reply, Request};
use crate::util::*;

/// The sandbox's orders synced into `dir/shop.db` (pages of `page_size`), with `extra`
/// lines in the stream table and `destination` lines in the destination's.
fn synced(
    sandbox: &Sandbox,
    dir: &TempDir,
    page_size: u32,
    extra: &str,
    destination: &str,
) -> Result<(std::path::PathBuf, std::path::PathBuf)> {
    let path = orders_workflow(
        dir.path(),
        page_size,
        "timeout = \"5s\"",
        extra,
        destination,
    )?;
    let state = dir.path().join("state");
    let out = run(waymark(&state, &sandbox.url).arg("run").arg(&path))?;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    Ok((path, state))
}

/// Runs `waymark reconcile <workflow> --json <args>`: the exit code and the report.
fn reconcile(
    sandbox: &Sandbox,
    state: &Path,
    workflow: &Path,
    args: &[&str],
) -> Result<(Option<i32>, Value)> {
    let out = run(waymark(state, &sandbox.url)
        .arg("reconcile")
        .arg(workflow)
        .arg("--json")
        .args(args))?;
    assert_no_panic(&out);
    let report = serde_json::from_str(text(&out.stdout).trim())
        .map_err(|e| format!("{e}: {} / {}", text(&out.stdout), text(&out.stderr)))?;
    Ok((out.status.code(), report))
}

fn keys(report: &Value, gap: &str) -> Vec<String> {
    report["keys"][gap]
        .as_array()
        .map(|keys| {
            keys.iter()
                .filter_map(|k| k.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

fn figures(report: &Value) -> [u64; 6] {
    [
        "source",
        "missing",
        "deleted",
        "stale",
        "differing",
        "newer",
    ]
    .map(|k| report[k].as_u64().unwrap_or(u64::MAX))
}

fn status(state: &Path) -> Result<(Option<i32>, Vec<Value>)> {
    let out = run(waymark(state, "").args(["status", "--json"]))?;
    let lines = text(&out.stdout)
        .lines()
        .map(serde_json::from_str)
        .collect::<std::result::Result<_, _>>()?;
    Ok((out.status.code(), lines))
}

fn orders_status(lines: &[Value]) -> Result<&Value> {
    lines
        .iter()
        .find(|l| l["stream"] == "orders")
        .ok_or_else(|| "no orders line in status".into())
}

#[test]
fn silent_changes_are_found_reported_and_repaired_and_a_clean_sync_has_no_gaps() -> Result {
    let sandbox = Sandbox::start(&["--records", "300"])?;
    let dir = TempDir::new("reconcile");
    let (workflow, state) = synced(&sandbox, &dir, 50, "", "")?;
    let db = dir.path().join("shop.db");
    // A clean sync: zero gaps, field values of every record compared.
    let (code, clean) = reconcile(&sandbox, &state, &workflow, &["--sample", "1000"])?;
    assert_eq!(code, Some(0), "{clean}");
    assert_eq!(figures(&clean), [300, 0, 0, 0, 0, 0], "{clean}");
    assert_eq!(
        (clean["destination"].as_u64(), clean["compared"].as_u64()),
        (Some(300), Some(300))
    );
    // What an incremental sync misses: new revisions without a new `updated_at`, deletions
    // without a feed; and someone editing the destination.
    sandbox.edit(&[5, 6, 7], &[], &[10, 11])?;
    let conn = rusqlite::Connection::open(&db)?;
    conn.execute_batch(
        "DELETE FROM orders WHERE key = '20';
         UPDATE orders SET version = '2025-06-01T00:00:00.000Z' WHERE key = '30';",
    )?;
    drop(conn);
    let out = run(waymark(&state, &sandbox.url).arg("run").arg(&workflow))?;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let before = table(&db, "orders")?;
    assert_ne!(
        before.0,
        sandbox.truth()?,
        "the incremental sync cannot have seen these"
    );
    // Report: every gap with its key, nothing changed, exit 6.
    let (code, report) = reconcile(&sandbox, &state, &workflow, &["--sample", "1000"])?;
    assert_eq!(code, Some(6), "{report}");
    assert_eq!(keys(&report, "missing"), ["20"]);
    assert_eq!(keys(&report, "deleted"), ["10", "11"]);
    assert_eq!(keys(&report, "stale"), ["30"]);
    assert_eq!(keys(&report, "differing"), ["5", "6", "7"]);
    assert_eq!(figures(&report), [298, 1, 2, 1, 3, 0], "{report}");
    assert_eq!(report["gaps"], 7);
    assert_eq!(table(&db, "orders")?, before, "a report changes nothing");
    // 7 gaps in 300 records is above the default 1%: status flags the stream.
    let (code, lines) = status(&state)?;
    assert_eq!(code, Some(1));
    let line = orders_status(&lines)?;
    assert_eq!(line["health"], "drifting", "{line}");
    assert!(
        line["reason"]
            .as_str()
            .is_some_and(|r| r.contains("7 gaps")),
        "{line}"
    );
    // Repair: a journaled run of its own, after which the table is the source's truth.
    let (code, repaired) = reconcile(
        &sandbox,
        &state,
        &workflow,
        &["--repair", "--sample", "1000"],
    )?;
    assert_eq!(code, Some(0), "{repaired}");
    assert_eq!(repaired["repaired"], 7);
    assert_eq!(repaired["repair_status"], "completed");
    let run_id = repaired["repair_run"].as_str().ok_or("no repair run")?;
    let (live, deleted) = table(&db, "orders")?;
    assert_eq!(live, sandbox.truth()?);
    assert_eq!(deleted, ["10", "11"], "soft deletes keep the rows, marked");
    let listed = runs(&state)?;
    let repair = listed
        .iter()
        .find(|r| r["run"] == run_id)
        .ok_or("the repair run is not in `runs`")?;
    assert_eq!(
        (repair["stream"].as_str(), repair["status"].as_str()),
        (Some("orders@repair"), Some("completed"))
    );
    let written: Vec<String> = journal(&state, run_id)?
        .iter()
        .filter(|e| e["step"] == "batch_written")
        .map(Value::to_string)
        .collect();
    let [ack] = written.as_slice() else {
        return Err(format!("one page of 7 records expected: {written:?}").into());
    };
    for count in [r#""inserted":1"#, r#""updated":4"#, r#""deleted":2"#] {
        assert!(ack.contains(count), "{count} in {ack}");
    }
    // Afterwards: zero gaps, and status is healthy again.
    let (code, after) = reconcile(&sandbox, &state, &workflow, &["--sample", "1000"])?;
    assert_eq!(code, Some(0), "{after}");
    assert_eq!(figures(&after), [298, 0, 0, 0, 0, 0], "{after}");
    let (code, lines) = status(&state)?;
    assert_eq!(code, Some(0), "{lines:?}");
    assert_eq!(orders_status(&lines)?["gap_rate"], 0.0);
    Ok(())
}

#[test]
fn a_windowed_reconciliation_judges_only_the_records_of_its_window() -> Result {
    let sandbox = Sandbox::start(&["--records", "200"])?;
    let dir = TempDir::new("reconcile-window");
    let (workflow, state) = synced(&sandbox, &dir, 100, "", "")?;
    // An old record deleted (outside a one-day window), a record updated now (inside).
    sandbox.edit(&[], &[50], &[3])?;
    let (code, day) = reconcile(&sandbox, &state, &workflow, &["--window", "1d"])?;
    assert_eq!(code, Some(6), "{day}");
    assert_eq!(figures(&day), [1, 0, 0, 1, 0, 0], "{day}");
    assert_eq!(keys(&day, "stale"), ["50"]);
    assert!(day["window_start"].is_string());
    let (code, full) = reconcile(&sandbox, &state, &workflow, &["--full"])?;
    assert_eq!(code, Some(6), "{full}");
    assert_eq!(figures(&full), [199, 0, 1, 1, 0, 0], "{full}");
    assert_eq!(keys(&full, "deleted"), ["3"]);
    // Field-by-field comparison of named fields only.
    sandbox.edit(&[60], &[], &[])?;
    let (_, fields) = reconcile(&sandbox, &state, &workflow, &["--full", "--fields", "note"])?;
    assert_eq!(keys(&fields, "differing"), ["60"], "{fields}");
    let (_, ids) = reconcile(&sandbox, &state, &workflow, &["--full", "--fields", "id"])?;
    assert_eq!(keys(&ids, "differing"), Vec::<String>::new(), "{ids}");
    Ok(())
}

#[test]
fn a_declared_reconciliation_runs_when_due_and_a_repair_resumes_after_a_pause() -> Result {
    let sandbox = Sandbox::start(&["--records", "120"])?;
    let dir = TempDir::new("reconcile-declared");
    let (workflow, state) = synced(
        &sandbox,
        &dir,
        2,
        r#"reconcile = { every = "1h", mode = "repair", sample = 1000 }"#,
        "delete_mode = \"hard\"",
    )?;
    // The first run reconciled (never done before): recorded, zero gaps.
    let (_, lines) = status(&state)?;
    let line = orders_status(&lines)?;
    assert_eq!(
        (line["gaps"].as_u64(), line["health"].as_str()),
        (Some(0), Some("ok")),
        "{line}"
    );
    let first = line["reconciled_at"].clone();
    assert!(first.is_string(), "{line}");
    sandbox.edit(&[7, 8, 9], &[], &[1, 2])?;
    // Not due again within the hour: the next run leaves the gaps alone.
    let out = run(waymark(&state, &sandbox.url).arg("run").arg(&workflow))?;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(orders_status(&status(&state)?.1)?["reconciled_at"], first);
    assert_ne!(rows(&dir.path().join("shop.db"))?, sandbox.truth()?);
    // A repair cut short after one page of two records pauses (exit 3) …
    let out = run(waymark(&state, &sandbox.url)
        .args(["reconcile", "--repair", "--max-pages", "1"])
        .arg(&workflow))?;
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    let paused = runs(&state)?
        .into_iter()
        .find(|r| r["stream"] == "orders@repair")
        .ok_or("no repair run")?;
    assert_eq!(paused["status"], "paused");
    assert_ne!(rows(&dir.path().join("shop.db"))?, sandbox.truth()?);
    // … and `waymark resume` finishes it from its journal and repair set.
    let id = paused["run"].as_str().ok_or("run id")?;
    let out = run(waymark(&state, &sandbox.url).args(["resume", id]))?;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let (live, deleted) = table(&dir.path().join("shop.db"), "orders")?;
    assert_eq!(live, sandbox.truth()?);
    assert!(
        deleted.is_empty(),
        "hard deletes remove the rows: {deleted:?}"
    );
    assert!(
        !state.join("reconcile/shop/orders.repair").exists(),
        "the repair set is gone"
    );
    let (code, after) = reconcile(&sandbox, &state, &workflow, &[])?;
    assert_eq!(
        (code, after["gaps"].as_u64()),
        (Some(0), Some(0)),
        "{after}"
    );
    Ok(())
}

#[test]
fn bad_reconcile_requests_are_refused_clearly() -> Result {
    let sandbox = Sandbox::start(&["--records", "10"])?;
    let dir = TempDir::new("reconcile-bad");
    let path = write_workflow(
        dir.path(),
        "",
        &stream_table("orders", "/orders", "updated_at", 10, CURSOR, ""),
        "",
    )?;
    let state = dir.path().join("state");
    let out = run(waymark(&state, &sandbox.url)
        .args(["reconcile", "--window", "7d"])
        .arg(&path))?;
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("no window parameters"),
        "{}",
        text(&out.stderr)
    );
    let file = dir.path().join("declared.toml");
    std::fs::write(
        &file,
        std::fs::read_to_string(&path)?.replace(
            "pagination =",
            "reconcile = { every = \"0s\" }\npagination =",
        ),
    )?;
    let out = run(waymark(&state, "").arg("validate").arg(&file))?;
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("stream.orders.reconcile.every"), "{stderr}");
    Ok(())
}

/// Records the sync stores although a JSON tree parser cannot read them — nested deeper than
/// 128 levels, a lone surrogate (`"\ud800"`) — are read by a reconciliation the way the sync
/// reads them (one reader): never taken for deletions, so `--repair` leaves them live. When
/// their values are compared and their text differs from the destination's, they are
/// *unreadable*, not differing; so is a record the sync refuses itself (no version).
#[test]
fn records_a_tree_parser_cannot_read_are_never_taken_for_deletions() -> Result {
    let deep = format!(
        r#"{{"id":2,"updated_at":"2026-01-01T00:00:02Z","deep":{}1{}}}"#,
        "[".repeat(200),
        "]".repeat(200)
    );
    let lone = r#"{"id":3,"updated_at":"2026-01-01T00:00:03Z","name":"\ud800"}"#;
    for text in [&deep[..], lone] {
        assert!(serde_json::from_str::<Value>(text).is_err(), "{text:.60}");
    }
    let body = format!(
        r#"{{"data":[{{"id":1,"updated_at":"2026-01-01T00:00:01Z","name":"plain"}},{deep},{lone},{{"id":4,"name":"no version"}}],"next":null}}"#
    );
    let server = Background::start(move |_: &Request| Reply::json(200, body.clone()))?;
    let dir = TempDir::new("reconcile-unparsable");
    let workflow = dir.path().join("workflow.toml");
    std::fs::write(
        &workflow,
        workflow_text(
            server.url(),
            "max_attempts = 2",
            "cursor_field = \"updated_at\"",
        ),
    )?;
    let state = dir.path().join("state");
    let out = run(waymark(&state, "").arg("run").arg(&workflow))?;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let db = dir.path().join("out.db");
    let stored = |key: &str| -> Result<String> {
        let conn = rusqlite::Connection::open(&db)?;
        Ok(conn.query_row(
            "SELECT record FROM items WHERE key = ?1 AND deleted_at IS NULL",
            [key],
            |r| r.get(0),
        )?)
    };
    assert_eq!(
        stored("2")?,
        deep,
        "the sync stores the deep record as sent"
    );
    assert_eq!(stored("3")?, lone, "and the one with a lone surrogate");
    let reconcile = |args: &[&str]| -> Result<(Option<i32>, Value)> {
        let out = run(waymark(&state, "")
            .arg("reconcile")
            .arg(&workflow)
            .arg("--json")
            .args(args))?;
        assert_no_panic(&out);
        let report = serde_json::from_str(text(&out.stdout).trim())
            .map_err(|e| format!("{e}: {} / {}", text(&out.stdout), text(&out.stderr)))?;
        Ok((out.status.code(), report))
    };
    // Keys and versions: all three found, nothing deleted; `--repair` has nothing to do.
    // The refused record is unreadable (the sync dead-lettered it), not missing.
    let (code, report) = reconcile(&["--repair", "--sample", "1000"])?;
    assert_eq!(code, Some(0), "{report}");
    assert_eq!(
        (
            report["source"].as_u64(),
            report["deleted"].as_u64(),
            report["missing"].as_u64(),
            report["differing"].as_u64(),
            report["compared"].as_u64(),
            report["repaired"].as_u64(),
        ),
        (Some(4), Some(0), Some(0), Some(0), Some(3), Some(0)),
        "{report}"
    );
    assert_eq!(report["keys"]["unreadable"], serde_json::json!(["4"]));
    // The destination's copies now differ from the source's in text: their values cannot
    // be compared, and that is what the report says; nothing is rewritten or deleted.
    let conn = rusqlite::Connection::open(&db)?;
    conn.execute(
        "UPDATE items SET record = replace(record, '1]', '2]') WHERE key = '2'",
        [],
    )?;
    conn.execute(
        "UPDATE items SET record = replace(record, 'd800', 'd801') WHERE key = '3'",
        [],
    )?;
    drop(conn);
    let edited = (stored("2")?, stored("3")?);
    let (code, report) = reconcile(&["--repair", "--sample", "1000"])?;
    assert_eq!(code, Some(0), "{report}");
    assert_eq!(
        (
            report["deleted"].as_u64(),
            report["differing"].as_u64(),
            report["unreadable"].as_u64(),
            report["repaired"].as_u64(),
        ),
        (Some(0), Some(0), Some(3), Some(0)),
        "{report}"
    );
    assert_eq!(
        report["keys"]["unreadable"],
        serde_json::json!(["4", "2", "3"])
    );
    let conn = rusqlite::Connection::open(&db)?;
    let mut stmt = conn.prepare("SELECT key, deleted_at IS NOT NULL FROM items ORDER BY key")?;
    let rows: Vec<(String, bool)> = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<std::result::Result<_, _>>()?;
    let live = |key: &str| (key.to_string(), false);
    assert_eq!(rows, [live("1"), live("2"), live("3")], "none soft-deleted");
    assert_eq!(
        (stored("2")?, stored("3")?),
        edited,
        "nothing was rewritten"
    );
    Ok(())
}
