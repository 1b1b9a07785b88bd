//! What a repair writes (records to write, deletion records), kept in the state directory,
//! and served as pages to an ordinary journaled run.

use std::path::PathBuf;

use rusqlite::{params, Connection, OptionalExtension};
use serde_json::Value;

use waymark_engine::source::{self, Page, PageRequest, Source};

use super::error::{scratch, Error};
use crate::sink::plan::{Binding, DELETION_MARK};

/// A deletion record of `key` (at the stored `version`, so it is never stale) that a
/// repair binding applies by the destination's delete mode.
pub(super) fn deletion_record(binding: &Binding, key: &str, version: Option<&str>) -> String {
    let parts: Vec<String> = match binding.primary_key.len() {
        1 => vec![key.to_string()],
        _ => serde_json::from_str(key).unwrap_or_else(|_| vec![key.to_string()]),
    };
    let mut value = serde_json::json!({ DELETION_MARK: true });
    for (path, part) in binding.primary_key.iter().zip(parts) {
        set_path(&mut value, path, Value::String(part));
    }
    if let (Some(field), Some(version)) = (&binding.version_field, version) {
        set_path(&mut value, field, Value::String(version.to_string()));
    }
    value.to_string()
}

/// Sets the value at a dotted path, creating objects on the way.
pub(super) fn set_path(root: &mut Value, path: &str, leaf: Value) {
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

    pub(super) fn writer(&self) -> Result<RepairWriter, Error> {
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
    pub(super) fn push(&mut self, record: &str) -> Result<(), Error> {
        self.conn
            .prepare_cached("INSERT INTO records (record) VALUES (?1)")
            .and_then(|mut s| s.execute([record]))
            .map_err(scratch(&self.path))?;
        self.count += 1;
        Ok(())
    }

    pub(super) fn finish(self) -> Result<u64, Error> {
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
            ..Page::default()
        })
    }
}
