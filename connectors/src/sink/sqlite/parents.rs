//! A parent stream's records read from its SQLite table, for a child stream.

use std::path::Path;

use futures_util::future::BoxFuture;
use rusqlite::{params, Connection, OptionalExtension};

use waymark_engine::destination;

use super::store::fail;
use crate::source::Parents;

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
                destination::Error::permanent(format!(
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
            return Err(destination::Error::permanent(format!(
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
                "SELECT CAST(key AS TEXT), record FROM \"{}\" WHERE deleted_at IS NULL AND (?1 IS NULL OR key > ?1)
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
                .map_err(|e| {
                    destination::Error::permanent(format!("parent record unreadable: {e}"))
                })
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
            .map_err(|e| destination::Error::permanent(format!("parent record unreadable: {e}")))
    }
}

impl Parents for ParentRecords {
    fn after<'a>(
        &'a self,
        key: Option<&'a str>,
    ) -> BoxFuture<'a, Result<Option<(String, serde_json::Value)>, destination::Error>> {
        Box::pin(std::future::ready(self.read_after(key)))
    }

    fn get<'a>(
        &'a self,
        key: &'a str,
    ) -> BoxFuture<'a, Result<Option<serde_json::Value>, destination::Error>> {
        Box::pin(std::future::ready(self.read(key)))
    }
}
