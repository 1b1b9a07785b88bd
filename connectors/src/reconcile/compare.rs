//! The comparison: both sides spilled into a scratch SQLite file and compared by joins.

use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{params, Connection};
use serde_json::Value;

use waymark_engine::Timestamp;

use super::classify::{classify, compare_values, Digest, Gap, Report, Scope, Values};
use super::error::{scratch, Error};
use super::repair::{deletion_record, RepairSet, RepairWriter};
use crate::record::lookup;
use crate::sink::plan::{identify, Binding, Stored};

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

pub(super) fn hash_of(value: &impl Hash) -> i64 {
    let mut h = std::hash::DefaultHasher::new();
    value.hash(&mut h);
    // The hash's bits as SQLite's integer type.
    i64::from_ne_bytes(h.finish().to_ne_bytes())
}

/// The digest in columns `at` (hash) and `at + 1` (of the text) of a scratch row.
fn digest_at(row: &rusqlite::Row<'_>, at: usize) -> rusqlite::Result<Option<Digest>> {
    let hash: Option<i64> = row.get(at)?;
    let raw: Option<bool> = row.get(at + 1)?;
    Ok(hash.map(|hash| Digest {
        hash,
        raw: raw.unwrap_or(false),
    }))
}

/// A source record as the scratch file keeps it.
struct SourceRow<'r> {
    key: String,
    version: Option<String>,
    t: Option<Timestamp>,
    digest: Option<Digest>,
    deletion: bool,
    /// The sync refuses it (a dead letter with a key).
    refused: bool,
    record: &'r str,
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
                               raw INTEGER, pick INTEGER, deletion INTEGER, refused INTEGER,
                               record TEXT);
             CREATE TABLE dst (key TEXT PRIMARY KEY, version TEXT, t INTEGER, digest INTEGER,
                               raw INTEGER, deleted INTEGER);",
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

    /// The digest of the compared fields (`None`: values are not compared), or of the
    /// record's text when it cannot be parsed as a tree ([`Digest`]).
    fn digest(&self, record: &str) -> Option<Digest> {
        if !self.scope.compares_values() {
            return None;
        }
        let Ok(value) = serde_json::from_str::<Value>(record) else {
            return Some(Digest {
                hash: hash_of(&record),
                raw: true,
            });
        };
        let hash = match &self.scope.fields {
            None => hash_of(&value.to_string()),
            Some(fields) => hash_of(
                &fields
                    .iter()
                    .map(|f| lookup(&value, f).map(Value::to_string))
                    .collect::<Vec<_>>(),
            ),
        };
        Some(Digest { hash, raw: false })
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

    /// Adds a page of source records (JSON objects as text), each read as the sync reads
    /// it (`sink::plan::identify`: the same key, version and deletion). A record the sync
    /// refuses is kept by its key as refused (never taken for a deletion); one without a
    /// key is skipped (the sync dead-letters it, so no row can be its). A key seen twice
    /// keeps its last copy.
    pub fn add_source(&mut self, records: &[String]) -> Result<(), Error> {
        let path = self.path.clone();
        let fail = scratch(&path);
        let mut rows = Vec::with_capacity(records.len());
        for record in records {
            let row = match identify(record, &self.binding) {
                Ok(id) => SourceRow {
                    t: id.version.as_deref().and_then(version_time),
                    digest: self.digest(record),
                    key: id.key,
                    version: id.version,
                    deletion: id.deletion,
                    refused: false,
                    record,
                },
                Err((Some(key), _)) => SourceRow {
                    key,
                    version: None,
                    t: None,
                    digest: None,
                    deletion: false,
                    refused: true,
                    record,
                },
                Err((None, _)) => continue,
            };
            rows.push(row);
        }
        let tx = self.conn.transaction().map_err(&fail)?;
        {
            let mut insert = tx
                .prepare_cached(
                    "INSERT INTO src (key, version, t, digest, raw, pick, deletion, refused, record)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
                     ON CONFLICT (key) DO UPDATE SET version = excluded.version, t = excluded.t,
                       digest = excluded.digest, raw = excluded.raw,
                       deletion = excluded.deletion, refused = excluded.refused,
                       record = excluded.record",
                )
                .map_err(&fail)?;
            for r in &rows {
                insert
                    .execute(params![
                        r.key,
                        r.version,
                        r.t.map(|t| t.0),
                        r.digest.map(|d| d.hash),
                        r.digest.map(|d| d.raw),
                        hash_of(&r.key),
                        r.deletion,
                        r.refused,
                        r.record
                    ])
                    .map_err(&fail)?;
            }
        }
        tx.commit().map_err(&fail)?;
        for r in rows {
            if !r.deletion {
                self.count(r.t, 0);
            }
        }
        Ok(())
    }

    /// Adds destination rows (a scan calls this per row; rows are committed in chunks).
    pub fn add_destination(&mut self, rows: &[(String, Stored)]) -> Result<(), Error> {
        let path = self.path.clone();
        let fail = scratch(&path);
        let digests: Vec<Option<Digest>> = rows
            .iter()
            .map(|(_, stored)| stored.record.as_deref().and_then(|r| self.digest(r)))
            .collect();
        let tx = self.conn.transaction().map_err(&fail)?;
        let mut times = Vec::with_capacity(rows.len());
        {
            let mut insert = tx
                .prepare_cached(
                    "INSERT OR REPLACE INTO dst (key, version, t, digest, raw, deleted)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                )
                .map_err(&fail)?;
            for ((key, stored), digest) in rows.iter().zip(digests) {
                let t = stored.version.as_deref().and_then(version_time);
                insert
                    .execute(params![
                        key,
                        stored.version,
                        t.map(|t| t.0),
                        digest.map(|d| d.hash),
                        digest.map(|d| d.raw),
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
        let scope = &self.scope;
        let mut report = Report {
            bucket: Duration::from_millis(self.bucket_ms),
            ..Report::default()
        };
        let mut fixes = repair.map(RepairSet::writer).transpose()?;
        self.source_side(&mut report, &mut fixes)?;
        self.sampled(&mut report, &mut fixes)?;
        self.destination_side(&mut report, &mut fixes)?;
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

    /// Source side: every source record against its destination row.
    fn source_side(
        &self,
        report: &mut Report,
        fixes: &mut Option<RepairWriter>,
    ) -> Result<(), Error> {
        let fail = scratch(&self.path);
        let scope = &self.scope;
        let mut stmt = self
            .conn
            .prepare(
                "SELECT s.key, s.version, s.t, s.digest, s.raw, s.deletion, s.refused, s.record,
                        d.version, d.digest, d.raw, d.deleted
                 FROM src s LEFT JOIN dst d ON d.key = s.key",
            )
            .map_err(&fail)?;
        let mut rows = stmt.query([]).map_err(&fail)?;
        while let Some(row) = rows.next().map_err(&fail)? {
            let key: String = row.get(0).map_err(&fail)?;
            let version: Option<String> = row.get(1).map_err(&fail)?;
            let t: Option<u64> = row.get(2).map_err(&fail)?;
            let digest = digest_at(row, 3).map_err(&fail)?;
            let deletion: bool = row.get(5).map_err(&fail)?;
            let refused: bool = row.get(6).map_err(&fail)?;
            let stored: Option<(Option<String>, Option<Digest>, bool)> =
                match row.get::<_, Option<bool>>(11).map_err(&fail)? {
                    None => None,
                    Some(deleted) => Some((
                        row.get(8).map_err(&fail)?,
                        digest_at(row, 9).map_err(&fail)?,
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
            let gap = match refused {
                // The sync refuses it too: whatever the destination holds stays.
                true => Some(Gap::Unreadable),
                false => classify(
                    version.as_deref(),
                    deletion,
                    stored.as_ref().map(|(v, _, del)| (v.as_deref(), *del)),
                    match scope.sample {
                        None => compare_values(digest, stored.as_ref().and_then(|s| s.1)),
                        Some(_) => None,
                    },
                ),
            };
            if let Some(gap) = gap {
                report.note(gap, &key, scope.show);
                if let (Some(w), true) = (fixes.as_mut(), gap.repaired()) {
                    let record: String = row.get(7).map_err(&fail)?;
                    w.push(&record)?;
                }
            }
        }
        Ok(())
    }

    /// A sample of records compared field by field.
    fn sampled(&self, report: &mut Report, fixes: &mut Option<RepairWriter>) -> Result<(), Error> {
        let fail = scratch(&self.path);
        let scope = &self.scope;
        if let Some(n) = scope.sample {
            let mut stmt = self
                .conn
                .prepare(
                    "SELECT s.key, s.t, s.digest, s.raw, d.digest, d.raw, s.record
                     FROM src s JOIN dst d ON d.key = s.key
                     WHERE d.deleted = 0 AND s.deletion = 0 AND s.refused = 0
                       AND s.version IS d.version
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
                let values = compare_values(
                    digest_at(row, 2).map_err(&fail)?,
                    digest_at(row, 4).map_err(&fail)?,
                );
                let gap = match values {
                    Some(Values::Same) | None => None,
                    Some(Values::Different) => Some(Gap::Differing),
                    Some(Values::Unreadable) => Some(Gap::Unreadable),
                };
                if gap != Some(Gap::Unreadable) {
                    report.figures.compared += 1;
                }
                if let Some(gap) = gap {
                    let key: String = row.get(0).map_err(&fail)?;
                    report.note(gap, &key, scope.show);
                    if let (Some(w), true) = (fixes.as_mut(), gap.repaired()) {
                        w.push(&row.get::<_, String>(6).map_err(&fail)?)?;
                    }
                }
            }
        } else if scope.fields.is_some() {
            report.figures.compared = report.figures.source.saturating_sub(report.unreadable);
        }
        Ok(())
    }

    /// Destination side: live rows inside the range that the source no longer has.
    fn destination_side(
        &self,
        report: &mut Report,
        fixes: &mut Option<RepairWriter>,
    ) -> Result<(), Error> {
        let fail = scratch(&self.path);
        let scope = &self.scope;
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
            if let Some(w) = fixes.as_mut() {
                let version: Option<String> = row.get(1).map_err(&fail)?;
                w.push(&deletion_record(&self.binding, &key, version.as_deref()))?;
            }
        }
        Ok(())
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
