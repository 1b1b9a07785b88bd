//! The placeholder syntax of request templates (`{window.start|unix}`, `{cursor}`,
//! `{parent.<path>}`), checked when the file is loaded; rendering is the source's.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use waymark_engine::Timestamp;

/// How a time is written in a request.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum TimeFormat {
    /// `2026-01-01T00:00:00.000Z`
    #[default]
    Rfc3339,
    /// Unix seconds.
    Unix,
    /// Unix milliseconds.
    UnixMs,
    /// `2026-01-01` (the day containing the instant, UTC).
    Date,
}

impl TimeFormat {
    /// `t` written in this format.
    pub fn format(self, t: Timestamp) -> String {
        match self {
            TimeFormat::Rfc3339 => t.to_string(),
            TimeFormat::Unix => (t.0 / 1000).to_string(),
            TimeFormat::UnixMs => t.0.to_string(),
            TimeFormat::Date => t.to_string().chars().take(10).collect(),
        }
    }
}

pub(crate) fn format_of(name: &str) -> Result<TimeFormat, String> {
    serde_json::from_value(Value::String(name.to_string()))
        .map_err(|_| format!("unknown format `{name}` (use rfc3339, unix, unix_ms or date)"))
}

/// A placeholder: its byte range in the template, name and format.
pub(crate) struct Placeholder<'a> {
    pub(crate) range: std::ops::Range<usize>,
    pub(crate) name: &'a str,
    pub(crate) format: Option<&'a str>,
}

/// The placeholders of a template; `${VAR}` (environment variables, expanded later) is
/// left alone.
pub(crate) fn placeholders(template: &str) -> Result<Vec<Placeholder<'_>>, String> {
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(open) = template[from..].find('{').map(|i| i + from) {
        let close = template[open..]
            .find('}')
            .map(|i| i + open)
            .ok_or_else(|| format!("unclosed `{{` in `{template}`"))?;
        if !template[..open].ends_with('$') {
            let inner = &template[open + 1..close];
            let (name, format) = match inner.split_once('|') {
                Some((n, f)) => (n.trim(), Some(f.trim())),
                None => (inner.trim(), None),
            };
            out.push(Placeholder {
                range: open..close + 1,
                name,
                format,
            });
        }
        from = close + 1;
    }
    Ok(out)
}

/// Checks a template's placeholders; `parent` says whether `{parent.…}` is available.
pub fn check(template: &str, parent: bool) -> Result<(), String> {
    for Placeholder { name, format, .. } in placeholders(template)? {
        match name {
            "window.start" | "window.end" => {}
            "cursor" if format.is_none() => {}
            _ if name.starts_with("parent.") && parent && format.is_none() => {}
            _ if name.starts_with("parent.") => {
                return Err(format!(
                    "`{{{name}}}` needs a `parent` stream (and takes no format)"
                ))
            }
            _ => {
                return Err(format!(
                    "unknown placeholder `{{{name}}}` (use window.start, window.end, cursor or \
                     parent.<path>)"
                ))
            }
        }
        if let Some(f) = format {
            format_of(f)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checks_names_and_formats() {
        assert!(check("/c/{parent.id}", true).is_ok());
        assert!(check("/c/{parent.id}", false).is_err());
        assert!(check("{window.start|epoch}", false)
            .is_err_and(|e| e.contains("unknown format `epoch`")));
        assert!(check("{now}", false).is_err_and(|e| e.contains("unknown placeholder `{now}`")));
        assert!(check("{window.end", false).is_err());
    }
}
