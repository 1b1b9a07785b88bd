//! The state directory: one process at a time, and a size that stays bounded.

use std::time::Duration;

use crate::util::*;

#[test]
fn read_commands_never_create_a_state_directory() -> Result {
    let dir = TempDir::new("typo");
    let typo = dir.path().join("sate");
    for args in [
        &["runs"][..],
        &["status", "--json"],
        &["journal", "verify"],
        &["trace", "orders", "1"],
        &["dlq", "list"],
    ] {
        let out = run(waymark(&typo, "").args(args))?;
        assert_eq!(
            out.status.code(),
            Some(2),
            "{args:?}: {}",
            text(&out.stderr)
        );
        assert!(
            text(&out.stderr).starts_with(&format!(
                "error: no state directory at {}: no run has used it",
                typo.display()
            )),
            "{args:?}: {}",
            text(&out.stderr)
        );
        assert!(!typo.exists(), "{args:?} created {}", typo.display());
    }
    Ok(())
}

#[test]
fn the_nearest_state_directory_above_is_found_and_a_lost_checkpoint_names_the_one_used() -> Result {
    let sandbox = Sandbox::start(&["--records", "300"])?;
    let dir = TempDir::new("nearest");
    let sub = dir.path().join("workflows");
    std::fs::create_dir(&sub)?;
    let path = workflow(&sub, 100, 3)?;
    let here = |cwd: &std::path::Path| {
        let mut cmd = waymark(cwd, &sandbox.url);
        cmd.env_remove("WAYMARK_STATE_DIR").current_dir(cwd);
        cmd
    };
    let first = run(here(dir.path()).args(["run", "workflows/shop.toml"]))?;
    assert_eq!(first.status.code(), Some(0), "{}", text(&first.stderr));
    assert!(dir.path().join(".waymark/LOCK").is_file());
    // From inside `workflows/`, the run finds `../.waymark`: the same journal, no new
    // directory beside the file.
    let again = run(here(&sub).args(["run", "shop.toml"]))?;
    assert_eq!(again.status.code(), Some(0), "{}", text(&again.stderr));
    assert!(
        text(&again.stdout).contains("inserted 0, updated 0"),
        "{}",
        text(&again.stdout)
    );
    assert!(!sub.join(".waymark").exists(), "a stray state directory");
    let runs = run(here(&sub).args(["runs", "--json"]))?;
    assert_eq!(
        text(&runs.stdout).lines().count(),
        2,
        "{}",
        text(&runs.stdout)
    );

    // Another state directory has no journal of the stream: the error names it.
    let other = dir.path().join("other");
    let out = run(waymark(&other, &sandbox.url).arg("run").arg(&path))?;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    let stderr = text(&out.stderr);
    assert!(
        stderr.starts_with(&format!(
            "error: state directory {}: shop/orders: the journal has no checkpoint for this \
             stream, but its destination holds one: was the journal lost or reset, or did the \
             stream's runs use another state directory?",
            other.display()
        )),
        "{stderr}"
    );
    Ok(())
}

#[test]
fn a_second_process_is_told_who_holds_the_state_directory() -> Result {
    let sandbox = Sandbox::start(&["--records", "2000", "--latency", "100ms"])?;
    let dir = TempDir::new("busy");
    let path = workflow(dir.path(), 50, 3)?;
    let state = dir.path().join("state");
    let mut first = waymark(&state, &sandbox.url)
        .arg("run")
        .arg(&path)
        .spawn()?;
    let pid = first.id();
    assert!(
        wait_for_lock(&state, pid),
        "the first run never took the lock"
    );
    let out = run(waymark(&state, &sandbox.url).arg("run").arg(&path))?;
    assert_no_panic(&out);
    assert_eq!(out.status.code(), Some(4));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("is in use by another process (pid") && stderr.contains(&pid.to_string()),
        "{stderr}"
    );
    assert!(
        stderr.contains("waymark") && stderr.contains(" run "),
        "names the holder's command: {stderr}"
    );
    // A read command is answered by the holder.
    let out = run(waymark(&state, "").args(["runs", "--json"]))?;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains(r#""status":"running""#),
        "{}",
        text(&out.stdout)
    );
    first.kill()?;
    first.wait()?;
    // Once the holder is gone (even by SIGKILL), the directory is free again.
    let out = run(waymark(&state, "").arg("runs"))?;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    Ok(())
}

#[test]
fn a_sigterm_pauses_at_a_step_boundary() -> Result {
    let sandbox = Sandbox::start(&["--records", "2000", "--latency", "50ms"])?;
    let dir = TempDir::new("sigterm");
    let path = workflow(dir.path(), 50, 3)?;
    let state = dir.path().join("state");
    let child = waymark(&state, &sandbox.url)
        .arg("run")
        .arg(&path)
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    assert!(
        wait_for_lock(&state, child.id()),
        "the run never took the lock"
    );
    std::thread::sleep(Duration::from_millis(300));
    let status = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()?;
    assert!(status.success());
    let out = child.wait_with_output()?;
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("paused (interrupted)"),
        "{}",
        text(&out.stdout)
    );
    let out = run(waymark(&state, &sandbox.url).arg("run").arg(&path))?;
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(rows(&dir.path().join("shop.db"))?, sandbox.truth()?);
    Ok(())
}

/// sled keeps large values as blob files it never deletes; staged pages live in our own
/// files and journal values stay small, so the state directory stays bounded.
#[test]
fn the_state_directory_stays_bounded_over_2m_records_and_100_more_runs() -> Result {
    let sandbox = Sandbox::start(&["--records", "2000000"])?;
    let dir = TempDir::new("bounded");
    let path = workflow(dir.path(), 2000, 3)?;
    // The journal, staging and checkpoints must stay small; the audit index grows with the
    // records seen, bounded by its own retention (tested with `trace`): off here.
    let text_of = std::fs::read_to_string(&path)?;
    std::fs::write(
        &path,
        text_of.replace("name = \"shop\"", "name = \"shop\"\naudit_keep = \"0s\""),
    )?;
    let state = dir.path().join("state");
    let started = std::time::Instant::now();
    let out = run(waymark(&state, &sandbox.url).arg("run").arg(&path))?;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("completed — 2000000 records in 1000 pages"),
        "{}",
        text(&out.stdout)
    );
    let after_big = du(&state);
    eprintln!(
        "2M records synced in {:.1}s; state directory {} KiB",
        started.elapsed().as_secs_f64(),
        after_big / 1024
    );
    for _ in 0..100 {
        let out = run(waymark(&state, &sandbox.url).arg("run").arg(&path))?;
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    }
    let after_small = du(&state);
    eprintln!(
        "after 100 more runs: state directory {} KiB",
        after_small / 1024
    );
    assert_eq!(runs(&state)?.len(), 101);
    // 1000 pages of ~800 KB went through staging; none of it may stay.
    assert!(
        after_big < 16 << 20,
        "state directory is {after_big} bytes after 2M records"
    );
    assert!(
        after_small < 16 << 20,
        "state directory is {after_small} bytes after 100 more runs"
    );
    assert_eq!(std::fs::read_dir(state.join("staging"))?.count(), 0);
    assert!(
        !state.join("audit.db").exists(),
        "audit_keep = \"0s\" notes nothing"
    );
    Ok(())
}
