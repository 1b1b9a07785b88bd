//! Bad input gets a clear error and a documented exit code, never a panic.

use std::path::Path;

use crate::util::*;

#[test]
fn a_malformed_workflow_names_file_line_and_column() -> Result {
    let dir = TempDir::new("malformed");
    let path = workflow(dir.path(), 100, 3)?;
    let original = std::fs::read_to_string(&path)?;
    std::fs::write(
        &path,
        original.replace("page_size = 100", "page_size = \"many\""),
    )?;
    let out = run(waymark(&dir.path().join("state"), "").arg("run").arg(&path))?;
    assert_no_panic(&out);
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains(&format!("{}:16:13:", path.display())),
        "{stderr}"
    );
    assert!(
        stderr
            .contains("stream.orders.page_size: expected a whole number, got the string \"many\""),
        "{stderr}"
    );

    std::fs::write(&path, original.replace("[destination]", "[destinaton]"))?;
    let out = run(waymark(&dir.path().join("state"), "").arg("run").arg(&path))?;
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("destinaton: unknown table; did you mean `destination`?"),
        "{}",
        text(&out.stderr)
    );
    Ok(())
}

#[test]
fn validate_reports_errors_with_the_key_and_warnings_and_schema_is_json() -> Result {
    let dir = TempDir::new("validate");
    let path = workflow(dir.path(), 100, 3)?;
    let original = std::fs::read_to_string(&path)?;
    let state = dir.path().join("state");
    let validate = |args: &[&str]| run(waymark(&state, "").arg("validate").args(args).arg(&path));

    let out = validate(&[])?;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("valid — sync shop, streams: orders (incremental, cursor)"),
        "{}",
        text(&out.stdout)
    );

    std::fs::write(
        &path,
        original.replace(
            "cursor_path = \"next_cursor\"",
            "cursor_pth = \"next_cursor\"",
        ),
    )?;
    let out = validate(&[])?;
    assert_no_panic(&out);
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "{}:17:33: stream.orders.pagination.cursor_pth: unknown key; did you mean \
             `cursor_path`? (kind = \"cursor\" takes cursor_path, cursor_param, cursor_in, \
             has_more_path, end_path, max_records and limit_param)",
            path.display()
        )),
        "{stderr}"
    );

    let offset =
        r#"pagination = { kind = "offset", offset_param = "offset", limit_param = "limit" }"#;
    let with_offset: String = original
        .lines()
        .map(|l| {
            if l.starts_with("pagination =") {
                offset
            } else {
                l
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(&path, with_offset)?;
    let out = validate(&[])?;
    assert_eq!(out.status.code(), Some(0));
    assert!(
        text(&out.stderr).contains("warning: ")
            && text(&out.stderr).contains(&format!(
                "{}:17:16: stream.orders.pagination.kind: page-number and offset",
                path.display()
            )),
        "{}",
        text(&out.stderr)
    );
    let strict = validate(&["--strict"])?;
    assert_eq!(strict.status.code(), Some(2));
    // It says why it fails, and never "valid".
    assert_eq!(
        text(&strict.stdout).trim(),
        format!(
            "{}: not valid with --strict: 1 warning (above)",
            path.display()
        )
    );

    let schema = run(waymark(&state, "").arg("schema"))?;
    let schema: serde_json::Value = serde_json::from_slice(&schema.stdout)?;
    assert_eq!(schema["additionalProperties"], false);
    assert!(schema["definitions"]["Pagination"]["properties"]["since_param"].is_object());
    Ok(())
}

#[test]
fn errors_say_each_cause_once_and_output_to_a_pipe_has_no_colour_codes() -> Result {
    let dir = TempDir::new("plain-output");
    let state = dir.path().join("state");
    let missing = dir.path().join("missing.toml");
    let out = run(waymark(&state, "").arg("run").arg(&missing))?;
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        text(&out.stderr),
        format!(
            "error: {}: No such file or directory (os error 2)\n",
            missing.display()
        )
    );
    // Logs at info level, written to a pipe: no escape codes.
    let path = workflow(dir.path(), 100, 2)?;
    let sandbox = Sandbox::start(&["--records", "250"])?;
    let out = run(waymark(&state, &sandbox.url)
        .env("WAYMARK_LOG", "info")
        .arg("run")
        .arg(&path))?;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("INFO"), "{}", text(&out.stderr));
    assert!(
        !out.stderr.contains(&0x1b) && !out.stdout.contains(&0x1b),
        "{}",
        text(&out.stderr)
    );
    Ok(())
}

#[test]
fn an_unreachable_api_fails_after_bounded_retries_and_resumes_later() -> Result {
    let dir = TempDir::new("unreachable");
    let path = workflow(dir.path(), 100, 2)?;
    let state = dir.path().join("state");
    // A port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let out = run(waymark(&state, &format!("http://127.0.0.1:{port}"))
        .arg("run")
        .arg(&path))?;
    assert_no_panic(&out);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("failed: page 1 failed after 2 attempts")
            && stdout.contains("could not connect"),
        "{stdout}"
    );

    // Once the API is up, the same run resumes and completes.
    let sandbox = Sandbox::start(&["--records", "250"])?;
    let out = run(waymark(&state, &sandbox.url).arg("run").arg(&path))?;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("completed — 250 records"),
        "{}",
        text(&out.stdout)
    );
    assert_eq!(runs(&state)?.len(), 1);
    Ok(())
}

#[test]
fn a_destination_that_rejects_writes_fails_the_run_cleanly() -> Result {
    let sandbox = Sandbox::start(&["--records", "250"])?;
    let dir = TempDir::new("reject");
    let path = workflow(dir.path(), 100, 2)?;
    let state = dir.path().join("state");
    let out = run(waymark(&state, &sandbox.url)
        .args(["run", "--max-pages", "1"])
        .arg(&path))?;
    assert_eq!(
        out.status.code(),
        Some(3),
        "paused after one page: {}",
        text(&out.stderr)
    );
    // Make the database read-only underneath the sync: the next write is refused.
    let conn = rusqlite::Connection::open(dir.path().join("shop.db"))?;
    conn.execute_batch("CREATE TRIGGER no_writes BEFORE INSERT ON orders BEGIN SELECT RAISE(ABORT, 'read-only replica'); END;")?;
    drop(conn);
    let out = run(waymark(&state, &sandbox.url).arg("run").arg(&path))?;
    assert_no_panic(&out);
    assert_eq!(out.status.code(), Some(1));
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("destination refused page 2") && stdout.contains("read-only replica"),
        "{stdout}"
    );
    assert_eq!(
        rows(&dir.path().join("shop.db"))?.len(),
        100,
        "nothing past the committed page"
    );
    // Fixed: the run resumes from its checkpoint and completes.
    rusqlite::Connection::open(dir.path().join("shop.db"))?
        .execute_batch("DROP TRIGGER no_writes;")?;
    let out = run(waymark(&state, &sandbox.url).arg("run").arg(&path))?;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(rows(&dir.path().join("shop.db"))?, sandbox.truth()?);
    Ok(())
}

#[test]
fn a_changed_workflow_is_refused_until_restored_or_fresh() -> Result {
    let sandbox = Sandbox::start(&["--records", "600"])?;
    let dir = TempDir::new("changed");
    let (path, state, _) = paused_run(&sandbox, &dir)?;
    let original = std::fs::read_to_string(&path)?;
    std::fs::write(
        &path,
        format!(
            "# a comment changes nothing\n{}",
            original.replace("page_size = 100", "page_size = 50")
        ),
    )?;
    let out = run(waymark(&state, &sandbox.url).arg("run").arg(&path))?;
    assert_no_panic(&out);
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("changed: stream.page_size: 100 -> 50") && stderr.contains("--fresh"),
        "{stderr}"
    );

    let out = run(waymark(&state, &sandbox.url)
        .args(["run", "--fresh"])
        .arg(&path))?;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let all = runs(&state)?;
    let statuses: Vec<_> = all
        .iter()
        .map(|r| r["status"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(statuses, ["abandoned", "completed"]);
    // The new run started at the abandoned run's committed cursor, not from the beginning.
    let events = journal(&state, all[1]["run"].as_str().ok_or("id")?)?;
    assert_eq!(
        events[0]["event"]["RunStarted"]["start_cursor"],
        sandbox.cursor_after(200)?
    );
    assert_eq!(rows(&dir.path().join("shop.db"))?, sandbox.truth()?);
    Ok(())
}

#[test]
fn completions_and_the_man_page_come_from_the_parser_and_global_options_are_grouped() -> Result {
    let dir = TempDir::new("shell");
    let state = dir.path().join("state");
    for shell in ["bash", "zsh", "fish"] {
        let out = run(waymark(&state, "").args(["completions", shell]))?;
        assert_eq!(out.status.code(), Some(0), "{shell}: {}", text(&out.stderr));
        let script = text(&out.stdout);
        assert!(
            script.contains("waymark")
                && script.contains("reconcile")
                && script.contains("state-dir"),
            "{shell}: {script}"
        );
    }
    let man = run(waymark(&state, "").arg("man"))?;
    assert_eq!(man.status.code(), Some(0));
    let page = text(&man.stdout);
    assert!(
        page.contains(".TH waymark 1") && page.contains("reconcile"),
        "{page}"
    );
    // Global options under their own heading, after the command's own.
    let help = text(&run(waymark(&state, "").args(["runs", "--help"]))?.stdout);
    let own = help.find("Options:").ok_or("no Options")?;
    let global = help.find("Global options:").ok_or("no Global options")?;
    assert!(
        own < global && help[global..].contains("--state-dir"),
        "{help}"
    );
    assert!(!help[..global].contains("--state-dir"), "{help}");
    // Not where they mean nothing: the sandbox keeps no state, `schema` logs nothing.
    let help = |args: &[&str]| -> Result<String> {
        Ok(text(&run(waymark(&state, "").args(args))?.stdout))
    };
    let sandbox = help(&["sandbox", "--help"])?;
    assert!(
        sandbox.contains("--port") && sandbox.contains("--log-level"),
        "{sandbox}"
    );
    assert!(!sandbox.contains("--state-dir"), "{sandbox}");
    let schema = help(&["schema", "--help"])?;
    assert!(
        !schema.contains("--log-format") && !schema.contains("Global options"),
        "{schema}"
    );
    // Hidden, still accepted where a script put it.
    let out = run(waymark(&state, "").args(["schema", "--log-format", "json"]))?;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(!state.exists());
    Ok(())
}

/// A state directory the user has to change is bad input (exit 2), said once with the path
/// and what to do: a file in its place, a file above it, a directory this user cannot
/// write to. (A read-only file system takes the same path as the unwritable directory; it
/// needs a mount to set up, so it is not done here.)
#[test]
fn an_unusable_state_directory_is_bad_input_said_once() -> Result {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let dir = TempDir::new("unusable-state");
    let path = workflow(dir.path(), 100, 2)?;
    let file = dir.path().join("state-file");
    std::fs::write(&file, "not a directory")?;
    let elsewhere = "or give another with --state-dir or WAYMARK_STATE_DIR";
    for (state, expected) in [
        (
            file.clone(),
            format!(
                "error: state directory {0} is a regular file, not a directory: move the file \
                 away, {elsewhere}\n",
                file.display()
            ),
        ),
        (
            file.join("sub"),
            format!(
                "error: state directory {0}/sub cannot be made: {0} is a regular file, not a \
                 directory: move the file away, {elsewhere}\n",
                file.display()
            ),
        ),
    ] {
        let out = run(waymark(&state, "http://127.0.0.1:1").arg("run").arg(&path))?;
        assert_no_panic(&out);
        assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
        assert_eq!(text(&out.stderr), expected);
    }
    assert_eq!(std::fs::read_to_string(&file)?, "not a directory");

    // A directory without write permission: root writes anyway, so there is nothing to see.
    let probe = dir.path().join("probe");
    std::fs::write(&probe, "")?;
    if std::fs::metadata(&probe)?.uid() == 0 {
        println!(
            "skipped the unwritable state directory: running as root, which may write anywhere"
        );
        return Ok(());
    }
    for fresh in [true, false] {
        let state = dir.path().join(format!("locked-{fresh}"));
        if !fresh {
            // One a run used: its LOCK and journal still open, but a run writes beside them
            // (rate/, dead_letters/, attach.sock), so it is refused before any request too.
            let out = run(waymark(&state, "http://127.0.0.1:1").arg("run").arg(&path))?;
            assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
        }
        std::fs::create_dir_all(&state)?;
        let before = names(&state)?;
        std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o500))?;
        let out = run(waymark(&state, "http://127.0.0.1:1").arg("run").arg(&path));
        std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o700))?;
        let out = out?;
        assert_no_panic(&out);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(
            stderr.starts_with(&format!(
                "error: state directory {} is not writable: ",
                state.display()
            )) && stderr.ends_with(&format!(
                "Permission denied (os error 13); make it writable for this user, {elsewhere}\n"
            )),
            "{stderr}"
        );
        assert_eq!(stderr.matches("os error").count(), 1, "{stderr}");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert_eq!(
            names(&state)?,
            before,
            "nothing created in {}",
            state.display()
        );
    }
    Ok(())
}

/// A SQLite destination path that is not a regular file is refused before SQLite opens it
/// (exit 2): nothing is created beside it (`/dev/null-journal`, `db-wal`), by `validate`
/// and `run` alike.
#[test]
fn a_sqlite_destination_that_is_not_a_regular_file_is_refused() -> Result {
    let dir = TempDir::new("sqlite-not-a-file");
    let path = workflow(dir.path(), 100, 2)?;
    let original = std::fs::read_to_string(&path)?;
    let folder = dir.path().join("db");
    std::fs::create_dir(&folder)?;
    let state = dir.path().join("state");
    let dev_before = names(Path::new("/dev"))?;
    let line = 1 + original
        .lines()
        .position(|l| l == "path = \"shop.db\"")
        .ok_or("no destination path")?;
    for (target, kind) in [
        ("/dev/null".to_string(), "a character device"),
        (folder.display().to_string(), "a directory"),
    ] {
        std::fs::write(
            &path,
            original.replace("path = \"shop.db\"", &format!("path = \"{target}\"")),
        )?;
        let expected = format!(
            "{}:{line}:1: destination.path: {target} is {kind}, not a regular file: give the \
             path of a SQLite database file (created if missing)",
            path.display()
        );
        for command in ["validate", "run"] {
            let out = run(waymark(&state, "http://127.0.0.1:1")
                .arg(command)
                .arg(&path))?;
            assert_no_panic(&out);
            assert_eq!(
                out.status.code(),
                Some(2),
                "{command}: {}",
                text(&out.stderr)
            );
            assert!(
                text(&out.stderr).contains(&expected),
                "{command}: {}",
                text(&out.stderr)
            );
        }
    }
    let beside_null: Vec<_> = names(Path::new("/dev"))?
        .into_iter()
        .filter(|f| f.starts_with("null-") && !dev_before.contains(f))
        .collect();
    assert!(beside_null.is_empty(), "created in /dev: {beside_null:?}");
    assert!(names(&folder)?.is_empty());
    let beside: Vec<_> = names(dir.path())?
        .into_iter()
        .filter(|f| f.starts_with("db-") || f.starts_with("shop.db"))
        .collect();
    assert!(beside.is_empty(), "{beside:?}");
    Ok(())
}

/// A base URL from the environment that is not http(s) is refused once expanded, naming
/// the key and the variable (exit 2), before any state is written.
#[test]
fn a_base_url_from_the_environment_must_be_http() -> Result {
    let dir = TempDir::new("file-url");
    let path = workflow(dir.path(), 100, 2)?;
    let state = dir.path().join("state");
    let out = run(waymark(&state, "file:///etc").arg("run").arg(&path))?;
    assert_no_panic(&out);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stderr),
        "error: source.base_url: `file:///etc` is not an http:// or https:// URL (its scheme \
         is `file`); it is `${WAYMARK_SANDBOX_URL}` expanded\n"
    );
    Ok(())
}

/// The names in a directory, sorted.
fn names(dir: &Path) -> Result<Vec<String>> {
    let mut names: Vec<String> = std::fs::read_dir(dir)?
        .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect::<std::io::Result<_>>()?;
    names.sort();
    Ok(names)
}
