#![allow(dead_code)] // Each benchmark uses a part of this.
//! What the benchmarks that drive the real binary share: the binary, settings from the
//! environment, the sandbox, and the runs of a state directory.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

pub type Result<T = ()> = std::result::Result<T, Box<dyn std::error::Error>>;

/// The `waymark` binary under test.
pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_waymark"))
}

/// The number in the environment variable `name`, else `default`.
pub fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Kills the child when dropped.
pub struct Killed(pub Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `waymark sandbox <args>` on a free port: the process and its URL.
pub fn sandbox(args: &[&str]) -> Result<(Killed, String)> {
    let mut child = Command::new(bin())
        .args(["sandbox", "--port", "0", "--quiet"])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let mut line = String::new();
    BufReader::new(child.stdout.take().ok_or("stdout")?).read_line(&mut line)?;
    let url = line.trim().rsplit(' ').next().ok_or("address")?.to_string();
    Ok((Killed(child), url))
}

/// The sandbox's `/_stats` (what it served, refused and when).
pub fn stats(url: &str) -> Result<serde_json::Value> {
    use std::io::{Read, Write};
    let host = url.trim_start_matches("http://");
    let mut socket = std::net::TcpStream::connect(host)?;
    write!(
        socket,
        "GET /_stats HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )?;
    let mut reply = String::new();
    socket.read_to_string(&mut reply)?;
    let body = reply.split_once("\r\n\r\n").ok_or("no body")?.1;
    Ok(serde_json::from_str(body)?)
}

/// `waymark serve <target> --max-concurrent-runs <runs>` in `dir` against the sandbox at
/// `url`, its state in `state`, quiet.
pub fn serve(dir: &Path, target: &str, runs: u64, state: &Path, url: &str) -> Result<Killed> {
    let runs = runs.to_string();
    serve_with(
        dir,
        &[target, "--max-concurrent-runs", &runs],
        &[],
        state,
        url,
    )
}

/// `waymark serve <args>` in `dir` with `env` set, against the sandbox at `url`, its state
/// in `state`, quiet.
pub fn serve_with(
    dir: &Path,
    args: &[&str],
    env: &[(&str, &str)],
    state: &Path,
    url: &str,
) -> Result<Killed> {
    let child = Command::new(bin())
        .args(["serve", "--listen", "127.0.0.1:0"])
        .args(args)
        .envs(env.iter().copied())
        .current_dir(dir)
        .env("WAYMARK_STATE_DIR", state)
        .env("WAYMARK_SANDBOX_URL", url)
        .env("WAYMARK_LOG", "error")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    Ok(Killed(child))
}

/// Every run in `state`, as `runs --json` prints them.
pub fn runs(state: &Path) -> Result<Vec<serde_json::Value>> {
    let out = Command::new(bin())
        .args(["runs", "--json", "--limit", "1000000"])
        .env("WAYMARK_STATE_DIR", state)
        .output()?;
    Ok(String::from_utf8(out.stdout)?
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect())
}

/// A throwaway PostgreSQL server (initdb in a temporary directory, fsync off: the figures
/// are about the protocol, not the disk), stopped and removed when dropped.
pub struct Postgres {
    server: Killed,
    pub port: u16,
    pub bin: PathBuf,
    dir: PathBuf,
}

impl Drop for Postgres {
    fn drop(&mut self) {
        // The server itself (its pid file's first line), not `runuser`, which does not
        // pass the signal on.
        let pid = std::fs::read_to_string(self.dir.join("data").join("postmaster.pid"))
            .ok()
            .and_then(|text| text.lines().next().map(str::to_string))
            .unwrap_or_else(|| self.server.0.id().to_string());
        let _ = Command::new("kill").args(["-INT", &pid]).status();
        let _ = self.server.0.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Postgres {
    /// Starts one (as the `postgres` user when this is root: initdb refuses root).
    pub fn start() -> Result<Postgres> {
        let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")?
            .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
            .filter(|bin| bin.join("initdb").is_file())
            .collect();
        versions.sort();
        let bin = versions
            .pop()
            .ok_or("no PostgreSQL under /usr/lib/postgresql")?;
        let dir = std::env::temp_dir().join(format!("waymark-bench-pg-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let root = Command::new("id")
            .arg("-u")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")?;
        let command = |program: &str| {
            let mut cmd = match root {
                true => {
                    let mut c = Command::new("runuser");
                    c.args(["-u", "postgres", "--"]).arg(bin.join(program));
                    c
                }
                false => Command::new(bin.join(program)),
            };
            cmd.stdout(Stdio::null()).stderr(Stdio::null());
            cmd
        };
        if root {
            Command::new("chown")
                .args(["-R", "postgres"])
                .arg(&dir)
                .status()?;
        }
        let data = dir.join("data");
        let init = command("initdb")
            .arg("-D")
            .arg(&data)
            .args(["-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"])
            .status()?;
        if !init.success() {
            return Err("initdb failed".into());
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let server = command("postgres")
            .arg("-D")
            .arg(&data)
            .args(["-p", &port.to_string(), "-k"])
            .arg(&dir)
            .args(["-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"])
            .args(["-c", "synchronous_commit=off", "-c", "max_connections=300"])
            .spawn()?;
        let pg = Postgres {
            server: Killed(server),
            port,
            bin,
            dir,
        };
        let began = std::time::Instant::now();
        while pg.sql("postgres", "SELECT 1").is_err() {
            if began.elapsed() > std::time::Duration::from_secs(30) {
                return Err("PostgreSQL did not start".into());
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        Ok(pg)
    }

    /// A new empty database; its connection string.
    pub fn database(&self, name: &str) -> Result<String> {
        self.sql("postgres", &format!("CREATE DATABASE {name}"))?;
        Ok(format!(
            "host=127.0.0.1 port={} user=postgres dbname={name} sslmode=disable",
            self.port
        ))
    }

    /// `psql -Atc sql` on `db`: its output.
    pub fn sql(&self, db: &str, sql: &str) -> Result<String> {
        let out = Command::new(self.bin.join("psql"))
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
            ])
            .args(["-d", db, "-Atc", sql])
            .output()?;
        match out.status.success() {
            true => Ok(String::from_utf8(out.stdout)?),
            false => Err(String::from_utf8_lossy(&out.stderr).into_owned().into()),
        }
    }
}
