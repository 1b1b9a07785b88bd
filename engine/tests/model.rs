//! Model test: for random sources and crashes injected after any journaled event, crash +
//! fold + resume reaches the same destination contents and the same final checkpoint as an
//! uninterrupted run, with every page written exactly once.

mod fixture;

use std::collections::BTreeMap;

use fixture::{plan, Harness, MemorySource};
use proptest::prelude::*;
use waymark_engine::{Checkpoint, Status};

#[derive(Debug)]
struct Outcome {
    rows: BTreeMap<u64, u64>,
    checkpoint: Option<Checkpoint>,
}

/// The checkpoint without what differs between two runs of the same data (run id, time).
fn comparable(c: Option<Checkpoint>) -> Option<Checkpoint> {
    let run_id = waymark_engine::RunId(uuid::Uuid::nil());
    c.map(|c| Checkpoint {
        run_id,
        at: waymark_engine::Timestamp(0),
        ..c
    })
}

fn source(n: u64, page_size: usize, failing: &[u64]) -> MemorySource {
    let s = MemorySource::new((1..=n).map(|id| (id, id % 7)).collect(), page_size);
    s.state().failing_attempts = failing.to_vec();
    s
}

async fn uninterrupted(n: u64, page_size: usize, failing: &[u64]) -> Outcome {
    let mut h = Harness::new("model-ref", source(n, page_size, failing));
    h.settings.retry.max_attempts = 100;
    let state = h
        .run(&plan())
        .await
        .unwrap_or_else(|e| panic!("reference run: {e}"));
    assert_eq!(state.status, Status::Completed);
    let checkpoint = comparable(h.journal.checkpoint("shop", "orders").ok().flatten());
    let rows = h.destination.state().rows.clone();
    Outcome { rows, checkpoint }
}

async fn crashing(
    n: u64,
    page_size: usize,
    failing: &[u64],
    crashes: &[u64],
    max_pages: Option<u64>,
) -> Result<(), TestCaseError> {
    let src = source(n, page_size, failing);
    let mut h = Harness::new("model", src.clone());
    h.settings.retry.max_attempts = 100;
    h.settings.max_pages = max_pages;
    let mut armed = crashes.iter();
    if let Some(k) = armed.next() {
        h.backend.fail_after(*k);
    }
    let mut crashed = 0u64;
    let mut final_state = None;
    for _ in 0..1000 {
        match h.run(&plan()).await {
            Err(_) => {
                crashed += 1;
                h.crash();
                if let Some(k) = armed.next() {
                    h.backend.fail_after(*k);
                }
            }
            Ok(state) if state.status == Status::Completed => {
                final_state = Some(state);
                break;
            }
            Ok(state) => prop_assert!(
                matches!(state.status, Status::Paused(_)),
                "{:?}",
                state.status
            ),
        }
    }
    h.backend.heal();
    let state = final_state.ok_or_else(|| TestCaseError::fail("never completed"))?;
    let expected = uninterrupted(n, page_size, failing).await;
    let rows = h.destination.state().rows.clone();
    prop_assert_eq!(&rows, &expected.rows);
    prop_assert_eq!(
        comparable(h.journal.checkpoint("shop", "orders")?),
        expected.checkpoint
    );

    // Exactly once: every page of the completed run was written once (replays recognised).
    let d = h.destination.state();
    let mut real_writes: BTreeMap<(waymark_engine::RunId, u64), u32> = BTreeMap::new();
    for (run, page, replayed) in &d.writes {
        if !replayed {
            *real_writes.entry((*run, *page)).or_default() += 1;
        }
    }
    prop_assert!(
        real_writes.values().all(|&c| c == 1),
        "a page was written twice: {:?}",
        real_writes
    );
    let pages = state.committed_page;
    for page in 1..=pages {
        prop_assert_eq!(real_writes.get(&(state.run_id(), page)), Some(&1));
    }
    // A journaled page is never fetched again: only a crash before its `PageFetched` made it
    // to the journal causes a second fetch.
    let fetches: u32 = src.state().fetches.values().sum();
    prop_assert!(
        u64::from(fetches) <= pages.max(1) + crashed,
        "{fetches} fetches, {pages} pages, {crashed} crashes"
    );
    // The journal is sound and staging holds nothing.
    let report = h.journal.verify()?;
    prop_assert!(report.damage.is_empty(), "{:?}", report.damage);
    let leftovers = std::fs::read_dir(&h.dir).map(|d| d.count()).unwrap_or(0);
    prop_assert_eq!(leftovers, 0);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn crash_anywhere_then_resume_equals_an_uninterrupted_run(
        n in 0u64..40,
        page_size in 1usize..7,
        failing in proptest::collection::vec(0u64..30, 0..3),
        crashes in proptest::collection::vec(0u64..30, 1..4),
        max_pages in proptest::option::of(1u64..4),
    ) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_time().build()?;
        rt.block_on(crashing(n, page_size, &failing, &crashes, max_pages))?;
    }
}
