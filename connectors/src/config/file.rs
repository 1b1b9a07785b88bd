//! The whole file (`[sync]`, `[source]`, `[[stream]]`, `[destination]`) and its JSON Schema.

use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::alerts::AlertsSection;
use super::destination::DestinationSection;
use super::schedule::ScheduleSection;
use super::source::SourceSection;
use super::span::Span;
use super::stream::StreamSection;
use super::tenants::TenantsSection;

/// The JSON Schema of workflow files (for editors).
pub fn schema() -> serde_json::Value {
    serde_json::to_value(schemars::schema_for!(File)).unwrap_or_default()
}

/// The `[sync]` table.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SyncSection {
    /// Name of the sync; with the stream name it identifies checkpoints.
    pub name: String,
    /// How long journals of finished runs are kept (default 30 days).
    #[serde(default = "default_keep")]
    pub keep: Span,
    /// How long `waymark trace` can look back: each record a page brought is noted in the
    /// state directory's audit index (~50 bytes a record) for this long (default 7 days;
    /// `"0s"` turns the index off).
    #[serde(default = "default_audit_keep")]
    pub audit_keep: Span,
    /// When `waymark serve` runs the streams without a schedule of their own.
    pub schedule: Option<ScheduleSection>,
    /// What each step of a run survives: `"power-loss"` (the default: every step synced
    /// to disk) or `"process"` (kills and crashes of Waymark, not a power cut).
    #[serde(default)]
    pub durability: Durability,
}

/// `[sync] durability`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Durability {
    /// Every step on disk before the next (`fdatasync`; SQLite `synchronous=FULL`).
    #[default]
    PowerLoss,
    /// Every step handed to the kernel before the next, without waiting for the disk
    /// (SQLite `synchronous=NORMAL`, PostgreSQL `synchronous_commit=off`).
    Process,
}

impl From<Durability> for waymark_engine::Durability {
    fn from(durability: Durability) -> Self {
        match durability {
            Durability::PowerLoss => Self::PowerLoss,
            Durability::Process => Self::Process,
        }
    }
}

fn default_audit_keep() -> Span {
    Span(Duration::from_secs(7 * 24 * 3600))
}

fn default_keep() -> Span {
    Span(Duration::from_secs(30 * 24 * 3600))
}

/// The parsed file.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct File {
    /// `[sync]`
    pub sync: SyncSection,
    /// `[source]`
    pub source: SourceSection,
    /// `[[stream]]`
    pub stream: Vec<StreamSection>,
    /// `[destination]`
    pub destination: DestinationSection,
    /// `[alerts]`
    pub alerts: Option<AlertsSection>,
    /// `[tenants]`: the file is instantiated once per tenant.
    pub tenants: Option<TenantsSection>,
}
