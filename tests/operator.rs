//! The operator's commands on state directories made by real runs.

use crate::util::*;

#[test]
fn dead_letters_are_listed_shown_retried_after_a_fix_and_dropped_with_a_reason() -> Result {
    let sandbox = Sandbox::start(&["--records", "300"])?;
    let dir = TempDir::new("dlq");
    let file = workflow(dir.path(), 100, 3)?;
    let text_of = std::fs::read_to_string(&file)?;
    // A column type that does not fit the data: every order is refused.
    let broken = text_of.replace(
        "cursor_field = \"updated_at\"",
        "cursor_field = \"updated_at\"\ncolumns = { status = \"integer\" }",
    );
    std::fs::write(&file, &broken)?;
    let state = dir.path().join("state");
    let out = run(waymark(&state, &sandbox.url).arg("run").arg(&file))?;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("dead-lettered 300"),
        "{}",
        text(&out.stdout)
    );

    let dlq = |args: &[&str]| run(waymark(&state, "").arg("dlq").args(args));
    let listed = dlq(&["list"])?;
    assert!(
        text(&listed.stdout).contains("shop/orders"),
        "{}",
        text(&listed.stdout)
    );
    assert!(
        text(&listed.stdout).contains("300"),
        "{}",
        text(&listed.stdout)
    );
    let shown = dlq(&["show", "--stream", "orders", "--limit", "2", "--json"])?;
    let letters: Vec<serde_json::Value> = text(&shown.stdout)
        .lines()
        .map(serde_json::from_str)
        .collect::<std::result::Result<_, _>>()?;
    assert_eq!(letters.len(), 2);
    assert!(
        letters[0]["reason"]
            .as_str()
            .is_some_and(|r| r.starts_with("column `status` (`status`): \"")),
        "{letters:?}"
    );
    let unknown = dlq(&["show", "--stream", "nope"])?;
    assert_eq!(unknown.status.code(), Some(2));
    assert!(text(&unknown.stderr)
        .contains("no dead letters for stream `nope` (streams with dead letters: shop/orders)"));

    // A record broken by a hand edit is not retried: it stays a dead letter, saying why,
    // and the others are retried (dead-lettered again here: the workflow is not fixed yet).
    let letters_dir = state.join("dead_letters/shop/orders");
    let letter_files = || -> std::io::Result<Vec<std::path::PathBuf>> {
        Ok(std::fs::read_dir(&letters_dir)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "jsonl"))
            .collect())
    };
    let first = letter_files()?
        .into_iter()
        .next()
        .ok_or("no dead-letter file")?;
    let (good, bad) = ("\\\"status\\\":", "\\\"status\\\"::");
    let kept = std::fs::read_to_string(&first)?;
    // And a letter without a record (an API destination's refused deletion leaves one).
    let bare =
        r#"{"stream":"orders","run_id":"r","page":1,"key":"9","reason":"refused","record":""}"#;
    std::fs::write(&first, format!("{}{bare}\n", kept.replacen(good, bad, 1)))?;
    let retried = run(waymark(&state, "")
        .args(["dlq", "retry"])
        .arg(&file)
        .args(["--stream", "orders"]))?;
    assert_eq!(retried.status.code(), Some(1), "{}", text(&retried.stderr));
    assert!(
        text(&retried.stdout).contains("retried 299 dead letters")
            && text(&retried.stdout).contains("2 kept as dead letters (not JSON"),
        "{}",
        text(&retried.stdout)
    );
    let shown = text(&dlq(&["show", "--stream", "orders", "--limit", "400", "--json"])?.stdout);
    let reasons: Vec<String> = shown
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|l| l["reason"].as_str().map(str::to_string))
        .collect();
    assert_eq!(reasons.len(), 301, "{shown}");
    assert!(reasons.iter().any(|r| r == "refused"), "{shown}");
    assert_eq!(
        reasons
            .iter()
            .filter(|r| r.starts_with("not JSON: "))
            .count(),
        1,
        "{shown}"
    );
    // Mended by hand again, the bare letter dropped.
    for letters in letter_files()? {
        let text = std::fs::read_to_string(&letters)?;
        let text: String = text
            .replace(bad, good)
            .lines()
            .filter(|l| !l.contains("\"record\":\"\""))
            .map(|l| format!("{l}\n"))
            .collect();
        std::fs::write(&letters, text)?;
    }

    // Fixed: the retry writes them all, under its own checkpoint scope.
    std::fs::write(&file, broken.replace("\"integer\"", "\"text\""))?;
    let retried = run(waymark(&state, "")
        .args(["dlq", "retry"])
        .arg(&file)
        .args(["--stream", "orders"]))?;
    assert_eq!(retried.status.code(), Some(0), "{}", text(&retried.stderr));
    assert!(
        text(&retried.stdout).contains("retried 300 dead letters")
            && text(&retried.stdout).contains("inserted 300"),
        "{}",
        text(&retried.stdout)
    );
    assert_eq!(rows(&dir.path().join("shop.db"))?, sandbox.truth()?);
    assert!(text(&dlq(&["list", "--json"])?.stdout).contains("\"letters\":0"));
    let audit = std::fs::read_to_string(state.join("dead_letters/shop/orders/audit.log"))?;
    assert!(audit.contains("retried 300 dead letters"), "{audit}");
    // The stream's own checkpoint did not move: the next run re-reads only its overlap.
    let again = run(waymark(&state, &sandbox.url).arg("run").arg(&file))?;
    assert!(
        text(&again.stdout).contains("inserted 0, updated 0"),
        "{}",
        text(&again.stdout)
    );

    // Dropping needs a reason, and records it.
    std::fs::write(&file, &broken)?;
    let fresh = run(waymark(&state, &sandbox.url)
        .args(["run", "--fresh"])
        .arg(&file))?;
    assert_eq!(fresh.status.code(), Some(0), "{}", text(&fresh.stderr));
    let no_reason = dlq(&["drop", "--stream", "orders"])?;
    assert_eq!(no_reason.status.code(), Some(2));
    let dropped = dlq(&["drop", "--stream", "orders", "--reason", "test data"])?;
    assert_eq!(dropped.status.code(), Some(0), "{}", text(&dropped.stderr));
    let audit = std::fs::read_to_string(state.join("dead_letters/shop/orders/audit.log"))?;
    assert!(audit.contains("dead letters: test data"), "{audit}");
    Ok(())
}

#[test]
fn runs_are_filtered_by_sync_and_stream_and_limited_to_the_newest() -> Result {
    let sandbox = Sandbox::start(&["--records", "300", "--customers", "50"])?;
    let dir = TempDir::new("runs");
    let window =
        r#"window = { lag = "0s", start_param = "updated_since", end_param = "updated_before" }"#;
    let streams = stream_table("orders", "/orders", "updated_at", 100, CURSOR, window)
        + &stream_table("customers", "/customers", "updated_at", 100, CURSOR, window);
    let file = write_workflow(dir.path(), "", &streams, "")?;
    let state = dir.path().join("state");
    for _ in 0..2 {
        let out = run(waymark(&state, &sandbox.url).arg("run").arg(&file))?;
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    }
    let listed = |args: &[&str]| -> Result<Vec<serde_json::Value>> {
        let out = run(waymark(&state, "").args(["runs", "--json"]).args(args))?;
        text(&out.stdout)
            .lines()
            .map(|l| Ok(serde_json::from_str(l)?))
            .collect()
    };
    assert_eq!(listed(&[])?.len(), 4);
    let customers = listed(&["--stream", "customers"])?;
    assert_eq!(customers.len(), 2);
    assert!(customers.iter().all(|r| r["stream"] == "customers"));
    assert_eq!(customers[0]["records"], 50);
    assert_eq!(
        customers[1]["records"], 0,
        "the second run re-reads nothing new"
    );
    assert!(customers[0]["cursor_end"].is_null() && customers[0]["duration_ms"].is_u64());
    let newest = listed(&["--limit", "1"])?;
    assert_eq!(newest.len(), 1);
    assert_eq!(newest[0]["run"], listed(&[])?[3]["run"]);
    assert!(listed(&["--sync", "other"])?.is_empty());
    let table = run(waymark(&state, "").args(["runs", "--stream", "orders"]))?;
    let shown = text(&table.stdout);
    assert_eq!(shown.lines().count(), 3, "{shown}");
    assert!(
        shown
            .lines()
            .nth(1)
            .is_some_and(|l| l.contains("shop/orders") && l.contains("completed")),
        "{shown}"
    );
    Ok(())
}

#[test]
fn status_gives_each_stream_a_verdict_and_fails_when_one_is_unhealthy() -> Result {
    let sandbox = Sandbox::start(&["--records", "200"])?;
    let dir = TempDir::new("status");
    let file = workflow(dir.path(), 100, 1)?;
    let state = dir.path().join("state");
    let status = |args: &[&str]| -> Result<(Option<i32>, Vec<serde_json::Value>)> {
        let out = run(waymark(&state, "").args(["status", "--json"]).args(args))?;
        let lines = text(&out.stdout)
            .lines()
            .map(serde_json::from_str)
            .collect::<std::result::Result<_, _>>()?;
        Ok((out.status.code(), lines))
    };
    let ok = run(waymark(&state, &sandbox.url).arg("run").arg(&file))?;
    assert_eq!(ok.status.code(), Some(0), "{}", text(&ok.stderr));
    let (code, lines) = status(&[])?;
    assert_eq!(code, Some(0), "{lines:?}");
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0]["stream"], "orders");
    assert_eq!(lines[0]["health"], "ok");
    assert_eq!(lines[0]["last_records"], 200);
    assert!(
        lines[0]["lag_s"].as_u64().is_some_and(|l| l < 60),
        "{lines:?}"
    );

    // Nothing advanced for longer than allowed: stalled, exit 1.
    std::thread::sleep(std::time::Duration::from_millis(50));
    let (code, lines) = status(&["--stalled-after", "10ms"])?;
    assert_eq!(code, Some(1));
    assert_eq!(lines[0]["health"], "stalled");
    assert!(lines[0]["reason"]
        .as_str()
        .is_some_and(|r| r.starts_with("no checkpoint advance for")));

    // The API goes away: the next run fails, and so does the verdict.
    drop(sandbox);
    let failed = run(waymark(&state, "http://127.0.0.1:9").arg("run").arg(&file))?;
    assert_eq!(failed.status.code(), Some(1));
    let (code, lines) = status(&[])?;
    assert_eq!(code, Some(1));
    assert_eq!(lines[0]["health"], "failing");
    assert!(
        lines[0]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("could not connect")),
        "{lines:?}"
    );
    let table = run(waymark(&state, "").arg("status"))?;
    assert!(
        text(&table.stdout).contains("failing   shop/orders"),
        "{}",
        text(&table.stdout)
    );
    Ok(())
}

#[test]
fn checkpoints_are_set_reset_and_restored_with_a_reason_and_a_history() -> Result {
    let sandbox = Sandbox::start(&["--records", "300"])?;
    let dir = TempDir::new("checkpoint");
    let file = workflow(dir.path(), 100, 3)?;
    let state = dir.path().join("state");
    let sync = |args: &[&str]| -> Result<String> {
        let out = run(waymark(&state, &sandbox.url)
            .arg("run")
            .arg(&file)
            .args(args))?;
        assert!(
            matches!(out.status.code(), Some(0 | 3)),
            "{}",
            text(&out.stderr)
        );
        Ok(text(&out.stdout))
    };
    let checkpoint = |args: &[&str]| {
        run(waymark(&state, "")
            .arg("checkpoint")
            .arg(args[0])
            .arg(&file)
            .args(&args[1..]))
    };
    // A run paused after one page is unfinished: changing the checkpoint abandons it.
    sync(&["--max-pages", "1"])?;
    let set = checkpoint(&[
        "set",
        "--stream",
        "orders",
        "--to",
        "2020-01-01T00:00:00Z",
        "--reason",
        "re-read all",
    ])?;
    assert_eq!(set.status.code(), Some(0), "{}", text(&set.stderr));
    assert!(
        text(&set.stdout).contains("abandoned unfinished run"),
        "{}",
        text(&set.stdout)
    );
    assert!(sync(&[])?.contains("completed — 300 records"));
    // Change 2 is that run's completion (change 1 the set); nothing new after it.
    assert!(sync(&[])?.contains("completed — 0 records"));

    let reset = checkpoint(&[
        "reset",
        "--stream",
        "orders",
        "--reason",
        "rebuild the table",
    ])?;
    assert_eq!(reset.status.code(), Some(0), "{}", text(&reset.stderr));
    assert!(
        text(&reset.stdout).contains("-> the beginning (rebuild the table)"),
        "{}",
        text(&reset.stdout)
    );
    assert!(sync(&[])?.contains(
        "completed — 300 records in 3 pages this run (inserted 0, updated 0, unchanged 300"
    ));

    let shown = checkpoint(&["show", "--stream", "orders", "--json"])?;
    let view: serde_json::Value = serde_json::from_str(text(&shown.stdout).trim())?;
    let history = view["history"].as_array().ok_or("no history")?;
    let whys: Vec<&str> = history.iter().filter_map(|c| c["why"].as_str()).collect();
    assert_eq!(
        whys,
        [
            "re-read all",
            "completed",
            "completed",
            "rebuild the table",
            "completed"
        ]
    );
    assert!(
        history[0]["who"].is_string()
            && history[1]["who"]
                .as_str()
                .is_some_and(|w| w.starts_with("run "))
    );
    assert!(history[3]["new"].is_null() && history[3]["previous"]["complete"] == true);

    // Back to the value after change 1 (the set): the next run re-reads everything again.
    let restored = checkpoint(&[
        "restore",
        "--stream",
        "orders",
        "--change",
        "1",
        "--reason",
        "undo the reset",
    ])?;
    assert_eq!(
        restored.status.code(),
        Some(0),
        "{}",
        text(&restored.stderr)
    );
    assert!(sync(&[])?.contains("completed — 300 records"));

    // Mistakes are named.
    let unknown = checkpoint(&["reset", "--stream", "nope", "--reason", "x"])?;
    assert_eq!(unknown.status.code(), Some(2));
    assert!(
        text(&unknown.stderr).contains("nope"),
        "{}",
        text(&unknown.stderr)
    );
    let missing = checkpoint(&[
        "restore", "--stream", "orders", "--change", "99", "--reason", "x",
    ])?;
    assert_eq!(missing.status.code(), Some(2));
    assert!(text(&missing.stderr).contains("has no change 99"));
    let no_reason = checkpoint(&["reset", "--stream", "orders"])?;
    assert_eq!(no_reason.status.code(), Some(2));
    let table = checkpoint(&["show"])?;
    assert!(
        text(&table.stdout).contains("shop/orders: watermark"),
        "{}",
        text(&table.stdout)
    );
    Ok(())
}

#[test]
fn a_live_run_is_followed_and_logs_every_step_as_json() -> Result {
    let sandbox = Sandbox::start(&["--records", "1000", "--latency", "60ms"])?;
    let dir = TempDir::new("follow");
    let file = workflow(dir.path(), 100, 3)?;
    let state = dir.path().join("state");
    let child = waymark(&state, &sandbox.url)
        .env_remove("WAYMARK_LOG")
        .args(["run", "--json", "--log-format", "json"])
        .arg(&file)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    // Once it holds the state directory, `journal --follow` (no run id) prints its steps
    // until the run completes.
    assert!(
        wait_for_lock(&state, child.id()),
        "the run never took the lock"
    );
    let followed = run(waymark(&state, "").args(["journal", "--follow", "--json"]))?;
    assert_eq!(
        followed.status.code(),
        Some(0),
        "{}",
        text(&followed.stderr)
    );
    let steps: Vec<serde_json::Value> = text(&followed.stdout)
        .lines()
        .map(serde_json::from_str)
        .collect::<std::result::Result<_, _>>()?;
    let names: Vec<&str> = steps.iter().filter_map(|s| s["step"].as_str()).collect();
    assert_eq!(names.first(), Some(&"run_started"), "{names:?}");
    assert_eq!(names.last(), Some(&"run_completed"), "{names:?}");
    assert_eq!(
        names.iter().filter(|n| **n == "cursor_committed").count(),
        10
    );
    let seqs: Vec<u64> = steps.iter().filter_map(|s| s["seq"].as_u64()).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    let id = steps[0]["run"].as_str().ok_or("no run id")?.to_string();

    let out = child.wait_with_output()?;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    // The summary is one JSON object on stdout.
    let summary: serde_json::Value = serde_json::from_str(text(&out.stdout).trim())?;
    assert_eq!(summary["status"], "completed");
    assert_eq!(summary["records"], 1000);
    assert_eq!(summary["run"], id.as_str());
    assert!(summary["duration_ms"].as_u64().is_some_and(|d| d >= 600));
    // Every journaled step is a JSON log line with the run, stream, cursors and timing.
    let logs: Vec<serde_json::Value> = text(&out.stderr)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let commits: Vec<&serde_json::Value> = logs
        .iter()
        .filter(|l| l["target"] == "waymark_step" && l["step"] == "cursor_committed")
        .collect();
    assert_eq!(commits.len(), 10, "{logs:?}");
    assert!(commits.iter().all(|l| l["run"] == id.as_str()
        && l["stream"] == "orders"
        && l["duration_ms"].is_u64()
        && l["records_committed"].is_u64()));
    assert_eq!(commits[9]["records_committed"], 1000);
    let fetched = logs
        .iter()
        .find(|l| l["step"] == "page_fetched")
        .ok_or("no page_fetched step")?;
    assert_eq!(fetched["records"], 100);
    assert!(
        !state.join("live").join(format!("{id}.jsonl")).exists(),
        "feed left behind"
    );
    Ok(())
}

#[test]
fn replay_dry_run_rechecks_every_step_and_previews_what_a_resume_would_write() -> Result {
    let sandbox = Sandbox::start(&["--records", "300"])?;
    let dir = TempDir::new("replay");
    let file = workflow(dir.path(), 100, 3)?;
    let state = dir.path().join("state");
    // One page written, then the database refuses writes: page 2 stays staged.
    let first = run(waymark(&state, &sandbox.url)
        .args(["run", "--max-pages", "1"])
        .arg(&file))?;
    assert_eq!(first.status.code(), Some(3), "{}", text(&first.stderr));
    let db = rusqlite::Connection::open(dir.path().join("shop.db"))?;
    db.execute_batch(
        "CREATE TRIGGER refuse BEFORE INSERT ON orders BEGIN SELECT RAISE(ABORT, 'disk full'); END",
    )?;
    let failed = run(waymark(&state, &sandbox.url).arg("run").arg(&file))?;
    assert_eq!(failed.status.code(), Some(1), "{}", text(&failed.stderr));
    let id = runs(&state)?[0]["run"].as_str().ok_or("run")?.to_string();

    let replay = |args: &[&str]| run(waymark(&state, "").args(["replay", &id]).args(args));
    let out = replay(&["--dry-run"])?;
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let shown = text(&out.stdout);
    assert!(!shown.contains("NOT WHAT THE ENGINE DECIDES"), "{shown}");
    assert!(
        shown.contains("page_fetched        fetch page 2 with cursor"),
        "{shown}"
    );
    assert!(shown.contains("a resume would:"), "{shown}");
    let puts = shown
        .lines()
        .filter(|l| l.starts_with("  page 2: put "))
        .count();
    assert_eq!(puts, 100, "{shown}");
    assert!(shown.contains("then fetch page 3 with cursor"), "{shown}");
    // Nothing was touched: the destination still has the first page only.
    assert_eq!(rows(&dir.path().join("shop.db"))?.len(), 100);

    let json = replay(&["--dry-run", "--json"])?;
    let consistent = text(&json.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["consistent"] == true)
        .count();
    assert!(consistent >= 6, "{}", text(&json.stdout));
    let without = replay(&[])?;
    assert_eq!(without.status.code(), Some(2));
    assert!(text(&without.stderr).contains("--dry-run"));
    let unknown = run(waymark(&state, "").args(["replay", "nope", "--dry-run"]))?;
    assert_eq!(unknown.status.code(), Some(2));
    assert!(text(&unknown.stderr).contains("no run id starts or ends with `nope`"));
    Ok(())
}

#[test]
fn trace_tells_every_run_and_page_that_saw_a_record_and_what_became_of_it() -> Result {
    let sandbox = Sandbox::start(&["--records", "300", "--seed", "5"])?;
    let dir = TempDir::new("trace");
    let file = workflow(dir.path(), 100, 3)?;
    let state = dir.path().join("state");
    let sync = || -> Result {
        let out = run(waymark(&state, &sandbox.url).arg("run").arg(&file))?;
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
        Ok(())
    };
    sync()?;
    let before = sandbox.truth()?;
    std::thread::sleep(std::time::Duration::from_millis(5));
    sandbox.apply_mutations(60)?;
    std::thread::sleep(std::time::Duration::from_millis(5));
    sync()?;
    let after = sandbox.truth()?;
    // A record the source changed between the two runs.
    let (key, record) = after
        .iter()
        .find(|(k, r)| before.get(*k).is_some_and(|b| b != *r))
        .ok_or("no record was updated")?;
    let trace = run(waymark(&state, "").args(["trace", "orders", key, "--json"]))?;
    assert_eq!(trace.status.code(), Some(0), "{}", text(&trace.stderr));
    let seen: Vec<serde_json::Value> = text(&trace.stdout)
        .lines()
        .map(serde_json::from_str)
        .collect::<std::result::Result<_, _>>()?;
    let outcomes: Vec<&str> = seen.iter().filter_map(|s| s["outcome"].as_str()).collect();
    assert_eq!(outcomes, ["inserted", "updated"], "{seen:?}");
    assert_eq!(seen[1]["version"], record["updated_at"]);
    assert_eq!(seen[0]["version"], before[key.as_str()]["updated_at"]);
    assert_ne!(seen[0]["run_id"], seen[1]["run_id"]);
    let table = run(waymark(&state, "").args(["trace", "orders", key]))?;
    assert!(
        text(&table.stdout).contains("updated"),
        "{}",
        text(&table.stdout)
    );
    // A key no run saw, and a stream the index does not know.
    let never = run(waymark(&state, "").args(["trace", "orders", "999999"]))?;
    assert!(
        text(&never.stdout).contains("has seen key 999999"),
        "{}",
        text(&never.stdout)
    );
    let unknown = run(waymark(&state, "").args(["trace", "nope", "1"]))?;
    assert_eq!(unknown.status.code(), Some(2));
    assert!(
        text(&unknown.stderr).contains("no stream `nope` in the audit index; streams: shop/orders")
    );
    Ok(())
}

#[test]
fn the_audit_index_forgets_what_is_older_than_its_retention() -> Result {
    let sandbox = Sandbox::start(&["--records", "200"])?;
    let dir = TempDir::new("audit-keep");
    let file = workflow(dir.path(), 100, 3)?;
    let text_of = std::fs::read_to_string(&file)?;
    std::fs::write(
        &file,
        text_of.replace("name = \"shop\"", "name = \"shop\"\naudit_keep = \"1s\""),
    )?;
    let state = dir.path().join("state");
    let sync = || {
        run(waymark(&state, &sandbox.url)
            .args(["run", "--fresh"])
            .arg(&file))
    };
    sync()?;
    let trace = || -> Result<usize> {
        let out = run(waymark(&state, "").args(["trace", "orders", "7", "--json"]))?;
        Ok(text(&out.stdout).lines().count())
    };
    assert_eq!(trace()?, 1);
    std::thread::sleep(std::time::Duration::from_millis(1200));
    // The next run prunes sightings older than a second before noting its own (none: the
    // window holds nothing new).
    sync()?;
    assert_eq!(trace()?, 0);
    Ok(())
}

#[test]
fn a_pipelined_run_fetches_the_next_page_while_writing_and_replays_consistently() -> Result {
    // Every request takes 150 ms, so a fetch made after a write shows in the times.
    let sandbox = Sandbox::start(&["--records", "300", "--latency", "150ms"])?;
    let dir = TempDir::new("pipelined");
    let file = workflow(dir.path(), 100, 3)?;
    let state = dir.path().join("state");
    let out = run(waymark(&state, &sandbox.url).arg("run").arg(&file))?;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let id = runs(&state)?[0]["run"].as_str().ok_or("run")?.to_string();
    let events = journal(&state, &id)?;
    let field = |e: &serde_json::Value, name: &str| {
        e["event"]
            .as_object()
            .and_then(|o| o.values().next())
            .and_then(|v| v[name].as_u64())
    };
    let steps: Vec<String> = events
        .iter()
        .map(|e| {
            let page = field(e, "page").map_or(String::new(), |p| format!(" {p}"));
            format!("{}{page}", e["step"].as_str().unwrap_or("?"))
        })
        .collect();
    // Pages are written and committed in order; page k+1's fetch is journaled with page
    // k's write and commit (one batch, one flush).
    assert_eq!(
        steps,
        [
            "run_started",
            "page_fetched 1",
            "batch_written 1",
            "cursor_committed 1",
            "page_fetched 2",
            "batch_written 2",
            "cursor_committed 2",
            "page_fetched 3",
            "batch_written 3",
            "cursor_committed 3",
            "run_completed",
        ]
    );
    // ...but it was fetched while page k was written: done no later than that write (a
    // fetch after it would end at least 150 ms later).
    let at = |step: &str| {
        events
            .iter()
            .zip(&steps)
            .find(|(_, s)| s.as_str() == step)
            .and_then(|(e, _)| field(e, "at"))
            .ok_or(format!("no {step}"))
    };
    for k in 1..=2 {
        let (fetched, written) = (
            at(&format!("page_fetched {}", k + 1))?,
            at(&format!("batch_written {k}"))?,
        );
        assert!(
            fetched <= written,
            "page {} fetched at {fetched}, page {k} written at {written}",
            k + 1
        );
    }
    assert_eq!(rows(&dir.path().join("shop.db"))?, sandbox.truth()?);
    let replay = run(waymark(&state, "").args(["replay", &id, "--dry-run"]))?;
    assert_eq!(replay.status.code(), Some(0), "{}", text(&replay.stdout));
    assert!(!text(&replay.stdout).contains("NOT WHAT THE ENGINE DECIDES"));
    Ok(())
}

#[test]
fn the_demo_keeps_its_state_where_it_is_told_and_says_how_to_go_on() -> Result {
    let dir = TempDir::new("demo");
    let files = dir.path().join("files");
    let state = dir.path().join("elsewhere");
    // A budget of one page pauses the run: the demo says the next one resumes.
    let out = run(waymark(&state, "")
        .args(["demo", "--records", "2000", "--max-pages", "1", "--dir"])
        .arg(&files))?;
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(stdout.contains("it resumes where it stopped"), "{stdout}");
    assert!(
        stdout.contains(&format!("Start over: remove {}", files.display())),
        "{stdout}"
    );
    assert!(state.join("LOCK").is_file() && !files.join("state").exists());
    // The next demo resumes in the same state directory and completes.
    let out = run(waymark(&state, "")
        .args(["demo", "--records", "2000", "--dir"])
        .arg(&files))?;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("writes nothing new"),
        "{}",
        text(&out.stdout)
    );
    assert_eq!(table(&files.join("shop.db"), "orders")?.0.len(), 2000);
    Ok(())
}
