//! The tenants of a workflow with `[tenants]`: its file's rows, or the rows of its query on
//! the PostgreSQL destination (read-only, each column a field as text, NULLs left out).

use std::collections::BTreeMap;

use crate::config::tenants::{file_path, read_file, ListError, RowName};
use crate::config::{Tenant, Workflow};
use crate::sink::any::postgres_settings;
use crate::sink::postgres::connect;

/// The tenants, in the listing's order (none when the file has no `[tenants]`).
pub async fn list(workflow: &Workflow) -> Result<Vec<Tenant>, ListError> {
    let Some(section) = workflow.tenants() else {
        return Ok(Vec::new());
    };
    let (source_name, rows, row) = match (&section.query, file_path(section, workflow.path())) {
        (Some(query), _) => {
            let rows = query_rows(workflow, query).await.map_err(|e| ListError {
                source_name: "the tenants query".into(),
                message: e.to_string(),
            })?;
            ("the tenants query".to_string(), rows, RowName::Row)
        }
        (None, Some(path)) => {
            let (rows, row) = read_file(&path)?;
            (path.display().to_string(), rows, row)
        }
        (None, None) => return Ok(Vec::new()),
    };
    section.tenants(&source_name, rows, row)
}

/// The rows of `query` on the destination, in a read-only transaction.
async fn query_rows(
    workflow: &Workflow,
    query: &str,
) -> Result<Vec<BTreeMap<String, String>>, waymark_engine::destination::Error> {
    use tokio_postgres::SimpleQueryMessage;
    let (url, _, tls) = postgres_settings(workflow)?;
    let client = connect(&url, tls).await?;
    let failed = |e: tokio_postgres::Error| {
        let message = e
            .as_db_error()
            .map_or_else(|| e.to_string(), |db| db.message().to_string());
        waymark_engine::destination::Error::permanent(message)
    };
    client
        .batch_execute("BEGIN READ ONLY")
        .await
        .map_err(failed)?;
    let messages = client.simple_query(query).await.map_err(failed)?;
    let mut rows = Vec::new();
    for message in messages {
        if let SimpleQueryMessage::Row(row) = message {
            let mut fields = BTreeMap::new();
            for (i, column) in row.columns().iter().enumerate() {
                if let Some(value) = row.get(i) {
                    fields.insert(column.name().to_string(), value.to_string());
                }
            }
            rows.push(fields);
        }
    }
    client.batch_execute("ROLLBACK").await.map_err(failed)?;
    Ok(rows)
}
