//! Criterion micro-benchmarks of the journal: one event appended (unflushed), one page's
//! three steps (fetched + flush, written, committed + flush), a checkpoint commit with its
//! flush, and the pure fold of a million events.
//!
//! `cargo bench --bench journal`

use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use waymark_engine::{
    fold, Event, PageFetched, RunId, RunStarted, RunState, StartFrom, StateDir, Timestamp, Window,
    WriteAck,
};

const AT: Timestamp = Timestamp(1_800_000_000_000);

fn started() -> RunStarted {
    RunStarted {
        run_id: RunId::new(),
        sync: "bench".into(),
        stream: "items".into(),
        workflow_digest: "digest".into(),
        workflow_path: "bench.toml".into(),
        window: Window {
            start: None,
            end: AT,
        },
        start_cursor: None,
        start_from: StartFrom::Beginning,
        at: AT,
    }
}

fn fetched(page: u64) -> Event {
    Event::PageFetched(PageFetched {
        page,
        request_cursor: Some(format!("cursor-{}", page - 1)),
        next_cursor: Some(format!("cursor-{page}")),
        records: 500,
        bytes: 200_000,
        checksum: 0xDEAD_BEEF,
        at: AT,
        max_seen: None,
    })
}

fn written(page: u64) -> Event {
    Event::BatchWritten {
        page,
        ack: WriteAck {
            inserted: 500,
            ..WriteAck::default()
        },
        at: AT,
    }
}

fn retried(page: u64) -> Event {
    Event::RequestRetried {
        page,
        attempt: 1,
        error: "HTTP 503".into(),
        status: Some(503),
        rule: None,
        wait_ms: 1,
        at: AT,
    }
}

/// The events of a run of `pages` pages.
fn run_events(pages: u64) -> Vec<Event> {
    let mut events = vec![Event::RunStarted(started())];
    for p in 1..=pages {
        events.extend([
            fetched(p),
            written(p),
            Event::CursorCommitted { page: p, at: AT },
        ]);
    }
    events
}

/// Journals page after page of the run `s` as the driver does: the page's write, its commit
/// and the next page's fetch in one batch, one flush.
fn pages(
    b: &mut criterion::Bencher<'_>,
    journal: &mut waymark_engine::Journal<waymark_engine::journal::SledBackend>,
    s: RunState,
) {
    let mut s = match journal.append(s, &fetched(1)) {
        Ok(next) => next,
        Err(e) => panic!("append: {e}"),
    };
    let mut page = 0;
    b.iter(|| {
        page += 1;
        let steps = [
            written(page),
            Event::CursorCommitted { page, at: AT },
            fetched(page + 1),
        ];
        s = match journal.append_steps(&s, &steps) {
            Ok(mut states) => states.pop().unwrap_or_else(|| panic!("no state")),
            Err(e) => panic!("append: {e}"),
        };
    });
}

fn journal(c: &mut Criterion) {
    let dir = std::env::temp_dir().join(format!("waymark-bench-journal-{}", RunId::new()));
    let mut state_dir = match StateDir::open(&dir, "bench") {
        Ok(d) => d,
        Err(e) => panic!("state dir: {e}"),
    };
    let journal = state_dir.journal_mut();
    let mut state: Option<RunState> = None;
    let fresh = |journal: &mut waymark_engine::Journal<_>| match journal.start(started(), &[]) {
        Ok(s) => s,
        Err(e) => panic!("start: {e}"),
    };
    let mut group = c.benchmark_group("journal");
    group.measurement_time(Duration::from_secs(5));
    // One event, no flush (a retry note: the driver flushes only where durability needs it).
    group.bench_function("append one event", |b| {
        let mut s = state.take().unwrap_or_else(|| fresh(journal));
        b.iter(|| {
            s = match journal.append(s.clone(), &retried(s.next_page())) {
                Ok(next) => RunState {
                    attempts: 0,
                    ..next
                },
                Err(e) => panic!("append: {e}"),
            };
        });
        state = Some(s);
    });
    // One page as the driver journals it: the page's write, its commit and the next page's
    // fetch in one batch, one flush.
    group.bench_function("append one page (1 batch, 1 flush)", |b| {
        let s = fresh(journal);
        pages(b, journal, s);
    });
    // The same page on two fresh journals side by side, with and without the witness
    // (engine/src/witness.rs): what its write after each flush costs.
    for (name, witnessed) in [
        ("append one page, fresh journal, witness", true),
        ("append one page, fresh journal, no witness", false),
    ] {
        let root = dir.join(name.replace([' ', ','], "-"));
        let mut journal = match waymark_engine::journal::SledBackend::open(&root.join("journal")) {
            Ok(backend) if witnessed => waymark_engine::Journal::new(backend)
                .with_witness(waymark_engine::witness::Witness::new(&root.join("witness"))),
            Ok(backend) => waymark_engine::Journal::new(backend),
            Err(e) => panic!("sled: {e}"),
        };
        group.bench_function(name, |b| {
            let s = fresh(&mut journal);
            pages(b, &mut journal, s);
        });
    }
    // The witness's own write, alone (once per flush in the cases above).
    group.bench_function("witness note", |b| {
        let witness = waymark_engine::witness::Witness::new(&dir.join("witness-alone"));
        let run = RunId::new();
        let mut seq = 0;
        b.iter(|| {
            seq += 1;
            witness.note("shop", "orders", run, seq);
        });
    });
    // The same, an append per event (as before steps were batched): 3 batches, 2 flushes.
    group.bench_function("append one page (3 events, 2 flushes)", |b| {
        let mut s = fresh(journal);
        let mut page = 0;
        b.iter(|| {
            page += 1;
            for event in [
                fetched(page),
                written(page),
                Event::CursorCommitted { page, at: AT },
            ] {
                s = match journal.append(s.clone(), &event) {
                    Ok(next) => next,
                    Err(e) => panic!("append: {e}"),
                };
            }
        });
    });
    // The checkpoint commit alone: event, head and stream checkpoint in one batch, flushed.
    group.bench_function("checkpoint commit with flush", |b| {
        let mut s = fresh(journal);
        let mut page = 0;
        b.iter_custom(|iters| {
            let mut took = Duration::ZERO;
            for _ in 0..iters {
                page += 1;
                for event in [fetched(page), written(page)] {
                    s = match journal.append(s.clone(), &event) {
                        Ok(next) => next,
                        Err(e) => panic!("append: {e}"),
                    };
                }
                let t = std::time::Instant::now();
                s = match journal.append(s.clone(), &Event::CursorCommitted { page, at: AT }) {
                    Ok(next) => next,
                    Err(e) => panic!("commit: {e}"),
                };
                took += t.elapsed();
            }
            took
        });
    });
    group.finish();
    drop(state_dir);
    let _ = std::fs::remove_dir_all(&dir);
}

fn replay(c: &mut Criterion) {
    // 1M events: a start and 333,333 pages of three steps.
    let events = run_events(333_333);
    let mut group = c.benchmark_group("replay");
    group.sample_size(10);
    group.bench_function("fold 1M events", |b| {
        b.iter(|| match fold(&events) {
            Ok(Some(state)) => state.last_seq,
            other => panic!("fold: {other:?}"),
        });
    });
    group.finish();
}

criterion_group!(benches, journal, replay);
criterion_main!(benches);
