//! Damaged journals: clear errors and exit codes, never a panic, never a silent restart.

use crate::util::*;

#[test]
fn a_flipped_bit_is_named_by_run_and_seq_with_the_way_out() -> Result {
    let sandbox = Sandbox::start(&["--records", "500"])?;
    let dir = TempDir::new("bitflip");
    let (path, state, run_id) = paused_run(&sandbox, &dir)?;
    {
        // The run's log: frames `[length: u32 LE][value]`; flip a bit in seq 2's value.
        let log = state.join("journal/runs").join(format!("{run_id}.log"));
        let mut bytes = std::fs::read(&log)?;
        let first = u32::from_le_bytes(bytes[0..4].try_into()?) as usize;
        bytes[4 + first + 4 + 8] ^= 0x10;
        std::fs::write(&log, bytes)?;
    }
    let out = run(waymark(&state, "").args(["journal", &run_id]))?;
    assert_no_panic(&out);
    assert_eq!(out.status.code(), Some(5));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "journal entry run {run_id} seq 2 is unreadable: checksum mismatch"
        )),
        "{stderr}"
    );
    assert!(stderr.contains("waymark journal verify"), "{stderr}");

    let out = run(waymark(&state, "").args(["journal", "verify"]))?;
    assert_eq!(out.status.code(), Some(5));
    assert!(
        text(&out.stdout).contains(&format!("damaged: run {run_id} seq 2: checksum mismatch")),
        "{}",
        text(&out.stdout)
    );

    // The run itself resumes from its head (the damaged event is history, not state).
    let out = run(waymark(&state, &sandbox.url).arg("run").arg(&path))?;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(rows(&dir.path().join("shop.db"))?, sandbox.truth()?);
    Ok(())
}

#[test]
fn a_lost_journal_is_never_guessed_around_and_the_destinations_checkpoint_can_be_adopted() -> Result
{
    let sandbox = Sandbox::start(&["--records", "500"])?;
    let dir = TempDir::new("lost");
    let (path, state, first_run) = paused_run(&sandbox, &dir)?;
    let out = run(waymark(&state, "").args(["journal", "reset"]))?;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("journal moved to"),
        "{}",
        text(&out.stdout)
    );

    // The run refuses to start and names the choices.
    let refused = run(waymark(&state, &sandbox.url).arg("run").arg(&path))?;
    assert_eq!(refused.status.code(), Some(2), "{}", text(&refused.stderr));
    let said = text(&refused.stderr);
    for choice in [
        "waymark checkpoint adopt <workflow> --stream orders",
        "waymark checkpoint set <workflow> --stream orders --to",
        "waymark checkpoint reset <workflow> --stream orders",
    ] {
        assert!(said.contains(choice), "{said}");
    }
    assert!(said.contains(&format!("run {first_run}, page 2")), "{said}");
    assert!(runs(&state)?.is_empty(), "nothing ran");

    // Without a reason, nothing changes; with one, the destination's checkpoint is adopted.
    let no_reason = run(waymark(&state, "")
        .args(["checkpoint", "adopt"])
        .arg(&path)
        .args(["--stream", "orders"]))?;
    assert_eq!(no_reason.status.code(), Some(2));
    assert!(
        text(&no_reason.stderr).contains("--reason"),
        "{}",
        text(&no_reason.stderr)
    );
    let adopted = run(waymark(&state, "")
        .args(["checkpoint", "adopt"])
        .arg(&path)
        .args(["--stream", "orders", "--reason", "journal lost in the move"]))?;
    assert_eq!(adopted.status.code(), Some(0), "{}", text(&adopted.stderr));

    let out = run(waymark(&state, &sandbox.url).arg("run").arg(&path))?;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let all = runs(&state)?;
    assert_eq!(all.len(), 1);
    let events = journal(&state, all[0]["run"].as_str().ok_or("id")?)?;
    let started = &events[0]["event"]["RunStarted"];
    assert_eq!(
        started["start_from"]["Journal"]["run_id"],
        first_run.as_str()
    );
    assert_eq!(started["start_from"]["Journal"]["page"], 2);
    assert_eq!(started["start_cursor"], sandbox.cursor_after(200)?);
    assert_eq!(
        all[0]["records"], 300,
        "only the records after the destination's checkpoint were fetched"
    );
    assert_eq!(rows(&dir.path().join("shop.db"))?, sandbox.truth()?);
    Ok(())
}

#[test]
fn damaged_sled_files_never_panic() -> Result {
    let sandbox = Sandbox::start(&["--records", "500"])?;
    for (name, damage) in [("garbage", 0u8), ("truncated", 1)] {
        let dir = TempDir::new(name);
        let (path, state, _) = paused_run(&sandbox, &dir)?;
        let db = state.join("journal").join("db");
        let mut bytes = std::fs::read(&db)?;
        if damage == 0 {
            for b in bytes.iter_mut().skip(64).take(4096) {
                *b = 0xA5;
            }
        } else {
            bytes.truncate(bytes.len() / 3);
        }
        std::fs::write(&db, &bytes)?;
        // Never a panic: the run goes on (0), or stops on an unreadable journal (5, naming
        // `journal reset`), or on a lost checkpoint (2, naming `checkpoint adopt`); each
        // recovery the message names leads to a completed run.
        let mut code = None;
        for _ in 0..3 {
            let out = run(waymark(&state, &sandbox.url).arg("run").arg(&path))?;
            assert_no_panic(&out);
            code = out.status.code();
            let said = text(&out.stderr);
            match code {
                Some(0) => break,
                Some(5) => {
                    assert!(said.contains("waymark journal reset"), "{name}: {said}");
                    let reset = run(waymark(&state, "").args(["journal", "reset"]))?;
                    assert_eq!(reset.status.code(), Some(0));
                }
                Some(2) => {
                    assert!(said.contains("waymark checkpoint adopt"), "{name}: {said}");
                    let adopt = run(waymark(&state, "")
                        .args(["checkpoint", "adopt"])
                        .arg(&path)
                        .args(["--stream", "orders", "--reason", "journal damaged"]))?;
                    assert_eq!(adopt.status.code(), Some(0), "{}", text(&adopt.stderr));
                }
                other => panic!("{name}: exit {other:?}: {said}"),
            }
        }
        assert_eq!(code, Some(0), "{name}: no recovery completed the run");
        // Whatever survived, the destination ends exactly right.
        assert_eq!(
            rows(&dir.path().join("shop.db"))?,
            sandbox.truth()?,
            "{name}"
        );
    }
    Ok(())
}

#[test]
fn incomplete_or_damaged_sled_snapshots_are_moved_aside() -> Result {
    let sandbox = Sandbox::start(&["--records", "500"])?;
    let dir = TempDir::new("snapshot");
    let (path, state, run_id) = paused_run(&sandbox, &dir)?;
    let journal_dir = state.join("journal");
    // What a kill during snapshot generation leaves (spacejam/sled #1527).
    std::fs::write(
        journal_dir.join("snap.00000000DEADBEEF.generating"),
        b"half a snapshot",
    )?;
    // And a complete snapshot that is damaged.
    for entry in std::fs::read_dir(&journal_dir)? {
        let p = entry?.path();
        let name = p
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("")
            .to_string();
        if name.starts_with("snap.") && !name.ends_with(".generating") {
            let mut bytes = std::fs::read(&p)?;
            let mid = bytes.len() / 2;
            bytes[mid] ^= 0xFF;
            std::fs::write(&p, bytes)?;
        }
    }
    let out = run(waymark(&state, &sandbox.url).arg("run").arg(&path))?;
    assert_no_panic(&out);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(journal_dir
        .join("quarantine")
        .join("snap.00000000DEADBEEF.generating")
        .exists());
    // The same run finished: the journal survived without its snapshots.
    let all = runs(&state)?;
    assert_eq!(
        (all.len(), all[0]["run"].as_str()),
        (1, Some(run_id.as_str()))
    );
    assert_eq!(rows(&dir.path().join("shop.db"))?, sandbox.truth()?);
    Ok(())
}

/// Every file under `dir` and its bytes.
fn files(dir: &std::path::Path) -> Result<std::collections::BTreeMap<std::path::PathBuf, Vec<u8>>> {
    let mut all = std::collections::BTreeMap::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            all.extend(files(&path)?);
        } else {
            all.insert(path.clone(), std::fs::read(&path)?);
        }
    }
    Ok(all)
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) -> Result {
    for (path, bytes) in files(from)? {
        let target = to.join(path.strip_prefix(from)?);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(target, bytes)?;
    }
    Ok(())
}

#[test]
fn a_journal_that_lost_steps_is_detected_by_every_open_and_verify_changes_nothing() -> Result {
    let sandbox = Sandbox::start(&["--records", "500"])?;
    let dir = TempDir::new("rollback");
    let (path, state, run_id) = paused_run(&sandbox, &dir)?;
    let journal_dir = state.join("journal");
    let older = dir.path().join("older");
    copy_dir(&journal_dir, &older)?;
    let done = run(waymark(&state, &sandbox.url).arg("run").arg(&path))?;
    assert_eq!(done.status.code(), Some(0), "{}", text(&done.stderr));

    // What a damaged sled database that recovered to an older state looks like: the
    // journal as it was two pages in, although the run went on to complete.
    std::fs::remove_dir_all(&journal_dir)?;
    copy_dir(&older, &journal_dir)?;
    let before = files(&state)?;
    let verify = run(waymark(&state, "").args(["journal", "verify"]))?;
    assert_eq!(verify.status.code(), Some(5), "{}", text(&verify.stderr));
    let report = text(&verify.stdout);
    assert!(
        report.contains(&format!(
            "damaged: run {run_id} (shop/orders): the witness saw "
        )) && report.contains("waymark journal reset"),
        "{report}"
    );
    // LOCK says who last took the directory: the rest is the state, unchanged.
    let after = files(&state)?;
    let changed: Vec<_> = after
        .iter()
        .filter(|(path, bytes)| before.get(*path) != Some(*bytes) && !path.ends_with("LOCK"))
        .map(|(path, _)| path)
        .collect();
    assert!(changed.is_empty(), "verify changed {changed:?}");
    assert_eq!(after.len(), before.len(), "verify added or removed files");

    let refused = run(waymark(&state, &sandbox.url).arg("run").arg(&path))?;
    assert_eq!(refused.status.code(), Some(5), "{}", text(&refused.stderr));
    let said = text(&refused.stderr);
    assert!(
        said.contains("lost steps it had made durable")
            && said.contains(&format!("shop/orders: run {run_id} had journaled"))
            && said.contains("waymark journal reset"),
        "{said}"
    );
    // Read commands still answer, and say it first.
    let listed = run(waymark(&state, "").args(["runs", "--json"]))?;
    assert_eq!(listed.status.code(), Some(0), "{}", text(&listed.stderr));
    assert!(
        text(&listed.stderr).starts_with("warning: the journal in"),
        "{}",
        text(&listed.stderr)
    );

    // A deleted database is the same loss.
    std::fs::remove_dir_all(&journal_dir)?;
    let verify = run(waymark(&state, "").args(["journal", "verify"]))?;
    assert_eq!(verify.status.code(), Some(5), "{}", text(&verify.stdout));
    assert!(
        text(&verify.stdout).contains("the journal has no such run"),
        "{}",
        text(&verify.stdout)
    );

    // The way out the message names: reset, adopt the destination's checkpoint, run.
    let reset = run(waymark(&state, "").args(["journal", "reset"]))?;
    assert_eq!(reset.status.code(), Some(0), "{}", text(&reset.stderr));
    let adopt = run(waymark(&state, "")
        .args(["checkpoint", "adopt"])
        .arg(&path)
        .args(["--stream", "orders", "--reason", "journal rolled back"]))?;
    assert_eq!(adopt.status.code(), Some(0), "{}", text(&adopt.stderr));
    let again = run(waymark(&state, &sandbox.url).arg("run").arg(&path))?;
    assert_eq!(again.status.code(), Some(0), "{}", text(&again.stderr));
    assert_eq!(rows(&dir.path().join("shop.db"))?, sandbox.truth()?);
    Ok(())
}

#[test]
fn a_journal_held_by_a_process_whose_lock_file_was_removed_is_busy_not_damaged() -> Result {
    // Long enough to outlast both checks (each waits 5 s for sled's own lock); killed after.
    let sandbox = Sandbox::start(&["--records", "50000", "--latency", "100ms"])?;
    let dir = TempDir::new("unlocked");
    let path = workflow(dir.path(), 50, 3)?;
    let state = dir.path().join("state");
    let mut first = waymark(&state, &sandbox.url)
        .arg("run")
        .arg(&path)
        .spawn()?;
    assert!(
        wait_for_lock(&state, first.id()),
        "the run never took the lock"
    );
    // Its journal is open once it answers read commands.
    let socket = state.join("attach.sock");
    assert!(
        wait_for(|| socket.exists(), std::time::Duration::from_secs(20)),
        "the run never opened its journal"
    );
    std::fs::remove_file(state.join("LOCK"))?;
    for args in [
        &["journal", "reset"][..],
        &["run", path.to_str().ok_or("path")?],
    ] {
        let out = run(waymark(&state, &sandbox.url).args(args))?;
        assert_eq!(
            out.status.code(),
            Some(4),
            "{args:?}: {} {}",
            text(&out.stdout),
            text(&out.stderr)
        );
        assert!(
            text(&out.stderr).contains("was LOCK removed while it ran?"),
            "{}",
            text(&out.stderr)
        );
    }
    assert!(
        state.join("journal").is_dir(),
        "the journal was moved aside"
    );
    first.kill()?;
    first.wait()?;
    Ok(())
}

#[test]
fn a_damaged_audit_index_is_reported_with_what_to_do() -> Result {
    let sandbox = Sandbox::start(&["--records", "300"])?;
    let dir = TempDir::new("audit");
    let (path, state, _) = paused_run(&sandbox, &dir)?;
    std::fs::write(
        state.join("audit.db"),
        b"not a database at all, but long enough to look like one",
    )?;
    let verify = run(waymark(&state, "").args(["journal", "verify"]))?;
    assert_eq!(verify.status.code(), Some(5), "{}", text(&verify.stdout));
    assert!(
        text(&verify.stdout).contains("damaged: audit.db:")
            && text(&verify.stdout).contains("only affects `waymark trace`: delete it"),
        "{}",
        text(&verify.stdout)
    );
    let out = run(waymark(&state, &sandbox.url).arg("run").arg(&path))?;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("audit.db in the state directory is damaged")
            && text(&out.stderr).contains("delete it and run again"),
        "{}",
        text(&out.stderr)
    );
    std::fs::remove_file(state.join("audit.db"))?;
    let out = run(waymark(&state, &sandbox.url).arg("run").arg(&path))?;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    Ok(())
}
