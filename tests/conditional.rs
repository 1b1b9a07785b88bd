//! Conditional requests (`conditional = true`): a page a completed run read is asked for
//! with its ETag; the API's `304 Not Modified` costs no records and no quota, and only a
//! completed run's ETags are ever sent (a page whose records may not be written is never
//! skipped).

use crate::util::*;

/// The sandbox's count of 304 answers.
fn not_modified(sandbox: &Sandbox) -> Result<u64> {
    sandbox.stats()?["not_modified"]
        .as_u64()
        .ok_or_else(|| "no not_modified in /_stats".into())
}

/// The run id of a `--json` summary.
fn summary_run(out: &std::process::Output) -> Result<String> {
    let summary: serde_json::Value = serde_json::from_str(text(&out.stdout).trim())?;
    Ok(summary["run"]
        .as_str()
        .ok_or("no run in the summary")?
        .to_string())
}

#[test]
fn unchanged_pages_are_not_modified_and_only_completed_runs_etags_are_sent() -> Result {
    let sandbox = Sandbox::start(&["--records", "600"])?;
    let dir = TempDir::new("conditional");
    // A full refresh (no window): the same requests every run.
    let wf = write_workflow(
        dir.path(),
        "timeout = \"5s\"",
        &stream_table(
            "orders",
            "/orders",
            "updated_at",
            150,
            r#"{ kind = "link_header", limit_param = "per_page" }"#,
            "conditional = true",
        ),
        "",
    )?;
    let state = dir.path().join("state");
    let db = dir.path().join("shop.db");
    let sync = |extra: &[&str]| -> Result<std::process::Output> {
        run(waymark(&state, &sandbox.url)
            .arg("run")
            .args(extra)
            .arg(&wf))
    };
    let ignored = |run: &str| -> Result<usize> {
        Ok(journal(&state, run)?
            .iter()
            .filter(|e| {
                e["step"] == "page_ignored"
                    && e["outcome"].as_str().is_some_and(|o| o.contains("304"))
            })
            .count())
    };

    let out = sync(&[])?;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(not_modified(&sandbox)?, 0);
    assert_eq!(rows(&db)?, sandbox.truth()?);

    // Nothing changed: every page is 304, nothing is written, the run completes.
    let out = sync(&["--json"])?;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(not_modified(&sandbox)?, 4, "4 pages, each not modified");
    let second = summary_run(&out)?;
    assert_eq!(ignored(&second)?, 4, "each 304 journaled");
    let summary: serde_json::Value = serde_json::from_str(text(&out.stdout).trim())?;
    assert_eq!(summary["records"], 0, "{summary}");

    // A change moves order 3 to the end: every page differs. A run paused after two
    // pages keeps no ETag; its resumption keeps those of the pages it read itself.
    sandbox.edit(&[], &[3], &[])?;
    let out = sync(&["--max-pages", "2"])?;
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    let out = sync(&[])?;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(rows(&db)?, sandbox.truth()?, "the update is written");
    assert_eq!(
        not_modified(&sandbox)?,
        4,
        "changed pages are answered in full"
    );

    // Next run: pages 1–2 were read by the paused process, whose ETags were not kept (its
    // run had not completed): asked in full. Pages 3–4: not modified.
    let out = sync(&[])?;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(not_modified(&sandbox)?, 6);
    assert_eq!(rows(&db)?, sandbox.truth()?);
    Ok(())
}
