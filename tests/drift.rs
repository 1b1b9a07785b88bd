//! Schema drift: the sandbox's orders change shape between runs (a field added, one
//! retyped, one dropped); each change is journaled once, shown by `status` and
//! `schema-history`, and each `schema_policy` does what it says.

use crate::util::*;

/// The orders workflow with `schema_policy` and a declared column on `total_cents`.
fn drifting_workflow(dir: &std::path::Path, policy: &str) -> Result<std::path::PathBuf> {
    orders_workflow(
        dir,
        100,
        "timeout = \"5s\"",
        &format!("schema_policy = \"{policy}\"\ncolumns = {{ total = {{ path = \"total_cents\", type = \"integer\" }} }}"),
        "",
    )
}

/// The `schema_changed` steps of every run's journal, as `waymark journal --json` prints
/// them.
fn schema_steps(state: &std::path::Path, sandbox: &Sandbox) -> Result<Vec<String>> {
    let runs = run(waymark(state, &sandbox.url).args(["runs", "--json"]))?;
    let mut steps = Vec::new();
    for line in text(&runs.stdout).lines() {
        let run_id: serde_json::Value = serde_json::from_str(line)?;
        let id = run_id["run"].as_str().ok_or("a run without an id")?;
        let out = run(waymark(state, &sandbox.url).args(["journal", id, "--json"]))?;
        steps.extend(
            text(&out.stdout)
                .lines()
                .filter(|l| l.contains("\"step\":\"schema_changed\""))
                .map(str::to_string),
        );
    }
    Ok(steps)
}

const CHANGES: [&str; 3] = [
    "new field `priority` (string)",
    "field `total_cents`: integer → integer|string (declared column `total`)",
    "field `note` gone (was string)",
];

#[test]
fn evolve_reports_each_change_once_and_writes_every_record() -> Result {
    let sandbox = Sandbox::start(&["--records", "300"])?;
    let dir = TempDir::new("drift-evolve");
    let file = drifting_workflow(dir.path(), "evolve")?;
    let state = dir.path().join("state");
    let sync = || run(waymark(&state, &sandbox.url).arg("run").arg(&file));
    let out = sync()?;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        schema_steps(&state, &sandbox)?.is_empty(),
        "the first records are the shape"
    );

    sandbox.drift(true)?;
    sandbox.edit(&[], &[4, 40, 140, 240], &[])?;
    let out = sync()?;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let steps = schema_steps(&state, &sandbox)?;
    assert_eq!(steps.len(), 1, "{steps:?}");
    for change in CHANGES {
        assert!(steps[0].contains(change), "{change}: {}", steps[0]);
    }
    // Written, in the new shape.
    let rows = rows(&dir.path().join("shop.db"))?;
    assert_eq!(rows["40"]["priority"], "high");

    // Status names the drift of the last run; schema-history keeps it.
    let status = run(waymark(&state, "").args(["status", "--json"]))?;
    let said = text(&status.stdout);
    assert!(said.contains("\"health\":\"schema_changed\""), "{said}");
    assert!(
        said.contains("new field `priority` (string) (evolved)"),
        "{said}"
    );
    let history = run(waymark(&state, "")
        .arg("schema-history")
        .arg(&file)
        .args(["--stream", "orders"]))?;
    assert_eq!(history.status.code(), Some(0), "{}", text(&history.stderr));
    let said = text(&history.stdout);
    for change in CHANGES {
        assert!(said.contains(&format!("{change} — evolved")), "{said}");
    }
    assert!(said.contains("priority"), "{said}");

    // Once: more drifted records change nothing, and the status is ok again.
    sandbox.edit(&[], &[5, 50], &[])?;
    let out = sync()?;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(schema_steps(&state, &sandbox)?.len(), 1);
    let status = run(waymark(&state, "").args(["status", "--json"]))?;
    assert!(
        text(&status.stdout).contains("\"health\":\"ok\""),
        "{}",
        text(&status.stdout)
    );
    Ok(())
}

#[test]
fn freeze_dead_letters_what_does_not_fit_and_fail_stops_before_writing() -> Result {
    for policy in ["freeze", "fail"] {
        let sandbox = Sandbox::start(&["--records", "300"])?;
        let dir = TempDir::new(&format!("drift-{policy}"));
        let file = drifting_workflow(dir.path(), policy)?;
        let state = dir.path().join("state");
        let sync = || run(waymark(&state, &sandbox.url).arg("run").arg(&file));
        let out = sync()?;
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
        let before = rows(&dir.path().join("shop.db"))?;

        sandbox.drift(true)?;
        sandbox.edit(&[], &[4, 40, 140], &[])?;
        let out = sync()?;
        let steps = schema_steps(&state, &sandbox)?;
        assert_eq!(steps.len(), 1, "{policy}: {steps:?}");
        let after = rows(&dir.path().join("shop.db"))?;
        match policy {
            "freeze" => {
                assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
                assert!(steps[0].contains("\"refused\":false"), "{}", steps[0]);
                // Each drifted record is a dead letter; the rows stay as they were.
                assert!(
                    text(&out.stdout).contains("dead-lettered 3"),
                    "{}",
                    text(&out.stdout)
                );
                assert_eq!(after, before);
                let shown =
                    run(waymark(&state, "").args(["dlq", "show", "--stream", "orders", "--json"]))?;
                let letters: Vec<serde_json::Value> = text(&shown.stdout)
                    .lines()
                    .map(serde_json::from_str)
                    .collect::<std::result::Result<_, _>>()?;
                assert_eq!(letters.len(), 3);
                let why = "field `total_cents` is string (the frozen schema has integer); \
                           unknown field `priority` (schema_policy = \"freeze\")";
                assert!(letters.iter().all(|l| l["reason"] == why), "{letters:?}");
            }
            _ => {
                // The run fails before the page is written; the checkpoint stays, and the
                // next run fails the same way until the policy changes.
                assert_eq!(
                    out.status.code(),
                    Some(1),
                    "{}{}",
                    text(&out.stdout),
                    text(&out.stderr)
                );
                assert!(steps[0].contains("\"refused\":true"), "{}", steps[0]);
                assert_eq!(after, before, "nothing of the drifted page was written");
                let again = sync()?;
                assert_eq!(again.status.code(), Some(1));
                assert_eq!(rows(&dir.path().join("shop.db"))?, before);
                let evolve = std::fs::read_to_string(&file)?.replace("\"fail\"", "\"evolve\"");
                std::fs::write(&file, evolve)?;
                let out = sync()?;
                assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
                assert_eq!(rows(&dir.path().join("shop.db"))?["40"]["priority"], "high");
            }
        }
    }
    Ok(())
}
