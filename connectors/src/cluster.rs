//! The coordinator of a cluster of workers: tables in PostgreSQL (schema `waymark_cluster`)
//! that every `waymark serve --cluster` shares. PostgreSQL's own clock decides every
//! expiry, so the workers' clocks never have to agree.
//!
//! - `workers`: who is alive (a heartbeat every third of the lease TTL).
//! - `leases`: one row per partition (a sync — a tenant's instance — and a stream): its
//!   holder, a fencing token that only grows, when the lease expires, when its last run
//!   started. A worker takes free or expired partitions with `SELECT … FOR UPDATE SKIP
//!   LOCKED` up to its even share, renews what it holds, and gives back what is over its
//!   share (a worker joining takes its share within one lease period).
//! - `lease_log`: every acquisition (partition, token, holder, the previous holder).
//! - `runs`: the latest summary of every run of every worker, for `cluster status`.

use std::collections::BTreeMap;
use std::time::Duration;

pub use tokio_postgres::{Client, Row};
use waymark_engine::{destination, Lease};

use crate::sink::postgres::connect;
use crate::sink::postgres::tls::Rustls;

/// A partition: (sync, stream).
pub type Partition = (String, String);

/// What a worker holds after a tick: each partition's lease.
pub type Held = BTreeMap<Partition, Lease>;

/// What a round leaves this worker with.
#[derive(Debug, Default)]
pub struct Tick {
    /// The partitions held now, with their leases.
    pub held: Held,
    /// Held partitions over this worker's share whose runs are going: to pause.
    pub pause: Vec<Partition>,
    /// Partitions no longer held, to give back ([`Coordinator::release`]) once this
    /// worker stopped counting them.
    pub give_back: Vec<Partition>,
}

/// A connection to the cluster's tables.
pub struct Coordinator {
    client: Client,
    url: String,
    tls: Rustls,
    /// This worker's id.
    pub worker: String,
    ttl: Duration,
    /// The partitions last made sure of (rows are added only when this changes).
    known: Vec<Partition>,
    /// Whether a round went by since it registered (see [`Coordinator::tick`]).
    settled: bool,
}

/// Why the coordinator cannot be used.
pub type Error = destination::Error;

fn failed(what: &'static str) -> impl Fn(tokio_postgres::Error) -> Error {
    move |e| {
        let message = e
            .as_db_error()
            .map_or_else(|| e.to_string(), |db| db.message().to_string());
        Error::transient(format!("cluster coordinator: {what}: {message}"))
    }
}

/// Milliseconds as PostgreSQL's `interval` input.
fn interval(d: Duration) -> String {
    format!("{} milliseconds", d.as_millis())
}

const SCHEMA: &str = "
    CREATE SCHEMA IF NOT EXISTS waymark_cluster;
    CREATE TABLE IF NOT EXISTS waymark_cluster.workers (
        id text PRIMARY KEY,
        host text NOT NULL,
        pid integer NOT NULL,
        started_at timestamptz NOT NULL DEFAULT now(),
        heartbeat_at timestamptz NOT NULL DEFAULT now()
    );
    CREATE TABLE IF NOT EXISTS waymark_cluster.leases (
        sync text NOT NULL,
        stream text NOT NULL,
        holder text,
        token bigint NOT NULL DEFAULT 0,
        expires_at timestamptz,
        last_started_at timestamptz,
        PRIMARY KEY (sync, stream)
    );
    CREATE TABLE IF NOT EXISTS waymark_cluster.lease_log (
        sync text NOT NULL,
        stream text NOT NULL,
        token bigint NOT NULL,
        holder text NOT NULL,
        previous text,
        acquired_at timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (sync, stream, token)
    );
    CREATE TABLE IF NOT EXISTS waymark_cluster.runs (
        run_id text PRIMARY KEY,
        worker text NOT NULL,
        sync text NOT NULL,
        stream text NOT NULL,
        status text NOT NULL,
        records bigint NOT NULL,
        started_at text NOT NULL,
        updated_at text NOT NULL,
        summary text NOT NULL
    );";

/// The token as PostgreSQL stores it.
fn token(t: i64) -> u64 {
    u64::try_from(t).unwrap_or(0)
}

impl Coordinator {
    /// Connects, creates the tables if they are missing (one worker at a time), and
    /// registers this process as `<worker>#<random>`: each incarnation of a worker id
    /// holds leases of its own, so a process that restarts under the same id, or one
    /// started twice, never shares a token with an earlier one.
    pub async fn connect(
        url: &str,
        ca_file: Option<&std::path::Path>,
        worker: &str,
        ttl: Duration,
    ) -> Result<Self, Error> {
        let tls = Rustls::new(ca_file).map_err(Error::permanent)?;
        let client = connect(url, tls.clone()).await?;
        // Workers starting together must not race to create the same tables.
        client
            .batch_execute(&format!(
                "BEGIN; SELECT pg_advisory_xact_lock(7261636); {SCHEMA} COMMIT;"
            ))
            .await
            .map_err(failed("creating its tables"))?;
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_default();
        let pid = i32::try_from(std::process::id()).unwrap_or(0);
        let random = uuid::Uuid::now_v7().simple().to_string();
        let incarnation = format!("{worker}#{}", &random[random.len() - 6..]);
        // Earlier incarnations of this id that stopped beating are gone (their leases
        // expire, or were given back).
        client
            .execute(
                "DELETE FROM waymark_cluster.workers
                 WHERE split_part(id, '#', 1) = $1
                   AND heartbeat_at < now() - $2::text::interval",
                &[&worker, &interval(ttl)],
            )
            .await
            .map_err(failed("forgetting earlier incarnations"))?;
        let worker = incarnation.as_str();
        client
            .execute(
                "INSERT INTO waymark_cluster.workers (id, host, pid) VALUES ($1, $2, $3)
                 ON CONFLICT (id) DO UPDATE SET host = excluded.host, pid = excluded.pid,
                   started_at = now(), heartbeat_at = now()",
                &[&worker, &host, &pid],
            )
            .await
            .map_err(failed("registering the worker"))?;
        Ok(Coordinator {
            client,
            url: url.to_string(),
            tls,
            worker: worker.to_string(),
            ttl,
            known: Vec::new(),
            settled: false,
        })
    }

    /// The lease TTL.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    async fn reconnect(&mut self) -> Result<(), Error> {
        if self.client.is_closed() {
            self.client = connect(&self.url, self.tls.clone()).await?;
        }
        Ok(())
    }

    /// One round: heartbeat, make sure every partition of `wanted` has a row, renew what
    /// this worker holds, then take free partitions up to its even share, or choose what
    /// to give back over it (never one of `busy`, whose runs are going: those are to
    /// pause, and given back at a later round). What it chooses to give back is not given
    /// back here: the caller first stops counting it (in its share of a rate budget), then
    /// calls [`Coordinator::release`].
    pub async fn tick(&mut self, wanted: &[Partition], busy: &[Partition]) -> Result<Tick, Error> {
        self.reconnect().await?;
        let ttl = interval(self.ttl);
        let me = self.worker.clone();
        let (syncs, streams): (Vec<&str>, Vec<&str>) =
            wanted.iter().map(|(a, b)| (a.as_str(), b.as_str())).unzip();
        self.client
            .execute(
                "UPDATE waymark_cluster.workers SET heartbeat_at = now() WHERE id = $1",
                &[&me],
            )
            .await
            .map_err(failed("heartbeat"))?;
        if self.known != wanted {
            self.client
                .execute(
                    "INSERT INTO waymark_cluster.leases (sync, stream)
                     SELECT * FROM unnest($1::text[], $2::text[])
                     ON CONFLICT DO NOTHING",
                    &[&syncs, &streams],
                )
                .await
                .map_err(failed("adding partitions"))?;
            self.known = wanted.to_vec();
        }
        // Renew what is still ours once a third of its TTL has gone (an expired lease may
        // have been taken: it is not), then read what is ours.
        self.client
            .execute(
                "UPDATE waymark_cluster.leases SET expires_at = now() + $2::text::interval
                 WHERE holder = $1 AND expires_at > now()
                   AND expires_at < now() + $3::text::interval",
                &[&me, &ttl, &interval(self.ttl * 2 / 3)],
            )
            .await
            .map_err(failed("renewing leases"))?;
        let renewed = self
            .client
            .query(
                "SELECT sync, stream, token FROM waymark_cluster.leases
                 WHERE holder = $1 AND expires_at > now()",
                &[&me],
            )
            .await
            .map_err(failed("reading leases"))?;
        let mut held = Held::new();
        for row in renewed {
            let key: Partition = (row.get(0), row.get(1));
            held.insert(key, self.lease(token(row.get(2)), None));
        }
        // A lease of a partition no longer wanted (its workflow or tenant is gone) is
        // given back.
        let gone: Vec<Partition> = held
            .keys()
            .filter(|k| !wanted.contains(k))
            .cloned()
            .collect();
        let workers: i64 = self
            .client
            .query_one(
                "SELECT count(*) FROM waymark_cluster.workers
                 WHERE heartbeat_at > now() - $1::text::interval",
                &[&ttl],
            )
            .await
            .map_err(failed("counting workers"))?
            .get(0);
        let share =
            waymark_engine::lease::share(wanted.len(), usize::try_from(workers).unwrap_or(1));
        let kept = held.len() - gone.len();
        let mut release = gone;
        let mut to_pause = Vec::new();
        if kept > share {
            // Over the share: idle partitions first; busy ones are paused, then given
            // back at a later tick.
            let mut over: Vec<&Partition> = held.keys().filter(|k| wanted.contains(k)).collect();
            over.sort_by_key(|k| busy.contains(k));
            for key in over.into_iter().take(kept - share) {
                match busy.contains(key) {
                    true => to_pause.push(key.clone()),
                    false => release.push(key.clone()),
                }
            }
        }
        for key in &release {
            held.remove(key);
        }
        // Nothing is taken in the first round: workers started together all count one
        // another before any takes its share (else the first to join takes everything,
        // then gives back what the others need, pausing its runs of it).
        let room = match self.settled {
            true => share.saturating_sub(held.len()),
            false => 0,
        };
        self.settled = true;
        if room > 0 {
            let limit = i64::try_from(room).unwrap_or(i64::MAX);
            let taken = self
                .client
                .query(
                    "WITH free AS (
                         SELECT l.sync, l.stream, l.holder AS previous
                         FROM waymark_cluster.leases l
                         JOIN unnest($2::text[], $3::text[]) AS w(sync, stream)
                           ON w.sync = l.sync AND w.stream = l.stream
                         WHERE l.holder IS NULL OR l.expires_at <= now()
                         ORDER BY l.sync, l.stream
                         FOR UPDATE OF l SKIP LOCKED
                         LIMIT $4
                     ), taken AS (
                         UPDATE waymark_cluster.leases l
                         SET holder = $1, token = l.token + 1,
                             expires_at = now() + $5::text::interval
                         FROM free
                         WHERE l.sync = free.sync AND l.stream = free.stream
                         RETURNING l.sync, l.stream, l.token, free.previous
                     ), logged AS (
                         INSERT INTO waymark_cluster.lease_log
                           (sync, stream, token, holder, previous)
                         SELECT sync, stream, token, $1, previous FROM taken
                     )
                     SELECT sync, stream, token, previous FROM taken",
                    &[&me, &syncs, &streams, &limit, &ttl],
                )
                .await
                .map_err(failed("taking leases"))?;
            for row in taken {
                let key: Partition = (row.get(0), row.get(1));
                let previous: Option<String> = row.get(3);
                held.insert(key, self.lease(token(row.get(2)), previous));
            }
        }
        Ok(Tick {
            held,
            pause: to_pause,
            give_back: release,
        })
    }

    fn lease(&self, token: u64, previous: Option<String>) -> Lease {
        Lease {
            token,
            holder: self.worker.clone(),
            previous,
        }
    }

    /// Gives `partitions` back at once (another worker can take them now).
    pub async fn release(&mut self, partitions: &[Partition]) -> Result<(), Error> {
        let (syncs, streams): (Vec<&str>, Vec<&str>) = partitions
            .iter()
            .map(|(a, b)| (a.as_str(), b.as_str()))
            .unzip();
        self.client
            .execute(
                "UPDATE waymark_cluster.leases l SET holder = NULL, expires_at = now()
                 FROM unnest($2::text[], $3::text[]) AS r(sync, stream)
                 WHERE l.sync = r.sync AND l.stream = r.stream AND l.holder = $1",
                &[&self.worker, &syncs, &streams],
            )
            .await
            .map_err(failed("releasing leases"))?;
        Ok(())
    }

    /// Stopping: every lease given back, the worker gone.
    pub async fn leave(&mut self) -> Result<(), Error> {
        self.reconnect().await?;
        self.client
            .execute(
                "UPDATE waymark_cluster.leases SET holder = NULL, expires_at = now()
                 WHERE holder = $1",
                &[&self.worker],
            )
            .await
            .map_err(failed("releasing leases"))?;
        self.client
            .execute(
                "DELETE FROM waymark_cluster.workers WHERE id = $1",
                &[&self.worker],
            )
            .await
            .map_err(failed("leaving"))?;
        Ok(())
    }

    /// A run of `partition` started now (its next worker schedules from here).
    pub async fn started(&mut self, partition: &Partition) -> Result<(), Error> {
        self.client
            .execute(
                "UPDATE waymark_cluster.leases SET last_started_at = now()
                 WHERE sync = $1 AND stream = $2",
                &[&partition.0, &partition.1],
            )
            .await
            .map_err(failed("noting a run's start"))?;
        Ok(())
    }

    /// When the last run of each partition started, on any worker (seconds since the
    /// epoch).
    pub async fn last_started(&mut self) -> Result<BTreeMap<Partition, f64>, Error> {
        let rows = self
            .client
            .query(
                "SELECT sync, stream, extract(epoch FROM last_started_at)::float8
                 FROM waymark_cluster.leases WHERE last_started_at IS NOT NULL",
                &[],
            )
            .await
            .map_err(failed("reading run starts"))?;
        Ok(rows
            .into_iter()
            .map(|r| ((r.get(0), r.get(1)), r.get(2)))
            .collect())
    }

    /// Mirrors a run's summary (the latest state wins).
    #[allow(clippy::too_many_arguments)]
    pub async fn mirror_run(
        &mut self,
        run: &str,
        partition: &Partition,
        status: &str,
        records: u64,
        started_at: &str,
        updated_at: &str,
        summary: &str,
    ) -> Result<(), Error> {
        let records = i64::try_from(records).unwrap_or(i64::MAX);
        self.client
            .execute(
                "INSERT INTO waymark_cluster.runs
                   (run_id, worker, sync, stream, status, records, started_at, updated_at, summary)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
                 ON CONFLICT (run_id) DO UPDATE SET status = excluded.status,
                   records = excluded.records, updated_at = excluded.updated_at,
                   summary = excluded.summary",
                &[
                    &run,
                    &self.worker,
                    &partition.0,
                    &partition.1,
                    &status,
                    &records,
                    &started_at,
                    &updated_at,
                    &summary,
                ],
            )
            .await
            .map_err(failed("mirroring a run"))?;
        Ok(())
    }
}

/// Reads the cluster's state without joining it (`waymark cluster status`).
pub async fn observe(url: &str, ca_file: Option<&std::path::Path>) -> Result<Client, Error> {
    let tls = Rustls::new(ca_file).map_err(Error::permanent)?;
    connect(url, tls).await
}
