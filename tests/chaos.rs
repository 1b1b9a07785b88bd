//! The chaos suite: the real binary against a sandbox that changes its data and misbehaves,
//! killed with SIGKILL at random moments, stopped with SIGTERM, and refused by its
//! destination — and the destination still matches the source exactly.
//!
//! Every run prints its seed (and writes it to `target/tmp/chaos-seed`); a failure names it;
//! `WAYMARK_CHAOS_SEED=<seed>` replays one. `WAYMARK_SOAK=1`
//! runs the long version (hundreds of kills over 100k orders).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::util::*;

/// Deterministic pseudo-random delays (xorshift).
pub(crate) struct Rng(pub(crate) u64);

impl Rng {
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

fn seed() -> u64 {
    let seed = std::env::var("WAYMARK_CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(7, |d| d.as_nanos() as u64)
        })
        | 1;
    eprintln!("chaos seed: WAYMARK_CHAOS_SEED={seed}");
    // Also in a file, so a run's seed is known whether or not it failed.
    let file = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("chaos-seed");
    if let Err(e) = std::fs::write(&file, format!("WAYMARK_CHAOS_SEED={seed}\n")) {
        eprintln!("{}: {e}", file.display());
    }
    seed
}

/// Runs a chaos scenario with a seed; a failure (an error or a failed assertion) names the
/// seed that replays it.
pub(crate) fn with_seed(scenario: fn(u64) -> Result) -> Result {
    let seed = seed();
    let replay = format!("replay with WAYMARK_CHAOS_SEED={seed}");
    match std::panic::catch_unwind(|| scenario(seed)) {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(format!("{e} ({replay})").into()),
        Err(panic) => {
            let what = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            Err(format!("{what} ({replay})").into())
        }
    }
}

/// Orders and customers, each with its deletions feed, incremental with a 1 s lag.
fn chaos_workflow(dir: &Path, page_size: u32) -> Result<PathBuf> {
    let window = r#"window = { lag = "1s", overlap = "5s", start_param = "updated_since", end_param = "updated_before" }"#;
    let mut streams = String::new();
    for resource in ["orders", "customers"] {
        streams += &stream_table(
            resource,
            &format!("/{resource}"),
            "updated_at",
            page_size,
            CURSOR,
            window,
        );
        streams += &stream_table(
            &format!("{resource}_deleted"),
            &format!("/{resource}/deleted"),
            "deleted_at",
            page_size,
            CURSOR,
            &format!("{window}\ndeletes = \"{resource}\""),
        );
    }
    write_workflow(
        dir,
        "timeout = \"2s\"\nmax_attempts = 15",
        &streams,
        "busy_timeout = \"300ms\"",
    )
}

/// The destination holds exactly the source's live records (same versions, same content),
/// and every record the source deleted is absent or marked deleted.
pub(crate) fn assert_matches_source(sandbox: &Sandbox, db: &Path, resource: &str) -> Result {
    let (truth, gone) = sandbox.truth_of(resource)?;
    let (live, deleted) = table(db, resource)?;
    let missing: Vec<&String> = truth.keys().filter(|k| !live.contains_key(*k)).collect();
    let extra: Vec<&String> = live.keys().filter(|k| !truth.contains_key(*k)).collect();
    let stale: Vec<&String> = truth
        .iter()
        .filter(|(k, v)| live.get(*k).is_some_and(|got| got != *v))
        .map(|(k, _)| k)
        .collect();
    eprintln!(
        "{resource}: {} live at the source, {} deleted; destination {} live, {} marked deleted; \
         missing {}, extra {}, stale {}",
        truth.len(),
        gone.len(),
        live.len(),
        deleted.len(),
        missing.len(),
        extra.len(),
        stale.len()
    );
    let first = |v: &[&String]| v.iter().take(10).map(|s| s.to_string()).collect::<Vec<_>>();
    assert!(
        missing.is_empty(),
        "{resource} missing: {:?}",
        first(&missing)
    );
    assert!(
        extra.is_empty(),
        "{resource} not at the source: {:?}",
        first(&extra)
    );
    assert!(stale.is_empty(), "{resource} stale: {:?}", first(&stale));
    Ok(())
}

/// Each page of each run was written exactly once (a batch the destination committed just
/// before a kill is recognised there and journaled once, `replayed`). Returns the number of
/// `batch_written` events, of retries journaled, and of resumes.
fn assert_each_page_written_once(state: &Path) -> Result<(usize, u64, u64)> {
    let mut pages = BTreeMap::<(String, u64), u32>::new();
    let (mut retries, mut resumes) = (0, 0);
    for r in runs(state)? {
        let run_id = r["run"].as_str().ok_or("run id")?;
        for e in journal(state, run_id)? {
            let written = &e["event"]["BatchWritten"];
            if written.is_object() {
                let page = written["page"].as_u64().ok_or("page")?;
                *pages.entry((run_id.to_string(), page)).or_default() += 1;
            }
            match e["step"].as_str() {
                Some("request_retried") => retries += 1,
                Some("run_resumed") => resumes += 1,
                _ => {}
            }
        }
    }
    let twice: Vec<_> = pages.iter().filter(|(_, n)| **n != 1).collect();
    assert!(twice.is_empty(), "pages written more than once: {twice:?}");
    Ok((pages.len(), retries, resumes))
}

fn assert_journal_verifies_and_nothing_staged(state: &Path) -> Result {
    let verify = run(waymark(state, "").args(["journal", "verify"]))?;
    assert_eq!(verify.status.code(), Some(0), "{}", text(&verify.stdout));
    let staged = std::fs::read_dir(state.join("staging"))?.count();
    assert_eq!(staged, 0, "staged pages left behind");
    Ok(())
}

/// Runs `waymark run` until every stream completed a run that started after the mutator
/// stopped (the first invocation may only finish interrupted runs).
fn catch_up(state: &Path, sandbox: &Sandbox, workflow: &Path) -> Result {
    for _ in 0..2 {
        let out = run(waymark(state, &sandbox.url).arg("run").arg(workflow))?;
        assert_eq!(
            out.status.code(),
            Some(0),
            "catch-up run: {}",
            text(&out.stderr)
        );
    }
    Ok(())
}

/// Starts `waymark run` again and again, each killed (SIGKILL) after `delay.0` ms and up to
/// `delay.1` more, until `limits.0` kills or `limits.1` invocations; one that finishes
/// before its kill must have succeeded. Returns the kills and the invocations.
fn kill_runs(
    rng: &mut Rng,
    state: &Path,
    sandbox: &Sandbox,
    workflow: &Path,
    delay: (u64, u64),
    limits: (u32, u32),
) -> Result<(u32, u32)> {
    let (mut kills, mut invocations) = (0, 0);
    while kills < limits.0 && invocations < limits.1 {
        let mut child = waymark(state, &sandbox.url)
            .arg("run")
            .arg(workflow)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()?;
        invocations += 1;
        std::thread::sleep(Duration::from_millis(delay.0 + rng.below(delay.1)));
        if child.try_wait()?.is_some() {
            let out = child.wait_with_output()?;
            assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
            continue;
        }
        child.kill()?; // SIGKILL
        child.wait()?;
        kills += 1;
    }
    Ok((kills, invocations))
}

#[test]
fn sigkill_at_random_moments_under_mutations_and_faults_loses_nothing() -> Result {
    with_seed(sigkill_scenario)
}

fn sigkill_scenario(seed: u64) -> Result {
    let mut rng = Rng(seed);
    let soak = std::env::var_os("WAYMARK_SOAK").is_some();
    let (orders, kills_wanted) = if soak { ("100000", 300) } else { ("20000", 32) };
    let sandbox = Sandbox::start(&[
        "--records",
        orders,
        "--customers",
        "2000",
        "--tie",
        "40",
        "--seed",
        &seed.to_string(),
        "--mutate",
        "100",
        "--latency",
        "2ms",
        "--rate-429",
        "0.10",
        "--retry-after",
        "1s",
        "--rate-500",
        "0.03",
        "--rate-503",
        "0.02",
        "--rate-reset",
        // With ~150 requests a run, 5% makes a run without any reset (which the test
        // would call a day that was not bad enough) a 1-in-2000 event.
        "0.05",
        "--rate-malformed",
        "0.01",
        "--rate-hang",
        "0.005",
        "--hang",
        "30s",
    ])?;
    let dir = TempDir::new("chaos");
    let workflow = chaos_workflow(dir.path(), 200)?;
    let state = dir.path().join("state");
    let began = Instant::now();

    // A run that finishes before its kill is followed by a new incremental one: the
    // mutator keeps going.
    let (kills, invocations) = kill_runs(
        &mut rng,
        &state,
        &sandbox,
        &workflow,
        (5, 600),
        (kills_wanted, u32::MAX),
    )?;
    sandbox.set_mutation_rate(0.0)?;
    // Past the window's lag, every mutation is below the next run's watermark.
    std::thread::sleep(Duration::from_millis(1500));
    catch_up(&state, &sandbox, &workflow)?;

    let stats = sandbox.stats()?;
    eprintln!(
        "{kills} kills over {invocations} invocations in {:.1}s; sandbox: {stats}",
        began.elapsed().as_secs_f64()
    );
    let db = dir.path().join("shop.db");
    assert_matches_source(&sandbox, &db, "orders")?;
    assert_matches_source(&sandbox, &db, "customers")?;
    let (pages, retries, resumes) = assert_each_page_written_once(&state)?;
    eprintln!("{pages} pages written once each, {retries} retries, {resumes} resumes journaled");
    assert_journal_verifies_and_nothing_staged(&state)?;

    // The bad day really happened: faults were served, data changed, runs were resumed.
    let count = |path: &[&str]| {
        path.iter()
            .fold(&stats, |v, p| &v[*p])
            .as_u64()
            .unwrap_or(0)
    };
    assert!(
        count(&["faults", "429"]) > 0 && count(&["faults", "reset"]) > 0,
        "{stats}"
    );
    assert!(count(&["mutations", "deleted"]) > 0, "{stats}");
    assert!(count(&["mutations", "updated"]) > 0, "{stats}");
    assert!(retries > 0 && resumes > 0);
    Ok(())
}

#[test]
fn sigkill_at_random_moments_under_process_durability_loses_nothing() -> Result {
    with_seed(process_durability_scenario)
}

/// `durability = "process"` syncs nothing a step: a kill must still lose, duplicate and
/// corrupt nothing (the kernel keeps every write the killed process made).
fn process_durability_scenario(seed: u64) -> Result {
    let mut rng = Rng(seed);
    let sandbox = Sandbox::start(&[
        "--records",
        "8000",
        "--customers",
        "1000",
        "--seed",
        &seed.to_string(),
        "--mutate",
        "100",
        "--latency",
        "1ms",
        "--rate-429",
        "0.05",
        "--retry-after",
        "1s",
        "--rate-500",
        "0.03",
    ])?;
    let dir = TempDir::new("chaos-process");
    let workflow = chaos_workflow(dir.path(), 100)?;
    let text = std::fs::read_to_string(&workflow)?;
    assert!(text.contains("[sync]\n"), "{text}");
    std::fs::write(
        &workflow,
        text.replacen("[sync]\n", "[sync]\ndurability = \"process\"\n", 1),
    )?;
    let state = dir.path().join("state");
    let (kills, invocations) = kill_runs(
        &mut rng,
        &state,
        &sandbox,
        &workflow,
        (5, 400),
        (16, u32::MAX),
    )?;
    sandbox.set_mutation_rate(0.0)?;
    std::thread::sleep(Duration::from_millis(1500));
    catch_up(&state, &sandbox, &workflow)?;
    eprintln!("{kills} kills over {invocations} invocations");
    let db = dir.path().join("shop.db");
    assert_matches_source(&sandbox, &db, "orders")?;
    assert_matches_source(&sandbox, &db, "customers")?;
    let (pages, _, resumes) = assert_each_page_written_once(&state)?;
    eprintln!("{pages} pages written once each, {resumes} resumes journaled");
    assert_journal_verifies_and_nothing_staged(&state)?;
    assert!(resumes > 0, "no run was resumed: the kills came at no step");
    Ok(())
}

#[test]
fn sigkill_while_partitions_are_read_at_once_resumes_each_and_loses_nothing() -> Result {
    with_seed(partitions_scenario)
}

/// A window cut into 22 partitions, six read at once against a slow, faulty API, killed at
/// random moments: every partition continues where its last committed page left it.
fn partitions_scenario(seed: u64) -> Result {
    let mut rng = Rng(seed);
    let sandbox = Sandbox::start(&[
        "--records",
        "6000",
        "--tie",
        "1",
        "--base",
        "100m",
        "--seed",
        &seed.to_string(),
        "--latency",
        "20ms",
        "--rate-500",
        "0.03",
        "--rate-reset",
        "0.02",
    ])?;
    let dir = TempDir::new("chaos-partitions");
    let workflow = write_workflow(
        dir.path(),
        "timeout = \"2s\"\nmax_attempts = 15",
        &stream_table(
            "orders",
            "/orders",
            "updated_at",
            50,
            CURSOR,
            "window = { lag = \"1s\", initial = \"110m\", step = \"5m\", start_param = \"updated_since\", end_param = \"updated_before\" }\nconcurrency = 6",
        ),
        "",
    )?;
    let state = dir.path().join("state");
    let (kills, invocations) =
        kill_runs(&mut rng, &state, &sandbox, &workflow, (20, 300), (10, 40))?;
    catch_up(&state, &sandbox, &workflow)?;
    eprintln!("{kills} kills over {invocations} invocations");
    assert_matches_source(&sandbox, &dir.path().join("shop.db"), "orders")?;
    let (pages, retries, resumes) = assert_each_page_written_once(&state)?;
    eprintln!("{pages} pages written once each, {retries} retries, {resumes} resumes journaled");
    assert_journal_verifies_and_nothing_staged(&state)?;
    assert!(kills > 0 && resumes > 0, "the runs were never interrupted");
    // The first run, over the whole window, read 6,000 records once: a partition read
    // again after a kill would count its records twice.
    let first = runs(&state)?.into_iter().next().ok_or("no run")?;
    assert_eq!(first["records"], 6000, "{first}");
    Ok(())
}

#[test]
fn a_sigterm_during_a_hung_request_pauses_without_waiting_for_it() -> Result {
    let sandbox = Sandbox::start(&["--records", "3000", "--hang", "60s"])?;
    let dir = TempDir::new("sigterm-hang");
    let path = workflow(dir.path(), 100, 3)?;
    // A timeout longer than the test: only the stop request can end the hung fetch.
    let text_before = std::fs::read_to_string(&path)?;
    std::fs::write(
        &path,
        text_before.replace("timeout = \"5s\"", "timeout = \"120s\""),
    )?;
    let state = dir.path().join("state");
    let out = run(waymark(&state, &sandbox.url)
        .args(["run", "--max-pages", "3"])
        .arg(&path))?;
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));

    sandbox.set_faults(r#"{"rate_hang": 1.0, "hang_ms": 60000}"#)?;
    let requests = sandbox.stats()?["requests"].as_u64().unwrap_or(0);
    let child = waymark(&state, &sandbox.url)
        .arg("run")
        .arg(&path)
        .stdout(Stdio::piped())
        .spawn()?;
    assert!(
        wait_for(
            || sandbox
                .stats()
                .is_ok_and(|s| s["requests"].as_u64() > Some(requests)),
            Duration::from_secs(10)
        ),
        "the run never sent its request"
    );
    let sent = Instant::now();
    let kill = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()?;
    assert!(kill.success());
    let out = child.wait_with_output()?;
    let took = sent.elapsed();
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    // The request hangs 60 s under a 120 s timeout: anything near that means the stop
    // waited for it. The bound leaves a loaded machine room (no timing claim below it).
    assert!(
        took < Duration::from_secs(20),
        "stopping took {took:?} during a hung request"
    );
    assert!(
        text(&out.stdout).contains("paused (interrupted)"),
        "{}",
        text(&out.stdout)
    );
    let run_id = runs(&state)?[0]["run"]
        .as_str()
        .ok_or("run id")?
        .to_string();
    let steps: Vec<String> = journal(&state, &run_id)?
        .iter()
        .filter_map(|e| e["step"].as_str().map(str::to_string))
        .collect();
    assert_eq!(
        steps.last().map(String::as_str),
        Some("run_paused"),
        "{steps:?}"
    );

    sandbox.set_faults("{}")?;
    let out = run(waymark(&state, &sandbox.url).arg("run").arg(&path))?;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(rows(&dir.path().join("shop.db"))?, sandbox.truth()?);
    assert_each_page_written_once(&state)?;
    Ok(())
}

/// The destination's own checkpoint row for the orders stream.
fn stored_checkpoint(db: &Path) -> Result<String> {
    let conn = rusqlite::Connection::open(db)?;
    Ok(conn.query_row(
        "SELECT checkpoint FROM _waymark_checkpoints WHERE stream = 'orders'",
        [],
        |r| r.get(0),
    )?)
}

/// Interrupts a sync with `fault` applied to the destination after 3 pages, checks the run
/// failed with `message` without moving the checkpoint, lifts the fault with `heal`, and
/// checks a resume completes with the destination equal to the source.
fn destination_fault(
    name: &str,
    fault: impl FnOnce(&Path) -> Result<rusqlite::Connection>,
    heal: impl FnOnce(rusqlite::Connection) -> Result,
    message: &str,
) -> Result {
    let sandbox = Sandbox::start(&["--records", "1000"])?;
    let dir = TempDir::new(name);
    let path = chaos_workflow(dir.path(), 100)?;
    let state = dir.path().join("state");
    let out = run(waymark(&state, &sandbox.url)
        .args(["run", "--stream", "orders", "--max-pages", "3"])
        .arg(&path))?;
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    let db = dir.path().join("shop.db");
    let before = stored_checkpoint(&db)?;
    let rows_before = rows(&db)?.len();
    assert_eq!(rows_before, 300);

    let holder = fault(&db)?;
    let out = run(waymark(&state, &sandbox.url)
        .args(["run", "--stream", "orders"])
        .arg(&path))?;
    assert_no_panic(&out);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let said = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert!(
        said.contains("destination refused page 4") && said.contains(message),
        "{said}"
    );
    heal(holder)?;
    assert_eq!(stored_checkpoint(&db)?, before, "the checkpoint moved");
    assert_eq!(rows(&db)?.len(), rows_before, "a partial batch was kept");
    let run_id = runs(&state)?[0]["run"]
        .as_str()
        .ok_or("run id")?
        .to_string();
    let committed = journal(&state, &run_id)?
        .iter()
        .filter(|e| e["step"] == "cursor_committed")
        .count();
    assert_eq!(committed, 3);

    let out = run(waymark(&state, &sandbox.url)
        .args(["run", "--stream", "orders"])
        .arg(&path))?;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_matches_source(&sandbox, &db, "orders")?;
    let (pages, _, _) = assert_each_page_written_once(&state)?;
    assert_eq!(pages, 10);
    assert_journal_verifies_and_nothing_staged(&state)?;
    Ok(())
}

#[test]
fn a_write_error_mid_batch_moves_no_checkpoint_and_a_resume_completes() -> Result {
    // Order 350 is in the middle of page 4: the batch fails after 49 upserts.
    destination_fault(
        "write-error",
        |db| {
            let conn = rusqlite::Connection::open(db)?;
            conn.execute_batch(
                "CREATE TRIGGER fail_350 BEFORE INSERT ON orders WHEN NEW.key = '350'
                 BEGIN SELECT RAISE(ABORT, 'injected write failure'); END;",
            )?;
            Ok(conn)
        },
        |conn| Ok(conn.execute_batch("DROP TRIGGER fail_350")?),
        "injected write failure",
    )
}

#[test]
fn a_locked_destination_fails_the_step_and_a_resume_completes() -> Result {
    destination_fault(
        "locked",
        |db| {
            let conn = rusqlite::Connection::open(db)?;
            conn.execute_batch("BEGIN EXCLUSIVE")?;
            Ok(conn)
        },
        |conn| Ok(conn.execute_batch("ROLLBACK")?),
        "database is locked",
    )
}

#[test]
fn hard_deletes_and_flagged_deletions_match_the_source() -> Result {
    let sandbox = Sandbox::start(&["--records", "2000", "--seed", "9", "--quirk", "reuse-ids"])?;
    let dir = TempDir::new("hard-delete");
    let path = chaos_workflow(dir.path(), 200)?;
    let text_before = std::fs::read_to_string(&path)?;
    std::fs::write(
        &path,
        text_before
            .replace(
                "name = \"orders\"\n",
                "name = \"orders\"\ndeleted_when = { path = \"status\", one_of = [\"refunded\"] }\n",
            )
            .replace("busy_timeout", "delete_mode = \"hard\"\nbusy_timeout"),
    )?;
    let state = dir.path().join("state");
    let db = dir.path().join("shop.db");
    for round in 0..3 {
        sandbox.apply_mutations(400)?;
        // Past the window's lag.
        std::thread::sleep(Duration::from_millis(1100));
        let out = run(waymark(&state, &sandbox.url).arg("run").arg(&path))?;
        assert_eq!(
            out.status.code(),
            Some(0),
            "round {round}: {}",
            text(&out.stderr)
        );
        let (truth, gone) = sandbox.truth_of("orders")?;
        let expected: BTreeMap<String, serde_json::Value> = truth
            .into_iter()
            .filter(|(_, r)| r["status"] != "refunded")
            .collect();
        let (live, marked) = table(&db, "orders")?;
        assert!(marked.is_empty(), "hard deletes leave no marked rows");
        let missing: Vec<_> = expected
            .iter()
            .filter(|(k, _)| !live.contains_key(*k))
            .take(3)
            .collect();
        assert_eq!(live.len(), expected.len(), "round {round}: {missing:?}");
        assert!(
            live == expected,
            "round {round}: destination differs from the source"
        );
        let conn = rusqlite::Connection::open(&db)?;
        let remembered: i64 = conn.query_row(
            "SELECT count(*) FROM _waymark_tombstones WHERE tbl = 'orders'",
            [],
            |r| r.get(0),
        )?;
        assert!(remembered as usize >= gone.len(), "round {round}");
    }
    Ok(())
}
