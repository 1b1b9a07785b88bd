//! The SQLite destination: versioned upserts, dead letters, and the stream's checkpoint in
//! the same transaction as its batch.
//!
//! Tables: one per stream (`key` primary key, `version`, the raw `record` JSON, the run and
//! page that wrote it, `deleted_at` once a deletions feed removed it, then the declared
//! columns), `_waymark_checkpoints` (one row per sync and stream: checkpoint and the
//! acknowledgement of the batch that committed it) and `_waymark_tombstones` (hard
//! deletions). What a batch does is decided by [`crate::sink::plan::plan`]; dead letters go to
//! the state directory.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use rusqlite::types::{ToSqlOutput, Value as SqlValue, ValueRef};
use rusqlite::{params, Connection, OptionalExtension, ToSql};

use waymark_engine::destination;
use waymark_engine::{Checkpoint, Durability};

use crate::config::{FileKind, KeyType};
use crate::sink::columns::{Cell, Columns};
use crate::sink::plan::{Binding, Op, Plan, Stored};
use crate::sink::store::{commit, decode_checkpoint, encode, Commit, Store};
use crate::sink::upserting::Upserting;

/// One stream's table in a SQLite database (and the scope's row of
/// `_waymark_checkpoints`), written through [`Upserting`] on a blocking thread.
pub struct SqliteStore {
    conn: Connection,
    sync: String,
    scope: String,
    table: String,
    columns: Columns,
    hard_delete: bool,
}

/// The SQLite destination.
pub type SqliteDestination = Upserting<SqliteStore>;

/// A failure of `context`: transient when the database was busy or locked by another
/// connection past the busy timeout (nothing was written; a retry can succeed).
pub(super) fn fail(context: &str) -> impl Fn(rusqlite::Error) -> destination::Error + '_ {
    move |e| {
        let busy = matches!(
            e.sqlite_error_code(),
            Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
        );
        let message = format!("SQLite {context}: {e}");
        match busy {
            true => destination::Error::transient(message),
            false => destination::Error::permanent(message),
        }
    }
}

/// A page number as SQL stores it.
fn sql_page(page: u64) -> Result<i64, destination::Error> {
    i64::try_from(page)
        .map_err(|_| destination::Error::permanent(format!("page {page} is out of range")))
}

impl SqliteStore {
    /// Opens (creating) the database at `path` and the table of `binding`, waiting up to
    /// `busy_timeout` for a database locked by another process.
    pub fn open(
        path: &Path,
        binding: &Binding,
        busy_timeout: Duration,
        durability: Durability,
    ) -> Result<Self, destination::Error> {
        // SQLite writes `-journal` and `-wal` files beside the database: a device
        // (`/dev/null`), a directory or a FIFO is refused before anything is created there.
        // (Loading the workflow refuses it too; this is for a path that changed since.)
        if let Some(kind) = FileKind::at(path).filter(|k| *k != FileKind::Regular) {
            return Err(destination::Error::permanent(format!(
                "{} is {kind}, not a regular file: give the path of a SQLite database file",
                path.display()
            )));
        }
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| destination::Error::permanent(format!("{}: {e}", dir.display())))?;
        }
        let conn = Connection::open(path).map_err(|e| {
            destination::Error::permanent(format!("SQLite {}: {e}", path.display()))
        })?;
        conn.busy_timeout(busy_timeout)
            .map_err(fail("busy timeout"))?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(fail("WAL mode"))?;
        // FULL: a commit is on disk before we journal past it, so the checkpoint is never
        // ahead of a durable write, even on power loss. NORMAL (`process` durability): a
        // commit survives the process, and a power cut can take the last ones back, which a
        // run then finds by comparing checkpoints (the journal's is never trusted past this
        // database's own).
        let synchronous = match durability {
            Durability::PowerLoss => "FULL",
            Durability::Process => "NORMAL",
        };
        conn.pragma_update(None, "synchronous", synchronous)
            .map_err(fail("synchronous"))?;
        let table = &binding.table;
        // An integer key is the row id itself: no index beside the rows to keep in step.
        let key = match binding.key_type {
            KeyType::Text => "TEXT",
            KeyType::Integer => "INTEGER",
        };
        conn.execute_batch(&format!(
            "CREATE TABLE IF NOT EXISTS \"{table}\" (
                 key {key} PRIMARY KEY NOT NULL,
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
        let existing: Vec<(String, String)> = conn
            .prepare(&format!(
                "SELECT name, type FROM pragma_table_info('{table}')"
            ))
            .and_then(|mut stmt| {
                stmt.query_map([], |row| Ok((row.get(0)?, row.get(1)?)))?
                    .collect::<Result<_, _>>()
            })
            .map_err(fail("reading the table's columns"))?;
        // The table keeps the layout it was made with.
        let integer_keys = existing
            .iter()
            .any(|(name, kind)| name == "key" && kind.eq_ignore_ascii_case("INTEGER"));
        match (integer_keys, binding.key_type) {
            (true, KeyType::Text) => {
                return Err(destination::Error::permanent(format!(
                    "table `{table}` in {} keeps integer keys (it was made with key_type = \
                     \"integer\"): set key_type = \"integer\" on the stream, or give it \
                     another table",
                    path.display()
                )))
            }
            (false, KeyType::Integer) => tracing::info!(
                "{table}: keys are kept as text (the table was made before key_type = \
                 \"integer\"); a new table keeps them as row ids"
            ),
            _ => {}
        }
        let wanted = std::iter::once(("deleted_at".to_string(), "TEXT")).chain(
            binding
                .columns
                .iter()
                .map(|c| (c.name.clone(), c.kind.sqlite())),
        );
        for (name, kind) in wanted {
            if !existing.iter().any(|(have, _)| *have == name) {
                conn.execute_batch(&format!(
                    "ALTER TABLE \"{table}\" ADD COLUMN \"{name}\" {kind}"
                ))
                .map_err(fail("adding a column"))?;
                tracing::info!("{table}: added column {name} ({kind})");
            }
        }
        Ok(SqliteStore {
            conn,
            sync: binding.sync.clone(),
            scope: binding.stream.clone(),
            table: binding.table.clone(),
            columns: binding.columns.clone(),
            hard_delete: binding.hard_delete,
        })
    }

    /// Every row of the stream's table, as `each(key, stored)`, streamed.
    pub fn scan(
        &self,
        each: &mut dyn FnMut(String, Stored) -> Result<(), destination::Error>,
    ) -> Result<(), destination::Error> {
        let mut stmt = self
            .conn
            .prepare(&format!(
                "SELECT CAST(key AS TEXT), version, record, deleted_at IS NOT NULL FROM \"{}\"",
                self.table
            ))
            .map_err(fail("scanning the table"))?;
        let mut rows = stmt.query([]).map_err(fail("scanning the table"))?;
        while let Some(row) = rows.next().map_err(fail("scanning the table"))? {
            let (key, stored) = read_row(row).map_err(fail("scanning the table"))?;
            each(key, stored)?;
        }
        Ok(())
    }

    /// Applies the plan's changes row by row, in record order, with prepared statements.
    fn apply_ops(&self, run: &str, page: u64, plan: &Plan<'_>) -> Result<(), destination::Error> {
        let table = &self.table;
        let page = sql_page(page)?;
        let names: String = self
            .columns
            .iter()
            .map(|c| format!(", \"{}\"", c.name))
            .collect();
        let values: String = (0..self.columns.iter().len())
            .map(|i| format!(", ?{}", i + 6))
            .collect();
        let updates: String = self
            .columns
            .iter()
            .map(|c| format!(", \"{0}\" = excluded.\"{0}\"", c.name))
            .collect();
        let conn = &self.conn;
        let mut upsert = conn
            .prepare_cached(&format!(
                "INSERT INTO \"{table}\" (key, version, record, run_id, page, deleted_at{names})
                 VALUES (?1, ?2, ?3, ?4, ?5, NULL{values})
                 ON CONFLICT(key) DO UPDATE SET version = excluded.version,
                   record = excluded.record, run_id = excluded.run_id, page = excluded.page,
                   deleted_at = NULL{updates}"
            ))
            .map_err(fail("prepare"))?;
        // A deletion keeps the last record it saw (for audit) and stores the deletion time
        // as the version, so an older copy read later is stale, not a resurrection.
        let mut tombstone = conn
            .prepare_cached(&format!(
                "INSERT INTO \"{table}\" (key, version, record, run_id, page, deleted_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?2)
                 ON CONFLICT(key) DO UPDATE SET version = excluded.version,
                   run_id = excluded.run_id, page = excluded.page,
                   deleted_at = excluded.deleted_at"
            ))
            .map_err(fail("prepare"))?;
        let mut remember = conn
            .prepare_cached(
                "INSERT INTO _waymark_tombstones (tbl, key, version, run_id) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT(tbl, key) DO UPDATE SET version = excluded.version,
                   run_id = excluded.run_id",
            )
            .map_err(fail("prepare"))?;
        let mut forget = conn
            .prepare_cached("DELETE FROM _waymark_tombstones WHERE tbl = ?1 AND key = ?2")
            .map_err(fail("prepare"))?;
        let mut remove = conn
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
                    // Bound as borrowed text: the record is not copied on our side.
                    let bound = (|| {
                        upsert.raw_bind_parameter(1, *key)?;
                        upsert.raw_bind_parameter(2, version.as_deref())?;
                        upsert.raw_bind_parameter(3, &**record)?;
                        upsert.raw_bind_parameter(4, run)?;
                        upsert.raw_bind_parameter(5, page)?;
                        for (i, cell) in cells.iter().enumerate() {
                            upsert.raw_bind_parameter(6 + i, Bound(cell))?;
                        }
                        upsert.raw_execute()
                    })();
                    bound.map_err(fail("upsert"))?;
                }
                Op::Tombstone {
                    key,
                    version,
                    record,
                } => {
                    tombstone
                        .execute(params![key, version, record, run, page])
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
        Ok(())
    }
}

/// A row of a stream's table: `key, version, record, deleted`.
fn read_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<(String, Stored)> {
    Ok((
        row.get(0)?,
        Stored {
            version: row.get(1)?,
            record: Some(row.get(2)?),
            deleted: row.get(3)?,
        },
    ))
}

impl Store for SqliteStore {
    const BLOCKING: bool = true;

    async fn begin(&mut self) -> Result<(), destination::Error> {
        self.conn
            .execute_batch("BEGIN IMMEDIATE")
            .map_err(fail("begin"))
    }

    async fn last_commit(&mut self) -> Result<Option<Commit>, destination::Error> {
        let row = self
            .conn
            .prepare_cached(
                "SELECT run_id, page, ack FROM _waymark_checkpoints WHERE sync = ?1 AND stream = ?2",
            )
            .and_then(|mut select| {
                select
                    .query_row(params![self.sync, self.scope], |row| {
                        Ok((row.get::<_, String>(0)?, row.get::<_, i64>(1)?, row.get::<_, String>(2)?))
                    })
                    .optional()
            })
            .map_err(fail("reading the checkpoint"))?;
        row.map(|(run, page, ack)| commit(run, page, &ack))
            .transpose()
    }

    /// What the table holds for each of `keys` that it holds (after a hard delete: the
    /// remembered deletion): one query for the page, the keys passed as one JSON array.
    async fn stored(
        &mut self,
        keys: &[&str],
    ) -> Result<HashMap<String, Stored>, destination::Error> {
        let keys = serde_json::to_string(keys)
            .map_err(|e| destination::Error::permanent(format!("lookup: the keys as JSON: {e}")))?;
        let mut out = HashMap::new();
        let mut rows = self
            .conn
            .prepare_cached(&format!(
                "SELECT CAST(key AS TEXT), version, record, deleted_at IS NOT NULL FROM \"{}\"
                 WHERE key IN (SELECT value FROM json_each(?1))",
                self.table
            ))
            .map_err(fail("lookup"))?;
        let found = rows
            .query_map(params![keys], read_row)
            .map_err(fail("lookup"))?;
        for row in found {
            let (key, stored) = row.map_err(fail("lookup"))?;
            out.insert(key, stored);
        }
        if self.hard_delete {
            let mut remembered = self
                .conn
                .prepare_cached(
                    "SELECT key, version FROM _waymark_tombstones
                     WHERE tbl = ?1 AND key IN (SELECT value FROM json_each(?2))",
                )
                .map_err(fail("lookup"))?;
            let found = remembered
                .query_map(params![self.table, keys], |row| {
                    Ok((row.get::<_, String>(0)?, row.get::<_, Option<String>>(1)?))
                })
                .map_err(fail("lookup"))?;
            for row in found {
                let (key, version) = row.map_err(fail("lookup"))?;
                out.entry(key).or_insert(Stored {
                    version,
                    deleted: true,
                    record: None,
                });
            }
        }
        Ok(out)
    }

    async fn apply(
        &mut self,
        run: &str,
        page: u64,
        plan: &Plan<'_>,
    ) -> Result<(), destination::Error> {
        self.apply_ops(run, page, plan)
    }

    async fn put_checkpoint(
        &mut self,
        checkpoint: &Checkpoint,
        commit: &Commit,
    ) -> Result<(), destination::Error> {
        let (checkpoint, ack) = encode(checkpoint, commit)?;
        let (run, page) = (&commit.run, commit.page);
        let page = sql_page(page)?;
        self.conn
            .prepare_cached(
                "INSERT INTO _waymark_checkpoints (sync, stream, run_id, page, checkpoint, ack)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT(sync, stream) DO UPDATE SET run_id = excluded.run_id,
                   page = excluded.page, checkpoint = excluded.checkpoint, ack = excluded.ack",
            )
            .and_then(|mut put| {
                put.execute(params![self.sync, self.scope, run, page, checkpoint, ack])
            })
            .map_err(fail("storing the checkpoint"))?;
        Ok(())
    }

    async fn commit(&mut self) -> Result<(), destination::Error> {
        self.conn.execute_batch("COMMIT").map_err(fail("commit"))
    }

    async fn rollback(&mut self) {
        if !self.conn.is_autocommit() {
            if let Err(e) = self.conn.execute_batch("ROLLBACK") {
                tracing::warn!("SQLite rollback: {e}");
            }
        }
    }

    async fn checkpoint(&mut self) -> Result<Option<Checkpoint>, destination::Error> {
        let stored: Option<String> = self
            .conn
            .query_row(
                "SELECT checkpoint FROM _waymark_checkpoints WHERE sync = ?1 AND stream = ?2",
                params![self.sync, self.scope],
                |row| row.get(0),
            )
            .optional()
            .map_err(fail("reading the checkpoint"))?;
        stored.map(|c| decode_checkpoint(&c)).transpose()
    }
}

/// A typed column's cell as a statement parameter (text borrowed, not copied).
struct Bound<'a>(&'a Cell);

impl ToSql for Bound<'_> {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(match self.0 {
            Cell::Null => ToSqlOutput::Owned(SqlValue::Null),
            Cell::Text(t) => ToSqlOutput::Borrowed(ValueRef::Text(t.as_bytes())),
            Cell::Integer(i) => ToSqlOutput::Owned(SqlValue::Integer(*i)),
            Cell::Real(r) => ToSqlOutput::Owned(SqlValue::Real(*r)),
            Cell::Boolean(b) => ToSqlOutput::Owned(SqlValue::Integer(i64::from(*b))),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RecordFilter;
    use waymark_engine::destination::{Batch, Destination};
    use waymark_engine::{RunId, Timestamp, Window, WriteAck};

    use crate::sink::upserting::Notes;

    struct Db {
        _dir: std::path::PathBuf,
        orders: SqliteDestination,
        deletions: SqliteDestination,
        run: RunId,
        page: u64,
    }

    fn binding(stream: &str, deletes: bool, hard: bool, key_type: KeyType) -> Binding {
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
            key_type,
            version_field: Some(if deletes { "deleted_at" } else { "v" }.into()),
            deletes,
            columns: crate::sink::columns::Columns::default(),
            marked_deletions: false,
            frozen: None,
        }
    }

    impl Db {
        fn new(hard: bool, key_type: KeyType) -> Result<Db, destination::Error> {
            let dir = std::env::temp_dir().join(format!(
                "waymark-sqlite-{}-{:?}-{hard}-{key_type:?}",
                std::process::id(),
                std::thread::current().id()
            ));
            let _ = std::fs::remove_dir_all(&dir);
            let path = dir.join("t.db");
            let open = |b: Binding| -> Result<SqliteDestination, destination::Error> {
                let store = SqliteStore::open(
                    &path,
                    &b,
                    Duration::from_millis(100),
                    Durability::default(),
                )?;
                let notes = Notes::in_dir(&dir.join("state"), &b);
                Ok(Upserting::new(store, b, notes))
            };
            Ok(Db {
                orders: open(binding("orders", false, hard, key_type))?,
                deletions: open(binding("orders_deleted", true, hard, key_type))?,
                _dir: dir,
                run: RunId::new(),
                page: 0,
            })
        }

        async fn write(
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
                max_seen: None,
            };
            let d = match deletes {
                true => &mut self.deletions,
                false => &mut self.orders,
            };
            let records = d.preparer()(records, None);
            d.write(Batch {
                run_id: self.run,
                page: self.page,
                records: &records,
                checkpoint: &checkpoint,
            })
            .await
        }

        fn rows(&mut self) -> Vec<(String, String, Option<String>)> {
            let Ok(table) = self.orders.store() else {
                return Vec::new();
            };
            let mut stmt = match table
                .conn
                .prepare("SELECT CAST(key AS TEXT), version, deleted_at FROM orders ORDER BY key")
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
    async fn deletion_story(hard: bool, key_type: KeyType) -> Result<Db, destination::Error> {
        let mut db = Db::new(hard, key_type)?;
        let ack = db
            .write(false, &[r#"{"id":1,"v":"10"}"#, r#"{"id":2,"v":"10"}"#])
            .await?;
        assert_eq!((ack.inserted, ack.deleted), (2, 0));
        // 1 deleted at 20; 2's deletion at 5 is older than the stored version 10: stale.
        // 3 was never seen: its deletion is remembered.
        let ack = db
            .write(
                true,
                &[
                    r#"{"id":1,"deleted_at":"20"}"#,
                    r#"{"id":2,"deleted_at":"5"}"#,
                    r#"{"id":3,"deleted_at":"20"}"#,
                ],
            )
            .await?;
        assert_eq!((ack.deleted, ack.skipped_stale), (2, 1));
        // The same deletion again changes nothing.
        let ack = db.write(true, &[r#"{"id":1,"deleted_at":"20"}"#]).await?;
        assert_eq!((ack.deleted, ack.unchanged), (0, 1));
        // An older copy of 1 read late (overlap window) does not bring it back...
        let ack = db.write(false, &[r#"{"id":1,"v":"15"}"#]).await?;
        assert_eq!(ack.skipped_stale, 1);
        // ...a newer version (the id was reused) does.
        let ack = db.write(false, &[r#"{"id":3,"v":"30"}"#]).await?;
        assert_eq!(ack.inserted + ack.updated, 1);
        // A record flagged deleted in the stream itself (`deleted_when`) is a deletion.
        let ack = db
            .write(false, &[r#"{"id":2,"v":"40","status":"gone"}"#])
            .await?;
        assert_eq!(ack.deleted, 1);
        Ok(db)
    }

    #[tokio::test]
    async fn soft_deletions_respect_versions_both_ways() -> Result<(), destination::Error> {
        for key_type in [KeyType::Text, KeyType::Integer] {
            let mut db = deletion_story(false, key_type).await?;
            assert_eq!(
                db.rows(),
                vec![
                    ("1".into(), "20".into(), Some("20".into())),
                    ("2".into(), "40".into(), Some("40".into())),
                    ("3".into(), "30".into(), None),
                ],
                "{key_type:?}"
            );
        }
        Ok(())
    }

    /// An integer key is the row id: stored as an integer, looked up, compared and read
    /// back as the key's text; a record whose key is not an integer is dead-lettered.
    #[tokio::test]
    async fn integer_keys_are_row_ids() -> Result<(), destination::Error> {
        let mut db = Db::new(false, KeyType::Integer)?;
        let ack = db
            .write(
                false,
                &[
                    r#"{"id":10,"v":"1"}"#,
                    r#"{"id":"9","v":"1"}"#,
                    r#"{"id":-3,"v":"1"}"#,
                    r#"{"id":"abc","v":"1"}"#,
                    r#"{"id":"007","v":"1"}"#,
                    r#"{"id":9223372036854775808,"v":"1"}"#,
                ],
            )
            .await?;
        assert_eq!((ack.inserted, ack.dead_lettered), (3, 3));
        let ack = db
            .write(false, &[r#"{"id":9,"v":"2"}"#, r#"{"id":10,"v":"0"}"#])
            .await?;
        assert_eq!((ack.updated, ack.skipped_stale), (1, 1));
        assert_eq!(
            db.rows(),
            vec![
                ("-3".into(), "1".into(), None),
                ("9".into(), "2".into(), None),
                ("10".into(), "1".into(), None),
            ]
        );
        let store = db.orders.store()?;
        let types: Vec<String> = store
            .conn
            .prepare("SELECT DISTINCT typeof(key) FROM orders")
            .and_then(|mut s| s.query_map([], |r| r.get(0))?.collect())
            .map_err(fail("test"))?;
        assert_eq!(types, ["integer"]);
        let mut keys = Vec::new();
        store.scan(&mut |key, _| {
            keys.push(key);
            Ok(())
        })?;
        assert_eq!(keys, ["-3", "9", "10"]);
        // The table keeps its layout: a binding with text keys is refused, naming the fix.
        let path = db._dir.join("t.db");
        let text = binding("orders", false, false, KeyType::Text);
        let refused = SqliteStore::open(
            &path,
            &text,
            Duration::from_millis(100),
            Durability::default(),
        );
        let why = refused.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(
            why.contains("keeps integer keys") && why.contains("key_type"),
            "{why}"
        );
        Ok(())
    }

    #[tokio::test]
    async fn hard_deletions_remove_rows_and_remember_versions() -> Result<(), destination::Error> {
        let mut db = deletion_story(true, KeyType::Integer).await?;
        assert_eq!(db.rows(), vec![("3".into(), "30".into(), None)]);
        let remembered: Vec<(String, String)> = db
            .orders
            .store()?
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
