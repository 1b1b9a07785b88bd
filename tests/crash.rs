//! The real binary killed with SIGKILL at many moments: nothing lost, nothing duplicated.

use std::time::Duration;

use crate::util::*;

/// Deterministic pseudo-random delays; the seed is printed so a failure can be replayed
/// with `WAYMARK_CRASH_SEED`.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

#[test]
fn sigkill_at_many_moments_loses_and_duplicates_nothing() -> Result {
    let seed = std::env::var("WAYMARK_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(7, |d| d.as_nanos() as u64)
        })
        | 1;
    eprintln!("crash test seed: WAYMARK_CRASH_SEED={seed}");
    let mut rng = Rng(seed);

    let sandbox = Sandbox::start(&[
        "--records",
        "20000",
        "--latency",
        "3ms",
        "--fail-rate",
        "0.05",
    ])?;
    let truth = sandbox.truth()?;
    let dir = TempDir::new("crash");
    let workflow = workflow(dir.path(), 150, 20)?;
    let state = dir.path().join("state");

    let mut kills = 0;
    let mut invocations = 0;
    let mut completed = false;
    while kills < 40 {
        let mut child = waymark(&state, &sandbox.url)
            .arg("run")
            .arg(&workflow)
            .spawn()?;
        invocations += 1;
        std::thread::sleep(Duration::from_millis(5 + rng.below(250)));
        if let Some(status) = child.try_wait()? {
            // It finished before the kill: nothing more to interrupt.
            assert_eq!(status.code(), Some(0), "run exited with {status}");
            completed = true;
            break;
        }
        child.kill()?; // SIGKILL
        child.wait()?;
        kills += 1;
    }
    if !completed {
        let out = run(waymark(&state, &sandbox.url).arg("run").arg(&workflow))?;
        invocations += 1;
        assert_eq!(
            out.status.code(),
            Some(0),
            "final run: {}",
            text(&out.stderr)
        );
    }
    eprintln!("{kills} kills over {invocations} invocations");
    assert!(
        kills >= 10,
        "too few kills landed mid-run ({kills}); the sync is too fast for this test"
    );

    // Every record, exactly as the source has it.
    let rows = rows(&dir.path().join("shop.db"))?;
    assert_eq!(rows.len(), truth.len());
    assert!(rows == truth, "destination differs from the source");

    // Exactly once: each page has exactly one `batch_written` in the journal (a batch the
    // destination committed just before a kill is recognised there, `replayed`, and keeps
    // its original counts); together they inserted each record once and rewrote none.
    let all = runs(&state)?;
    let (mut inserted, mut rewritten, mut resumes, mut replayed) = (0, 0, 0, 0);
    let mut pages = std::collections::BTreeMap::<(String, u64), u32>::new();
    for r in &all {
        let run_id = r["run"].as_str().ok_or("run id")?;
        for e in journal(&state, run_id)? {
            let written = &e["event"]["BatchWritten"];
            if let Some(ack) = written["ack"].as_object() {
                *pages
                    .entry((run_id.to_string(), written["page"].as_u64().unwrap_or(0)))
                    .or_default() += 1;
                if ack["replayed"] == true {
                    replayed += 1;
                }
                inserted += ack["inserted"].as_u64().unwrap_or(0);
                rewritten +=
                    ack["updated"].as_u64().unwrap_or(0) + ack["unchanged"].as_u64().unwrap_or(0);
            }
            if e["step"] == "run_resumed" {
                resumes += 1;
            }
        }
    }
    eprintln!(
        "{} runs, {resumes} resumes, {replayed} batches recognised as already committed",
        all.len()
    );
    let first = all[0]["run"].as_str().ok_or("run id")?;
    assert_eq!(
        pages.keys().filter(|(run, _)| run == first).count(),
        134,
        "pages of 150 records"
    );
    assert!(
        pages.values().all(|&n| n == 1),
        "a page was written twice: {pages:?}"
    );
    assert_eq!(inserted, 20_000);
    assert_eq!(rewritten, 0);
    // Each invocation either started a run or journaled a resume (unless it was killed
    // before it got that far).
    assert!(resumes >= 1, "the journal shows no resume");
    // One run did all the work: every later invocation resumed it. (A kill can land after
    // it completed but before the process exited; the next invocation then starts a new
    // run, which finds nothing new.)
    assert_eq!(all[0]["records"], 20_000, "{all:?}");
    assert!(all.iter().all(|r| r["status"] == "completed"), "{all:?}");
    assert!(all[1..].iter().all(|r| r["records"] == 0), "{all:?}");
    assert!(all.len() as u64 + resumes <= invocations);

    // The journal verifies and nothing is left staged.
    let verify = run(waymark(&state, "").args(["journal", "verify"]))?;
    assert_eq!(verify.status.code(), Some(0), "{}", text(&verify.stdout));
    let staged = std::fs::read_dir(state.join("staging"))?.count();
    assert_eq!(staged, 0, "staged pages left behind");
    Ok(())
}
