//! What the schema expects at a key, in the file's own words.
//!
//! The JSON Schema of [`File`](super::File) is reduced to the few shapes a TOML value can
//! take ([`Expect`]), each said the way a workflow author thinks of it ("a whole number",
//! "a list of strings", `one of "cursor" or "keyset"`), with what was written instead
//! ([`Written`]) and the closest known word to a misspelt one ([`closest`]). Nothing here
//! lists keys: they all come from the schema.

use std::sync::OnceLock;

use schemars::JsonSchema;
use serde_json::{Map, Value};

use super::file::schema;
use super::source::Pagination;
use super::span::Span;

/// How durations are described.
pub(super) const DURATION: &str = r#"a duration such as "30s", "5m" or "1h 30m""#;

/// Deeper than any workflow schema nests: a `$ref` cycle ends here as "any value".
const MAX_DEPTH: usize = 32;

/// The schema of workflow files, built once.
pub(super) struct Schema {
    root: Value,
    /// The definition name of durations (`Span`).
    duration: String,
    /// The definition name of a stream's pagination, whose keys depend on its `kind`.
    pagination: String,
}

/// What a key takes.
#[derive(Clone)]
pub(super) enum Expect<'s> {
    /// Anything (a POST body).
    Any,
    /// A string.
    String,
    /// A string humantime reads as a duration.
    Duration,
    /// An integer within a range.
    Integer {
        /// The smallest allowed.
        min: i128,
        /// The largest allowed.
        max: i128,
    },
    /// An integer or a float.
    Number,
    /// `true` or `false`.
    Bool,
    /// One of these strings.
    Choice(Vec<&'s str>),
    /// An array (or an array of tables) of these.
    List(Box<Expect<'s>>),
    /// A table.
    Table(Table<'s>),
    /// A table whose `tag` key picks which table it is (`auth = { kind = "bearer", … }`).
    Tagged {
        /// The key naming the variant.
        tag: &'s str,
        /// Each value of the tag, and the table it stands for.
        variants: Vec<(&'s str, Table<'s>)>,
    },
    /// Any of these (an untagged enum: `primary_key = "id"` or `["org", "id"]`).
    Either(Vec<Expect<'s>>),
}

/// A table's keys.
#[derive(Clone)]
pub(super) struct Table<'s> {
    /// The schema definition it comes from (`Pagination`).
    pub(super) name: Option<&'s str>,
    /// The known keys and their schemas (schema order: alphabetical).
    pub(super) properties: Option<&'s Map<String, Value>>,
    /// The keys that must be present.
    pub(super) required: Vec<&'s str>,
    /// What any other key takes: `None` means other keys are errors.
    pub(super) other: Option<Box<Expect<'s>>>,
}

/// What a TOML value is, as far as types go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Written {
    /// `"…"`
    String,
    /// `5`
    Integer,
    /// `1.5`
    Float,
    /// `true`
    Bool,
    /// `2026-01-01T00:00:00Z`
    Datetime,
    /// `[…]` or `[[…]]`
    List,
    /// `{…}` or `[…]`
    Table,
}

impl Schema {
    /// The schema of workflow files.
    pub(super) fn get() -> &'static Schema {
        static SCHEMA: OnceLock<Schema> = OnceLock::new();
        SCHEMA.get_or_init(|| Schema {
            root: schema(),
            duration: Span::schema_name(),
            pagination: Pagination::schema_name(),
        })
    }

    /// What the whole file is.
    pub(super) fn file(&self) -> Expect<'_> {
        self.expect(&self.root)
    }

    /// What `schema` expects.
    pub(super) fn expect<'s>(&'s self, schema: &'s Value) -> Expect<'s> {
        self.reduce(schema, None, 0)
    }

    /// Whether `table` is a stream's pagination.
    pub(super) fn is_pagination(&self, table: &Table<'_>) -> bool {
        table.name == Some(self.pagination.as_str())
    }

    /// The first sentence of the description of a key's schema (or of its definition).
    pub(super) fn description<'s>(&'s self, schema: &'s Value) -> Option<String> {
        let mut at = schema;
        for _ in 0..MAX_DEPTH {
            if let Some(text) = at.get("description").and_then(Value::as_str) {
                return Some(first_sentence(text));
            }
            at = match (at.get("$ref"), at.get("allOf").and_then(Value::as_array)) {
                (Some(r), _) => self.definition(r.as_str()?)?.1,
                (None, Some(all)) if all.len() == 1 => &all[0],
                _ => return None,
            };
        }
        None
    }

    fn definition<'s>(&'s self, reference: &str) -> Option<(&'s str, &'s Value)> {
        let name = reference.strip_prefix("#/definitions/")?;
        self.root
            .get("definitions")?
            .as_object()?
            .get_key_value(name)
            .map(|(k, v)| (k.as_str(), v))
    }

    fn reduce<'s>(&'s self, schema: &'s Value, name: Option<&'s str>, depth: usize) -> Expect<'s> {
        let Some(obj) = schema.as_object().filter(|_| depth < MAX_DEPTH) else {
            return Expect::Any;
        };
        let deeper = |v: &'s Value| self.reduce(v, None, depth + 1);
        if let Some(reference) = obj.get("$ref").and_then(Value::as_str) {
            return match self.definition(reference) {
                Some((def, _)) if def == self.duration => Expect::Duration,
                Some((def, schema)) => self.reduce(schema, Some(def), depth + 1),
                None => Expect::Any,
            };
        }
        if let Some([only]) = obj
            .get("allOf")
            .and_then(Value::as_array)
            .map(Vec::as_slice)
        {
            return deeper(only);
        }
        let alternatives = |key: &str| {
            obj.get(key).and_then(Value::as_array).map(|all| {
                all.iter()
                    .filter(|v| v.get("type").and_then(Value::as_str) != Some("null"))
                    .map(deeper)
                    .collect::<Vec<_>>()
            })
        };
        if let Some(mut any) = alternatives("anyOf") {
            return match any.len() {
                1 => any.remove(0),
                _ => Expect::Either(any),
            };
        }
        if let Some(one) = alternatives("oneOf") {
            return one_of(one);
        }
        if let Some(values) = obj.get("enum").and_then(Value::as_array) {
            return Expect::Choice(values.iter().filter_map(Value::as_str).collect());
        }
        let types: Vec<&str> = match obj.get("type") {
            Some(Value::String(t)) => vec![t.as_str()],
            Some(Value::Array(all)) => all.iter().filter_map(Value::as_str).collect(),
            _ => Vec::new(),
        };
        let mut types: Vec<Expect<'s>> = types
            .into_iter()
            .filter(|t| *t != "null")
            .map(|t| match t {
                "string" => Expect::String,
                "integer" => integer(obj),
                "number" => Expect::Number,
                "boolean" => Expect::Bool,
                "array" => Expect::List(Box::new(obj.get("items").map_or(Expect::Any, deeper))),
                "object" => Expect::Table(Table {
                    name,
                    properties: obj.get("properties").and_then(Value::as_object),
                    required: obj
                        .get("required")
                        .and_then(Value::as_array)
                        .map(|r| r.iter().filter_map(Value::as_str).collect())
                        .unwrap_or_default(),
                    other: match obj.get("additionalProperties") {
                        Some(Value::Bool(false)) => None,
                        Some(other) => Some(Box::new(deeper(other))),
                        None => Some(Box::new(Expect::Any)),
                    },
                }),
                _ => Expect::Any,
            })
            .collect();
        match types.len() {
            0 => Expect::Any,
            1 => types.remove(0),
            _ => Expect::Either(types),
        }
    }
}

/// A `oneOf`: an enum of strings, a table tagged by one key, or plain alternatives.
fn one_of(alternatives: Vec<Expect<'_>>) -> Expect<'_> {
    if alternatives.iter().all(|a| matches!(a, Expect::Choice(_))) {
        return Expect::Choice(
            alternatives
                .into_iter()
                .flat_map(|a| match a {
                    Expect::Choice(values) => values,
                    _ => Vec::new(),
                })
                .collect(),
        );
    }
    let tables: Vec<Table<'_>> = alternatives
        .iter()
        .filter_map(|a| match a {
            Expect::Table(t) => Some(t.clone()),
            _ => None,
        })
        .collect();
    // The key every alternative has, with one fixed value each.
    let tag = tables
        .first()
        .and_then(|first| first.properties)
        .and_then(|p| {
            p.keys().find(|k| {
                tables.len() == alternatives.len() && tables.iter().all(|t| t.tag(k).is_some())
            })
        });
    match tag {
        Some(tag) => Expect::Tagged {
            tag,
            variants: tables
                .iter()
                .filter_map(|t| Some((t.tag(tag)?, t.clone())))
                .collect(),
        },
        None => Expect::Either(alternatives),
    }
}

impl<'s> Table<'s> {
    /// The one value `key` can have in this table, if it is fixed.
    fn tag(&self, key: &str) -> Option<&'s str> {
        let values = self.properties?.get(key)?.get("enum")?.as_array()?;
        match values.as_slice() {
            [only] => only.as_str(),
            _ => None,
        }
    }
}

/// An integer's range from its `format` (`uint32`) and `minimum`/`maximum`.
fn integer(obj: &Map<String, Value>) -> Expect<'static> {
    let (min, max): (i128, i128) = match obj.get("format").and_then(Value::as_str) {
        Some("uint8") => (0, u8::MAX.into()),
        Some("uint16") => (0, u16::MAX.into()),
        Some("uint32") => (0, u32::MAX.into()),
        Some("uint64" | "uint") => (0, u64::MAX.into()),
        Some("int8") => (i8::MIN.into(), i8::MAX.into()),
        Some("int16") => (i16::MIN.into(), i16::MAX.into()),
        Some("int32") => (i32::MIN.into(), i32::MAX.into()),
        _ => (i64::MIN.into(), i64::MAX.into()),
    };
    let bound = |key: &str| {
        obj.get(key)
            .and_then(Value::as_f64)
            .filter(|b| b.fract() == 0.0 && b.abs() < 1e18)
            .and_then(|b| format!("{b:.0}").parse::<i128>().ok())
    };
    Expect::Integer {
        min: bound("minimum").map_or(min, |b| b.max(min)),
        max: bound("maximum").map_or(max, |b| b.min(max)),
    }
}

impl Expect<'_> {
    /// Whether a value written as `written` is of this shape (its content aside).
    pub(super) fn accepts(&self, written: Written) -> bool {
        match self {
            Expect::Any => true,
            Expect::String | Expect::Duration | Expect::Choice(_) => written == Written::String,
            Expect::Integer { .. } => written == Written::Integer,
            Expect::Number => matches!(written, Written::Integer | Written::Float),
            Expect::Bool => written == Written::Bool,
            Expect::List(_) => written == Written::List,
            Expect::Table(_) | Expect::Tagged { .. } => written == Written::Table,
            Expect::Either(all) => all.iter().any(|e| e.accepts(written)),
        }
    }

    /// This shape, said in words: "a whole number", "a string or a list of strings".
    pub(super) fn describe(&self) -> String {
        match self {
            Expect::Any => "any value".into(),
            Expect::String => "a string".into(),
            Expect::Duration => DURATION.into(),
            Expect::Integer { .. } => "a whole number".into(),
            Expect::Number => "a number".into(),
            Expect::Bool => "true or false".into(),
            Expect::Choice(values) => format!("one of {}", quoted_or(values)),
            Expect::List(item) => match item.plural() {
                Some(items) => format!("a list of {items}"),
                None => "a list".into(),
            },
            Expect::Table(table) if !table.required.is_empty() => {
                let keys: Vec<String> = table.required.iter().map(|k| format!("`{k}`")).collect();
                format!("a table with {}", join(&keys, "and"))
            }
            Expect::Tagged { tag, .. } => format!("a table with `{tag}`"),
            Expect::Table(_) => "a table".into(),
            Expect::Either(all) => {
                join(&all.iter().map(Expect::describe).collect::<Vec<_>>(), "or")
            }
        }
    }

    fn plural(&self) -> Option<&'static str> {
        match self {
            Expect::String => Some("strings"),
            Expect::Duration => Some("durations"),
            Expect::Integer { .. } => Some("whole numbers"),
            Expect::Number => Some("numbers"),
            Expect::Table(_) | Expect::Tagged { .. } => Some("tables"),
            _ => None,
        }
    }
}

/// `"a", "b" or "c"`.
pub(super) fn quoted_or(values: &[&str]) -> String {
    let quoted: Vec<String> = values.iter().map(|v| format!("{v:?}")).collect();
    join(&quoted, "or")
}

/// `a, b and c` (or `or`).
pub(super) fn join(words: &[String], last: &str) -> String {
    match words {
        [] => String::new(),
        [one] => one.clone(),
        [init @ .., tail] => format!("{} {last} {tail}", init.join(", ")),
    }
}

/// The first sentence of a doc comment, starting lower-case unless it starts with an
/// acronym or a symbol.
fn first_sentence(text: &str) -> String {
    let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
    let end = text.find(". ").unwrap_or(text.len());
    let sentence = text[..end].trim_end_matches('.');
    let mut chars = sentence.chars();
    match (chars.next(), chars.next()) {
        (Some(first), Some(second)) if first.is_uppercase() && second.is_lowercase() => first
            .to_lowercase()
            .chain(sentence.chars().skip(1))
            .collect(),
        _ => sentence.to_string(),
    }
}

/// The candidate closest to a misspelt `word`, if one is close enough to be what was
/// meant (case, `-` for `_` and one swapped pair of letters count little).
pub(super) fn closest<'c>(word: &str, candidates: &[&'c str]) -> Option<&'c str> {
    let norm = |w: &str| -> Vec<char> {
        w.chars()
            .flat_map(char::to_lowercase)
            .map(|c| if c == '-' { '_' } else { c })
            .collect()
    };
    let word = norm(word);
    let allowed = (word.len() / 3).clamp(1, 3);
    let near = candidates
        .iter()
        .map(|c| (distance(&word, &norm(c)), *c))
        .filter(|(d, _)| *d <= allowed)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c);
    // Else the one key that starts with the word (`limit` for `limit_param`).
    let mut longer = candidates
        .iter()
        .filter(|c| word.len() >= 3 && norm(c).starts_with(&word));
    near.or_else(|| match (longer.next(), longer.next()) {
        (Some(only), None) => Some(*only),
        _ => None,
    })
}

/// Edit distance with adjacent transpositions (optimal string alignment).
fn distance(a: &[char], b: &[char]) -> usize {
    let width = b.len() + 1;
    let mut d = vec![0usize; (a.len() + 1) * width];
    for i in 0..=a.len() {
        for j in 0..=b.len() {
            d[i * width + j] = if i == 0 || j == 0 {
                i + j
            } else {
                let cost = usize::from(a[i - 1] != b[j - 1]);
                let mut best = (d[(i - 1) * width + j] + 1)
                    .min(d[i * width + j - 1] + 1)
                    .min(d[(i - 1) * width + j - 1] + cost);
                if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                    best = best.min(d[(i - 2) * width + j - 2] + 1);
                }
                best
            };
        }
    }
    d[a.len() * width + b.len()]
}
