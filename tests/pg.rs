//! A throwaway PostgreSQL cluster for the tests: `initdb` in a temporary directory and a
//! server on a free loopback port, shared by every test of the process, stopped when the
//! process ends (a shell wrapper waits on a pipe the process holds, then stops the server
//! and removes its directory). Without PostgreSQL
//! binaries the tests say loudly that they were skipped — unless
//! `WAYMARK_REQUIRE_POSTGRES=1` (CI sets it), which makes that a failure.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::util::{Result, TempDir};

pub struct Postgres {
    pub port: u16,
    bin: PathBuf,
    _guard: Mutex<Child>,
    _dir: TempDir,
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
        if std::env::var("WAYMARK_REQUIRE_POSTGRES").as_deref() == Ok("1") {
            return Err("no PostgreSQL binaries (initdb, postgres) found, and \
                        WAYMARK_REQUIRE_POSTGRES=1: install the `postgresql` package"
                .into());
        }
        eprintln!(
            "\n*** SKIPPED: PostgreSQL tests — no initdb/postgres on PATH or under \
             /usr/lib/postgresql. Install the `postgresql` package to run them. ***\n"
        );
        return Ok(None);
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
    // The server runs until the test process (holding the wrapper's stdin) ends.
    let server = format!(
        "{} {} -D '{}' -p {port} -k '{}' -c listen_addresses=127.0.0.1 -c fsync=off \
         -c full_page_writes=off -c synchronous_commit=off -c ssl=on \
         -c ssl_cert_file='{}' -c ssl_key_file='{}' & pid=$!; read _; kill -TERM $pid; \
         wait $pid; rm -rf '{}'",
        prefix.join(" "),
        bin.join("postgres").display(),
        data.display(),
        dir.path().display(),
        cert.display(),
        key.display(),
        dir.path().display()
    );
    let guard = Command::new("sh")
        .args(["-c", &server])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let began = Instant::now();
    loop {
        let ready = Command::new(bin.join("pg_isready"))
            .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-q"])
            .status()?;
        if ready.success() {
            break;
        }
        if began.elapsed() > Duration::from_secs(30) {
            return Err("PostgreSQL did not become ready in 30 s".into());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(Some(Postgres {
        port,
        bin,
        _guard: Mutex::new(guard),
        _dir: dir,
    }))
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
}
