//! Helpers for end-to-end tests: unique temp dirs, the sandbox as a real process, running
//! the real `waymark` binary, reading the SQLite destination.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

pub type Result<T = ()> = std::result::Result<T, Box<dyn std::error::Error>>;

pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_waymark"))
}

/// A fresh directory under the system temp dir, removed on drop unless the test failed.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(name: &str) -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let dir =
            std::env::temp_dir().join(format!("waymark-e2e-{name}-{}-{nanos}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        TempDir(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// A `waymark sandbox` process, killed on drop.
pub struct Sandbox {
    child: Child,
    pub url: String,
}

impl Sandbox {
    pub fn start(args: &[&str]) -> Result<Self> {
        let mut child = Command::new(bin())
            .args(["sandbox", "--port", "0", "--quiet"])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line)?;
        let url = line
            .trim()
            .rsplit(' ')
            .next()
            .ok_or("no address")?
            .to_string();
        if !url.starts_with("http://") {
            return Err(format!("sandbox said: {line}").into());
        }
        Ok(Sandbox { child, url })
    }

    /// Every order the sandbox serves, keyed by id.
    pub fn truth(&self) -> Result<std::collections::BTreeMap<String, serde_json::Value>> {
        Ok(self.truth_of("orders")?.0)
    }

    /// A resource's live records keyed by id, and the ids deleted (and not live again).
    pub fn truth_of(
        &self,
        resource: &str,
    ) -> Result<(
        std::collections::BTreeMap<String, serde_json::Value>,
        Vec<String>,
    )> {
        let body: serde_json::Value =
            serde_json::from_slice(&get(&self.url, &format!("/_truth/{resource}"))?)?;
        let mut map = std::collections::BTreeMap::new();
        for record in body["data"].as_array().ok_or("no data")? {
            map.insert(record["id"].to_string(), record.clone());
        }
        let deleted = body["deleted"]
            .as_array()
            .ok_or("no deleted")?
            .iter()
            .map(|id| id.to_string())
            .collect();
        Ok((map, deleted))
    }

    /// The `next_cursor` the sandbox gives after the first `n` orders.
    pub fn cursor_after(&self, n: u64) -> Result<String> {
        let page: serde_json::Value =
            serde_json::from_slice(&get(&self.url, &format!("/orders?limit={n}"))?)?;
        Ok(page["next_cursor"]
            .as_str()
            .ok_or("no next_cursor")?
            .to_string())
    }

    /// What the sandbox served, injected and mutated so far.
    pub fn stats(&self) -> Result<serde_json::Value> {
        Ok(serde_json::from_slice(&get(&self.url, "/_stats")?)?)
    }

    /// Replaces the injected faults (`{}`: none).
    pub fn set_faults(&self, faults: &str) -> Result {
        http("PUT", &self.url, "/_control/faults", Some(faults)).map(drop)
    }

    /// Applies `n` random mutations now.
    pub fn apply_mutations(&self, n: u32) -> Result {
        let body = format!(r#"{{"apply":{n}}}"#);
        http("PUT", &self.url, "/_control/mutator", Some(&body)).map(drop)
    }

    /// Serves orders in a changed shape from now on (`priority` added, `total_cents` a
    /// string, `note` gone), or the usual one again.
    pub fn drift(&self, drifted: bool) -> Result {
        let body = serde_json::json!({ "resource": "orders", "drift": drifted });
        http("PUT", &self.url, "/_control/edit", Some(&body.to_string()))?;
        Ok(())
    }

    /// Edits orders by id: `touch` (new revision, same `updated_at`), `update` (new
    /// revision now), `delete`.
    pub fn edit(&self, touch: &[u64], update: &[u64], delete: &[u64]) -> Result {
        let body = serde_json::json!({
            "resource": "orders", "touch": touch, "update": update, "delete": delete
        });
        let reply: serde_json::Value = serde_json::from_slice(&http(
            "PUT",
            &self.url,
            "/_control/edit",
            Some(&body.to_string()),
        )?)?;
        let done = [&reply["touched"], &reply["updated"], &reply["deleted"]];
        let asked = [touch.len(), update.len(), delete.len()];
        if done
            .iter()
            .zip(asked)
            .any(|(d, a)| d.as_u64() != Some(a as u64))
        {
            return Err(format!("edit did {reply}, asked {asked:?}").into());
        }
        Ok(())
    }

    /// Sets the mutator's rate (0 stops it).
    pub fn set_mutation_rate(&self, per_second: f64) -> Result {
        let body = format!(r#"{{"rate":{per_second}}}"#);
        http("PUT", &self.url, "/_control/mutator", Some(&body)).map(drop)
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A plain HTTP/1.1 GET over a loopback socket; returns the body of a 200 response.
pub fn get(base: &str, path: &str) -> Result<Vec<u8>> {
    http("GET", base, path, None)
}

/// A plain HTTP/1.1 request with an optional JSON body; returns the body of a 200 response.
pub fn http(method: &str, base: &str, path: &str, body: Option<&str>) -> Result<Vec<u8>> {
    let reply = request(method, base, path, body)?;
    if reply.status != 200 {
        return Err(format!("{method} {path}: {}", reply.head).into());
    }
    Ok(reply.body)
}

/// A response: status, header block, body.
pub struct Reply {
    pub status: u16,
    pub head: String,
    pub body: Vec<u8>,
}

impl Reply {
    /// A header's value (names compared case-insensitively).
    pub fn header(&self, name: &str) -> Option<String> {
        self.head.lines().find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
        })
    }

    pub fn json(&self) -> Result<serde_json::Value> {
        Ok(serde_json::from_slice(&self.body)?)
    }
}

/// A plain HTTP/1.1 request with an optional JSON body, any status.
pub fn request(method: &str, base: &str, path: &str, body: Option<&str>) -> Result<Reply> {
    request_with(method, base, path, body, &[])
}

/// The same with extra request headers.
pub fn request_with(
    method: &str,
    base: &str,
    path: &str,
    body: Option<&str>,
    headers: &[(&str, &str)],
) -> Result<Reply> {
    use std::io::{Read, Write};
    let host = base.trim_start_matches("http://");
    let mut stream = std::net::TcpStream::connect(host)?;
    let body = body.unwrap_or("");
    let extra: String = headers
        .iter()
        .map(|(name, value)| format!("{name}: {value}\r\n"))
        .collect();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n{extra}\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    let split = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("no header end")?;
    let head = String::from_utf8_lossy(&response[..split]).into_owned();
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or("no status")?;
    let mut body = response[split + 4..].to_vec();
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        body = dechunk(&body)?;
    }
    Ok(Reply { status, head, body })
}

/// Decodes a chunked body; a body cut off mid-way is an error.
fn dechunk(mut raw: &[u8]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = raw.windows(2).position(|w| w == b"\r\n").ok_or("cut off")?;
        let size = usize::from_str_radix(std::str::from_utf8(&raw[..line_end])?.trim(), 16)?;
        raw = &raw[line_end + 2..];
        if size == 0 {
            return Ok(out);
        }
        out.extend_from_slice(raw.get(..size).ok_or("cut off")?);
        raw = raw.get(size + 2..).ok_or("cut off")?;
    }
}

/// The sandbox's cursor-token pagination.
/// A schedule cadence whose next due time is decades away: under `waymark serve` a stream
/// that never ran is due at once, then never again during a test. (`every = "1h"` is due
/// again at the next whole hour, which a test running at 10:59 reaches.)
pub const ONCE: &str = "36500d";

pub const CURSOR: &str = r#"{ kind = "cursor", cursor_path = "next_cursor", cursor_param = "cursor", limit_param = "limit" }"#;

/// A `[[stream]]` table for a sandbox resource; `extra` lines (window, `deletes`) are
/// appended.
pub fn stream_table(
    name: &str,
    path: &str,
    cursor_field: &str,
    page_size: u32,
    pagination: &str,
    extra: &str,
) -> String {
    format!(
        r#"
[[stream]]
name = "{name}"
path = "{path}"
records = "data"
primary_key = "id"
cursor_field = "{cursor_field}"
page_size = {page_size}
pagination = {pagination}
{extra}
"#
    )
}

/// Writes `dir/shop.toml`: the sandbox as source (`source` lines added to its table), the
/// given streams, and `dir/shop.db` as destination (`destination` lines added).
pub fn write_workflow(
    dir: &Path,
    source: &str,
    streams: &str,
    destination: &str,
) -> Result<PathBuf> {
    let text = format!(
        r#"[sync]
name = "shop"

[source]
kind = "http"
base_url = "${{WAYMARK_SANDBOX_URL}}"
{source}
{streams}
[destination]
kind = "sqlite"
path = "shop.db"
{destination}
"#
    );
    let path = dir.join("shop.toml");
    std::fs::write(&path, text)?;
    Ok(path)
}

/// A workflow syncing the sandbox's orders into `dir/shop.db`.
pub fn workflow(dir: &Path, page_size: u32, max_attempts: u32) -> Result<PathBuf> {
    let source = format!("timeout = \"5s\"\nmax_attempts = {max_attempts}");
    orders_workflow(dir, page_size, &source, "", "")
}

/// The same with `source`, stream (`extra`) and `destination` lines added.
pub fn orders_workflow(
    dir: &Path,
    page_size: u32,
    source: &str,
    extra: &str,
    destination: &str,
) -> Result<PathBuf> {
    let window =
        r#"window = { lag = "0s", start_param = "updated_since", end_param = "updated_before" }"#;
    write_workflow(
        dir,
        source,
        &stream_table(
            "orders",
            "/orders",
            "updated_at",
            page_size,
            CURSOR,
            &format!("{window}\n{extra}"),
        ),
        destination,
    )
}

/// A `waymark` command with the state dir and sandbox URL set.
pub fn waymark(state: &Path, url: &str) -> Command {
    let mut cmd = Command::new(bin());
    cmd.env("WAYMARK_STATE_DIR", state)
        .env("WAYMARK_SANDBOX_URL", url)
        .env("WAYMARK_LOG", "warn")
        .env_remove("RUST_BACKTRACE")
        .stdin(Stdio::null());
    cmd
}

pub fn run(cmd: &mut Command) -> Result<Output> {
    Ok(cmd.output()?)
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Asserts the process did not panic (Rust's panic exit code is 101).
pub fn assert_no_panic(out: &Output) {
    let stderr = text(&out.stderr);
    assert_ne!(out.status.code(), Some(101), "panicked: {stderr}");
    assert!(!stderr.contains("panicked"), "panicked: {stderr}");
}

/// Live rows of the orders table: key → record.
pub fn rows(db: &Path) -> Result<std::collections::BTreeMap<String, serde_json::Value>> {
    Ok(table(db, "orders")?.0)
}

/// A destination table: live rows (key → record) and the keys marked deleted.
pub fn table(
    db: &Path,
    name: &str,
) -> Result<(
    std::collections::BTreeMap<String, serde_json::Value>,
    Vec<String>,
)> {
    let conn = rusqlite::Connection::open(db)?;
    let mut stmt = conn.prepare(&format!(
        "SELECT key, record, deleted_at IS NOT NULL FROM \"{name}\" ORDER BY key"
    ))?;
    let rows: Vec<(String, String, bool)> = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
        .collect::<std::result::Result<_, _>>()?;
    let mut live = std::collections::BTreeMap::new();
    let mut deleted = Vec::new();
    for (key, record, gone) in rows {
        if gone {
            deleted.push(key);
        } else {
            live.insert(key, serde_json::from_str(&record)?);
        }
    }
    Ok((live, deleted))
}

/// The journal of a run as JSON events.
pub fn journal(state: &Path, run: &str) -> Result<Vec<serde_json::Value>> {
    let out = waymark(state, "")
        .args(["journal", run, "--json"])
        .output()?;
    if !out.status.success() {
        return Err(format!("journal failed: {}", text(&out.stderr)).into());
    }
    text(&out.stdout)
        .lines()
        .map(|l| Ok(serde_json::from_str(l)?))
        .collect()
}

/// All runs as JSON objects.
pub fn runs(state: &Path) -> Result<Vec<serde_json::Value>> {
    let out = waymark(state, "").args(["runs", "--json"]).output()?;
    if !out.status.success() {
        return Err(format!("runs failed: {}", text(&out.stderr)).into());
    }
    text(&out.stdout)
        .lines()
        .map(|l| Ok(serde_json::from_str(l)?))
        .collect()
}

/// Total size of the files under `path`.
pub fn du(path: &Path) -> u64 {
    waymark_engine::state_dir::disk_usage(path)
}

pub fn wait_for(mut done: impl FnMut() -> bool, timeout: Duration) -> bool {
    let start = std::time::Instant::now();
    while start.elapsed() < timeout {
        if done() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// Syncs two pages of 100 records, then pauses (`--max-pages 2`, exit 3): a state directory
/// with an unfinished run. Returns the workflow path, the state directory and the run id.
pub fn paused_run(
    sandbox: &Sandbox,
    dir: &TempDir,
) -> Result<(std::path::PathBuf, std::path::PathBuf, String)> {
    let path = workflow(dir.path(), 100, 3)?;
    let state = dir.path().join("state");
    let out = run(waymark(&state, &sandbox.url)
        .args(["run", "--max-pages", "2"])
        .arg(&path))?;
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    let run_id = runs(&state)?[0]["run"]
        .as_str()
        .ok_or("run id")?
        .to_string();
    Ok((path, state, run_id))
}

/// Waits until process `pid` holds the state directory's lock (its signal handlers are in
/// place by then).
pub fn wait_for_lock(state: &Path, pid: u32) -> bool {
    let lock = state.join("LOCK");
    wait_for(
        || std::fs::read_to_string(&lock).is_ok_and(|t| t.contains(&format!("pid {pid}"))),
        Duration::from_secs(10),
    )
}

/// A self-signed certificate (and its key) for `cn` with the subject alternative names
/// `san` (e.g. `DNS:localhost`), made by the `openssl` command in `dir`; the key is
/// readable by its owner only.
pub fn self_signed(dir: &Path, cn: &str, san: &str) -> Result<(PathBuf, PathBuf)> {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let status = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
        .args(["ec_paramgen_curve:prime256v1", "-nodes", "-days", "2"])
        .args(["-subj", &format!("/CN={cn}")])
        .args(["-addext", &format!("subjectAltName={san}")])
        .args(["-addext", "basicConstraints=critical,CA:FALSE"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map_err(|e| format!("TLS tests need the `openssl` command: {e}"))?;
    if !status.success() {
        return Err("openssl could not make a certificate".into());
    }
    let mut perms = std::fs::metadata(&key)?.permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o600);
    std::fs::set_permissions(&key, perms)?;
    Ok((cert, key))
}
