//! Reading a record's primary key and version by a dotted path.

use std::cmp::Ordering;

use serde_json::value::RawValue;
use serde_json::Value;

/// The value at a dotted path (`customer.id`) of a JSON value.
pub fn lookup<'a>(value: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(value, |v, part| match v {
        Value::Object(map) => map.get(part),
        Value::Array(items) => part.parse::<usize>().ok().and_then(|i| items.get(i)),
        _ => None,
    })
}

/// A scalar as key or version text: strings as they are, numbers and booleans printed;
/// `None` for null, objects and arrays.
pub fn scalar(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Null | Value::Array(_) | Value::Object(_) => None,
    }
}

/// A record's key from one path (its scalar) or several (a JSON array of their scalars);
/// `None` when a part is missing or not a scalar.
pub fn key_of(value: &Value, paths: &[String]) -> Option<String> {
    key_by(paths, |p| lookup(value, p).and_then(scalar))
}

/// [`key_of`] over any way of reading a path's scalar.
pub fn key_by(paths: &[String], scalar_at: impl Fn(&str) -> Option<String>) -> Option<String> {
    match paths {
        [one] => scalar_at(one),
        many => {
            let parts: Option<Vec<String>> = many.iter().map(|p| scalar_at(p)).collect();
            serde_json::to_string(&parts?).ok()
        }
    }
}

/// A record read only as far as it is asked: its top-level fields as raw JSON, each parsed
/// when a path reaches it. Reading a key and a version this way allocates no tree for the
/// rest of the record (the write path's hot spot), and hashes nothing: a record has a
/// few dozen fields at most, so a scan beats a map.
pub struct Fields<'a> {
    top: Vec<(&'a str, &'a RawValue)>,
}

impl<'a> Fields<'a> {
    /// The record's top-level fields; `None` when it is not a JSON object, or has a key
    /// with escapes (read it as a [`Value`] then).
    pub fn parse(record: &'a str) -> Option<Self> {
        serde_json::from_str(record).ok()
    }

    /// The value at a dotted path.
    pub fn get(&self, path: &str) -> Option<Value> {
        let (head, rest) = match path.split_once('.') {
            Some((head, rest)) => (head, Some(rest)),
            None => (path, None),
        };
        // The last of duplicate keys wins, as in a parsed `Value`.
        let (_, raw) = self.top.iter().rev().find(|(k, _)| *k == head)?;
        let value: Value = serde_json::from_str(raw.get()).ok()?;
        match rest {
            None => Some(value),
            Some(rest) => lookup(&value, rest).cloned(),
        }
    }
}

impl<'de: 'a, 'a> serde::Deserialize<'de> for Fields<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Top;
        impl<'de> serde::de::Visitor<'de> for Top {
            type Value = Fields<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<M: serde::de::MapAccess<'de>>(
                self,
                mut map: M,
            ) -> Result<Self::Value, M::Error> {
                let mut top = Vec::with_capacity(16);
                while let Some(field) = map.next_entry::<&'de str, &'de RawValue>()? {
                    top.push(field);
                }
                Ok(Fields { top })
            }
        }
        d.deserialize_map(Top)
    }
}

/// Orders two versions: numerically when both are numbers, else as text (RFC 3339
/// timestamps in one format order correctly as text).
pub fn compare_versions(a: &str, b: &str) -> Ordering {
    // Integers exactly (sequence numbers and nanosecond times exceed f64's 2^53).
    if let (Ok(x), Ok(y)) = (a.trim().parse::<i128>(), b.trim().parse::<i128>()) {
        return x.cmp(&y);
    }
    match (a.parse::<f64>(), b.parse::<f64>()) {
        (Ok(x), Ok(y)) if x.is_finite() && y.is_finite() => {
            x.partial_cmp(&y).unwrap_or(Ordering::Equal)
        }
        _ => a.cmp(b),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_read_paths_like_a_value() {
        let text = r#"{"id":7,"c":{"k":"x"},"l":[1,{"z":true}],"s":"a\"b"}"#;
        let v: Value = serde_json::from_str(text).unwrap_or_default();
        let f = Fields::parse(text);
        assert!(f.is_some());
        if let Some(f) = f {
            for path in [
                "id",
                "c.k",
                "l.1.z",
                "s",
                "c",
                "missing",
                "c.missing",
                "id.x",
            ] {
                assert_eq!(f.get(path), lookup(&v, path).cloned(), "{path}");
            }
            let paths = ["c.k".to_string(), "id".to_string()];
            assert_eq!(
                key_by(&paths, |p| f.get(p).as_ref().and_then(scalar)),
                key_of(&v, &paths)
            );
        }
        let twice = r#"{"id":1,"v":"a","id":2}"#;
        let v: Value = serde_json::from_str(twice).unwrap_or_default();
        let f = Fields::parse(twice).map(|f| f.get("id"));
        assert_eq!(
            f,
            Some(lookup(&v, "id").cloned()),
            "the last duplicate wins"
        );
        assert_eq!(f, Some(Some(Value::from(2))));
        assert!(Fields::parse("[1]").is_none());
        assert!(Fields::parse("{\"a\\u0062\":1}").is_none(), "escaped keys");
    }

    #[test]
    fn looks_up_paths_and_compares_versions() {
        let v: Value = serde_json::json!({"id": 7, "c": {"k": "x"}, "l": [1, {"z": true}]});
        assert_eq!(lookup(&v, "id").and_then(scalar).as_deref(), Some("7"));
        assert_eq!(lookup(&v, "c.k").and_then(scalar).as_deref(), Some("x"));
        assert_eq!(
            lookup(&v, "l.1.z").and_then(scalar).as_deref(),
            Some("true")
        );
        assert_eq!(lookup(&v, "c.missing"), None);
        assert_eq!(key_of(&v, &["id".into()]).as_deref(), Some("7"));
        assert_eq!(
            key_of(&v, &["c.k".into(), "id".into()]).as_deref(),
            Some(r#"["x","7"]"#)
        );
        assert_eq!(key_of(&v, &["id".into(), "nope".into()]), None);
        assert_eq!(compare_versions("9", "10"), Ordering::Less);
        assert_eq!(
            compare_versions("2024-01-02T00:00:00Z", "2024-01-10T00:00:00Z"),
            Ordering::Less
        );
    }
}
