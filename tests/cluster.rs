//! A cluster of `serve --cluster` workers sharing a real PostgreSQL: partitions spread
//! evenly, a killed worker's partitions taken over, a paused one fenced, a stopped one's
//! given back at once; and at the end, every tenant's destination is exactly the source.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::chaos::{with_seed, Rng};
use crate::serve::{serve_with, terminate};
use crate::util::{runs, stream_table, text, wait_for, waymark, Result, Sandbox, TempDir, CURSOR};

/// The lease TTL of the test's workers.
const TTL: Duration = Duration::from_secs(3);

/// The requests per second the sandbox admits, and the workflow's budget, shared by every
/// tenant and every worker.
const QUOTA: u32 = 40;

/// Orders and their deletions feed, per tenant, into the tenant's own schema.
fn cluster_workflow(dir: &Path, tenants: usize, url: &str) -> Result<PathBuf> {
    let list: String = (0..tenants).map(|i| format!("t{i:03},{url}\n")).collect();
    std::fs::write(dir.join("tenants.csv"), format!("id,url\n{list}"))?;
    let window = r#"window = { lag = "1s", overlap = "5s", start_param = "updated_since", end_param = "updated_before" }"#;
    let streams = stream_table("orders", "/orders", "updated_at", 100, CURSOR, window)
        + &stream_table(
            "orders_deleted",
            "/orders/deleted",
            "deleted_at",
            100,
            CURSOR,
            &format!("{window}\ndeletes = \"orders\""),
        );
    let text = format!(
        r#"[sync]
name = "shop"
schedule = {{ every = "2s" }}

[tenants]
file = "tenants.csv"

[source]
kind = "http"
base_url = "{{tenant.url}}"
timeout = "2s"
max_attempts = 15
rate_limit = {{ requests = {QUOTA}, per = "1s", burst = 10, across_tenants = true }}
{streams}
[destination]
kind = "postgres"
url = {{ env = "PG_URL" }}
schema = "t_{{tenant.id}}"
"#
    );
    let path = dir.join("shop.toml");
    std::fs::write(&path, text)?;
    Ok(path)
}

struct Worker {
    id: String,
    state: PathBuf,
    logs: PathBuf,
    child: Option<Child>,
    /// Its local API.
    api: String,
}

impl Worker {
    fn start(&mut self, workflow: &Path, env: &[(&str, &str)]) -> Result {
        std::fs::create_dir_all(&self.logs)?;
        let ttl = format!("{}s", TTL.as_secs());
        let workflow = workflow.display().to_string();
        let args = [
            workflow.as_str(),
            "--cluster",
            "--lease-ttl",
            &ttl,
            "--worker-id",
            &self.id,
            "--max-concurrent-runs",
            "4",
        ];
        let (child, api) = serve_with(&self.state, "", &self.logs, &args, env)?;
        self.child = Some(child);
        self.api = api;
        Ok(())
    }

    fn pid(&self) -> Result<String> {
        Ok(self.child.as_ref().ok_or("not running")?.id().to_string())
    }

    fn signal(&self, name: &str) -> Result {
        let status = std::process::Command::new("kill")
            .args([&format!("-{name}"), &self.pid()?])
            .status()?;
        match status.success() {
            true => Ok(()),
            false => Err(format!("kill -{name} {}", self.id).into()),
        }
    }
}

/// `waymark <args>` against the coordinator: its JSON lines.
fn observe(env: &[(&str, &str)], args: &[&str]) -> Result<Vec<Value>> {
    let out = waymark(Path::new("/nonexistent"), "")
        .args(args)
        .envs(env.iter().copied())
        .output()?;
    let mut lines = Vec::new();
    for line in text(&out.stdout).lines() {
        lines.push(serde_json::from_str(line)?);
    }
    if lines.is_empty() {
        return Err(format!("{args:?}: {}", text(&out.stderr)).into());
    }
    Ok(lines)
}

/// Once every partition caught up: `status`, `runs` and the web view of one worker show
/// the whole cluster from the mirrored runs, per partition and per tenant.
fn whole_cluster_seen_from_one_worker(
    worker: &Worker,
    env: &[(&str, &str)],
    tenants: usize,
) -> Result {
    let status = observe(env, &["status", "--cluster", "--json"])?;
    assert_eq!(status.len(), tenants * 2);
    for row in &status {
        // (Its last run may be one started since: running.)
        assert_eq!(row["health"], "ok", "{row}");
        let last_worker = row["last_worker"].as_str().unwrap_or_default();
        assert!(
            ["w1", "w2", "w3"].iter().any(|w| is(Some(last_worker), w)),
            "{row}"
        );
        assert!(row["lag_s"].is_u64(), "{row}");
    }
    let rolled = observe(env, &["status", "--cluster", "--by-tenant", "--json"])?;
    assert_eq!(rolled.len(), tenants);
    assert!(
        rolled
            .iter()
            .all(|t| t["streams"] == 2 && t["health"] == "ok"),
        "{rolled:?}"
    );
    // One tenant's runs, every worker's, among them the last runs status named (the
    // workers keep running: later ones may have started since).
    let mirrored = observe(env, &["runs", "--cluster", "--tenant", "t007", "--json"])?;
    assert!(
        mirrored.iter().all(|r| r["sync"] == "shop:t007"),
        "{mirrored:?}"
    );
    for row in status.iter().filter(|r| r["tenant"] == "t007") {
        let named = mirrored
            .iter()
            .find(|r| r["run"] == row["last_run"] && r["stream"] == row["stream"]);
        assert!(named.is_some(), "{row} not in {mirrored:?}");
    }
    // The web view of one worker: every tenant, every partition, another worker's run.
    let page = |path: &str| -> Result<String> {
        Ok(String::from_utf8(crate::util::get(&worker.api, path)?)?)
    };
    assert_eq!(page("/tenants")?.matches("data-tenant=").count(), tenants);
    assert_eq!(page("/")?.matches("data-stream=").count(), tenants * 2);
    let one = page("/?tenant=t007")?;
    assert_eq!(one.matches("data-stream=").count(), 2, "{one}");
    let stream = page("/streams/shop:t007/orders")?;
    assert!(stream.contains(">Worker<"), "{stream}");
    let elsewhere = mirrored
        .iter()
        .find(|r| !is(r["worker"].as_str(), &worker.id))
        .ok_or("every run of t007 was this worker's")?;
    let run = page(&format!(
        "/runs/{}",
        elsewhere["run"].as_str().unwrap_or_default()
    ))?;
    assert!(run.contains("id=\"elsewhere\""), "{run}");
    Ok(())
}

impl Drop for Worker {
    /// A worker left running when the test fails is killed (it would go on using the
    /// machine).
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Whether a holder (`<id>#<incarnation>`) is an incarnation of worker `id`.
fn is(holder: Option<&str>, id: &str) -> bool {
    holder.is_some_and(|h| h.split('#').next() == Some(id))
}

/// The lease counts of the workers alive, by worker id.
fn by_id(workers: &BTreeMap<String, u64>) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for (incarnation, n) in workers {
        let id = incarnation
            .split('#')
            .next()
            .unwrap_or_default()
            .to_string();
        *out.entry(id).or_insert(0) += n;
    }
    out
}

/// Whether `n` workers hold every one of `partitions`, each at most its even share.
fn balanced(workers: &BTreeMap<String, u64>, n: usize, partitions: usize) -> bool {
    let w = by_id(workers);
    let share = u64::try_from(partitions.div_ceil(n)).unwrap_or(0);
    w.len() == n
        && w.values().all(|held| *held <= share)
        && w.values().sum::<u64>() == u64::try_from(partitions).unwrap_or(0)
}

/// A partition's holder, and its latest run's status and start (RFC 3339).
type Partitions = BTreeMap<String, (Option<String>, Option<(String, String)>)>;

/// `cluster status --partitions --json`: the partitions, and the workers' lease counts.
fn cluster_status(env: &[(&str, &str)]) -> Result<(Partitions, BTreeMap<String, u64>)> {
    let out = waymark(Path::new("/nonexistent"), "")
        .args(["cluster", "status", "--partitions", "--json"])
        .envs(env.iter().copied())
        .output()?;
    let mut partitions = BTreeMap::new();
    let mut workers = BTreeMap::new();
    for line in text(&out.stdout).lines() {
        let v: Value = serde_json::from_str(line)?;
        if let Some(p) = v["partition"].as_str() {
            let holder = v["holder"].as_str().map(str::to_string);
            let last = v["last_status"]
                .as_str()
                .zip(v["last_started"].as_str())
                .map(|(s, t)| (s.to_string(), t.to_string()));
            partitions.insert(p.to_string(), (holder, last));
        }
        if let Some(w) = v["worker"].as_str() {
            workers.insert(w.to_string(), v["leases"].as_u64().unwrap_or(0));
        }
    }
    Ok((partitions, workers))
}

#[test]
fn three_workers_share_partitions_through_kill_stop_and_term_and_lose_nothing() -> Result {
    with_seed(cluster_scenario)
}

fn cluster_scenario(seed: u64) -> Result {
    let Some(pg) = crate::pg::shared() else {
        return Ok(());
    };
    let mut rng = Rng(seed);
    let url = pg.database()?;
    let sandbox = Sandbox::start(&[
        "--records",
        "120",
        "--seed",
        &seed.to_string(),
        "--mutate",
        "20",
        "--latency",
        "15ms",
        "--rate-500",
        "0.02",
        "--quota",
        &QUOTA.to_string(),
    ])?;
    let tmp = TempDir::new("cluster");
    let tenants = 200;
    let workflow = cluster_workflow(tmp.path(), tenants, &sandbox.url)?;
    let env = [
        ("PG_URL", url.as_str()),
        ("WAYMARK_CLUSTER_URL", url.as_str()),
    ];
    let mut workers: Vec<Worker> = ["w1", "w2", "w3"]
        .iter()
        .map(|id| Worker {
            id: id.to_string(),
            state: tmp.path().join(id).join("state"),
            logs: tmp.path().join(id),
            child: None,
            api: String::new(),
        })
        .collect();
    for w in &mut workers {
        w.start(&workflow, &env)?;
    }
    let partitions = tenants * 2;
    // Spread evenly, every partition run at least once.
    let spread = wait_for(
        || {
            cluster_status(&env).is_ok_and(|(p, w)| {
                p.len() == partitions
                    && p.values().all(|(h, last)| {
                        h.is_some() && last.as_ref().is_some_and(|(s, _)| s == "completed")
                    })
                    && balanced(&w, 3, partitions)
            })
        },
        Duration::from_secs(120),
    );
    assert!(spread, "not spread: {:?}", cluster_status(&env)?);

    // kill -9 one: its partitions are taken over within the TTL and a round.
    let victim = usize::try_from(rng.below(3))?;
    workers[victim].signal("KILL")?;
    let killed = Instant::now();
    let victim_id = workers[victim].id.clone();
    let moved = wait_for(
        || {
            cluster_status(&env).is_ok_and(|(p, _)| {
                p.values()
                    .all(|(h, _)| h.is_some() && !is(h.as_deref(), &victim_id))
            })
        },
        Duration::from_secs(30),
    );
    let takeover = killed.elapsed();
    assert!(moved, "not taken over: {:?}", cluster_status(&env)?);
    eprintln!("kill -9 of {victim_id}: its partitions taken over in {takeover:?}");
    assert!(takeover <= TTL + Duration::from_secs(3), "{takeover:?}");
    if let Some(mut child) = workers[victim].child.take() {
        child.wait()?;
    }
    // Back with the same id and state directory: it takes its share again.
    workers[victim].start(&workflow, &env)?;
    let rebalanced = wait_for(
        || cluster_status(&env).is_ok_and(|(_, w)| balanced(&w, 3, partitions)),
        Duration::from_secs(30),
    );
    assert!(rebalanced, "{:?}", cluster_status(&env)?);

    // SIGSTOP another past its TTL: the others take its partitions; once continued, its
    // runs cannot commit (fenced) and it takes its share back.
    let paused = (victim + 1 + usize::try_from(rng.below(2))?) % 3;
    workers[paused].signal("STOP")?;
    let paused_id = workers[paused].id.clone();
    let taken = wait_for(
        || {
            cluster_status(&env).is_ok_and(|(p, _)| {
                p.values()
                    .all(|(h, _)| h.is_some() && !is(h.as_deref(), &paused_id))
            })
        },
        Duration::from_secs(30),
    );
    workers[paused].signal("CONT")?;
    assert!(taken, "{:?}", cluster_status(&env)?);
    let rebalanced = wait_for(
        || cluster_status(&env).is_ok_and(|(_, w)| balanced(&w, 3, partitions)),
        Duration::from_secs(30),
    );
    assert!(rebalanced, "{:?}", cluster_status(&env)?);

    // SIGTERM the third: its leases are given back at once, taken within a round.
    let leaving = 3 - victim - paused;
    let leaving_id = workers[leaving].id.clone();
    let child = workers[leaving].child.take().ok_or("not running")?;
    let (code, _, log) = terminate(child, &workers[leaving].logs)?;
    assert_eq!(code, Some(0), "{log}");
    let left = Instant::now();
    let moved = wait_for(
        || {
            cluster_status(&env).is_ok_and(|(p, w)| {
                !by_id(&w).contains_key(&leaving_id)
                    && p.values()
                        .all(|(h, _)| h.is_some() && !is(h.as_deref(), &leaving_id))
            })
        },
        Duration::from_secs(30),
    );
    assert!(moved, "{:?}", cluster_status(&env)?);
    eprintln!(
        "SIGTERM of {leaving_id}: its partitions taken in {:?}",
        left.elapsed()
    );
    assert!(left.elapsed() < TTL, "{:?}", left.elapsed());

    // The source stops changing; every partition's latest run, started past the lag
    // after that, completed.
    sandbox.set_mutation_rate(0.0)?;
    let quiet = humantime::format_rfc3339_millis(
        std::time::SystemTime::now() + Duration::from_millis(1500),
    )
    .to_string();
    let caught_up = wait_for(
        || {
            cluster_status(&env).is_ok_and(|(p, _)| {
                p.values().all(|(_, last)| {
                    last.as_ref()
                        .is_some_and(|(s, at)| s == "completed" && *at > quiet)
                })
            })
        },
        Duration::from_secs(90),
    );
    assert!(caught_up, "{:?}", cluster_status(&env)?);
    whole_cluster_seen_from_one_worker(&workers[victim], &env, tenants)?;
    for w in &mut workers {
        if let Some(child) = w.child.take() {
            let (code, _, log) = terminate(child, &w.logs)?;
            assert_eq!(code, Some(0), "{log}");
        }
    }

    // The API never saw more than its quota in any second, all workers together, even
    // while partitions moved (shares shrink before leases are given back, and grow a
    // window after they are taken).
    let stats = sandbox.stats()?;
    eprintln!("sandbox: {stats}");
    assert_eq!(stats["over_quota"], 0, "{stats}");

    // Every tenant's orders are exactly the source's.
    let (truth, _) = sandbox.truth_of("orders")?;
    for i in 0..tenants {
        let (live, _) = crate::pg::table(&url, &format!("t_t{i:03}.orders"))?;
        let missing = truth.keys().filter(|k| !live.contains_key(*k)).count();
        let extra = live.keys().filter(|k| !truth.contains_key(*k)).count();
        let stale = truth
            .iter()
            .filter(|(k, v)| live.get(*k).is_some_and(|got| got != *v))
            .count();
        assert_eq!(
            (missing, extra, stale),
            (0, 0, 0),
            "tenant t{i:03}: missing, extra, stale"
        );
    }

    // No token of a partition was ever held by two workers; fenced commits were refused
    // only on the worker that was paused.
    let mut holders: BTreeMap<(String, String, u64), BTreeSet<String>> = BTreeMap::new();
    let mut fenced = BTreeMap::new();
    for w in &workers {
        for run in runs(&w.state)? {
            let partition = (
                run["sync"].as_str().unwrap_or("").to_string(),
                run["stream"].as_str().unwrap_or("").to_string(),
            );
            let Some(token) = run["lease"]["token"].as_u64() else {
                continue;
            };
            holders
                .entry((partition.0, partition.1, token))
                .or_default()
                .insert(w.id.clone());
            if run["outcome"]
                .as_str()
                .is_some_and(|o| o.contains("fenced"))
            {
                *fenced.entry(w.id.clone()).or_insert(0) += 1;
            }
        }
    }
    let shared: Vec<_> = holders.iter().filter(|(_, h)| h.len() > 1).collect();
    assert!(shared.is_empty(), "tokens held by two workers: {shared:?}");
    eprintln!(
        "{} leased (partition, token) pairs; fenced refusals by worker: {fenced:?}",
        holders.len()
    );
    assert!(fenced.keys().all(|w| *w == paused_id), "{fenced:?}");

    Ok(())
}
