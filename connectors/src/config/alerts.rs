//! `[alerts]`: where `waymark serve` says that a stream's health changed.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// `[alerts]`: a webhook, a command, or both; each transition of a stream's health
/// (ok → failing, stalled, drifting, rate-limited, too many dead letters, and back) is sent
/// once.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AlertsSection {
    /// A URL that gets a JSON POST per transition, with a Slack-compatible `text` field;
    /// `${VAR}` reads the environment (a webhook URL is a secret).
    pub webhook: Option<String>,
    /// A command (program and arguments) run per transition, the details in `WAYMARK_ALERT_*`
    /// environment variables.
    pub command: Option<Vec<String>>,
    /// A stream with more dead letters than this is unhealthy (default 100).
    #[serde(default = "default_dead_letters")]
    pub dead_letters_above: u64,
}

fn default_dead_letters() -> u64 {
    100
}
