//! The per-record audit index behind `waymark trace`: for every record a page brought,
//! which run and page saw it, the version seen, and what became of it (inserted, updated,
//! unchanged, skipped as stale, deleted, dead-lettered). Kept in `audit.db` (SQLite) in the
//! state directory — streams and runs are numbered once, so a sighting is ~50 bytes —
//! written before the page commits (a replayed page writes the same rows), and pruned to
//! the sync's `audit_keep` (zero: nothing is noted).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use rusqlite::{params, Connection};

use waymark_engine::{destination, Timestamp};

/// What became of a record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// New in the destination.
    Inserted,
    /// Replaced an older version.
    Updated,
    /// Identical to what was stored.
    Unchanged,
    /// Older than what was stored: left alone.
    Stale,
    /// Marked deleted or removed.
    Deleted,
    /// Sent to the dead-letter store.
    DeadLettered,
}

impl Outcome {
    const ALL: [Outcome; 6] = [
        Outcome::Inserted,
        Outcome::Updated,
        Outcome::Unchanged,
        Outcome::Stale,
        Outcome::Deleted,
        Outcome::DeadLettered,
    ];

    /// The outcome stored as `code` (its position).
    fn from_code(code: i64) -> Outcome {
        usize::try_from(code)
            .ok()
            .and_then(|i| Outcome::ALL.get(i).copied())
            .unwrap_or(Outcome::Unchanged)
    }

    /// Its name.
    pub fn name(self) -> &'static str {
        match self {
            Outcome::Inserted => "inserted",
            Outcome::Updated => "updated",
            Outcome::Unchanged => "unchanged",
            Outcome::Stale => "skipped as stale",
            Outcome::Deleted => "deleted",
            Outcome::DeadLettered => "dead-lettered",
        }
    }
}

/// One record seen: key, version and outcome (borrowed from the batch).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Seen<'a> {
    /// The record's key.
    pub key: &'a str,
    /// The version it had.
    pub version: Option<&'a str>,
    /// What became of it.
    pub outcome: Outcome,
}

/// One row of a trace.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Sighting {
    /// When the run wrote its first page.
    pub at: String,
    /// The run.
    pub run_id: String,
    /// The page.
    pub page: u64,
    /// The version seen.
    pub version: Option<String>,
    /// What became of the record.
    pub outcome: String,
}

/// The audit index of a state directory.
#[derive(Clone, Debug)]
pub struct Audit {
    path: PathBuf,
    conn: Arc<Mutex<Option<ConnectionCell>>>,
    /// Whether sightings are noted at all.
    enabled: bool,
}

/// A connection, made `Debug` for the binding.
struct ConnectionCell(Connection);

impl std::fmt::Debug for ConnectionCell {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("audit connection")
    }
}

fn fail(e: rusqlite::Error) -> destination::Error {
    use rusqlite::ErrorCode::{DatabaseCorrupt, NotADatabase};
    match e.sqlite_error_code() {
        Some(DatabaseCorrupt | NotADatabase) => destination::Error::permanent(format!(
            "the audit index audit.db in the state directory is damaged ({e}); it only serves \
             `waymark trace`: delete it and run again (a new one is started)"
        )),
        _ => destination::Error::permanent(format!("audit index: {e}")),
    }
}

impl Audit {
    /// The index under the state directory `root` (opened when first used).
    pub fn new(root: &Path) -> Self {
        Audit {
            path: root.join("audit.db"),
            conn: Arc::new(Mutex::new(None)),
            enabled: true,
        }
    }

    /// The same index, noting nothing (`audit_keep = "0s"`); reading still works.
    pub fn disabled(root: &Path) -> Self {
        Audit {
            enabled: false,
            ..Audit::new(root)
        }
    }

    /// Checks the index's file without changing it: `None` when it is sound or absent, else
    /// what is wrong.
    pub fn check(&self) -> Option<String> {
        use rusqlite::OpenFlags;
        if !self.path.exists() {
            return None;
        }
        // Immutable: no lock, no -shm or -wal file created beside it.
        let uri = format!("file:{}?immutable=1", self.path.display());
        let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_URI;
        let checked = Connection::open_with_flags(uri, flags).and_then(|conn| {
            conn.query_row("PRAGMA quick_check", [], |row| row.get::<_, String>(0))
        });
        match checked {
            Ok(verdict) if verdict == "ok" => None,
            Ok(verdict) => Some(verdict),
            Err(e) => Some(e.to_string()),
        }
    }

    fn with<T>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, rusqlite::Error>,
    ) -> Result<T, destination::Error> {
        let mut slot = self.conn.lock().unwrap_or_else(PoisonError::into_inner);
        if slot.is_none() {
            if let Some(dir) = self.path.parent() {
                std::fs::create_dir_all(dir).map_err(|e| {
                    destination::Error::permanent(format!("{}: {e}", dir.display()))
                })?;
            }
            let conn = Connection::open(&self.path).map_err(fail)?;
            // Another handle of this process (a repair's binding, a test) may be writing.
            conn.busy_timeout(std::time::Duration::from_secs(5))
                .map_err(fail)?;
            // Advisory data, rewritten by any replay: speed over durability.
            conn.pragma_update(None, "journal_mode", "WAL")
                .map_err(fail)?;
            conn.pragma_update(None, "synchronous", "OFF")
                .map_err(fail)?;
            conn.execute_batch(
                "CREATE TABLE IF NOT EXISTS streams (
                     id INTEGER PRIMARY KEY, sync TEXT NOT NULL, stream TEXT NOT NULL,
                     UNIQUE (sync, stream)
                 );
                 CREATE TABLE IF NOT EXISTS runs (
                     id INTEGER PRIMARY KEY, run_id TEXT NOT NULL UNIQUE, at INTEGER NOT NULL
                 );
                 CREATE TABLE IF NOT EXISTS seen (
                     stream INTEGER NOT NULL, key TEXT NOT NULL, run INTEGER NOT NULL,
                     page INTEGER NOT NULL, version TEXT, outcome INTEGER NOT NULL,
                     PRIMARY KEY (stream, key, run, page)
                 ) WITHOUT ROWID;",
            )
            .map_err(fail)?;
            *slot = Some(ConnectionCell(conn));
        }
        match slot.as_mut() {
            Some(cell) => f(&mut cell.0).map_err(fail),
            None => Err(destination::Error::permanent("audit index unavailable")),
        }
    }

    /// Records what page `page` of `run` did to each of its records.
    #[allow(clippy::too_many_arguments)]
    pub fn record(
        &self,
        sync: &str,
        stream: &str,
        run: &str,
        page: u64,
        at: Timestamp,
        seen: &[Seen<'_>],
    ) -> Result<(), destination::Error> {
        if seen.is_empty() || !self.enabled {
            return Ok(());
        }
        self.with(|conn| {
            let tx = conn.transaction()?;
            tx.execute(
                "INSERT OR IGNORE INTO streams (sync, stream) VALUES (?1, ?2)",
                params![sync, stream],
            )?;
            let stream_id: i64 = tx.query_row(
                "SELECT id FROM streams WHERE sync = ?1 AND stream = ?2",
                params![sync, stream],
                |r| r.get(0),
            )?;
            let at = i64::try_from(at.0).unwrap_or(i64::MAX);
            // A run's time is its first page's; pruning goes run by run.
            tx.execute(
                "INSERT OR IGNORE INTO runs (run_id, at) VALUES (?1, ?2)",
                params![run, at],
            )?;
            let run_id: i64 =
                tx.query_row("SELECT id FROM runs WHERE run_id = ?1", params![run], |r| {
                    r.get(0)
                })?;
            {
                let mut insert = tx.prepare_cached(
                    "INSERT OR REPLACE INTO seen (stream, key, run, page, version, outcome)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                )?;
                for s in seen {
                    insert.execute(params![
                        stream_id,
                        s.key,
                        run_id,
                        page,
                        s.version,
                        s.outcome as i64
                    ])?;
                }
            }
            tx.commit()
        })
    }

    /// Every sighting of `key` in `stream` (and its backfills), oldest first.
    pub fn trace(
        &self,
        sync: &str,
        stream: &str,
        key: &str,
    ) -> Result<Vec<Sighting>, destination::Error> {
        self.with(|conn| {
            let mut stmt = conn.prepare(
                "SELECT runs.at, runs.run_id, seen.page, seen.version, seen.outcome
                 FROM seen JOIN streams ON streams.id = seen.stream
                 JOIN runs ON runs.id = seen.run
                 WHERE streams.sync = ?1 AND (streams.stream = ?2 OR streams.stream LIKE ?2 || '@%')
                   AND seen.key = ?3
                 ORDER BY runs.at, runs.run_id, seen.page",
            )?;
            let rows = stmt.query_map(params![sync, stream, key], |r| {
                Ok(Sighting {
                    at: Timestamp(r.get(0)?).to_string(),
                    run_id: r.get(1)?,
                    page: r.get(2)?,
                    version: r.get(3)?,
                    outcome: Outcome::from_code(r.get(4)?).name().to_string(),
                })
            })?;
            rows.collect()
        })
    }

    /// The `(sync, stream)` pairs in the index.
    pub fn streams(&self) -> Result<Vec<(String, String)>, destination::Error> {
        if !self.path.exists() {
            return Ok(Vec::new());
        }
        self.with(|conn| {
            let mut stmt =
                conn.prepare("SELECT sync, stream FROM streams ORDER BY sync, stream")?;
            let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
            rows.collect()
        })
    }

    /// Forgets sightings older than `cutoff`; how many.
    pub fn prune(&self, cutoff: Timestamp) -> Result<usize, destination::Error> {
        if !self.path.exists() {
            return Ok(0);
        }
        let cutoff = i64::try_from(cutoff.0).unwrap_or(i64::MAX);
        self.with(|conn| {
            let tx = conn.transaction()?;
            let gone = tx.execute(
                "DELETE FROM seen WHERE run IN (SELECT id FROM runs WHERE at < ?1)",
                params![cutoff],
            )?;
            tx.execute("DELETE FROM runs WHERE at < ?1", params![cutoff])?;
            tx.commit()?;
            Ok(gone)
        })
    }
}
