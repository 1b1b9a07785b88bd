//! The webhook inbox: events accepted per second with a durable acknowledgement (each
//! `accept` returns once its event is flushed), from 1, 16 and 64 concurrent senders in
//! this process, and the latency of one acceptance (p50, p99). The HTTP receiver adds its
//! own cost on top; this is what the group commit leaves for it.
//!
//! `cargo bench --bench inbox` (`WAYMARK_BENCH_EVENTS`, default 20,000 per row).

use std::sync::Arc;
use std::time::{Duration, Instant};

use waymark_connectors::webhook::inbox::{Accepted, Event, Inbox};

type Result<T = ()> = std::result::Result<T, Box<dyn std::error::Error>>;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len().saturating_sub(1)) as f64 * p).round() as usize;
    sorted.get(i).copied().unwrap_or_default()
}

async fn row(senders: u64, events: u64) -> Result {
    let dir = std::env::temp_dir().join(format!(
        "waymark-bench-inbox-{}-{senders}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    let inbox = Inbox::open(&dir)?;
    let committer = tokio::spawn(inbox.clone().commit());
    let each = events / senders;
    let began = Instant::now();
    let mut tasks = Vec::new();
    for sender in 0..senders {
        let inbox: Arc<Inbox> = inbox.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(each as usize);
            for i in 0..each {
                // A typical event: a few hundred bytes of JSON, a unique id.
                let body = format!(
                    "{{\"id\":\"evt_{sender}_{i}\",\"type\":\"order.updated\",\"data\":{{\"id\":{i},\
                     \"status\":\"paid\",\"total_cents\":12345,\"updated_at\":\"2026-12-02T07:00:00Z\",\
                     \"note\":\"{}\"}}}}",
                    "x".repeat(200)
                );
                let event = Event {
                    sync: "shop".into(),
                    stream: "orders".into(),
                    id: Some(format!("evt_{sender}_{i}")),
                    body: body.into_bytes(),
                };
                let asked = Instant::now();
                let accepted = inbox.accept(event).await;
                latencies.push(asked.elapsed());
                if !matches!(accepted, Ok(Accepted::New(_))) {
                    return Err(format!("not accepted: {accepted:?}"));
                }
            }
            Ok(latencies)
        }));
    }
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await??);
    }
    let took = began.elapsed();
    latencies.sort_unstable();
    let n = latencies.len();
    println!(
        "{senders:>3} senders: {n} events in {:.2} s = {:>6.0} events/s; latency p50 {:.2} ms, \
         p99 {:.2} ms; {} flushes ({:.1} events per flush)",
        took.as_secs_f64(),
        n as f64 / took.as_secs_f64(),
        percentile(&latencies, 0.5).as_secs_f64() * 1000.0,
        percentile(&latencies, 0.99).as_secs_f64() * 1000.0,
        inbox.flushes(),
        n as f64 / inbox.flushes().max(1) as f64,
    );
    committer.abort();
    let _ = committer.await;
    drop(inbox);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

fn main() -> Result {
    let events: u64 = std::env::var("WAYMARK_BENCH_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        for senders in [1, 16, 64] {
            // One sender waits for every flush: fewer events keep the row short.
            let n = if senders == 1 { events / 10 } else { events };
            row(senders, n).await?;
        }
        Ok(())
    })
}
