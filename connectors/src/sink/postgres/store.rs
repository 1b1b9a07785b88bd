//! The PostgreSQL destination: the same promises as SQLite — versioned upserts decided by
//! [`crate::sink::plan::plan`], the stream's checkpoint in the same transaction as its batch,
//! an already-committed batch recognised on replay — written set-wise: the batch's rows
//! are `COPY`ed into a temporary table, then merged with `INSERT … ON CONFLICT … DO UPDATE
//! … WHERE` the incoming version is not older (checked again in SQL, by the same rule).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Arc;

use futures_util::SinkExt;
use tokio_postgres::Client;
use waymark_engine::destination::{self, Batch, Destination, Preparer};
use waymark_engine::{Checkpoint, WriteAck};

use super::client::{connect, fail, ident};
use super::tls::Rustls;
use crate::sink::columns::Cell;
use crate::sink::plan::{plan, replayed, Binding, Identified, Op, Stored};

/// One stream's table in a PostgreSQL database.
pub struct PostgresDestination {
    client: Client,
    binding: Binding,
    /// `"schema"."table"`.
    table: String,
    /// `"schema".`, for the bookkeeping tables.
    schema: String,
}

impl PostgresDestination {
    /// Connects with `url` (a libpq connection string or URI; it may hold a password and is
    /// never shown; its `sslmode` decides on TLS, verified by `tls`) and creates or evolves
    /// the stream's table in `schema`.
    pub async fn open(
        url: &str,
        tls: Rustls,
        schema: &str,
        binding: Binding,
    ) -> Result<Self, destination::Error> {
        let client = connect(url, tls).await?;
        let s = format!("{}.", ident(schema));
        let table = format!("{s}{}", ident(&binding.table));
        let columns: String = binding
            .columns
            .iter()
            .map(|c| format!(", {} {}", ident(&c.name), c.kind.postgres()))
            .collect();
        client
            .batch_execute(&format!(
                "CREATE SCHEMA IF NOT EXISTS {schema_q};
                 CREATE TABLE IF NOT EXISTS {table} (
                     key text PRIMARY KEY,
                     version text,
                     record json NOT NULL,
                     run_id text NOT NULL,
                     page bigint NOT NULL,
                     deleted_at text{columns}
                 );
                 CREATE TABLE IF NOT EXISTS {s}_waymark_checkpoints (
                     sync text NOT NULL,
                     stream text NOT NULL,
                     run_id text NOT NULL,
                     page bigint NOT NULL,
                     checkpoint text NOT NULL,
                     ack text NOT NULL,
                     PRIMARY KEY (sync, stream)
                 );
                 CREATE TABLE IF NOT EXISTS {s}_waymark_tombstones (
                     tbl text NOT NULL,
                     key text NOT NULL,
                     version text,
                     run_id text NOT NULL,
                     PRIMARY KEY (tbl, key)
                 );
                 -- The version order of `record::compare_versions`: numbers as numbers,
                 -- anything else as text (byte order).
                 CREATE OR REPLACE FUNCTION {s}_waymark_not_older(incoming text, stored text)
                 RETURNS boolean LANGUAGE sql IMMUTABLE AS $$
                   SELECT CASE
                     WHEN incoming IS NULL OR stored IS NULL THEN true
                     WHEN incoming ~ '^\\s*[-+]?([0-9]+\\.?[0-9]*|\\.[0-9]+)([eE][-+]?[0-9]+)?\\s*$'
                      AND stored ~ '^\\s*[-+]?([0-9]+\\.?[0-9]*|\\.[0-9]+)([eE][-+]?[0-9]+)?\\s*$'
                       THEN incoming::numeric >= stored::numeric
                     ELSE incoming COLLATE \"C\" >= stored COLLATE \"C\"
                   END $$;",
                schema_q = ident(schema),
            ))
            .await
            .map_err(fail("creating tables"))?;
        // Schema evolution: declared columns new since the table was made are added.
        for c in binding.columns.iter() {
            client
                .batch_execute(&format!(
                    "ALTER TABLE {table} ADD COLUMN IF NOT EXISTS {} {}",
                    ident(&c.name),
                    c.kind.postgres()
                ))
                .await
                .map_err(fail("adding a column"))?;
        }
        Ok(PostgresDestination {
            client,
            binding,
            table,
            schema: s,
        })
    }

    /// Every row of the stream's table, as `each(key, stored)`, streamed from the server.
    pub async fn scan(
        &self,
        each: &mut (dyn FnMut(String, Stored) -> Result<(), destination::Error> + Send),
    ) -> Result<(), destination::Error> {
        use futures_util::StreamExt;
        let rows = self
            .client
            .query_raw(
                &format!(
                    "SELECT key, version, record::text, deleted_at IS NOT NULL FROM {}",
                    self.table
                ),
                std::iter::empty::<&(dyn tokio_postgres::types::ToSql + Sync)>(),
            )
            .await
            .map_err(fail("scanning the table"))?;
        let mut rows = std::pin::pin!(rows);
        while let Some(row) = rows.next().await {
            let row = row.map_err(fail("scanning the table"))?;
            each(
                row.get(0),
                Stored {
                    version: row.get(1),
                    record: Some(row.get(2)),
                    deleted: row.get(3),
                },
            )?;
        }
        Ok(())
    }

    async fn write_batch(
        &mut self,
        batch: Batch<'_, Arc<Identified>>,
    ) -> Result<WriteAck, destination::Error> {
        let b = &self.binding;
        let (table, s) = (&self.table, &self.schema);
        let run = batch.run_id.to_string();
        let tx = self.client.transaction().await.map_err(fail("begin"))?;
        // Serialises writers of this stream's checkpoint row for the transaction.
        let prior = tx
            .query_opt(
                &format!(
                    "SELECT run_id, page, ack FROM {s}_waymark_checkpoints
                     WHERE sync = $1 AND stream = $2 FOR UPDATE"
                ),
                &[&b.sync, &b.stream],
            )
            .await
            .map_err(fail("reading the checkpoint"))?;
        if let Some(row) = prior {
            let (prior_run, prior_page, ack): (String, i64, String) =
                (row.get(0), row.get(1), row.get(2));
            if prior_run == run && prior_page >= batch.page as i64 {
                return replayed(&ack);
            }
        }
        // What is stored for the batch's keys, in one round trip.
        let keys = batch.records.keys();
        let mut stored: HashMap<String, Stored> = HashMap::new();
        for row in tx
            .query(
                &format!(
                    "SELECT key, version, record::text, deleted_at IS NOT NULL FROM {table}
                     WHERE key = ANY($1) FOR UPDATE"
                ),
                &[&keys],
            )
            .await
            .map_err(fail("lookup"))?
        {
            let key: String = row.get(0);
            stored.insert(
                key,
                Stored {
                    version: row.get(1),
                    record: Some(row.get(2)),
                    deleted: row.get(3),
                },
            );
        }
        if b.hard_delete {
            for row in tx
                .query(
                    &format!(
                        "SELECT key, version FROM {s}_waymark_tombstones
                         WHERE tbl = $1 AND key = ANY($2)"
                    ),
                    &[&b.table, &keys],
                )
                .await
                .map_err(fail("lookup"))?
            {
                let key: String = row.get(0);
                stored.entry(key).or_insert(Stored {
                    version: row.get(1),
                    deleted: true,
                    record: None,
                });
            }
        }
        let plan = plan(b, &run, batch.page, batch.records, |key| {
            Ok::<_, destination::Error>(stored.get(key).cloned())
        })?;
        b.note(&run, batch.page, batch.checkpoint.at, &plan)?;
        let ops = plan.last_per_key();
        if !ops.is_empty() {
            let cells: String = (0..b.columns.iter().len())
                .map(|i| format!(", c{i} text"))
                .collect();
            tx.batch_execute(&format!(
                "CREATE TEMP TABLE _waymark_incoming (
                     op smallint, key text, version text, record text, revived boolean{cells}
                 ) ON COMMIT DROP"
            ))
            .await
            .map_err(fail("staging the batch"))?;
            let mut rows = String::new();
            for op in &ops {
                let (code, key, version, record, revived, cells) = match op {
                    Op::Put {
                        key,
                        version,
                        record,
                        cells,
                        revived,
                    } => (0, key, version, Some(*record), *revived, cells.as_slice()),
                    Op::Tombstone {
                        key,
                        version,
                        record,
                    } => (1, key, version, Some(*record), false, &[][..]),
                    Op::Remove { key, version } => (2, key, version, None, false, &[][..]),
                };
                let _ = write!(rows, "{code}\t");
                copy_field(&mut rows, Some(key));
                rows.push('\t');
                copy_field(&mut rows, version.as_deref());
                rows.push('\t');
                copy_field(&mut rows, record);
                let _ = write!(rows, "\t{revived}");
                for i in 0..b.columns.iter().len() {
                    rows.push('\t');
                    copy_field(&mut rows, cells.get(i).and_then(Cell::text).as_deref());
                }
                rows.push('\n');
            }
            let sink = tx
                .copy_in::<_, bytes::Bytes>("COPY _waymark_incoming FROM STDIN")
                .await
                .map_err(fail("COPY"))?;
            futures_util::pin_mut!(sink);
            sink.send(bytes::Bytes::from(rows))
                .await
                .map_err(fail("COPY"))?;
            sink.finish().await.map_err(fail("COPY"))?;
            let names: String = b
                .columns
                .iter()
                .map(|c| format!(", {}", ident(&c.name)))
                .collect();
            let casts: String = b
                .columns
                .iter()
                .enumerate()
                .map(|(i, c)| format!(", c{i}::{}", c.kind.postgres()))
                .collect();
            let updates: String = b
                .columns
                .iter()
                .map(|c| format!(", {0} = excluded.{0}", ident(&c.name)))
                .collect();
            let page = batch.page as i64;
            tx.execute(
                &format!(
                    "DELETE FROM {s}_waymark_tombstones WHERE tbl = $1
                     AND key IN (SELECT key FROM _waymark_incoming WHERE revived)"
                ),
                &[&b.table],
            )
            .await
            .map_err(fail("upsert"))?;
            tx.execute(
                &format!(
                    "INSERT INTO {table} AS t (key, version, record, run_id, page, deleted_at{names})
                     SELECT key, version, record::json, $1, $2, NULL{casts}
                     FROM _waymark_incoming WHERE op = 0
                     ON CONFLICT (key) DO UPDATE SET version = excluded.version,
                       record = excluded.record, run_id = excluded.run_id,
                       page = excluded.page, deleted_at = NULL{updates}
                     WHERE {s}_waymark_not_older(excluded.version, t.version)"
                ),
                &[&run, &page],
            )
            .await
            .map_err(fail("upsert"))?;
            // A deletion keeps the last record (for audit); its time becomes the version.
            tx.execute(
                &format!(
                    "INSERT INTO {table} AS t (key, version, record, run_id, page, deleted_at)
                     SELECT key, version, record::json, $1, $2, version
                     FROM _waymark_incoming WHERE op = 1
                     ON CONFLICT (key) DO UPDATE SET version = excluded.version,
                       run_id = excluded.run_id, page = excluded.page,
                       deleted_at = excluded.deleted_at
                     WHERE {s}_waymark_not_older(excluded.version, t.version)"
                ),
                &[&run, &page],
            )
            .await
            .map_err(fail("delete"))?;
            tx.execute(
                &format!(
                    "DELETE FROM {table} t USING _waymark_incoming i
                     WHERE i.op = 2 AND t.key = i.key"
                ),
                &[],
            )
            .await
            .map_err(fail("delete"))?;
            tx.execute(
                &format!(
                    "INSERT INTO {s}_waymark_tombstones (tbl, key, version, run_id)
                     SELECT $1, key, version, $2 FROM _waymark_incoming WHERE op = 2
                     ON CONFLICT (tbl, key) DO UPDATE SET version = excluded.version,
                       run_id = excluded.run_id"
                ),
                &[&b.table, &run],
            )
            .await
            .map_err(fail("delete"))?;
        }
        let checkpoint = serde_json::to_string(batch.checkpoint)
            .map_err(|e| destination::Error(format!("checkpoint encoding: {e}")))?;
        let ack = serde_json::to_string(&plan.ack)
            .map_err(|e| destination::Error(format!("acknowledgement encoding: {e}")))?;
        tx.execute(
            &format!(
                "INSERT INTO {s}_waymark_checkpoints (sync, stream, run_id, page, checkpoint, ack)
                 VALUES ($1, $2, $3, $4, $5, $6)
                 ON CONFLICT (sync, stream) DO UPDATE SET run_id = excluded.run_id,
                   page = excluded.page, checkpoint = excluded.checkpoint, ack = excluded.ack"
            ),
            &[
                &b.sync,
                &b.stream,
                &run,
                &(batch.page as i64),
                &checkpoint,
                &ack,
            ],
        )
        .await
        .map_err(fail("storing the checkpoint"))?;
        tx.commit().await.map_err(fail("commit"))?;
        Ok(plan.ack)
    }
}

/// Appends a field in COPY's text format (`\N` is NULL).
fn copy_field(out: &mut String, value: Option<&str>) {
    let Some(value) = value else {
        out.push_str("\\N");
        return;
    };
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c => out.push(c),
        }
    }
}

impl Destination for PostgresDestination {
    type Page = Arc<Identified>;

    fn preparer(&self) -> Preparer<Arc<Identified>> {
        self.binding.preparer()
    }

    async fn write(
        &mut self,
        batch: Batch<'_, Arc<Identified>>,
    ) -> Result<WriteAck, destination::Error> {
        self.write_batch(batch).await
    }

    async fn checkpoint(&mut self) -> Result<Option<Checkpoint>, destination::Error> {
        let row = self
            .client
            .query_opt(
                &format!(
                    "SELECT checkpoint FROM {}_waymark_checkpoints WHERE sync = $1 AND stream = $2",
                    self.schema
                ),
                &[&self.binding.sync, &self.binding.stream],
            )
            .await
            .map_err(fail("reading the checkpoint"))?;
        row.map(|r| serde_json::from_str(r.get::<_, &str>(0)))
            .transpose()
            .map_err(|e| destination::Error(format!("stored checkpoint unreadable: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_fields_escape_what_copy_reads_specially() {
        let mut out = String::new();
        copy_field(&mut out, Some("a\tb\\c\nd\re"));
        out.push('|');
        copy_field(&mut out, None);
        assert_eq!(out, "a\\tb\\\\c\\nd\\re|\\N");
    }
}
