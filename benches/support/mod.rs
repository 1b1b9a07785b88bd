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
