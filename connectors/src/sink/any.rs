//! The destination a workflow names, behind one type the driver can use.

use std::path::Path;
use std::sync::Arc;

use waymark_engine::destination::{self, Batch, Destination, Preparer};
use waymark_engine::{Checkpoint, Clock, Lease, WriteAck};

use crate::config::{DestinationKind, SchemaPolicy, StreamSection, Workflow};
use crate::sink::http::HttpDestination;
use crate::sink::jsonl::{JsonlDestination, JsonlStore};
use crate::sink::plan::{Binding, Identified, Stored};
use crate::sink::postgres::tls::Rustls;
use crate::sink::postgres::{PostgresDestination, PostgresParents, PostgresStore};
use crate::sink::sqlite::{ParentRecords, SqliteDestination, SqliteStore};
use crate::sink::upserting::{Notes, Upserting};
use crate::source::Parents;
use crate::state::schema::{Frozen, Schema};

/// Any of the destinations.
pub enum AnyDestination {
    /// SQLite.
    Sqlite(SqliteDestination),
    /// PostgreSQL.
    Postgres(PostgresDestination),
    /// JSONL files.
    Jsonl(JsonlDestination),
    /// Another API.
    Http(Box<HttpDestination>),
}

impl AnyDestination {
    /// Opens the workflow's destination for `binding` (an HTTP destination keeps its id
    /// map in the state directory `state_dir`, and waits on `clock`).
    pub async fn open(
        workflow: &Workflow,
        binding: Binding,
        state_dir: &Path,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, destination::Error> {
        let d = &workflow.file().destination;
        let mut binding = binding;
        if let Ok(stream) = workflow.stream(&binding.table) {
            if stream.schema_policy == SchemaPolicy::Freeze && !binding.deletes {
                let file = Schema::file(state_dir, workflow.name(), &stream.name);
                let frozen = Frozen::open(&file)
                    .map_err(|e| destination::Error::permanent(e.to_string()))?;
                binding.frozen = frozen.map(Arc::new);
            }
        }
        let notes = Notes::new(state_dir, workflow, &binding);
        Ok(match d.kind {
            DestinationKind::Sqlite => {
                let path = workflow.destination_path();
                let store =
                    SqliteStore::open(&path, &binding, d.busy_timeout.0, workflow.durability())?;
                AnyDestination::Sqlite(Upserting::new(store, binding, notes))
            }
            DestinationKind::Postgres => {
                let (url, schema, tls) = postgres_settings(workflow)?;
                let store =
                    PostgresStore::open(&url, tls, schema, &binding, workflow.durability()).await?;
                AnyDestination::Postgres(Upserting::new(store, binding, notes))
            }
            DestinationKind::Jsonl => {
                let store = JsonlStore::open(&workflow.destination_path(), &binding)?;
                AnyDestination::Jsonl(Upserting::new(store, binding, notes))
            }
            DestinationKind::Http => AnyDestination::Http(Box::new(HttpDestination::open(
                workflow, binding, notes, state_dir, clock,
            )?)),
        })
    }

    /// Where it is, for messages (never a connection string).
    pub fn describe(workflow: &Workflow) -> String {
        let d = &workflow.file().destination;
        match d.kind {
            DestinationKind::Sqlite | DestinationKind::Jsonl => {
                workflow.destination_path().display().to_string()
            }
            DestinationKind::Http => d.base_url.clone().unwrap_or_default(),
            DestinationKind::Postgres => format!(
                "PostgreSQL (${}), schema {}",
                d.url.as_ref().map(|u| u.env.as_str()).unwrap_or_default(),
                d.schema.as_deref().unwrap_or("public")
            ),
        }
    }
}

/// The reader of a child stream's parent records, from the destination that holds the
/// parent stream (`None` for a stream without a parent). The source asks it for parent
/// keys; it never opens a destination itself.
pub async fn parents(
    workflow: &Workflow,
    stream: &StreamSection,
) -> Result<Option<Box<dyn Parents>>, destination::Error> {
    let Some(parent) = &stream.parent else {
        return Ok(None);
    };
    let d = &workflow.file().destination;
    let parents: Box<dyn Parents> = match d.kind {
        DestinationKind::Sqlite => {
            Box::new(ParentRecords::open(&workflow.destination_path(), parent)?)
        }
        DestinationKind::Postgres => {
            let (url, schema, tls) = postgres_settings(workflow)?;
            Box::new(PostgresParents::open(&url, tls, schema, parent).await?)
        }
        DestinationKind::Jsonl | DestinationKind::Http => {
            return Err(destination::Error::permanent(format!(
                "stream `{}`: child streams read their parents from a sqlite or postgres \
                 destination",
                stream.name
            )))
        }
    };
    Ok(Some(parents))
}

/// The PostgreSQL destination's connection string (from its environment variable), schema
/// and TLS settings.
pub(crate) fn postgres_settings(
    workflow: &Workflow,
) -> Result<(String, &str, Rustls), destination::Error> {
    let d = &workflow.file().destination;
    let var = d.url.as_ref().map(|u| u.env.as_str()).unwrap_or_default();
    let url = std::env::var(var).map_err(|_| {
        destination::Error::permanent(format!(
            "destination.url: environment variable {var} is not set"
        ))
    })?;
    let schema = d.schema.as_deref().unwrap_or("public");
    let tls = Rustls::new(workflow.destination_ca_file().as_deref())
        .map_err(destination::Error::permanent)?;
    Ok((url, schema, tls))
}

impl AnyDestination {
    /// Every row of the stream's table (key and stored state), for a reconciliation. An
    /// HTTP destination cannot list what it holds.
    pub async fn scan(
        &mut self,
        each: &mut (dyn FnMut(String, Stored) -> Result<(), destination::Error> + Send),
    ) -> Result<(), destination::Error> {
        match self {
            AnyDestination::Sqlite(d) => d.store()?.scan(each),
            AnyDestination::Postgres(d) => d.store()?.scan(each).await,
            AnyDestination::Jsonl(d) => d.store()?.scan(each),
            AnyDestination::Http(_) => Err(destination::Error::permanent(
                "an http destination cannot list the records it holds, so it cannot be \
                 reconciled; reconcile the API's own copy instead",
            )),
        }
    }
}

impl Destination for AnyDestination {
    type Page = Arc<Identified>;

    fn preparer(&self) -> Preparer<Arc<Identified>> {
        match self {
            AnyDestination::Sqlite(d) => d.preparer(),
            AnyDestination::Postgres(d) => d.preparer(),
            AnyDestination::Jsonl(d) => d.preparer(),
            AnyDestination::Http(d) => d.preparer(),
        }
    }

    async fn write(
        &mut self,
        batch: Batch<'_, Arc<Identified>>,
    ) -> Result<WriteAck, destination::Error> {
        match self {
            AnyDestination::Sqlite(d) => d.write(batch).await,
            AnyDestination::Postgres(d) => d.write(batch).await,
            AnyDestination::Jsonl(d) => d.write(batch).await,
            AnyDestination::Http(d) => d.write(batch).await,
        }
    }

    async fn write_pages(
        &mut self,
        batches: &[Batch<'_, Arc<Identified>>],
    ) -> Vec<Result<WriteAck, destination::Error>> {
        match self {
            AnyDestination::Sqlite(d) => d.write_pages(batches).await,
            AnyDestination::Postgres(d) => d.write_pages(batches).await,
            AnyDestination::Jsonl(d) => d.write_pages(batches).await,
            AnyDestination::Http(d) => d.write_pages(batches).await,
        }
    }

    async fn checkpoint(&mut self) -> Result<Option<Checkpoint>, destination::Error> {
        match self {
            AnyDestination::Sqlite(d) => d.checkpoint().await,
            AnyDestination::Postgres(d) => d.checkpoint().await,
            AnyDestination::Jsonl(d) => d.checkpoint().await,
            AnyDestination::Http(d) => d.checkpoint().await,
        }
    }

    async fn fence(&mut self, lease: &Lease) -> Result<(), destination::Error> {
        match self {
            AnyDestination::Sqlite(d) => d.fence(lease).await,
            AnyDestination::Postgres(d) => d.fence(lease).await,
            AnyDestination::Jsonl(d) => d.fence(lease).await,
            AnyDestination::Http(d) => d.fence(lease).await,
        }
    }
}

/// The binding of `stream` under the checkpoint scope `scope` (the stream, or a backfill,
/// repair or dead-letter retry of it).
pub fn binding(workflow: &Workflow, stream: &StreamSection, scope: &str) -> Binding {
    Binding {
        stream: scope.to_string(),
        ..Binding::new(workflow, stream)
    }
}
