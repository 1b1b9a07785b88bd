//! The journal's own guarantees: damage is named, finished runs are pruned, checkpoints kept.

mod fixture;

use std::time::Duration;

use fixture::{plan, Harness, MemorySource, NOW};
use waymark_engine::journal::{codec, Backend, Error, MemoryBackend, Op};
use waymark_engine::{RunId, Status, Timestamp};

type Failure = Box<dyn std::error::Error>;

/// The values of a run log's frames (`[length: u32 LE][value]` each).
fn frames(backend: &MemoryBackend, run: RunId) -> Result<Vec<Vec<u8>>, Failure> {
    let bytes = backend.log_read(run, 0)?.ok_or("no log")?;
    let mut frames = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        let length = u32::from_le_bytes(bytes[at..at + 4].try_into()?) as usize;
        frames.push(bytes[at + 4..at + 4 + length].to_vec());
        at += 4 + length;
    }
    Ok(frames)
}

/// Rewrites the run's log with `edit` applied to the value of its `seq`-th frame.
fn edit_log(
    backend: &MemoryBackend,
    run: RunId,
    seq: usize,
    edit: impl FnOnce(&mut Vec<u8>),
) -> Result<(), Failure> {
    let mut frames = frames(backend, run)?;
    edit(frames.get_mut(seq - 1).ok_or("no such frame")?);
    let mut log = Vec::new();
    for frame in frames {
        log.extend_from_slice(&u32::try_from(frame.len())?.to_le_bytes());
        log.extend_from_slice(&frame);
    }
    backend.log_remove(run)?;
    backend.log_append(run, &log)?;
    Ok(())
}

fn records(n: u64) -> Vec<(u64, u64)> {
    (1..=n).map(|id| (id, 1)).collect()
}

#[tokio::test]
async fn a_damaged_entry_is_named_by_run_and_sequence() -> Result<(), Box<dyn std::error::Error>> {
    let mut h = Harness::new("damage", MemorySource::new(records(6), 3));
    h.settings.max_pages = Some(1);
    let state = h.run(&plan()).await?;
    let run = state.run_id();
    assert!(h.journal.verify()?.damage.is_empty());

    // Flip one bit in the value of seq 3 (batch_written).
    edit_log(&h.backend, run, 3, |value| {
        let last = value.len() - 1;
        value[last] ^= 0x01;
    })?;
    let report = h.journal.verify()?;
    assert_eq!(report.damage.len(), 1);
    assert_eq!(report.damage[0].entry, format!("run {run} seq 3"));
    assert!(report.damage[0].problem.contains("checksum mismatch"));
    let err = h
        .journal
        .events(run)
        .find_map(Result::err)
        .ok_or("no error")?;
    let msg = err.to_string();
    assert!(
        msg.contains(&format!("run {run} seq 3")) && msg.contains("waymark journal verify"),
        "{msg}"
    );
    // Pruning (which `waymark run --fresh` does first) goes past the damaged run, and keeps
    // it: it is unfinished.
    let later = Timestamp(NOW.0 + 7_200_000);
    assert_eq!(h.journal.prune(later, Duration::from_secs(1))?.runs, 0);
    assert!(h.backend.log_read(run, 0)?.is_some());

    // A truncated head refuses to load, naming the run; --fresh gets past it.
    let mut head_key = vec![b'h'];
    head_key.extend_from_slice(run.as_bytes());
    h.backend
        .commit(vec![Op::Put(head_key, vec![b'W', 1, 0])])?;
    match h.run(&plan()).await {
        Err(waymark_engine::driver::Error::Journal(Error::Corrupt { entry, .. })) => {
            assert_eq!(entry, format!("head of run {run}"))
        }
        other => panic!("expected a corrupt head, got {other:?}"),
    }
    assert_eq!(h.journal.prune(later, Duration::from_secs(1))?.runs, 0);
    let mut fresh = plan();
    fresh.fresh = true;
    h.settings.max_pages = None;
    let next = h.run(&fresh).await?;
    assert_eq!(next.status, Status::Completed);
    assert_ne!(next.run_id(), run);
    assert_eq!(
        next.started.start_cursor.as_deref(),
        Some("3"),
        "continues from the committed checkpoint"
    );
    assert_eq!(h.destination.state().rows.len(), 6);
    Ok(())
}

#[tokio::test]
async fn a_future_format_version_is_refused_not_misread() -> Result<(), Box<dyn std::error::Error>>
{
    let mut h = Harness::new("future", MemorySource::new(records(2), 2));
    let state = h.run(&plan()).await?;
    edit_log(&h.backend, state.run_id(), 1, |value| {
        value[1] = waymark_engine::journal::FORMAT_VERSION + 1;
    })?;
    let err = h
        .journal
        .events(state.run_id())
        .find_map(Result::err)
        .ok_or("no error")?;
    assert!(err.to_string().contains("newer format version"), "{err}");
    Ok(())
}

#[tokio::test]
async fn retention_prunes_finished_runs_but_never_checkpoints(
) -> Result<(), Box<dyn std::error::Error>> {
    let mut h = Harness::new("prune", MemorySource::new(records(4), 2));
    let first = h.run(&plan()).await?;
    let second = h.run(&plan()).await?;
    h.settings.max_pages = Some(0);
    let unfinished = h.run(&plan()).await?;
    assert!(matches!(unfinished.status, Status::Paused(_)));
    // A crash between a new run's first step and its head left its log; one whose first
    // step does not read is left alone (nothing says when it started).
    let (orphan, unreadable) = (RunId::new(), RunId::new());
    let started = frames(&h.backend, first.run_id())?.remove(0);
    h.backend
        .log_append(orphan, &u32::try_from(started.len())?.to_le_bytes())?;
    h.backend.log_append(orphan, &started)?;
    h.backend.log_append(unreadable, b"\x03\0\0\0ab")?;

    // Nothing is old enough yet.
    let pruned = h.journal.prune(NOW, Duration::from_secs(3600))?;
    assert_eq!(pruned.runs, 0);
    assert!(h.backend.log_read(orphan, 0)?.is_some());
    let later = Timestamp(NOW.0 + 7_200_000);
    let pruned = h.journal.prune(later, Duration::from_secs(3600))?;
    // Each run: started, 2 × (fetched, written, committed), completed; the orphan: started.
    assert_eq!((pruned.runs, pruned.events), (3, 2 * 8 + 1));
    assert!(h.backend.log_read(orphan, 0)?.is_none());
    assert!(h.backend.log_read(unreadable, 0)?.is_some());
    assert!(h.backend.log_read(unfinished.run_id(), 0)?.is_some());
    for run in [first.run_id(), second.run_id()] {
        assert!(matches!(h.journal.load(run), Err(Error::UnknownRun(r)) if r == run));
        assert_eq!(h.journal.events(run).count(), 0);
    }
    // The unfinished run and the stream's checkpoint stay.
    assert_eq!(
        h.journal.load(unfinished.run_id())?.run_id(),
        unfinished.run_id()
    );
    assert_eq!(
        h.journal.checkpoint("shop", "orders")?.map(|c| c.run_id),
        Some(second.run_id())
    );
    Ok(())
}

#[tokio::test]
async fn a_damaged_checkpoint_is_never_guessed_around() -> Result<(), Box<dyn std::error::Error>> {
    let mut h = Harness::new("damaged-checkpoint", MemorySource::new(records(6), 3));
    let first = h.run(&plan()).await?;
    let (key, mut value) = h
        .backend
        .scan(b"c")
        .filter_map(Result::ok)
        .next()
        .ok_or("no checkpoint")?;
    value[7] ^= 0x01;
    h.backend
        .commit(vec![Op::Put(key.clone(), value.clone())])?;
    match h.run(&plan()).await {
        Err(waymark_engine::driver::Error::CheckpointLost {
            why,
            destination: Some(c),
            ..
        }) => {
            assert!(why.contains("damaged"), "{why}");
            assert_eq!((c.run_id, c.complete), (first.run_id(), true));
        }
        other => panic!("expected a refusal naming the destination's checkpoint, got {other:?}"),
    }
    // With no copy in the destination either, the run refuses to start.
    h.backend.commit(vec![Op::Put(key, value)])?;
    h.destination.state().stored = None;
    match h.run(&plan()).await {
        Err(waymark_engine::driver::Error::CheckpointLost {
            why,
            destination: None,
            ..
        }) => assert!(why.contains("checkpoint of shop/orders"), "{why}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
    Ok(())
}

/// `value` (a journal value of the current format) as format `version` wrote it: fields
/// added since are taken out. Only what this build added last is handled: a page's
/// `max_seen` and a head's (both `None` here: one zero byte, the last of the payload).
fn as_version(value: &mut Vec<u8>, version: u8, fetched_or_head: bool) {
    if fetched_or_head && version < 5 {
        assert_eq!(value.pop(), Some(0), "max_seen: None is the last byte");
    }
    value[1] = version;
    let crc = crc32fast::hash(&value[6..]);
    value[2..6].copy_from_slice(&crc.to_le_bytes());
}

#[tokio::test]
async fn a_journal_written_by_earlier_formats_is_read_and_resumed(
) -> Result<(), Box<dyn std::error::Error>> {
    for version in [3, 4] {
        let mut h = Harness::new("earlier", MemorySource::new(records(6), 3));
        h.settings.max_pages = Some(1);
        let paused = h.run(&plan()).await?;
        let run = paused.run_id();
        let events: Vec<_> = h.journal.events(run).collect::<Result<_, _>>()?;
        // As that version wrote them: the same events without what came later, and a
        // head of the older layout (version 3's is never decoded: the head is rebuilt from
        // the events).
        // Each event under its own key, as before run logs.
        let mut ops = Vec::new();
        assert_eq!(frames(&h.backend, run)?.len(), events.len());
        for (seq, event) in &events {
            let mut key = vec![b'e'];
            key.extend_from_slice(run.as_bytes());
            key.extend_from_slice(&seq.to_be_bytes());
            let mut value = codec::encode(event);
            let fetched = matches!(event, waymark_engine::Event::PageFetched(_));
            as_version(&mut value, version, fetched);
            ops.push(Op::Put(key, value));
        }
        h.backend.log_remove(run)?;
        for item in h.backend.scan(b"h") {
            let (key, mut value) = item?;
            as_version(&mut value, version, true);
            if version == 3 {
                value.truncate(value.len() - 4);
            }
            ops.push(Op::Put(key, value));
        }
        h.backend.commit(ops)?;
        // A new process reads them.
        h.journal = waymark_engine::Journal::new(h.backend.clone());
        assert_eq!(h.journal.load(run)?, paused, "version {version}");
        let heads: Vec<_> = h.journal.runs().collect::<Result<_, _>>()?;
        assert_eq!(heads, std::slice::from_ref(&paused), "version {version}");
        assert!(h.journal.verify()?.damage.is_empty(), "version {version}");
        h.settings.max_pages = None;
        let done = h.run(&plan()).await?;
        assert_eq!((done.run_id(), &done.status), (run, &Status::Completed));
        assert_eq!(done.counts.records_committed, 6);
    }
    Ok(())
}

#[tokio::test]
async fn a_long_run_resumes_from_its_latest_head_not_its_first_event() -> Result<(), Failure> {
    let mut h = Harness::new("long", MemorySource::new(records(1500), 1));
    // A step journals a group of pages (up to 8 fetched, 8 written and committed): the
    // 151st operation comes past 2,048 events, well before the run's end.
    h.backend.fail_after(150);
    assert!(h.run(&plan()).await.is_err(), "the 151st operation fails");
    h.kill();
    let run = h
        .journal
        .active_run("shop", "orders")?
        .ok_or("no unfinished run")?;
    let before = h.journal.load(run)?;
    assert!(before.last_seq > 2048, "{}", before.last_seq);
    // The head is stored with the first batch past each 1,024 events: one past 2,048 is in
    // the key space, behind the run's last event.
    let mut head_key = vec![b'h'];
    head_key.extend_from_slice(run.as_bytes());
    let head: waymark_engine::RunState =
        codec::decode(&h.backend.get(&head_key)?.ok_or("no head")?)?;
    assert!(
        head.last_seq > 2048 && head.last_seq < before.last_seq,
        "head {}, run {}",
        head.last_seq,
        before.last_seq
    );

    // With the log's first frame destroyed, the run still loads: the fold starts at the
    // head's own event, where the key space says it is in the log.
    let log = h.backend.log_read(run, 0)?.ok_or("no log")?;
    let mut broken = log.clone();
    broken[..4].copy_from_slice(&[0xff; 4]);
    h.backend.log_remove(run)?;
    h.backend.log_append(run, &broken)?;
    h.journal = waymark_engine::Journal::new(h.backend.clone());
    assert_eq!(h.journal.load(run)?, before);

    let done = h.run(&plan()).await?;
    assert_eq!((done.run_id(), &done.status), (run, &Status::Completed));
    assert_eq!(h.destination.state().rows.len(), 1500);
    // Mended, the whole log folds to the same state, and checks.
    let mut mended = h.backend.log_read(run, 0)?.ok_or("no log")?;
    mended[..4].copy_from_slice(&log[..4]);
    h.backend.log_remove(run)?;
    h.backend.log_append(run, &mended)?;
    let report = h.journal.verify()?;
    assert!(report.damage.is_empty(), "{:?}", report.damage);
    Ok(())
}
