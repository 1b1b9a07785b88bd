//! `[alerts]`: where `waymark serve` says that a stream's health changed.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// `[alerts]`: a webhook, a command, or both; each transition of a stream's health
/// (ok → failing, stalled, drifting, rate-limited, erroring, too many dead letters, and
/// back) is sent once. The thresholds are seed 004's.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
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
    /// A stream whose last run was answered 429 more often than this is `rate-limited`
    /// (default 1: more than one 429 per run).
    #[serde(default = "default_429s")]
    pub too_many_requests_above: u64,
    /// A stream whose requests of the last hour were answered 5xx more often than this
    /// fraction is `erroring` (default 0.005, i.e. 0.5%; at least 3 such answers, so one
    /// stray 503 is not an alert; and its last run met one too, so a clean run recovers).
    #[serde(default = "default_5xx")]
    pub server_errors_above: f64,
}

fn default_dead_letters() -> u64 {
    100
}

fn default_429s() -> u64 {
    1
}

fn default_5xx() -> f64 {
    0.005
}
