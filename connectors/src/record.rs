//! Reading a record's primary key and version by a dotted path.

use std::cmp::Ordering;

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
    match paths {
        [one] => lookup(value, one).and_then(scalar),
        many => {
            let parts: Option<Vec<String>> = many
                .iter()
                .map(|p| lookup(value, p).and_then(scalar))
                .collect();
            serde_json::to_string(&parts?).ok()
        }
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
