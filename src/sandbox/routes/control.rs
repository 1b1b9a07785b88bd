//! The sandbox's own endpoints: the truth, request and webhook stats, faults, the mutator,
//! edits.

use std::sync::atomic::Ordering as AtomicOrdering;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;

use super::listing::respond;
use super::Shared;
use crate::sandbox::data::Kind;
use crate::sandbox::faults::Faults;
use crate::sandbox::{read, write, Sandbox};

pub(super) async fn truth(s: Arc<Sandbox>, kind: Kind) -> Response {
    let data = read(&s.data);
    let resource = data.resource(kind);
    let ids = resource.sorted_ids();
    let mut body = String::with_capacity(ids.len() * 450 + 64);
    body.push_str(&format!("{{\"count\":{},\"data\":[", ids.len()));
    for (i, id) in ids.iter().enumerate() {
        if let Some(key) = resource.key_of(*id) {
            if i > 0 {
                body.push(',');
            }
            resource.render(
                key,
                resource.live.get(&key).copied().unwrap_or(0),
                &mut body,
            );
        }
    }
    let gone: Vec<String> = resource.gone_ids().iter().map(u64::to_string).collect();
    body.push_str(&format!("],\"deleted\":[{}]}}", gone.join(",")));
    respond(None, HeaderMap::new(), body)
}

pub(super) async fn stats(State(s): Shared) -> Response {
    let data = read(&s.data);
    let [inserted, updated, deleted] = &s.mutations;
    Json(serde_json::json!({
        "requests": s.requests.load(AtomicOrdering::Relaxed),
        "first_request_ms": s.first_request_ms.load(AtomicOrdering::Relaxed),
        "last_request_ms": s.last_request_ms.load(AtomicOrdering::Relaxed),
        "faults": s.injected.to_json(),
        "over_quota": s.over_quota.load(AtomicOrdering::Relaxed),
        "not_modified": s.not_modified.load(AtomicOrdering::Relaxed),
        "mutations": {
            "inserted": inserted.load(AtomicOrdering::Relaxed),
            "updated": updated.load(AtomicOrdering::Relaxed),
            "deleted": deleted.load(AtomicOrdering::Relaxed),
        },
        "mutate_rate": *read(&s.mutate_rate),
        "orders": data.orders.len(),
        "customers": data.customers.len(),
        "webhooks": s.outbox.as_ref().map(|outbox| outbox.stats().to_json()),
    }))
    .into_response()
}

pub(super) async fn set_faults(State(s): Shared, Json(faults): Json<Faults>) -> Response {
    *write(&s.faults) = faults.clone();
    Json(faults).into_response()
}

/// `PUT /_control/mutator`: `{"rate": per_second}` changes the background rate, and
/// `{"apply": n}` applies `n` mutations before answering (deterministic tests).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct MutatorControl {
    pub(super) rate: Option<f64>,
    pub(super) apply: Option<u64>,
}

pub(super) async fn set_mutator(State(s): Shared, Json(c): Json<MutatorControl>) -> Response {
    if let Some(rate) = c.rate {
        *write(&s.mutate_rate) = rate.max(0.0);
    }
    s.apply_mutations(c.apply.unwrap_or(0));
    Json(serde_json::json!({ "rate": *read(&s.mutate_rate) })).into_response()
}

/// `PUT /_control/edit`: `{"resource": "orders", "touch": [ids], "update": [ids],
/// "delete": [ids]}` gives records a new revision without bumping `updated_at` (what an
/// incremental sync misses and a reconciliation finds), a new revision at the current time,
/// or deletes them. Answers how many of each it did.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Edit {
    pub(super) resource: String,
    #[serde(default)]
    pub(super) touch: Vec<u64>,
    #[serde(default)]
    pub(super) update: Vec<u64>,
    #[serde(default)]
    pub(super) delete: Vec<u64>,
    /// Serve the resource's records in a changed shape from now on (orders: `priority`
    /// added, `total_cents` a string, `note` gone), or the usual one again.
    #[serde(default)]
    pub(super) drift: Option<bool>,
}

pub(super) async fn edit(State(s): Shared, Json(edit): Json<Edit>) -> Response {
    let kind = match edit.resource.as_str() {
        "orders" => Kind::Orders,
        "customers" => Kind::Customers,
        other => {
            return (
                StatusCode::BAD_REQUEST,
                format!("unknown resource `{other}` (orders, customers)"),
            )
                .into_response()
        }
    };
    if let Some(drift) = edit.drift {
        s.drift(kind, drift);
    }
    let [touched, updated, deleted] = s.edit(kind, [&edit.touch, &edit.update, &edit.delete]);
    Json(serde_json::json!({ "touched": touched, "updated": updated, "deleted": deleted }))
        .into_response()
}
