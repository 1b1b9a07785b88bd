//! The pages, as pure functions of what the CLI's `--json` commands print (the same data
//! an operator gets at the terminal) to HTML. maud escapes every value: an API's text
//! never becomes markup.

use maud::{html, Markup, PreEscaped, DOCTYPE};
use serde_json::Value;

use super::chart;

/// Text of a JSON value: strings as they are, `-` for null, other values as JSON.
fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

pub use waymark_connectors::http::path_segment as segment;

/// The page around `body`.
pub fn layout(title: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · waymark" }
                link rel="stylesheet" href="/assets/style.css";
                script src="/assets/live.js" defer {}
            }
            body {
                header {
                    strong { a href="/" { "waymark" } }
                    nav aria-label="main" {
                        a href="/" { "Overview" }
                        a href="/tenants" { "Tenants" }
                        a href="/trace" { "Trace" }
                        a href="/dlq" { "Dead letters" }
                    }
                }
                main { (body) }
            }
        }
    }
}

/// Whether a `status --json` row is unhealthy.
fn unhealthy(row: &Value) -> bool {
    row["unhealthy"].as_bool().unwrap_or(false)
}

/// When each scheduled stream is next due (`None`: only when asked) and whether its run is
/// going, by sync and scope.
pub type Plan = std::collections::BTreeMap<(String, String), (Option<String>, bool)>;

/// The verdict shown: `status`'s, with `paused` for a healthy stream whose last run paused
/// and `new` for one that never ran.
fn verdict(row: &Value) -> String {
    match (text(&row["health"]), row["last_status"].as_str()) {
        (health, Some("paused")) if health == "ok" => "paused".into(),
        (health, _) => health,
    }
}

/// The overview: every stream serve schedules and every scope of `status --json` (in a
/// cluster, every worker's), unhealthy ones first, with when each is next due; `only`
/// says which streams were asked for (`--tenant acme`), if not all.
pub fn overview(mut rows: Vec<Value>, plan: &Plan, only: &str) -> Markup {
    for (sync, stream) in plan.keys() {
        let known = rows
            .iter()
            .any(|r| r["sync"] == sync.as_str() && r["stream"] == stream.as_str());
        if !known {
            rows.push(serde_json::json!({
                "sync": sync, "stream": stream, "health": "new", "unhealthy": false,
                "reason": "no run yet",
            }));
        }
    }
    rows.sort_by_key(|r| (!unhealthy(r), text(&r["sync"]), text(&r["stream"])));
    let streams: Vec<&Value> = rows.iter().filter(|r| r["stream"].is_string()).collect();
    let files: Vec<&Value> = rows.iter().filter(|r| r["file"].is_string()).collect();
    let bad = streams.iter().filter(|r| unhealthy(r)).count();
    layout(
        "Overview",
        html! {
            h1 { "Overview" }
            @if !only.is_empty() { p #only { "Only " span .mono { (only) } " · " a href="/" { "all streams" } } }
            p {
                (streams.len()) " streams, "
                @if bad == 0 { span .health.health-ok { "all healthy" } }
                @else { span .health.health-failing { (bad) " unhealthy" } }
            }
            @for file in &files {
                p .health.health-failing { (text(&file["file"])) ": " (text(&file["reason"])) }
            }
            div .scroll {
                table #streams {
                    caption .muted { "Each checkpoint scope: a stream, its backfills, repairs and webhooks" }
                    thead { tr {
                        th scope="col" { "Stream" }
                        th scope="col" { "Health" }
                        th scope="col" { "Watermark" }
                        th scope="col" .num { "Lag (s)" }
                        th scope="col" { "Last run" }
                        th scope="col" { "Next run" }
                        th scope="col" .num { "Dead letters" }
                        th scope="col" { "Reason" }
                    } }
                    tbody {
                        @for row in &streams {
                            @let (sync, stream) = (text(&row["sync"]), text(&row["stream"]));
                            @let health = verdict(row);
                            @let next = match plan.get(&(sync.clone(), stream.clone())) {
                                Some((_, true)) => "running now".to_string(),
                                Some((Some(at), false)) => at.clone(),
                                Some((None, false)) => "when asked".to_string(),
                                None => "-".to_string(),
                            };
                            tr class=(if unhealthy(row) { "unhealthy" } else { "" })
                               data-stream=(format!("{sync}/{stream}")) data-health=(health) {
                                td { a href=(format!("/streams/{}/{}", segment(&sync), segment(&stream))) {
                                    (sync) "/" (stream)
                                } }
                                td { span class=(format!("health health-{health}")) { (health) } }
                                td .mono { (text(&row["watermark"])) }
                                td .num { (text(&row["lag_s"])) }
                                td {
                                    @if let Some(run) = row["last_run"].as_str() {
                                        a href=(format!("/runs/{}", segment(run))) { (text(&row["last_status"])) }
                                    } @else { "-" }
                                }
                                td .mono .next { (next) }
                                td .num { (text(&row["dead_letters"])) }
                                td { (text(&row["reason"])) }
                            }
                        }
                    }
                }
            }
        },
    )
}

/// One line per tenant (`status --by-tenant --json`): its worst health, its streams by
/// health, its largest lag, its dead letters, a link to its streams.
pub fn tenants(rows: &[Value]) -> Markup {
    let tenanted: Vec<&Value> = rows
        .iter()
        .filter(|r| r["tenant"].as_str().is_some_and(|t| !t.is_empty()))
        .collect();
    let bad = tenanted.iter().filter(|r| r["health"] != "ok").count();
    layout(
        "Tenants",
        html! {
            h1 { "Tenants" }
            @if tenanted.is_empty() {
                p #no-tenants .muted { "No sync has [tenants]." }
            } @else {
                p {
                    (tenanted.len()) " tenants, "
                    @if bad == 0 { span .health.health-ok { "all healthy" } }
                    @else { span .health.health-failing { (bad) " unhealthy" } }
                }
                div .scroll {
                    table #tenants {
                        thead { tr {
                            th scope="col" { "Tenant" }
                            th scope="col" { "Health" }
                            th scope="col" .num { "Streams" }
                            th scope="col" { "By health" }
                            th scope="col" .num { "Largest lag (s)" }
                            th scope="col" .num { "Dead letters" }
                        } }
                        tbody {
                            @for row in &tenanted {
                                @let (sync, tenant) = (text(&row["sync"]), text(&row["tenant"]));
                                @let by: Vec<String> = row["by_health"].as_object().into_iter().flatten().map(|(h, n)| format!("{n} {h}")).collect();
                                tr class=(if row["health"] == "ok" { "" } else { "unhealthy" }) data-tenant=(format!("{sync}:{tenant}")) {
                                    td { a href=(format!("/?sync={}&tenant={}", segment(&sync), segment(&tenant))) { (sync) ":" (tenant) } }
                                    td { span class=(format!("health health-{}", text(&row["health"]))) { (text(&row["health"])) } }
                                    td .num { (text(&row["streams"])) }
                                    td { (by.join(", ")) }
                                    td .num { (text(&row["max_lag_s"])) }
                                    td .num { (text(&row["dead_letters"])) }
                                }
                            }
                        }
                    }
                }
            }
        },
    )
}

/// What a stream's page shows.
pub struct StreamPage<'a> {
    pub sync: &'a str,
    pub stream: &'a str,
    /// `runs --json`, newest first (in a cluster, every worker's, each with its `worker`).
    pub runs: &'a [Value],
    /// The `history` of `checkpoint show --json` (a stream's own scope only).
    pub changes: &'a [Value],
    pub csrf: &'a str,
    /// What the last action said.
    pub said: Option<&'a str>,
}

/// A stream's page: its runs, charts of records per run and of the lag each left behind,
/// the checkpoint's changes (who, why), and a run-now button.
pub fn stream(p: StreamPage<'_>) -> Markup {
    let StreamPage {
        sync,
        stream,
        runs,
        changes,
        csrf,
        said,
    } = p;
    let workers = runs.iter().any(|r| r["worker"].is_string());
    let records: Vec<(String, u64)> = runs
        .iter()
        .rev()
        .map(|r| (text(&r["started"]), r["records"].as_u64().unwrap_or(0)))
        .collect();
    // The lag a run left: from its watermark to when it last stepped, in seconds.
    let lag: Vec<(String, u64)> = runs
        .iter()
        .rev()
        .map(|r| {
            let at = |k: &str| {
                r[k].as_str()
                    .and_then(|t| humantime::parse_rfc3339_weak(t).ok())
            };
            let lag = match (at("watermark"), at("updated")) {
                (Some(w), Some(u)) => u.duration_since(w).map_or(0, |d| d.as_secs()),
                _ => 0,
            };
            (text(&r["started"]), lag)
        })
        .collect();
    layout(
        &format!("{sync}/{stream}"),
        html! {
            h1 { (sync) "/" (stream) }
            form .inline method="post" action=(format!("/streams/{}/{}/run", segment(sync), segment(stream))) {
                input type="hidden" name="csrf" value=(csrf);
                button type="submit" { "Run now" }
            }
            @if let Some(said) = said { p role="status" { (said) } }
            h2 { "Records per run" }
            (PreEscaped(chart::bars(&records)))
            h2 { "Lag each run left (s)" }
            (PreEscaped(chart::bars(&lag)))
            h2 { "Runs" }
            div .scroll {
                table #runs {
                    thead { tr {
                        th scope="col" { "Run" }
                        th scope="col" { "Status" }
                        th scope="col" { "Started" }
                        th scope="col" .num { "Duration (ms)" }
                        th scope="col" .num { "Records" }
                        th scope="col" .num { "Retries" }
                        th scope="col" { "Window" }
                        @if workers { th scope="col" { "Worker" } }
                    } }
                    tbody {
                        @for run in runs {
                            @let id = text(&run["run"]);
                            tr {
                                td .mono { a href=(format!("/runs/{}", segment(&id))) { (id) } }
                                td { (text(&run["status"])) }
                                td .mono { (text(&run["started"])) }
                                td .num { (text(&run["duration_ms"])) }
                                td .num { (text(&run["records"])) }
                                td .num { (text(&run["retries"])) }
                                td .mono { "(" (text(&run["window_start"])) ", " (text(&run["watermark"])) "]" }
                                @if workers { td .mono { (text(&run["worker"])) } }
                            }
                        }
                    }
                }
            }
            h2 { "Checkpoint changes" }
            @if changes.is_empty() { p #no-changes .muted { "None recorded." } }
            @else {
                div .scroll {
                    table #checkpoint-changes {
                        thead { tr {
                            th scope="col" .num { "Change" }
                            th scope="col" { "When" }
                            th scope="col" { "Who" }
                            th scope="col" { "Why" }
                        } }
                        tbody {
                            @for c in changes {
                                tr {
                                    td .num { (text(&c["change"])) }
                                    td .mono { (text(&c["at"])) }
                                    td { (text(&c["who"])) }
                                    td { (text(&c["why"])) }
                                }
                            }
                        }
                    }
                }
            }
        },
    )
}

/// A run's page: its summary and its journal as a timeline (`journal --json`), followed
/// live while the run goes. Another worker's run (in a cluster) has no steps here: its
/// journal is in that worker's state directory.
pub fn run(summary: &Value, steps: &[Value]) -> Markup {
    let elsewhere = summary["worker"].as_str().filter(|_| steps.is_empty());
    let id = text(&summary["run"]);
    let going = summary["status"] == "running";
    layout(
        &format!("run {id}"),
        html! {
            h1 { "Run " span .mono { (id) } }
            p {
                a href=(format!("/streams/{}/{}", segment(&text(&summary["sync"])), segment(&text(&summary["stream"])))) {
                    (text(&summary["sync"])) "/" (text(&summary["stream"]))
                }
                " · " span #run-status { (text(&summary["status"])) }
                " · " (text(&summary["records"])) " records in " (text(&summary["pages"])) " pages, "
                (text(&summary["retries"])) " retries, " (text(&summary["resumes"])) " resumes"
                " " span #live .live {}
            }
            @if let Some(worker) = elsewhere {
                p #elsewhere { "Run by worker " span .mono { (worker) } ": its step journal is in that worker's state directory (" code { "waymark journal " (id) } " there)." }
            } @else {
            div .scroll {
                table #timeline data-follow=[going.then(|| format!("/api/runs/{}/journal?follow=1", segment(&id)))] {
                    caption .muted { "Every journaled step (the same as waymark journal " (id) " --json)" }
                    thead { tr {
                        th scope="col" .num { "Seq" }
                        th scope="col" { "Time" }
                        th scope="col" { "Step" }
                        th scope="col" { "Cursor" }
                        th scope="col" { "Counts" }
                        th scope="col" { "What happened" }
                    } }
                    tbody {
                        @for step in steps {
                            tr data-seq=(text(&step["seq"])) {
                                td .num { (text(&step["seq"])) }
                                td .mono { (text(&step["time"])) }
                                td { (text(&step["step"])) }
                                td .mono { (text(&step["cursor"])) }
                                td .mono { (text(&step["counts"])) }
                                td { (text(&step["outcome"])) }
                            }
                        }
                    }
                }
            }
            }
        },
    )
}

/// The trace search and its answer (`trace --json`).
pub fn trace(
    stream: &str,
    key: &str,
    tenant: &str,
    rows: Option<Result<Vec<Value>, String>>,
) -> Markup {
    layout(
        "Trace",
        html! {
            h1 { "Trace a record" }
            form method="get" action="/trace" {
                label for="stream" { "Stream" }
                input #stream type="text" name="stream" value=(stream) required;
                " "
                label for="key" { "Key" }
                input #key type="text" name="key" value=(key) required;
                " "
                label for="tenant" { "Tenant" }
                input #tenant type="text" name="tenant" value=(tenant) placeholder="(with [tenants])";
                " "
                button type="submit" { "Search" }
            }
            @match rows {
                None => {}
                Some(Err(why)) => p .health.health-failing role="alert" { (why) },
                Some(Ok(rows)) if !rows.iter().any(|r| r["run_id"].is_string()) => p #no-sightings { "No run saw " (key) " in " (stream) "." },
                Some(Ok(rows)) => div .scroll {
                    table #sightings {
                        thead { tr {
                            th scope="col" { "When" }
                            th scope="col" { "Run" }
                            th scope="col" .num { "Page" }
                            th scope="col" { "Version" }
                            th scope="col" { "Fate" }
                        } }
                        tbody {
                            @for row in rows.iter().filter(|r| r["run_id"].is_string()) {
                                tr {
                                    td .mono { (text(&row["at"])) }
                                    td .mono { a href=(format!("/runs/{}", segment(&text(&row["run_id"])))) { (text(&row["run_id"])) } }
                                    td .num { (text(&row["page"])) }
                                    td .mono { (text(&row["version"])) }
                                    td { (text(&row["outcome"])) }
                                }
                            }
                        }
                    }
                },
            }
        },
    )
}

/// The dead letters per stream (`dlq list --json`), with retry and drop.
pub fn dead_letters(rows: &[Value], csrf: &str, said: Option<&str>) -> Markup {
    let rows: Vec<&Value> = rows
        .iter()
        .filter(|r| r["letters"].as_u64() > Some(0))
        .collect();
    layout(
        "Dead letters",
        html! {
            h1 { "Dead letters" }
            @if let Some(said) = said { p role="status" { (said) } }
            @if rows.is_empty() { p #no-letters { "None." } }
            @else {
                div .scroll {
                    table #letters {
                        thead { tr {
                            th scope="col" { "Stream" }
                            th scope="col" .num { "Letters" }
                            th scope="col" { "Newest reason" }
                            th scope="col" { "Retry" }
                            th scope="col" { "Drop" }
                        } }
                        tbody {
                            @for row in rows {
                                @let (sync, stream) = (text(&row["sync"]), text(&row["stream"]));
                                @let at = format!("/dlq/{}/{}", segment(&sync), segment(&stream));
                                tr data-stream=(format!("{sync}/{stream}")) {
                                    td { a href=(at) { (sync) "/" (stream) } }
                                    td .num { (text(&row["letters"])) }
                                    td { (text(&row["newest_reason"])) }
                                    td {
                                        form .inline method="post" action=(format!("{at}/retry")) {
                                            input type="hidden" name="csrf" value=(csrf);
                                            button type="submit" { "Retry" }
                                        }
                                    }
                                    td {
                                        form .inline method="post" action=(format!("{at}/drop")) {
                                            input type="hidden" name="csrf" value=(csrf);
                                            label for=(format!("reason-{sync}-{stream}")) { "Reason" }
                                            input type="text" name="reason" required id=(format!("reason-{sync}-{stream}"));
                                            " "
                                            button type="submit" { "Drop" }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        },
    )
}

/// One stream's dead letters (`dlq show --json`).
pub fn letters(sync: &str, stream: &str, rows: &[Value]) -> Markup {
    layout(
        &format!("dead letters of {sync}/{stream}"),
        html! {
            h1 { "Dead letters of " (sync) "/" (stream) }
            div .scroll {
                table #stream-letters {
                    thead { tr {
                        th scope="col" { "Key" }
                        th scope="col" { "Reason" }
                        th scope="col" { "Run" }
                        th scope="col" .num { "Page" }
                        th scope="col" { "Record" }
                    } }
                    tbody {
                        @for row in rows {
                            tr {
                                td .mono { (text(&row["key"])) }
                                td { (text(&row["reason"])) }
                                td .mono { a href=(format!("/runs/{}", segment(&text(&row["run_id"])))) { (text(&row["run_id"])) } }
                                td .num { (text(&row["page"])) }
                                td .mono { (text(&row["record"])) }
                            }
                        }
                    }
                }
            }
        },
    )
}

/// The login form (serve beyond loopback: the API's bearer token, kept in a cookie).
pub fn login(failed: bool) -> Markup {
    layout(
        "Sign in",
        html! {
            h1 { "Sign in" }
            @if failed { p .health.health-failing role="alert" { "That is not the token." } }
            form method="post" action="/login" {
                label for="token" { "API token (WAYMARK_API_TOKEN)" }
                input #token type="password" name="token" autocomplete="current-password" required;
                " "
                button type="submit" { "Sign in" }
            }
        },
    )
}

/// A page saying what went wrong.
pub fn problem(title: &str, why: &str) -> Markup {
    layout(title, html! { h1 { (title) } p role="alert" { (why) } })
}
