//! What `serve` exposes at `/metrics` (Prometheus, OpenMetrics text format). Counters
//! follow the journal: each journaled step of a run serve drives counts once, so they
//! agree with `waymark runs --json` for the runs of this process. Gauges that describe
//! the state directory (checkpoint lag, dead letters) are read when scraped.

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, PoisonError};

use prometheus_client::encoding::{EncodeLabelSet, LabelSetEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use waymark_connectors::config::split_tenant;
use waymark_connectors::state::dead_letters::DeadLetters;
use waymark_engine::{Event, RunState, StateDir, Timestamp};

use super::catalog::Catalog;
use super::Key;

/// A stream (its checkpoint scope).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Stream {
    pub sync: String,
    pub stream: String,
}

impl From<&Key> for Stream {
    fn from((sync, stream): &Key) -> Self {
        Stream {
            sync: sync.clone(),
            stream: stream.clone(),
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Fate {
    sync: String,
    stream: String,
    fate: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Class {
    sync: String,
    stream: String,
    class: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Ended {
    sync: String,
    stream: String,
    /// completed, paused, failed, abandoned.
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Delivery {
    sync: String,
    stream: String,
    /// accepted, duplicate; or why it was refused.
    outcome: &'static str,
}

/// A source: the sync whose streams share it.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Source {
    sync: String,
}

/// A metric's labels, with `tenant="<id>"` after them for a tenant's instance of a sync
/// (whose `sync` label is then the file's sync name): `sum by (tenant)` rolls a tenant up.
/// A sync without tenants has no `tenant` label.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct Tenanted<L>(L, Option<String>);

impl<L: EncodeLabelSet> EncodeLabelSet for Tenanted<L> {
    fn encode(&self, encoder: &mut LabelSetEncoder) -> Result<(), std::fmt::Error> {
        self.0.encode(encoder)?;
        match &self.1 {
            Some(tenant) => [("tenant", tenant.as_str())].encode(encoder),
            None => Ok(()),
        }
    }
}

/// Labels with a `sync` label (an instance's `<sync>:<tenant>` until [`tenanted`]).
trait SyncLabel {
    fn sync(&mut self) -> &mut String;
}

macro_rules! sync_label {
    ($($t:ty),*) => {$(
        impl SyncLabel for $t {
            fn sync(&mut self) -> &mut String {
                &mut self.sync
            }
        }
    )*};
}

sync_label!(Stream, Fate, Class, Ended, Delivery, Source);

/// `labels` with an instance's sync split into the sync and its tenant.
fn tenanted<L: SyncLabel>(mut labels: L) -> Tenanted<L> {
    let full = std::mem::take(labels.sync());
    let (sync, tenant) = split_tenant(&full);
    let tenant = tenant.map(str::to_string);
    *labels.sync() = sync.to_string();
    Tenanted(labels, tenant)
}

type Floats = Gauge<f64, AtomicU64>;

/// Every metric, registered once.
pub struct Metrics {
    registry: Registry,
    records: Family<Tenanted<Fate>, Counter>,
    pages: Family<Tenanted<Stream>, Counter>,
    requests: Family<Tenanted<Class>, Counter>,
    retries: Family<Tenanted<Stream>, Counter>,
    schema_changes: Family<Tenanted<Stream>, Counter>,
    rate_limit_wait: Family<Tenanted<Stream>, Counter<f64, AtomicU64>>,
    runs: Family<Tenanted<Ended>, Counter>,
    run_duration: Family<Tenanted<Stream>, Histogram>,
    request_duration: Family<Tenanted<Source>, Histogram>,
    last_success: Family<Tenanted<Stream>, Floats>,
    lag: Family<Tenanted<Stream>, Floats>,
    dead_letters: Family<Tenanted<Stream>, Gauge>,
    skips: Family<Tenanted<Stream>, Counter>,
    running: Gauge,
    reload_failures: Counter,
    webhooks: Family<Tenanted<Delivery>, Counter>,
    /// The streams the scrape reads gauges for.
    scheduled: Mutex<Vec<Key>>,
}

impl Metrics {
    pub fn new() -> Arc<Metrics> {
        let mut registry = Registry::with_prefix("waymark");
        let m = Metrics {
            records: Family::default(),
            pages: Family::default(),
            requests: Family::default(),
            retries: Family::default(),
            schema_changes: Family::default(),
            rate_limit_wait: Family::default(),
            runs: Family::default(),
            run_duration: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.05, 2.0, 16))
            }),
            request_duration: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.005, 2.0, 14))
            }),
            last_success: Family::default(),
            lag: Family::default(),
            dead_letters: Family::default(),
            skips: Family::default(),
            running: Gauge::default(),
            reload_failures: Counter::default(),
            webhooks: Family::default(),
            scheduled: Mutex::new(Vec::new()),
            registry: Registry::default(),
        };
        registry.register(
            "records",
            "Records written, by fate (inserted, updated, unchanged, stale, deleted, dead_lettered)",
            m.records.clone(),
        );
        registry.register("pages", "Pages fetched", m.pages.clone());
        registry.register(
            "requests",
            "API requests by HTTP status class (2xx, 4xx, 5xx; error: no response)",
            m.requests.clone(),
        );
        registry.register("retries", "Requests retried", m.retries.clone());
        registry.register(
            "schema_changes",
            "Fields of the stream's records found new, gone or of another type",
            m.schema_changes.clone(),
        );
        registry.register(
            "rate_limit_wait_seconds",
            "Time waited because the API answered 429",
            m.rate_limit_wait.clone(),
        );
        registry.register("runs", "Runs ended, by outcome", m.runs.clone());
        registry.register(
            "run_duration_seconds",
            "Active time of each run that ended (paused time not counted)",
            m.run_duration.clone(),
        );
        registry.register(
            "request_duration_seconds",
            "Time from sending an API request to its response's headers (or its failure), by \
             source (the sync whose streams share it)",
            m.request_duration.clone(),
        );
        registry.register(
            "last_success_timestamp_seconds",
            "When the stream's last run completed (Unix time)",
            m.last_success.clone(),
        );
        registry.register(
            "checkpoint_lag_seconds",
            "Now minus the watermark of the stream's committed checkpoint",
            m.lag.clone(),
        );
        registry.register(
            "dead_letters",
            "Records in the stream's dead-letter store",
            m.dead_letters.clone(),
        );
        registry.register(
            "schedule_skips",
            "Due times skipped because the stream's previous run was still going",
            m.skips.clone(),
        );
        registry.register("running_runs", "Runs going now", m.running.clone());
        registry.register(
            "workflow_reload_failures",
            "Workflow files that failed validation when reloaded (the previous version kept running)",
            m.reload_failures.clone(),
        );
        registry.register(
            "webhook_deliveries",
            "Webhook deliveries by outcome: accepted, duplicate (answered 200, nothing stored), \
             or the reason of a refusal (bad_signature, too_old, in_the_future, missing_header, \
             malformed_header, too_large, content_type, no_event_id, not_configured, unavailable)",
            m.webhooks.clone(),
        );
        Arc::new(Metrics { registry, ..m })
    }

    /// Counts one journaled step of a run.
    pub fn observe(&self, state: &RunState, event: &Event) {
        let (sync, stream) = (&state.started.sync, &state.started.stream);
        let at = tenanted(Stream {
            sync: sync.clone(),
            stream: stream.clone(),
        });
        let class = |class| {
            tenanted(Class {
                sync: sync.clone(),
                stream: stream.clone(),
                class,
            })
        };
        match event {
            Event::PageFetched(_) => {
                self.pages.get_or_create(&at).inc();
                self.requests.get_or_create(&class("2xx")).inc();
            }
            Event::RequestRetried {
                status, wait_ms, ..
            } => {
                self.retries.get_or_create(&at).inc();
                let name = match status.map(|s| s / 100) {
                    Some(1) => "1xx",
                    Some(2) => "2xx",
                    Some(3) => "3xx",
                    Some(4) => "4xx",
                    Some(5) => "5xx",
                    _ => "error",
                };
                self.requests.get_or_create(&class(name)).inc();
                if *status == Some(429) {
                    self.rate_limit_wait
                        .get_or_create(&at)
                        .inc_by(*wait_ms as f64 / 1000.0);
                }
            }
            Event::BatchWritten { ack, .. } => {
                for (fate, n) in [
                    ("inserted", ack.inserted),
                    ("updated", ack.updated),
                    ("unchanged", ack.unchanged),
                    ("stale", ack.skipped_stale),
                    ("deleted", ack.deleted),
                    ("dead_lettered", ack.dead_lettered),
                ] {
                    let labels = Fate {
                        sync: sync.clone(),
                        stream: stream.clone(),
                        fate,
                    };
                    self.records.get_or_create(&tenanted(labels)).inc_by(n);
                }
            }
            Event::RunCompleted { at: when } => {
                self.ended(state, "completed");
                self.last_success
                    .get_or_create(&at)
                    .set(when.0 as f64 / 1000.0);
            }
            Event::RunPaused { .. } => self.ended(state, "paused"),
            Event::RunFailed { .. } => self.ended(state, "failed"),
            Event::RunAbandoned { .. } => self.ended(state, "abandoned"),
            Event::SchemaChanged { changes, .. } => {
                self.schema_changes
                    .get_or_create(&at)
                    .inc_by(changes.len() as u64);
            }
            _ => {}
        }
    }

    fn ended(&self, state: &RunState, outcome: &'static str) {
        let (sync, stream) = (&state.started.sync, &state.started.stream);
        let labels = Ended {
            sync: sync.clone(),
            stream: stream.clone(),
            outcome,
        };
        self.runs.get_or_create(&tenanted(labels)).inc();
        let at = tenanted(Stream {
            sync: sync.clone(),
            stream: stream.clone(),
        });
        self.run_duration
            .get_or_create(&at)
            .observe(state.active_ms as f64 / 1000.0);
    }

    /// Times the requests of each loaded source (a source already timed keeps its timer).
    pub fn time_requests(&self, catalog: &Catalog) {
        for (sync, loaded) in &catalog.syncs {
            let labels = Source { sync: sync.clone() };
            let histogram = self
                .request_duration
                .get_or_create(&tenanted(labels))
                .clone();
            loaded.api.time_requests(Arc::new(move |took, _| {
                histogram.observe(took.as_secs_f64())
            }));
        }
    }

    /// A webhook delivery to `key` and what became of it.
    pub fn delivered(&self, key: &Key, outcome: &'static str) {
        let labels = Delivery {
            sync: key.0.clone(),
            stream: key.1.clone(),
            outcome,
        };
        self.webhooks.get_or_create(&tenanted(labels)).inc();
    }

    /// A due time of `key` skipped.
    pub fn skipped(&self, key: &Key) {
        self.skips.get_or_create(&tenanted(Stream::from(key))).inc();
    }

    /// Runs going now.
    pub fn running(&self, n: usize) {
        self.running.set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// A workflow file failed validation on reload.
    pub fn reload_failed(&self) {
        self.reload_failures.inc();
    }

    /// The streams served now (their gauges are read when scraped).
    pub fn serving(&self, keys: Vec<Key>) {
        *self
            .scheduled
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = keys;
    }

    /// The exposition: gauges of the state directory read now, then every metric.
    pub fn scrape(&self, dir: &StateDir, now: Timestamp) -> String {
        let keys = self
            .scheduled
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        for key in &keys {
            let labels = Stream::from(key);
            let labels = &tenanted(labels);
            if let Ok(Some(checkpoint)) = dir.journal().checkpoint(&key.0, &key.1) {
                let lag = now.0.saturating_sub(checkpoint.window.end.0);
                self.lag.get_or_create(labels).set(lag as f64 / 1000.0);
            }
            if let Ok(letters) = DeadLetters::new(dir.root(), &key.0, &key.1).list() {
                let depth = i64::try_from(letters.len()).unwrap_or(i64::MAX);
                self.dead_letters.get_or_create(labels).set(depth);
            }
        }
        let mut text = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }
}
