//! Alerts: when a stream's health changes, `serve` says so once — to a webhook, a command,
//! or both (`[alerts]` of its workflow file) — and once more when it recovers. The health
//! is `waymark status`'s verdict (the same code, run in-process), then the answers its
//! requests got ([`Traffic`]: 429s per run, the 5xx share) and dead letters growing day
//! over day ([`Depths`]), then the dead-letter limit;
//! the last state sent per stream is kept in `<state>/alerts.json`, so a restart does not
//! send it again. Sending is retried with backoff in the background and never
//! holds up a run.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::{watch, Notify};

use waymark_connectors::config::{expand_env, AlertsSection};
use waymark_engine::{Clock, StateDir, SystemClock};

use super::growth::Depths;
use super::traffic::Traffic;
use super::Key;
use crate::cli::attach;

/// How often health is checked when no run ends (a stall shows without a run).
const EVERY: Duration = Duration::from_secs(30);
/// Attempts to deliver one alert, waiting 1 s, 2 s, 4 s, 8 s between them.
const ATTEMPTS: u32 = 5;

/// A stream's health as alerts see it: `ok`, or what is wrong and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    pub health: String,
    pub reason: String,
}

impl Health {
    fn ok() -> Self {
        Health {
            health: "ok".into(),
            reason: String::new(),
        }
    }

    fn is_ok(&self) -> bool {
        self.health == "ok"
    }
}

/// A change of one stream's health.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transition {
    pub key: Key,
    pub from: Health,
    pub to: Health,
}

impl Transition {
    /// The one-line message (Slack's `text`).
    pub fn text(&self) -> String {
        let (sync, stream) = &self.key;
        match self.to.is_ok() {
            true => format!(
                "waymark: {sync}/{stream} recovered (was {}: {})",
                self.from.health, self.from.reason
            ),
            false => format!(
                "waymark: {sync}/{stream} is {}: {}",
                self.to.health, self.to.reason
            ),
        }
    }
}

/// The health of each stream from `status --json` lines: unhealthy verdicts as they are,
/// then what `answers` found wrong with its requests, then too many dead letters (above
/// `limit` of the stream's sync) as `dead-letters`; streams whose run is going are left
/// out (judged when it ends).
pub fn healths(
    lines: &[serde_json::Value],
    answers: &BTreeMap<Key, Health>,
    limit: impl Fn(&str) -> Option<u64>,
) -> BTreeMap<Key, Health> {
    let mut out = BTreeMap::new();
    for line in lines {
        let (Some(sync), Some(stream)) = (line["sync"].as_str(), line["stream"].as_str()) else {
            continue;
        };
        let Some(limit) = limit(sync) else { continue };
        // A run in progress (often a failed run resuming) says nothing yet: the stream
        // keeps the health it had, so a retry does not flap "failing" → "ok" → "failing".
        if line["last_status"] == "running" {
            continue;
        }
        let key = (sync.to_string(), stream.to_string());
        let letters = line["dead_letters"].as_u64().unwrap_or(0);
        let health = if line["unhealthy"].as_bool() == Some(true) {
            Health {
                health: line["health"].as_str().unwrap_or("unhealthy").to_string(),
                reason: line["reason"].as_str().unwrap_or("").to_string(),
            }
        } else if let Some(answered) = answers.get(&key) {
            answered.clone()
        } else if letters > limit {
            Health {
                health: "dead-letters".into(),
                reason: format!("{letters} dead letters (limit {limit})"),
            }
        } else if line["health"] == "schema_changed" {
            // Healthy, but said once: the records changed shape in the last run.
            Health {
                health: "schema_changed".into(),
                reason: line["reason"].as_str().unwrap_or("").to_string(),
            }
        } else {
            Health::ok()
        };
        out.insert(key, health);
    }
    out
}

/// What changed from `before` to `now`: a stream whose health (not only its reason)
/// changed; one never seen counts as having been ok.
pub fn transitions(before: &BTreeMap<Key, Health>, now: &BTreeMap<Key, Health>) -> Vec<Transition> {
    now.iter()
        .filter_map(|(key, to)| {
            let from = before.get(key).cloned().unwrap_or_else(Health::ok);
            (from.health != to.health).then(|| Transition {
                key: key.clone(),
                from,
                to: to.clone(),
            })
        })
        .collect()
}

/// Checks health after each run (`wake`) and every 30 s, and sends each transition to the
/// `[alerts]` of its sync (`targets`, kept current by reloads).
pub async fn watch(
    dir: StateDir,
    targets: watch::Receiver<BTreeMap<String, AlertsSection>>,
    traffic: std::sync::Arc<Traffic>,
    wake: std::rc::Rc<Notify>,
) {
    let file = dir.root().join("alerts.json");
    let mut sent: BTreeMap<String, Health> = kept(&file);
    let depths_file = dir.root().join("dead_letter_depths.json");
    let mut depths: Depths = kept(&depths_file);
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap_or_default();
    loop {
        tokio::select! {
            () = wake.notified() => {}
            () = tokio::time::sleep(EVERY) => {}
        }
        let targets = targets.borrow().clone();
        if targets.is_empty() {
            continue;
        }
        let Some(lines) = status(&dir).await else {
            continue;
        };
        let at = SystemClock.now();
        let mut answers: BTreeMap<Key, Health> = traffic
            .healths(at, |sync| {
                let t = targets.get(sync)?;
                Some((t.too_many_requests_above, t.server_errors_above))
            })
            .into_iter()
            .map(|(key, (health, reason))| {
                let health = health.to_string();
                (key, Health { health, reason })
            })
            .collect();
        let mut sampled = false;
        for line in &lines {
            let (Some(sync), Some(stream)) = (line["sync"].as_str(), line["stream"].as_str())
            else {
                continue;
            };
            let key = (sync.to_string(), stream.to_string());
            if !targets.contains_key(sync) {
                continue;
            }
            sampled |= depths.record(&key, at, line["dead_letters"].as_u64().unwrap_or(0));
            if let Some(reason) = depths.growing(&key, at) {
                let health = Health {
                    health: "dead-letters".into(),
                    reason,
                };
                answers.entry(key).or_insert(health);
            }
        }
        if sampled {
            keep(&depths_file, &depths, "the dead-letter depths");
        }
        let now = healths(&lines, &answers, |sync| {
            targets.get(sync).map(|t| t.dead_letters_above)
        });
        let before: BTreeMap<Key, Health> = sent
            .iter()
            .filter_map(|(k, h)| Some((split(k)?, h.clone())))
            .collect();
        let changes = transitions(&before, &now);
        if changes.is_empty() {
            continue;
        }
        for change in changes {
            sent.insert(
                format!("{}/{}", change.key.0, change.key.1),
                change.to.clone(),
            );
            if let Some(target) = targets.get(&change.key.0) {
                tracing::warn!("alert: {}", change.text());
                tokio::task::spawn_local(deliver(client.clone(), target.clone(), change));
            }
        }
        keep(&file, &sent, "the alerts sent");
    }
}

/// What [`keep`] wrote to `file`; the default when there is none (or it is unreadable).
fn kept<T: serde::de::DeserializeOwned + Default>(file: &std::path::Path) -> T {
    std::fs::read(file)
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .unwrap_or_default()
}

/// Writes `value` to `file` as JSON; a failure is logged (what it loses: `what`).
fn keep(file: &std::path::Path, value: &impl Serialize, what: &str) {
    let written = serde_json::to_vec(value)
        .map_err(std::io::Error::other)
        .and_then(|bytes| std::fs::write(file, bytes));
    if let Err(e) = written {
        tracing::warn!("cannot keep {what} in {}: {e}", file.display());
    }
}

fn split(key: &str) -> Option<Key> {
    let (sync, stream) = key.split_once('/')?;
    Some((sync.to_string(), stream.to_string()))
}

/// `status --json`, run in this process.
async fn status(dir: &StateDir) -> Option<Vec<serde_json::Value>> {
    match attach::local_json(dir, &["status", "--json"]).await {
        Ok(lines) => Some(lines),
        Err((message, _)) => {
            tracing::warn!("alerts: cannot read the streams' health: {message}");
            None
        }
    }
}

/// Sends one alert to the webhook and the command, retrying each.
async fn deliver(client: reqwest::Client, target: AlertsSection, change: Transition) {
    let at = SystemClock.now().to_string();
    let text = change.text();
    if let Some(url) = &target.webhook {
        let body = serde_json::json!({
            "text": text,
            "sync": change.key.0,
            "stream": change.key.1,
            "health": change.to.health,
            "previous": change.from.health,
            "reason": if change.to.is_ok() { &change.from.reason } else { &change.to.reason },
            "at": at,
        });
        post(&client, url, &body).await;
    }
    if let Some(command) = target.command.clone() {
        let env = [
            ("WAYMARK_ALERT_SYNC", change.key.0.clone()),
            ("WAYMARK_ALERT_STREAM", change.key.1.clone()),
            ("WAYMARK_ALERT_HEALTH", change.to.health.clone()),
            ("WAYMARK_ALERT_PREVIOUS", change.from.health.clone()),
            ("WAYMARK_ALERT_REASON", change.to.reason.clone()),
            ("WAYMARK_ALERT_TEXT", text.clone()),
            ("WAYMARK_ALERT_AT", at.clone()),
        ];
        run(command, env).await;
    }
}

async fn post(client: &reqwest::Client, url: &str, body: &serde_json::Value) {
    // The URL (it may hold a secret) is never logged.
    let url = match expand_env(url) {
        Ok(url) => url,
        Err(e) => {
            tracing::error!("alert not sent: alerts.webhook: {e}");
            return;
        }
    };
    for attempt in 0..ATTEMPTS {
        let request = client
            .post(&url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body.to_string());
        match request.send().await {
            Ok(r) if r.status().is_success() => return,
            Ok(r) => tracing::warn!(
                "alert webhook answered {} (attempt {})",
                r.status(),
                attempt + 1
            ),
            Err(e) => tracing::warn!(
                "alert webhook unreachable (attempt {}): {}",
                attempt + 1,
                e.without_url()
            ),
        }
        tokio::time::sleep(Duration::from_secs(1 << attempt)).await;
    }
    tracing::error!("alert not sent: the webhook failed {ATTEMPTS} times");
}

async fn run(command: Vec<String>, env: [(&'static str, String); 7]) {
    for attempt in 0..ATTEMPTS {
        let (program, args) = match command.split_first() {
            Some(split) => split,
            None => return,
        };
        let (program, args) = (PathBuf::from(program), args.to_vec());
        let env = env.clone();
        let status = tokio::task::spawn_blocking(move || {
            std::process::Command::new(&program)
                .args(&args)
                .envs(env)
                .stdin(std::process::Stdio::null())
                .status()
        })
        .await;
        match status {
            Ok(Ok(status)) if status.success() => return,
            Ok(Ok(status)) => tracing::warn!("alert command {status} (attempt {})", attempt + 1),
            Ok(Err(e)) => tracing::warn!(
                "alert command failed to start: {e} (attempt {})",
                attempt + 1
            ),
            Err(e) => tracing::warn!("alert command: {e}"),
        }
        tokio::time::sleep(Duration::from_secs(1 << attempt)).await;
    }
    tracing::error!("alert not delivered: the command failed {ATTEMPTS} times");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(stream: &str, health: &str, unhealthy: bool, letters: u64) -> serde_json::Value {
        serde_json::json!({
            "sync": "s", "stream": stream, "health": health, "unhealthy": unhealthy,
            "reason": format!("{health} reason"), "dead_letters": letters,
        })
    }

    fn key(stream: &str) -> Key {
        ("s".into(), stream.into())
    }

    #[test]
    fn one_message_per_transition_and_one_when_it_recovers() {
        let limit = |_: &str| Some(100);
        let none = BTreeMap::new();
        let ok = healths(
            &[line("a", "ok", false, 0), line("b", "ok", false, 0)],
            &none,
            limit,
        );
        assert!(
            transitions(&BTreeMap::new(), &ok).is_empty(),
            "ok from the start: quiet"
        );

        let failing = healths(
            &[line("a", "failing", true, 0), line("b", "ok", false, 0)],
            &none,
            limit,
        );
        let sent = transitions(&ok, &failing);
        assert_eq!(sent.len(), 1);
        assert_eq!(sent[0].key, key("a"));
        assert_eq!(sent[0].text(), "waymark: s/a is failing: failing reason");
        // Still failing (another reason): no repeat.
        let mut again = failing.clone();
        if let Some(h) = again.get_mut(&key("a")) {
            h.reason = "another reason".into();
        }
        assert!(transitions(&failing, &again).is_empty());
        // Failing to stalled is a transition; back to ok, a resolution.
        let stalled = healths(
            &[line("a", "stalled", true, 0), line("b", "ok", false, 0)],
            &none,
            limit,
        );
        assert_eq!(transitions(&failing, &stalled).len(), 1);
        let back = transitions(&stalled, &ok);
        assert_eq!(back.len(), 1);
        assert_eq!(
            back[0].text(),
            "waymark: s/a recovered (was stalled: stalled reason)"
        );
    }

    #[test]
    fn a_schema_change_is_said_once_and_settles_with_the_next_run() {
        let limit = |_: &str| Some(100);
        let none = BTreeMap::new();
        let ok = healths(&[line("a", "ok", false, 0)], &none, limit);
        let changed = healths(&[line("a", "schema_changed", false, 0)], &none, limit);
        let sent = transitions(&ok, &changed);
        assert_eq!(sent.len(), 1);
        assert_eq!(
            sent[0].text(),
            "waymark: s/a is schema_changed: schema_changed reason"
        );
        assert_eq!(transitions(&changed, &ok).len(), 1);
    }

    #[test]
    fn dead_letters_over_the_limit_are_unhealthy_and_only_streams_with_alerts_count() {
        let limit = |sync: &str| (sync == "s").then_some(100);
        let none = BTreeMap::new();
        let mut other = line("c", "failing", true, 0);
        other["sync"] = "t".into();
        let now = healths(
            &[
                line("a", "ok", false, 101),
                line("b", "ok", false, 100),
                other,
            ],
            &none,
            limit,
        );
        assert_eq!(now[&key("a")].health, "dead-letters");
        assert_eq!(now[&key("a")].reason, "101 dead letters (limit 100)");
        assert!(now[&key("b")].is_ok());
        assert_eq!(now.len(), 2, "sync t has no [alerts]");
        let mut resuming = line("a", "ok", false, 0);
        resuming["last_status"] = "running".into();
        assert!(
            healths(&[resuming], &none, limit).is_empty(),
            "judged when its run ends"
        );
    }

    #[test]
    fn what_the_requests_were_answered_counts_after_the_status_verdict_before_dead_letters() {
        let limit = |_: &str| Some(100);
        let rate_limited = Health {
            health: "rate-limited".into(),
            reason: "its last run was answered 429 3 times (limit 1)".into(),
        };
        let answers: BTreeMap<Key, Health> = [(key("a"), rate_limited.clone())]
            .into_iter()
            .chain([(key("b"), rate_limited.clone())])
            .collect();
        let now = healths(
            &[line("a", "ok", false, 500), line("b", "failing", true, 0)],
            &answers,
            limit,
        );
        assert_eq!(now[&key("a")], rate_limited);
        assert_eq!(now[&key("b")].health, "failing");
    }
}
