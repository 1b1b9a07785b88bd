//! Many streams of one source at once under its rate budget: `serve` runs them
//! concurrently, and they share one gate, so together they send at the budget's rate — no
//! slower, and never over the API's limit.
//!
//! `cargo bench --bench budget` (defaults: 16 streams of one workflow file, 50 pages each,
//! all running at once; the sandbox admits R = 50 requests in any second and answers 429
//! beyond; the source's `rate_limit` is R per second). `WAYMARK_BENCH_STREAMS`,
//! `WAYMARK_BENCH_PAGES` and `WAYMARK_BENCH_RATE` change them; `WAYMARK_BENCH_BUDGET`
//! sets the source's budget apart from the API's limit. Prints the aggregate request rate
//! as a share of R, and the 429s the API sent.

mod support;

use std::path::Path;
use std::time::{Duration, Instant, UNIX_EPOCH};

use support::{env, runs, sandbox, serve, stats, Result};

/// One workflow file: `streams` streams reading all of `/orders` in pages of 10, due once
/// (every hour), under a budget of `budget` requests per second.
fn write_flow(dir: &Path, streams: u64, budget: u64) -> Result {
    let mut text = format!(
        "[sync]\nname = \"shop\"\nschedule = {{ every = \"1h\" }}\n\n[source]\nkind = \
         \"http\"\nbase_url = \"${{WAYMARK_SANDBOX_URL}}\"\nmax_attempts = 20\n\
         rate_limit = {{ requests = {budget}, per = \"1s\" }}\n"
    );
    for i in 0..streams {
        text.push_str(&format!(
            "\n[[stream]]\nname = \"t{i}\"\npath = \"/orders\"\nrecords = \"data\"\n\
             primary_key = \"id\"\ncursor_field = \"updated_at\"\npage_size = 10\n\
             pagination = {{ kind = \"cursor\", cursor_path = \"next_cursor\", \
             cursor_param = \"cursor\", limit_param = \"limit\" }}\n"
        ));
    }
    text.push_str("\n[destination]\nkind = \"sqlite\"\npath = \"shop.db\"\n");
    std::fs::write(dir.join("shop.toml"), text)?;
    Ok(())
}

fn ms(run: &serde_json::Value, field: &str) -> Option<u64> {
    let t = humantime::parse_rfc3339(run[field].as_str()?).ok()?;
    Some(t.duration_since(UNIX_EPOCH).ok()?.as_millis() as u64)
}

fn main() -> Result {
    let streams = env("WAYMARK_BENCH_STREAMS", 16);
    let pages = env("WAYMARK_BENCH_PAGES", 50);
    let rate = env("WAYMARK_BENCH_RATE", 50);
    let budget = env("WAYMARK_BENCH_BUDGET", rate);
    let dir = std::env::temp_dir().join(format!("waymark-bench-budget-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    // `pages` full pages and the short last one that ends the stream.
    let records = (pages * 10 - 5).to_string();
    let (_sandbox, url) = sandbox(&["--records", &records, "--quota", &rate.to_string()])?;
    write_flow(&dir, streams, budget)?;
    let state = dir.join("state");
    let began = Instant::now();
    let serving = serve(&dir, "shop.toml", streams, &state, &url)?;
    let all = loop {
        std::thread::sleep(Duration::from_millis(500));
        let all = runs(&state)?;
        let done = all.iter().filter(|r| r["status"] != "running").count();
        if done as u64 == streams {
            break all;
        }
        if began.elapsed() > Duration::from_secs(600) {
            return Err(format!("not done after 10 minutes: {done} of {streams} runs").into());
        }
    };
    drop(serving);
    let first = all
        .iter()
        .filter_map(|r| ms(r, "started"))
        .min()
        .unwrap_or(0);
    let last = all
        .iter()
        .filter_map(|r| ms(r, "updated"))
        .max()
        .unwrap_or(0);
    let span = Duration::from_millis(last.saturating_sub(first));
    let stats = stats(&url)?;
    let requests = stats["requests"].as_u64().unwrap_or(0);
    let refused = stats["faults"]["429"].as_u64().unwrap_or(0);
    let completed = all.iter().filter(|r| r["status"] == "completed").count();
    let retries: u64 = all.iter().map(|r| r["retries"].as_u64().unwrap_or(0)).sum();
    let achieved = requests as f64 / span.as_secs_f64();
    // As the API saw them: n requests spaced 1/R apart span (n - 1)/R.
    let seen = Duration::from_millis(
        stats["last_request_ms"].as_u64().unwrap_or(0)
            - stats["first_request_ms"].as_u64().unwrap_or(0),
    );
    let at_api = requests.saturating_sub(1) as f64 / seen.as_secs_f64();
    println!(
        "budget: {streams} streams of one source at once, {pages} pages each; the API admits \
         {rate} requests/s, the source's budget is {budget}/s"
    );
    println!(
        "{requests} requests; at the API (first to last request, {:.2} s): {at_api:.1} \
         requests/s = {:.1} % of its limit; from the first run's start to the last run's end \
         ({:.2} s): {achieved:.1}/s = {:.1} %",
        seen.as_secs_f64(),
        at_api / rate as f64 * 100.0,
        span.as_secs_f64(),
        achieved / rate as f64 * 100.0
    );
    println!("429s answered: {refused}; retries: {retries}; {completed}/{streams} runs completed");
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
