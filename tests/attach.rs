//! Read commands while a run holds the state directory: the running process answers them
//! over its socket, with exactly what the same commands print once the directory is free;
//! `journal --follow` without a run id follows the run in progress to its end.

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use crate::resilience::{page, workflow_text};
use crate::scripted::{records, Reply, Server};
use crate::util::{bin, text, wait_for, Result, TempDir};

/// The read commands compared, each with `--json` where it has one.
const READS: &[&[&str]] = &[
    &["runs", "--json"],
    &["runs"],
    &["status", "--json"],
    &["journal", "RUN", "--json"],
    &["journal", "verify"],
    &["trace", "items", "2", "--json"],
    &["dlq", "list", "--json"],
    &["dlq", "show", "--stream", "items", "--json"],
    // A relative path: the holder reads it from the caller's directory.
    &["checkpoint", "show", "wf.toml", "--json"],
];

fn waymark(dir: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(bin());
    cmd.args(args)
        .current_dir(dir)
        .env("WAYMARK_STATE_DIR", dir.join("state"))
        .env("WAYMARK_LOG", "warn")
        .env_remove("RUST_BACKTRACE")
        .stdin(Stdio::null());
    cmd
}

fn read(dir: &Path, args: &[&str], run: &str) -> Result<Output> {
    let args: Vec<&str> = args
        .iter()
        .map(|a| if *a == "RUN" { run } else { a })
        .collect();
    Ok(waymark(dir, &args).output()?)
}

/// What a read command answered, with what depends on the clock (`status`'s lag in
/// seconds) left out.
fn answer(out: &Output) -> (Option<i32>, String) {
    let stdout = text(&out.stdout)
        .lines()
        .map(
            |line| match serde_json::from_str::<serde_json::Value>(line) {
                Ok(serde_json::Value::Object(mut o)) => {
                    o.remove("lag_s");
                    serde_json::Value::Object(o).to_string()
                }
                _ => line.to_string(),
            },
        )
        .collect::<Vec<_>>()
        .join("\n");
    (out.status.code(), stdout)
}

/// Lets requests through up to a cursor; the page at the gate waits until it opens further.
struct Gate(Arc<AtomicU64>);

impl Gate {
    fn open_to(&self, cursor: u64) {
        self.0.store(cursor, Ordering::SeqCst);
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        self.open_to(u64::MAX);
    }
}

fn kill(mut child: Child) -> Result {
    child.kill()?;
    child.wait()?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn read_commands_during_a_run_answer_what_they_answer_after_it() -> Result {
    let tmp = TempDir::new("attach");
    let dir = tmp.path();
    let gate = Gate(Arc::new(AtomicU64::new(7)));
    let open = gate.0.clone();
    let asked = Arc::new(Mutex::new(Vec::new()));
    let log = asked.clone();
    let server = Server::start(
        || 0,
        move |r| {
            let n: u64 = r.param("cursor").map_or(1, |c| c.parse().unwrap_or(1));
            log.lock().unwrap_or_else(PoisonError::into_inner).push(n);
            while n > open.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(5));
            }
            match n {
                // A record without its key: a dead letter.
                1 => Reply::json(
                    200,
                    format!(
                        r#"{{"data":{},"next":"4"}}"#,
                        records(1, 3).replace(r#"{"id":3,"#, "{")
                    ),
                ),
                16 => page(16, None),
                n => page(n, Some(&(n + 3).to_string())),
            }
        },
    )
    .await?;
    // Requests wait at the gate as long as the test needs: no timeout, no retry.
    let workflow =
        workflow_text(&server.url, "", "").replace(r#"timeout = "2s""#, r#"timeout = "10m""#);
    std::fs::write(dir.join("wf.toml"), workflow)?;

    // Pages 1 and 2 (cursors 1 and 4) are written and committed, and the run pauses at
    // its page budget; resumed, it waits for the page at cursor 7 with nothing else in
    // flight.
    let paused = waymark(dir, &["run", "wf.toml", "--max-pages", "2"]).output()?;
    assert_eq!(paused.status.code(), Some(3), "{}", text(&paused.stderr));
    let child = waymark(dir, &["run", "wf.toml"]).spawn()?;
    let asked = |cursor: u64| {
        let asked = asked.clone();
        move || {
            asked
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .contains(&cursor)
        }
    };
    assert!(
        wait_for(asked(7), Duration::from_secs(30)),
        "page 3 never asked"
    );
    let mut run = String::new();
    let settled = wait_for(
        || {
            let Ok(out) = read(dir, &["runs", "--json"], "") else {
                return false;
            };
            let line: serde_json::Value =
                serde_json::from_str(text(&out.stdout).trim()).unwrap_or_default();
            run = line["run"].as_str().unwrap_or_default().to_string();
            line["pages"] == 2
        },
        Duration::from_secs(30),
    );
    assert!(settled, "page 2 never committed");

    let during: Vec<(Option<i32>, String)> = READS
        .iter()
        .map(|args| read(dir, args, &run).map(|o| answer(&o)))
        .collect::<Result<_>>()?;
    // The run was running and had done real work.
    assert!(
        during[0].1.contains(r#""status":"running""#),
        "{:?}",
        during[0]
    );
    assert!(during[3].1.contains("cursor_committed"), "{:?}", during[3]);
    assert!(during[6].1.contains(r#""letters":1"#), "{:?}", during[6]);
    assert!(during[8].1.contains(r#""cursor":"7""#), "{:?}", during[8]);
    // A command that writes still waits for the directory.
    let reset = waymark(dir, &["journal", "reset"]).output()?;
    assert_eq!(reset.status.code(), Some(4), "{}", text(&reset.stderr));

    // Killed where it waited, the run leaves the journal as it was: the same commands,
    // reading the free directory themselves, answer the same.
    kill(child)?;
    for (args, during) in READS.iter().zip(&during) {
        let after = answer(&read(dir, args, &run)?);
        assert_eq!(&after, during, "waymark {}", args.join(" "));
    }

    // Resumed, it waits at cursor 13; `journal --follow` without an id follows it to its
    // end and prints what the journal holds afterwards.
    gate.open_to(10);
    let child = waymark(dir, &["run", "wf.toml"])
        .stderr(Stdio::piped())
        .spawn()?;
    if !wait_for(asked(13), Duration::from_secs(30)) {
        let out = child.wait_with_output()?;
        return Err(format!("page 5 never asked: {}", text(&out.stderr)).into());
    }
    let mut follow = waymark(dir, &["journal", "--follow", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let stdout = follow.stdout.take().ok_or("no stdout")?;
    let (lines, printed) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(|l| l.ok())
        {
            let _ = lines.send(line);
        }
    });
    // Following (the run's first steps are printed) before the run goes on.
    let first = printed.recv_timeout(Duration::from_secs(30))?;
    gate.open_to(u64::MAX);
    let followed = follow.wait_with_output()?;
    let _ = reader.join();
    let followed_lines: Vec<String> = std::iter::once(first).chain(printed.try_iter()).collect();
    let ran = child.wait_with_output()?;
    assert_eq!(ran.status.code(), Some(0), "{}", text(&ran.stderr));
    assert_eq!(
        followed.status.code(),
        Some(0),
        "{}",
        text(&followed.stderr)
    );
    let journal = read(dir, &["journal", "RUN", "--json"], &run)?;
    let journal_lines: Vec<String> = text(&journal.stdout).lines().map(String::from).collect();
    assert_eq!(followed_lines, journal_lines);
    assert!(text(&journal.stdout).contains("run_completed"));
    Ok(())
}
