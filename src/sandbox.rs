//! `waymark sandbox`: a deterministic fake SaaS API on loopback, for demos and tests.
//!
//! `GET /orders?limit=&cursor=&updated_since=&updated_before=` pages through orders sorted
//! by `(updated_at, id)`, `tie` records sharing each `updated_at`; the body is
//! `{"data": [...], "next_cursor": "..." | null}`. `GET /_truth/orders` returns every record
//! the window filters would see, for test oracles. Optional latency and injected 500s.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use serde::Deserialize;

/// How the sandbox behaves.
#[derive(Clone, Debug)]
pub struct Config {
    /// Number of orders.
    pub records: u64,
    /// Records sharing each `updated_at` value.
    pub tie: u64,
    /// Seed of the generated fields and of fault injection.
    pub seed: u64,
    /// Added to every page response.
    pub latency: Duration,
    /// Fraction of page requests answered with HTTP 500.
    pub fail_rate: f64,
    /// `updated_at` of the first record, Unix seconds.
    pub base: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            records: 10_000,
            tie: 5,
            seed: 1,
            latency: Duration::ZERO,
            fail_rate: 0.0,
            base: 1_767_225_600,
        }
    }
}

struct Sandbox {
    config: Config,
    requests: AtomicU64,
}

#[derive(Deserialize)]
struct PageQuery {
    limit: Option<u64>,
    cursor: Option<String>,
    updated_since: Option<String>,
    updated_before: Option<String>,
}

fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

const STATUSES: [&str; 5] = ["pending", "paid", "shipped", "delivered", "refunded"];
const SKUS: [&str; 6] = [
    "SKU-TEA-001",
    "SKU-MUG-204",
    "SKU-KETTLE-9",
    "SKU-SPOON-12",
    "SKU-TIN-33",
    "SKU-CUP-07",
];

impl Sandbox {
    fn updated_at(&self, index: u64) -> u64 {
        self.config.base + index / self.config.tie.max(1)
    }

    /// The order at `index` (0-based) as JSON text, ~400 bytes.
    fn record(&self, index: u64) -> String {
        let r = mix(self.config.seed ^ index.wrapping_mul(0x2545_F491_4F6C_DD1D));
        let ts = humantime::format_rfc3339(
            std::time::UNIX_EPOCH + Duration::from_secs(self.updated_at(index)),
        );
        let created = humantime::format_rfc3339(
            std::time::UNIX_EPOCH
                + Duration::from_secs(self.config.base.saturating_sub(86_400 * (r % 30))),
        );
        let items: Vec<String> = (0..(1 + r % 3))
            .map(|k| {
                let x = mix(r ^ k);
                format!(
                    r#"{{"sku":"{}","quantity":{},"unit_price_cents":{}}}"#,
                    SKUS[(x % 6) as usize],
                    1 + x % 4,
                    199 + x % 5000
                )
            })
            .collect();
        format!(
            r#"{{"id":{},"updated_at":"{ts}","created_at":"{created}","status":"{}","customer_id":"cus_{:06}","currency":"EUR","total_cents":{},"items":[{}],"shipping":{{"city":"Lyon","country":"FR","method":"standard"}},"note":"order {} for customer {:06}"}}"#,
            index + 1,
            STATUSES[(r % 5) as usize],
            r % 100_000,
            r % 250_000,
            items.join(","),
            index + 1,
            r % 100_000,
        )
    }

    /// Index range `[first, end)` of the records inside the window filters.
    fn window(&self, q: &PageQuery) -> Result<(u64, u64), String> {
        let secs = |text: &str| {
            humantime::parse_rfc3339_weak(text)
                .map(|t| t.duration_since(std::time::UNIX_EPOCH).unwrap_or_default())
                .map_err(|e| format!("bad timestamp `{text}`: {e}"))
        };
        let tie = self.config.tie.max(1);
        let n = self.config.records;
        let first = match &q.updated_since {
            None => 0,
            Some(t) => {
                let since = secs(t)?;
                // updated_at > since: first group strictly after `since`.
                match since.as_secs().checked_sub(self.config.base) {
                    None => 0,
                    Some(d) => (d + 1).saturating_mul(tie),
                }
            }
        };
        let end = match &q.updated_before {
            None => n,
            Some(t) => {
                let before = secs(t)?;
                match before.as_secs().checked_sub(self.config.base) {
                    None => 0,
                    Some(d) => (d + 1).saturating_mul(tie),
                }
            }
        };
        Ok((first.min(n), end.min(n)))
    }
}

fn error(status: StatusCode, message: String) -> Response {
    (status, axum::Json(serde_json::json!({ "error": message }))).into_response()
}

async fn orders(State(s): State<Arc<Sandbox>>, Query(q): Query<PageQuery>) -> Response {
    let n = s.requests.fetch_add(1, Ordering::SeqCst);
    if !s.config.latency.is_zero() {
        tokio::time::sleep(s.config.latency).await;
    }
    if s.config.fail_rate > 0.0 {
        let roll = (mix(s.config.seed ^ 0xFA11 ^ n) >> 11) as f64 / (1u64 << 53) as f64;
        if roll < s.config.fail_rate {
            return error(StatusCode::INTERNAL_SERVER_ERROR, "injected failure".into());
        }
    }
    let (first, end) = match s.window(&q) {
        Ok(range) => range,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    let start = match q.cursor.as_deref() {
        None => first,
        Some(c) => match c.strip_prefix('p').and_then(|i| i.parse::<u64>().ok()) {
            Some(i) => i.max(first),
            None => return error(StatusCode::BAD_REQUEST, format!("bad cursor `{c}`")),
        },
    };
    let limit = q.limit.unwrap_or(100).clamp(1, 10_000);
    let stop = start.saturating_add(limit).min(end);
    let mut body = String::with_capacity(((stop - start.min(stop)) * 450 + 64) as usize);
    body.push_str("{\"data\":[");
    for (k, i) in (start..stop).enumerate() {
        if k > 0 {
            body.push(',');
        }
        body.push_str(&s.record(i));
    }
    body.push_str("],\"next_cursor\":");
    if stop < end {
        body.push_str(&format!("\"p{stop}\""));
    } else {
        body.push_str("null");
    }
    body.push('}');
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        body,
    )
        .into_response()
}

async fn truth(State(s): State<Arc<Sandbox>>, Query(q): Query<PageQuery>) -> Response {
    let (first, end) = match s.window(&q) {
        Ok(range) => range,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    let records: Vec<String> = (first..end).map(|i| s.record(i)).collect();
    let body = format!(
        "{{\"count\":{},\"data\":[{}]}}",
        records.len(),
        records.join(",")
    );
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        body,
    )
        .into_response()
}

/// The sandbox's routes.
pub fn router(config: Config) -> Router {
    let state = Arc::new(Sandbox {
        config,
        requests: AtomicU64::new(0),
    });
    Router::new()
        .route("/orders", get(orders))
        .route("/_truth/orders", get(truth))
        .with_state(state)
}

/// Serves the sandbox on `listener` until the process ends.
pub async fn serve(listener: tokio::net::TcpListener, config: Config) -> std::io::Result<()> {
    axum::serve(listener, router(config)).await
}
