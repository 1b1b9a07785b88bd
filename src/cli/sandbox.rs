//! `waymark sandbox`: serve the fake API until stopped, optionally pushing a signed webhook
//! for every mutation.

use std::time::Duration;

use clap::Args;

use waymark_connectors::webhook::signature;

use super::{ExitStatus, UsageError};
use crate::sandbox::webhooks::{self, Preset};
use crate::sandbox::{self, Config, Faults, Quirk};

/// Arguments of `waymark sandbox`.
#[derive(Debug, Args)]
pub struct SandboxArgs {
    /// Port on 127.0.0.1 (0: any free port; the address is printed on stdout).
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// Number of orders.
    #[arg(long, default_value_t = 10_000)]
    records: u64,
    /// Number of customers (each has 0–3 invoices).
    #[arg(long, default_value_t = 1_000)]
    customers: u64,
    /// Records sharing each `updated_at` value (make it larger than a page to test
    /// tie-breakers).
    #[arg(long, default_value_t = 5)]
    tie: u64,
    /// `updated_at` of the first generated records: an RFC 3339 time or an age (`2h`:
    /// two hours ago). Default 2026-01-01T00:00:00Z.
    #[arg(long)]
    base: Option<String>,
    /// Seed of the data, the mutator and the injected faults.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Inserts, updates and deletes per second while serving.
    #[arg(long, value_name = "PER_SECOND", default_value_t = 0.0)]
    mutate: f64,
    /// The API's clock runs this far behind the machine's: changes while serving are
    /// stamped `updated_at` = now − this (e.g. `5m`).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "0s")]
    clock_behind: Duration,
    /// Switch on an API quirk (repeatable).
    #[arg(long = "quirk", value_enum, value_name = "QUIRK")]
    quirks: Vec<Quirk>,
    /// The most results one offset-paged query serves (like HubSpot's search cap): the page
    /// reaching it is the last, an offset past it is refused (400).
    #[arg(long, value_name = "N")]
    max_results: Option<u64>,
    /// Require `Authorization: Bearer <token>` on data endpoints.
    #[arg(long, env = "WAYMARK_SANDBOX_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Latency added to every data response (e.g. `20ms`).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "0s")]
    latency: Duration,
    /// Fraction of data requests answered 429 with `Retry-After`.
    #[arg(long, default_value_t = 0.0)]
    rate_429: f64,
    /// `Retry-After` of 429 and 503 answers.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "1s")]
    retry_after: Duration,
    /// Fraction answered 500.
    #[arg(long, default_value_t = 0.0)]
    rate_500: f64,
    /// Fraction answered 503 with `Retry-After`.
    #[arg(long, default_value_t = 0.0)]
    rate_503: f64,
    /// Fraction that hang for `--hang` before answering.
    #[arg(long, default_value_t = 0.0)]
    rate_hang: f64,
    /// How long a hung request hangs.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "60s")]
    hang: Duration,
    /// Fraction whose connection is dropped mid-body.
    #[arg(long, default_value_t = 0.0)]
    rate_reset: f64,
    /// Fraction answered 200 with a body that is not valid JSON.
    #[arg(long, default_value_t = 0.0)]
    rate_malformed: f64,
    /// A rate limit: more data requests than N in any second are answered 429.
    #[arg(long, value_name = "N", default_value_t = 0)]
    quota: u64,
    /// Send a signed webhook event for every mutation (the mutator's and
    /// `/_control/edit`'s) to this URL, retried until answered 2xx; `{resource}` in it
    /// becomes `orders` or `customers`, e.g. `http://127.0.0.1:8080/hooks/shop/{resource}`.
    #[arg(
        long,
        value_name = "URL",
        requires = "webhook_secret",
        help_heading = "Webhooks"
    )]
    webhooks_to: Option<String>,
    /// How the webhooks are signed.
    #[arg(
        long,
        value_enum,
        value_name = "SCHEME",
        default_value_t = Preset::Standard,
        requires = "webhooks_to",
        help_heading = "Webhooks"
    )]
    webhook_scheme: Preset,
    /// The webhooks' signing secret (for `standard`, `whsec_<base64>`).
    #[arg(
        long,
        value_name = "TEXT",
        env = "WAYMARK_SANDBOX_WEBHOOK_SECRET",
        hide_env_values = true,
        help_heading = "Webhooks"
    )]
    webhook_secret: Option<String>,
    /// Probability (0–1) that an event is delivered a second time a while later, with the
    /// same id and body.
    #[arg(
        long,
        value_name = "P",
        default_value_t = 0.0,
        value_parser = probability,
        requires = "webhooks_to",
        help_heading = "Webhooks"
    )]
    webhook_duplicates: f64,
    /// Probability (0–1) that an event is held back and sent after the next one to three.
    #[arg(
        long,
        value_name = "P",
        default_value_t = 0.0,
        value_parser = probability,
        requires = "webhooks_to",
        help_heading = "Webhooks"
    )]
    webhook_reorder: f64,
    /// Probability (0–1) that an event is never sent (only polling finds its change).
    #[arg(
        long,
        value_name = "P",
        default_value_t = 0.0,
        value_parser = probability,
        requires = "webhooks_to",
        help_heading = "Webhooks"
    )]
    webhook_drop: f64,
    /// Each event waits a random 0 to N ms before its first attempt.
    #[arg(
        long,
        value_name = "N",
        default_value_t = 0,
        requires = "webhooks_to",
        help_heading = "Webhooks"
    )]
    webhook_delay_ms: u64,
    /// Events are held and released N at a time (a partial burst after 1 s; 0 or 1: off).
    #[arg(
        long,
        value_name = "N",
        default_value_t = 0,
        requires = "webhooks_to",
        help_heading = "Webhooks"
    )]
    webhook_burst: u64,
}

/// A probability: a number from 0 to 1.
fn probability(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(p) if (0.0..=1.0).contains(&p) => Ok(p),
        _ => Err(format!("`{text}` is not a probability from 0 to 1")),
    }
}

/// The webhooks of `args`, checked: a URL per resource, a secret the scheme can use.
fn webhooks(args: &SandboxArgs) -> Result<Option<webhooks::Config>, UsageError> {
    let Some(url) = &args.webhooks_to else {
        return Ok(None);
    };
    for filled in webhooks::urls(url) {
        match reqwest::Url::parse(&filled) {
            Ok(u) if matches!(u.scheme(), "http" | "https") => {}
            Ok(_) => {
                return Err(UsageError(format!(
                    "--webhooks-to: `{filled}` is not http(s)"
                )))
            }
            Err(e) => return Err(UsageError(format!("--webhooks-to: `{filled}`: {e}"))),
        }
    }
    let scheme = args.webhook_scheme.scheme();
    let secret = args.webhook_secret.as_deref().unwrap_or_default();
    let key = signature::key(&scheme, secret)
        .filter(|key| !key.is_empty())
        .ok_or_else(|| {
            UsageError(match scheme {
                signature::Scheme::Standard => {
                    "--webhook-secret: a `standard` secret is `whsec_<base64>`".into()
                }
                _ => "--webhook-secret: empty".into(),
            })
        })?;
    Ok(Some(webhooks::Config {
        url: url.clone(),
        scheme,
        key,
        faults: webhooks::Faults {
            duplicates: args.webhook_duplicates,
            reorder: args.webhook_reorder,
            drop: args.webhook_drop,
            delay_ms: args.webhook_delay_ms,
            burst: args.webhook_burst,
        },
    }))
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Runs `waymark sandbox`.
pub async fn run(args: SandboxArgs) -> anyhow::Result<ExitStatus> {
    let webhooks = webhooks(&args)?;
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", args.port)).await?;
    let addr = listener.local_addr()?;
    out!("sandbox listening on http://{addr}");
    tracing::info!(
        "endpoints: /orders /customers /customers/{{id}}/invoices /orders/deleted \
         /customers/deleted /_truth/orders /_truth/customers /_stats, PUT /_control/faults \
         /_control/mutator /_control/edit"
    );
    if let Some(hooks) = &webhooks {
        tracing::info!("webhooks to {} signed {:?}", hooks.url, hooks.scheme);
    }
    let base_ms = match &args.base {
        Some(text) => {
            let now = waymark_engine::Timestamp::from_system(std::time::SystemTime::now());
            waymark_connectors::config::initial_start(text, now)
                .map_err(|e| super::UsageError(format!("--base: {e}")))?
                .0
        }
        None => Config::default().base_ms,
    };
    let config = Config {
        base_ms,
        orders: args.records,
        customers: args.customers,
        tie: args.tie.max(1),
        seed: args.seed,
        mutate_rate: args.mutate.max(0.0),
        clock_behind_ms: ms(args.clock_behind),
        quirks: args.quirks,
        token: args.token,
        max_results: args.max_results,
        webhooks,
        faults: Faults {
            latency_ms: ms(args.latency),
            rate_429: args.rate_429,
            retry_after_s: args.retry_after.as_secs(),
            rate_500: args.rate_500,
            rate_503: args.rate_503,
            rate_hang: args.rate_hang,
            hang_ms: ms(args.hang),
            rate_reset: args.rate_reset,
            rate_malformed: args.rate_malformed,
            quota_per_second: args.quota,
        },
    };
    sandbox::serve(listener, config).await?;
    Ok(ExitStatus::Success)
}
