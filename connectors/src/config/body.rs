//! The body an HTTP destination sends for a record (`[destination.body]`, or a stream's
//! `[stream.destination.body]`): each destination field is filled from a record path, a
//! template, a constant, or the destination id of a related record; a table of fields is a
//! nested object. Checked when the file is loaded; rendering is the sink's.
//!
//! ```toml
//! [stream.destination.body]
//! amount = { path = "total_cents" }
//! title = { template = "Order {record.id} ({record.status})" }
//! source = { value = "shop" }
//! account_id = { link = "customers", by = "customer_id", missing = "dead_letter" }
//! shipping.city = { path = "shipping.city" }    # a nested object
//! ```

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::location::child_key;
use super::template::placeholders;

/// What a mapped field does when the record has no value for it (its path or a template's
/// is absent or null, or a link's record is not in the destination).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Missing {
    /// The field is left out of the body (default: an update keeps the destination's value).
    #[default]
    Omit,
    /// The field is sent as `null`.
    Null,
    /// The record goes to the dead-letter store, with the reason; nothing is sent.
    DeadLetter,
}

/// Where one destination field's value comes from.
#[derive(Clone, Debug, PartialEq)]
pub enum Source {
    /// The value at a dotted record path, as it is (a number stays a number); null is
    /// missing.
    Path(String),
    /// A string with `{record.<path>}` and `{key}` placeholders.
    Template(String),
    /// A constant.
    Value(Value),
    /// The destination id of the record of stream `stream` whose source key is the value
    /// at `by`.
    Link {
        /// The related stream (its records' ids are in its own id map).
        stream: String,
        /// The record path holding the related record's source key.
        by: String,
    },
    /// A nested object.
    Object(Body),
}

/// One destination field.
#[derive(Clone, Debug, PartialEq)]
pub struct Field {
    /// Where its value comes from.
    pub source: Source,
    /// Its own missing-field policy (else the destination's).
    pub missing: Option<Missing>,
}

/// A body mapping: destination field → where its value comes from, in key order.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Body {
    /// Destination field name → its value's source.
    pub fields: BTreeMap<String, Field>,
}

/// The keys that make a table a field rather than a nested object.
const KINDS: [&str; 4] = ["path", "template", "value", "link"];

impl Body {
    /// Reads a mapping (the TOML table as JSON); an error names the key path under `at`
    /// (`stream.orders.destination.body`) and what is wrong.
    pub fn parse(value: &Value, at: &str) -> Result<Body, (String, String)> {
        let Value::Object(map) = value else {
            return Err((at.to_string(), "give a table of destination fields".into()));
        };
        let mut fields = BTreeMap::new();
        for (name, spec) in map {
            let key = child_key(at, name);
            fields.insert(name.clone(), Field::parse(spec, &key)?);
        }
        Ok(Body { fields })
    }

    /// Its links: the key path of each (under `at`), the stream it names and its `by`.
    pub fn links(&self, at: &str) -> Vec<(String, &str, &str)> {
        let mut out = Vec::new();
        for (name, field) in &self.fields {
            let key = child_key(at, name);
            match &field.source {
                Source::Link { stream, by } => out.push((key, stream.as_str(), by.as_str())),
                Source::Object(inner) => out.extend(inner.links(&key)),
                _ => {}
            }
        }
        out
    }

    /// Whether some field, at any depth, is written at the dotted `path`.
    pub fn sets(&self, path: &str) -> bool {
        let (head, rest) = match path.split_once('.') {
            Some((head, rest)) => (head, Some(rest)),
            None => (path, None),
        };
        match (self.fields.get(head), rest) {
            (Some(_), None) => true,
            (
                Some(Field {
                    source: Source::Object(inner),
                    ..
                }),
                Some(rest),
            ) => inner.sets(rest),
            _ => false,
        }
    }
}

impl Field {
    fn parse(spec: &Value, key: &str) -> Result<Field, (String, String)> {
        let Value::Object(table) = spec else {
            return Err((
                key.to_string(),
                "a destination field is `{ path = \"…\" }` (a record field), `{ template = \
                 \"…{record.<path>}…\" }`, `{ value = … }` (a constant), `{ link = \"<stream>\", \
                 by = \"<path>\" }`, or a table of fields (a nested object)"
                    .into(),
            ));
        };
        let kinds: Vec<&str> = KINDS
            .into_iter()
            .filter(|k| table.contains_key(*k))
            .collect();
        let kind = match kinds.as_slice() {
            [] => {
                return Ok(Field {
                    source: Source::Object(Body::parse(spec, key)?),
                    missing: None,
                })
            }
            [one] => *one,
            [a, b, ..] => {
                return Err((
                    key.to_string(),
                    format!("give one of `{a}` and `{b}`: a field has one source"),
                ))
            }
        };
        let allowed: &[&str] = match kind {
            "value" => &["value"],
            "link" => &["link", "by", "missing"],
            _ => &[kind, "missing"],
        };
        if let Some(extra) = table.keys().find(|k| !allowed.contains(&k.as_str())) {
            return Err((
                child_key(key, extra),
                format!(
                    "a `{kind}` field takes {}",
                    allowed
                        .iter()
                        .map(|k| format!("`{k}`"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ));
        }
        let text = |name: &str| -> Result<String, (String, String)> {
            match table.get(name) {
                Some(Value::String(s)) if !s.trim().is_empty() => Ok(s.clone()),
                Some(_) => Err((child_key(key, name), "give a non-empty string".into())),
                None => Err((key.to_string(), format!("a `{kind}` field needs `{name}`"))),
            }
        };
        let missing = match table.get("missing") {
            None => None,
            Some(v) => Some(serde_json::from_value(v.clone()).map_err(|_| {
                (
                    child_key(key, "missing"),
                    "use `omit`, `null` or `dead_letter`".to_string(),
                )
            })?),
        };
        let source = match kind {
            "path" => Source::Path(text("path")?),
            "template" => {
                let template = text("template")?;
                check_template(&template).map_err(|e| (child_key(key, "template"), e))?;
                Source::Template(template)
            }
            "value" => Source::Value(table.get("value").cloned().unwrap_or(Value::Null)),
            _ => Source::Link {
                stream: text("link")?,
                by: text("by")?,
            },
        };
        Ok(Field { source, missing })
    }
}

/// A body template's placeholders: `{record.<path>}` and `{key}`.
fn check_template(template: &str) -> Result<(), String> {
    for p in placeholders(template)? {
        let record = p
            .name
            .strip_prefix("record.")
            .is_some_and(|p| !p.is_empty());
        if p.format.is_some() || !(record || p.name == "key") {
            return Err(format!(
                "`{{{}}}`: a body template takes `{{record.<path>}}` and `{{key}}`",
                &template[p.range.start + 1..p.range.end - 1]
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reads_every_kind_of_field_and_nested_objects() {
        let body = Body::parse(
            &json!({
                "amount": { "path": "total_cents" },
                "title": { "template": "Order {record.id} for {key}", "missing": "null" },
                "source": { "value": { "app": "shop" } },
                "account": { "link": "customers", "by": "customer_id", "missing": "dead_letter" },
                "shipping": { "city": { "path": "shipping.city" } },
            }),
            "destination.body",
        )
        .unwrap();
        assert_eq!(
            body.fields["amount"].source,
            Source::Path("total_cents".into())
        );
        assert_eq!(body.fields["title"].missing, Some(Missing::Null));
        assert_eq!(
            body.fields["source"].source,
            Source::Value(json!({ "app": "shop" }))
        );
        assert_eq!(
            body.links("b"),
            vec![("b.account".to_string(), "customers", "customer_id")]
        );
        assert!(body.sets("shipping.city") && body.sets("amount"));
        assert!(!body.sets("shipping.zip") && !body.sets("amount.x"));
    }

    #[test]
    fn names_the_key_of_each_mistake() {
        let cases = [
            (
                json!({ "a": "total" }),
                "destination.body.a",
                "a destination field is",
            ),
            (
                json!({ "a": { "path": "x", "value": 1 } }),
                "destination.body.a",
                "give one of `path` and `value`",
            ),
            (
                json!({ "n": { "x": { "path": "p", "by": "q" } } }),
                "destination.body.n.x.by",
                "a `path` field takes `path`, `missing`",
            ),
            (
                json!({ "a": { "link": "customers" } }),
                "destination.body.a",
                "a `link` field needs `by`",
            ),
            (
                json!({ "a": { "path": "" } }),
                "destination.body.a.path",
                "non-empty string",
            ),
            (
                json!({ "a": { "path": "x", "missing": "skip" } }),
                "destination.body.a.missing",
                "use `omit`, `null` or `dead_letter`",
            ),
            (
                json!({ "a": { "template": "{window.start}" } }),
                "destination.body.a.template",
                "takes `{record.<path>}` and `{key}`",
            ),
            (
                json!({ "odd key": { "value": 1, "missing": "null" } }),
                "destination.body.\"odd key\".missing",
                "a `value` field takes `value`",
            ),
        ];
        for (value, key, message) in cases {
            let (at, why) = Body::parse(&value, "destination.body").unwrap_err();
            assert_eq!(at, key, "{why}");
            assert!(why.contains(message), "{key}: {why}");
        }
    }
}
