//! What people read: `runs` fits the terminal and names each run by the end of its id,
//! `runs <id>` shows one run in full, `took` leaves out the time a run stood paused, and
//! `journal` keeps the journal's order with times that explain themselves.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::resilience::workflow_text;
use crate::scripted::{records, Background, Reply, Request};
use crate::util::*;

/// Three pages of three records; the cursors are `next(1)`, `next(2)`, then none.
fn pages(next: fn(u64) -> String) -> impl Fn(&Request) -> Reply {
    move |r: &Request| {
        let page = (1..=2)
            .find(|&n| r.param("cursor") == Some(next(n)))
            .map_or(1, |n| n + 1);
        let cursor = match page {
            3 => "null".to_string(),
            n => format!("\"{}\"", next(n)),
        };
        Reply::json(
            200,
            format!(r#"{{"data":{},"next":{cursor}}}"#, records(page * 3 - 2, 3)),
        )
    }
}

/// A cursor of 400 characters, as some APIs hand out (encoded state, signed tokens).
fn long_cursor(n: u64) -> String {
    format!("{}{n}", "k".repeat(400))
}

fn workflow(dir: &Path, url: &str, stream: &str) -> Result<PathBuf> {
    let file = dir.join("workflow.toml");
    let text = workflow_text(url, "max_attempts = 2", "")
        .replace("name = \"items\"", &format!("name = \"{stream}\""));
    std::fs::write(&file, text)?;
    Ok(file)
}

/// The run ids in the journal, oldest first.
fn run_ids(state: &Path) -> Result<Vec<String>> {
    runs(state)?
        .iter()
        .map(|r| Ok(r["run"].as_str().ok_or("no run id")?.to_string()))
        .collect()
}

const STREAM: &str = "items_under_a_name_long_enough_to_be_cut";

#[test]
fn runs_fit_80_columns_and_runs_id_shows_a_run_in_full() -> Result {
    let dir = TempDir::new("runs-table");
    let server = Background::start(pages(long_cursor))?;
    let file = workflow(dir.path(), server.url(), STREAM)?;
    let state = dir.path().join("state");
    // The page budget pauses a run with a 400-character cursor committed; `--fresh`
    // abandons it and starts another from there, paused in turn.
    for fresh in [&[][..], &["--fresh"][..]] {
        let out = run(waymark(&state, "")
            .args(["run", "--max-pages", "1"])
            .args(fresh)
            .arg(&file))?;
        assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    }
    let listed = runs(&state)?;
    let ids = run_ids(&state)?;
    assert_eq!(
        (&listed[0]["status"], &listed[1]["status"]),
        (&"abandoned".into(), &"paused".into())
    );
    let (start, end) = (long_cursor(1), long_cursor(2));
    assert_eq!(
        (&listed[1]["cursor_start"], &listed[1]["cursor_end"]),
        (&start.clone().into(), &end.clone().into())
    );

    let table = run(waymark(&state, "").env_remove("COLUMNS").arg("runs"))?;
    assert_eq!(table.status.code(), Some(0), "{}", text(&table.stderr));
    let shown = text(&table.stdout);
    let lines: Vec<&str> = shown.lines().collect();
    assert_eq!(lines.len(), 3, "{shown}");
    for line in &lines {
        assert!(line.chars().count() <= 80, "{} columns: {line}", line.len());
    }
    assert!(!shown.contains("kkkk"), "no cursor in the table: {shown}");
    // Columns line up: each header starts where its values do.
    let header = lines[0];
    for (name, first, second) in [("status", "abandoned", "paused"), ("started", "20", "20")] {
        let at = header.find(name).ok_or(name)?;
        for (line, value) in [(lines[1], first), (lines[2], second)] {
            let cell: String = line.chars().skip(at).collect();
            assert!(cell.starts_with(value), "{name} at {at}: {shown}");
        }
    }
    // The stream is cut to fit, with an ellipsis.
    assert!(
        lines[1].contains("res/items_") && lines[1].contains('…') && !lines[1].contains(STREAM),
        "{shown}"
    );
    // Each run is named by the end of its id, enough to find it.
    let short: Vec<&str> = lines[1..]
        .iter()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    for (short, id) in short.iter().zip(&ids) {
        assert!(short.len() >= 8 && id.ends_with(short), "{short} of {id}");
    }
    // A wider terminal shows the whole stream.
    let wide = run(waymark(&state, "").env("COLUMNS", "160").arg("runs"))?;
    let wide = text(&wide.stdout);
    assert!(wide.contains(&format!("res/{STREAM}")), "{wide}");
    assert!(wide.lines().all(|l| l.chars().count() <= 160), "{wide}");

    // `runs <end of id>`: the paused run in full, its long cursor whole.
    let one = run(waymark(&state, "").args(["runs", short[1]]))?;
    assert_eq!(one.status.code(), Some(0), "{}", text(&one.stderr));
    let full = text(&one.stdout);
    for (key, value) in [
        ("run", ids[1].as_str()),
        ("stream", STREAM),
        ("status", "paused"),
        ("outcome", "page budget of 1 reached"),
        ("resumes", "0"),
        ("dead letters", "0"),
    ] {
        assert!(
            full.lines()
                .any(|l| l.starts_with(&format!("{key}:")) && l.ends_with(value)),
            "{key}: {value} in {full}"
        );
    }
    assert!(full.contains(&format!("cursor start: {start}\n")), "{full}");
    assert!(full.contains(&format!("cursor end:   {end}\n")), "{full}");
    for key in [
        "window:",
        "watermark:",
        "cursor start:",
        "cursor end:",
        "took:",
        "updated:",
    ] {
        assert!(full.lines().any(|l| l.starts_with(key)), "{key} in {full}");
    }
    // The same by a prefix of the id, and as the list's JSON line.
    let by_prefix = run(waymark(&state, "").args(["runs", &ids[1][..24]]))?;
    assert_eq!(text(&by_prefix.stdout), full);
    let json = run(waymark(&state, "").args(["runs", short[1], "--json"]))?;
    let json: serde_json::Value = serde_json::from_str(text(&json.stdout).trim())?;
    assert_eq!(json, listed[1]);
    Ok(())
}

fn parse_time(value: &serde_json::Value) -> Result<SystemTime> {
    Ok(humantime::parse_rfc3339(value.as_str().ok_or("no time")?)?)
}

#[test]
fn took_leaves_out_the_time_a_run_stood_paused() -> Result {
    let dir = TempDir::new("took");
    let server = Background::start(pages(|n| format!("c{n}")))?;
    let file = workflow(dir.path(), server.url(), "items")?;
    let state = dir.path().join("state");
    // Paused after a page, resumed later for a page, then to the end: each summary in
    // English, with the run's active time.
    let out = run(waymark(&state, "")
        .args(["run", "--max-pages", "1"])
        .arg(&file))?;
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    let said = text(&out.stdout);
    assert!(said.contains("3 records in 1 page this run"), "{said}");
    assert!(
        said.contains("0 resumes") && !said.contains("in this process"),
        "{said}"
    );
    const PAUSED: Duration = Duration::from_millis(1_500);
    std::thread::sleep(PAUSED);
    let out = run(waymark(&state, "")
        .args(["run", "--max-pages", "1"])
        .arg(&file))?;
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    let said = text(&out.stdout);
    assert!(
        said.contains(", 1 resume,") && said.contains(" in this process)"),
        "{said}"
    );
    let out = run(waymark(&state, "").args(["run", "--json"]).arg(&file))?;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let summary: serde_json::Value = serde_json::from_str(text(&out.stdout).trim())?;
    assert_eq!(
        (&summary["status"], &summary["resumes"]),
        (&"completed".into(), &2.into())
    );

    let listed = runs(&state)?;
    let wall =
        parse_time(&listed[0]["updated"])?.duration_since(parse_time(&listed[0]["started"])?)?;
    let took = Duration::from_millis(listed[0]["duration_ms"].as_u64().ok_or("no duration")?);
    assert!(wall >= PAUSED, "{wall:?}");
    assert!(
        took + PAUSED <= wall,
        "took {took:?} of {wall:?}, paused {PAUSED:?}"
    );
    assert_eq!(
        listed[0]["elapsed_ms"].as_u64(),
        u64::try_from(wall.as_millis()).ok()
    );
    // Every command says the same.
    assert_eq!(summary["duration_ms"], listed[0]["duration_ms"]);
    let id = listed[0]["run"].as_str().ok_or("no run id")?;
    let one = text(&run(waymark(&state, "").args(["runs", id]))?.stdout);
    let took_line = one
        .lines()
        .find(|l| l.starts_with("took:"))
        .ok_or("no took")?;
    let shown = format!("{}.{}s", took.as_secs(), took.subsec_millis() / 100);
    assert!(took_line.contains(&format!(" {shown} ")), "{shown}: {one}");
    let table = text(&run(waymark(&state, "").arg("runs"))?.stdout);
    assert!(table.contains(&format!(" {shown} ")), "{shown}: {table}");

    Ok(())
}

/// `+H:MM:SS.mmm` in milliseconds.
fn offset_ms(text: &str) -> Option<u64> {
    let (hms, ms) = text.strip_prefix('+')?.split_once('.')?;
    let mut parts = hms.split(':').map(str::parse::<u64>);
    let (h, m, s) = (
        parts.next()?.ok()?,
        parts.next()?.ok()?,
        parts.next()?.ok()?,
    );
    Some(((h * 60 + m) * 60 + s) * 1_000 + ms.parse::<u64>().ok()?)
}

#[test]
fn journal_lines_keep_the_journals_order_and_say_when_a_page_was_fetched_ahead() -> Result {
    let sandbox = Sandbox::start(&["--records", "3000"])?;
    let dir = TempDir::new("journal-times");
    let file = crate::util::workflow(dir.path(), 100, 3)?;
    let state = dir.path().join("state");
    let out = run(waymark(&state, &sandbox.url).arg("run").arg(&file))?;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let id = run_ids(&state)?.remove(0);
    let events = journal(&state, &id)?;
    let table = run(waymark(&state, "").args(["journal", &id]))?;
    let shown = text(&table.stdout);
    let mut lines = shown.lines();
    let header = lines.next().ok_or("no header")?;
    assert!(header.contains("since start"), "{header}");
    let rows: Vec<&str> = lines.collect();
    assert_eq!(rows.len(), events.len());
    let started = parse_time(&events[0]["time"])?;
    let mut latest = 0;
    for (i, (row, event)) in rows.iter().zip(&events).enumerate() {
        let mut cells = row.split_whitespace();
        let seq: u64 = cells.next().ok_or("no seq")?.parse()?;
        // Journal order: the lines are the journal's entries one by one.
        assert_eq!(seq, i as u64 + 1, "{shown}");
        assert_eq!(event["seq"], seq);
        let offset = offset_ms(cells.next().ok_or("no time")?).ok_or(row.to_string())?;
        assert_eq!(event["offset_ms"], offset, "{row}");
        // The offset is the event's own time, counted from the run's start.
        let at = parse_time(&event["time"])?;
        assert_eq!(
            at.duration_since(started)?,
            Duration::from_millis(offset),
            "{row}"
        );
        // A time earlier than a line above is a page fetched ahead, and says so.
        let earlier = offset < latest;
        assert_eq!(row.contains("fetched ahead"), earlier, "{row}");
        assert_eq!(event["ahead"], earlier, "{row}");
        if earlier {
            assert_eq!(event["step"], "page_fetched", "{row}");
        }
        latest = latest.max(offset);
    }
    assert_eq!(rows.last().map(|r| r.contains("run_completed")), Some(true));
    Ok(())
}
