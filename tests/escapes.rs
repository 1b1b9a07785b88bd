//! The real binary against an API whose keys, cursors and error bodies carry terminal
//! control sequences (set the window title, clear the screen, an 8-bit CSI): every text
//! output shows them escaped, and the `--json` outputs keep them exactly.

use std::path::Path;
use std::process::Output;
use std::sync::atomic::{AtomicBool, Ordering};

use serde_json::{json, Value};

use crate::resilience::workflow_text;
use crate::scripted::{Background, Reply, Request};
use crate::util::{assert_no_panic, bin, text, Result, TempDir};

/// Sets the terminal's title, clears the screen, then an 8-bit CSI (U+009B) and a DEL.
const HOSTILE: &str = "\x1b]0;pwned\x07\x1b[2J\u{9b}31m\u{7f}";
/// How text outputs show [`HOSTILE`].
const SHOWN: &str = r"\x1b]0;pwned\x07\x1b[2J\u009b31m\u007f";

fn key() -> String {
    format!("k{HOSTILE}1")
}

fn letter_key() -> String {
    format!("d{HOSTILE}2")
}

fn cursor() -> String {
    format!("c{HOSTILE}3")
}

/// Runs `waymark` on the state directory in `dir` (debug logs, step events on).
fn waymark(dir: &Path, args: &[&str]) -> Result<Output> {
    let out = std::process::Command::new(bin())
        .env("WAYMARK_STATE_DIR", dir.join("state"))
        .env("WAYMARK_LOG", "debug,waymark_step=info")
        .env_remove("RUST_BACKTRACE")
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()?;
    assert_no_panic(&out);
    Ok(out)
}

/// No control character that drives a terminal, in the output of `what`.
fn assert_inert(what: &str, out: &Output) {
    for (stream, bytes) in [("stdout", &out.stdout), ("stderr", &out.stderr)] {
        for bad in [0x1b, 0x07, 0x7f, 0x9b] {
            assert!(
                !bytes.contains(&bad),
                "{what}: raw byte {bad:#04x} on {stream}: {}",
                text(bytes).escape_debug()
            );
        }
    }
}

/// The JSON lines of `what`'s stdout.
fn json_lines(what: &str, out: &Output) -> Result<Vec<Value>> {
    assert_eq!(out.status.code(), Some(0), "{what}: {}", text(&out.stderr));
    text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).map_err(|e| format!("{what}: {e}: {l}").into()))
        .collect()
}

#[test]
fn control_characters_from_an_api_are_escaped_in_text_and_exact_in_json() -> Result {
    let dir = TempDir::new("escapes");
    let first = AtomicBool::new(true);
    let server = Background::start(move |r: &Request| {
        match () {
            // The second page: a 400 whose body would retitle and clear the terminal.
            _ if r.param("cursor").is_some() => {
                Reply::json(400, format!("{{\"error\":\"no {HOSTILE}\"}}"))
            }
            // The first attempt at the first page: a 500 saying the same.
            _ if first.swap(false, Ordering::SeqCst) => Reply::json(500, format!("boom {HOSTILE}")),
            _ => Reply::json(
                200,
                json!({
                    "data": [
                        {"id": key(), "updated_at": "2026-01-01T00:00:01Z", "name": HOSTILE},
                        // No version: a dead letter, under a hostile key.
                        {"id": letter_key(), "name": HOSTILE},
                    ],
                    "next": cursor(),
                })
                .to_string(),
            ),
        }
    })?;
    let workflow = workflow_text(
        server.url(),
        "max_attempts = 3\nbackoff = { base = \"10ms\", cap = \"20ms\" }",
        "cursor_field = \"updated_at\"",
    );
    let file = dir.path().join("workflow.toml");
    std::fs::write(&file, workflow)?;
    let wf = file.to_string_lossy().to_string();

    let ran = waymark(dir.path(), &["run", &wf])?;
    assert_eq!(ran.status.code(), Some(1), "{}", text(&ran.stderr));
    assert_inert("run", &ran);
    let said = text(&ran.stdout);
    assert!(
        said.contains(&format!(
            "HTTP 400 Bad Request: {{\"error\":\"no {SHOWN}\"}}"
        )),
        "{said}"
    );
    let run = crate::util::runs(&dir.path().join("state"))?[0]["run"]
        .as_str()
        .ok_or("no run id")?
        .to_string();

    // Text: escaped, and shown (not dropped).
    let key = key();
    let text_outputs: [(&str, Vec<&str>, Option<String>); 8] = [
        ("runs", vec!["runs"], None),
        ("runs <id>", vec!["runs", &run], Some(format!("c{SHOWN}3"))),
        ("status", vec!["status"], Some(format!("no {SHOWN}"))),
        (
            "journal <id>",
            vec!["journal", &run],
            Some(format!("boom {SHOWN}")),
        ),
        (
            "trace",
            vec!["trace", "items", &key],
            Some(format!("key k{SHOWN}1")),
        ),
        ("dlq list", vec!["dlq", "list"], None),
        (
            "dlq show",
            vec!["dlq", "show", "--stream", "items"],
            Some(format!("key d{SHOWN}2")),
        ),
        (
            "checkpoint show",
            vec!["checkpoint", "show", &wf],
            Some(format!("cursor c{SHOWN}3")),
        ),
    ];
    for (what, args, shows) in &text_outputs {
        let out = waymark(dir.path(), args)?;
        assert_inert(what, &out);
        if let Some(shown) = shows {
            let said = text(&out.stdout);
            assert!(said.contains(shown.as_str()), "{what}: {said}");
        }
    }

    // JSON: exact. (The run's summary comes from running it again: it fails the same way.)
    let again = waymark(dir.path(), &["run", &wf, "--json"])?;
    assert_eq!(again.status.code(), Some(1), "{}", text(&again.stderr));
    assert_inert(
        "run --json (stderr)",
        &Output {
            stdout: vec![],
            ..again.clone()
        },
    );
    let summary: Value = serde_json::from_str(text(&again.stdout).trim())?;
    assert_eq!(summary["cursor_end"], cursor(), "{summary}");
    let runs = json_lines("runs --json", &waymark(dir.path(), &["runs", "--json"])?)?;
    assert_eq!(runs[0]["cursor_end"], cursor());
    let one = json_lines(
        "runs <id> --json",
        &waymark(dir.path(), &["runs", &run, "--json"])?,
    )?;
    assert_eq!(one[0]["cursor_end"], cursor());
    let status = waymark(dir.path(), &["status", "--json"])?;
    let status: Value = serde_json::from_str(text(&status.stdout).trim())?;
    assert_eq!(status["cursor"], cursor(), "{status}");
    let steps = json_lines(
        "journal --json",
        &waymark(dir.path(), &["journal", &run, "--json"])?,
    )?;
    let next: Vec<&Value> = steps
        .iter()
        .filter(|s| s["step"] == "page_fetched")
        .map(|s| &s["event"]["PageFetched"]["next_cursor"])
        .collect();
    assert_eq!(next.first().copied(), Some(&json!(cursor())), "{steps:?}");
    let letters = json_lines(
        "dlq show --json",
        &waymark(dir.path(), &["dlq", "show", "--stream", "items", "--json"])?,
    )?;
    assert_eq!(letters[0]["key"], letter_key());
    let record: Value = serde_json::from_str(letters[0]["record"].as_str().unwrap_or(""))?;
    assert_eq!(record["name"], HOSTILE);
    let trace = json_lines(
        "trace --json",
        &waymark(dir.path(), &["trace", "items", &key, "--json"])?,
    )?;
    assert!(!trace.is_empty(), "the key was not traced");
    Ok(())
}
