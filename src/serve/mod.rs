//! `waymark serve`: the long-running orchestrator. It loads workflow files, resumes every
//! unfinished run, then starts each scheduled stream when it is due, several at once,
//! until SIGTERM or SIGINT (then every run pauses at its next step boundary, and it exits
//! 0). A SIGKILL loses nothing: the next `serve` resumes what was running.
//!
//! - [`scheduler`]: which streams to start, a pure function of schedules, runs and time.
//! - [`catalog`]: the loaded workflow files, one shared API connection per source; files
//!   that change (or SIGHUP) are reloaded, and a file that fails validation keeps its
//!   previous version running.
//! - [`holds`]: the changing commands other processes send (`checkpoint set`, `dlq retry`,
//!   `run`…): the stream is held while one runs, its run paused at a step boundary first.
//! - [`web`]: the web view at `/`, pages of the same data as the CLI's `--json`.
//! - [`hooks`]: the webhook receiver. Accepted events wait in the inbox; a stream with new
//!   ones gets a run of its webhook scope (`<stream>@webhook`) as soon as a slot is free,
//!   and another once that one ends if more came meanwhile.
//!
//! The loop is the only place that reads the clock; each run is a task with its own handle
//! on the state directory (one sled database, one lock).

pub mod alerts;
pub mod api;
pub mod catalog;
pub mod cluster;
pub mod growth;
pub mod holds;
pub mod hooks;
pub mod metrics;
pub mod scheduler;
pub mod shared;
pub mod traffic;
pub mod web;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{mpsc, watch, Notify};
use waymark_connectors::cluster::Tick;
use waymark_connectors::config::{
    is_webhook_scope, parse_scope, webhook_scope, AlertsSection, StreamSection,
};
use waymark_connectors::webhook::inbox::Inbox;
use waymark_engine::{Clock, Event, Lease, RunState, StateDir, SystemClock, Timestamp};

use crate::cli::attach::Change;
use crate::cli::context::{set_refused, set_reload_failures, Budget};
use crate::cli::{describe, ExitStatus, UsageError};
use crate::sync::{apply_events, open_inbox, prune, resume_run, run_stream, Invocation, Ran};
use catalog::{Catalog, Loaded};
use cluster::ClusterOptions;
use holds::{Ended, Holds};
use metrics::Metrics;
use scheduler::{Decision, Scheduler};
use shared::{Ask, RunNow};
use traffic::Traffic;

/// A checkpoint scope: the sync and the stream (or a backfill or repair scope of it).
pub type Key = (String, String);

/// What `serve` is asked to do.
pub struct Options {
    /// Workflow files and directories of them.
    pub paths: Vec<PathBuf>,
    /// At most this many runs at once.
    pub max_concurrent_runs: usize,
    /// The local API's address.
    pub listen: SocketAddr,
    /// The webhook receiver's own address (else it is on the API's).
    pub webhook_listen: Option<SocketAddr>,
    /// Where the web view sends the changing commands it carries out (`dlq retry|drop`),
    /// as the socket does for the CLI.
    pub changes: mpsc::UnboundedSender<Change>,
    /// Share the work with other workers through PostgreSQL.
    pub cluster: Option<ClusterOptions>,
}

/// How often the loop looks at the stop flag while nothing else happens.
const STOP_POLL: Duration = Duration::from_millis(200);

/// A webhook scope's runs start at most this often.
const WEBHOOK_RUNS_EVERY: Duration = Duration::from_secs(1);

/// How often the workflow files are looked at for changes (SIGHUP reloads at once).
const LOOK_EVERY: Duration = Duration::from_secs(1);

/// How often tenants listed by a query are listed again (a file's are reloaded when it
/// changes; SIGHUP lists every one again at once).
const RELIST_EVERY: Duration = Duration::from_secs(60);

/// Serves until stopped; `Success` once every run it started has paused or ended.
/// `changes`: the changing commands other processes send (see `attach`).
pub async fn serve(
    dir: StateDir,
    options: Options,
    changes: mpsc::UnboundedReceiver<Change>,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<ExitStatus> {
    // Runs hold SQLite connections across their awaits, so they are tasks of this thread
    // (their work is mostly waiting on the network; blocking writes go to tokio's pool).
    tokio::task::LocalSet::new()
        .run_until(serve_here(dir, options, changes, stop))
        .await
}

async fn serve_here(
    mut dir: StateDir,
    options: Options,
    mut changes: mpsc::UnboundedReceiver<Change>,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<ExitStatus> {
    let files = catalog::files(&options.paths)?;
    let mut catalog = Catalog::load(&dir, &files).await?;
    // Once per file (a file's tenants keep alike).
    let mut pruned = std::collections::BTreeSet::new();
    for loaded in catalog.syncs.values() {
        if pruned.insert(&loaded.path) {
            prune(&mut dir, &loaded.workflow)?;
        }
    }
    let now = SystemClock.now();
    let mut scheduler = Scheduler::new(options.max_concurrent_runs);
    let mut cluster = match &options.cluster {
        Some(cluster) => {
            check_cluster(&catalog)?;
            Some(cluster::join(cluster, partitions_of(&catalog)).await?)
        }
        None => None,
    };
    let mut resumes = register(&dir, &catalog, &mut scheduler, now, cluster.as_ref())?;
    let metrics = Metrics::new();
    metrics.serving(scheduler.keys());
    metrics.time_requests(&catalog);
    let traffic = Arc::new(Traffic::default());
    let inbox = open_inbox(&dir)?;
    let committer = tokio::spawn(inbox.clone().commit());
    let (arrived_tx, mut arrived) = mpsc::unbounded_channel();
    let receiver = hooks::Receiver {
        hooks: Arc::new(std::sync::RwLock::new(Arc::new(hooks::table(&catalog)))),
        inbox: inbox.clone(),
        metrics: metrics.clone(),
        arrived: arrived_tx,
    };
    // Streams with events waiting (accepted before a restart, or since their last run).
    let mut pending = waiting_events(&catalog, &inbox);
    // When each webhook scope's latest run started.
    let mut hooked: BTreeMap<Key, Instant> = BTreeMap::new();

    let token = api::token(&options.listen)?;
    let listener = tokio::net::TcpListener::bind(options.listen)
        .await
        .map_err(|e| UsageError(format!("cannot listen on {}: {e}", options.listen)))?;
    let address = listener.local_addr()?;
    let (ask_tx, mut asks) = mpsc::unbounded_channel();
    let (alert_targets, targets_now) = watch::channel(alert_targets_of(&catalog));
    let alert_wake = Rc::new(Notify::new());
    tokio::task::spawn_local(alerts::watch(
        dir.share()?,
        targets_now,
        traffic.clone(),
        alert_wake.clone(),
    ));
    let (hooks_on_api, hooks_at) = match options.webhook_listen {
        Some(at) => {
            let listener = tokio::net::TcpListener::bind(at)
                .await
                .map_err(|e| UsageError(format!("cannot listen on {at}: {e}")))?;
            let at = listener.local_addr()?;
            tokio::spawn(hooks::serve(listener, receiver.clone()));
            (None, at)
        }
        None => (Some(hooks::router(receiver.clone())), address),
    };
    let (paths_tx, paths) = watch::channel(paths_of(&catalog));
    tokio::spawn(api::serve(
        listener,
        shared::Shared {
            cluster: options.cluster.as_ref().map(|c| c.observer_args().into()),
            ..shared::Shared::new(dir.share()?, metrics.clone(), ask_tx, token)
                .with_changes(options.changes.clone(), paths)
        },
        hooks_on_api,
    ));
    crate::cli::emit(format_args!(
        "waymark serve: the local API is on http://{address}"
    ));
    if !receiver.hooks_empty() {
        crate::cli::emit(format_args!(
            "waymark serve: webhooks are received on http://{hooks_at}/hooks/{{sync}}/{{stream}}"
        ));
    }
    tracing::info!(
        "serving {} workflow files, at most {} runs at once",
        files.len(),
        options.max_concurrent_runs
    );

    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<(Key, anyhow::Result<Ran>)>();
    let (released_tx, mut released) = mpsc::unbounded_channel();
    let mut holds = Holds::new(released_tx);
    // Each run's own stop flag: set on stop, or to pause it for a changing command.
    let mut pauses: BTreeMap<Key, Arc<AtomicBool>> = BTreeMap::new();
    let mut hangup = signal(SignalKind::hangup())?;
    let mut seen = catalog::look(&options.paths, &catalog);
    let mut listed = Instant::now();
    let mut looked = Instant::now();
    loop {
        if stop.load(Ordering::SeqCst) {
            break;
        }
        let now = SystemClock.now();
        for decision in scheduler.tick(now) {
            match decision {
                Decision::Skipped(key) => {
                    metrics.skipped(&key);
                    tracing::warn!(
                        "{}/{}: due while its run is still going; skipped ({} so far)",
                        key.0,
                        key.1,
                        scheduler.skipped(&key)
                    );
                }
                Decision::Start(key) => {
                    if is_webhook_scope(&key.1) {
                        hooked.insert(key.clone(), Instant::now());
                    }
                    let resume = resumes.remove(&key);
                    let pause = Arc::new(AtomicBool::new(false));
                    let watchers = (metrics.clone(), traffic.clone());
                    let lease = match &cluster {
                        Some(cluster) => match cluster.held.get(&key) {
                            Some(lease) => Some((lease.clone(), cluster.notes.clone())),
                            // Its lease went since it was due.
                            None => {
                                scheduler.finished(&key);
                                continue;
                            }
                        },
                        None => None,
                    };
                    match start(
                        &dir,
                        &catalog,
                        &key,
                        (resume, lease),
                        &pause,
                        watchers,
                        &inbox,
                    ) {
                        Ok(task) => {
                            pauses.insert(key.clone(), pause);
                            let done = done_tx.clone();
                            tokio::task::spawn_local(async move {
                                let outcome = task.await;
                                let _ = done.send((key, outcome));
                            });
                        }
                        Err(e) => {
                            let why = describe(&e);
                            tracing::error!("{}/{}: cannot start: {why}", key.0, key.1);
                            set_refused(&key, Some(why.clone()));
                            scheduler.finished(&key);
                            holds.ended(&key, &Err(why), &mut scheduler);
                        }
                    }
                }
            }
        }
        metrics.running(scheduler.running());
        if let Some(cluster) = &cluster {
            *cluster
                .busy
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) =
                pauses.keys().cloned().collect();
        }
        let wait = scheduler
            .next_wake(now)
            .map_or(STOP_POLL, |t| {
                Duration::from_millis(t.0.saturating_sub(now.0))
            })
            .min(STOP_POLL);
        let mut reload = false;
        tokio::select! {
            Some((key, outcome)) = done_rx.recv() => {
                pauses.remove(&key);
                scheduler.finished(&key);
                holds.ended(&key, &report(&key, outcome), &mut scheduler);
                // A stream removed while its run went on is forgotten now.
                metrics.serving(scheduler.keys());
                alert_wake.notify_one();
            }
            _ = tokio::time::sleep(wait) => {}
            _ = hangup.recv() => reload = true,
            Some(ask) = asks.recv() => match ask {
                Ask::RunNow(key, answer) => {
                    let _ = answer.send(run_now(&catalog, &mut scheduler, key, cluster.as_ref()));
                }
                Ask::Plan(answer) => {
                    let _ = answer.send(scheduler.plan());
                }
            },
            Some(change) = changes.recv() => match change {
                Change::Hold(key, reply) => {
                    let run = pauses.get(&key);
                    if holds.claim(key.clone(), reply, &mut scheduler, run.is_some()) {
                        tracing::info!("{}/{}: pausing its run for a command", key.0, key.1);
                        run.into_iter().for_each(|p| p.store(true, Ordering::SeqCst));
                    }
                }
                Change::Run(key, reply) => match run_now(&catalog, &mut scheduler, key.clone(), cluster.as_ref()) {
                    RunNow::Unknown => {
                        let _ = reply.send(Err(format!(
                            "serve has no stream {}/{} (is its workflow file one serve loads?)",
                            key.0, key.1
                        )));
                    }
                    RunNow::Accepted | RunNow::Running => holds.wait(key, reply),
                },
            },
            Some(key) = released.recv() => holds.release(&key, &mut scheduler, SystemClock.now()),
            Some(round) = next_round(&mut cluster) => {
                if let Some(cluster) = cluster.as_mut() {
                    let give_back = leases_changed(cluster, round, &pauses);
                    // What is given back stops counting in this worker's share first.
                    cluster::share_budgets(&catalog, &cluster.held, cluster.ttl);
                    if !give_back.is_empty() {
                        let _ = cluster.notes.send(cluster::Note::GiveBack(give_back));
                    }
                }
                resumes.extend(register(&dir, &catalog, &mut scheduler, SystemClock.now(), cluster.as_ref())?);
                metrics.serving(scheduler.keys());
            }
            Some(key) = arrived.recv() => {
                pending.insert((key.0, webhook_scope(&key.1)));
                while let Ok(key) = arrived.try_recv() {
                    pending.insert((key.0, webhook_scope(&key.1)));
                }
            }
        }
        // A webhook scope with new events runs now, or once its run going now ended, at
        // most once a second: events arriving together are applied together.
        let now = SystemClock.now();
        pending.retain(|key| {
            let recent = hooked
                .get(key)
                .is_some_and(|at| at.elapsed() < WEBHOOK_RUNS_EVERY);
            recent || scheduler.run_now(key, now) == Some(false)
        });
        if looked.elapsed() >= LOOK_EVERY {
            looked = Instant::now();
            let now_seen = catalog::look(&options.paths, &catalog);
            reload |= now_seen != seen;
            seen = now_seen;
        }
        if listed.elapsed() >= RELIST_EVERY {
            listed = Instant::now();
            reload |= catalog.lists_tenants_by_query();
        }
        if reload {
            // How the files looked before they are read: one written while it is read (a
            // half-written list) differs from this at the next look and is read again.
            seen = catalog::look(&options.paths, &catalog);
            resumes.extend(
                reload_files(
                    &dir,
                    &options.paths,
                    &mut catalog,
                    &mut scheduler,
                    &metrics,
                    &alert_targets,
                    cluster.as_ref(),
                )
                .await?,
            );
            receiver.reload(hooks::table(&catalog));
            if let Some(cluster) = &cluster {
                check_cluster(&catalog)?;
                cluster::share_budgets(&catalog, &cluster.held, cluster.ttl);
                cluster.wanted.send_replace(partitions_of(&catalog));
            }
            paths_tx.send_replace(paths_of(&catalog));
        }
    }
    // Stopping: every run pauses at its next step boundary.
    pauses
        .values()
        .for_each(|p| p.store(true, Ordering::SeqCst));
    let running = scheduler.running();
    if running > 0 {
        tracing::info!("stopping: waiting for {running} runs to pause at a step boundary");
    }
    while scheduler.running() > 0 {
        match done_rx.recv().await {
            Some((key, outcome)) => {
                scheduler.finished(&key);
                holds.ended(&key, &report(&key, outcome), &mut scheduler);
            }
            None => break,
        }
    }
    if let Some(cluster) = &cluster {
        cluster.leave().await;
        tracing::info!("left the cluster: every lease given back");
    }
    committer.abort();
    Ok(ExitStatus::Success)
}

/// The next round of the cluster's coordinator (never, outside a cluster).
async fn next_round(cluster: &mut Option<cluster::Cluster>) -> Option<Tick> {
    match cluster {
        Some(cluster) => cluster.rounds.recv().await,
        None => std::future::pending().await,
    }
}

/// A round's leases: runs of partitions no longer held (or held under a new token) pause
/// at their next step boundary, as do those over this worker's share. Returns the
/// partitions to give back.
fn leases_changed(
    cluster: &mut cluster::Cluster,
    round: Tick,
    pauses: &BTreeMap<Key, Arc<AtomicBool>>,
) -> Vec<Key> {
    for (key, lease) in &cluster.held {
        if round.held.get(key) != Some(lease) {
            tracing::info!("{}/{}: lease token {} lost", key.0, key.1, lease.token);
            if let Some(pause) = pauses.get(key) {
                pause.store(true, Ordering::SeqCst);
            }
        }
    }
    for key in &round.pause {
        tracing::info!(
            "{}/{}: over this worker's share: pausing its run",
            key.0,
            key.1
        );
        if let Some(pause) = pauses.get(key) {
            pause.store(true, Ordering::SeqCst);
        }
    }
    for (key, lease) in &round.held {
        if cluster.held.get(key) != Some(lease) {
            let from = match &lease.previous {
                Some(previous) if *previous != lease.holder => format!(" from worker {previous}"),
                _ => String::new(),
            };
            tracing::info!(
                "{}/{}: lease token {} taken{from}",
                key.0,
                key.1,
                lease.token
            );
        }
    }
    cluster.held = round.held;
    round.give_back
}

/// The partitions a cluster shares: every stream's own scope of the catalog.
fn partitions_of(catalog: &Catalog) -> Vec<Key> {
    catalog
        .syncs
        .iter()
        .flat_map(|(sync, loaded)| {
            loaded
                .workflow
                .streams()
                .iter()
                .map(move |s| (sync.clone(), s.name.clone()))
        })
        .collect()
}

/// In a cluster, a destination must check lease tokens in its own transactions (or, for
/// another API, rely on idempotency keys): local files cannot.
fn check_cluster(catalog: &Catalog) -> anyhow::Result<()> {
    use waymark_connectors::config::DestinationKind;
    for loaded in catalog.syncs.values() {
        if let Some(stream) = loaded
            .workflow
            .streams()
            .iter()
            .find(|s| s.webhook.is_some())
        {
            return Err(UsageError(format!(
                "{}: serve --cluster: stream {} receives webhooks, which a cluster does not \
                 apply yet; serve that workflow from one worker without --cluster",
                loaded.path.display(),
                stream.name
            ))
            .into());
        }
        let kind = loaded.workflow.file().destination.kind;
        if matches!(kind, DestinationKind::Sqlite | DestinationKind::Jsonl) {
            return Err(UsageError(format!(
                "{}: serve --cluster: a {} destination is a local file, which the other \
                 workers cannot write and which cannot refuse a worker that lost its lease; \
                 use a postgres destination (each batch is fenced by the lease's token in its \
                 own transaction)",
                loaded.path.display(),
                serde_json::to_value(kind)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default()
            ))
            .into());
        }
    }
    Ok(())
}

/// Loads the files again (a file that fails keeps its previous version: logged, counted,
/// reported by `status`) and schedules what they now say; the unfinished runs of other
/// scopes found, to resume by id.
async fn reload_files(
    dir: &StateDir,
    paths: &[PathBuf],
    catalog: &mut Catalog,
    scheduler: &mut Scheduler<Key>,
    metrics: &Metrics,
    alert_targets: &watch::Sender<BTreeMap<String, AlertsSection>>,
    cluster: Option<&cluster::Cluster>,
) -> anyhow::Result<BTreeMap<Key, RunState>> {
    let files = catalog::files(paths).unwrap_or_default();
    let (next, failed) = catalog.reload(dir, &files).await;
    for (path, why) in &failed {
        metrics.reload_failed();
        tracing::error!(
            "{}: not reloaded, the previous version keeps running: {why}",
            path.display()
        );
    }
    set_reload_failures(
        failed
            .iter()
            .map(|(path, why)| (path.display().to_string(), why.clone()))
            .collect(),
    );
    *catalog = next;
    let resumes = register(dir, catalog, scheduler, SystemClock.now(), cluster)?;
    metrics.serving(scheduler.keys());
    metrics.time_requests(catalog);
    alert_targets.send_replace(alert_targets_of(catalog));
    tracing::info!(
        "reloaded {} workflow files ({} failed)",
        files.len(),
        failed.len()
    );
    Ok(resumes)
}

/// The latest run of each checkpoint scope in the journal. A run whose head cannot be
/// read is left out (logged): the other streams go on; that stream's next run says why it
/// cannot continue.
fn latest_runs(dir: &StateDir) -> BTreeMap<Key, RunState> {
    let mut latest: BTreeMap<Key, RunState> = BTreeMap::new();
    for head in dir.journal().runs() {
        let state = match head {
            Ok(state) => state,
            Err(e) => {
                tracing::error!("a run's journal cannot be read, left out: {e}");
                continue;
            }
        };
        let key = (state.started.sync.clone(), state.started.stream.clone());
        if latest
            .get(&key)
            .is_none_or(|l| l.started.at <= state.started.at)
        {
            latest.insert(key, state);
        }
    }
    latest
}

/// Puts every scheduled stream of `catalog` in the scheduler (a stream already there
/// takes its new schedule), with when its latest run started, and every unfinished run
/// first; takes out the streams that are gone or no longer scheduled. Returns the
/// unfinished runs of scopes other than a stream's own (backfills, repairs), which resume
/// by id.
fn register(
    dir: &StateDir,
    catalog: &Catalog,
    scheduler: &mut Scheduler<Key>,
    now: Timestamp,
    cluster: Option<&cluster::Cluster>,
) -> anyhow::Result<BTreeMap<Key, RunState>> {
    let mut latest = latest_runs(dir);
    let mut kept = std::collections::BTreeSet::new();
    // In a cluster: only the partitions leased, scheduled from their last start anywhere.
    let started = cluster.map(|c| c.last_started.borrow().clone());
    for (sync, loaded) in &catalog.syncs {
        for stream in loaded.workflow.streams() {
            let key = (sync.clone(), stream.name.clone());
            let last = latest.remove(&key);
            if cluster.is_some_and(|c| !c.held.contains_key(&key)) {
                continue;
            }
            let unfinished = last.as_ref().is_some_and(|s| !s.status.is_finished());
            let cadence = loaded.workflow.cadence(stream);
            if stream.webhook.is_some() && cluster.is_none() {
                // Run when events arrive (an unfinished run first).
                let key = (sync.clone(), webhook_scope(&stream.name));
                let last = latest.remove(&key);
                let unfinished = last.as_ref().is_some_and(|s| !s.status.is_finished());
                scheduler.set(
                    key.clone(),
                    None,
                    last.map(|s| s.started.at),
                    unfinished,
                    now,
                );
                kept.insert(key);
            }
            if cadence.is_none() && !unfinished {
                continue;
            }
            let elsewhere = started.as_ref().and_then(|s| s.get(&key)).map(|secs| {
                let ms = (secs * 1000.0).max(0.0);
                // Whole milliseconds since the epoch fit in u64 for any date PostgreSQL
                // returns.
                #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
                Timestamp(ms as u64)
            });
            let last_start = last.map(|s| s.started.at).max(elsewhere);
            scheduler.set(key.clone(), cadence, last_start, unfinished, now);
            kept.insert(key);
        }
    }
    let mut resumes = BTreeMap::new();
    for (key, state) in latest {
        // Other scopes' runs (backfills, repairs) are a local command's: not a cluster's.
        if state.status.is_finished() || catalog.get(&key.0).is_none() || cluster.is_some() {
            continue;
        }
        scheduler.set(key.clone(), None, Some(state.started.at), true, now);
        kept.insert(key.clone());
        resumes.insert(key, state);
    }
    for key in scheduler.keys() {
        if !kept.contains(&key) {
            scheduler.remove(&key);
        }
    }
    Ok(resumes)
}

/// The task of one run: the stream's run (slice after slice, then a due reconciliation),
/// or the resumption of an unfinished run of another scope; in a cluster, under the
/// partition's lease (its start and end mirrored). It pauses at the next step boundary
/// once `pause` is set.
fn start(
    dir: &StateDir,
    catalog: &Catalog,
    key: &Key,
    (resume, lease): (
        Option<RunState>,
        Option<(Lease, mpsc::UnboundedSender<cluster::Note>)>,
    ),
    pause: &Arc<AtomicBool>,
    (metrics, traffic): (Arc<Metrics>, Arc<Traffic>),
    inbox: &Arc<Inbox>,
) -> anyhow::Result<impl std::future::Future<Output = anyhow::Result<Ran>> + 'static> {
    let loaded: Arc<Loaded> = catalog
        .get(&key.0)
        .cloned()
        .ok_or_else(|| anyhow::anyhow!("sync {} is no longer loaded", key.0))?;
    let (name, _) = parse_scope(&key.1);
    let stream: StreamSection = loaded.workflow.stream(name)?.clone();
    let mut dir = dir.share()?;
    let pause = pause.clone();
    let inbox = inbox.clone();
    let webhook = is_webhook_scope(&key.1);
    Ok(async move {
        let budget = Budget::default();
        let mut invocation =
            Invocation::with_api(loaded.api.clone(), &loaded.workflow, &budget, &pause);
        let (lease, notes) = lease.unzip();
        invocation.lease = lease;
        invocation.observer = Some(Arc::new(move |state: &RunState, event: &Event| {
            metrics.observe(state, event);
            traffic.observe(state, event);
            if let Some(notes) = notes.as_ref().filter(|_| cluster::worth_mirroring(event)) {
                let _ = notes.send(cluster::Note::Run(Box::new(state.clone())));
            }
        }));
        invocation.inbox = Some(inbox.clone());
        match resume {
            Some(state) => {
                let state = resume_run(&mut dir, &invocation, &loaded.workflow, state).await?;
                Ok(Ran {
                    states: vec![state],
                    reconciliation_failed: false,
                })
            }
            None if webhook => {
                let state =
                    apply_events(&mut dir, &invocation, &loaded.workflow, &stream, &inbox).await?;
                Ok(Ran {
                    states: vec![state],
                    reconciliation_failed: false,
                })
            }
            None => run_stream(&mut dir, &invocation, &loaded.workflow, &stream, false).await,
        }
    })
}

/// Logs how a run task ended (its summary line is printed by the run itself); its runs,
/// or why it failed.
fn report(key: &Key, outcome: anyhow::Result<Ran>) -> Ended {
    let ran = match outcome {
        Ok(ran) => ran,
        Err(e) => {
            let why = describe(&e);
            tracing::error!("{}/{}: {why}", key.0, key.1);
            set_refused(key, Some(why.clone()));
            return Err(why);
        }
    };
    set_refused(key, None);
    match ExitStatus::of_runs(&ran.states) {
        ExitStatus::Success if ran.reconciliation_failed => {
            tracing::warn!("{}/{}: its reconciliation failed", key.0, key.1)
        }
        ExitStatus::Success => {}
        ExitStatus::Paused => tracing::info!("{}/{}: paused", key.0, key.1),
        status => tracing::warn!("{}/{}: the run ended {status:?}", key.0, key.1),
    }
    Ok(ran.states)
}

/// A run of `key` now, if serve has that stream (one without a schedule is run once).
fn run_now(
    catalog: &Catalog,
    scheduler: &mut Scheduler<Key>,
    key: Key,
    cluster: Option<&cluster::Cluster>,
) -> RunNow {
    let now = SystemClock.now();
    // In a cluster, only a partition this worker holds.
    if cluster.is_some_and(|c| !c.held.contains_key(&key)) {
        return RunNow::Unknown;
    }
    if !scheduler.knows(&key) {
        let Some(loaded) = catalog.get(&key.0) else {
            return RunNow::Unknown;
        };
        let Ok(stream) = loaded.workflow.stream(&key.1) else {
            return RunNow::Unknown;
        };
        let cadence = loaded.workflow.cadence(stream);
        scheduler.set(key.clone(), cadence, None, false, now);
    }
    match scheduler.run_now(&key, now) {
        Some(true) => RunNow::Accepted,
        Some(false) => RunNow::Running,
        None => RunNow::Unknown,
    }
}

/// The webhook scopes of `catalog` with events in the inbox.
fn waiting_events(catalog: &Catalog, inbox: &Inbox) -> std::collections::BTreeSet<Key> {
    let mut waiting = std::collections::BTreeSet::new();
    for (sync, loaded) in &catalog.syncs {
        for stream in loaded.workflow.streams() {
            if stream.webhook.is_none() {
                continue;
            }
            match inbox.oldest((sync, &stream.name), None) {
                Ok(Some(_)) => {
                    waiting.insert((sync.clone(), webhook_scope(&stream.name)));
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::error!("{sync}/{}: reading its webhook events: {e}", stream.name)
                }
            }
        }
    }
    waiting
}

/// Each loaded sync's workflow file.
fn paths_of(catalog: &Catalog) -> BTreeMap<String, PathBuf> {
    catalog
        .syncs
        .iter()
        .map(|(sync, loaded)| {
            // Absolute: the web view's commands run from the state directory.
            let path = std::fs::canonicalize(&loaded.path).unwrap_or_else(|_| loaded.path.clone());
            (sync.clone(), path)
        })
        .collect()
}

/// Each loaded sync's `[alerts]`.
fn alert_targets_of(catalog: &Catalog) -> BTreeMap<String, AlertsSection> {
    catalog
        .syncs
        .iter()
        .filter_map(|(sync, loaded)| Some((sync.clone(), loaded.workflow.alerts()?.clone())))
        .collect()
}
