//! A parent stream's records read from its PostgreSQL table, for a child stream.

use futures_util::future::BoxFuture;
use serde_json::Value;
use tokio::sync::Mutex;
use tokio_postgres::Client;

use waymark_engine::destination;

use super::client::{connect, failed, ident, reconnect_if_lost};
use super::tls::Rustls;
use crate::source::Parents;

/// The live records of a parent stream's table, in key order (byte order, `COLLATE "C"`,
/// so the order does not depend on the database's locale).
pub struct PostgresParents {
    /// Connected again after a lost connection (a server restart).
    client: Mutex<Client>,
    /// To connect again: it may hold a password and is never shown.
    url: String,
    tls: Rustls,
    /// `"schema"."table"`.
    table: String,
}

impl PostgresParents {
    /// Connects (see [`super::PostgresDestination`]) and checks that the parent stream's
    /// table exists.
    pub async fn open(
        url: &str,
        tls: Rustls,
        schema: &str,
        table: &str,
    ) -> Result<Self, destination::Error> {
        let client = connect(url, tls.clone()).await?;
        let exists = client
            .query_opt(
                "SELECT 1 FROM information_schema.tables WHERE table_schema = $1 AND table_name = $2",
                &[&schema, &table],
            )
            .await
            .map_err(failed("reading the schema"))?
            .is_some();
        if !exists {
            return Err(destination::Error::permanent(format!(
                "parent stream `{table}` has no table in schema {schema} yet; run the parent \
                 stream first"
            )));
        }
        Ok(PostgresParents {
            client: Mutex::new(client),
            url: url.to_string(),
            tls,
            table: format!("{}.{}", ident(schema), ident(table)),
        })
    }

    /// One row of `sql` with `key`, on a live connection (connected again if it was lost).
    async fn row(
        &self,
        sql: &str,
        key: Option<&str>,
        context: &'static str,
    ) -> Result<Option<tokio_postgres::Row>, destination::Error> {
        let mut client = self.client.lock().await;
        reconnect_if_lost(&mut client, &self.url, &self.tls).await?;
        client
            .query_opt(sql, &[&key])
            .await
            .map_err(failed(context))
    }

    async fn read_after(
        &self,
        key: Option<&str>,
    ) -> Result<Option<(String, Value)>, destination::Error> {
        let sql = format!(
            "SELECT key, record::text FROM {} WHERE deleted_at IS NULL
               AND ($1::text IS NULL OR key COLLATE \"C\" > $1::text COLLATE \"C\")
             ORDER BY key COLLATE \"C\" LIMIT 1",
            self.table
        );
        let row = self.row(&sql, key, "reading parent records").await?;
        row.map(|row| {
            let record: String = row.get(1);
            serde_json::from_str(&record)
                .map(|value| (row.get(0), value))
                .map_err(unreadable)
        })
        .transpose()
    }

    async fn read(&self, key: &str) -> Result<Option<Value>, destination::Error> {
        let sql = format!(
            "SELECT record::text FROM {} WHERE key = $1 AND deleted_at IS NULL",
            self.table
        );
        let row = self.row(&sql, Some(key), "reading a parent record").await?;
        row.map(|row| serde_json::from_str(row.get::<_, &str>(0)))
            .transpose()
            .map_err(unreadable)
    }
}

fn unreadable(e: serde_json::Error) -> destination::Error {
    destination::Error::permanent(format!("parent record unreadable: {e}"))
}

impl Parents for PostgresParents {
    fn after<'a>(
        &'a self,
        key: Option<&'a str>,
    ) -> BoxFuture<'a, Result<Option<(String, Value)>, destination::Error>> {
        Box::pin(self.read_after(key))
    }

    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Value>, destination::Error>> {
        Box::pin(self.read(key))
    }
}
