//! `serve --cluster`: this worker's side of the lease protocol. A task of its own talks to
//! the coordinator tables in PostgreSQL every second (a third of the lease TTL if shorter:
//! heartbeat, renew,
//! take its even share, give back what is over it) and tells the loop what it holds; the
//! loop schedules only those partitions and runs each under its lease. Runs' starts and
//! ends are mirrored to the coordinator. When the coordinator cannot be reached for a
//! whole TTL, every lease is taken for lost: runs pause, and resume once it answers again.
//! On stop, every lease is given back at once.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot, watch};
use waymark_connectors::cluster::{Coordinator, Held, Partition, Tick};
use waymark_engine::{Clock, Event, RunState, SystemClock};

use super::catalog::{Catalog, Loaded};

/// How `serve` joins a cluster.
#[derive(Clone, Debug)]
pub struct ClusterOptions {
    /// The coordinator's PostgreSQL connection string (from the environment).
    pub url: String,
    /// The environment variable it came from.
    pub url_env: String,
    /// Extra CA certificates for its TLS.
    pub ca_file: Option<PathBuf>,
    /// This worker's id.
    pub worker: String,
    /// How long a lease lasts without renewal.
    pub ttl: Duration,
}

impl ClusterOptions {
    /// The arguments that make `runs` and `status` read this cluster's coordinator.
    pub fn observer_args(&self) -> Vec<String> {
        let mut args = vec![
            "--cluster".to_string(),
            "--cluster-url-env".into(),
            self.url_env.clone(),
        ];
        if let Some(file) = &self.ca_file {
            args.extend(["--cluster-ca-file".into(), file.display().to_string()]);
        }
        args
    }
}

/// The longest time between two rounds.
const ROUND_AT_LEAST: Duration = Duration::from_secs(1);

/// What the loop tells the coordinator task.
pub enum Note {
    /// Give these partitions back: this worker no longer counts them.
    GiveBack(Vec<Partition>),
    /// A run started or ended, or a step changed its counts: mirror its summary.
    Run(Box<RunState>),
    /// Stop: give every lease back, then answer.
    Leave(oneshot::Sender<()>),
}

/// The loop's side: what it wants leased and what is running, to the task; rounds back.
pub struct Cluster {
    /// The partitions of the catalog (a change starts a round at once).
    pub wanted: watch::Sender<Vec<Partition>>,
    /// The partitions whose runs are going now (read at each round).
    pub busy: Arc<Mutex<Vec<Partition>>>,
    /// Each round's outcome.
    pub rounds: mpsc::UnboundedReceiver<Tick>,
    /// Runs to mirror; leaving.
    pub notes: mpsc::UnboundedSender<Note>,
    /// When each partition's last run started on any worker (seconds since the epoch).
    pub last_started: watch::Receiver<BTreeMap<Partition, f64>>,
    /// The partitions held now, with their leases.
    pub held: Held,
    /// The lease TTL.
    pub ttl: Duration,
}

impl Cluster {
    /// Gives every lease back (stopping); waits at most a few seconds.
    pub async fn leave(&self) {
        let (tx, rx) = oneshot::channel();
        if self.notes.send(Note::Leave(tx)).is_ok() {
            let _ = tokio::time::timeout(Duration::from_secs(5), rx).await;
        }
    }
}

/// Joins the cluster (connects, creates the tables, registers the worker) and starts the
/// coordinator task.
pub async fn join(options: &ClusterOptions, wanted: Vec<Partition>) -> anyhow::Result<Cluster> {
    let coordinator = Coordinator::connect(
        &options.url,
        options.ca_file.as_deref(),
        &options.worker,
        options.ttl,
    )
    .await?;
    tracing::info!(
        "joined the cluster as worker {} (lease TTL {})",
        coordinator.worker,
        humantime::format_duration(options.ttl)
    );
    let (wanted_tx, wanted_rx) = watch::channel(wanted);
    let busy = Arc::new(Mutex::new(Vec::new()));
    let (rounds_tx, rounds) = mpsc::unbounded_channel();
    let (notes, notes_rx) = mpsc::unbounded_channel();
    let (started_tx, last_started) = watch::channel(BTreeMap::new());
    tokio::spawn(coordinate(
        coordinator,
        (wanted_rx, busy.clone()),
        rounds_tx,
        notes_rx,
        started_tx,
    ));
    Ok(Cluster {
        wanted: wanted_tx,
        busy,
        rounds,
        notes,
        last_started,
        held: Held::new(),
        ttl: options.ttl,
    })
}

/// The coordinator task: a round every third of the TTL (at once when what is wanted
/// changes), the notes in between.
async fn coordinate(
    mut coordinator: Coordinator,
    (mut wanted, busy): (watch::Receiver<Vec<Partition>>, Arc<Mutex<Vec<Partition>>>),
    rounds: mpsc::UnboundedSender<Tick>,
    mut notes: mpsc::UnboundedReceiver<Note>,
    last_started: watch::Sender<BTreeMap<Partition, f64>>,
) {
    // Renewing takes a third of the TTL; looking for expired leases to take over, a second
    // at most: a dead worker's partitions move within the TTL and a second.
    let every = (coordinator.ttl() / 3).min(ROUND_AT_LEAST);
    let mut last_ok = Instant::now();
    let mut lost_said = false;
    let mut before = Held::new();
    loop {
        // Notes that came with the round's deadline first (a partition to give back
        // must not be counted as held again).
        while let Ok(note) = notes.try_recv() {
            if !take(&mut coordinator, note).await {
                return;
            }
        }
        let partitions = wanted.borrow_and_update().clone();
        let running = busy.lock().unwrap_or_else(PoisonError::into_inner).clone();
        match coordinator.tick(&partitions, &running).await {
            Ok(round) => {
                last_ok = Instant::now();
                lost_said = false;
                // Partitions newly held are scheduled from their last start anywhere.
                if round.held.keys().any(|k| !before.contains_key(k)) {
                    if let Ok(started) = coordinator.last_started().await {
                        last_started.send_replace(started);
                    }
                }
                before = round.held.clone();
                if rounds.send(round).is_err() {
                    return;
                }
            }
            Err(e) => {
                tracing::warn!("{e}");
                if last_ok.elapsed() >= coordinator.ttl() && !lost_said {
                    // Our leases may have been taken: hold nothing until it answers.
                    tracing::error!(
                        "the cluster coordinator has not answered for a lease TTL: pausing \
                         every run until it does"
                    );
                    lost_said = true;
                    if rounds.send(Tick::default()).is_err() {
                        return;
                    }
                }
            }
        }
        let deadline = tokio::time::Instant::now() + every;
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => break,
                changed = wanted.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    break;
                }
                note = notes.recv() => match note {
                    Some(note) => if !take(&mut coordinator, note).await {
                        return;
                    },
                    None => return,
                },
            }
        }
    }
}

/// Does what a note says; `false` once the worker left.
async fn take(coordinator: &mut Coordinator, note: Note) -> bool {
    match note {
        Note::Run(state) => mirror(coordinator, &state).await,
        Note::GiveBack(partitions) => {
            if let Err(e) = coordinator.release(&partitions).await {
                // They stay this worker's until their leases expire.
                tracing::warn!("{e}");
            }
        }
        Note::Leave(done) => {
            if let Err(e) = coordinator.leave().await {
                tracing::warn!("leaving the cluster: {e}");
            }
            let _ = done.send(());
            return false;
        }
    }
    true
}

/// Mirrors a run's summary to the coordinator (best effort: logged if it fails).
async fn mirror(coordinator: &mut Coordinator, state: &RunState) {
    let partition = (state.started.sync.clone(), state.started.stream.clone());
    if state.last_seq <= 1 {
        if let Err(e) = coordinator.started(&partition).await {
            tracing::warn!("{e}");
        }
    }
    // What `runs --json` prints of it, for `runs --cluster` and `status --cluster`.
    let summary = crate::cli::runs::json_line(state).to_string();
    let result = coordinator
        .mirror_run(
            &state.run_id().to_string(),
            &partition,
            state.status.name(),
            state.counts.records_committed,
            &state.started.at.to_string(),
            &state.updated_at.to_string(),
            &summary,
        )
        .await;
    if let Err(e) = result {
        tracing::warn!("{e}");
    }
}

/// Gives each source connection of `catalog` its share of its budget: the partitions
/// sharing that budget (a tenant's streams; every tenant's, for a budget
/// `across_tenants`) this worker holds, of all of them, valid for half a TTL (each round
/// renews it; a worker that stops renewing stops sending).
pub fn share_budgets(catalog: &Catalog, held: &Held, ttl: Duration) {
    let valid_until = SystemClock.now().saturating_add(ttl / 2);
    let scope = |sync: &String, loaded: &Loaded| match loaded.api.budget_across_tenants() {
        true => format!("file {}", loaded.path.display()),
        false => format!("sync {sync}"),
    };
    let mut counts: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for (sync, loaded) in &catalog.syncs {
        let count = counts.entry(scope(sync, loaded)).or_default();
        for stream in loaded.workflow.streams() {
            count.1 += 1;
            count.0 += u64::from(held.contains_key(&(sync.clone(), stream.name.clone())));
        }
    }
    for (sync, loaded) in &catalog.syncs {
        if let Some((mine, all)) = counts.get(&scope(sync, loaded)) {
            loaded.api.share_budget(*mine, *all, valid_until);
        }
    }
}

/// Whether a journaled step changes a run's summary enough to mirror it: its start and
/// its end.
pub fn worth_mirroring(event: &Event) -> bool {
    matches!(
        event,
        Event::RunStarted(_)
            | Event::RunCompleted { .. }
            | Event::RunPaused { .. }
            | Event::RunFailed { .. }
            | Event::RunAbandoned { .. }
    )
}
