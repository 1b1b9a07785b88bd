//! The web view at `/`: server-rendered pages of the same data the CLI's `--json`
//! commands print, run in this process ([`attach::local_json`]), so the page and the
//! terminal never disagree. Assets are compiled into the binary; a few lines of plain
//! JavaScript follow a running run over Server-Sent Events. A changing action is a POST
//! carrying this process's CSRF token; beyond loopback every page needs the API token,
//! given once in a login form and kept in a cookie.
//!
//! - [`pages`]: the HTML, pure functions of JSON rows; [`chart`]: inline SVG.

pub mod chart;
pub mod pages;

use axum::extract::{Form, Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;
use serde::Deserialize;
use tokio::sync::oneshot;

use super::shared::{same, Ask, RunNow, Shared, TOKEN_COOKIE};
use crate::cli::attach;

/// The pages (behind the API's authorization).
pub fn pages() -> Router<Shared> {
    Router::new()
        .route("/", get(overview))
        .route("/tenants", get(tenants))
        .route("/streams/{sync}/{stream}", get(stream))
        .route("/streams/{sync}/{stream}/run", post(run_now))
        .route("/runs/{id}", get(run))
        .route("/trace", get(trace))
        .route("/dlq", get(dead_letters))
        .route("/dlq/{sync}/{stream}", get(letters))
        .route("/dlq/{sync}/{stream}/retry", post(retry))
        .route("/dlq/{sync}/{stream}/drop", post(drop_letters))
}

/// What needs no authorization: the login form and the assets.
pub fn public() -> Router<Shared> {
    Router::new()
        .route(
            "/login",
            get(|| async { page(pages::login(false)) }).post(login),
        )
        .route("/assets/style.css", get(style))
        .route("/assets/live.js", get(script))
}

fn page(markup: maud::Markup) -> Response {
    Html(markup.into_string()).into_response()
}

/// A command's JSON lines (in a cluster, `runs` and `status` of every worker), or a page
/// saying why not.
async fn json(shared: &Shared, args: &[&str]) -> Result<Vec<serde_json::Value>, Response> {
    let args = shared.reading(args);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    attach::local_json(&shared.dir, &args)
        .await
        .map_err(|(why, _)| {
            let mut response = page(pages::problem("Not available", &why));
            *response.status_mut() = StatusCode::NOT_FOUND;
            response
        })
}

/// Which streams a page shows: a sync's (every tenant's instance of it), a tenant's.
#[derive(Deserialize)]
struct Only {
    sync: Option<String>,
    tenant: Option<String>,
}

impl Only {
    fn sync(&self) -> Option<&str> {
        self.sync.as_deref().filter(|s| !s.is_empty())
    }

    fn tenant(&self) -> Option<&str> {
        self.tenant.as_deref().filter(|t| !t.is_empty())
    }

    /// The same choice as `status` arguments.
    fn args(&self) -> Vec<&str> {
        let mut args = Vec::new();
        if let Some(sync) = self.sync() {
            args.extend(["--sync", sync]);
        }
        if let Some(tenant) = self.tenant() {
            args.extend(["--tenant", tenant]);
        }
        args
    }
}

async fn overview(State(shared): State<Shared>, Query(only): Query<Only>) -> Response {
    let (tx, rx) = oneshot::channel();
    let plan: pages::Plan = match shared.asks.send(Ask::Plan(tx)) {
        Ok(()) => rx.await.unwrap_or_default(),
        Err(_) => Vec::new(),
    }
    .into_iter()
    .map(|(key, due, running)| (key, (due.map(|t| t.to_string()), running)))
    .filter(|((sync, _), _)| {
        let tenants: Vec<String> = only.tenant().map(str::to_string).into_iter().collect();
        crate::cli::status::wanted(sync, only.sync(), &tenants)
    })
    .collect();
    let args = [&["status", "--json"][..], &only.args()].concat();
    match json(&shared, &args).await {
        Ok(rows) => page(pages::overview(rows, &plan, &only.args().join(" "))),
        Err(problem) => problem,
    }
}

/// One line per tenant (`status --by-tenant --json`).
async fn tenants(State(shared): State<Shared>) -> Response {
    match json(&shared, &["status", "--by-tenant", "--json"]).await {
        Ok(rows) => page(pages::tenants(&rows)),
        Err(problem) => problem,
    }
}

#[derive(Deserialize)]
struct Said {
    said: Option<String>,
}

async fn stream(
    State(shared): State<Shared>,
    Path((sync, stream)): Path<(String, String)>,
    Query(said): Query<Said>,
) -> Response {
    let args = [
        "runs", "--json", "--sync", &sync, "--stream", &stream, "--limit", "50",
    ];
    let runs = match json(&shared, &args).await {
        Ok(runs) => runs,
        Err(problem) => return problem,
    };
    // A stream's own scope has a checkpoint history (backfills, repairs, webhooks do not).
    let workflow = shared.workflow_of(&sync);
    let mut changes = Vec::new();
    if let Some(workflow) = workflow.filter(|_| !stream.contains('@')) {
        let workflow = workflow.display().to_string();
        let args = [
            "checkpoint",
            "show",
            &workflow,
            "--stream",
            &stream,
            "--json",
        ];
        if let Ok(mut shown) = attach::local_json(&shared.dir, &args).await {
            if let Some(serde_json::Value::Array(history)) =
                shown.pop().map(|mut s| s["history"].take())
            {
                changes = history;
            }
        }
    }
    page(pages::stream(pages::StreamPage {
        sync: &sync,
        stream: &stream,
        runs: &runs,
        changes: &changes,
        csrf: &shared.csrf,
        said: said.said.as_deref(),
    }))
}

async fn run(State(shared): State<Shared>, Path(id): Path<String>) -> Response {
    // A run of this process's journal; in a cluster, another worker's as it mirrored it.
    let summary = match attach::local_json(&shared.dir, &["runs", &id, "--json"]).await {
        Ok(mut rows) if rows.len() == 1 => rows.remove(0),
        local => {
            if shared.cluster.is_some() {
                if let Ok(mut rows) = json(&shared, &["runs", &id, "--json"]).await {
                    if rows.len() == 1 {
                        return page(pages::run(&rows.remove(0), &[]));
                    }
                }
            }
            let why = local.err().map_or(id, |(why, _)| why);
            let mut response = page(pages::problem("No such run", &why));
            *response.status_mut() = StatusCode::NOT_FOUND;
            return response;
        }
    };
    match json(&shared, &["journal", &id, "--json"]).await {
        Ok(steps) => page(pages::run(&summary, &steps)),
        Err(problem) => problem,
    }
}

#[derive(Deserialize)]
struct TraceQuery {
    stream: Option<String>,
    key: Option<String>,
    /// With [tenants]: whose.
    tenant: Option<String>,
}

async fn trace(State(shared): State<Shared>, Query(q): Query<TraceQuery>) -> Response {
    let (stream, key) = (q.stream.unwrap_or_default(), q.key.unwrap_or_default());
    let tenant = q.tenant.unwrap_or_default();
    let rows = match stream.is_empty() || key.is_empty() {
        true => None,
        false => {
            let mut args = vec!["trace", &stream, &key, "--json"];
            if !tenant.is_empty() {
                args.extend(["--tenant", &tenant]);
            }
            Some(
                attach::local_json(&shared.dir, &args)
                    .await
                    .map_err(|(why, _)| why),
            )
        }
    };
    page(pages::trace(&stream, &key, &tenant, rows))
}

async fn dead_letters(State(shared): State<Shared>, Query(said): Query<Said>) -> Response {
    match json(&shared, &["dlq", "list", "--json"]).await {
        Ok(rows) => page(pages::dead_letters(
            &rows,
            &shared.csrf,
            said.said.as_deref(),
        )),
        Err(problem) => problem,
    }
}

async fn letters(
    State(shared): State<Shared>,
    Path((sync, stream)): Path<(String, String)>,
) -> Response {
    let args = [
        "dlq", "show", "--stream", &stream, "--sync", &sync, "--limit", "500", "--json",
    ];
    match json(&shared, &args).await {
        Ok(rows) => page(pages::letters(&sync, &stream, &rows)),
        Err(problem) => problem,
    }
}

/// A changing command carried out as serve does for the CLI (the stream held meanwhile);
/// back to the dead letters, saying how it went.
async fn change(shared: &Shared, args: &[&str]) -> Response {
    let said = match &shared.changes {
        None => "this process does not carry out changes".to_string(),
        Some(changes) => match attach::local_change(&shared.dir, args, changes.clone()).await {
            Ok(lines) => lines.last().cloned().unwrap_or_else(|| "done".into()),
            Err((why, _)) => format!("refused: {why}"),
        },
    };
    Redirect::to(&format!("/dlq?said={}", pages::segment(&said))).into_response()
}

/// Refuses a form without this process's CSRF token.
fn forged(action: &Action, shared: &Shared) -> Option<Response> {
    if same(action.csrf.as_bytes(), shared.csrf.as_bytes()) {
        return None;
    }
    let mut response = page(pages::problem(
        "Refused",
        "the form is stale (serve restarted?): reload the page and try again",
    ));
    *response.status_mut() = StatusCode::FORBIDDEN;
    Some(response)
}

async fn retry(
    State(shared): State<Shared>,
    Path((sync, stream)): Path<(String, String)>,
    Form(action): Form<Action>,
) -> Response {
    if let Some(refused) = forged(&action, &shared) {
        return refused;
    }
    let workflow = shared.workflow_of(&sync);
    let Some(workflow) = workflow else {
        return Redirect::to("/dlq?said=serve%20has%20no%20such%20sync").into_response();
    };
    let workflow = workflow.display().to_string();
    change(&shared, &["dlq", "retry", &workflow, "--stream", &stream]).await
}

async fn drop_letters(
    State(shared): State<Shared>,
    Path((sync, stream)): Path<(String, String)>,
    Form(action): Form<Action>,
) -> Response {
    if let Some(refused) = forged(&action, &shared) {
        return refused;
    }
    let reason = action.reason.unwrap_or_default();
    if reason.trim().is_empty() {
        return Redirect::to("/dlq?said=a%20drop%20needs%20a%20reason").into_response();
    }
    change(
        &shared,
        &[
            "dlq", "drop", "--stream", &stream, "--sync", &sync, "--reason", &reason,
        ],
    )
    .await
}

#[derive(Deserialize)]
struct Action {
    csrf: String,
    /// Why (a drop).
    reason: Option<String>,
}

async fn run_now(
    State(shared): State<Shared>,
    Path((sync, stream)): Path<(String, String)>,
    Form(action): Form<Action>,
) -> Response {
    if let Some(refused) = forged(&action, &shared) {
        return refused;
    }
    let (tx, rx) = oneshot::channel();
    let said = match shared
        .asks
        .send(Ask::RunNow((sync.clone(), stream.clone()), tx))
    {
        Err(_) => "serve is stopping",
        Ok(()) => match rx.await {
            Ok(RunNow::Accepted) => "started",
            Ok(RunNow::Running) => "its run is going already",
            Ok(RunNow::Unknown) => "serve does not run this stream",
            Err(_) => "serve is stopping",
        },
    };
    let to = format!(
        "/streams/{}/{}?said={}",
        pages::segment(&sync),
        pages::segment(&stream),
        pages::segment(said)
    );
    Redirect::to(&to).into_response()
}

#[derive(Deserialize)]
struct Login {
    token: String,
}

async fn login(State(shared): State<Shared>, Form(login): Form<Login>) -> Response {
    let right = shared
        .token
        .as_ref()
        .is_some_and(|t| same(login.token.as_bytes(), t.as_bytes()));
    if !right {
        let mut response = page(pages::login(true));
        *response.status_mut() = StatusCode::UNAUTHORIZED;
        return response;
    }
    let cookie = format!(
        "{TOKEN_COOKIE}={}; Path=/; HttpOnly; SameSite=Strict",
        login.token
    );
    ([(header::SET_COOKIE, cookie)], Redirect::to("/")).into_response()
}

async fn style() -> Response {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        include_str!("assets/style.css"),
    )
        .into_response()
}

async fn script() -> Response {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        include_str!("assets/live.js"),
    )
        .into_response()
}
