//! `waymark run --dry-run`: each stream's next run read from the API, nothing written.

use std::collections::BTreeMap;
use std::path::Path;

use crate::util::*;

/// The journals of every run, the destination's rows, the state directory's files.
type Left = (
    Vec<Vec<serde_json::Value>>,
    String,
    BTreeMap<String, Vec<u8>>,
);

/// What a run can leave behind: the journal of every run, the destination's rows, the
/// staged pages and the side stores (rate budget, dead letters), file by file.
fn everything(state: &Path, db: &Path) -> Result<Left> {
    let mut journals = Vec::new();
    for r in runs(state)? {
        journals.push(journal(state, r["run"].as_str().ok_or("run id")?)?);
    }
    let mut files = BTreeMap::new();
    for sub in ["staging", "rate", "dead_letters", "witness"] {
        let Ok(entries) = std::fs::read_dir(state.join(sub)) else {
            continue;
        };
        for entry in entries.flatten() {
            if entry.path().is_file() {
                files.insert(
                    format!("{sub}/{}", entry.file_name().to_string_lossy()),
                    std::fs::read(entry.path())?,
                );
            }
        }
    }
    Ok((journals, format!("{:?}", rows(db)?), files))
}

#[test]
fn a_dry_run_reads_the_next_run_from_the_api_and_writes_nothing() -> Result {
    let sandbox = Sandbox::start(&["--records", "1000"])?;
    let dir = TempDir::new("dry-run");
    let wf = workflow(dir.path(), 100, 3)?;
    let state = dir.path().join("state");
    let db = dir.path().join("shop.db");
    let dry = |extra: &[&str]| -> Result<serde_json::Value> {
        let out = run(waymark(&state, &sandbox.url)
            .args(["run", "--dry-run", "--json"])
            .args(extra)
            .arg(&wf))?;
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
        Ok(serde_json::from_str(text(&out.stdout).trim())?)
    };

    // Before any run: a first run's preview, and no state directory or database made.
    let first = dry(&[])?;
    assert_eq!(first["records"], 1000, "{first}");
    assert_eq!(first["writes"], 1000);
    assert_eq!(first["dead_letters"], serde_json::json!({}));
    assert_eq!(first["complete"], true);
    assert_eq!(first["resumes"], serde_json::Value::Null);
    assert_eq!(first["start_cursor"], serde_json::Value::Null);
    let truth = sandbox.truth()?;
    let samples = first["samples"].as_array().ok_or("samples")?;
    assert_eq!(samples.len(), 3);
    for s in samples {
        let key = s["key"].as_str().ok_or("key")?;
        assert_eq!(
            s["record"], truth[key],
            "a sample is the record as it would be written"
        );
        assert_eq!(s["version"], truth[key]["updated_at"]);
    }
    assert!(!state.exists() && !db.exists());

    // A real run paused after three pages...
    let out = run(waymark(&state, &sandbox.url)
        .args(["run", "--max-pages", "3"])
        .arg(&wf))?;
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    let paused = runs(&state)?[0]["run"]
        .as_str()
        .ok_or("run id")?
        .to_string();
    let before = everything(&state, &db)?;
    // ...is previewed as resumed from its last committed page: the other 700 records.
    let next = dry(&[])?;
    assert_eq!(next["resumes"].as_str(), Some(paused.as_str()), "{next}");
    assert_eq!(next["records"], 700, "{next}");
    assert_eq!(
        next["start_cursor"].as_str(),
        Some(sandbox.cursor_after(300)?.as_str())
    );
    let early = dry(&["--max-pages", "2"])?;
    assert_eq!(
        (early["pages"].as_u64(), early["records"].as_u64()),
        (Some(2), Some(200))
    );
    assert_eq!(early["complete"], false);
    let out = run(waymark(&state, &sandbox.url)
        .args(["run", "--dry-run"])
        .arg(&wf))?;
    let said = text(&out.stdout);
    assert!(
        said.contains(&format!("shop/orders: the next run resumes run {paused}")),
        "{said}"
    );
    assert!(said.contains("nothing was written"), "{said}");
    assert!(
        before == everything(&state, &db)?,
        "a dry run changed the state directory or the destination"
    );

    // The real run then does what the preview said.
    let out = run(waymark(&state, &sandbox.url).arg("run").arg(&wf))?;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let all = runs(&state)?;
    assert_eq!(all.len(), 1);
    assert_eq!(all[0]["run"].as_str(), Some(paused.as_str()));
    assert_eq!(rows(&db)?, truth);
    Ok(())
}

#[test]
fn a_dry_run_names_what_would_be_dead_lettered() -> Result {
    let sandbox = Sandbox::start(&["--records", "250"])?;
    let dir = TempDir::new("dry-run-dead");
    let wf = workflow(dir.path(), 100, 3)?;
    let text_before = std::fs::read_to_string(&wf)?;
    std::fs::write(
        &wf,
        text_before.replace("primary_key = \"id\"", "primary_key = \"order_id\""),
    )?;
    let out = run(waymark(&dir.path().join("state"), &sandbox.url)
        .args(["run", "--dry-run"])
        .arg(&wf))?;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let said = text(&out.stdout);
    assert!(said.contains("read 3 pages, 250 records (to the window's end): 0 to write (0 deletions), 250 to dead-letter"), "{said}");
    assert!(
        said.contains("250 × primary key `order_id` is missing or not a scalar"),
        "{said}"
    );
    Ok(())
}
