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
    /// What the run's acknowledgements add up to.
    written: waymark_engine::WriteAck,
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

/// `n` records; every third a newer version of the record two before it, so pages count
/// different numbers of inserts and updates.
fn source(n: u64, page_size: usize, failing: &[u64]) -> MemorySource {
    let records = (1..=n)
        .map(|i| match i % 3 {
            0 => (i - 2, i),
            _ => (i, i % 7),
        })
        .collect();
    let s = MemorySource::new(records, page_size);
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
    Outcome {
        rows,
        checkpoint,
        written: state.counts.written,
    }
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

    // A page replayed after a crash (up to two groups of them) counts what its first write
    // counted: the run's counts are the uninterrupted run's.
    prop_assert_eq!(
        waymark_engine::WriteAck {
            replayed: false,
            ..state.counts.written
        },
        expected.written
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
    // to the journal causes a second fetch (of at most a group fetched ahead).
    let fetches: u32 = src.state().fetches.values().sum();
    prop_assert!(
        u64::from(fetches) <= pages.max(1) + crashed * waymark_engine::group::GROUP,
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

/// How a `process`-durability run is interrupted.
#[derive(Clone, Copy, Debug)]
enum Interruption {
    /// The process is killed: what it wrote to its run log stays.
    Kill,
    /// A power cut: the run log loses what was not synced, and the destination its last
    /// `n` commits (it does not sync each one either).
    PowerCut(usize),
}

fn interruption() -> impl Strategy<Value = Interruption> {
    prop_oneof![
        Just(Interruption::Kill),
        (0usize..4).prop_map(Interruption::PowerCut),
    ]
}

/// Under `process` durability: kills anywhere keep the exactly-once guarantees; power cuts
/// anywhere (the journal losing its unsynced steps, the destination its last commits)
/// still reach the uninterrupted run's rows, since a run never trusts the journal past the
/// destination's own checkpoint.
async fn interrupted_process_runs(
    n: u64,
    page_size: usize,
    crashes: &[(u64, Interruption)],
    max_pages: Option<u64>,
    cut_after: Option<usize>,
) -> Result<(), TestCaseError> {
    let src = source(n, page_size, &[]);
    let mut h = Harness::new("model-process", src.clone());
    h.settings.max_pages = max_pages;
    let mut plan = plan();
    plan.durability = waymark_engine::Durability::Process;
    let mut armed = crashes.iter();
    let mut next = armed.next();
    if let Some((k, _)) = next {
        h.backend.fail_after(*k);
    }
    let mut cut = false;
    let mut final_state = None;
    for _ in 0..1000 {
        match h.run(&plan).await {
            Err(_) => {
                match next.map(|(_, how)| *how) {
                    Some(Interruption::PowerCut(lost)) => {
                        cut = true;
                        h.destination.state().lose(lost);
                        h.crash();
                    }
                    _ => h.kill(),
                }
                next = armed.next();
                if let Some((k, _)) = next {
                    h.backend.fail_after(*k);
                }
            }
            Ok(state) if state.status == Status::Completed => {
                final_state = Some(state);
                // A power cut after the run completed: its end is synced in the journal,
                // the destination's last commits need not be.
                match (cut, cut_after) {
                    (false, Some(lost)) => {
                        cut = true;
                        h.destination.state().lose(lost);
                        h.crash();
                    }
                    _ => break,
                }
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
    let expected = uninterrupted(n, page_size, &[]).await;
    prop_assert_eq!(&h.destination.state().rows, &expected.rows);
    let ours = h.journal.checkpoint("shop", "orders")?;
    prop_assert_eq!(
        ours.as_ref().map(|c| (&c.cursor, c.complete)),
        expected
            .checkpoint
            .as_ref()
            .map(|c| (&c.cursor, c.complete))
    );
    if !cut {
        // Kills only: every page of the completed run written once, as with `power-loss`.
        prop_assert_eq!(comparable(ours), expected.checkpoint);
        let d = h.destination.state();
        for page in 1..=state.committed_page {
            let real = d
                .writes
                .iter()
                .filter(|(run, p, replayed)| *run == state.run_id() && *p == page && !replayed)
                .count();
            prop_assert_eq!(real, 1, "page {}", page);
        }
    }
    let report = h.journal.verify()?;
    prop_assert!(report.damage.is_empty(), "{:?}", report.damage);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn under_process_durability_kills_and_power_cuts_anywhere_lose_nothing(
        n in 0u64..40,
        page_size in 1usize..7,
        crashes in proptest::collection::vec((0u64..30, interruption()), 1..4),
        max_pages in proptest::option::of(1u64..4),
        cut_after in proptest::option::of(0usize..4),
    ) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_time().build()?;
        rt.block_on(interrupted_process_runs(n, page_size, &crashes, max_pages, cut_after))?;
    }
}
