//! A throwaway PostgreSQL cluster for the tests: `initdb` in a temporary directory and a
//! server on a free loopback port, shared by every test of the process, stopped when the
//! process ends (a shell wrapper waits on a pipe the process holds, then stops the server
//! and removes its directory). A test that stops and starts its server (`stop`, `start`)
//! takes a cluster of its own (`own`), so the tests sharing the other one never see it
//! down. Without PostgreSQL binaries the tests fail with an instruction (visible in the test
//! summary), unless `WAYMARK_SKIP_POSTGRES=1` asks to skip them.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::util::{Result, TempDir};

pub struct Postgres {
    pub port: u16,
    bin: PathBuf,
    wrapper: Mutex<Wrapper>,
    _dir: TempDir,
}

/// The shell wrapper running the server: a line `stop` on its stdin stops the server (fast
/// shutdown) and answers `stopped`, `start` starts it again; the end of its stdin (this
/// process ended, or the cluster was dropped) stops the server and removes its directory.
struct Wrapper {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
}

static SHARED: OnceLock<Option<Postgres>> = OnceLock::new();
static NEXT_DB: AtomicU32 = AtomicU32::new(0);

/// The shared cluster, or `None` (after saying so) when PostgreSQL is not installed.
pub fn shared() -> Option<&'static Postgres> {
    SHARED
        .get_or_init(|| match start() {
            Ok(pg) => pg,
            Err(e) => panic!("starting PostgreSQL for the tests failed: {e}"),
        })
        .as_ref()
}

/// A cluster of the caller's own (to stop and start it), stopped and removed when dropped;
/// `None` (after saying so) when PostgreSQL is not installed.
pub fn own() -> Option<Postgres> {
    match start() {
        Ok(pg) => pg,
        Err(e) => panic!("starting PostgreSQL for the tests failed: {e}"),
    }
}

fn find_bin() -> Option<PathBuf> {
    if let Ok(path) = std::env::var("PATH") {
        for dir in std::env::split_paths(&path) {
            if dir.join("initdb").is_file() && dir.join("postgres").is_file() {
                // Through a symlink (/usr/local/bin → /usr/lib/postgresql/15/bin), where
                // the other tools (pg_isready, createdb) are too.
                let real = std::fs::canonicalize(dir.join("initdb")).ok()?;
                return real.parent().map(Path::to_path_buf);
            }
        }
    }
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|bin| bin.join("initdb").is_file())
        .collect();
    versions.sort();
    versions.pop()
}

fn start() -> Result<Option<Postgres>> {
    let Some(bin) = find_bin() else {
        // A skip the test summary shows: without PostgreSQL the tests fail with this
        // instruction, unless the skip is asked for (then each test returns early).
        if std::env::var("WAYMARK_SKIP_POSTGRES").as_deref() == Ok("1") {
            eprintln!("PostgreSQL tests skipped (WAYMARK_SKIP_POSTGRES=1)");
            return Ok(None);
        }
        return Err(
            "no PostgreSQL binaries (initdb, postgres) on PATH or under \
                    /usr/lib/postgresql: install the `postgresql` package, or set \
                    WAYMARK_SKIP_POSTGRES=1 to skip the PostgreSQL tests knowingly"
                .into(),
        );
    };
    let dir = TempDir::new("pg");
    let data = dir.path().join("data");
    // The server offers TLS with a certificate for 127.0.0.1 (trusted via `ca_file`).
    let (cert, key) =
        crate::util::self_signed(dir.path(), "127.0.0.1", "IP:127.0.0.1,DNS:localhost")?;
    // initdb and postgres refuse to run as root: run them as the `postgres` user.
    let root = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false);
    let prefix: Vec<String> = match root {
        true => {
            let status = Command::new("chown")
                .args(["-R", "postgres"])
                .arg(dir.path())
                .status()?;
            if !status.success() {
                return Err("chown to the postgres user failed".into());
            }
            vec![
                "runuser".into(),
                "-u".into(),
                "postgres".into(),
                "--".into(),
            ]
        }
        false => Vec::new(),
    };
    let command = |program: &Path| {
        let mut all = prefix.clone();
        all.push(program.display().to_string());
        let mut cmd = Command::new(&all[0]);
        cmd.args(&all[1..]);
        cmd
    };
    let init = command(&bin.join("initdb"))
        .arg("-D")
        .arg(&data)
        .args(["-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"])
        .stdout(Stdio::null())
        .output()?;
    if !init.status.success() {
        return Err(format!("initdb: {}", String::from_utf8_lossy(&init.stderr)).into());
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    // The server runs until the test process (holding the wrapper's stdin) ends, or the
    // cluster is dropped; `stop` and `start` lines stop and start it meanwhile.
    let pid_file = data.join("postmaster.pid");
    let server = format!(
        "up() {{ {} {} -D '{}' -p {port} -k '{}' -c listen_addresses=127.0.0.1 -c fsync=off \
         -c full_page_writes=off -c synchronous_commit=off -c ssl=on \
         -c ssl_cert_file='{}' -c ssl_key_file='{}' >/dev/null & pid=$!; }}; \
         down() {{ kill -INT \"$(head -n 1 '{}' 2>/dev/null)\" 2>/dev/null; wait $pid; }}; \
         up; while read cmd; do case \"$cmd\" in stop) down; echo stopped ;; start) up ;; \
         esac; done; down; rm -rf '{}'",
        prefix.join(" "),
        bin.join("postgres").display(),
        data.display(),
        dir.path().display(),
        cert.display(),
        key.display(),
        pid_file.display(),
        dir.path().display()
    );
    let mut child = Command::new("sh")
        .args(["-c", &server])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let wrapper = Wrapper {
        stdin: child.stdin.take(),
        stdout: BufReader::new(child.stdout.take().ok_or("no stdout")?),
        child,
    };
    wait_ready(&bin, port)?;
    Ok(Some(Postgres {
        port,
        bin,
        wrapper: Mutex::new(wrapper),
        _dir: dir,
    }))
}

/// Waits until the server on `port` accepts connections (30 s at most).
fn wait_ready(bin: &Path, port: u16) -> Result {
    let began = Instant::now();
    loop {
        let ready = Command::new(bin.join("pg_isready"))
            .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-q"])
            .status()?;
        if ready.success() {
            return Ok(());
        }
        if began.elapsed() > Duration::from_secs(30) {
            return Err("PostgreSQL did not become ready in 30 s".into());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

impl Postgres {
    /// A new, empty database; its connection string.
    pub fn database(&self) -> Result<String> {
        let name = format!(
            "t{}_{}",
            std::process::id(),
            NEXT_DB.fetch_add(1, Ordering::SeqCst)
        );
        let out = Command::new(self.bin.join("createdb"))
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
                &name,
            ])
            .output()?;
        if !out.status.success() {
            return Err(format!("createdb: {}", String::from_utf8_lossy(&out.stderr)).into());
        }
        Ok(format!(
            "host=127.0.0.1 port={} user=postgres dbname={name} sslmode=disable",
            self.port
        ))
    }

    /// The server certificate, to trust it (`ca_file`).
    pub fn ca_file(&self) -> PathBuf {
        self._dir.path().join("cert.pem")
    }

    /// Stops the server (fast shutdown: open sessions are ended with `admin_shutdown`);
    /// returns once it is down. Only on a cluster of one's own ([`own`]).
    pub fn stop(&self) -> Result {
        let mut wrapper = self
            .wrapper
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let stdin = wrapper.stdin.as_mut().ok_or("the cluster is shut down")?;
        writeln!(stdin, "stop")?;
        stdin.flush()?;
        let mut line = String::new();
        wrapper.stdout.read_line(&mut line)?;
        match line.trim() {
            "stopped" => Ok(()),
            other => Err(format!("stopping PostgreSQL: the wrapper said {other:?}").into()),
        }
    }

    /// Starts the server [`stop`](Self::stop)ped, on the same port and data; returns once it
    /// accepts connections.
    pub fn start(&self) -> Result {
        {
            let mut wrapper = self
                .wrapper
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let stdin = wrapper.stdin.as_mut().ok_or("the cluster is shut down")?;
            writeln!(stdin, "start")?;
            stdin.flush()?;
        }
        wait_ready(&self.bin, self.port)
    }
}

impl Drop for Postgres {
    /// (Only a cluster of one's own is dropped.) Closing the wrapper's stdin stops the
    /// server and removes its directory; waits for that.
    fn drop(&mut self) {
        let wrapper = self
            .wrapper
            .get_mut()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        drop(wrapper.stdin.take());
        let _ = wrapper.child.wait();
    }
}

/// Runs `f` with a client connected to `url` (no TLS), on a runtime of its own: for tests
/// that are not async.
fn with_client<T>(
    url: &str,
    f: impl AsyncFnOnce(&tokio_postgres::Client) -> Result<T>,
) -> Result<T> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
        let driver = tokio::spawn(connection);
        let out = f(&client).await;
        drop(client);
        let _ = driver.await;
        out
    })
}

/// A table's rows (`"schema"."table"`): key → record, and how many are marked deleted.
pub fn table(url: &str, table: &str) -> Result<(BTreeMap<String, Value>, u64)> {
    with_client(url, async |client| {
        let mut live = BTreeMap::new();
        let mut deleted = 0;
        let sql = format!("SELECT key, record::text, deleted_at IS NOT NULL FROM {table}");
        for row in client.query(&sql, &[]).await? {
            match row.get::<_, bool>(2) {
                true => deleted += 1,
                false => {
                    let record: String = row.get(1);
                    live.insert(row.get::<_, String>(0), serde_json::from_str(&record)?);
                }
            }
        }
        Ok((live, deleted))
    })
}

/// The one number `sql` selects (`count(*)`, …).
pub fn number(url: &str, sql: &str) -> Result<i64> {
    with_client(url, async |client| {
        Ok(client.query_one(sql, &[]).await?.get::<_, i64>(0))
    })
}

/// Runs `sql` (one or more statements).
pub fn execute(url: &str, sql: &str) -> Result {
    with_client(url, async |client| Ok(client.batch_execute(sql).await?))
}
