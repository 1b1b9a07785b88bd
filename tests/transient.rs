//! Transient destination failures — a SQLite database locked by another connection, a
//! PostgreSQL server restarted — are retried with the run's backoff (journaled as
//! `write_retried`), and the run ends as if nothing had happened.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::util::*;

/// A `waymark run` in the background, its output collected as it comes; killed on drop.
struct Running {
    child: Child,
    stdout: Arc<Mutex<String>>,
    stderr: Arc<Mutex<String>>,
    readers: Vec<JoinHandle<()>>,
}

fn collect(mut from: impl Read + Send + 'static) -> (Arc<Mutex<String>>, JoinHandle<()>) {
    let text = Arc::new(Mutex::new(String::new()));
    let into = text.clone();
    let reader = std::thread::spawn(move || {
        let mut chunk = [0u8; 4096];
        while let Ok(n) = from.read(&mut chunk) {
            if n == 0 {
                break;
            }
            into.lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .push_str(&String::from_utf8_lossy(&chunk[..n]));
        }
    });
    (text, reader)
}

impl Running {
    fn start(cmd: &mut Command) -> Result<Self> {
        let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn()?;
        let (stdout, out) = collect(child.stdout.take().ok_or("no stdout")?);
        let (stderr, err) = collect(child.stderr.take().ok_or("no stderr")?);
        Ok(Running {
            child,
            stdout,
            stderr,
            readers: vec![out, err],
        })
    }

    /// Waits until its stderr (warnings: retries are logged there) holds `what`; an error
    /// with its output if it exits first or stays silent for 30 s.
    fn wait_to_say(&mut self, what: &str) -> Result {
        let mut exited = None;
        let said = wait_for(
            || {
                let said = self.stderr().contains(what);
                exited = self.child.try_wait().ok().flatten();
                said || exited.is_some()
            },
            Duration::from_secs(30),
        );
        match (said && self.stderr().contains(what), exited) {
            (true, _) => Ok(()),
            (false, Some(status)) => Err(format!(
                "the run ended ({status}) before saying {what:?}; stdout: {}; stderr: {}",
                self.stdout(),
                self.stderr()
            )
            .into()),
            (false, None) => Err(format!(
                "the run did not say {what:?} in 30 s; stderr: {}",
                self.stderr()
            )
            .into()),
        }
    }

    fn stdout(&self) -> String {
        self.stdout
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    fn stderr(&self) -> String {
        self.stderr
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Waits for it to exit (60 s at most): its exit code, stdout and stderr.
    fn finish(mut self) -> Result<(Option<i32>, String, String)> {
        let mut status = None;
        let exited = wait_for(
            || {
                status = self.child.try_wait().ok().flatten();
                status.is_some()
            },
            Duration::from_secs(60),
        );
        if !exited {
            return Err(format!("the run did not end in 60 s; stderr: {}", self.stderr()).into());
        }
        for reader in self.readers.drain(..) {
            let _ = reader.join();
        }
        Ok((status.and_then(|s| s.code()), self.stdout(), self.stderr()))
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `write_retried` events of the state directory's only run, and that run's id.
fn write_retries(state: &Path) -> Result<Vec<serde_json::Value>> {
    let all = runs(state)?;
    assert_eq!(all.len(), 1, "one run: {all:?}");
    let run_id = all[0]["run"].as_str().ok_or("run id")?;
    Ok(journal(state, run_id)?
        .into_iter()
        .filter(|e| e["step"] == "write_retried")
        .collect())
}

/// Sums a field of the `batch_written` acknowledgements of the state directory's only run.
fn acknowledged(state: &Path, field: &str) -> Result<u64> {
    let run_id = runs(state)?[0]["run"].as_str().ok_or("run id")?.to_string();
    Ok(journal(state, &run_id)?
        .iter()
        .filter_map(|e| e["event"]["BatchWritten"]["ack"][field].as_u64())
        .sum())
}

/// The `[source]` lines: `max_attempts` attempts per page (fetch or write), backoff from
/// `base` up to `cap` (full jitter).
fn retry_settings(max_attempts: u32, base: &str, cap: &str) -> String {
    format!(
        "timeout = \"5s\"\nmax_attempts = {max_attempts}\n\
         backoff = {{ base = \"{base}\", cap = \"{cap}\" }}"
    )
}

/// A run syncing the sandbox's 1000 orders (20 pages of 50; the sandbox answers in
/// 100 ms) into `dir/shop.db` with a `busy_timeout` of 100 ms and the retry settings
/// `source`, under way: returned once it has committed its first page. Also its state
/// directory and database.
fn sqlite_run_under_way(
    sandbox: &Sandbox,
    dir: &TempDir,
    source: &str,
) -> Result<(Running, PathBuf, PathBuf)> {
    let workflow = orders_workflow(dir.path(), 50, source, "", "busy_timeout = \"100ms\"")?;
    let state = dir.path().join("state");
    let db = dir.path().join("shop.db");
    let running = Running::start(waymark(&state, &sandbox.url).arg("run").arg(&workflow))?;
    // The database is opened here only once the run has set it up (its WAL file exists),
    // so as not to race that.
    let committed = || -> Result<i64> {
        let conn = rusqlite::Connection::open(&db)?;
        let sql = "SELECT count(*) FROM _waymark_checkpoints";
        Ok(conn.query_row(sql, [], |r| r.get(0))?)
    };
    assert!(
        wait_for(
            || db.with_extension("db-wal").exists() && committed().is_ok_and(|n| n > 0),
            Duration::from_secs(30)
        ),
        "the run never committed a page"
    );
    Ok((running, state, db))
}

/// Another connection holding the database's write lock (`BEGIN EXCLUSIVE`) until
/// `COMMIT`.
fn lock(db: &Path) -> Result<rusqlite::Connection> {
    let lock = rusqlite::Connection::open(db)?;
    lock.busy_timeout(Duration::from_secs(10))?;
    lock.execute_batch("BEGIN EXCLUSIVE")?;
    Ok(lock)
}

/// The run writes pages into SQLite while another connection holds the database's write
/// lock for 2 s: each write waits `busy_timeout` (100 ms), fails as busy, and is retried
/// after a backoff until the lock is released; the run then completes, exactly.
#[test]
fn a_sqlite_database_locked_by_another_connection_for_two_seconds_does_not_fail_the_run() -> Result
{
    let sandbox = Sandbox::start(&["--records", "1000", "--latency", "100ms"])?;
    let dir = TempDir::new("sqlite-locked");
    // Each refused attempt lasts the busy timeout (100 ms): 30 attempts outlast the 2 s
    // lock whatever the jitter draws, and waits of at most 100 ms keep the run quick.
    let source = retry_settings(30, "20ms", "100ms");
    let (mut running, state, db) = sqlite_run_under_way(&sandbox, &dir, &source)?;
    let lock = lock(&db)?;
    let locked = Instant::now();
    // The rest of the pages come at once: only the lock holds the run back.
    sandbox.set_faults("{}")?;
    // A write is refused while the database is locked.
    running.wait_to_say("writing page")?;
    // The lock is held for 2 s (the outage under test, not a synchronisation).
    std::thread::sleep(Duration::from_secs(2).saturating_sub(locked.elapsed()));
    lock.execute_batch("COMMIT")?;
    drop(lock);

    let (code, stdout, stderr) = running.finish()?;
    assert_eq!(code, Some(0), "{stdout}\n{stderr}");
    let truth = sandbox.truth()?;
    assert_eq!(truth.len(), 1000);
    assert!(rows(&db)? == truth, "SQLite differs from the source");
    let retries = write_retries(&state)?;
    eprintln!(
        "{} writes retried while locked; the first: {}",
        retries.len(),
        retries
            .first()
            .map_or(String::new(), |r| r["event"].to_string())
    );
    assert!(!retries.is_empty(), "no write_retried journaled");
    for retry in &retries {
        let error = retry["event"]["WriteRetried"]["error"]
            .as_str()
            .unwrap_or_default();
        assert!(error.contains("database is locked"), "{retry}");
    }
    assert_eq!(acknowledged(&state, "inserted")?, 1000, "each record once");
    Ok(())
}

/// The run writes pages into PostgreSQL; its server is stopped (fast shutdown: sessions
/// are ended) once a page is committed, and started again once a write has been refused:
/// the destination reconnects, the refused page is retried, and the table equals the
/// source — nothing missing, nothing written twice.
#[test]
fn a_postgres_server_restarted_mid_run_does_not_fail_the_run() -> Result {
    // A cluster of its own: the other tests' shared server never goes down.
    let Some(pg) = crate::pg::own() else {
        return Ok(());
    };
    let url = pg.database()?;
    let sandbox = Sandbox::start(&["--records", "1000", "--latency", "100ms"])?;
    let dir = TempDir::new("pg-restart");
    // A refused connection fails at once: the waits alone must outlast the outage (a stop
    // and a start, well under a second here); 29 waits of up to 500 ms add up to ~6 s.
    let source = retry_settings(30, "50ms", "500ms");
    let workflow = orders_workflow(dir.path(), 50, &source, "", "")?;
    let text = std::fs::read_to_string(&workflow)?.replace(
        "kind = \"sqlite\"\npath = \"shop.db\"",
        "kind = \"postgres\"\nurl = { env = \"WAYMARK_RESTART_PG\" }\nschema = \"shop\"",
    );
    std::fs::write(&workflow, text)?;
    let state = dir.path().join("state");
    let mut running = Running::start(
        waymark(&state, &sandbox.url)
            .env("WAYMARK_RESTART_PG", &url)
            .arg("run")
            .arg(&workflow),
    )?;

    let committed = || crate::pg::number(&url, "SELECT count(*) FROM shop._waymark_checkpoints");
    assert!(
        wait_for(|| committed().is_ok_and(|n| n > 0), Duration::from_secs(30)),
        "the run never committed a page"
    );
    pg.stop()?;
    sandbox.set_faults("{}")?;
    // A write is refused while the server is down.
    running.wait_to_say("writing page")?;
    pg.start()?;

    let (code, stdout, stderr) = running.finish()?;
    assert_eq!(code, Some(0), "{stdout}\n{stderr}");
    let truth = sandbox.truth()?;
    assert_eq!(truth.len(), 1000);
    let (live, deleted) = crate::pg::table(&url, "shop.orders")?;
    assert_eq!((live.len(), deleted), (1000, 0));
    assert!(live == truth, "PostgreSQL differs from the source");
    let retries = write_retries(&state)?;
    eprintln!(
        "{} writes retried around the restart; the first: {}",
        retries.len(),
        retries
            .first()
            .map_or(String::new(), |r| r["event"].to_string())
    );
    assert!(!retries.is_empty(), "no write_retried journaled");
    // Every record inserted once: a batch committed just before the shutdown is
    // recognised on retry, not written again.
    assert_eq!(acknowledged(&state, "inserted")?, 1000);
    assert_eq!(acknowledged(&state, "unchanged")?, 0);
    Ok(())
}

/// A run allowed one attempt per page meets a locked database: it fails at once, with the
/// destination's reason journaled; once the lock is gone, the next run finishes it exactly.
#[test]
fn a_write_refused_on_its_last_attempt_fails_the_run_with_the_destinations_reason() -> Result {
    let sandbox = Sandbox::start(&["--records", "1000", "--latency", "100ms"])?;
    let dir = TempDir::new("sqlite-locked-fail");
    let source = retry_settings(1, "20ms", "100ms");
    let (running, state, db) = sqlite_run_under_way(&sandbox, &dir, &source)?;
    // Locked until the run has ended.
    let lock = lock(&db)?;
    sandbox.set_faults("{}")?;
    let (code, stdout, stderr) = running.finish()?;
    lock.execute_batch("COMMIT")?;
    drop(lock);
    let said = format!("{stdout}\n{stderr}");
    assert_eq!(code, Some(1), "{said}");
    assert!(
        said.contains("database is locked") && !said.contains("inconsistent"),
        "{said}"
    );
    let failed = &runs(&state)?[0];
    assert_eq!(failed["status"], "failed", "{failed}");
    let events = journal(&state, failed["run"].as_str().ok_or("run id")?)?;
    let last = events.last().ok_or("empty journal")?;
    assert_eq!(last["step"], "run_failed", "{last}");
    assert!(
        last["event"]["RunFailed"]["error"]
            .as_str()
            .is_some_and(|e| e.contains("database is locked")),
        "{last}"
    );
    // Nothing lost: the next run starts again from the checkpoint and finishes.
    let workflow = dir.path().join("shop.toml");
    let out = run(waymark(&state, &sandbox.url).arg("run").arg(&workflow))?;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stdout));
    let truth = sandbox.truth()?;
    assert!(rows(&db)? == truth, "SQLite differs from the source");
    Ok(())
}
