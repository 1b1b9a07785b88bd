//! Webhooks the sandbox sends: every mutation becomes one signed event POSTed to a receiver,
//! with the bad days of real senders (duplicates, reordering, drops, delays, bursts) drawn
//! from the seed, so a test can check that webhooks plus polling still converge.
//!
//! The mutator never waits: [`Outbox::announce`] numbers the event, renders its body and
//! pushes it on an unbounded queue while the dataset is still locked (so ids follow the
//! mutation order). The [`Courier`] lines events up (holding back reordered ones, grouping
//! bursts) and gives each its own task, which waits its delay and POSTs it — at most
//! [`IN_FLIGHT`] requests at a time — until a 2xx answers, retrying any other answer or a
//! connection error with exponential backoff and full jitter (50 ms doubling, capped at
//! 2 s) for as long as the process lives. Every attempt is signed afresh, with its own
//! timestamp, as real senders do.

use std::collections::VecDeque;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use reqwest::header::CONTENT_TYPE;
use tokio::sync::{mpsc, Semaphore};
use tokio::time::Instant;
use waymark_connectors::webhook::signature::{self, Scheme};
use waymark_engine::decision::{backoff, RetryPolicy};
use waymark_engine::Timestamp;

use super::data::{format_ms, mix, unit, Kind, Mutation, Resource};

/// Most requests in flight at once.
pub const IN_FLIGHT: usize = 8;

/// Longest an event is held back by reordering or a burst when no further events come.
const HOLD_AT_MOST: Duration = Duration::from_secs(1);

/// The retries of one delivery: 50 ms doubling up to 2 s, for ever.
const RETRY: RetryPolicy = RetryPolicy {
    max_attempts: u32::MAX,
    base: Duration::from_millis(50),
    cap: Duration::from_secs(2),
    max_wait: Duration::MAX,
};

/// Where and how the sandbox sends webhooks.
#[derive(Clone)]
pub struct Config {
    /// The receiver's URL; `{resource}` in it becomes `orders` or `customers`.
    pub url: String,
    /// How each request is signed.
    pub scheme: Scheme,
    /// The signing key: `signature::key` of the secret.
    pub key: Vec<u8>,
    /// Injected delivery faults.
    pub faults: Faults,
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("url", &self.url)
            .field("scheme", &self.scheme)
            .field("key", &"<secret>")
            .field("faults", &self.faults)
            .finish()
    }
}

/// The signature schemes the sandbox can send (the presets of `signature::Scheme`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Preset {
    /// Standard Webhooks (`webhook-id`, `webhook-timestamp`, `webhook-signature`).
    Standard,
    /// Stripe (`Stripe-Signature`).
    Stripe,
    /// GitHub (`X-Hub-Signature-256`, `X-GitHub-Delivery`).
    Github,
    /// Shopify (`X-Shopify-Hmac-Sha256`, `X-Shopify-Webhook-Id`).
    Shopify,
}

impl Preset {
    /// The scheme it names.
    pub fn scheme(self) -> Scheme {
        match self {
            Preset::Standard => Scheme::Standard,
            Preset::Stripe => Scheme::Stripe,
            Preset::Github => Scheme::Github,
            Preset::Shopify => Scheme::Shopify,
        }
    }
}

/// Rates (0.0 – 1.0, of events) and shapes of delivery faults; all off by default.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Faults {
    /// Events delivered a second time (same id and body) a while after the first 2xx.
    pub duplicates: f64,
    /// Events held back and sent after the next one to three events.
    pub reorder: f64,
    /// Events never sent (only polling can find their change).
    pub drop: f64,
    /// Each event waits a random 0..=`delay_ms` ms before its first attempt.
    pub delay_ms: u64,
    /// Events are held and released this many at a time (0 or 1: one by one).
    pub burst: u64,
}

/// What the faults do to one event, drawn from the seed and the event's number.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Fate {
    /// Never sent.
    pub drop: bool,
    /// Sent again this long after its first 2xx.
    pub duplicate: Option<Duration>,
    /// Held back until this many later events went out.
    pub reorder: Option<u64>,
    /// Waits this long before its first attempt.
    pub delay: Duration,
    /// The event's random bits, for the jitter of its retries.
    draws: u64,
}

impl Faults {
    /// The fate of event number `n` of a sandbox seeded with `seed`.
    pub fn fate(&self, seed: u64, n: u64) -> Fate {
        let draws = mix(seed ^ 0x3EB0_0C00_0000_0000 ^ n);
        let draw = |k: u64| mix(draws ^ k);
        let chance = |k: u64, rate: f64| unit(draw(k)) < rate.clamp(0.0, 1.0);
        Fate {
            drop: chance(1, self.drop),
            duplicate: chance(2, self.duplicates)
                .then(|| Duration::from_millis(100 + draw(3) % 1900)),
            reorder: chance(4, self.reorder).then(|| 1 + draw(5) % 3),
            delay: Duration::from_millis(draw(6) % self.delay_ms.saturating_add(1)),
            draws,
        }
    }
}

/// What the sender did, for `/_stats`.
#[derive(Default)]
pub struct Stats {
    generated: AtomicU64,
    dropped: AtomicU64,
    duplicated: AtomicU64,
    delivered: AtomicU64,
    duplicates_delivered: AtomicU64,
    attempts: AtomicU64,
    failed_attempts: AtomicU64,
}

fn count(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::SeqCst);
}

impl Stats {
    /// `{"generated": n, "dropped": n, "duplicated": n, "delivered": n, "attempts": n,
    /// "failed_attempts": n, "pending": n, "duplicates_pending": n}`. `pending` is the
    /// events neither dropped nor answered 2xx yet; `duplicates_pending` the second copies
    /// not answered 2xx yet.
    pub fn to_json(&self) -> serde_json::Value {
        let load = |counter: &AtomicU64| counter.load(Ordering::SeqCst);
        // Outcomes before what they are outcomes of: `pending` never goes below zero.
        let delivered = load(&self.delivered);
        let dropped = load(&self.dropped);
        let generated = load(&self.generated);
        let duplicates_delivered = load(&self.duplicates_delivered);
        let duplicated = load(&self.duplicated);
        serde_json::json!({
            "generated": generated,
            "dropped": dropped,
            "duplicated": duplicated,
            "delivered": delivered,
            "attempts": load(&self.attempts),
            "failed_attempts": load(&self.failed_attempts),
            "pending": generated.saturating_sub(dropped).saturating_sub(delivered),
            "duplicates_pending": duplicated.saturating_sub(duplicates_delivered),
        })
    }
}

/// Why an attempt failed, or the sender could not start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The HTTP client could not be built.
    #[error("building the webhook client: {0}")]
    Client(#[source] reqwest::Error),
    /// The scheme signs a header the sandbox does not send.
    #[error("the signature scheme names a header the sandbox does not send")]
    Unsignable,
    /// The receiver answered, but not 2xx.
    #[error("the receiver answered {0}")]
    Refused(reqwest::StatusCode),
    /// No answer: connection refused or reset, timeout.
    #[error("the receiver is unreachable")]
    Unreachable(#[source] reqwest::Error),
}

/// One event, as sent on every attempt.
#[derive(Debug)]
struct Event {
    /// `evt_<n>`.
    id: String,
    kind: Kind,
    /// The compact JSON body.
    body: Vec<u8>,
    fate: Fate,
}

/// The mutator's side: turns mutations into queued events.
pub struct Outbox {
    seed: u64,
    faults: Faults,
    /// Events numbered so far.
    numbered: AtomicU64,
    queue: mpsc::UnboundedSender<Event>,
    stats: Arc<Stats>,
}

/// The sending side, run by [`Courier::run`].
pub struct Courier {
    queue: mpsc::UnboundedReceiver<Event>,
    burst: u64,
    sender: Arc<Sender>,
}

/// What every delivery task shares.
struct Sender {
    client: reqwest::Client,
    /// The URL of orders' events, then of customers'.
    urls: [String; 2],
    scheme: Scheme,
    key: Vec<u8>,
    in_flight: Semaphore,
    stats: Arc<Stats>,
}

/// The two ends of a sandbox's webhooks: the mutator announces to the [`Outbox`], the
/// [`Courier`] delivers.
pub fn channel(config: &Config, seed: u64) -> Result<(Outbox, Courier), Error> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .connect_timeout(Duration::from_secs(2))
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("waymark-sandbox/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(Error::Client)?;
    let (tx, rx) = mpsc::unbounded_channel();
    let stats = Arc::new(Stats::default());
    let outbox = Outbox {
        seed,
        faults: config.faults.clone(),
        numbered: AtomicU64::new(0),
        queue: tx,
        stats: stats.clone(),
    };
    let courier = Courier {
        queue: rx,
        burst: config.faults.burst,
        sender: Arc::new(Sender {
            client,
            urls: urls(&config.url),
            scheme: config.scheme.clone(),
            key: config.key.clone(),
            in_flight: Semaphore::new(IN_FLIGHT),
            stats,
        }),
    };
    Ok((outbox, courier))
}

/// The resource's name, in URLs and event types.
fn name(kind: Kind) -> &'static str {
    match kind {
        Kind::Orders => "orders",
        Kind::Customers => "customers",
    }
}

/// The URLs of orders' and customers' events: `template` with `{resource}` filled in.
pub fn urls(template: &str) -> [String; 2] {
    [Kind::Orders, Kind::Customers].map(|kind| template.replace("{resource}", name(kind)))
}

impl Outbox {
    /// What was sent so far.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Queues the event of `mutation`, just made to `resource` at `at_ms`. Call it while
    /// the dataset is still locked: the record is rendered as the list endpoint now shows
    /// it, and event numbers follow the order of mutations.
    pub fn announce(&self, kind: Kind, resource: &Resource, mutation: Mutation, at_ms: u64) {
        let mut record = String::with_capacity(512);
        let verb = match mutation {
            Mutation::Inserted(id) | Mutation::Updated(id) => {
                let Some(key) = resource.key_of(id) else {
                    return;
                };
                resource.render(
                    key,
                    resource.live.get(&key).copied().unwrap_or(0),
                    &mut record,
                );
                if matches!(mutation, Mutation::Inserted(_)) {
                    "created"
                } else {
                    "updated"
                }
            }
            Mutation::Deleted(id) => {
                let at = format_ms(at_ms);
                record = format!(r#"{{"id":{id},"updated_at":"{at}","deleted_at":"{at}"}}"#);
                "deleted"
            }
            Mutation::Nothing => return,
        };
        let n = self.numbered.fetch_add(1, Ordering::SeqCst) + 1;
        count(&self.stats.generated);
        let fate = self.faults.fate(self.seed, n);
        if fate.drop {
            count(&self.stats.dropped);
            return;
        }
        if fate.duplicate.is_some() {
            count(&self.stats.duplicated);
        }
        let resource = name(kind);
        let body = format!(
            r#"{{"id":"evt_{n}","type":"{resource}.{verb}","resource":"{resource}","created":{},"data":{record}}}"#,
            at_ms / 1000
        );
        // The courier lives as long as the sandbox; a closed queue only means shutting down.
        let _ = self.queue.send(Event {
            id: format!("evt_{n}"),
            kind,
            body: body.into_bytes(),
            fate,
        });
    }
}

impl Courier {
    /// Sends every announced event until the outbox is dropped (the sandbox ends).
    pub async fn run(mut self) {
        let mut lineup = Lineup::new(self.burst);
        loop {
            let next = match lineup.deadline() {
                Some(deadline) => tokio::select! {
                    event = self.queue.recv() => Some(event),
                    () = tokio::time::sleep_until(deadline) => None,
                },
                None => Some(self.queue.recv().await),
            };
            let open = match next {
                Some(Some(event)) => {
                    lineup.push(event, Instant::now());
                    true
                }
                Some(None) => {
                    lineup.release_all();
                    false
                }
                None => {
                    lineup.expire(Instant::now());
                    true
                }
            };
            for event in lineup.ready.drain(..) {
                tokio::spawn(self.sender.clone().deliver(event));
            }
            if !open {
                return;
            }
        }
    }
}

impl Sender {
    /// Delivers one event (and its duplicate, if it has one) until answered 2xx.
    async fn deliver(self: Arc<Self>, event: Event) {
        tokio::time::sleep(event.fate.delay).await;
        self.until_accepted(&event, 0).await;
        count(&self.stats.delivered);
        if let Some(gap) = event.fate.duplicate {
            tokio::time::sleep(gap).await;
            self.until_accepted(&event, 1).await;
            count(&self.stats.duplicates_delivered);
        }
    }

    /// POSTs `copy` (0: the first, 1: the duplicate) of `event` until a 2xx answers.
    async fn until_accepted(&self, event: &Event, copy: u64) {
        let mut failed: u32 = 0;
        loop {
            let outcome = {
                // Never closed, so `acquire` always succeeds.
                let _permit = self.in_flight.acquire().await.ok();
                count(&self.stats.attempts);
                self.post(event).await
            };
            let Err(why) = outcome else {
                return;
            };
            count(&self.stats.failed_attempts);
            tracing::debug!(
                "webhook {} not delivered (attempt {}): {}",
                event.id,
                failed + 1,
                causes(&why)
            );
            let jitter = unit(mix(event.fate.draws
                ^ copy << 48
                ^ u64::from(failed) << 16
                ^ 0x7E7));
            tokio::time::sleep(backoff(&RETRY, failed, jitter)).await;
            failed = failed.saturating_add(1);
        }
    }

    /// One attempt, signed now.
    async fn post(&self, event: &Event) -> Result<(), Error> {
        let now = Timestamp::from_system(SystemTime::now());
        let headers = signature::sign(&self.scheme, &self.key, &event.id, now, &event.body)
            .ok_or(Error::Unsignable)?;
        let url = match event.kind {
            Kind::Orders => &self.urls[0],
            Kind::Customers => &self.urls[1],
        };
        let mut request = self
            .client
            .post(url)
            .header(CONTENT_TYPE, "application/json");
        for (name, value) in headers {
            request = request.header(name, value);
        }
        let response = request
            .body(event.body.clone())
            .send()
            .await
            .map_err(|e| Error::Unreachable(e.without_url()))?;
        let status = response.status();
        // Read the answer to the end, so the connection can be reused.
        let _ = response.bytes().await;
        if status.is_success() {
            Ok(())
        } else {
            Err(Error::Refused(status))
        }
    }
}

/// An error and its causes, `: `-separated.
fn causes(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(next) = cause {
        text.push_str(": ");
        text.push_str(&next.to_string());
        cause = next.source();
    }
    text
}

/// The order events leave in: reordered events wait for later ones to pass, bursts are
/// gathered, and nothing waits longer than [`HOLD_AT_MOST`] once the queue goes quiet.
struct Lineup {
    burst: u64,
    /// Reordered events, each with how many more events must pass and since when it waits.
    held: VecDeque<(Event, u64, Instant)>,
    /// The burst being gathered, and since when.
    batch: Vec<Event>,
    batch_since: Option<Instant>,
    /// Events to send now, in order.
    ready: Vec<Event>,
}

impl Lineup {
    fn new(burst: u64) -> Self {
        Lineup {
            burst,
            held: VecDeque::new(),
            batch: Vec::new(),
            batch_since: None,
            ready: Vec::new(),
        }
    }

    /// Takes the next event in announcement order.
    fn push(&mut self, event: Event, now: Instant) {
        if let Some(pass) = event.fate.reorder {
            self.held.push_back((event, pass, now));
            return;
        }
        self.release(event, now);
        let mut waiting = VecDeque::with_capacity(self.held.len());
        for (held, pass, since) in std::mem::take(&mut self.held) {
            match pass.saturating_sub(1) {
                0 => self.release(held, now),
                pass => waiting.push_back((held, pass, since)),
            }
        }
        self.held = waiting;
    }

    fn release(&mut self, event: Event, now: Instant) {
        if self.burst <= 1 {
            self.ready.push(event);
            return;
        }
        self.batch_since.get_or_insert(now);
        self.batch.push(event);
        if u64::try_from(self.batch.len()).unwrap_or(u64::MAX) >= self.burst {
            self.ready.append(&mut self.batch);
            self.batch_since = None;
        }
    }

    /// When the oldest waiting event has waited long enough.
    fn deadline(&self) -> Option<Instant> {
        let held = self.held.front().map(|(_, _, since)| *since);
        [held, self.batch_since]
            .into_iter()
            .flatten()
            .min()
            .map(|since| since + HOLD_AT_MOST)
    }

    /// Lets out what has waited [`HOLD_AT_MOST`] by `now`.
    fn expire(&mut self, now: Instant) {
        while let Some((_, _, since)) = self.held.front() {
            if *since + HOLD_AT_MOST > now {
                break;
            }
            if let Some((event, _, _)) = self.held.pop_front() {
                self.release(event, now);
            }
        }
        if self
            .batch_since
            .is_some_and(|since| since + HOLD_AT_MOST <= now)
        {
            self.ready.append(&mut self.batch);
            self.batch_since = None;
        }
    }

    /// Lets everything out.
    fn release_all(&mut self) {
        self.ready.append(&mut self.batch);
        self.ready
            .extend(self.held.drain(..).map(|(event, _, _)| event));
        self.batch_since = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fates_are_drawn_from_the_seed_near_their_rates() {
        let faults = Faults {
            duplicates: 0.10,
            reorder: 0.20,
            drop: 0.05,
            delay_ms: 300,
            burst: 0,
        };
        let fates: Vec<Fate> = (1..=20_000).map(|n| faults.fate(9, n)).collect();
        let share = |f: fn(&Fate) -> bool| {
            let hits = fates.iter().filter(|fate| f(fate)).count();
            f64::from(u32::try_from(hits).unwrap_or(u32::MAX)) / 20_000.0
        };
        assert!((share(|f| f.drop) - 0.05).abs() < 0.01);
        assert!((share(|f| f.duplicate.is_some()) - 0.10).abs() < 0.01);
        assert!((share(|f| f.reorder.is_some()) - 0.20).abs() < 0.01);
        assert!(fates.iter().all(|f| f.delay <= Duration::from_millis(300)));
        assert!(fates.iter().any(|f| f.delay > Duration::from_millis(250)));
        assert!(fates
            .iter()
            .filter_map(|f| f.reorder)
            .all(|pass| (1..=3).contains(&pass)));
        assert_eq!(faults.fate(9, 42), faults.fate(9, 42), "deterministic");
        assert_ne!(faults.fate(9, 42), faults.fate(10, 42), "seeded");
        let none = Faults::default().fate(9, 42);
        assert_eq!(
            (none.drop, none.duplicate, none.reorder, none.delay),
            (false, None, None, Duration::ZERO)
        );
    }

    fn event(n: u64, reorder: Option<u64>) -> Event {
        Event {
            id: format!("evt_{n}"),
            kind: Kind::Orders,
            body: Vec::new(),
            fate: Fate {
                reorder,
                ..Fate::default()
            },
        }
    }

    fn ids(lineup: &mut Lineup) -> Vec<String> {
        lineup.ready.drain(..).map(|e| e.id).collect()
    }

    #[test]
    fn reordered_events_leave_after_the_next_ones_or_when_the_queue_goes_quiet() {
        let t = Instant::now();
        let mut lineup = Lineup::new(0);
        lineup.push(event(1, Some(2)), t);
        lineup.push(event(2, None), t);
        lineup.push(event(3, Some(1)), t);
        lineup.push(event(4, None), t);
        assert_eq!(ids(&mut lineup), ["evt_2", "evt_4", "evt_1", "evt_3"]);
        lineup.push(event(5, Some(3)), t);
        assert!(lineup.ready.is_empty());
        assert_eq!(lineup.deadline(), Some(t + HOLD_AT_MOST));
        lineup.expire(t + HOLD_AT_MOST / 2);
        assert!(lineup.ready.is_empty());
        lineup.expire(t + HOLD_AT_MOST);
        assert_eq!(ids(&mut lineup), ["evt_5"]);
        assert_eq!(lineup.deadline(), None);
    }

    #[test]
    fn bursts_leave_together_and_a_partial_one_after_a_while() {
        let t = Instant::now();
        let mut lineup = Lineup::new(3);
        for n in 1..=4 {
            lineup.push(event(n, None), t);
        }
        assert_eq!(ids(&mut lineup), ["evt_1", "evt_2", "evt_3"]);
        lineup.expire(t + HOLD_AT_MOST);
        assert_eq!(ids(&mut lineup), ["evt_4"]);
        lineup.push(event(5, Some(1)), t);
        lineup.release_all();
        assert_eq!(ids(&mut lineup), ["evt_5"]);
    }
}
