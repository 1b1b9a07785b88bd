//! The PostgreSQL destination: the same promises as SQLite — versioned upserts decided by
//! [`crate::sink::plan::plan`], the stream's checkpoint in the same transaction as its batch,
//! an already-committed batch recognised on replay — written set-wise: the batch's rows
//! are `COPY`ed into a temporary table, then merged with `INSERT … ON CONFLICT … DO UPDATE
//! … WHERE` the incoming version is not older (checked again in SQL, by the same rule).

use std::collections::HashMap;
use std::fmt::Write as _;

use futures_util::SinkExt;
use tokio_postgres::Client;

use waymark_engine::destination;
use waymark_engine::lease::may_commit;
use waymark_engine::{Checkpoint, Durability, Lease};

use super::client::{connect, failed, ident, reconnect_if_lost};
use super::tls::Rustls;
use crate::sink::columns::{Cell, Columns};
use crate::sink::plan::{Binding, Op, Plan, Stored};
use crate::sink::store::{commit, decode_checkpoint, encode, Commit, Store};
use crate::sink::upserting::Upserting;

/// One stream's table in a PostgreSQL database (and the scope's row of
/// `_waymark_checkpoints`).
pub struct PostgresStore {
    client: Client,
    /// To connect again after the connection was lost (a server restart): it may hold a
    /// password and is never shown.
    url: String,
    tls: Rustls,
    sync: String,
    scope: String,
    /// The table's own name (for `_waymark_tombstones`).
    name: String,
    /// `"schema"."table"`.
    table: String,
    /// `"schema".`, for the bookkeeping tables.
    schema: String,
    columns: Columns,
    hard_delete: bool,
    /// The lease token this scope was claimed for (a cluster's run): each batch checks it.
    fence: Option<i64>,
    /// How each write transaction begins: `process` durability does not wait for the
    /// server's WAL flush (`synchronous_commit = off`: a crash of the server can take the
    /// last commits back, never tear one).
    begin: &'static str,
}

/// The PostgreSQL destination.
pub type PostgresDestination = Upserting<PostgresStore>;

/// A page number as PostgreSQL stores it (`bigint`).
fn sql_page(page: u64) -> Result<i64, destination::Error> {
    i64::try_from(page)
        .map_err(|_| destination::Error::permanent(format!("page {page} is out of range")))
}

impl PostgresStore {
    /// Connects with `url` (a libpq connection string or URI; it may hold a password and is
    /// never shown; its `sslmode` decides on TLS, verified by `tls`) and creates or evolves
    /// the stream's table in `schema`.
    pub async fn open(
        url: &str,
        tls: Rustls,
        schema: &str,
        binding: &Binding,
        durability: Durability,
    ) -> Result<Self, destination::Error> {
        let client = connect(url, tls.clone()).await?;
        let s = format!("{}.", ident(schema));
        let table = format!("{s}{}", ident(&binding.table));
        let columns: String = binding
            .columns
            .iter()
            .map(|c| format!(", {} {}", ident(&c.name), c.kind.postgres()))
            .collect();
        // Schema evolution: declared columns new since the table was made are added.
        let evolve: String = binding
            .columns
            .iter()
            .map(|c| {
                format!(
                    "ALTER TABLE {table} ADD COLUMN IF NOT EXISTS {} {};\n",
                    ident(&c.name),
                    c.kind.postgres()
                )
            })
            .collect();
        // One transaction, one stream of the schema at a time: two streams opening
        // together (a tenant's, in a cluster) would otherwise race on the shared tables
        // and function ("tuple concurrently updated").
        let lock = format!("'waymark:{}'", schema.replace('\'', "''"));
        client
            .batch_execute(&format!(
                "BEGIN;
                 SELECT pg_advisory_xact_lock(hashtext({lock}));
                 CREATE SCHEMA IF NOT EXISTS {schema_q};
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
                 CREATE TABLE IF NOT EXISTS {s}_waymark_fences (
                     sync text NOT NULL,
                     stream text NOT NULL,
                     token bigint NOT NULL,
                     holder text NOT NULL,
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
                   END $$;
                 {evolve}
                 COMMIT;",
                schema_q = ident(schema),
            ))
            .await
            .map_err(failed("creating tables"))?;
        Ok(PostgresStore {
            client,
            url: url.to_string(),
            tls,
            sync: binding.sync.clone(),
            scope: binding.stream.clone(),
            name: binding.table.clone(),
            table,
            schema: s,
            columns: binding.columns.clone(),
            hard_delete: binding.hard_delete,
            fence: None,
            begin: match durability {
                Durability::PowerLoss => "BEGIN",
                Durability::Process => "BEGIN; SET LOCAL synchronous_commit = off",
            },
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
            .map_err(failed("scanning the table"))?;
        let mut rows = std::pin::pin!(rows);
        while let Some(row) = rows.next().await {
            let row = row.map_err(failed("scanning the table"))?;
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

impl Store for PostgresStore {
    const BLOCKING: bool = false;

    async fn begin(&mut self) -> Result<(), destination::Error> {
        reconnect_if_lost(&mut self.client, &self.url, &self.tls).await?;
        self.client
            .batch_execute(self.begin)
            .await
            .map_err(failed("begin"))
    }

    async fn last_commit(&mut self) -> Result<Option<Commit>, destination::Error> {
        // Serialises writers of this scope's checkpoint row for the transaction.
        let row = self
            .client
            .query_opt(
                &format!(
                    "SELECT run_id, page, ack FROM {}_waymark_checkpoints
                     WHERE sync = $1 AND stream = $2 FOR UPDATE",
                    self.schema
                ),
                &[&self.sync, &self.scope],
            )
            .await
            .map_err(failed("reading the checkpoint"))?;
        if let Some(token) = self.fence {
            // Locked until the commit: a takeover's claim waits for this batch, or this
            // batch sees the claim and is refused.
            let claimed = self
                .client
                .query_opt(
                    &format!(
                        "SELECT token, holder FROM {}_waymark_fences
                         WHERE sync = $1 AND stream = $2 FOR UPDATE",
                        self.schema
                    ),
                    &[&self.sync, &self.scope],
                )
                .await
                .map_err(failed("checking the lease"))?;
            let stored = |r: &tokio_postgres::Row| u64::try_from(r.get::<_, i64>(0)).ok();
            let mine = u64::try_from(token).unwrap_or(0);
            if let Some(row) = claimed.filter(|r| !may_commit(stored(r), mine)) {
                return Err(fenced(token, row.get(0), row.get(1)));
            }
        }
        row.map(|row| commit(row.get(0), row.get(1), row.get::<_, &str>(2)))
            .transpose()
    }

    async fn stored(
        &mut self,
        keys: &[&str],
    ) -> Result<HashMap<String, Stored>, destination::Error> {
        // In one round trip.
        let mut stored: HashMap<String, Stored> = HashMap::new();
        for row in self
            .client
            .query(
                &format!(
                    "SELECT key, version, record::text, deleted_at IS NOT NULL FROM {}
                     WHERE key = ANY($1) FOR UPDATE",
                    self.table
                ),
                &[&keys],
            )
            .await
            .map_err(failed("lookup"))?
        {
            stored.insert(
                row.get(0),
                Stored {
                    version: row.get(1),
                    record: Some(row.get(2)),
                    deleted: row.get(3),
                },
            );
        }
        if self.hard_delete {
            for row in self
                .client
                .query(
                    &format!(
                        "SELECT key, version FROM {}_waymark_tombstones
                         WHERE tbl = $1 AND key = ANY($2)",
                        self.schema
                    ),
                    &[&self.name, &keys],
                )
                .await
                .map_err(failed("lookup"))?
            {
                stored.entry(row.get(0)).or_insert(Stored {
                    version: row.get(1),
                    deleted: true,
                    record: None,
                });
            }
        }
        Ok(stored)
    }

    /// Set-wise: the changes `COPY`ed into a temporary table, then five statements in the
    /// order the plan needs (forget revived tombstones, upsert, soft-delete, remove,
    /// remember hard deletions), each checking versions again in SQL.
    async fn apply(
        &mut self,
        run: &str,
        page: u64,
        plan: &Plan<'_>,
    ) -> Result<(), destination::Error> {
        let ops = plan.last_per_key();
        if ops.is_empty() {
            return Ok(());
        }
        let page = sql_page(page)?;
        let (table, s, tx) = (&self.table, &self.schema, &self.client);
        let width = self.columns.iter().len();
        let cells: String = (0..width).map(|i| format!(", c{i} text")).collect();
        tx.batch_execute(&format!(
            "CREATE TEMP TABLE _waymark_incoming (
                 op smallint, key text, version text, record text, revived boolean{cells}
             ) ON COMMIT DROP"
        ))
        .await
        .map_err(failed("staging the batch"))?;
        let sink = tx
            .copy_in::<_, bytes::Bytes>("COPY _waymark_incoming FROM STDIN")
            .await
            .map_err(failed("COPY"))?;
        futures_util::pin_mut!(sink);
        sink.send(bytes::Bytes::from(copy_rows(&ops, width)))
            .await
            .map_err(failed("COPY"))?;
        sink.finish().await.map_err(failed("COPY"))?;
        let names: String = self
            .columns
            .iter()
            .map(|c| format!(", {}", ident(&c.name)))
            .collect();
        let casts: String = self
            .columns
            .iter()
            .enumerate()
            .map(|(i, c)| format!(", c{i}::{}", c.kind.postgres()))
            .collect();
        let updates: String = self
            .columns
            .iter()
            .map(|c| format!(", {0} = excluded.{0}", ident(&c.name)))
            .collect();
        tx.execute(
            &format!(
                "DELETE FROM {s}_waymark_tombstones WHERE tbl = $1
                 AND key IN (SELECT key FROM _waymark_incoming WHERE revived)"
            ),
            &[&self.name],
        )
        .await
        .map_err(failed("upsert"))?;
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
        .map_err(failed("upsert"))?;
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
        .map_err(failed("delete"))?;
        tx.execute(
            &format!(
                "DELETE FROM {table} t USING _waymark_incoming i
                 WHERE i.op = 2 AND t.key = i.key"
            ),
            &[],
        )
        .await
        .map_err(failed("delete"))?;
        tx.execute(
            &format!(
                "INSERT INTO {s}_waymark_tombstones (tbl, key, version, run_id)
                 SELECT $1, key, version, $2 FROM _waymark_incoming WHERE op = 2
                 ON CONFLICT (tbl, key) DO UPDATE SET version = excluded.version,
                   run_id = excluded.run_id"
            ),
            &[&self.name, &run],
        )
        .await
        .map_err(failed("delete"))?;
        Ok(())
    }

    async fn put_checkpoint(
        &mut self,
        checkpoint: &Checkpoint,
        commit: &Commit,
    ) -> Result<(), destination::Error> {
        let (checkpoint, ack) = encode(checkpoint, commit)?;
        let (run, page) = (&commit.run, commit.page);
        self.client
            .execute(
                &format!(
                    "INSERT INTO {}_waymark_checkpoints (sync, stream, run_id, page, checkpoint, ack)
                     VALUES ($1, $2, $3, $4, $5, $6)
                     ON CONFLICT (sync, stream) DO UPDATE SET run_id = excluded.run_id,
                       page = excluded.page, checkpoint = excluded.checkpoint, ack = excluded.ack",
                    self.schema
                ),
                &[&self.sync, &self.scope, &run, &sql_page(page)?, &checkpoint, &ack],
            )
            .await
            .map_err(failed("storing the checkpoint"))?;
        Ok(())
    }

    async fn commit(&mut self) -> Result<(), destination::Error> {
        self.client
            .batch_execute("COMMIT")
            .await
            .map_err(failed("commit"))
    }

    async fn rollback(&mut self) {
        if self.client.is_closed() {
            return;
        }
        if let Err(e) = self.client.batch_execute("ROLLBACK").await {
            tracing::warn!("{}", failed("rollback")(e));
        }
    }

    async fn fence(&mut self, lease: &Lease) -> Result<(), destination::Error> {
        let token = i64::try_from(lease.token).map_err(|_| {
            destination::Error::permanent(format!("lease token {} is out of range", lease.token))
        })?;
        reconnect_if_lost(&mut self.client, &self.url, &self.tls).await?;
        let claimed = self
            .client
            .query_opt(
                // `lease::may_claim`, atomically.
                &format!(
                    "INSERT INTO {s}_waymark_fences AS f (sync, stream, token, holder)
                     VALUES ($1, $2, $3, $4)
                     ON CONFLICT (sync, stream) DO UPDATE
                       SET token = excluded.token, holder = excluded.holder
                       WHERE f.token <= excluded.token
                     RETURNING token",
                    s = self.schema
                ),
                &[&self.sync, &self.scope, &token, &lease.holder],
            )
            .await
            .map_err(failed("claiming the lease"))?;
        if claimed.is_none() {
            let newer = self
                .client
                .query_one(
                    &format!(
                        "SELECT token, holder FROM {}_waymark_fences WHERE sync = $1 AND stream = $2",
                        self.schema
                    ),
                    &[&self.sync, &self.scope],
                )
                .await
                .map_err(failed("reading the lease"))?;
            return Err(fenced(token, newer.get(0), newer.get(1)));
        }
        self.fence = Some(token);
        Ok(())
    }

    async fn checkpoint(&mut self) -> Result<Option<Checkpoint>, destination::Error> {
        let row = self
            .client
            .query_opt(
                &format!(
                    "SELECT checkpoint FROM {}_waymark_checkpoints WHERE sync = $1 AND stream = $2",
                    self.schema
                ),
                &[&self.sync, &self.scope],
            )
            .await
            .map_err(failed("reading the checkpoint"))?;
        row.map(|r| decode_checkpoint(r.get::<_, &str>(0)))
            .transpose()
    }
}

/// A batch (or claim) under lease `token` refused: `newer` of `holder` claimed the scope.
fn fenced(token: i64, newer: i64, holder: String) -> destination::Error {
    destination::Error::permanent(format!(
        "fenced: this worker's lease (token {token}) was taken over by worker {holder} \
         (token {newer}); nothing of the batch was written"
    ))
}

/// The batch's changes as rows of COPY's text format for `_waymark_incoming`.
fn copy_rows(ops: &[&Op<'_>], width: usize) -> String {
    let mut rows = String::new();
    for op in ops {
        let (code, key, version, record, revived, cells) = match op {
            Op::Put {
                key,
                version,
                record,
                cells,
                revived,
            } => (0, key, version, Some(*record), *revived, *cells),
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
        for i in 0..width {
            rows.push('\t');
            copy_field(&mut rows, cells.get(i).and_then(Cell::text).as_deref());
        }
        rows.push('\n');
    }
    rows
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
