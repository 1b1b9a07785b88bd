//! Every file in `workflows/` is validated (no warnings) and run against the sandbox.

use crate::util::*;

#[test]
fn every_example_workflow_syncs_the_sandbox_exactly() -> Result {
    let open = Sandbox::start(&["--records", "3000"])?;
    // Examples with `[source.auth]` read the token from WAYMARK_SANDBOX_TOKEN.
    let locked = Sandbox::start(&["--records", "3000", "--token", "example-token"])?;
    let examples = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/workflows"))?;
    let mut ran = 0;
    let mut databases = std::collections::BTreeSet::new();
    for entry in examples {
        let path = entry?.path();
        if path.extension().and_then(|e| e.to_str()) != Some("toml") {
            continue;
        }
        let sandbox = match std::fs::read_to_string(&path)?.contains("[source.auth]") {
            true => &locked,
            false => &open,
        };
        let truth = sandbox.truth()?;
        assert_eq!(truth.len(), 3000);
        // Each example writes its own file: trying a second one after the first reports
        // what it synced, not "inserted 0" into a shared table.
        let text_of = std::fs::read_to_string(&path)?;
        let db = text_of
            .lines()
            .filter_map(|l| l.trim().strip_prefix("path = \""))
            .filter_map(|l| l.strip_suffix('"'))
            .find(|p| p.ends_with(".db"))
            .ok_or("no SQLite destination path")?
            .to_string();
        assert!(
            databases.insert(db.clone()),
            "{db} is shared by two examples"
        );
        let dir = TempDir::new("example");
        let workflow = dir.path().join("workflow.toml");
        std::fs::copy(&path, &workflow)?;
        let state = dir.path().join("state");
        let checked = run(waymark(&state, "").arg("validate").arg(&workflow))?;
        assert_eq!(checked.status.code(), Some(0), "{}", text(&checked.stderr));
        assert_eq!(text(&checked.stderr), "", "{}: warnings", path.display());
        let waymark = |state: &std::path::Path, url: &str| {
            let mut cmd = waymark(state, url);
            cmd.env("WAYMARK_SANDBOX_TOKEN", "example-token");
            cmd
        };
        let out = run(waymark(&state, &sandbox.url).arg("run").arg(&workflow))?;
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}: {}",
            path.display(),
            text(&out.stderr)
        );
        let stdout = text(&out.stdout);
        assert!(stdout.contains("completed — 3000 records"), "{stdout}");
        assert_eq!(rows(&dir.path().join(&db))?, truth, "{}", path.display());

        // The next run re-reads only the overlap window and changes nothing.
        let again = run(waymark(&state, &sandbox.url).arg("run").arg(&workflow))?;
        assert_eq!(again.status.code(), Some(0), "{}", text(&again.stderr));
        assert!(
            text(&again.stdout).contains("inserted 0, updated 0"),
            "{}",
            text(&again.stdout)
        );
        assert_eq!(rows(&dir.path().join(&db))?, truth);
        ran += 1;
    }
    assert!(ran >= 1, "no example workflows found");
    Ok(())
}

#[test]
fn the_reference_documents_every_key_of_the_schema() -> Result {
    let out = run(waymark(std::path::Path::new("unused"), "").arg("schema"))?;
    let schema: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    fn keys(v: &serde_json::Value, out: &mut std::collections::BTreeSet<String>) {
        match v {
            serde_json::Value::Object(map) => {
                if let Some(serde_json::Value::Object(props)) = map.get("properties") {
                    out.extend(props.keys().cloned());
                }
                map.values().for_each(|v| keys(v, out));
            }
            serde_json::Value::Array(items) => items.iter().for_each(|v| keys(v, out)),
            _ => {}
        }
    }
    let mut all = std::collections::BTreeSet::new();
    keys(&schema, &mut all);
    assert!(all.len() > 30, "{all:?}");
    let reference = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/docs/workflow-reference.md"
    ))?;
    let undocumented: Vec<&String> = all
        .iter()
        .filter(|k| {
            !reference.contains(&format!("`{k}`"))
                && !reference.contains(&format!("`[{k}]`"))
                && !reference.contains(&format!("`[[{k}]]`"))
        })
        .collect();
    assert!(
        undocumented.is_empty(),
        "not in docs/workflow-reference.md: {undocumented:?}"
    );
    Ok(())
}
