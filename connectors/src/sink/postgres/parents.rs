//! A parent stream's records read from its PostgreSQL table, for a child stream.

use futures_util::future::BoxFuture;
use serde_json::Value;
use tokio_postgres::Client;

use waymark_engine::destination;

use super::client::{connect, fail, ident};
use super::tls::Rustls;
use crate::source::Parents;

/// The live records of a parent stream's table, in key order (byte order, `COLLATE "C"`,
/// so the order does not depend on the database's locale).
pub struct PostgresParents {
    client: Client,
    /// `"schema"."table"`.
    table: String,
}

impl PostgresParents {
    /// Connects (see [`super::PostgresDestination::open`]) and checks that the parent
    /// stream's table exists.
    pub async fn open(
        url: &str,
        tls: Rustls,
        schema: &str,
        table: &str,
    ) -> Result<Self, destination::Error> {
        let client = connect(url, tls).await?;
        let exists = client
            .query_opt(
                "SELECT 1 FROM information_schema.tables WHERE table_schema = $1 AND table_name = $2",
                &[&schema, &table],
            )
            .await
            .map_err(fail("reading the schema"))?
            .is_some();
        if !exists {
            return Err(destination::Error::permanent(format!(
                "parent stream `{table}` has no table in schema {schema} yet; run the parent \
                 stream first"
            )));
        }
        Ok(PostgresParents {
            client,
            table: format!("{}.{}", ident(schema), ident(table)),
        })
    }

    async fn read_after(&self, key: Option<&str>) -> Result<Option<(String, Value)>, String> {
        let row = self
            .client
            .query_opt(
                &format!(
                    "SELECT key, record::text FROM {} WHERE deleted_at IS NULL
                       AND ($1::text IS NULL OR key COLLATE \"C\" > $1::text COLLATE \"C\")
                     ORDER BY key COLLATE \"C\" LIMIT 1",
                    self.table
                ),
                &[&key],
            )
            .await
            .map_err(|e| fail("reading parent records")(e).to_string())?;
        row.map(|row| {
            let record: String = row.get(1);
            serde_json::from_str(&record)
                .map(|value| (row.get(0), value))
                .map_err(|e| format!("parent record unreadable: {e}"))
        })
        .transpose()
    }

    async fn read(&self, key: &str) -> Result<Option<Value>, String> {
        let row = self
            .client
            .query_opt(
                &format!(
                    "SELECT record::text FROM {} WHERE key = $1 AND deleted_at IS NULL",
                    self.table
                ),
                &[&key],
            )
            .await
            .map_err(|e| fail("reading a parent record")(e).to_string())?;
        row.map(|row| serde_json::from_str(row.get::<_, &str>(0)))
            .transpose()
            .map_err(|e| format!("parent record unreadable: {e}"))
    }
}

impl Parents for PostgresParents {
    fn after<'a>(
        &'a self,
        key: Option<&'a str>,
    ) -> BoxFuture<'a, Result<Option<(String, Value)>, String>> {
        Box::pin(self.read_after(key))
    }

    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Value>, String>> {
        Box::pin(self.read(key))
    }
}
