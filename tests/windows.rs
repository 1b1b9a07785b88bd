//! Incremental windows cut into slices, and backfills on their own checkpoint.

use std::path::{Path, PathBuf};

use crate::util::*;

/// Orders of the last hour (one per second, ids 1..=3000 from 60 minutes ago), with more
/// sandbox arguments.
fn recent_sandbox(more: &[&str]) -> Result<Sandbox> {
    let args = ["--records", "3000", "--tie", "1", "--base", "60m"];
    Sandbox::start(&[&args[..], more].concat())
}

fn windowed(dir: &Path, window: &str) -> Result<PathBuf> {
    windowed_with(dir, window, "")
}

/// `windowed` with more lines in the stream's table.
fn windowed_with(dir: &Path, window: &str, extra: &str) -> Result<PathBuf> {
    write_workflow(
        dir,
        "timeout = \"5s\"\nmax_attempts = 3",
        &stream_table(
            "orders",
            "/orders",
            "updated_at",
            200,
            CURSOR,
            &format!("window = {{ {window}, start_param = \"updated_since\", end_param = \"updated_before\" }}\n{extra}"),
        ),
        "",
    )
}

fn windows_of(state: &Path) -> Result<Vec<(String, String, u64)>> {
    let mut out: Vec<(String, String, u64)> = runs(state)?
        .iter()
        .map(|r| {
            (
                r["window_start"].as_str().unwrap_or("").to_string(),
                r["watermark"].as_str().unwrap_or("").to_string(),
                r["records"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    out.sort();
    Ok(out)
}

fn ms(text: &str) -> Result<u64> {
    let t = humantime::parse_rfc3339(text)?;
    Ok(t.duration_since(std::time::UNIX_EPOCH)?.as_millis() as u64)
}

#[test]
fn a_long_window_runs_as_checkpointed_slices_that_resume() -> Result {
    let sandbox = recent_sandbox(&[])?;
    let dir = TempDir::new("slices");
    let workflow = windowed(dir.path(), r#"lag = "0s", initial = "90m", step = "20m""#)?;
    let state = dir.path().join("state");
    // Interrupted inside the second slice...
    let out = run(waymark(&state, &sandbox.url)
        .args(["run", "--max-pages", "4"])
        .arg(&workflow))?;
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    // ...and continued: the same slice resumes, then the others follow.
    let out = run(waymark(&state, &sandbox.url).arg("run").arg(&workflow))?;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(rows(&dir.path().join("shop.db"))?, sandbox.truth()?);

    let windows = windows_of(&state)?;
    assert_eq!(
        windows.len(),
        5,
        "90 minutes in 20-minute slices: {windows:?}"
    );
    for pair in windows.windows(2) {
        assert_eq!(pair[0].1, pair[1].0, "slices tile the range: {windows:?}");
    }
    for (start, end, _) in &windows[..4] {
        assert_eq!(ms(end)? - ms(start)?, 20 * 60 * 1000, "{windows:?}");
    }
    let records: u64 = windows.iter().map(|w| w.2).sum();
    assert_eq!(records, 3000);
    Ok(())
}

#[test]
fn concurrent_partitions_write_what_slices_write_and_resume_where_each_stood() -> Result {
    let sandbox = recent_sandbox(&["--latency", "5ms"])?;
    let window = r#"lag = "0s", initial = "90m", step = "10m""#;
    let sequential = TempDir::new("sequential");
    let workflow = windowed(sequential.path(), window)?;
    let out = run(waymark(&sequential.path().join("state"), &sandbox.url)
        .arg("run")
        .arg(&workflow))?;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));

    let dir = TempDir::new("partitions");
    let workflow = windowed_with(dir.path(), window, "concurrency = 4")?;
    let state = dir.path().join("state");
    // Paused after a few pages, with four partitions open...
    let out = run(waymark(&state, &sandbox.url)
        .args(["run", "--max-pages", "5"])
        .arg(&workflow))?;
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    // ...and resumed: the same run continues every partition.
    let out = run(waymark(&state, &sandbox.url).arg("run").arg(&workflow))?;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let written = rows(&dir.path().join("shop.db"))?;
    assert_eq!(written, rows(&sequential.path().join("shop.db"))?);
    assert_eq!(written, sandbox.truth()?);

    // One run over the whole window (90 minutes: nine partitions), each record read once:
    // a partition read again after the resume would count its records twice.
    let all = runs(&state)?;
    assert_eq!(all.len(), 1, "{all:?}");
    assert_eq!(all[0]["status"], "completed");
    assert_eq!(all[0]["records"], 3000, "{all:?}");
    let run_id = all[0]["run"].as_str().ok_or("run id")?;
    let positions: Vec<serde_json::Value> = journal(&state, run_id)?
        .iter()
        .filter_map(|e| e["event"]["PageFetched"]["next_cursor"].as_str())
        .map(serde_json::from_str)
        .collect::<std::result::Result<_, _>>()?;
    let widest = positions
        .iter()
        .filter_map(|p| p["open"].as_array().map(Vec::len))
        .max();
    assert_eq!(widest, Some(4), "{positions:?}");
    // Ninety minutes in ten-minute partitions (a tenth, of milliseconds, when the run's
    // watermark was taken a moment after `initial`).
    let opened = positions.iter().filter_map(|p| p["next"].as_u64()).max();
    assert!(matches!(opened, Some(9 | 10)), "{positions:?}");
    Ok(())
}

#[test]
fn a_backfill_has_its_own_checkpoint_and_coexists_with_the_incremental_run() -> Result {
    let sandbox = recent_sandbox(&[])?;
    let dir = TempDir::new("backfill");
    let workflow = windowed(dir.path(), r#"lag = "0s""#)?;
    let state = dir.path().join("state");
    let db = dir.path().join("shop.db");
    let out = run(waymark(&state, &sandbox.url).arg("run").arg(&workflow))?;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let checkpoints = |db: &Path| -> Result<Vec<(String, String)>> {
        let conn = rusqlite::Connection::open(db)?;
        let mut stmt =
            conn.prepare("SELECT stream, checkpoint FROM _waymark_checkpoints ORDER BY stream")?;
        let rows = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<std::result::Result<Vec<_>, _>>()?;
        Ok(rows)
    };
    let incremental = checkpoints(&db)?;
    assert_eq!(incremental.len(), 1);

    // A backfill of minutes 40..20 ago, paused after one page...
    let ago = |minutes: u64| {
        humantime::format_rfc3339_millis(
            std::time::SystemTime::now() - std::time::Duration::from_secs(minutes * 60),
        )
        .to_string()
    };
    let (from, to) = (ago(40), ago(20));
    let backfill = |extra: &[&str]| {
        run(waymark(&state, &sandbox.url)
            .arg("backfill")
            .arg(&workflow)
            .args(["--stream", "orders", "--from", &from, "--to", &to])
            .args(extra))
    };
    let out = backfill(&["--max-pages", "1"])?;
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    // ...while the incremental stream runs on its own...
    let out = run(waymark(&state, &sandbox.url).arg("run").arg(&workflow))?;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    // ...then the backfill resumes its own run.
    let out = backfill(&[])?;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let all = runs(&state)?;
    let scoped: Vec<&serde_json::Value> = all
        .iter()
        .filter(|r| {
            r["stream"]
                .as_str()
                .is_some_and(|s| s.contains("@backfill:"))
        })
        .collect();
    assert_eq!(scoped.len(), 1, "{all:?}");
    assert_eq!(scoped[0]["status"], "completed");
    // One record per second over 20 minutes.
    assert_eq!(scoped[0]["records"], 1200);
    assert_eq!(scoped[0]["window_start"].as_str(), Some(from.as_str()));
    assert_eq!(scoped[0]["watermark"].as_str(), Some(to.as_str()));
    let again = backfill(&[])?;
    assert_eq!(again.status.code(), Some(0));
    assert!(
        text(&again.stdout).contains("already complete"),
        "{}",
        text(&again.stdout)
    );

    // The incremental checkpoint is the incremental runs' alone.
    let after = checkpoints(&db)?;
    assert_eq!(after.len(), 2, "{after:?}");
    let incremental_after = after.iter().find(|(s, _)| s == "orders").ok_or("no row")?;
    let last_incremental = all
        .iter()
        .rfind(|r| r["stream"] == "orders")
        .ok_or("no incremental run")?;
    assert!(
        incremental_after
            .1
            .contains(last_incremental["run"].as_str().unwrap_or("?")),
        "{after:?}"
    );
    assert_eq!(rows(&db)?, sandbox.truth()?);
    Ok(())
}

#[test]
fn windows_that_start_at_the_greatest_value_seen_catch_an_api_clock_running_behind() -> Result {
    // Orders from 60 to 10 minutes ago; changes made while serving are stamped by an API
    // clock 10 minutes behind ours.
    let sandbox = recent_sandbox(&["--clock-behind", "10m"])?;
    let newest = sandbox
        .truth()?
        .values()
        .filter_map(|r| r["updated_at"].as_str().map(ms))
        .collect::<Result<Vec<u64>>>()?
        .into_iter()
        .max()
        .ok_or("no orders")?;
    let dirs = [TempDir::new("watermark"), TempDir::new("max-seen")];
    let sync = |dir: &TempDir, rule: &str| -> Result<(PathBuf, PathBuf)> {
        let workflow = windowed(dir.path(), &format!(r#"lag = "0s", start = "{rule}""#))?;
        let state = dir.path().join("state");
        let out = run(waymark(&state, &sandbox.url).arg("run").arg(&workflow))?;
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
        Ok((workflow, state))
    };
    let (by_watermark, watermark_state) = sync(&dirs[0], "watermark")?;
    let (by_max_seen, max_seen_state) = sync(&dirs[1], "max_seen")?;
    // Two orders change now: stamped 10 minutes ago, before both runs' watermarks.
    sandbox.edit(&[], &[5, 6], &[])?;
    for (workflow, state) in [
        (&by_watermark, &watermark_state),
        (&by_max_seen, &max_seen_state),
    ] {
        let out = run(waymark(state, &sandbox.url).arg("run").arg(workflow))?;
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    }
    let truth = sandbox.truth()?;
    let db = |workflow: &Path| workflow.with_file_name("shop.db");
    // `max_seen` started where the data left off and read both changes...
    assert_eq!(rows(&db(&by_max_seen))?, truth);
    let windows = windows_of(&max_seen_state)?;
    assert_eq!(windows.len(), 2, "{windows:?}");
    let second = windows
        .iter()
        .find(|w| !w.0.is_empty())
        .ok_or("no second window")?;
    assert_eq!(ms(&second.0)?, newest, "{windows:?}");
    assert_eq!(
        second.2, 3,
        "the newest order again, and the two changed: {windows:?}"
    );
    // ...while `watermark` started at its own clock's last watermark and missed them.
    let stale: Vec<String> = rows(&db(&by_watermark))?
        .iter()
        .filter(|(id, row)| truth.get(*id) != Some(row))
        .map(|(id, _)| id.clone())
        .collect();
    assert_eq!(stale, ["5", "6"]);
    Ok(())
}
