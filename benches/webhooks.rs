//! Webhook ingestion over HTTP on loopback, end to end: `waymark serve` receiving signed
//! events (Standard Webhooks, ~450-byte order events) on `--webhook-listen`, each answered
//! 200 only once it is flushed to disk, from 1, 16 and 64 concurrent senders (each its own
//! keep-alive connection, one request after the other). Prints events per second, the
//! latency of one delivery (p50, p99), and how long after the last acceptance the apply
//! side had written every event to the destination (SQLite) through journaled runs.
//!
//! `cargo bench --bench webhooks` (`WAYMARK_BENCH_EVENTS`, default 20,000 per row).

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use support::{env, runs, sandbox, serve_with, Result};
use waymark_connectors::webhook::signature::{key, sign, Scheme};
use waymark_engine::Timestamp;

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len().saturating_sub(1)) as f64 * p).round() as usize;
    sorted.get(i).copied().unwrap_or_default()
}

fn write_flow(dir: &Path) -> Result {
    let text = "[sync]\nname = \"shop\"\n\n[source]\nkind = \"http\"\n\
                base_url = \"${WAYMARK_SANDBOX_URL}\"\n\n[[stream]]\nname = \"orders\"\n\
                path = \"/orders\"\nrecords = \"data\"\nprimary_key = \"id\"\n\
                cursor_field = \"updated_at\"\npage_size = 500\n\
                pagination = { kind = \"cursor\", cursor_path = \"next_cursor\", \
                cursor_param = \"cursor\" }\n\
                webhook = { scheme = \"standard\", secrets = [{ env = \"SHOP_WEBHOOK_SECRET\" }], \
                record_path = \"data\" }\n\n[destination]\nkind = \"sqlite\"\npath = \"shop.db\"\n";
    std::fs::write(dir.join("shop.toml"), text)?;
    Ok(())
}

/// Records the webhook runs applied so far.
fn applied(state: &Path) -> Result<u64> {
    Ok(runs(state)?
        .iter()
        .filter(|r| r["stream"] == "orders@webhook")
        .filter_map(|r| r["records"].as_u64())
        .sum())
}

/// One row: `events` events from `senders` senders, numbered from `first`.
async fn row(url: &str, senders: u64, events: u64, first: u64) -> Result<(f64, Vec<Duration>)> {
    let each = events / senders;
    let began = Instant::now();
    let mut tasks = Vec::new();
    for sender in 0..senders {
        let url = url.to_string();
        tasks.push(tokio::spawn(async move {
            let client = reqwest::Client::new();
            let key = key(&Scheme::Standard, SECRET).unwrap_or_default();
            let mut latencies = Vec::with_capacity(each as usize);
            for i in 0..each {
                let n = first + sender * each + i;
                let body = format!(
                    "{{\"id\":\"evt_{n}\",\"type\":\"orders.updated\",\"data\":{{\"id\":{n},\
                     \"updated_at\":\"2026-12-02T07:00:00.000Z\",\"rev\":1,\"status\":\"paid\",\
                     \"customer_id\":17,\"currency\":\"EUR\",\"total_cents\":12345,\"items\":\
                     [{{\"sku\":\"A-1\",\"quantity\":2,\"unit_price_cents\":999}}],\"shipping\":\
                     {{\"city\":\"Berlin\",\"country\":\"DE\",\"method\":\"standard\"}},\
                     \"note\":\"order {n} revision 1, sent by sender {sender}\"}}}}"
                );
                let now = Timestamp::from_system(std::time::SystemTime::now());
                let headers = sign(
                    &Scheme::Standard,
                    &key,
                    &format!("evt_{n}"),
                    now,
                    body.as_bytes(),
                )
                .unwrap_or_default();
                let mut request = client
                    .post(&url)
                    .header("content-type", "application/json")
                    .body(body);
                for (name, value) in headers {
                    request = request.header(name, value);
                }
                let asked = Instant::now();
                let status = request.send().await.map(|r| r.status().as_u16());
                latencies.push(asked.elapsed());
                if status.as_ref().ok() != Some(&200) {
                    return Err(format!("event {n} not accepted: {status:?}"));
                }
            }
            Ok(latencies)
        }));
    }
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await??);
    }
    let took = began.elapsed().as_secs_f64();
    latencies.sort_unstable();
    Ok((latencies.len() as f64 / took, latencies))
}

#[tokio::main]
async fn main() -> Result {
    let events = env("WAYMARK_BENCH_EVENTS", 20_000);
    let dir = std::env::temp_dir().join(format!("waymark-bench-webhooks-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    write_flow(&dir)?;
    let state = dir.join("state");
    let (_sandbox, sandbox_url) = sandbox(&["--records", "10"])?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let hooks = format!("127.0.0.1:{port}");
    let _serve = serve_with(
        &dir,
        &["shop.toml", "--webhook-listen", &hooks],
        &[("SHOP_WEBHOOK_SECRET", SECRET)],
        &state,
        &sandbox_url,
    )?;
    let began = Instant::now();
    while std::net::TcpStream::connect(&hooks).is_err() {
        if began.elapsed() > Duration::from_secs(30) {
            return Err("serve did not listen".into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let url = format!("http://{hooks}/hooks/shop/orders");
    println!("webhooks over HTTP, durable 200, {events} events per row:");
    let mut sent = 0;
    for senders in [1, 16, 64] {
        let (rate, latencies) = row(&url, senders, events, sent).await?;
        sent += latencies.len() as u64;
        let accepted_at = Instant::now();
        while applied(&state)? < sent {
            if accepted_at.elapsed() > Duration::from_secs(300) {
                return Err(format!("applied {} of {sent}", applied(&state)?).into());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        println!(
            "{senders:>3} senders: {rate:>6.0} events/s; latency p50 {:.2} ms, p99 {:.2} ms; \
             every event applied {:.2} s after the last was accepted",
            percentile(&latencies, 0.5).as_secs_f64() * 1000.0,
            percentile(&latencies, 0.99).as_secs_f64() * 1000.0,
            accepted_at.elapsed().as_secs_f64(),
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
