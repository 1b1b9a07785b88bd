//! Declared columns: record paths mapped to typed destination columns, beside the raw
//! record (kept whole, so nothing is lost). A value that does not fit its column's type
//! sends the record to the dead-letter store.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::config::{ColumnSpec, ColumnType};
use crate::record::{instant, lookup};

/// A stream's declared columns, in name order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Columns(Vec<Column>);

/// One declared column.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Column {
    /// Its name.
    pub name: String,
    /// The record path it reads.
    pub path: String,
    /// Its type.
    pub kind: ColumnType,
}

/// A column value, converted from a record.
#[derive(Clone, Debug, PartialEq)]
pub enum Cell {
    /// Absent or null.
    Null,
    /// Text, an instant as RFC 3339 UTC, or JSON text.
    Text(String),
    /// An integer (also a boolean in SQLite).
    Integer(i64),
    /// A real number.
    Real(f64),
    /// A boolean.
    Boolean(bool),
}

impl Cell {
    /// The cell as text (PostgreSQL's COPY; `None` is NULL).
    pub fn text(&self) -> Option<String> {
        match self {
            Cell::Null => None,
            Cell::Text(t) => Some(t.clone()),
            Cell::Integer(i) => Some(i.to_string()),
            Cell::Real(r) => Some(r.to_string()),
            Cell::Boolean(b) => Some(b.to_string()),
        }
    }
}

impl Columns {
    /// The columns declared in a stream's `columns` table.
    pub fn new(declared: &BTreeMap<String, ColumnSpec>) -> Self {
        Columns(
            declared
                .iter()
                .map(|(name, spec)| match spec {
                    ColumnSpec::Type(kind) => Column {
                        name: name.clone(),
                        path: name.clone(),
                        kind: *kind,
                    },
                    ColumnSpec::Full { path, kind } => Column {
                        name: name.clone(),
                        path: path.clone(),
                        kind: *kind,
                    },
                })
                .collect(),
        )
    }

    /// The columns.
    pub fn iter(&self) -> std::slice::Iter<'_, Column> {
        self.0.iter()
    }

    /// Whether none are declared.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The record's values for every column, or why one does not fit.
    pub fn cells(&self, record: &Value) -> Result<Vec<Cell>, String> {
        self.0
            .iter()
            .map(|c| {
                convert(lookup(record, &c.path), c.kind)
                    .map_err(|why| format!("column `{}` (`{}`): {why}", c.name, c.path))
            })
            .collect()
    }
}

fn convert(value: Option<&Value>, kind: ColumnType) -> Result<Cell, String> {
    let Some(value) = value.filter(|v| !v.is_null()) else {
        return Ok(Cell::Null);
    };
    let shown = || {
        let text = value.to_string();
        match text.len() > 60 {
            true => format!("{}…", text.chars().take(60).collect::<String>()),
            false => text,
        }
    };
    Ok(match (kind, value) {
        (_, Value::String(s)) if s.contains('\0') => {
            return Err(format!("{} contains a NUL character", shown()))
        }
        (ColumnType::Json, v) if v.to_string().contains("\\u0000") => {
            return Err(format!(
                "{} contains \\u0000, which JSON columns cannot store",
                shown()
            ))
        }
        (ColumnType::Json, v) => Cell::Text(v.to_string()),
        (ColumnType::Text, Value::String(s)) => Cell::Text(s.clone()),
        (ColumnType::Text, v) => Cell::Text(v.to_string()),
        (ColumnType::Integer, Value::Number(n)) => match n.as_i64() {
            Some(i) => Cell::Integer(i),
            None => return Err(format!("{} is not an integer", shown())),
        },
        (ColumnType::Integer, Value::String(s)) => match s.trim().parse() {
            Ok(i) => Cell::Integer(i),
            Err(_) => return Err(format!("{} is not an integer", shown())),
        },
        (ColumnType::Real, Value::Number(n)) => match n.as_f64() {
            Some(r) => Cell::Real(r),
            None => return Err(format!("{} is not a number", shown())),
        },
        (ColumnType::Real, Value::String(s)) => match s.trim().parse::<f64>() {
            Ok(r) if r.is_finite() => Cell::Real(r),
            _ => return Err(format!("{} is not a number", shown())),
        },
        (ColumnType::Boolean, Value::Bool(b)) => Cell::Boolean(*b),
        (ColumnType::Boolean, v) => match v.to_string().trim_matches('"') {
            "true" | "1" => Cell::Boolean(true),
            "false" | "0" => Cell::Boolean(false),
            _ => return Err(format!("{} is not a boolean", shown())),
        },
        (ColumnType::Timestamp, Value::String(s)) => match instant(s) {
            Some(t) => Cell::Text(t.to_string()),
            None => return Err(format!("{} is not an RFC 3339 time", shown())),
        },
        (ColumnType::Timestamp, Value::Number(n)) => match instant(&n.to_string()) {
            Some(t) => Cell::Text(t.to_string()),
            None => return Err(format!("{} is not a Unix time in seconds or ms", shown())),
        },
        (_, _) => return Err(format!("{} does not fit a {kind:?} column", shown())),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn converts_values_and_refuses_what_does_not_fit() {
        let declared: BTreeMap<String, ColumnSpec> = toml::from_str(
            r#"
status = "text"
total = { path = "amount.total", type = "real" }
qty = "integer"
paid = "boolean"
at = "timestamp"
meta = "json"
"#,
        )
        .unwrap_or_default();
        let columns = Columns::new(&declared);
        let record = serde_json::json!({
            "status": "paid", "amount": {"total": "12.5"}, "qty": 3, "paid": "true",
            "at": 1_767_225_600, "meta": {"a": [1]}
        });
        assert_eq!(
            columns.cells(&record),
            Ok(vec![
                Cell::Text("2026-01-01T00:00:00.000Z".into()),
                Cell::Text(r#"{"a":[1]}"#.into()),
                Cell::Boolean(true),
                Cell::Integer(3),
                Cell::Text("paid".into()),
                Cell::Real(12.5),
            ])
        );
        let bad = serde_json::json!({"qty": "three"});
        assert_eq!(
            columns.cells(&bad),
            Err("column `qty` (`qty`): \"three\" is not an integer".into())
        );
        assert_eq!(
            columns.cells(&serde_json::json!({})).map(|c| c.len()),
            Ok(6),
            "absent values are NULL"
        );
    }
}
