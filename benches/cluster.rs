//! A cluster of `serve --cluster` workers on one throwaway PostgreSQL server: throughput
//! with 1, 2 and 3 workers on the same partitions, the takeover time after a kill -9, and
//! what the lease bookkeeping costs PostgreSQL per partition per minute.
//!
//! `cargo bench --bench cluster` (`WAYMARK_BENCH_TENANTS`, default 200 tenants × 2
//! streams; `WAYMARK_BENCH_LATENCY_MS`, the API's latency per page, default 20;
//! `WAYMARK_BENCH_KILLS`, default 5 takeovers, 0 for throughput only).

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::{bin, env, sandbox, Killed, Postgres, Result};

/// The lease TTL of the workers.
const TTL: Duration = Duration::from_secs(5);

fn workflow(dir: &Path, tenants: u64, url: &str) -> Result<PathBuf> {
    let list: String = (0..tenants).map(|i| format!("t{i:03},{url}\n")).collect();
    std::fs::write(dir.join("tenants.csv"), format!("id,url\n{list}"))?;
    let stream = |name: &str, path: &str, field: &str, extra: &str| {
        format!(
            r#"
[[stream]]
name = "{name}"
path = "{path}"
records = "data"
primary_key = "id"
cursor_field = "{field}"
page_size = 100
pagination = {{ kind = "cursor", cursor_path = "next_cursor", cursor_param = "cursor", limit_param = "limit" }}
window = {{ lag = "1s", start_param = "updated_since", end_param = "updated_before" }}
{extra}
"#
        )
    };
    let text = format!(
        r#"[sync]
name = "shop"
schedule = {{ every = "1h" }}

[tenants]
file = "tenants.csv"

[source]
kind = "http"
base_url = "{{tenant.url}}"
rate_limit = {{ requests = 5000, per = "1s", burst = 50, across_tenants = true }}
{}{}
[destination]
kind = "postgres"
url = {{ env = "PG_URL" }}
schema = "t_{{tenant.id}}"
"#,
        stream("orders", "/orders", "updated_at", ""),
        stream(
            "orders_deleted",
            "/orders/deleted",
            "deleted_at",
            "deletes = \"orders\""
        )
    );
    let path = dir.join("shop.toml");
    std::fs::write(&path, text)?;
    Ok(path)
}

fn worker(dir: &Path, id: &str, workflow: &Path, url: &str) -> Result<Killed> {
    let state = dir.join(id);
    let ttl = format!("{}s", TTL.as_secs());
    let child = Command::new(bin())
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--cluster",
            "--lease-ttl",
            &ttl,
        ])
        .args(["--worker-id", id, "--max-concurrent-runs", "8"])
        .arg(workflow)
        .env("WAYMARK_STATE_DIR", &state)
        .env("WAYMARK_CLUSTER_URL", url)
        .env("PG_URL", url)
        .env("WAYMARK_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(dir.join(format!("{id}.log")))?,
        )
        .spawn()?;
    Ok(Killed(child))
}

/// How many partitions completed a run, and the records they wrote.
fn completed(pg: &Postgres, db: &str) -> Result<(u64, u64)> {
    let out = pg.sql(
        db,
        "SELECT count(*), coalesce(sum(records), 0) FROM (
           SELECT DISTINCT ON (sync, stream) status, records FROM waymark_cluster.runs
           ORDER BY sync, stream, started_at DESC) r WHERE status = 'completed'",
    )?;
    let mut parts = out.trim().split('|').map(|n| n.parse::<u64>().unwrap_or(0));
    Ok((parts.next().unwrap_or(0), parts.next().unwrap_or(0)))
}

/// Partitions held by an incarnation of `id`, and partitions held by nobody.
fn held_by(pg: &Postgres, db: &str, id: &str) -> Result<(u64, u64)> {
    let out = pg.sql(
        db,
        &format!(
            "SELECT count(*) FILTER (WHERE split_part(holder, '#', 1) = '{id}' AND expires_at > now()),
                    count(*) FILTER (WHERE holder IS NULL OR expires_at <= now())
             FROM waymark_cluster.leases"
        ),
    )?;
    let mut parts = out.trim().split('|').map(|n| n.parse::<u64>().unwrap_or(0));
    Ok((parts.next().unwrap_or(0), parts.next().unwrap_or(0)))
}

fn wait(mut done: impl FnMut() -> bool, limit: Duration) -> Result<Duration> {
    let began = Instant::now();
    while !done() {
        if began.elapsed() > limit {
            return Err(format!("not done after {limit:?}").into());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(began.elapsed())
}

fn main() -> Result {
    let tenants = env("WAYMARK_BENCH_TENANTS", 200);
    let kills = env("WAYMARK_BENCH_KILLS", 5);
    let latency = env("WAYMARK_BENCH_LATENCY_MS", 20);
    let partitions = tenants * 2;
    let pg = Postgres::start()?;
    let latency_arg = format!("{latency}ms");
    let (_sandbox, api) = sandbox(&["--records", "500", "--seed", "3", "--latency", &latency_arg])?;
    let dir = std::env::temp_dir().join(format!("waymark-bench-cluster-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let workflow = workflow(&dir, tenants, &api)?;
    println!(
        "{tenants} tenants × 2 streams = {partitions} partitions, 500 orders each (page 100, \
         {latency} ms a page), 8 runs at once per worker, lease TTL {TTL:?}"
    );

    // Throughput: every partition's first run, by 1, 2 and 3 workers.
    let mut one = 0.0;
    for n in 1..=3u64 {
        let db = format!("run{n}");
        let url = pg.database(&db)?;
        let here = dir.join(&db);
        std::fs::create_dir_all(&here)?;
        let began = Instant::now();
        let workers: Vec<Killed> = (1..=n)
            .map(|i| worker(&here, &format!("w{i}"), &workflow, &url))
            .collect::<Result<_>>()?;
        let mut records = 0;
        wait(
            || match completed(&pg, &db) {
                Ok((done, r)) => {
                    records = r;
                    done == partitions
                }
                Err(_) => false,
            },
            Duration::from_secs(900),
        )?;
        let took = began.elapsed().as_secs_f64();
        let rate = records as f64 / took;
        if n == 1 {
            one = rate;
        }
        println!(
            "{n} worker{}: {records} records in {took:.1} s = {rate:.0} records/s ({:.2}× one worker)",
            if n == 1 { "" } else { "s" },
            rate / one
        );
        drop(workers);
    }

    if kills == 0 {
        let _ = std::fs::remove_dir_all(&dir);
        return Ok(());
    }
    // Takeover after kill -9, and the bookkeeping of idle workers.
    let db = "takeover";
    let url = pg.database(db)?;
    let here = dir.join(db);
    std::fs::create_dir_all(&here)?;
    let mut workers: Vec<Killed> = (1..=3)
        .map(|i| worker(&here, &format!("w{i}"), &workflow, &url))
        .collect::<Result<_>>()?;
    wait(
        || completed(&pg, db).is_ok_and(|(done, _)| done == partitions),
        Duration::from_secs(900),
    )?;
    let stats = "SELECT coalesce(sum(n_tup_ins + n_tup_upd + n_tup_del), 0)
                 FROM pg_stat_user_tables WHERE schemaname = 'waymark_cluster'";
    let xacts = format!("SELECT xact_commit FROM pg_stat_database WHERE datname = '{db}'");
    let number = |sql: &str| -> Result<f64> { Ok(pg.sql(db, sql)?.trim().parse()?) };
    let (rows0, xact0) = (number(stats)?, number(&xacts)?);
    let window = Duration::from_secs(60);
    std::thread::sleep(window);
    let (rows1, xact1) = (number(stats)?, number(&xacts)?);
    let per = |d: f64| d / partitions as f64 * 60.0 / window.as_secs_f64();
    println!(
        "bookkeeping, 3 idle workers: {:.2} row writes and {:.2} statements per partition per \
         minute ({:.0} and {:.0} a minute in all)",
        per(rows1 - rows0),
        per(xact1 - xact0),
        rows1 - rows0,
        xact1 - xact0
    );
    let mut times = Vec::new();
    for k in 0..kills {
        let victim = usize::try_from(k % 3)?;
        let id = format!("w{}", victim + 1);
        let (held, _) = held_by(&pg, db, &id)?;
        let killed = Instant::now();
        // Dropping the old process SIGKILLs it.
        workers[victim] = Killed(Command::new("true").spawn()?);
        wait(
            || held_by(&pg, db, &id).is_ok_and(|(h, free)| h == 0 && free == 0),
            Duration::from_secs(60),
        )?;
        let took = killed.elapsed();
        println!("kill -9 of {id} ({held} partitions): taken over in {took:.2?}");
        times.push(took);
        workers[victim] = worker(&here, &id, &workflow, &url)?;
        // Back to an even share before the next kill: the others keep theirs (400
        // partitions: 134 each), it takes the rest (132).
        let rest = partitions - 2 * partitions.div_ceil(3);
        wait(
            || held_by(&pg, db, &id).is_ok_and(|(h, free)| h >= rest && free == 0),
            Duration::from_secs(60),
        )?;
    }
    times.sort();
    if let (Some(median), Some(worst)) = (times.get(times.len() / 2), times.last()) {
        println!(
            "takeover after kill -9: median {median:.2?}, worst {worst:.2?} (goal: ≤ TTL + 1 s = {:?})",
            TTL + Duration::from_secs(1)
        );
    }
    drop(workers);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
