//! The SQLite destination: versioned upserts, dead letters, and the stream's checkpoint in
//! the same transaction as its batch.
//!
//! Tables: one per stream (`key` primary key, `version`, the raw `record` JSON, the run and
//! page that wrote it, `deleted_at` once a deletions feed removed it), `_waymark_checkpoints`
//! (one row per sync and stream: checkpoint and the acknowledgement of the batch that
//! committed it) and `_waymark_dead_letters`.

use std::cmp::Ordering;
use std::path::Path;
use std::time::Duration;

use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use waymark_engine::destination::{self, Batch, Destination};
use waymark_engine::{Checkpoint, WriteAck};

use crate::record::{compare_versions, key_of, lookup, scalar};
use crate::workflow::{DeleteMode, RecordFilter, StreamSection, Workflow};

/// Where one stream's records go: its table, key, version, and whether its records are
/// deletions of another stream's records.
#[derive(Clone, Debug)]
pub struct Binding {
    /// The sync; with `stream` it names the checkpoint row.
    pub sync: String,
    /// The stream.
    pub stream: String,
    /// The table written (the stream's own, or the one a deletions feed deletes from).
    pub table: String,
    /// Dotted paths of the record key (several: a composite key, stored as a JSON array).
    pub primary_key: Vec<String>,
    /// Dotted path of the record version (for a deletions feed: the deletion time).
    pub version_field: Option<String>,
    /// Records mark rows of `table` deleted instead of being stored.
    pub deletes: bool,
    /// Records matching this are deletions too.
    pub deleted_when: Option<RecordFilter>,
    /// Deletions remove rows (remembered in `_waymark_tombstones`) instead of marking them.
    pub hard_delete: bool,
    /// How long to wait for a database locked by another process.
    pub busy_timeout: Duration,
}

impl Binding {
    /// The binding of `stream` in `workflow`.
    pub fn new(workflow: &Workflow, stream: &StreamSection) -> Self {
        Binding {
            sync: workflow.name().to_string(),
            stream: stream.name.clone(),
            table: stream
                .deletes
                .clone()
                .unwrap_or_else(|| stream.name.clone()),
            primary_key: stream.primary_key.paths(),
            version_field: stream.cursor_field.clone(),
            deletes: stream.deletes.is_some(),
            deleted_when: stream.deleted_when.clone(),
            hard_delete: workflow.file().destination.delete_mode == DeleteMode::Hard,
            busy_timeout: workflow.file().destination.busy_timeout.0,
        }
    }
}

/// One stream's table in a SQLite database.
pub struct SqliteDestination {
    conn: Connection,
    binding: Binding,
}

fn fail(context: &str) -> impl Fn(rusqlite::Error) -> destination::Error + '_ {
    move |e| destination::Error(format!("SQLite {context}: {e}"))
}

impl SqliteDestination {
    /// Opens (creating) the database at `path` and the stream's table.
    pub fn open(path: &Path, binding: Binding) -> Result<Self, destination::Error> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| destination::Error(format!("{}: {e}", dir.display())))?;
        }
        let conn = Connection::open(path)
            .map_err(|e| destination::Error(format!("SQLite {}: {e}", path.display())))?;
        conn.busy_timeout(binding.busy_timeout)
            .map_err(fail("busy timeout"))?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(fail("WAL mode"))?;
        // FULL: a commit is on disk before we journal past it, so the checkpoint is never
        // ahead of a durable write, even on power loss.
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(fail("synchronous"))?;
        let table = &binding.table;
        conn.execute_batch(&format!(
            "CREATE TABLE IF NOT EXISTS \"{table}\" (
                 key TEXT PRIMARY KEY NOT NULL,
                 version TEXT,
                 record TEXT NOT NULL,
                 run_id TEXT NOT NULL,
                 page INTEGER NOT NULL,
                 deleted_at TEXT
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
             CREATE TABLE IF NOT EXISTS _waymark_tombstones (
                 tbl TEXT NOT NULL,
                 key TEXT NOT NULL,
                 version TEXT,
                 run_id TEXT NOT NULL,
                 PRIMARY KEY (tbl, key)
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
        // Tables created before deletions feeds existed lack `deleted_at`.
        let has_deleted_at: bool = conn
            .query_row(
                &format!(
                    "SELECT count(*) FROM pragma_table_info('{table}') WHERE name = 'deleted_at'"
                ),
                [],
                |row| row.get(0),
            )
            .map_err(fail("reading the table's columns"))?;
        if !has_deleted_at {
            conn.execute_batch(&format!(
                "ALTER TABLE \"{table}\" ADD COLUMN deleted_at TEXT"
            ))
            .map_err(fail("adding column deleted_at"))?;
        }
        Ok(SqliteDestination { conn, binding })
    }

    fn write_batch(&mut self, batch: Batch<'_>) -> Result<WriteAck, destination::Error> {
        let b = &self.binding;
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(fail("begin"))?;
        let run = batch.run_id.to_string();
        let prior = tx
            .query_row(
                "SELECT run_id, page, ack FROM _waymark_checkpoints WHERE sync = ?1 AND stream = ?2",
                params![b.sync, b.stream],
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
            let table = &b.table;
            let mut select = tx
                .prepare_cached(&format!(
                    "SELECT version, record, deleted_at FROM \"{table}\" WHERE key = ?1"
                ))
                .map_err(fail("prepare"))?;
            let mut upsert = tx
                .prepare_cached(&format!(
                    "INSERT INTO \"{table}\" (key, version, record, run_id, page, deleted_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, NULL)
                     ON CONFLICT(key) DO UPDATE SET version = excluded.version,
                       record = excluded.record, run_id = excluded.run_id, page = excluded.page,
                       deleted_at = NULL"
                ))
                .map_err(fail("prepare"))?;
            // A deletion keeps the last record it saw (for audit) and stores the deletion
            // time as the version, so an older copy read later is stale, not a resurrection.
            let mut tombstone = tx
                .prepare_cached(&format!(
                    "INSERT INTO \"{table}\" (key, version, record, run_id, page, deleted_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?2)
                     ON CONFLICT(key) DO UPDATE SET version = excluded.version,
                       run_id = excluded.run_id, page = excluded.page,
                       deleted_at = excluded.deleted_at"
                ))
                .map_err(fail("prepare"))?;
            let mut dead = tx
                .prepare_cached(
                    "INSERT INTO _waymark_dead_letters (sync, stream, run_id, page, record_key, reason, record)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                )
                .map_err(fail("prepare"))?;
            let mut remembered = tx
                .prepare_cached(
                    "SELECT version FROM _waymark_tombstones WHERE tbl = ?1 AND key = ?2",
                )
                .map_err(fail("prepare"))?;
            let mut remember = tx
                .prepare_cached(
                    "INSERT INTO _waymark_tombstones (tbl, key, version, run_id) VALUES (?1, ?2, ?3, ?4)
                     ON CONFLICT(tbl, key) DO UPDATE SET version = excluded.version,
                       run_id = excluded.run_id",
                )
                .map_err(fail("prepare"))?;
            let mut forget = tx
                .prepare_cached("DELETE FROM _waymark_tombstones WHERE tbl = ?1 AND key = ?2")
                .map_err(fail("prepare"))?;
            let mut remove = tx
                .prepare_cached(&format!("DELETE FROM \"{table}\" WHERE key = ?1"))
                .map_err(fail("prepare"))?;
            for record in batch.records {
                let (key, version, flagged) = match identify(record, b) {
                    Ok(found) => found,
                    Err((key, reason)) => {
                        dead.execute(params![
                            b.sync, b.stream, run, batch.page, key, reason, record
                        ])
                        .map_err(fail("dead letter"))?;
                        ack.dead_lettered += 1;
                        continue;
                    }
                };
                let row: Option<(Option<String>, String, Option<String>)> = select
                    .query_row(params![key], |row| {
                        Ok((row.get(0)?, row.get(1)?, row.get(2)?))
                    })
                    .optional()
                    .map_err(fail("lookup"))?;
                // What is stored: (version, deleted, record); a hard-deleted row is only a
                // remembered version.
                let stored: Option<(Option<String>, bool, Option<String>)> = match row {
                    Some((v, record, deleted_at)) => Some((v, deleted_at.is_some(), Some(record))),
                    None if b.hard_delete => remembered
                        .query_row(params![table, key], |row| row.get::<_, Option<String>>(0))
                        .optional()
                        .map_err(fail("lookup"))?
                        .map(|v| (v, true, None)),
                    None => None,
                };
                let order = match (stored.as_ref().and_then(|s| s.0.as_ref()), &version) {
                    (Some(old), Some(new)) => compare_versions(new, old),
                    _ => Ordering::Equal,
                };
                if b.deletes || flagged {
                    match stored {
                        Some((_, true, _)) if order != Ordering::Greater => ack.unchanged += 1,
                        Some(_) if order == Ordering::Less => ack.skipped_stale += 1,
                        _ if b.hard_delete => {
                            remove.execute(params![key]).map_err(fail("delete"))?;
                            remember
                                .execute(params![table, key, version, run])
                                .map_err(fail("delete"))?;
                            ack.deleted += 1;
                        }
                        _ => {
                            tombstone
                                .execute(params![key, version, record, run, batch.page])
                                .map_err(fail("delete"))?;
                            ack.deleted += 1;
                        }
                    }
                    continue;
                }
                match stored {
                    None => ack.inserted += 1,
                    Some((_, deleted, old_record)) => match order {
                        Ordering::Less => {
                            ack.skipped_stale += 1;
                            continue;
                        }
                        Ordering::Equal if !deleted && old_record.as_deref() == Some(record) => {
                            ack.unchanged += 1;
                            continue;
                        }
                        // Back after a hard delete (an id reused, or undeleted).
                        _ if deleted && old_record.is_none() => {
                            forget
                                .execute(params![table, key])
                                .map_err(fail("upsert"))?;
                            ack.inserted += 1;
                        }
                        _ => ack.updated += 1,
                    },
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
            params![b.sync, b.stream, run, batch.page, checkpoint, stored],
        )
        .map_err(fail("storing the checkpoint"))?;
        tx.commit().map_err(fail("commit"))?;
        Ok(ack)
    }
}

/// The records of a parent stream, read from its table in key order, for a child stream.
/// Only the current parent's key is kept, however many parents there are.
pub struct ParentRecords {
    /// Behind a mutex so a child stream's source stays `Sync` across awaits.
    conn: std::sync::Mutex<Connection>,
    table: String,
}

impl ParentRecords {
    /// Opens the parent stream's table read-only.
    pub fn open(path: &Path, table: &str) -> Result<Self, destination::Error> {
        let conn = Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .map_err(|e| {
                destination::Error(format!(
                    "parent stream `{table}`: {} cannot be read ({e}); run the parent stream first",
                    path.display()
                ))
            })?;
        let exists: bool = conn
            .query_row(
                "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = ?1",
                params![table],
                |row| row.get(0),
            )
            .map_err(fail("reading the schema"))?;
        if !exists {
            return Err(destination::Error(format!(
                "parent stream `{table}` has no table in {} yet; run the parent stream first",
                path.display()
            )));
        }
        Ok(ParentRecords {
            conn: std::sync::Mutex::new(conn),
            table: table.to_string(),
        })
    }

    /// The first live parent after `key` (from the first one when `None`), in key order.
    pub fn after(
        &self,
        key: Option<&str>,
    ) -> Result<Option<(String, serde_json::Value)>, destination::Error> {
        let conn = self.conn.lock().unwrap_or_else(|e| e.into_inner());
        let row: Option<(String, String)> = conn
            .prepare_cached(&format!(
                "SELECT key, record FROM \"{}\" WHERE deleted_at IS NULL AND (?1 IS NULL OR key > ?1)
                 ORDER BY key LIMIT 1",
                self.table
            ))
            .and_then(|mut stmt| {
                stmt.query_row(params![key], |r| Ok((r.get(0)?, r.get(1)?)))
                    .optional()
            })
            .map_err(fail("reading parent records"))?;
        row.map(|(key, record)| {
            serde_json::from_str(&record)
                .map(|value| (key, value))
                .map_err(|e| destination::Error(format!("parent record unreadable: {e}")))
        })
        .transpose()
    }

    /// The live parent with `key`, if it is still there.
    pub fn get(&self, key: &str) -> Result<Option<serde_json::Value>, destination::Error> {
        let conn = self.conn.lock().unwrap_or_else(|e| e.into_inner());
        let record: Option<String> = conn
            .prepare_cached(&format!(
                "SELECT record FROM \"{}\" WHERE key = ?1 AND deleted_at IS NULL",
                self.table
            ))
            .and_then(|mut stmt| stmt.query_row(params![key], |r| r.get(0)).optional())
            .map_err(fail("reading a parent record"))?;
        record
            .map(|r| serde_json::from_str(&r))
            .transpose()
            .map_err(|e| destination::Error(format!("parent record unreadable: {e}")))
    }
}

/// What the destination needs of a record: key, version, and whether it is flagged
/// deleted (`deleted_when`).
type Identity = (String, Option<String>, bool);

/// The record's identity, or its key (if any) and why it is dead-lettered.
fn identify(record: &str, b: &Binding) -> Result<Identity, (Option<String>, String)> {
    let value: serde_json::Value =
        serde_json::from_str(record).map_err(|e| (None, format!("not JSON: {e}")))?;
    let key = key_of(&value, &b.primary_key).ok_or_else(|| {
        (
            None,
            format!(
                "primary key `{}` is missing or not a scalar",
                b.primary_key.join(", ")
            ),
        )
    })?;
    let version = match &b.version_field {
        None => None,
        Some(field) => Some(lookup(&value, field).and_then(scalar).ok_or_else(|| {
            (
                Some(key.clone()),
                format!("version field `{field}` is missing or not a scalar"),
            )
        })?),
    };
    let flagged = b.deleted_when.as_ref().is_some_and(|f| {
        lookup(&value, &f.path)
            .and_then(scalar)
            .is_some_and(|v| f.one_of.contains(&v))
    });
    Ok((key, version, flagged))
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
                params![self.binding.sync, self.binding.stream],
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

#[cfg(test)]
mod tests {
    use super::*;
    use waymark_engine::{RunId, Timestamp, Window};

    struct Db {
        _dir: std::path::PathBuf,
        orders: SqliteDestination,
        deletions: SqliteDestination,
        run: RunId,
        page: u64,
    }

    fn binding(stream: &str, deletes: bool, hard: bool) -> Binding {
        Binding {
            deleted_when: Some(RecordFilter {
                path: "status".into(),
                one_of: vec!["gone".into()],
            }),
            hard_delete: hard,
            sync: "shop".into(),
            stream: stream.into(),
            table: "orders".into(),
            primary_key: vec!["id".into()],
            version_field: Some(if deletes { "deleted_at" } else { "v" }.into()),
            deletes,
            busy_timeout: Duration::from_millis(100),
        }
    }

    impl Db {
        fn new(hard: bool) -> Result<Db, destination::Error> {
            let dir = std::env::temp_dir().join(format!(
                "waymark-sqlite-{}-{:?}-{hard}",
                std::process::id(),
                std::thread::current().id()
            ));
            let _ = std::fs::remove_dir_all(&dir);
            let path = dir.join("t.db");
            Ok(Db {
                orders: SqliteDestination::open(&path, binding("orders", false, hard))?,
                deletions: SqliteDestination::open(&path, binding("orders_deleted", true, hard))?,
                _dir: dir,
                run: RunId::new(),
                page: 0,
            })
        }

        fn write(
            &mut self,
            deletes: bool,
            records: &[&str],
        ) -> Result<WriteAck, destination::Error> {
            self.page += 1;
            let records: Vec<String> = records.iter().map(|r| r.to_string()).collect();
            let checkpoint = Checkpoint {
                run_id: self.run,
                window: Window {
                    start: None,
                    end: Timestamp(0),
                },
                cursor: None,
                page: self.page,
                records: 0,
                complete: false,
                at: Timestamp(0),
            };
            let batch = Batch {
                run_id: self.run,
                page: self.page,
                records: &records,
                checkpoint: &checkpoint,
            };
            if deletes {
                self.deletions.write_batch(batch)
            } else {
                self.orders.write_batch(batch)
            }
        }

        fn rows(&self) -> Vec<(String, String, Option<String>)> {
            let mut stmt = match self
                .orders
                .conn
                .prepare("SELECT key, version, deleted_at FROM orders ORDER BY key")
            {
                Ok(s) => s,
                Err(_) => return Vec::new(),
            };
            stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                .map(|rows| rows.filter_map(Result::ok).collect())
                .unwrap_or_default()
        }
    }

    /// The same story in both modes; `rows` differ only in what a deletion leaves.
    fn deletion_story(hard: bool) -> Result<Db, destination::Error> {
        let mut db = Db::new(hard)?;
        let ack = db.write(false, &[r#"{"id":1,"v":"10"}"#, r#"{"id":2,"v":"10"}"#])?;
        assert_eq!((ack.inserted, ack.deleted), (2, 0));
        // 1 deleted at 20; 2's deletion at 5 is older than the stored version 10: stale.
        // 3 was never seen: its deletion is remembered.
        let ack = db.write(
            true,
            &[
                r#"{"id":1,"deleted_at":"20"}"#,
                r#"{"id":2,"deleted_at":"5"}"#,
                r#"{"id":3,"deleted_at":"20"}"#,
            ],
        )?;
        assert_eq!((ack.deleted, ack.skipped_stale), (2, 1));
        // The same deletion again changes nothing.
        let ack = db.write(true, &[r#"{"id":1,"deleted_at":"20"}"#])?;
        assert_eq!((ack.deleted, ack.unchanged), (0, 1));
        // An older copy of 1 read late (overlap window) does not bring it back...
        let ack = db.write(false, &[r#"{"id":1,"v":"15"}"#])?;
        assert_eq!(ack.skipped_stale, 1);
        // ...a newer version (the id was reused) does.
        let ack = db.write(false, &[r#"{"id":3,"v":"30"}"#])?;
        assert_eq!(ack.inserted + ack.updated, 1);
        // A record flagged deleted in the stream itself (`deleted_when`) is a deletion.
        let ack = db.write(false, &[r#"{"id":2,"v":"40","status":"gone"}"#])?;
        assert_eq!(ack.deleted, 1);
        Ok(db)
    }

    #[test]
    fn soft_deletions_respect_versions_both_ways() -> Result<(), destination::Error> {
        let db = deletion_story(false)?;
        assert_eq!(
            db.rows(),
            vec![
                ("1".into(), "20".into(), Some("20".into())),
                ("2".into(), "40".into(), Some("40".into())),
                ("3".into(), "30".into(), None),
            ]
        );
        Ok(())
    }

    #[test]
    fn hard_deletions_remove_rows_and_remember_versions() -> Result<(), destination::Error> {
        let db = deletion_story(true)?;
        assert_eq!(db.rows(), vec![("3".into(), "30".into(), None)]);
        let remembered: Vec<(String, String)> = db
            .orders
            .conn
            .prepare("SELECT key, version FROM _waymark_tombstones ORDER BY key")
            .and_then(|mut s| {
                s.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
                    .collect::<Result<_, _>>()
            })
            .unwrap_or_default();
        assert_eq!(
            remembered,
            vec![("1".into(), "20".into()), ("2".into(), "40".into())]
        );
        Ok(())
    }
}
