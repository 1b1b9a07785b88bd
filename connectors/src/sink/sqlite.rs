//! The SQLite destination: versioned upserts, dead letters, and the stream's checkpoint in
//! the same transaction as its batch.
//!
//! Tables: one per stream (`key` primary key, `version`, the raw `record` JSON, the run and
//! page that wrote it, `deleted_at` once a deletions feed removed it, then the declared
//! columns), `_waymark_checkpoints` (one row per sync and stream: checkpoint and the
//! acknowledgement of the batch that committed it) and `_waymark_tombstones` (hard
//! deletions). What a batch does is decided by [`crate::sink::plan::plan`]; dead letters go to
//! the state directory.

use std::path::Path;
use std::sync::Arc;

use futures_util::future::BoxFuture;
use rusqlite::types::Value as SqlValue;
use rusqlite::{params, params_from_iter, Connection, OptionalExtension, TransactionBehavior};
use waymark_engine::destination::{self, Batch, Destination, Preparer};
use waymark_engine::{Checkpoint, WriteAck};

use crate::sink::columns::Cell;
use crate::sink::plan::{plan, replayed, Binding, Identified, Op, Stored};
use crate::source::Parents;

/// One stream's table in a SQLite database. Writes run on a blocking thread, so the
/// driver fetches the next page meanwhile.
pub struct SqliteDestination {
    /// `None` only while a write holds it on its thread (or after that thread died).
    table: Option<Table>,
    prepare: Preparer<Arc<Identified>>,
}

/// The connection and the rules of one stream's table.
struct Table {
    conn: Connection,
    binding: Binding,
}

fn lost() -> destination::Error {
    destination::Error("the SQLite connection was lost with a failed write".into())
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
             );"
        ))
        .map_err(fail("creating tables"))?;
        // Schema evolution: columns declared since the table was made (and `deleted_at`,
        // which tables from before deletions feeds lack) are added.
        let existing: Vec<String> = conn
            .prepare(&format!("SELECT name FROM pragma_table_info('{table}')"))
            .and_then(|mut stmt| {
                stmt.query_map([], |row| row.get::<_, String>(0))?
                    .collect::<Result<_, _>>()
            })
            .map_err(fail("reading the table's columns"))?;
        let wanted = std::iter::once(("deleted_at".to_string(), "TEXT")).chain(
            binding
                .columns
                .iter()
                .map(|c| (c.name.clone(), c.kind.sqlite())),
        );
        for (name, kind) in wanted {
            if !existing.contains(&name) {
                conn.execute_batch(&format!(
                    "ALTER TABLE \"{table}\" ADD COLUMN \"{name}\" {kind}"
                ))
                .map_err(fail("adding a column"))?;
                tracing::info!("{table}: added column {name} ({kind})");
            }
        }
        Ok(SqliteDestination {
            prepare: binding.preparer(),
            table: Some(Table { conn, binding }),
        })
    }

    fn table(&self) -> Result<&Table, destination::Error> {
        self.table.as_ref().ok_or_else(lost)
    }

    /// Writes a batch on the calling thread (the unit tests).
    #[cfg(test)]
    fn write_batch(
        &mut self,
        batch: Batch<'_, Arc<Identified>>,
    ) -> Result<WriteAck, destination::Error> {
        self.table.as_mut().ok_or_else(lost)?.write_batch(batch)
    }

    /// Every row of the stream's table, as `each(key, stored)`, streamed.
    pub fn scan(
        &self,
        each: &mut dyn FnMut(String, Stored) -> Result<(), destination::Error>,
    ) -> Result<(), destination::Error> {
        self.table()?.scan(each)
    }
}

impl Table {
    fn write_batch(
        &mut self,
        batch: Batch<'_, Arc<Identified>>,
    ) -> Result<WriteAck, destination::Error> {
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
                return replayed(&ack);
            }
        }
        let table = &b.table;
        let plan = {
            let mut select = tx
                .prepare_cached(&format!(
                    "SELECT version, record, deleted_at FROM \"{table}\" WHERE key = ?1"
                ))
                .map_err(fail("prepare"))?;
            let mut remembered = tx
                .prepare_cached(
                    "SELECT version FROM _waymark_tombstones WHERE tbl = ?1 AND key = ?2",
                )
                .map_err(fail("prepare"))?;
            plan(b, &run, batch.page, batch.records, |key| {
                let row = select
                    .query_row(params![key], |row| {
                        Ok(Stored {
                            version: row.get(0)?,
                            record: Some(row.get(1)?),
                            deleted: row.get::<_, Option<String>>(2)?.is_some(),
                        })
                    })
                    .optional()
                    .map_err(fail("lookup"))?;
                match row {
                    None if b.hard_delete => remembered
                        .query_row(params![table, key], |row| {
                            Ok(Stored {
                                version: row.get(0)?,
                                deleted: true,
                                record: None,
                            })
                        })
                        .optional()
                        .map_err(fail("lookup")),
                    row => Ok(row),
                }
            })?
        };
        b.note(&run, batch.page, batch.checkpoint.at, &plan)?;
        {
            let names: String = b
                .columns
                .iter()
                .map(|c| format!(", \"{}\"", c.name))
                .collect();
            let values: String = (0..b.columns.iter().len())
                .map(|i| format!(", ?{}", i + 6))
                .collect();
            let updates: String = b
                .columns
                .iter()
                .map(|c| format!(", \"{0}\" = excluded.\"{0}\"", c.name))
                .collect();
            let mut upsert = tx
                .prepare_cached(&format!(
                    "INSERT INTO \"{table}\" (key, version, record, run_id, page, deleted_at{names})
                     VALUES (?1, ?2, ?3, ?4, ?5, NULL{values})
                     ON CONFLICT(key) DO UPDATE SET version = excluded.version,
                       record = excluded.record, run_id = excluded.run_id, page = excluded.page,
                       deleted_at = NULL{updates}"
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
            for op in &plan.ops {
                match op {
                    Op::Put {
                        key,
                        version,
                        record,
                        cells,
                        revived,
                    } => {
                        if *revived {
                            forget
                                .execute(params![table, key])
                                .map_err(fail("upsert"))?;
                        }
                        let fixed = [
                            SqlValue::Text(key.clone()),
                            version.clone().map_or(SqlValue::Null, SqlValue::Text),
                            SqlValue::Text(record.to_string()),
                            SqlValue::Text(run.clone()),
                            SqlValue::Integer(batch.page as i64),
                        ];
                        let all = fixed.into_iter().chain(cells.iter().map(sql_value));
                        upsert
                            .execute(params_from_iter(all))
                            .map_err(fail("upsert"))?;
                    }
                    Op::Tombstone {
                        key,
                        version,
                        record,
                    } => {
                        tombstone
                            .execute(params![key, version, record, run, batch.page])
                            .map_err(fail("delete"))?;
                    }
                    Op::Remove { key, version } => {
                        remove.execute(params![key]).map_err(fail("delete"))?;
                        remember
                            .execute(params![table, key, version, run])
                            .map_err(fail("delete"))?;
                    }
                }
            }
        }
        let ack = plan.ack;
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

impl Table {
    fn scan(
        &self,
        each: &mut dyn FnMut(String, Stored) -> Result<(), destination::Error>,
    ) -> Result<(), destination::Error> {
        let mut stmt = self
            .conn
            .prepare(&format!(
                "SELECT key, version, record, deleted_at IS NOT NULL FROM \"{}\"",
                self.binding.table
            ))
            .map_err(fail("scanning the table"))?;
        let mut rows = stmt.query([]).map_err(fail("scanning the table"))?;
        while let Some(row) = rows.next().map_err(fail("scanning the table"))? {
            let read = |row: &rusqlite::Row<'_>| -> rusqlite::Result<(String, Stored)> {
                Ok((
                    row.get(0)?,
                    Stored {
                        version: row.get(1)?,
                        record: Some(row.get(2)?),
                        deleted: row.get(3)?,
                    },
                ))
            };
            let (key, stored) = read(row).map_err(fail("scanning the table"))?;
            each(key, stored)?;
        }
        Ok(())
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

    fn read_after(
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

    fn read(&self, key: &str) -> Result<Option<serde_json::Value>, destination::Error> {
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

impl Parents for ParentRecords {
    fn after<'a>(
        &'a self,
        key: Option<&'a str>,
    ) -> BoxFuture<'a, Result<Option<(String, serde_json::Value)>, String>> {
        Box::pin(std::future::ready(
            self.read_after(key).map_err(|e| e.to_string()),
        ))
    }

    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<serde_json::Value>, String>> {
        Box::pin(std::future::ready(
            self.read(key).map_err(|e| e.to_string()),
        ))
    }
}

fn sql_value(cell: &Cell) -> SqlValue {
    match cell {
        Cell::Null => SqlValue::Null,
        Cell::Text(t) => SqlValue::Text(t.clone()),
        Cell::Integer(i) => SqlValue::Integer(*i),
        Cell::Real(r) => SqlValue::Real(*r),
        Cell::Boolean(b) => SqlValue::Integer(i64::from(*b)),
    }
}

impl Destination for SqliteDestination {
    type Page = Arc<Identified>;

    fn preparer(&self) -> Preparer<Arc<Identified>> {
        self.prepare.clone()
    }

    async fn write(
        &mut self,
        batch: Batch<'_, Arc<Identified>>,
    ) -> Result<WriteAck, destination::Error> {
        let mut table = self.table.take().ok_or_else(lost)?;
        // On a blocking thread, which shares the page's records.
        let (run_id, page) = (batch.run_id, batch.page);
        let records = batch.records.clone();
        let checkpoint = batch.checkpoint.clone();
        let done = tokio::task::spawn_blocking(move || {
            let ack = table.write_batch(Batch {
                run_id,
                page,
                records: &records,
                checkpoint: &checkpoint,
            });
            (table, ack)
        })
        .await;
        match done {
            Ok((table, ack)) => {
                self.table = Some(table);
                ack
            }
            Err(e) => Err(destination::Error(format!("the SQLite write failed: {e}"))),
        }
    }

    async fn checkpoint(&mut self) -> Result<Option<Checkpoint>, destination::Error> {
        let t = self.table()?;
        let stored: Option<String> = t
            .conn
            .query_row(
                "SELECT checkpoint FROM _waymark_checkpoints WHERE sync = ?1 AND stream = ?2",
                params![t.binding.sync, t.binding.stream],
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
    use crate::config::RecordFilter;
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
            columns: crate::sink::columns::Columns::default(),
            dead_letters: crate::state::dead_letters::DeadLetters::new(
                &std::env::temp_dir(),
                "shop",
                stream,
            ),
            audit: crate::state::audit::Audit::new(&std::env::temp_dir().join(format!(
                "waymark-sqlite-audit-{}-{stream}-{hard}",
                std::process::id()
            ))),
            busy_timeout: std::time::Duration::from_millis(100),
            repair: false,
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
            let d = match deletes {
                true => &mut self.deletions,
                false => &mut self.orders,
            };
            let records = d.preparer()(records);
            d.write_batch(Batch {
                run_id: self.run,
                page: self.page,
                records: &records,
                checkpoint: &checkpoint,
            })
        }

        fn rows(&self) -> Vec<(String, String, Option<String>)> {
            let Ok(table) = self.orders.table() else {
                return Vec::new();
            };
            let mut stmt = match table
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
            .table()?
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
