//! The webhook receiver: `POST /hooks/{sync}/{stream}` for every stream with a `webhook`
//! section. A request is checked (size, content type, signature, timestamp, event id)
//! before its body is read as anything but bytes, stored in the inbox (durable, once per
//! event id) and only then answered 200; the serve loop is told the stream has events.
//! Refusals say nothing but their status; the reason goes to the log and to
//! `waymark_webhook_deliveries{outcome}`.

use std::collections::BTreeMap;
use std::sync::{Arc, PoisonError, RwLock};

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use tokio::sync::mpsc;

use waymark_connectors::webhook::hook::Hook;
use waymark_connectors::webhook::inbox::{Accepted, Event, Inbox};
use waymark_engine::{Clock, SystemClock};

use super::catalog::Catalog;
use super::metrics::Metrics;
use super::Key;

/// Each webhook stream's hook, or why it cannot receive (a secret not set).
pub type Table = BTreeMap<Key, Result<Hook, String>>;

/// The hooks of the loaded workflows; a stream whose secret is missing is logged.
pub fn table(catalog: &Catalog) -> Table {
    let mut table = Table::new();
    for (sync, loaded) in &catalog.syncs {
        for stream in loaded.workflow.streams() {
            let Some(section) = &stream.webhook else {
                continue;
            };
            let hook = Hook::new(section);
            if let Err(why) = &hook {
                tracing::error!(
                    "{sync}/{}: its webhook refuses every delivery (503): {why}",
                    stream.name
                );
            }
            table.insert((sync.clone(), stream.name.clone()), hook);
        }
    }
    table
}

/// What the receiver shares.
#[derive(Clone)]
pub struct Receiver {
    pub hooks: Arc<RwLock<Arc<Table>>>,
    pub inbox: Arc<Inbox>,
    pub metrics: Arc<Metrics>,
    /// Tells the serve loop a stream has new events.
    pub arrived: mpsc::UnboundedSender<Key>,
}

impl Receiver {
    /// Whether no loaded stream takes webhooks.
    pub fn hooks_empty(&self) -> bool {
        self.hooks
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .is_empty()
    }

    /// Takes the hooks of a reloaded catalog.
    pub fn reload(&self, table: Table) {
        *self.hooks.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(table);
    }
}

/// The receiver's routes.
pub fn router(receiver: Receiver) -> Router {
    Router::new()
        .route("/hooks/{sync}/{stream}", post(deliver))
        .with_state(receiver)
}

/// Serves only the receiver on `listener` (`--webhook-listen`).
pub async fn serve(listener: tokio::net::TcpListener, receiver: Receiver) {
    if let Err(e) = axum::serve(listener, router(receiver)).await {
        tracing::error!("the webhook listener stopped: {e}");
    }
}

fn answer(status: StatusCode, text: &'static str) -> Response {
    (status, text).into_response()
}

async fn deliver(
    State(receiver): State<Receiver>,
    Path((sync, stream)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let key = (sync, stream);
    let hooks = receiver
        .hooks
        .read()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    let hook = match hooks.get(&key) {
        None => return answer(StatusCode::NOT_FOUND, "no such webhook\n"),
        Some(Err(_)) => {
            receiver.metrics.delivered(&key, "not_configured");
            return answer(StatusCode::SERVICE_UNAVAILABLE, "not available\n");
        }
        Some(Ok(hook)) => hook,
    };
    let refuse = |reason: &'static str, why: String, status: StatusCode| {
        receiver.metrics.delivered(&key, reason);
        tracing::warn!("{}/{}: webhook delivery refused: {why}", key.0, key.1);
        let text = match status {
            StatusCode::PAYLOAD_TOO_LARGE => "payload too large\n",
            StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported media type\n",
            StatusCode::UNAUTHORIZED => "unauthorized\n",
            _ => "bad request\n",
        };
        answer(status, text)
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > hook.max_body()) {
        let why = format!(
            "declared {} bytes, above {}",
            declared.unwrap_or(0),
            hook.max_body()
        );
        return refuse("too_large", why, StatusCode::PAYLOAD_TOO_LARGE);
    }
    let body = match axum::body::to_bytes(body, hook.max_body()).await {
        Ok(body) => body,
        Err(e) => {
            let why = format!("reading the body (at most {} bytes): {e}", hook.max_body());
            return refuse("too_large", why, StatusCode::PAYLOAD_TOO_LARGE);
        }
    };
    let id = match hook.receive(&headers, &body, SystemClock.now()) {
        Ok(id) => id,
        Err(refused) => {
            let status = StatusCode::from_u16(refused.status()).unwrap_or(StatusCode::BAD_REQUEST);
            return refuse(refused.reason(), refused.to_string(), status);
        }
    };
    let event = Event {
        sync: key.0.clone(),
        stream: key.1.clone(),
        id,
        body: body.to_vec(),
    };
    match receiver.inbox.accept(event).await {
        Ok(Accepted::New(_)) => {
            receiver.metrics.delivered(&key, "accepted");
            let _ = receiver.arrived.send(key);
            answer(StatusCode::OK, "accepted\n")
        }
        Ok(Accepted::Duplicate) => {
            receiver.metrics.delivered(&key, "duplicate");
            answer(StatusCode::OK, "accepted\n")
        }
        Err(e) => {
            // Not durable: the sender delivers again.
            receiver.metrics.delivered(&key, "unavailable");
            tracing::error!("{}/{}: webhook event not stored: {e}", key.0, key.1);
            answer(StatusCode::SERVICE_UNAVAILABLE, "not available\n")
        }
    }
}
