//! Damaged journals: clear errors and exit codes, never a panic, never a silent restart.

use waymark_engine::journal::{Backend, Op, SledBackend};

use crate::util::*;

#[test]
fn a_flipped_bit_is_named_by_run_and_seq_with_the_way_out() -> Result {
    let sandbox = Sandbox::start(&["--records", "500"])?;
    let dir = TempDir::new("bitflip");
    let (path, state, run_id) = paused_run(&sandbox, &dir)?;
    {
        let backend = SledBackend::open(&state.join("journal"))?;
        let (key, mut value) = backend
            .scan(b"e")
            .filter_map(|r| r.ok())
            .find(|(k, _)| k.ends_with(&2u64.to_be_bytes()))
            .ok_or("seq 2 not found")?;
        value[8] ^= 0x10;
        backend.commit(vec![Op::Put(key, value)])?;
        backend.flush()?;
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
