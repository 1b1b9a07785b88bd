//! `serve`'s local HTTP API (loopback by default). Every read answers with exactly what the
//! CLI's `--json` prints — it is the same code, run in this process against the held
//! state directory ([`attach::local`]) — as a JSON array of those objects (one object for
//! a single run). `GET /api/runs/{id}/journal?follow=1` streams the steps as Server-Sent
//! Events until the run ends. On an address beyond loopback, every request but the
//! health checks needs `Authorization: Bearer $WAYMARK_API_TOKEN`.

use std::convert::Infallible;
use std::net::SocketAddr;

use axum::extract::{Path, Query, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures_util::stream::{self, Stream};
use serde::Deserialize;
use tokio::sync::{mpsc, oneshot};

use waymark_engine::{Clock, SystemClock};

use super::shared::{same, Ask, RunNow, Shared, TOKEN_COOKIE};
use super::web;
use crate::cli::attach::{self, Reply};
use crate::cli::UsageError;

/// The environment variable holding the API's bearer token.
pub const TOKEN_VAR: &str = "WAYMARK_API_TOKEN";

/// The token required on `listen` (from [`TOKEN_VAR`]); an address beyond loopback
/// without one is refused (exit 2).
pub fn token(listen: &SocketAddr) -> anyhow::Result<Option<String>> {
    let token = std::env::var(TOKEN_VAR).ok().filter(|t| !t.is_empty());
    if token.is_none() && !listen.ip().is_loopback() {
        return Err(UsageError(format!(
            "--listen {listen} is beyond loopback: set {TOKEN_VAR} to the bearer token \
             every request must carry (or listen on 127.0.0.1)"
        ))
        .into());
    }
    Ok(token)
}

/// Serves the API on `listener` until the process ends, with the webhook receiver's
/// `hooks` when it has no listener of its own.
pub async fn serve(listener: tokio::net::TcpListener, shared: Shared, hooks: Option<Router>) {
    let api = Router::new()
        .route("/metrics", get(metrics_text))
        .route("/api/status", get(status))
        .route("/api/runs", get(runs))
        .route("/api/runs/{id}", get(run))
        .route("/api/runs/{id}/journal", get(journal))
        .route("/api/trace/{stream}/{key}", get(trace))
        .route("/api/dlq", get(dlq))
        .route("/api/streams/{sync}/{stream}/run", post(run_now))
        .merge(web::pages())
        .route_layer(middleware::from_fn_with_state(shared.clone(), authorized));
    let app = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        // Listening at all means the state directory is open and the schedules loaded.
        .route("/readyz", get(|| async { "ready\n" }))
        .merge(api)
        .merge(web::public())
        .with_state(shared)
        // Webhooks carry signatures, not the token.
        .merge(hooks.unwrap_or_default());
    if let Err(e) = axum::serve(listener, app).await {
        tracing::error!("the local API stopped: {e}");
    }
}

async fn authorized(
    State(shared): State<Shared>,
    headers: HeaderMap,
    request: Request,
    next: Next,
) -> Response {
    if let Some(token) = &shared.token {
        let bearer = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        let cookie = headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|c| c.trim().strip_prefix(TOKEN_COOKIE)?.strip_prefix('='))
            .next();
        let given = bearer.or(cookie).unwrap_or("");
        if !same(given.as_bytes(), token.as_bytes()) {
            // A person at a page signs in; a program gets the status.
            if request.method() == axum::http::Method::GET
                && !request.uri().path().starts_with("/api/")
                && request.uri().path() != "/metrics"
            {
                return Redirect::to("/login").into_response();
            }
            return (StatusCode::UNAUTHORIZED, "a bearer token is required\n").into_response();
        }
    }
    next.run(request).await
}

/// A failed answer: the CLI's message, with a status by its exit code.
fn refused(message: String, code: u8) -> Response {
    let status = match code {
        2 => StatusCode::BAD_REQUEST,
        4 => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    let body = serde_json::json!({ "error": message, "exit_code": code });
    (status, Json(body)).into_response()
}

/// Runs a read command and collects its JSON lines.
async fn answer(shared: &Shared, args: &[&str]) -> Result<Vec<serde_json::Value>, Response> {
    attach::local_json(&shared.dir, args)
        .await
        .map_err(|(message, code)| refused(message, code))
}

async fn list(shared: Shared, args: &[&str]) -> Response {
    match answer(&shared, args).await {
        Ok(values) => Json(values).into_response(),
        Err(refusal) => refusal,
    }
}

async fn metrics_text(State(shared): State<Shared>) -> Response {
    let text = shared.metrics.scrape(&shared.dir, SystemClock.now());
    let kind = "application/openmetrics-text; version=1.0.0; charset=utf-8";
    ([(header::CONTENT_TYPE, kind)], text).into_response()
}

async fn status(State(shared): State<Shared>) -> Response {
    list(shared, &["status", "--json"]).await
}

#[derive(Deserialize)]
struct RunsQuery {
    sync: Option<String>,
    stream: Option<String>,
    limit: Option<u64>,
}

async fn runs(State(shared): State<Shared>, Query(q): Query<RunsQuery>) -> Response {
    let limit = q.limit.map(|l| l.to_string());
    let mut args = vec!["runs", "--json"];
    for (flag, value) in [
        ("--sync", q.sync.as_deref()),
        ("--stream", q.stream.as_deref()),
        ("--limit", limit.as_deref()),
    ] {
        if let Some(value) = value {
            args.extend([flag, value]);
        }
    }
    list(shared, &args).await
}

async fn run(State(shared): State<Shared>, Path(id): Path<String>) -> Response {
    match answer(&shared, &["runs", &id, "--json"]).await {
        Ok(mut values) if values.len() == 1 => Json(values.remove(0)).into_response(),
        Ok(values) => Json(values).into_response(),
        Err(refusal) => refusal,
    }
}

#[derive(Deserialize)]
struct Follow {
    follow: Option<String>,
}

async fn journal(
    State(shared): State<Shared>,
    Path(id): Path<String>,
    Query(q): Query<Follow>,
) -> Response {
    if !q.follow.is_some_and(|f| f == "1" || f == "true") {
        return list(shared, &["journal", &id, "--json"]).await;
    }
    match attach::local(&shared.dir, &["journal", &id, "--follow", "--json"]) {
        Ok(replies) => Sse::new(steps(replies)).into_response(),
        Err(e) => refused(crate::cli::describe(&e), 1),
    }
}

/// The journal's lines as events, then `end` when the command ends (an `error` event if it
/// fails).
fn steps(replies: mpsc::UnboundedReceiver<Reply>) -> impl Stream<Item = Result<Event, Infallible>> {
    stream::unfold(Some(replies), |replies| async move {
        let mut replies = replies?;
        loop {
            let event = match replies.recv().await {
                Some(Reply::Out(line)) => Event::default().event("step").data(line),
                Some(Reply::Note(_)) => continue,
                Some(Reply::Error(message, _)) => {
                    return Some((Ok(Event::default().event("error").data(message)), None))
                }
                // The command ended (or its channel closed with it).
                Some(Reply::Exit(_) | Reply::Busy) | None => {
                    return Some((Ok(Event::default().event("end").data("")), None))
                }
            };
            return Some((Ok(event), Some(replies)));
        }
    })
}

async fn trace(
    State(shared): State<Shared>,
    Path((stream, key)): Path<(String, String)>,
) -> Response {
    list(shared, &["trace", &stream, &key, "--json"]).await
}

async fn dlq(State(shared): State<Shared>) -> Response {
    list(shared, &["dlq", "list", "--json"]).await
}

async fn run_now(
    State(shared): State<Shared>,
    Path((sync, stream)): Path<(String, String)>,
) -> Response {
    let (tx, rx) = oneshot::channel();
    if shared.asks.send(Ask::RunNow((sync, stream), tx)).is_err() {
        return (StatusCode::SERVICE_UNAVAILABLE, "serve is stopping\n").into_response();
    }
    match rx.await {
        Ok(RunNow::Accepted) => (StatusCode::ACCEPTED, "started\n").into_response(),
        Ok(RunNow::Running) => (StatusCode::CONFLICT, "its run is going\n").into_response(),
        Ok(RunNow::Unknown) => (StatusCode::NOT_FOUND, "no such stream\n").into_response(),
        Err(_) => (StatusCode::SERVICE_UNAVAILABLE, "serve is stopping\n").into_response(),
    }
}
