//! A loaded, validated workflow file and what the rest of Waymark asks of it.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use sha2::{Digest, Sha256};

use waymark_engine::{Plan, RetryPolicy, Timestamp};

use super::alerts::AlertsSection;
use super::error::Error;
use super::file::File;
use super::location::{key_at, line_col, locate};
use super::schedule::Cadence;
use super::scope::{backfill_scope, repair_scope, webhook_scope};
use super::shape;
use super::stream::{initial_start, StreamSection};
use super::tenants::{fill, tenant_sync, Tenant, TenantsSection};

/// A loaded, validated workflow.
#[derive(Clone, Debug)]
pub struct Workflow {
    pub(super) path: PathBuf,
    pub(super) file: File,
    /// The text, to place errors found after parsing.
    pub(super) text: Arc<str>,
    /// A file with `[tenants]`: as written (`file` holds its placeholders) and not to be
    /// run; each tenant's instance is made by [`Workflow::instantiate`].
    template: Option<Arc<toml::Table>>,
    /// An instance: its tenant.
    tenant: Option<Arc<Tenant>>,
}

impl Workflow {
    /// Reads and validates a workflow file.
    pub fn load(path: &Path) -> Result<Self, Error> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(path, &text)
    }

    /// Parses and validates workflow text; `path` names it in errors.
    pub fn parse(path: &Path, text: &str) -> Result<Self, Error> {
        shape::check(path, text)?;
        // The shape is right: what serde still refuses is named by the key at its span.
        let file: File = toml::from_str(text).map_err(|e| {
            let start = e.span().map_or(0, |s| s.start);
            let (line, column) = line_col(text, start);
            let message = e.message().trim().to_string();
            match key_at(text, start) {
                Some(key) => Error::Invalid {
                    path: path.to_path_buf(),
                    line,
                    column,
                    key,
                    message,
                },
                None => Error::Syntax {
                    path: path.to_path_buf(),
                    line,
                    column,
                    message,
                },
            }
        })?;
        let mut workflow = Workflow {
            path: path.to_path_buf(),
            file,
            text: text.into(),
            template: None,
            tenant: None,
        };
        if workflow.file.tenants.is_some() {
            let table: toml::Table = toml::from_str(text).map_err(|e| Error::Syntax {
                path: path.to_path_buf(),
                line: 1,
                column: 1,
                message: e.message().trim().to_string(),
            })?;
            workflow.template = Some(Arc::new(table));
            // The rest is checked per tenant, with its values in place.
            workflow.check_tenants()?;
        } else {
            workflow.validate()?;
        }
        Ok(workflow)
    }

    /// `[tenants]`, if the file has one: it is then a template, run through its instances.
    pub fn tenants(&self) -> Option<&TenantsSection> {
        self.file.tenants.as_ref()
    }

    /// An instance's tenant.
    pub fn tenant(&self) -> Option<&Tenant> {
        self.tenant.as_deref()
    }

    /// The workflow of one tenant: every `{tenant.<field>}` filled with its value, checked
    /// like a file of its own (messages name the tenant), its sync named
    /// `<sync>:<tenant id>`.
    pub fn instantiate(&self, tenant: &Tenant) -> Result<Workflow, Error> {
        let fields = |field: &str| tenant.fields.get(field).cloned();
        let Some(template) = &self.template else {
            return Ok(self.clone());
        };
        let mut instance = Workflow {
            tenant: Some(Arc::new(tenant.clone())),
            template: None,
            ..self.clone()
        };
        let mut table = toml::Value::Table((**template).clone());
        let mut at = Vec::new();
        fill_strings(&mut table, &mut at, &fields).map_err(|(key, field)| {
            instance.invalid(
                key,
                format!(
                    "`{{tenant.{field}}}`: the tenant has no field `{field}` (its fields: {})",
                    tenant.fields.keys().cloned().collect::<Vec<_>>().join(", ")
                ),
            )
        })?;
        instance.file = File::deserialize(table).map_err(|e| Error::Invalid {
            path: self.path.clone(),
            line: 1,
            column: 1,
            key: "tenants".into(),
            message: format!("tenant `{}`: {}", tenant.id, e.message().trim()),
        })?;
        instance.validate()?;
        instance.file.sync.name = tenant_sync(&self.file.sync.name, &tenant.id);
        Ok(instance)
    }

    /// Line and column of a key path (`stream.orders.pagination.kind`) in the file.
    pub fn position(&self, key: &str) -> (usize, usize) {
        line_col(&self.text, locate(&self.text, key))
    }

    pub(super) fn invalid(&self, key: String, message: impl Into<String>) -> Error {
        let (line, column) = self.position(&key);
        let message = match &self.tenant {
            Some(tenant) => format!("tenant `{}`: {}", tenant.id, message.into()),
            None => message.into(),
        };
        Error::Invalid {
            path: self.path.clone(),
            line,
            column,
            key,
            message,
        }
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The parsed file.
    pub fn file(&self) -> &File {
        &self.file
    }

    /// This workflow reading from `base_url` instead of its API (and, with `token_url`,
    /// taking OAuth2 tokens there) and writing into the SQLite file `database` instead of
    /// its destination (same tables, keys and columns), or, when it writes into an API,
    /// into `destination`'s base URL (and OAuth2 token endpoint) instead: what `waymark
    /// test` and `waymark record` run.
    pub fn redirected(
        &self,
        base_url: &str,
        token_url: Option<&str>,
        destination: Option<(&str, Option<&str>)>,
        database: &Path,
    ) -> Result<Workflow, Error> {
        let mut redirected = self.clone();
        redirected.file.source.base_url = base_url.to_string();
        if let (Some(super::AuthSection::Oauth2 { token_url: url, .. }), Some(replaced)) =
            (&mut redirected.file.source.auth, token_url)
        {
            *url = replaced.to_string();
        }
        let d = &mut redirected.file.destination;
        if d.kind == super::DestinationKind::Http {
            let Some((base, token)) = destination else {
                return Err(self.invalid(
                    "destination.base_url".into(),
                    "a workflow writing into an API needs that API's answers too",
                ));
            };
            d.base_url = Some(base.to_string());
            if let (Some(super::AuthSection::Oauth2 { token_url: url, .. }), Some(replaced)) =
                (&mut d.auth, token)
            {
                *url = replaced.to_string();
            }
            return Ok(redirected);
        }
        d.kind = super::DestinationKind::Sqlite;
        d.path = Some(database.display().to_string());
        (d.url, d.schema, d.ca_file) = (None, None, None);
        Ok(redirected)
    }

    /// The sync's name.
    pub fn name(&self) -> &str {
        &self.file.sync.name
    }

    /// Retention of finished runs' journals.
    pub fn keep(&self) -> Duration {
        self.file.sync.keep.0
    }

    /// Where `waymark serve` sends this file's alerts.
    pub fn alerts(&self) -> Option<&AlertsSection> {
        self.file.alerts.as_ref()
    }

    /// When `waymark serve` runs `stream` (its own schedule, else `[sync]`'s; `None`: it
    /// is not scheduled). Checked when the file was loaded.
    pub fn cadence(&self, stream: &StreamSection) -> Option<Cadence> {
        let section = stream
            .schedule
            .as_ref()
            .or(self.file.sync.schedule.as_ref())?;
        Cadence::new(section, &format!("{}/{}", self.file.sync.name, stream.name)).ok()
    }

    /// What each step of the sync's runs survives (`[sync] durability`).
    pub fn durability(&self) -> waymark_engine::Durability {
        self.file.sync.durability.into()
    }

    /// How long the audit index keeps what it noted (zero: no index).
    pub fn audit_keep(&self) -> Duration {
        self.file.sync.audit_keep.0
    }

    /// The engine's retry policy from `[source]`.
    pub fn retry_policy(&self) -> RetryPolicy {
        let source = &self.file.source;
        RetryPolicy {
            max_attempts: source.max_attempts,
            base: source.backoff.base.0,
            cap: source.backoff.cap.0,
            max_wait: source.max_wait.0,
        }
    }

    /// `source.ca_file`, relative to the workflow file.
    pub fn ca_file(&self) -> Option<PathBuf> {
        self.file.source.ca_file.as_deref().map(|f| self.beside(f))
    }

    /// `destination.ca_file`, relative to the workflow file.
    pub fn destination_ca_file(&self) -> Option<PathBuf> {
        self.file
            .destination
            .ca_file
            .as_deref()
            .map(|f| self.beside(f))
    }

    /// `file` relative to the workflow file's directory (unless absolute).
    fn beside(&self, file: &Path) -> PathBuf {
        match self.path.parent() {
            Some(dir) if file.is_relative() => dir.join(file),
            _ => file.to_path_buf(),
        }
    }

    /// The streams, in file order.
    pub fn streams(&self) -> &[StreamSection] {
        &self.file.stream
    }

    /// The stream called `name`.
    pub fn stream(&self, name: &str) -> Result<&StreamSection, Error> {
        self.file
            .stream
            .iter()
            .find(|s| s.name == name)
            .ok_or_else(|| Error::UnknownStream {
                path: self.path.clone(),
                name: name.to_string(),
                known: self
                    .file
                    .stream
                    .iter()
                    .map(|s| s.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            })
    }

    /// The destination database path, resolved against the workflow file's directory.
    pub fn destination_path(&self) -> PathBuf {
        let base = self.path.parent().unwrap_or(Path::new("."));
        base.join(self.file.destination.path.as_deref().unwrap_or_default())
    }

    /// The plan of a backfill of `stream` over `[from, to)`, under its own scope.
    pub fn backfill_plan(
        &self,
        stream: &StreamSection,
        from: Timestamp,
        to: Timestamp,
        fresh: bool,
    ) -> Plan {
        Plan {
            stream: backfill_scope(&stream.name, from, to),
            start: Some(from),
            until: Some(to),
            overlap: Duration::ZERO,
            ..self.plan(stream, fresh)
        }
    }

    /// The plan of a reconciliation's repair of `stream`: its own scope, a window that is
    /// only a label (the repair set is the source), never sliced.
    pub fn repair_plan(&self, stream: &StreamSection) -> Plan {
        Plan {
            stream: repair_scope(&stream.name),
            lag: Duration::ZERO,
            overlap: Duration::ZERO,
            start: None,
            until: None,
            step: None,
            ..self.plan(stream, false)
        }
    }

    /// The plan of the runs applying `stream`'s webhook events: its own scope; a window is
    /// the span of acceptance times its run applies (from the last one's end, no lag, no
    /// overlap: each event once).
    pub fn webhook_plan(&self, stream: &StreamSection) -> Plan {
        Plan {
            stream: webhook_scope(&stream.name),
            ..self.repair_plan(stream)
        }
    }

    /// The engine's plan for one stream's run.
    pub fn plan(&self, stream: &StreamSection, fresh: bool) -> Plan {
        let fingerprint = self.fingerprint(stream);
        let mut hasher = Sha256::new();
        for (k, v) in &fingerprint {
            hasher.update(k.as_bytes());
            hasher.update([0]);
            hasher.update(v.as_bytes());
            hasher.update([0]);
        }
        let digest: String = hasher
            .finalize()
            .iter()
            .take(16)
            .map(|b| format!("{b:02x}"))
            .collect();
        let start = stream.window.initial.as_deref().and_then(|s| {
            initial_start(s, Timestamp::from_system(std::time::SystemTime::now())).ok()
        });
        Plan {
            sync: self.file.sync.name.clone(),
            stream: stream.name.clone(),
            workflow_digest: digest,
            workflow_path: std::fs::canonicalize(&self.path)
                .unwrap_or_else(|_| self.path.clone())
                .display()
                .to_string(),
            fingerprint,
            lag: stream.window.lag.0,
            overlap: stream.window.overlap.0,
            window_start: stream.window.start.into(),
            start,
            until: None,
            // Partitions read at once are cut by the source; the run is the whole window.
            step: match stream.concurrency {
                Some(n) if n > 1 => None,
                _ => stream.window.step.map(|s| s.0),
            },
            fresh,
            lease: None,
            durability: self.durability(),
        }
    }
}

/// Fills the `{tenant.<field>}` placeholders of every string in `value` (`at`: the key
/// path so far, as the messages write it); `Err((key path, field))` for a field missing.
fn fill_strings(
    value: &mut toml::Value,
    at: &mut Vec<String>,
    fields: &dyn Fn(&str) -> Option<String>,
) -> Result<(), (String, String)> {
    match value {
        toml::Value::String(text) => {
            *text = fill(text, fields).map_err(|field| (at.join("."), field))?;
        }
        toml::Value::Array(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                // A table with a `name` is named by it (`stream.orders.window.lag`).
                let label = match item.get("name").and_then(|n| n.as_str()) {
                    Some(name) => name.to_string(),
                    None => format!("[{i}]"),
                };
                at.push(label);
                fill_strings(item, at, fields)?;
                at.pop();
            }
        }
        toml::Value::Table(table) => {
            for (key, item) in table.iter_mut() {
                at.push(key.clone());
                fill_strings(item, at, fields)?;
                at.pop();
            }
        }
        _ => {}
    }
    Ok(())
}
