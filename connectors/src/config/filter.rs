//! `{ path, one_of }`: a test of a record's (or an event's) value at a path, used by a
//! stream's `filter` and `deleted_when` and by a webhook's `deleted_when`.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// `filter = { path = "status", one_of = ["paid", "shipped"] }`
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RecordFilter {
    /// Dotted path of the value tested.
    pub path: String,
    /// Accepted values (compared as text: `"7"` matches `7`).
    pub one_of: Vec<String>,
}
