//! A stream's canonical key/values (what its digest is made of).

use super::stream::StreamSection;
use super::workflow::Workflow;

impl Workflow {
    /// The canonical key/values of everything that decides which records `stream`'s runs
    /// read and where they go, sorted by key. Operational knobs (retention, timeouts,
    /// retries, rate limits, auth, response rules, conditional requests, declared columns,
    /// the oversized-page rule, the schedule, the webhook, where later windows start, the
    /// schema policy, an HTTP destination's endpoints and body) are left out: changing them
    /// never blocks a resume.
    pub fn fingerprint(&self, stream: &StreamSection) -> Vec<(String, String)> {
        let source = &self.file.source;
        let mut value = serde_json::json!({
            "sync": { "name": self.file.sync.name },
            "source": { "kind": source.kind, "base_url": source.base_url },
            "stream": stream,
            "destination": {
                "kind": self.file.destination.kind,
                "path": self.file.destination.path,
                "url": self.file.destination.url,
                "schema": self.file.destination.schema,
            },
        });
        if let Some(stream) = value.get_mut("stream").and_then(|s| s.as_object_mut()) {
            stream.remove("on_response");
            stream.remove("conditional");
            stream.remove("columns");
            // How the destination keeps keys; the records read are the same.
            stream.remove("key_type");
            stream.remove("reconcile");
            stream.remove("oversized_pages");
            stream.remove("schedule");
            stream.remove("webhook");
            stream.remove("schema_policy");
            // An HTTP destination's endpoints and body, like `[destination]`'s.
            stream.remove("destination");
            // Where the next window starts: a run's own window is fixed when it starts.
            if let Some(window) = stream.get_mut("window").and_then(|w| w.as_object_mut()) {
                window.remove("start");
            }
        }
        let mut out = Vec::new();
        flatten("", &value, &mut out);
        out.sort();
        out
    }
}

pub(super) fn flatten(prefix: &str, value: &serde_json::Value, out: &mut Vec<(String, String)>) {
    match value {
        serde_json::Value::Object(map) => {
            for (k, v) in map {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&key, v, out);
            }
        }
        serde_json::Value::Null => {}
        other => out.push((prefix.to_string(), other.to_string())),
    }
}

/// Every string inside a JSON value.
pub(super) fn json_strings(value: &serde_json::Value) -> Vec<String> {
    match value {
        serde_json::Value::String(s) => vec![s.clone()],
        serde_json::Value::Array(items) => items.iter().flat_map(json_strings).collect(),
        serde_json::Value::Object(map) => map.values().flat_map(json_strings).collect(),
        _ => Vec::new(),
    }
}
