//! Scenarios of the real driver over the in-memory backend, source and destination.

mod fixture;

use std::sync::atomic::AtomicBool;

use fixture::{plan, FixedClock, Harness, MemorySource, NOW};
use waymark_engine::journal::Journal;
use waymark_engine::{driver, Event, PauseReason, StartFrom, Status, Timestamp};

fn records(n: u64) -> Vec<(u64, u64)> {
    (1..=n).map(|id| (id, 1)).collect()
}

fn names(
    journal: &Journal<waymark_engine::journal::MemoryBackend>,
    run: waymark_engine::RunId,
) -> Vec<&'static str> {
    journal
        .events(run)
        .map(|e| e.map(|(_, ev)| ev.name()))
        .collect::<Result<_, _>>()
        .unwrap_or_default()
}

#[tokio::test]
async fn an_uninterrupted_run_journals_each_step_in_order() -> Result<(), Box<dyn std::error::Error>>
{
    let mut h = Harness::new("order", MemorySource::new(records(12), 5));
    let state = h.run(&plan()).await?;
    assert_eq!(state.status, Status::Completed);
    assert_eq!(h.destination.state().rows.len(), 12);
    // Pipelined in groups: pages 2 and 3 are fetched while page 1 is written, and journaled
    // after page 1's write and commit, in the same batch and flush; then both are written.
    let expected = [
        "run_started",
        "page_fetched",
        "batch_written",
        "cursor_committed",
        "page_fetched",
        "page_fetched",
        "batch_written",
        "cursor_committed",
        "batch_written",
        "cursor_committed",
        "run_completed",
    ];
    assert_eq!(names(&h.journal, state.run_id()), expected);
    let checkpoint = h
        .journal
        .checkpoint("shop", "orders")?
        .ok_or("no checkpoint")?;
    assert_eq!(
        (
            checkpoint.page,
            checkpoint.records,
            checkpoint.complete,
            checkpoint.cursor
        ),
        (3, 12, true, None)
    );
    // The head equals the fold of the events.
    let events: Vec<Event> = h
        .journal
        .events(state.run_id())
        .map(|e| e.map(|(_, ev)| ev))
        .collect::<Result<_, _>>()?;
    assert_eq!(waymark_engine::fold(&events)?, Some(state.clone()));
    assert_eq!(h.journal.load(state.run_id())?, state);
    // A completed run is no longer the stream's unfinished run, and its staged pages are gone.
    assert_eq!(h.journal.active_run("shop", "orders")?, None);
    assert!(!h.dir.join(state.run_id().to_string()).exists());
    Ok(())
}

#[tokio::test]
async fn staged_pages_of_a_finished_run_left_by_a_kill_are_swept_by_the_next_run(
) -> Result<(), Box<dyn std::error::Error>> {
    let mut h = Harness::new("sweep", MemorySource::new(records(12), 5));
    let first = h.run(&plan()).await?;
    assert_eq!(first.status, Status::Completed);
    // Killed after `run_completed` was journaled, before its staged pages were removed.
    h.staging
        .stager(first.run_id())
        .stage(3, &["{\"id\":1}".to_string()])?;
    let leftover = h.dir.join(first.run_id().to_string());
    assert!(leftover.exists());
    // Opening the stream's next run sweeps them (before it stages anything of its own).
    let second = driver::open(&mut h.journal, &h.staging, &mut h.destination, &plan(), NOW).await?;
    assert_ne!(second.run_id(), first.run_id());
    assert!(
        !leftover.exists(),
        "a finished run's staged pages are swept"
    );
    Ok(())
}

#[tokio::test]
async fn every_step_is_durable_before_the_next_one_starts() -> Result<(), Box<dyn std::error::Error>>
{
    let source = MemorySource::new(records(9), 2);
    let mut h = Harness::new("durable", source.clone());
    let backend = h.backend.clone();
    let checks = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));

    // Before each fetch: a process starting now finds every page before the step's first
    // fetch durable — committed, or staged and unwritten (being written while the step
    // fetches ahead) — and no page from there on: at most a group is fetched again after a
    // crash.
    let (b, log) = (backend.clone(), checks.clone());
    source.state().before_fetch = Some(Box::new(move |page| {
        let durable = Journal::new(b.durable_copy());
        let run = durable.active_run("shop", "orders").ok().flatten();
        let state = run.and_then(|r| durable.load(r).ok());
        let ok = state.as_ref().is_some_and(|s| {
            let durable = s.committed_page + s.pending.len() as u64;
            durable < page
                && page - 1 - durable < waymark_engine::group::GROUP
                && s.pending.iter().all(|p| p.written.is_none())
        });
        let checkpoint = durable
            .checkpoint("shop", "orders")
            .ok()
            .flatten()
            .map_or(0, |c| c.page);
        log.lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(format!("fetch {page} durable={ok} checkpoint={checkpoint}"));
    }));
    // Before each write: the page is staged in the durable journal.
    let (b, log) = (backend.clone(), checks.clone());
    h.destination.state().before_write = Some(Box::new(move |page| {
        let durable = Journal::new(b.durable_copy());
        let run = durable.active_run("shop", "orders").ok().flatten();
        let state = run.and_then(|r| durable.load(r).ok());
        let staged = state.is_some_and(|s| {
            s.pending
                .iter()
                .any(|p| p.fetched.page == page && p.written.is_none())
        });
        log.lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(format!("write {page} staged={staged}"));
    }));
    let state = h.run(&plan()).await?;
    assert_eq!(state.status, Status::Completed);
    let log = checks.lock().unwrap_or_else(|p| p.into_inner()).clone();
    // Page 1 is fetched alone; pages 2 to 5 while it is written (a group, with no
    // checkpoint yet), then written.
    let mut expected: Vec<String> = (1..=5)
        .map(|page| format!("fetch {page} durable=true checkpoint=0"))
        .collect();
    expected.extend((1..=5).map(|page| format!("write {page} staged=true")));
    assert_eq!(log, expected);
    Ok(())
}

#[tokio::test]
async fn a_page_fetched_before_a_crash_is_replayed_from_the_journal(
) -> Result<(), Box<dyn std::error::Error>> {
    let source = MemorySource::new(records(6), 3);
    source.state().bump_after_fetch = 10; // the data changes after every fetch
    let mut h = Harness::new("replay", source.clone());
    // Second write fails; the journal then dies before it can record the failure: the
    // process crashed between staging page 2 and writing it.
    h.destination.state().failing_writes = vec![1];
    h.backend.fail_after(3); // run_started, fetched 1, then written 1 + committed 1 + fetched 2
    assert!(h.run(&plan()).await.is_err());
    h.crash();
    let state = h.run(&plan()).await?;
    assert_eq!(state.status, Status::Completed);
    assert_eq!(state.counts.resumes, 1);
    let s = source.state();
    assert_eq!(
        s.fetches.get(&2),
        Some(&1),
        "page 2 must not be fetched again"
    );
    let d = h.destination.state();
    let page2: Vec<_> = d.written_versions.iter().filter(|(p, _)| *p == 2).collect();
    // The write after the resume saw what the first fetch saw: version 1 + 10 (one bump).
    assert_eq!(page2, vec![&(2, vec![11, 11, 11])]);
    assert_eq!(
        names(&h.journal, state.run_id())[..6],
        [
            "run_started",
            "page_fetched",
            "batch_written",
            "cursor_committed",
            "page_fetched",
            "run_resumed"
        ]
    );
    Ok(())
}

#[tokio::test]
async fn a_batch_committed_by_the_destination_before_a_crash_is_recognised(
) -> Result<(), Box<dyn std::error::Error>> {
    let mut h = Harness::new("recognise", MemorySource::new(records(6), 3));
    h.backend.fail_after(2); // run_started, fetched 1; the destination commits page 1, then the journal dies
    assert!(h.run(&plan()).await.is_err());
    assert_eq!(h.destination.state().rows.len(), 3);
    h.crash();
    let state = h.run(&plan()).await?;
    assert_eq!(state.status, Status::Completed);
    let d = h.destination.state();
    let page1: Vec<_> = d.writes.iter().filter(|w| w.1 == 1).map(|w| w.2).collect();
    assert_eq!(
        page1,
        vec![false, true],
        "written once, then recognised as already committed"
    );
    assert_eq!(
        state.counts.written.inserted, 6,
        "the replayed acknowledgement carries the original counts"
    );
    Ok(())
}

#[tokio::test]
async fn a_resumed_run_keeps_its_watermark() -> Result<(), Box<dyn std::error::Error>> {
    let mut h = Harness::new("watermark", MemorySource::new(records(10), 2));
    let mut p = plan();
    p.lag = std::time::Duration::from_secs(60);
    h.settings.max_pages = Some(2);
    let first = h.run(&p).await?;
    assert_eq!(first.status, Status::Paused(PauseReason::PageBudget(2)));
    assert_eq!(first.window().end, NOW.saturating_sub(p.lag));
    h.settings.max_pages = None;
    let later = Timestamp(NOW.0 + 3_600_000);
    let resumed = h.run_at(&p, later).await?;
    assert_eq!(resumed.run_id(), first.run_id());
    assert_eq!(resumed.window(), first.window());
    assert_eq!(resumed.status, Status::Completed);
    assert_eq!(h.destination.state().rows.len(), 10);
    // The next run's window starts at the old watermark and ends at the new one.
    let next = h.run_at(&p, later).await?;
    assert_ne!(next.run_id(), first.run_id());
    assert_eq!(next.window().start, Some(first.window().end));
    assert_eq!(next.window().end, later.saturating_sub(p.lag));
    Ok(())
}

#[tokio::test]
async fn a_window_after_max_seen_starts_at_the_greatest_value_committed(
) -> Result<(), Box<dyn std::error::Error>> {
    // Versions read as times (ms): the API's clock, hours behind ours.
    let hour = 3_600_000;
    let versions = [5, 9, 7, 12, 11, 3].map(|h| h * hour);
    let source = MemorySource::new((1..=6).zip(versions).collect(), 2);
    source.state().max_seen = true;
    let mut h = Harness::new("max-seen", source);
    let mut p = plan();
    p.window_start = waymark_engine::window::Start::MaxSeen;
    p.overlap = std::time::Duration::from_secs(60);
    // Killed after two pages: the checkpoint holds what those pages carried, no more.
    h.settings.max_pages = Some(2);
    let first = h.run(&p).await?;
    assert_eq!(first.status, Status::Paused(PauseReason::PageBudget(2)));
    let committed = h
        .journal
        .checkpoint("shop", "orders")?
        .ok_or("no checkpoint")?;
    assert_eq!(committed.max_seen, Some(Timestamp(12 * hour)));
    h.crash();
    h.settings.max_pages = None;
    let done = h.run(&p).await?;
    assert_eq!(
        (done.run_id(), done.status),
        (first.run_id(), Status::Completed)
    );
    let committed = h
        .journal
        .checkpoint("shop", "orders")?
        .ok_or("no checkpoint")?;
    assert_eq!(committed.max_seen, Some(Timestamp(12 * hour)));
    // The next window starts at the greatest value, not at the watermark (NOW), less the
    // overlap; an empty run keeps the value for the one after.
    h.source.state().records.clear();
    let next = h.run(&p).await?;
    assert_eq!(next.window().start, Some(Timestamp(12 * hour - 60_000)));
    assert_eq!(next.window().end, NOW);
    let after = h.run(&p).await?;
    assert_eq!(after.window().start, Some(Timestamp(12 * hour - 60_000)));
    // The watermark rule, for the same history, starts at the last watermark.
    p.window_start = waymark_engine::window::Start::Watermark;
    let watermark = h.run(&p).await?;
    assert_eq!(watermark.window().start, Some(Timestamp(NOW.0 - 60_000)));
    Ok(())
}

#[tokio::test]
async fn a_changed_workflow_is_refused_and_fresh_abandons_the_run(
) -> Result<(), Box<dyn std::error::Error>> {
    let source = MemorySource::new(records(10), 2);
    let mut h = Harness::new("digest", source.clone());
    h.settings.max_pages = Some(2);
    let first = h.run(&plan()).await?;
    let mut changed = plan();
    changed.workflow_digest = "digest-2".into();
    changed.fingerprint = vec![("stream.primary_key".into(), "\"key\"".into())];
    let refused = h.run(&changed).await;
    match refused {
        Err(driver::Error::WorkflowChanged { run, changes, .. }) => {
            assert_eq!(run, first.run_id());
            assert_eq!(
                changes,
                vec!["stream.primary_key: \"id\" -> \"key\"".to_string()]
            );
        }
        other => panic!("expected WorkflowChanged, got {other:?}"),
    }
    h.settings.max_pages = None;
    changed.fresh = true;
    let second = h.run(&changed).await?;
    assert_ne!(second.run_id(), first.run_id());
    assert!(matches!(
        h.journal.load(first.run_id())?.status,
        Status::Abandoned(_)
    ));
    assert_eq!(
        names(&h.journal, first.run_id()).last(),
        Some(&"run_abandoned")
    );
    // The new run continued from the abandoned run's committed cursor, not from zero.
    match &second.started.start_from {
        StartFrom::Journal(c) => assert_eq!(
            (c.run_id, c.page, c.cursor.as_deref()),
            (first.run_id(), 2, Some("4"))
        ),
        other => panic!("expected the journal checkpoint, got {other:?}"),
    }
    assert_eq!(second.started.start_cursor.as_deref(), Some("4"));
    assert_eq!(second.status, Status::Completed);
    assert_eq!(h.destination.state().rows.len(), 10);
    Ok(())
}

#[tokio::test]
async fn the_checkpoint_is_never_ahead_of_the_destination() -> Result<(), Box<dyn std::error::Error>>
{
    let mut h = Harness::new("ahead", MemorySource::new(records(15), 4));
    let p = plan();
    let state = driver::open(&mut h.journal, &h.staging, &mut h.destination, &p, NOW).await?;
    let (backend, destination) = (h.backend.clone(), h.destination.clone());
    let mut violations = Vec::new();
    let mut observed = 0;
    let mut observe = |_: &waymark_engine::RunState, event: &Event| {
        observed += 1;
        let journal = Journal::new(backend.clone());
        let ours = journal
            .checkpoint("shop", "orders")
            .ok()
            .flatten()
            .map_or(0, |c| c.page);
        let theirs = destination.state().stored.as_ref().map_or(0, |s| s.1);
        if ours > theirs {
            violations.push(format!(
                "{}: journal page {ours} > destination page {theirs}",
                event.name()
            ));
        }
    };
    let stop = AtomicBool::new(false);
    let done = driver::drive(
        &mut h.journal,
        &h.staging,
        &mut h.source,
        &mut h.destination,
        &FixedClock(NOW),
        &h.settings,
        &stop,
        state,
        &mut observe,
    )
    .await?;
    assert_eq!(done.status, Status::Completed);
    assert_eq!(observed, 13);
    assert!(violations.is_empty(), "{violations:?}");
    Ok(())
}

#[tokio::test]
async fn retries_never_move_the_cursor_and_are_bounded() -> Result<(), Box<dyn std::error::Error>> {
    let source = MemorySource::new(records(6), 3);
    source.state().failing_attempts = vec![1, 2];
    let mut h = Harness::new("retry", source.clone());
    let state = h.run(&plan()).await?;
    assert_eq!(state.status, Status::Completed);
    assert_eq!(state.counts.retries, 2);
    assert_eq!(
        source.state().requested,
        vec![None, Some("3".into()), Some("3".into()), Some("3".into())]
    );
    let retried: Vec<(u64, u32)> = h
        .journal
        .events(state.run_id())
        .filter_map(|e| match e {
            Ok((_, Event::RequestRetried { page, attempt, .. })) => Some((page, attempt)),
            _ => None,
        })
        .collect();
    assert_eq!(retried, vec![(2, 1), (2, 2)]);

    // A page that keeps failing fails the run after max_attempts; a later run resumes it.
    let source = MemorySource::new(records(6), 3);
    source.state().failing_attempts = (1..=6).collect();
    let mut h = Harness::new("retry-fail", source.clone());
    h.settings.retry.max_attempts = 3;
    let failed = h.run(&plan()).await?;
    assert!(
        matches!(&failed.status, Status::Failed(e) if e.contains("page 2 failed after 3 attempts")),
        "{:?}",
        failed.status
    );
    assert_eq!(failed.committed_page, 1);
    h.settings.retry.max_attempts = 10;
    let resumed = h.run(&plan()).await?;
    assert_eq!(
        (resumed.run_id(), resumed.status.clone()),
        (failed.run_id(), Status::Completed)
    );
    assert_eq!(h.destination.state().rows.len(), 6);
    Ok(())
}

#[tokio::test]
async fn a_destination_failure_stops_without_advancing_the_checkpoint(
) -> Result<(), Box<dyn std::error::Error>> {
    let mut h = Harness::new("dest-fail", MemorySource::new(records(9), 3));
    h.destination.state().failing_writes = vec![1];
    let failed = h.run(&plan()).await?;
    assert!(matches!(&failed.status, Status::Failed(e) if e.contains("disk full")));
    assert_eq!(
        h.journal.checkpoint("shop", "orders")?.map(|c| c.page),
        Some(1)
    );
    let done = h.run(&plan()).await?;
    assert_eq!(done.status, Status::Completed);
    assert_eq!(h.destination.state().rows.len(), 9);
    Ok(())
}

#[tokio::test]
async fn a_transient_destination_failure_is_retried_journaled_and_bounded(
) -> Result<(), Box<dyn std::error::Error>> {
    // Write calls 1 and 2 (page 2, twice) find the database busy; the third try commits.
    let mut h = Harness::new("dest-busy", MemorySource::new(records(9), 3));
    h.destination.state().transient_writes = vec![1, 2];
    let state = h.run(&plan()).await?;
    assert_eq!(state.status, Status::Completed);
    assert_eq!(state.counts.retries, 2);
    let retried: Vec<(u64, u32)> = h
        .journal
        .events(state.run_id())
        .filter_map(|e| match e {
            Ok((_, Event::WriteRetried { page, attempt, .. })) => Some((page, attempt)),
            _ => None,
        })
        .collect();
    assert_eq!(retried, vec![(2, 1), (2, 2)]);
    // Every page written once when it committed: exactly the source's records.
    let pages: Vec<(u64, bool)> = h
        .destination
        .state()
        .writes
        .iter()
        .map(|(_, page, replayed)| (*page, *replayed))
        .collect();
    assert_eq!(
        pages,
        vec![(1, false), (2, false), (2, false), (2, false), (3, false)]
    );
    assert_eq!(h.destination.state().rows.len(), 9);

    // A database that stays busy fails the run after max_attempts, the checkpoint where
    // the last commit left it; a later run resumes and completes.
    let mut h = Harness::new("dest-busy-fail", MemorySource::new(records(9), 3));
    h.destination.state().transient_writes = (1..=3).collect();
    h.settings.retry.max_attempts = 3;
    let failed = h.run(&plan()).await?;
    assert!(
        matches!(&failed.status, Status::Failed(e) if e.contains("page 2 after 3 attempts: database is locked")),
        "{:?}",
        failed.status
    );
    assert_eq!(
        h.journal.checkpoint("shop", "orders")?.map(|c| c.page),
        Some(1)
    );
    let done = h.run(&plan()).await?;
    assert_eq!(done.status, Status::Completed);
    assert_eq!(h.destination.state().rows.len(), 9);

    // The last attempt fails while the next page was fetched ahead: the failure is the
    // journal's last word (the page fetched ahead is not journaled after it). Pages 2 and
    // 3 were fetched while page 1 was written.
    let mut h = Harness::new("dest-busy-last", MemorySource::new(records(9), 3));
    h.destination.state().transient_writes = vec![1];
    h.settings.retry.max_attempts = 1;
    let failed = h.run(&plan()).await?;
    assert!(
        matches!(&failed.status, Status::Failed(e) if e.contains("page 2 after 1 attempts: database is locked")),
        "{:?}",
        failed.status
    );
    let steps = names(&h.journal, failed.run_id());
    assert_eq!(steps.last(), Some(&"run_failed"), "{steps:?}");
    assert_eq!(failed.counts.pages_fetched, 3);
    Ok(())
}

#[tokio::test]
async fn a_lost_journal_refuses_to_guess_and_the_destination_checkpoint_can_be_adopted(
) -> Result<(), Box<dyn std::error::Error>> {
    let source = MemorySource::new(records(10), 2);
    let mut h = Harness::new("lost", source.clone());
    h.settings.max_pages = Some(3);
    let first = h.run(&plan()).await?;
    assert!(matches!(first.status, Status::Paused(_)));
    // The journal is gone (a new, empty backend); the destination still has its copy.
    h.backend = waymark_engine::journal::MemoryBackend::new();
    h.journal = Journal::new(h.backend.clone());
    h.settings.max_pages = None;
    source.state().requested.clear();
    let theirs = match h.run(&plan()).await {
        Err(driver::Error::CheckpointLost {
            destination: Some(c),
            ..
        }) => *c,
        other => panic!("expected a refusal naming the destination's checkpoint, got {other:?}"),
    };
    assert_eq!((theirs.page, theirs.run_id), (3, first.run_id()));
    assert!(
        source.state().requested.is_empty(),
        "nothing fetched before the choice"
    );
    // The operator adopts it (`waymark checkpoint adopt`): the run continues after page 3.
    let change = waymark_engine::journal::CheckpointChange {
        at: Timestamp(5),
        who: "ops".into(),
        why: "journal lost".into(),
        previous: None,
        new: Some(theirs),
    };
    h.journal.set_checkpoint("shop", "orders", &change)?;
    let second = h.run(&plan()).await?;
    assert_eq!(
        source.state().requested.first(),
        Some(&Some("6".to_string())),
        "continues after page 3, not from zero"
    );
    assert_eq!(second.status, Status::Completed);
    assert_eq!(h.destination.state().rows.len(), 10);
    let history = h.journal.checkpoint_history("shop", "orders")?;
    assert_eq!(history.len(), 2, "the adoption and the completed run");
    assert_eq!(history[0].1.why, "journal lost");
    assert_eq!(history[1].1.who, format!("run {}", second.run_id()));
    Ok(())
}

#[test]
fn slices_and_a_fixed_end_bound_each_window() {
    use std::time::Duration;
    use waymark_engine::{Checkpoint, RunId, Window};
    const HOUR: u64 = 3_600_000;
    let now = Timestamp(10 * HOUR);
    let sliced_plan = driver::Plan {
        step: Some(Duration::from_secs(3600)),
        overlap: Duration::from_secs(60),
        start: Some(Timestamp(0)),
        ..plan()
    };
    let (first, cursor) = driver::window_after(None, &sliced_plan, now);
    assert_eq!(
        (first, cursor),
        (
            Window {
                start: Some(Timestamp(0)),
                end: Timestamp(HOUR)
            },
            None
        )
    );
    assert!(driver::sliced(&first, &sliced_plan));
    let checkpoint = |window: Window, complete: bool, cursor: Option<&str>| Checkpoint {
        run_id: RunId::new(),
        window,
        cursor: cursor.map(str::to_string),
        page: 3,
        records: 30,
        complete,
        at: now,
        max_seen: None,
    };
    // The next slice starts `overlap` before the last one ended.
    let (second, _) = driver::window_after(Some(&checkpoint(first, true, None)), &sliced_plan, now);
    assert_eq!(second.start, Some(Timestamp(HOUR - 60_000)));
    assert_eq!(second.end, Timestamp(2 * HOUR - 60_000));
    // Slices tile the range whatever the rule: an empty slice (nothing seen in it) never
    // holds the next one back.
    let by_max_seen = driver::Plan {
        window_start: waymark_engine::window::Start::MaxSeen,
        ..sliced_plan.clone()
    };
    let seen_early = Checkpoint {
        max_seen: Some(Timestamp(HOUR / 2)),
        ..checkpoint(first, true, None)
    };
    let (tiled, _) = driver::window_after(Some(&seen_early), &by_max_seen, now);
    assert_eq!(tiled, second);
    // An interrupted slice keeps its bounds and its cursor.
    let (again, cursor) = driver::window_after(
        Some(&checkpoint(second, false, Some("c7"))),
        &sliced_plan,
        now,
    );
    assert_eq!((again, cursor.as_deref()), (second, Some("c7")));
    // The last slice ends at the watermark and is not cut short.
    let late = Window {
        start: Some(Timestamp(9 * HOUR)),
        end: Timestamp(9 * HOUR + HOUR / 2),
    };
    let (last, _) = driver::window_after(Some(&checkpoint(late, true, None)), &sliced_plan, now);
    assert_eq!(last.end, now);
    assert!(!driver::sliced(&last, &sliced_plan));

    // A backfill's fixed end.
    let backfill = driver::Plan {
        start: Some(Timestamp(HOUR)),
        until: Some(Timestamp(3 * HOUR)),
        ..plan()
    };
    let (w, _) = driver::window_after(None, &backfill, now);
    assert_eq!(
        w,
        Window {
            start: Some(Timestamp(HOUR)),
            end: Timestamp(3 * HOUR)
        }
    );
}

#[tokio::test]
async fn under_process_durability_a_destination_behind_the_journal_is_said_and_followed(
) -> Result<(), Box<dyn std::error::Error>> {
    let mut h = Harness::new("behind", MemorySource::new(records(6), 1));
    let mut plan = plan();
    plan.durability = waymark_engine::Durability::Process;
    h.settings.max_pages = Some(3);
    let paused = h.run(&plan).await?;
    let run = paused.run_id();
    assert_eq!(paused.committed_page, 3);
    // A power cut: the pause was synced in the journal; the destination's last commit
    // was not, and is gone.
    h.destination.state().lose(1);
    h.crash();
    h.settings.max_pages = None;
    let done = h.run(&plan).await?;
    assert_eq!(done.status, Status::Completed);
    assert_ne!(done.run_id(), run);
    let abandoned = h.journal.load(run)?;
    assert_eq!(
        abandoned.status,
        Status::Abandoned(format!(
            "shop/orders: the destination is behind the journal (journal at page 3 of run \
             {run}, destination at page 2 of run {run}): with durability = \"process\" a \
             power cut can take a destination's last commits back; continuing from the \
             destination's checkpoint"
        ))
    );
    match &done.started.start_from {
        StartFrom::Destination(c) => assert_eq!((c.run_id, c.page), (run, 2)),
        other => panic!("started from {other:?}"),
    }
    assert_eq!(h.destination.state().rows.len(), 6);
    Ok(())
}

#[tokio::test]
async fn under_process_durability_a_destination_behind_a_pruned_run_is_followed(
) -> Result<(), Box<dyn std::error::Error>> {
    let mut h = Harness::new("behind-pruned", MemorySource::new(records(6), 1));
    let mut plan = plan();
    plan.durability = waymark_engine::Durability::Process;
    let done = h.run(&plan).await?;
    let run = done.run_id();
    assert_eq!(
        (done.status.clone(), done.committed_page),
        (Status::Completed, 6)
    );
    // A power cut takes the destination's last two commits back; the next run comes after
    // `keep`, so the journal no longer holds the run its checkpoint names.
    h.destination.state().lose(2);
    h.crash();
    let later = Timestamp(NOW.0 + 7_200_000);
    assert_eq!(
        h.journal
            .prune(later, std::time::Duration::from_secs(3600))?
            .runs,
        1
    );
    let next = h.run(&plan).await?;
    match &next.started.start_from {
        StartFrom::Destination(c) => assert_eq!((c.run_id, c.page), (run, 4)),
        other => panic!("started from {other:?}"),
    }
    assert_eq!(next.status, Status::Completed);
    assert_eq!(h.destination.state().rows.len(), 6);
    // A checkpoint an operator set (no run's) is not compared with the destination's.
    let mut set = h
        .journal
        .checkpoint("shop", "orders")?
        .ok_or("no checkpoint")?;
    set.run_id = waymark_engine::RunId::new();
    let change = waymark_engine::journal::CheckpointChange {
        at: Timestamp(5),
        who: "ops".into(),
        why: "by hand".into(),
        previous: None,
        new: Some(set.clone()),
    };
    h.journal.set_checkpoint("shop", "orders", &change)?;
    let after = h.run(&plan).await?;
    match &after.started.start_from {
        StartFrom::Journal(c) => assert_eq!(c.run_id, set.run_id),
        other => panic!("started from {other:?}"),
    }
    Ok(())
}
