//! `[tenants]`: one workflow file instantiated once per account. The list comes from a
//! file (TOML `[[tenant]]` tables, a JSON array of objects, or CSV with a header row) or
//! from a SQL query on the PostgreSQL destination (run by the sink); each tenant's values
//! fill the `{tenant.<field>}` placeholders of every string of the file.
//!
//! A tenant's instance is the sync `<sync>:<tenant id>`: its checkpoint scopes, runs and
//! journals are its own, and everything that shows a sync shows the tenant.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The `[tenants]` table.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TenantsSection {
    /// A file listing the tenants, relative to the workflow file: `.toml` (`[[tenant]]`
    /// tables), `.json` (an array of objects) or `.csv` (a header row, then one tenant a
    /// row). Read again whenever `waymark serve` reloads the workflow.
    pub file: Option<PathBuf>,
    /// A SQL query on the PostgreSQL destination whose rows are the tenants (each column
    /// a field), e.g. `"SELECT id, region FROM accounts WHERE active"`.
    pub query: Option<String>,
    /// The field that names each tenant (default `id`): letters, digits, `_` or `-`,
    /// unique.
    #[serde(default = "default_id")]
    pub id: String,
}

fn default_id() -> String {
    "id".into()
}

/// One tenant: its id and its fields (the id among them), as text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tenant {
    /// Its id (the `[tenants] id` field).
    pub id: String,
    /// Every field, by name.
    pub fields: BTreeMap<String, String>,
}

/// Separates a sync's name from its tenant's id in an instance's sync name.
pub const TENANT_SEPARATOR: char = ':';

/// The sync name of `tenant`'s instance of `sync`.
pub fn tenant_sync(sync: &str, tenant: &str) -> String {
    format!("{sync}{TENANT_SEPARATOR}{tenant}")
}

/// The workflow's sync name and the tenant of an instance's sync name.
pub fn split_tenant(sync: &str) -> (&str, Option<&str>) {
    match sync.split_once(TENANT_SEPARATOR) {
        Some((sync, tenant)) => (sync, Some(tenant)),
        None => (sync, None),
    }
}

/// Why the tenants cannot be listed.
#[derive(Debug, thiserror::Error)]
#[error("{source_name}: {message}")]
pub struct ListError {
    /// The file, or `the tenants query`.
    pub source_name: String,
    /// What is wrong.
    pub message: String,
}

impl TenantsSection {
    /// Tenants from rows of fields (a file's, a query's), in order: each has the id
    /// field, a usable id, and no id twice.
    pub fn tenants(
        &self,
        source_name: &str,
        rows: Vec<BTreeMap<String, String>>,
        row: RowName,
    ) -> Result<Vec<Tenant>, ListError> {
        let fail = |message: String| ListError {
            source_name: source_name.to_string(),
            message,
        };
        let mut seen = std::collections::HashSet::new();
        let mut out = Vec::with_capacity(rows.len());
        for (i, fields) in rows.into_iter().enumerate() {
            let Some(id) = fields.get(&self.id).cloned() else {
                return Err(fail(format!(
                    "{} has no `{}` field (the tenant's id; `[tenants] id` names another)",
                    row.name(i),
                    self.id
                )));
            };
            if !valid_id(&id) {
                return Err(fail(format!(
                    "{}: the tenant id `{}` may only hold letters, digits, `_` or `-` (it \
                     names the tenant's checkpoints and environment variables)",
                    row.name(i),
                    id.escape_debug()
                )));
            }
            if !seen.insert(id.clone()) {
                return Err(fail(format!(
                    "{}: the tenant `{id}` is listed twice",
                    row.name(i)
                )));
            }
            out.push(Tenant { id, fields });
        }
        Ok(out)
    }
}

/// The longest tenant id.
const LONGEST_ID: usize = 128;

fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= LONGEST_ID
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// The rows of a tenants file, by its extension, and how its rows are named.
pub fn read_file(path: &Path) -> Result<(Vec<BTreeMap<String, String>>, RowName), ListError> {
    let fail = |message: String| ListError {
        source_name: path.display().to_string(),
        message,
    };
    let text = std::fs::read_to_string(path).map_err(|e| fail(e.to_string()))?;
    let extension = path.extension().and_then(|e| e.to_str()).unwrap_or("");
    match extension {
        "csv" => csv_rows(&text).map(|r| (r, RowName::Line)).map_err(fail),
        "json" => {
            let value: serde_json::Value =
                serde_json::from_str(&text).map_err(|e| fail(format!("not JSON: {e}")))?;
            let serde_json::Value::Array(items) = value else {
                return Err(fail("expected an array of objects, one per tenant".into()));
            };
            let rows = items
                .into_iter()
                .enumerate()
                .map(|(i, item)| json_row(item).map_err(|m| fail(format!("tenant [{i}]: {m}"))))
                .collect::<Result<_, _>>()?;
            Ok((rows, RowName::Index))
        }
        "toml" => {
            #[derive(Deserialize)]
            #[serde(deny_unknown_fields)]
            struct Listing {
                #[serde(default)]
                tenant: Vec<toml::Table>,
            }
            let listing: Listing = toml::from_str(&text).map_err(|e| {
                let (line, column) =
                    super::location::line_col(&text, e.span().map_or(0, |s| s.start));
                fail(format!("{line}:{column}: {}", e.message().trim()))
            })?;
            let rows = listing
                .tenant
                .into_iter()
                .enumerate()
                .map(|(i, table)| {
                    let value = serde_json::to_value(table).unwrap_or_default();
                    json_row(value).map_err(|m| fail(format!("[[tenant]] {}: {m}", i + 1)))
                })
                .collect::<Result<_, _>>()?;
            Ok((rows, RowName::Table))
        }
        _ => Err(fail(
            "a tenants file is .toml ([[tenant]] tables), .json (an array of objects) or \
             .csv (a header row)"
                .into(),
        )),
    }
}

/// How a listing's rows are named in messages.
#[derive(Clone, Copy, Debug)]
pub enum RowName {
    /// CSV: the line (the header is line 1).
    Line,
    /// JSON: the array index.
    Index,
    /// TOML: the `[[tenant]]` table, from 1.
    Table,
    /// A query's row, from 1.
    Row,
}

impl RowName {
    /// The name of the `i`th row (0-based).
    pub fn name(self, i: usize) -> String {
        match self {
            RowName::Line => format!("line {}", i + 2),
            RowName::Index => format!("tenant [{i}]"),
            RowName::Table => format!("[[tenant]] {}", i + 1),
            RowName::Row => format!("row {}", i + 1),
        }
    }
}

/// A tenant's fields from a JSON object: strings, numbers and booleans as text.
fn json_row(value: serde_json::Value) -> Result<BTreeMap<String, String>, String> {
    let serde_json::Value::Object(map) = value else {
        return Err("expected an object of fields".into());
    };
    map.into_iter()
        .map(|(k, v)| {
            let text = match v {
                serde_json::Value::String(s) => s,
                serde_json::Value::Number(n) => n.to_string(),
                serde_json::Value::Bool(b) => b.to_string(),
                _ => return Err(format!("`{k}`: a field is a string, number or boolean")),
            };
            Ok((k, text))
        })
        .collect()
}

/// CSV rows (RFC 4180: quoted fields, `""` inside quotes) keyed by the header row; a row
/// with more or fewer fields than the header is an error naming its line.
fn csv_rows(text: &str) -> Result<Vec<BTreeMap<String, String>>, String> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(true)
        .trim(csv::Trim::All)
        .from_reader(text.as_bytes());
    let headers = reader
        .headers()
        .map_err(|e| format!("line 1: {e}"))?
        .iter()
        .map(str::to_string)
        .collect::<Vec<_>>();
    if headers.iter().all(|h| h.is_empty()) {
        return Err("line 1: expected a header row naming the fields (e.g. `id,region`)".into());
    }
    let mut rows = Vec::new();
    for record in reader.records() {
        let record = record.map_err(|e| match e.position() {
            Some(p) => format!("line {}: {e}", p.line()),
            None => e.to_string(),
        })?;
        rows.push(
            headers
                .iter()
                .cloned()
                .zip(record.iter().map(str::to_string))
                .collect(),
        );
    }
    Ok(rows)
}

/// What fills a string of the file: `text` with each `{tenant.<field>}` replaced by the
/// tenant's value; `Err(field)` names a field the tenant does not have.
pub fn fill(text: &str, fields: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    const OPEN: &str = "{tenant.";
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find(OPEN) {
        out.push_str(&rest[..at]);
        let after = &rest[at + OPEN.len()..];
        let Some(end) = after.find('}') else {
            out.push_str(&rest[at..]);
            return Ok(out);
        };
        let field = &after[..end];
        out.push_str(&fields(field).ok_or_else(|| field.to_string())?);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Whether `text` holds a `{tenant.…}` placeholder.
pub fn mentions_tenant(text: &str) -> bool {
    text.contains("{tenant.")
}

/// The tenants file of `section`, relative to the workflow file at `workflow`.
pub fn file_path(section: &TenantsSection, workflow: &Path) -> Option<PathBuf> {
    let file = section.file.as_ref()?;
    Some(match workflow.parent() {
        Some(dir) if file.is_relative() => dir.join(file),
        _ => file.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn section() -> TenantsSection {
        TenantsSection {
            file: None,
            query: None,
            id: "id".into(),
        }
    }

    #[test]
    fn fill_replaces_each_placeholder_and_names_a_missing_field() {
        let fields = |k: &str| match k {
            "id" => Some("acme".to_string()),
            "region" => Some("eu".to_string()),
            _ => None,
        };
        assert_eq!(
            fill(
                "https://{tenant.region}.api/{tenant.id}?q={cursor}",
                &fields
            ),
            Ok("https://eu.api/acme?q={cursor}".to_string())
        );
        assert_eq!(fill("TOKEN_{tenant.id}", &fields), Ok("TOKEN_acme".into()));
        assert_eq!(fill("{tenant.plan}", &fields), Err("plan".into()));
        assert_eq!(fill("no placeholder", &fields), Ok("no placeholder".into()));
        assert_eq!(fill("{tenant.id", &fields), Ok("{tenant.id".into()));
    }

    #[test]
    fn csv_with_quotes_and_a_short_row() {
        let rows = csv_rows("id,name\nacme,\"Acme, Inc.\"\nbeta,\"say \"\"hi\"\"\"\n").unwrap();
        assert_eq!(rows[0]["name"], "Acme, Inc.");
        assert_eq!(rows[1]["name"], "say \"hi\"");
        let err = csv_rows("id,name\nacme\n").unwrap_err();
        assert!(err.starts_with("line 2:"), "{err}");
    }

    #[test]
    fn ids_are_checked_unique_and_present() {
        let row = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<BTreeMap<_, _>>()
        };
        let s = section();
        let ok = s
            .tenants(
                "t.csv",
                vec![row(&[("id", "a")]), row(&[("id", "b")])],
                RowName::Line,
            )
            .unwrap();
        assert_eq!(ok.len(), 2);
        let twice = s
            .tenants(
                "t.csv",
                vec![row(&[("id", "a")]), row(&[("id", "a")])],
                RowName::Line,
            )
            .unwrap_err();
        assert_eq!(
            twice.to_string(),
            "t.csv: line 3: the tenant `a` is listed twice"
        );
        let missing = s
            .tenants("t.csv", vec![row(&[("name", "a")])], RowName::Line)
            .unwrap_err();
        assert!(
            missing.to_string().contains("line 2 has no `id` field"),
            "{missing}"
        );
        let bad = s
            .tenants("t.csv", vec![row(&[("id", "a/../b")])], RowName::Line)
            .unwrap_err();
        assert!(bad.to_string().contains("`a/../b` may only hold"), "{bad}");
    }

    #[test]
    fn split_and_join_instance_names() {
        assert_eq!(
            split_tenant(&tenant_sync("shop", "acme")),
            ("shop", Some("acme"))
        );
        assert_eq!(split_tenant("shop"), ("shop", None));
    }
}
