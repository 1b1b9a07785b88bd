//! Resume cost against history size: opening a state directory with 10,000 finished runs,
//! and resuming a run with 1,000,000 journaled steps, on the real sled journal.
//!
//! `cargo bench --bench resume` (set `WAYMARK_BENCH_RUNS` / `WAYMARK_BENCH_STEPS` to scale).

use std::time::{Duration, Instant};

use waymark_engine::{
    Event, PageFetched, RunId, RunStarted, StartFrom, StateDir, Timestamp, Window, WriteAck,
};

fn started(stream: &str) -> RunStarted {
    RunStarted {
        run_id: RunId::new(),
        sync: "bench".into(),
        stream: stream.into(),
        workflow_digest: "digest".into(),
        workflow_path: "bench.toml".into(),
        window: Window {
            start: None,
            end: Timestamp(1_800_000_000_000),
        },
        start_cursor: None,
        start_from: StartFrom::Beginning,
        at: Timestamp(1_800_000_000_000),
    }
}

fn page(page: u64, last: bool) -> Event {
    Event::PageFetched(PageFetched {
        page,
        request_cursor: Some(format!("cursor-{}", page - 1)),
        next_cursor: (!last).then(|| format!("cursor-{page}")),
        records: 500,
        bytes: 200_000,
        checksum: 0xDEAD_BEEF,
        at: Timestamp(1_800_000_000_000 + page),
    })
}

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let runs = env("WAYMARK_BENCH_RUNS", 10_000);
    let steps = env("WAYMARK_BENCH_STEPS", 1_000_000);
    let dir = std::env::temp_dir().join(format!("waymark-bench-resume-{}", RunId::new()));
    let at = Timestamp(1_800_000_000_000);

    let setup = Instant::now();
    let mut state_dir = StateDir::open(&dir, "bench")?;
    let journal = state_dir.journal_mut();
    for _ in 0..runs {
        let s = journal.start(started("finished"), &[])?;
        let s = journal.append(s, &page(1, true))?;
        let s = journal.append(
            s,
            &Event::BatchWritten {
                page: 1,
                ack: WriteAck::default(),
                at,
            },
        )?;
        let s = journal.append(s, &Event::CursorCommitted { page: 1, at })?;
        journal.append(s, &Event::RunCompleted { at })?;
    }
    // One long run: pages, and retries between them, up to `steps` events, left unfinished.
    let mut s = journal.start(started("long"), &[])?;
    let long = s.run_id();
    let mut n = 1u64;
    let mut p = 0u64;
    while n < steps {
        if n % 1000 == 1 {
            p += 1;
            s = journal.append(s, &page(p, false))?;
            s = journal.append(
                s,
                &Event::BatchWritten {
                    page: p,
                    ack: WriteAck::default(),
                    at,
                },
            )?;
            s = journal.append(s, &Event::CursorCommitted { page: p, at })?;
            n += 3;
        } else {
            let retry = Event::RequestRetried {
                page: p + 1,
                attempt: 1,
                error: "HTTP 503".into(),
                status: Some(503),
                rule: None,
                wait_ms: 1,
                at,
            };
            s = journal.append(s, &retry)?;
            s.attempts = 0;
            n += 1;
        }
    }
    journal.flush()?;
    drop(state_dir);
    let size = waymark_engine::state_dir::disk_usage(&dir);
    eprintln!(
        "setup: {runs} finished runs + one run of {} steps in {:.1}s, {} MiB on disk",
        s.last_seq,
        setup.elapsed().as_secs_f64(),
        size >> 20
    );

    let mut opens = Vec::new();
    let mut resumes = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        let state_dir = StateDir::open(&dir, "bench")?;
        let opened = t.elapsed();
        let active = state_dir
            .journal()
            .active_run("bench", "long")?
            .ok_or("no active run")?;
        let state = state_dir.journal().load(active)?;
        let resumed = t.elapsed();
        assert_eq!((active, state.last_seq), (long, s.last_seq));
        opens.push(opened);
        resumes.push(resumed);
    }
    let t = Instant::now();
    let state_dir = StateDir::open(&dir, "bench")?;
    let mut folded = 0u64;
    for item in state_dir.journal().events(long) {
        item?;
        folded += 1;
    }
    let full = t.elapsed();
    let median = |v: &mut Vec<Duration>| {
        v.sort();
        v[v.len() / 2]
    };
    println!(
        "open state dir ({runs} finished runs): median {:.1} ms",
        median(&mut opens).as_secs_f64() * 1e3
    );
    println!(
        "open + resume the run of {} steps (head snapshot): median {:.1} ms",
        s.last_seq,
        median(&mut resumes).as_secs_f64() * 1e3
    );
    println!(
        "for comparison, reading all {folded} events of that run: {:.0} ms",
        full.as_secs_f64() * 1e3
    );
    drop(state_dir);
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}
