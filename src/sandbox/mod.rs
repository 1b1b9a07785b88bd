//! `waymark sandbox`: a deterministic fake SaaS API on loopback, for demos, for testing
//! workflow files against bad days, and as the oracle of our own tests.
//!
//! Resources `orders` and `customers` (each customer has child `invoices`), generated from
//! a seed, sorted by `(updated_at, id)` with `tie` records sharing each `updated_at`.
//! Every list endpoint speaks every pagination style at once — the client picks one by the
//! parameters it sends (see [`routes`]). A mutator inserts, updates and deletes while a sync
//! runs; faults are injected at configurable rates; switchable quirks reproduce API shapes
//! seen in the wild. `/_truth/{resource}` is the current true state, `/_control/*` changes
//! the mutator and faults at run time, `/_stats` counts what was served and injected.
//!
//! With [`webhooks`] configured, every mutation (the mutator's and `/_control/edit`'s) is
//! also pushed as a signed event to a receiver — `{"id":"evt_<n>","type":"orders.updated",
//! "resource":"orders","created":<unix s>,"data":<the record as listed>}` — with
//! duplicates, reordering, drops, delays and bursts drawn from the seed, retried until
//! answered 2xx; `/_stats` counts them under `webhooks`.

mod data;
mod faults;
mod routes;
pub mod webhooks;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant, SystemTime};

pub use faults::Faults;

use data::{mix, unit, Kind, Mutation, Resource};
use faults::Injected;

/// API shapes seen in the wild, each switchable.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Quirk {
    /// Only inclusive filters: `updated_before` means `<=`, `updated_after` is refused.
    InclusiveFilters,
    /// Time filters compare the parameter's text with the stored text (a parameter without
    /// milliseconds then misses the records of its own second).
    StringCompare,
    /// An inserted record takes the id of the most recently deleted one.
    ReuseIds,
    /// The last page still returns a `next_cursor`; following it yields empty pages with
    /// the same cursor, forever.
    CursorOnLastPage,
    /// Inserted records get an `updated_at` in the past (late-arriving data), which also
    /// shifts offset and page-number pagination.
    BackdatedInserts,
}

/// How the sandbox behaves.
#[derive(Clone, Debug)]
pub struct Config {
    /// Number of orders.
    pub orders: u64,
    /// Number of customers.
    pub customers: u64,
    /// Records sharing each `updated_at` value.
    pub tie: u64,
    /// Seed of the data, the mutator and fault injection.
    pub seed: u64,
    /// `updated_at` of the first records, ms since the epoch (default 2026-01-01).
    pub base_ms: u64,
    /// Mutations per second (inserts 30%, updates 55%, deletes 15%; orders 80%).
    pub mutate_rate: f64,
    /// How far the API's clock is behind the machine's: what a change is stamped with.
    pub clock_behind_ms: u64,
    /// Injected faults.
    pub faults: Faults,
    /// Switched-on quirks.
    pub quirks: Vec<Quirk>,
    /// When set, data endpoints require `Authorization: Bearer <token>`.
    pub token: Option<String>,
    /// When set, every mutation is also sent as a webhook.
    pub webhooks: Option<webhooks::Config>,
    /// The most results one offset-paged query serves (HubSpot's search: 10,000): the page
    /// reaching it is the last (`has_more` false, silently, as HubSpot does), an offset at
    /// or past it is refused with 400.
    pub max_results: Option<u64>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            orders: 10_000,
            customers: 1_000,
            tie: 5,
            seed: 1,
            base_ms: 1_767_225_600_000,
            mutate_rate: 0.0,
            clock_behind_ms: 0,
            faults: Faults::default(),
            quirks: Vec::new(),
            token: None,
            webhooks: None,
            max_results: None,
        }
    }
}

/// The two top-level resources.
pub struct Dataset {
    orders: Resource,
    customers: Resource,
}

impl Dataset {
    fn resource(&self, kind: Kind) -> &Resource {
        match kind {
            Kind::Orders => &self.orders,
            Kind::Customers => &self.customers,
        }
    }

    fn resource_mut(&mut self, kind: Kind) -> &mut Resource {
        match kind {
            Kind::Orders => &mut self.orders,
            Kind::Customers => &mut self.customers,
        }
    }
}

/// Shared state of a running sandbox.
pub struct Sandbox {
    config: Config,
    data: RwLock<Dataset>,
    faults: RwLock<Faults>,
    mutate_rate: RwLock<f64>,
    requests: AtomicU64,
    /// When the first and the latest data request arrived, ms since the epoch.
    first_request_ms: AtomicU64,
    last_request_ms: AtomicU64,
    /// When the data requests of the last second were admitted (for the quota).
    admitted: Mutex<VecDeque<Instant>>,
    injected: Injected,
    /// Inserted, updated, deleted.
    mutations: [AtomicU64; 3],
    /// Random draws made by the mutator.
    drawn: AtomicU64,
    /// Requests answered 429 because they were over `--quota`.
    over_quota: AtomicU64,
    /// List requests answered `304 Not Modified` (their `If-None-Match` was the page's ETag).
    not_modified: AtomicU64,
    /// Where mutations are announced as webhooks, when configured.
    outbox: Option<webhooks::Outbox>,
}

fn read<T>(lock: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|e| e.into_inner())
}

fn write<T>(lock: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(|e| e.into_inner())
}

fn now_ms() -> u64 {
    waymark_engine::Timestamp::from_system(SystemTime::now()).0
}

impl Sandbox {
    /// Now by the API's clock: what a change is stamped with.
    fn api_now(&self) -> u64 {
        now_ms().saturating_sub(self.config.clock_behind_ms)
    }

    /// Generates the dataset; mutations are announced to `outbox`, if any.
    pub fn new(config: Config, outbox: Option<webhooks::Outbox>) -> Arc<Self> {
        let data = Dataset {
            orders: Resource::generate(
                Kind::Orders,
                config.seed,
                config.orders,
                config.tie,
                config.base_ms,
            ),
            customers: Resource::generate(
                Kind::Customers,
                config.seed ^ 0xC057,
                config.customers,
                config.tie,
                config.base_ms,
            ),
        };
        Arc::new(Sandbox {
            faults: RwLock::new(config.faults.clone()),
            mutate_rate: RwLock::new(config.mutate_rate),
            config,
            data: RwLock::new(data),
            requests: AtomicU64::new(0),
            first_request_ms: AtomicU64::new(0),
            last_request_ms: AtomicU64::new(0),
            admitted: Mutex::new(VecDeque::new()),
            injected: Injected::default(),
            mutations: Default::default(),
            drawn: AtomicU64::new(0),
            over_quota: AtomicU64::new(0),
            not_modified: AtomicU64::new(0),
            outbox,
        })
    }

    /// Admits a data request under a quota of `per_second` (0: none), or says how long
    /// until one is admitted again.
    fn within_quota(&self, per_second: u64) -> Result<(), Duration> {
        if per_second == 0 {
            return Ok(());
        }
        const SECOND: Duration = Duration::from_secs(1);
        let now = Instant::now();
        let mut admitted = self.admitted.lock().unwrap_or_else(PoisonError::into_inner);
        while admitted
            .front()
            .is_some_and(|t| now.duration_since(*t) >= SECOND)
        {
            admitted.pop_front();
        }
        if admitted.len() as u64 >= per_second {
            let oldest = admitted.front().copied().unwrap_or(now);
            return Err(SECOND.saturating_sub(now.duration_since(oldest)));
        }
        admitted.push_back(now);
        Ok(())
    }

    fn quirk(&self, quirk: Quirk) -> bool {
        self.config.quirks.contains(&quirk)
    }

    /// One random mutation, drawn from the `n`th number of the seed.
    fn mutate(&self, n: u64) -> Mutation {
        let r = mix(self.config.seed ^ 0x307A_7E00_0000_0000 ^ n);
        let kind = if unit(r) < 0.8 {
            Kind::Orders
        } else {
            Kind::Customers
        };
        let op = unit(mix(r));
        let now = self.api_now();
        let mut data = write(&self.data);
        let resource = data.resource_mut(kind);
        let mutation = if op < 0.30 {
            let ms = if self.quirk(Quirk::BackdatedInserts) {
                // Anywhere in the generated data's time span.
                let span = self.config.orders.max(self.config.customers) / self.config.tie.max(1);
                self.config.base_ms + mix(r ^ 1) % (span.max(1) * 1000)
            } else {
                now
            };
            resource.insert(ms, self.quirk(Quirk::ReuseIds))
        } else if op < 0.85 {
            resource.update(mix(r ^ 2), now)
        } else {
            resource.delete(mix(r ^ 3), now)
        };
        self.announce(kind, resource, mutation, now);
        mutation
    }

    /// Sends `mutation`, just made to `resource` at `at_ms`, as a webhook when they are
    /// configured (called with the dataset still locked, so events follow mutation order).
    fn announce(&self, kind: Kind, resource: &Resource, mutation: Mutation, at_ms: u64) {
        if let Some(outbox) = &self.outbox {
            outbox.announce(kind, resource, mutation, at_ms);
        }
    }

    /// Touches (new revision, same `updated_at`), updates (new revision now) and deletes
    /// records of one resource by id; returns how many of each existed.
    fn drift(&self, kind: Kind, drifted: bool) {
        write(&self.data).resource_mut(kind).drifted = drifted;
    }

    fn edit(&self, kind: Kind, [touch, update, delete]: [&[u64]; 3]) -> [usize; 3] {
        let mut data = write(&self.data);
        let resource = data.resource_mut(kind);
        let mut done = [0; 3];
        for (i, ids) in [touch, update, delete].into_iter().enumerate() {
            for &id in ids {
                let now = self.api_now();
                let m = match i {
                    0 => resource.touch(id),
                    1 => resource.update_id(id, now),
                    _ => resource.delete_id(id, now),
                };
                self.announce(kind, resource, m, now);
                done[i] += usize::from(m != Mutation::Nothing);
            }
        }
        done
    }

    /// Applies `count` random mutations now.
    fn apply_mutations(&self, count: u64) {
        for _ in 0..count {
            let n = self.drawn.fetch_add(1, Ordering::Relaxed);
            let slot = match self.mutate(n) {
                Mutation::Inserted(_) => 0,
                Mutation::Updated(_) => 1,
                Mutation::Deleted(_) => 2,
                Mutation::Nothing => continue,
            };
            self.mutations[slot].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Applies mutations at the current rate until the process ends.
    async fn run_mutator(self: Arc<Self>) {
        const TICK: Duration = Duration::from_millis(10);
        let mut owed = 0.0;
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            owed += *read(&self.mutate_rate) * TICK.as_secs_f64();
            let due = owed.floor();
            owed -= due;
            self.apply_mutations(due as u64);
        }
    }
}

/// Serves the sandbox on `listener` (with its mutator, and its webhook sender when
/// configured) until the process ends.
pub async fn serve(listener: tokio::net::TcpListener, config: Config) -> std::io::Result<()> {
    let (outbox, courier) = match &config.webhooks {
        Some(hooks) => {
            let (outbox, courier) =
                webhooks::channel(hooks, config.seed).map_err(std::io::Error::other)?;
            (Some(outbox), Some(courier))
        }
        None => (None, None),
    };
    let sandbox = Sandbox::new(config, outbox);
    tokio::spawn(sandbox.clone().run_mutator());
    if let Some(courier) = courier {
        tokio::spawn(courier.run());
    }
    axum::serve(listener, routes::router(sandbox)).await
}
