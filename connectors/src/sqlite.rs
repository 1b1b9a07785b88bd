//! The SQLite destination: versioned upserts, dead letters, and the stream's checkpoint in
//! the same transaction as its batch.
//!
//! Tables: one per stream (`key` primary key, `version`, the raw `record` JSON, the run and
//! page that wrote it), `_waymark_checkpoints` (one row per sync and stream: checkpoint and
//! the acknowledgement of the batch that committed it) and `_waymark_dead_letters`.

use std::cmp::Ordering;
use std::path::Path;
use std::time::Duration;

use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use waymark_engine::destination::{self, Batch, Destination};
use waymark_engine::{Checkpoint, WriteAck};

use crate::record::{compare_versions, lookup, scalar};

/// One stream's table in a SQLite database.
pub struct SqliteDestination {
    conn: Connection,
    sync: String,
    stream: String,
    primary_key: String,
    version_field: Option<String>,
}

fn fail(context: &str) -> impl Fn(rusqlite::Error) -> destination::Error + '_ {
    move |e| destination::Error(format!("SQLite {context}: {e}"))
}

impl SqliteDestination {
    /// Opens (creating) the database at `path` and the stream's table.
    pub fn open(
        path: &Path,
        sync: &str,
        stream: &str,
        primary_key: &str,
        version_field: Option<&str>,
    ) -> Result<Self, destination::Error> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| destination::Error(format!("{}: {e}", dir.display())))?;
        }
        let conn = Connection::open(path)
            .map_err(|e| destination::Error(format!("SQLite {}: {e}", path.display())))?;
        conn.busy_timeout(Duration::from_secs(10))
            .map_err(fail("busy timeout"))?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(fail("WAL mode"))?;
        // FULL: a commit is on disk before we journal past it, so the checkpoint is never
        // ahead of a durable write, even on power loss.
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(fail("synchronous"))?;
        conn.execute_batch(&format!(
            "CREATE TABLE IF NOT EXISTS \"{stream}\" (
                 key TEXT PRIMARY KEY NOT NULL,
                 version TEXT,
                 record TEXT NOT NULL,
                 run_id TEXT NOT NULL,
                 page INTEGER NOT NULL
             );
             CREATE TABLE IF NOT EXISTS _waymark_checkpoints (
                 sync TEXT NOT NULL,
                 stream TEXT NOT NULL,
                 run_id TEXT NOT NULL,
                 page INTEGER NOT NULL,
                 checkpoint TEXT NOT NULL,
                 ack TEXT NOT NULL,
                 PRIMARY KEY (sync, stream)
             );
             CREATE TABLE IF NOT EXISTS _waymark_dead_letters (
                 id INTEGER PRIMARY KEY,
                 sync TEXT NOT NULL,
                 stream TEXT NOT NULL,
                 run_id TEXT NOT NULL,
                 page INTEGER NOT NULL,
                 record_key TEXT,
                 reason TEXT NOT NULL,
                 record TEXT NOT NULL
             );"
        ))
        .map_err(fail("creating tables"))?;
        Ok(SqliteDestination {
            conn,
            sync: sync.to_string(),
            stream: stream.to_string(),
            primary_key: primary_key.to_string(),
            version_field: version_field.map(str::to_string),
        })
    }

    fn write_batch(&mut self, batch: Batch<'_>) -> Result<WriteAck, destination::Error> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(fail("begin"))?;
        let run = batch.run_id.to_string();
        let prior = tx
            .query_row(
                "SELECT run_id, page, ack FROM _waymark_checkpoints WHERE sync = ?1 AND stream = ?2",
                params![self.sync, self.stream],
                |row| Ok((row.get::<_, String>(0)?, row.get::<_, u64>(1)?, row.get::<_, String>(2)?)),
            )
            .optional()
            .map_err(fail("reading the checkpoint"))?;
        if let Some((prior_run, prior_page, ack)) = prior {
            if prior_run == run && prior_page >= batch.page {
                let stored: WriteAck = serde_json::from_str(&ack).map_err(|e| {
                    destination::Error(format!("stored acknowledgement unreadable: {e}"))
                })?;
                return Ok(WriteAck {
                    replayed: true,
                    ..stored
                });
            }
        }
        let mut ack = WriteAck::default();
        {
            let mut select = tx
                .prepare_cached(&format!(
                    "SELECT version, record FROM \"{}\" WHERE key = ?1",
                    self.stream
                ))
                .map_err(fail("prepare"))?;
            let mut upsert = tx
                .prepare_cached(&format!(
                    "INSERT INTO \"{}\" (key, version, record, run_id, page) VALUES (?1, ?2, ?3, ?4, ?5)
                     ON CONFLICT(key) DO UPDATE SET version = excluded.version, record = excluded.record,
                       run_id = excluded.run_id, page = excluded.page",
                    self.stream
                ))
                .map_err(fail("prepare"))?;
            let mut dead = tx
                .prepare_cached(
                    "INSERT INTO _waymark_dead_letters (sync, stream, run_id, page, record_key, reason, record)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                )
                .map_err(fail("prepare"))?;
            for record in batch.records {
                let (key, version) =
                    match identify(record, &self.primary_key, self.version_field.as_deref()) {
                        Ok(found) => found,
                        Err((key, reason)) => {
                            dead.execute(params![
                                self.sync,
                                self.stream,
                                run,
                                batch.page,
                                key,
                                reason,
                                record
                            ])
                            .map_err(fail("dead letter"))?;
                            ack.dead_lettered += 1;
                            continue;
                        }
                    };
                let existing: Option<(Option<String>, String)> = select
                    .query_row(params![key], |row| Ok((row.get(0)?, row.get(1)?)))
                    .optional()
                    .map_err(fail("lookup"))?;
                match existing {
                    None => ack.inserted += 1,
                    Some((old_version, old_record)) => {
                        let order = match (&old_version, &version) {
                            (Some(old), Some(new)) => compare_versions(new, old),
                            _ => Ordering::Equal,
                        };
                        match order {
                            Ordering::Less => {
                                ack.skipped_stale += 1;
                                continue;
                            }
                            Ordering::Equal if old_record == *record => {
                                ack.unchanged += 1;
                                continue;
                            }
                            Ordering::Equal | Ordering::Greater => ack.updated += 1,
                        }
                    }
                }
                upsert
                    .execute(params![key, version, record, run, batch.page])
                    .map_err(fail("upsert"))?;
            }
        }
        let checkpoint = serde_json::to_string(batch.checkpoint)
            .map_err(|e| destination::Error(format!("checkpoint encoding: {e}")))?;
        let stored = serde_json::to_string(&ack)
            .map_err(|e| destination::Error(format!("acknowledgement encoding: {e}")))?;
        tx.execute(
            "INSERT INTO _waymark_checkpoints (sync, stream, run_id, page, checkpoint, ack)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)
             ON CONFLICT(sync, stream) DO UPDATE SET run_id = excluded.run_id, page = excluded.page,
               checkpoint = excluded.checkpoint, ack = excluded.ack",
            params![self.sync, self.stream, run, batch.page, checkpoint, stored],
        )
        .map_err(fail("storing the checkpoint"))?;
        tx.commit().map_err(fail("commit"))?;
        Ok(ack)
    }
}

/// Key and version of a record, or the key (if any) and why it is dead-lettered.
fn identify(
    record: &str,
    primary_key: &str,
    version_field: Option<&str>,
) -> Result<(String, Option<String>), (Option<String>, String)> {
    let value: serde_json::Value =
        serde_json::from_str(record).map_err(|e| (None, format!("not JSON: {e}")))?;
    let key = lookup(&value, primary_key)
        .and_then(scalar)
        .ok_or_else(|| {
            (
                None,
                format!("primary key `{primary_key}` is missing or not a scalar"),
            )
        })?;
    let version = match version_field {
        None => None,
        Some(field) => Some(lookup(&value, field).and_then(scalar).ok_or_else(|| {
            (
                Some(key.clone()),
                format!("version field `{field}` is missing or not a scalar"),
            )
        })?),
    };
    Ok((key, version))
}

impl Destination for SqliteDestination {
    async fn write(&mut self, batch: Batch<'_>) -> Result<WriteAck, destination::Error> {
        self.write_batch(batch)
    }

    async fn checkpoint(&mut self) -> Result<Option<Checkpoint>, destination::Error> {
        let stored: Option<String> = self
            .conn
            .query_row(
                "SELECT checkpoint FROM _waymark_checkpoints WHERE sync = ?1 AND stream = ?2",
                params![self.sync, self.stream],
                |row| row.get(0),
            )
            .optional()
            .map_err(fail("reading the checkpoint"))?;
        stored
            .map(|c| serde_json::from_str(&c))
            .transpose()
            .map_err(|e| destination::Error(format!("stored checkpoint unreadable: {e}")))
    }
}
