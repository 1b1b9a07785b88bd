//! `waymark cluster status`: the workers of a cluster, their leases and heartbeats, the
//! partitions waiting for a worker, and the latest runs, read from the coordinator's
//! tables (without joining the cluster). Also what `runs --cluster` and `status
//! --cluster` read: the run summaries every worker mirrors there.

use clap::{Args, Subcommand};
use serde_json::{json, Value};
use waymark_connectors::cluster::observe;
use waymark_connectors::cluster::{Client, Row};
use waymark_connectors::http::excerpt::printable;

use super::{ExitStatus, UsageError};

/// Where the coordinator is (`--cluster-url-env`, `--cluster-ca-file`).
#[derive(Debug, Clone, Args)]
pub struct Coordinates {
    /// The environment variable holding the coordinator's connection string.
    #[arg(long, value_name = "VAR", default_value = "WAYMARK_CLUSTER_URL")]
    pub cluster_url_env: String,
    /// A PEM file of extra CA certificates for the coordinator's TLS.
    #[arg(long, value_name = "FILE")]
    pub cluster_ca_file: Option<std::path::PathBuf>,
}

/// Connects to the coordinator as an observer; refused when it holds no cluster yet.
async fn connect(at: &Coordinates) -> anyhow::Result<Client> {
    let var = &at.cluster_url_env;
    let url = std::env::var(var).map_err(|_| {
        UsageError(format!(
            "environment variable {var} is not set (the coordinator's PostgreSQL connection \
             string)"
        ))
    })?;
    let client = observe(&url, at.cluster_ca_file.as_deref()).await?;
    let exists: bool = client
        .query_one(
            "SELECT to_regclass('waymark_cluster.leases') IS NOT NULL",
            &[],
        )
        .await?
        .get(0);
    if !exists {
        return Err(UsageError(
            "no cluster in this database yet: `waymark serve --cluster` creates its tables".into(),
        )
        .into());
    }
    Ok(client)
}

/// A run as a worker mirrored it: `runs --json`'s object, with the `worker` that ran it.
fn mirrored(worker: String, summary: &str) -> Value {
    let mut run: Value = serde_json::from_str(summary).unwrap_or_else(|_| json!({}));
    if let Some(fields) = run.as_object_mut() {
        fields.insert("worker".into(), Value::String(worker));
    }
    run
}

/// Every run mirrored by the cluster's workers, oldest first.
pub async fn runs(at: &Coordinates) -> anyhow::Result<Vec<Value>> {
    let client = connect(at).await?;
    let rows = client
        .query(
            "SELECT worker, summary FROM waymark_cluster.runs ORDER BY started_at, run_id",
            &[],
        )
        .await?;
    Ok(rows.iter().map(|r| mirrored(r.get(0), r.get(1))).collect())
}

/// A partition of the cluster as `status --cluster` sees it.
pub struct Partition {
    pub sync: String,
    pub stream: String,
    /// Its worker, while its lease lasts.
    pub holder: Option<String>,
    /// How long it has waited for a worker (seconds), when none holds it.
    pub waiting_s: Option<f64>,
    /// Its latest run, and its latest completed one (`runs --json` objects, with `worker`).
    pub last: Option<Value>,
    pub last_completed: Option<Value>,
}

/// Every partition of the cluster with its holder and latest runs.
pub async fn partitions(at: &Coordinates) -> anyhow::Result<Vec<Partition>> {
    let client = connect(at).await?;
    let rows = client
        .query(
            "SELECT l.sync, l.stream,
                    CASE WHEN l.expires_at > now() THEN l.holder END,
                    CASE WHEN l.holder IS NULL OR l.expires_at <= now() THEN
                      extract(epoch FROM now() - coalesce(l.expires_at, now()))::float8 END,
                    r.worker, r.summary, c.worker, c.summary
             FROM waymark_cluster.leases l
             LEFT JOIN LATERAL (
               SELECT worker, summary FROM waymark_cluster.runs
               WHERE sync = l.sync AND stream = l.stream
               ORDER BY started_at DESC, run_id DESC LIMIT 1) r ON true
             LEFT JOIN LATERAL (
               SELECT worker, summary FROM waymark_cluster.runs
               WHERE sync = l.sync AND stream = l.stream AND status = 'completed'
               ORDER BY started_at DESC, run_id DESC LIMIT 1) c ON true
             ORDER BY l.sync, l.stream",
            &[],
        )
        .await?;
    let run = |r: &Row, i: usize| {
        let worker: Option<String> = r.get(i);
        let summary: Option<String> = r.get(i + 1);
        worker.zip(summary).map(|(w, s)| mirrored(w, &s))
    };
    Ok(rows
        .iter()
        .map(|r| Partition {
            sync: r.get(0),
            stream: r.get(1),
            holder: r.get(2),
            waiting_s: r.get(3),
            last: run(r, 4),
            last_completed: run(r, 6),
        })
        .collect())
}

/// Arguments of `waymark cluster`.
#[derive(Debug, Args)]
pub struct ClusterArgs {
    #[command(subcommand)]
    action: Action,
}

#[derive(Debug, Subcommand)]
enum Action {
    /// Workers (heartbeat, leases held), partitions waiting for one, each partition's
    /// holder and latest run. Exit 1 when a partition has waited longer than a lease
    /// TTL or no worker is alive.
    Status {
        #[command(flatten)]
        coordinates: Coordinates,
        /// Also every partition: its holder, token, lease expiry and latest run.
        #[arg(long)]
        partitions: bool,
        /// One JSON object per line (`worker`, `waiting` and, with --partitions,
        /// `partition` lines).
        #[arg(long)]
        json: bool,
    },
}

/// Runs `waymark cluster`.
pub async fn run(args: ClusterArgs) -> anyhow::Result<ExitStatus> {
    let Action::Status {
        coordinates,
        partitions,
        json,
    } = args.action;
    let client = connect(&coordinates).await?;
    let workers = client
        .query(
            "SELECT w.id, w.host, w.pid,
                    extract(epoch FROM now() - w.heartbeat_at)::float8,
                    (SELECT count(*) FROM waymark_cluster.leases l
                      WHERE l.holder = w.id AND l.expires_at > now()),
                    extract(epoch FROM now() - w.started_at)::float8
             FROM waymark_cluster.workers w ORDER BY w.id",
            &[],
        )
        .await?;
    let waiting = client
        .query(
            "SELECT sync, stream, holder,
                    extract(epoch FROM now() - coalesce(expires_at, now()))::float8
             FROM waymark_cluster.leases
             WHERE holder IS NULL OR expires_at <= now() ORDER BY sync, stream",
            &[],
        )
        .await?;
    let total: i64 = client
        .query_one("SELECT count(*) FROM waymark_cluster.leases", &[])
        .await?
        .get(0);
    let mut alive = 0;
    if !json {
        out!(
            "{:<28}  {:<16}  {:>7}  {:>9}  {:>6}  {:>9}",
            "worker",
            "host",
            "pid",
            "heartbeat",
            "leases",
            "up"
        );
    }
    for w in &workers {
        let (id, host, pid): (String, String, i32) = (w.get(0), w.get(1), w.get(2));
        let (beat, leases, up): (f64, i64, f64) = (w.get(3), w.get(4), w.get(5));
        alive += usize::from(leases > 0 || beat < 60.0);
        match json {
            true => out!(
                "{}",
                json!({"worker": id, "host": host, "pid": pid, "heartbeat_s": beat,
                       "leases": leases, "up_s": up})
            ),
            false => out!(
                "{:<28}  {:<16}  {pid:>7}  {:>8.1}s  {leases:>6}  {:>8.0}s",
                printable(&id),
                printable(&host),
                beat,
                up
            ),
        }
    }
    let mut stuck = false;
    for p in &waiting {
        let (sync, stream, previous): (String, String, Option<String>) =
            (p.get(0), p.get(1), p.get(2));
        let waited: f64 = p.get(3);
        stuck |= waited > 60.0;
        match json {
            true => out!(
                "{}",
                json!({"waiting": format!("{sync}/{stream}"), "waited_s": waited,
                       "previous": previous})
            ),
            false => out!(
                "waiting   {}/{}  for {:.1}s{}",
                printable(&sync),
                printable(&stream),
                waited,
                previous.map_or(String::new(), |p| format!(
                    " (last held by {})",
                    printable(&p)
                ))
            ),
        }
    }
    if !json {
        out!(
            "{total} partitions: {} held, {} waiting; {} workers",
            total - i64::try_from(waiting.len()).unwrap_or(0),
            waiting.len(),
            workers.len()
        );
    }
    if partitions {
        let rows = client
            .query(
                "SELECT l.sync, l.stream, l.holder, l.token,
                        extract(epoch FROM l.expires_at - now())::float8,
                        r.run_id, r.status, r.records, r.worker, r.started_at
                 FROM waymark_cluster.leases l
                 LEFT JOIN LATERAL (
                   SELECT run_id, status, records, worker, started_at FROM waymark_cluster.runs
                   WHERE sync = l.sync AND stream = l.stream
                   ORDER BY started_at DESC LIMIT 1) r ON true
                 ORDER BY l.sync, l.stream",
                &[],
            )
            .await?;
        for r in rows {
            let (sync, stream, holder, token): (String, String, Option<String>, i64) =
                (r.get(0), r.get(1), r.get(2), r.get(3));
            let expires: Option<f64> = r.get(4);
            let (run, status, records, ran_on): (
                Option<String>,
                Option<String>,
                Option<i64>,
                Option<String>,
            ) = (r.get(5), r.get(6), r.get(7), r.get(8));
            let started: Option<String> = r.get(9);
            match json {
                true => out!(
                    "{}",
                    json!({"partition": format!("{sync}/{stream}"), "holder": holder,
                           "token": token, "expires_in_s": expires, "last_run": run,
                           "last_status": status, "last_records": records,
                           "last_worker": ran_on, "last_started": started})
                ),
                false => out!(
                    "{}/{}  {}  token {token}  {}",
                    printable(&sync),
                    printable(&stream),
                    holder.as_deref().map_or("-".into(), printable),
                    match (run, status) {
                        (Some(run), Some(status)) => format!(
                            "last run {run} {status} ({} records) on {}",
                            records.unwrap_or(0),
                            ran_on.as_deref().map_or("-".into(), printable)
                        ),
                        _ => "never ran".into(),
                    }
                ),
            }
        }
    }
    Ok(match stuck || (alive == 0 && total > 0) {
        true => ExitStatus::Failed,
        false => ExitStatus::Success,
    })
}
