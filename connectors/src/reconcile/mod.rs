//! Reconciliation: is the destination what the source says it should be?
//!
//! Both sides are spilled into a scratch SQLite file (`key → version, time, digest`),
//! then compared by joins that SQLite runs with a bounded page cache, so a million keys
//! cost disk, not memory. Each key lands in one [`Gap`] class or none. The time of a
//! record is its version read as a time, so a windowed comparison knows which records the
//! sync was responsible for: the source is read up to *now*, but only records at or before
//! the watermark must be in the destination, and a destination record is only judged
//! deleted when its time is inside the window.
//!
//! A repair writes its records (the source's copy of each missing, stale or differing
//! record, and a deletion record per record gone from the source) into a repair set that
//! [`RepairSource`] serves as pages to an ordinary journaled run.

use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{params, Connection, OptionalExtension};
use serde_json::Value;
use waymark_engine::decision::{backoff, Jitter};
use waymark_engine::source::{self, Page, PageRequest, Source};
use waymark_engine::{Clock, Reconciliation, RetryPolicy, Timestamp, Window};

use crate::record::{compare_versions, key_of, lookup, scalar};
use crate::sink::plan::{Binding, Stored, REPAIR_DELETION};

/// Why a reconciliation could not be made.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The scratch or repair file failed.
    #[error("reconciliation scratch file {path}: {source}")]
    Scratch {
        /// The file.
        path: PathBuf,
        /// SQLite's error.
        source: rusqlite::Error,
    },
    /// The scratch directory could not be made.
    #[error("reconciliation scratch directory {path}: {source}")]
    Io {
        /// The directory.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The source could not be read to the end.
    #[error("reading the source: {0}")]
    Source(#[from] source::Error),
    /// The destination could not be read.
    #[error("reading the destination: {0}")]
    Destination(#[from] waymark_engine::destination::Error),
    /// A stop was requested (nothing was changed).
    #[error("interrupted; nothing was changed")]
    Interrupted,
}

/// The classes of gap, in report order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Gap {
    /// In the source, missing from the destination (or deleted there).
    Missing,
    /// In the destination, gone from the source.
    Deleted,
    /// The destination holds an older version.
    Stale,
    /// Same version, different field values.
    Differing,
    /// The destination holds a newer version (reported, not repaired).
    Newer,
}

impl Gap {
    /// All classes.
    pub const ALL: [Gap; 5] = [
        Gap::Missing,
        Gap::Deleted,
        Gap::Stale,
        Gap::Differing,
        Gap::Newer,
    ];

    /// Its name in reports.
    pub fn name(self) -> &'static str {
        match self {
            Gap::Missing => "missing",
            Gap::Deleted => "deleted",
            Gap::Stale => "stale",
            Gap::Differing => "differing",
            Gap::Newer => "newer",
        }
    }

    /// Whether a repair rewrites it.
    fn repaired(self) -> bool {
        self != Gap::Newer
    }
}

/// What to compare.
#[derive(Clone, Debug)]
pub struct Scope {
    /// Records after this time (`None`: all).
    pub start: Option<Timestamp>,
    /// The watermark: later records are not expected in the destination yet.
    pub end: Timestamp,
    /// Compare field values of this many records (by key hash); `None` with `fields`: all.
    pub sample: Option<u64>,
    /// The fields compared (`None`: the whole record).
    pub fields: Option<Vec<String>>,
    /// Keys listed per gap class.
    pub show: usize,
}

impl Scope {
    /// Whether field values are compared at all.
    fn compares_values(&self) -> bool {
        self.sample.is_some() || self.fields.is_some()
    }

    /// Whether a record of time `t` belongs to the compared range.
    fn contains(&self, t: Option<Timestamp>) -> bool {
        match t {
            None => true,
            Some(t) => self.start.is_none_or(|s| t > s) && t <= self.end,
        }
    }
}

/// A reconciliation's outcome: the figures, the first keys of each gap class, and the
/// time buckets whose counts differ.
#[derive(Clone, Debug, Default)]
pub struct Report {
    /// The figures (recorded in the journal).
    pub figures: Reconciliation,
    /// Up to `show` keys per class.
    pub keys: BTreeMap<Gap, Vec<String>>,
    /// `(bucket start, source count, destination count)` where they differ, oldest first.
    pub buckets: Vec<(Timestamp, u64, u64)>,
    /// Bucket width.
    pub bucket: Duration,
    /// Records in the repair set.
    pub to_repair: u64,
}

impl Report {
    fn note(&mut self, gap: Gap, key: &str, show: usize) {
        let f = &mut self.figures;
        *match gap {
            Gap::Missing => &mut f.missing,
            Gap::Deleted => &mut f.deleted,
            Gap::Stale => &mut f.stale,
            Gap::Differing => &mut f.differing,
            Gap::Newer => &mut f.newer,
        } += 1;
        let keys = self.keys.entry(gap).or_default();
        if keys.len() < show {
            keys.push(key.to_string());
        }
    }
}

/// A version read as a time: RFC 3339, or Unix seconds / milliseconds / microseconds /
/// nanoseconds by magnitude. `None` when it is neither.
pub fn version_time(version: &str) -> Option<Timestamp> {
    if let Ok(t) = humantime::parse_rfc3339_weak(version) {
        return Some(Timestamp::from_system(t));
    }
    let n: u64 = version.trim().parse().ok()?;
    Some(Timestamp(match n {
        0..100_000_000_000 => n.saturating_mul(1000),
        100_000_000_000..100_000_000_000_000 => n,
        100_000_000_000_000..100_000_000_000_000_000 => n / 1000,
        _ => n / 1_000_000,
    }))
}

fn hash_of(value: &impl Hash) -> i64 {
    let mut h = std::hash::DefaultHasher::new();
    value.hash(&mut h);
    // The hash's bits as SQLite's integer type.
    i64::from_ne_bytes(h.finish().to_ne_bytes())
}

/// The comparison under way: the scratch file and the running bucket counts.
pub struct Comparison {
    conn: Connection,
    path: PathBuf,
    binding: Binding,
    scope: Scope,
    /// Bucket start → (source, destination) counts.
    buckets: BTreeMap<u64, (u64, u64)>,
    bucket_ms: u64,
}

impl Comparison {
    /// Starts a comparison in a fresh scratch file at `path`.
    pub fn create(path: &Path, binding: Binding, scope: Scope) -> Result<Self, Error> {
        let fail = scratch(path);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|source| Error::Io {
                path: dir.to_path_buf(),
                source,
            })?;
        }
        for suffix in ["", "-wal", "-shm", "-journal"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
        }
        let conn = Connection::open(path).map_err(&fail)?;
        conn.execute_batch(
            "PRAGMA journal_mode = OFF; PRAGMA synchronous = OFF; PRAGMA cache_size = -16384;
             PRAGMA temp_store = FILE;
             CREATE TABLE src (key TEXT PRIMARY KEY, version TEXT, t INTEGER, digest INTEGER,
                               pick INTEGER, deletion INTEGER, record TEXT);
             CREATE TABLE dst (key TEXT PRIMARY KEY, version TEXT, t INTEGER, digest INTEGER,
                               deleted INTEGER);",
        )
        .map_err(&fail)?;
        let span = scope
            .start
            .map_or(u64::MAX, |s| scope.end.0.saturating_sub(s.0));
        let bucket_ms = match span {
            0..=172_800_000 => 3_600_000,
            _ => 86_400_000,
        };
        Ok(Comparison {
            conn,
            path: path.to_path_buf(),
            binding,
            scope,
            buckets: BTreeMap::new(),
            bucket_ms,
        })
    }

    /// The digest of the compared fields (`None`: values are not compared).
    fn digest(&self, value: &Value) -> Option<i64> {
        if !self.scope.compares_values() {
            return None;
        }
        Some(match &self.scope.fields {
            None => hash_of(&value.to_string()),
            Some(fields) => hash_of(
                &fields
                    .iter()
                    .map(|f| lookup(value, f).map(Value::to_string))
                    .collect::<Vec<_>>(),
            ),
        })
    }

    fn count(&mut self, t: Option<Timestamp>, side: usize) {
        if let Some(t) = t.filter(|_| self.scope.contains(t)) {
            let slot = self.buckets.entry(t.0 - t.0 % self.bucket_ms).or_default();
            match side {
                0 => slot.0 += 1,
                _ => slot.1 += 1,
            }
        }
    }

    /// Adds a page of source records (JSON objects as text); records without a key are
    /// skipped (a sync dead-letters them). A key seen twice keeps its last copy.
    pub fn add_source(&mut self, records: &[String]) -> Result<(), Error> {
        let path = self.path.clone();
        let fail = scratch(&path);
        let mut rows = Vec::with_capacity(records.len());
        for record in records {
            let Ok(value) = serde_json::from_str::<Value>(record) else {
                continue;
            };
            let Some(key) = key_of(&value, &self.binding.primary_key) else {
                continue;
            };
            let version = self
                .binding
                .version_field
                .as_ref()
                .and_then(|f| lookup(&value, f).and_then(scalar));
            let t = version.as_deref().and_then(version_time);
            let deletion = self.binding.is_deletion(&value);
            rows.push((key, version, t, self.digest(&value), deletion, record));
        }
        let tx = self.conn.transaction().map_err(&fail)?;
        {
            let mut insert = tx
                .prepare_cached(
                    "INSERT INTO src (key, version, t, digest, pick, deletion, record)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                     ON CONFLICT (key) DO UPDATE SET version = excluded.version, t = excluded.t,
                       digest = excluded.digest, deletion = excluded.deletion,
                       record = excluded.record",
                )
                .map_err(&fail)?;
            for (key, version, t, digest, deletion, record) in &rows {
                insert
                    .execute(params![
                        key,
                        version,
                        t.map(|t| t.0),
                        digest,
                        hash_of(key),
                        deletion,
                        record
                    ])
                    .map_err(&fail)?;
            }
        }
        tx.commit().map_err(&fail)?;
        for (_, _, t, _, deletion, _) in rows {
            if !deletion {
                self.count(t, 0);
            }
        }
        Ok(())
    }

    /// Adds destination rows (a scan calls this per row; rows are committed in chunks).
    pub fn add_destination(&mut self, rows: &[(String, Stored)]) -> Result<(), Error> {
        let path = self.path.clone();
        let fail = scratch(&path);
        let digests: Vec<Option<i64>> = rows
            .iter()
            .map(|(_, stored)| {
                stored
                    .record
                    .as_deref()
                    .and_then(|r| serde_json::from_str::<Value>(r).ok())
                    .and_then(|v| self.digest(&v))
            })
            .collect();
        let tx = self.conn.transaction().map_err(&fail)?;
        let mut times = Vec::with_capacity(rows.len());
        {
            let mut insert = tx
                .prepare_cached(
                    "INSERT OR REPLACE INTO dst (key, version, t, digest, deleted)
                     VALUES (?1, ?2, ?3, ?4, ?5)",
                )
                .map_err(&fail)?;
            for ((key, stored), digest) in rows.iter().zip(digests) {
                let t = stored.version.as_deref().and_then(version_time);
                insert
                    .execute(params![
                        key,
                        stored.version,
                        t.map(|t| t.0),
                        digest,
                        stored.deleted
                    ])
                    .map_err(&fail)?;
                if !stored.deleted {
                    times.push(t);
                }
            }
        }
        tx.commit().map_err(&fail)?;
        for t in times {
            self.count(t, 1);
        }
        Ok(())
    }

    /// Compares the two sides. With `repair`, the repair set (see [`RepairSet`]) is
    /// written with what a repair must write.
    pub fn finish(self, repair: Option<&RepairSet>) -> Result<Report, Error> {
        let fail = scratch(&self.path);
        let scope = &self.scope;
        let mut report = Report {
            bucket: Duration::from_millis(self.bucket_ms),
            ..Report::default()
        };
        let mut fixes = repair.map(RepairSet::writer).transpose()?;
        // Source side: every source record against its destination row.
        {
            let mut stmt = self
                .conn
                .prepare(
                    "SELECT s.key, s.version, s.t, s.digest, s.deletion, s.record,
                            d.version, d.digest, d.deleted
                     FROM src s LEFT JOIN dst d ON d.key = s.key",
                )
                .map_err(&fail)?;
            let mut rows = stmt.query([]).map_err(&fail)?;
            while let Some(row) = rows.next().map_err(&fail)? {
                let key: String = row.get(0).map_err(&fail)?;
                let version: Option<String> = row.get(1).map_err(&fail)?;
                let t: Option<u64> = row.get(2).map_err(&fail)?;
                let digest: Option<i64> = row.get(3).map_err(&fail)?;
                let deletion: bool = row.get(4).map_err(&fail)?;
                let stored: Option<(Option<String>, Option<i64>, bool)> =
                    match row.get::<_, Option<bool>>(8).map_err(&fail)? {
                        None => None,
                        Some(deleted) => Some((
                            row.get(6).map_err(&fail)?,
                            row.get(7).map_err(&fail)?,
                            deleted,
                        )),
                    };
                let t = t.map(Timestamp);
                if !scope.contains(t) {
                    continue;
                }
                if !deletion {
                    report.figures.source += 1;
                }
                let gap = classify(
                    version.as_deref(),
                    digest,
                    deletion,
                    stored.as_ref().map(|(v, d, del)| (v.as_deref(), *d, *del)),
                    scope.sample.is_none(),
                );
                if let Some(gap) = gap {
                    report.note(gap, &key, scope.show);
                    if let (Some(w), true) = (&mut fixes, gap.repaired()) {
                        let record: String = row.get(5).map_err(&fail)?;
                        w.push(&record)?;
                    }
                }
            }
        }
        // A sample of records compared field by field.
        if let Some(n) = scope.sample {
            let mut stmt = self
                .conn
                .prepare(
                    "SELECT s.key, s.t, s.digest IS NOT d.digest, s.record
                     FROM src s JOIN dst d ON d.key = s.key
                     WHERE d.deleted = 0 AND s.deletion = 0 AND s.version IS d.version
                     ORDER BY s.pick",
                )
                .map_err(&fail)?;
            let mut rows = stmt.query([]).map_err(&fail)?;
            while let Some(row) = rows.next().map_err(&fail)? {
                if report.figures.compared >= n {
                    break;
                }
                let t: Option<u64> = row.get(1).map_err(&fail)?;
                if !scope.contains(t.map(Timestamp)) {
                    continue;
                }
                report.figures.compared += 1;
                if row.get::<_, bool>(2).map_err(&fail)? {
                    let key: String = row.get(0).map_err(&fail)?;
                    report.note(Gap::Differing, &key, scope.show);
                    if let Some(w) = &mut fixes {
                        w.push(&row.get::<_, String>(3).map_err(&fail)?)?;
                    }
                }
            }
        } else if scope.fields.is_some() {
            report.figures.compared = report.figures.source;
        }
        // Destination side: live rows inside the range that the source no longer has.
        {
            let mut stmt = self
                .conn
                .prepare(
                    "SELECT d.key, d.version, d.t FROM dst d
                     WHERE d.deleted = 0 AND NOT EXISTS (SELECT 1 FROM src s WHERE s.key = d.key)",
                )
                .map_err(&fail)?;
            let mut rows = stmt.query([]).map_err(&fail)?;
            while let Some(row) = rows.next().map_err(&fail)? {
                let t: Option<u64> = row.get(2).map_err(&fail)?;
                let t = t.map(Timestamp);
                if scope.start.is_some() && t.is_none() {
                    // A windowed comparison cannot place a record without a time.
                    continue;
                }
                if !scope.contains(t) {
                    continue;
                }
                let key: String = row.get(0).map_err(&fail)?;
                report.note(Gap::Deleted, &key, scope.show);
                if let Some(w) = &mut fixes {
                    let version: Option<String> = row.get(1).map_err(&fail)?;
                    w.push(&deletion_record(&self.binding, &key, version.as_deref()))?;
                }
            }
        }
        report.figures.destination =
            self.buckets.values().map(|c| c.1).sum::<u64>() + self.unplaced_destination()?;
        report.figures.start = scope.start;
        report.figures.end = scope.end;
        report.buckets = self
            .buckets
            .iter()
            .filter(|(_, (s, d))| s != d)
            .map(|(&b, &(s, d))| (Timestamp(b), s, d))
            .collect();
        if let Some(w) = fixes {
            report.to_repair = w.finish()?;
        }
        Ok(report)
    }

    /// Live destination rows without a time (counted only in a full comparison).
    fn unplaced_destination(&self) -> Result<u64, Error> {
        if self.scope.start.is_some() {
            return Ok(0);
        }
        self.conn
            .query_row(
                "SELECT count(*) FROM dst WHERE deleted = 0 AND t IS NULL",
                [],
                |r| r.get::<_, u64>(0),
            )
            .map_err(scratch(&self.path))
    }
}

impl Drop for Comparison {
    /// The scratch file goes with the comparison, finished or not.
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn scratch(path: &Path) -> impl Fn(rusqlite::Error) -> Error + '_ {
    move |source| Error::Scratch {
        path: path.to_path_buf(),
        source,
    }
}

/// The gap of one source record against its destination row `stored` (version, digest,
/// deleted), if any. Digests are compared when `all_values` (else only a sample is). Pure.
pub fn classify(
    version: Option<&str>,
    digest: Option<i64>,
    deletion: bool,
    stored: Option<(Option<&str>, Option<i64>, bool)>,
    all_values: bool,
) -> Option<Gap> {
    match (deletion, stored) {
        (true, Some((_, _, false))) => Some(Gap::Deleted),
        (true, _) => None,
        (false, None) | (false, Some((_, _, true))) => Some(Gap::Missing),
        (false, Some((stored_version, stored_digest, false))) => {
            match version
                .zip(stored_version)
                .map(|(a, b)| compare_versions(a, b))
            {
                Some(std::cmp::Ordering::Greater) => Some(Gap::Stale),
                Some(std::cmp::Ordering::Less) => Some(Gap::Newer),
                _ if all_values && digest.is_some() && digest != stored_digest => {
                    Some(Gap::Differing)
                }
                _ => None,
            }
        }
    }
}

/// A deletion record of `key` (at the stored `version`, so it is never stale) that a
/// repair binding applies by the destination's delete mode.
fn deletion_record(binding: &Binding, key: &str, version: Option<&str>) -> String {
    let parts: Vec<String> = match binding.primary_key.len() {
        1 => vec![key.to_string()],
        _ => serde_json::from_str(key).unwrap_or_else(|_| vec![key.to_string()]),
    };
    let mut value = serde_json::json!({ REPAIR_DELETION: true });
    for (path, part) in binding.primary_key.iter().zip(parts) {
        set_path(&mut value, path, Value::String(part));
    }
    if let (Some(field), Some(version)) = (&binding.version_field, version) {
        set_path(&mut value, field, Value::String(version.to_string()));
    }
    value.to_string()
}

/// Sets the value at a dotted path, creating objects on the way.
fn set_path(root: &mut Value, path: &str, leaf: Value) {
    let mut at = root;
    let mut parts = path.split('.').peekable();
    while let Some(part) = parts.next() {
        if !at.is_object() {
            *at = Value::Object(serde_json::Map::new());
        }
        let Value::Object(map) = at else { return };
        if parts.peek().is_none() {
            map.insert(part.to_string(), leaf);
            return;
        }
        at = map
            .entry(part.to_string())
            .or_insert_with(|| Value::Object(serde_json::Map::new()));
    }
}

/// Reads every page of a source over `window`, retrying as the run would (backoff with
/// jitter, `Retry-After` as a floor) but giving up on a wait beyond `max_wait`.
pub async fn read_source<S: Source>(
    source: &mut S,
    window: Window,
    policy: &RetryPolicy,
    clock: &dyn Clock,
    mut each: impl FnMut(&[String]) -> Result<(), Error>,
) -> Result<u64, Error> {
    let mut cursor: Option<String> = None;
    let mut page = 1;
    let mut attempts = 0u32;
    let mut jitter = Jitter::new(clock.now().0);
    loop {
        let request = PageRequest {
            page,
            cursor: cursor.as_deref(),
            window,
        };
        match source.fetch(request).await {
            Ok(p) => {
                attempts = 0;
                each(&p.records)?;
                match p.next_cursor {
                    Some(next) => cursor = Some(next),
                    None => return Ok(page),
                }
                page += 1;
            }
            Err(e) if !e.retryable() => return Err(e.into()),
            Err(mut e) => {
                attempts += 1;
                let wait = e.retry_after.unwrap_or_default().max(backoff(
                    policy,
                    attempts - 1,
                    jitter.next_sample(),
                ));
                if attempts >= policy.max_attempts || wait > policy.max_wait {
                    e.message = format!("page {page} after {attempts} attempts: {}", e.message);
                    return Err(e.into());
                }
                tracing::info!(
                    "reconcile: page {page} attempt {attempts} failed ({}); retrying in {} ms",
                    e.message,
                    wait.as_millis()
                );
                clock.sleep(wait.max(Duration::from_millis(10))).await;
            }
        }
    }
}

/// What a repair writes: records in order, kept in the state directory until the repair
/// run that writes them completes (so a resumed repair writes the same).
pub struct RepairSet {
    path: PathBuf,
}

/// Appends records to a [`RepairSet`] in one transaction.
pub struct RepairWriter {
    conn: Connection,
    path: PathBuf,
    count: u64,
}

impl RepairSet {
    /// The repair set of a stream at `path`.
    pub fn new(path: PathBuf) -> Self {
        RepairSet { path }
    }

    /// Whether one is waiting for its run.
    pub fn exists(&self) -> bool {
        self.path.exists()
    }

    /// Deletes it (its run completed).
    pub fn remove(&self) -> std::io::Result<()> {
        match std::fs::remove_file(&self.path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    fn writer(&self) -> Result<RepairWriter, Error> {
        let fail = scratch(&self.path);
        let _ = std::fs::remove_file(&self.path);
        let conn = Connection::open(&self.path).map_err(&fail)?;
        conn.execute_batch(
            "PRAGMA synchronous = FULL;
             CREATE TABLE records (seq INTEGER PRIMARY KEY, record TEXT NOT NULL);
             BEGIN;",
        )
        .map_err(&fail)?;
        Ok(RepairWriter {
            conn,
            path: self.path.clone(),
            count: 0,
        })
    }

    /// A source serving the set as pages of `page_size`.
    pub fn source(&self, page_size: u32) -> Result<RepairSource, Error> {
        let conn =
            Connection::open_with_flags(&self.path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
                .map_err(scratch(&self.path))?;
        Ok(RepairSource {
            conn: std::sync::Mutex::new(conn),
            page_size: page_size.max(1),
        })
    }
}

impl RepairWriter {
    fn push(&mut self, record: &str) -> Result<(), Error> {
        self.conn
            .prepare_cached("INSERT INTO records (record) VALUES (?1)")
            .and_then(|mut s| s.execute([record]))
            .map_err(scratch(&self.path))?;
        self.count += 1;
        Ok(())
    }

    fn finish(self) -> Result<u64, Error> {
        self.conn
            .execute_batch("COMMIT")
            .map_err(scratch(&self.path))?;
        Ok(self.count)
    }
}

/// A repair set as a source: the cursor is the last record's sequence number.
pub struct RepairSource {
    conn: std::sync::Mutex<Connection>,
    page_size: u32,
}

impl Source for RepairSource {
    async fn fetch(&mut self, request: PageRequest<'_>) -> Result<Page, source::Error> {
        let after: i64 = match request.cursor {
            None => 0,
            Some(c) => c.parse().map_err(|_| {
                source::Error::new(
                    source::ErrorKind::Fatal,
                    format!("repair cursor `{c}` is not a sequence number"),
                )
            })?,
        };
        let conn = self.conn.lock().unwrap_or_else(|e| e.into_inner());
        let read = |e: rusqlite::Error| {
            source::Error::new(
                source::ErrorKind::Fatal,
                format!("reading the repair set: {e}"),
            )
        };
        let mut stmt = conn
            .prepare_cached("SELECT seq, record FROM records WHERE seq > ?1 ORDER BY seq LIMIT ?2")
            .map_err(read)?;
        let rows: Vec<(i64, String)> = stmt
            .query_map(params![after, self.page_size], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .and_then(|rows| rows.collect())
            .map_err(read)?;
        let last = rows.last().map(|(seq, _)| *seq);
        let more: Option<i64> = match last {
            None => None,
            Some(last) => conn
                .query_row(
                    "SELECT seq FROM records WHERE seq > ?1 LIMIT 1",
                    [last],
                    |r| r.get(0),
                )
                .optional()
                .map_err(read)?,
        };
        Ok(Page {
            records: rows.into_iter().map(|(_, r)| r).collect(),
            next_cursor: more.and(last).map(|l| l.to_string()),
            ignored: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_read_as_times() {
        let t = Timestamp(1_767_225_600_000);
        assert_eq!(version_time("2026-01-01T00:00:00Z"), Some(t));
        assert_eq!(version_time("2026-01-01T00:00:00.000Z"), Some(t));
        assert_eq!(version_time("1767225600"), Some(t));
        assert_eq!(version_time("1767225600000"), Some(t));
        assert_eq!(version_time("1767225600000000"), Some(t));
        assert_eq!(version_time("v7"), None);
    }

    #[test]
    fn each_pair_of_sides_falls_in_one_class() {
        let live = |v: &'static str, d: i64| Some((Some(v), Some(d), false));
        assert_eq!(
            classify(Some("2"), Some(1), false, None, true),
            Some(Gap::Missing)
        );
        assert_eq!(
            classify(
                Some("2"),
                Some(1),
                false,
                Some((Some("2"), Some(1), true)),
                true
            ),
            Some(Gap::Missing)
        );
        assert_eq!(
            classify(Some("3"), Some(1), false, live("2", 1), true),
            Some(Gap::Stale)
        );
        assert_eq!(
            classify(Some("1"), Some(1), false, live("2", 1), true),
            Some(Gap::Newer)
        );
        assert_eq!(
            classify(Some("2"), Some(1), false, live("2", 9), true),
            Some(Gap::Differing)
        );
        assert_eq!(
            classify(Some("2"), Some(1), false, live("2", 9), false),
            None
        );
        assert_eq!(classify(Some("2"), None, false, live("2", 9), true), None);
        assert_eq!(
            classify(Some("2"), Some(1), false, live("2", 1), true),
            None
        );
        assert_eq!(
            classify(Some("2"), None, true, live("2", 1), true),
            Some(Gap::Deleted)
        );
        assert_eq!(classify(Some("2"), None, true, None, true), None);
    }

    #[test]
    fn deletion_records_carry_key_and_version_at_their_paths() -> Result<(), String> {
        let mut b = Binding {
            primary_key: vec!["shop.id".into(), "n".into()],
            version_field: Some("meta.v".into()),
            repair: true,
            ..crate::sink::plan::tests_binding()
        };
        let record = deletion_record(&b, r#"["s1","7"]"#, Some("5"));
        let value: Value = serde_json::from_str(&record).map_err(|e| e.to_string())?;
        assert_eq!(
            key_of(&value, &b.primary_key).as_deref(),
            Some(r#"["s1","7"]"#)
        );
        assert_eq!(lookup(&value, "meta.v"), Some(&Value::String("5".into())));
        assert!(b.is_deletion(&value));
        b.repair = false;
        assert!(!b.is_deletion(&value));
        Ok(())
    }
}
