//! The file's shape, checked before serde reads it.
//!
//! The text is parsed as a TOML document (keeping where every key and value is) and walked
//! against the JSON Schema of [`File`](super::File): a key unknown where it is (with the
//! closest known key), a required key missing (pointing at its table), a value of the wrong
//! type or out of range, a duration humantime cannot read, a value not among an enum's.
//! Each is an [`Error::Invalid`] with the right key path and a message in the file's own
//! terms; TOML syntax errors stay [`Error::Syntax`]. The walk knows no key by name, except
//! the one thing the schema cannot say: which pagination keys go with which `kind`.

use std::path::Path;

use serde_json::Value;
use toml_edit::{ImDocument, TableLike};

use super::error::Error;
use super::expect::{closest, join, quoted_or, Expect, Schema, Table, Written, DURATION};
use super::location::{child_key, children, line_col, Node};
use super::source::{Pagination, PaginationKind};

/// Checks the text's TOML syntax and its shape against the schema.
pub(super) fn check(path: &Path, text: &str) -> Result<(), Error> {
    let doc = ImDocument::parse(text).map_err(|e| {
        let (line, column) = line_col(text, e.span().map_or(0, |s| s.start));
        Error::Syntax {
            path: path.to_path_buf(),
            line,
            column,
            message: e
                .message()
                .lines()
                .map(str::trim)
                .collect::<Vec<_>>()
                .join("; "),
        }
    })?;
    let walk = Walk {
        path,
        text,
        schema: Schema::get(),
    };
    walk.check(Node::Table(doc.as_table()), &walk.schema.file(), "", 0)
}

struct Walk<'a> {
    path: &'a Path,
    text: &'a str,
    schema: &'static Schema,
}

/// A pagination table's `kind` and the keys each kind takes.
struct Style {
    kind: String,
    /// Every kind, with the keys it takes (besides `kind`).
    kinds: Vec<(String, Vec<&'static str>)>,
}

impl Style {
    fn takes(&self, kind: &str) -> &[&'static str] {
        self.kinds
            .iter()
            .find(|(k, _)| k == kind)
            .map_or(&[], |(_, keys)| keys.as_slice())
    }

    /// `kind = "cursor" takes cursor_path, cursor_param, cursor_in, has_more_path, end_path, max_records and limit_param`.
    fn listing(&self) -> String {
        let keys: Vec<String> = self
            .takes(&self.kind)
            .iter()
            .map(|k| k.to_string())
            .collect();
        let only = if keys.len() == 1 { "only " } else { "" };
        format!("kind = {:?} takes {only}{}", self.kind, join(&keys, "and"))
    }
}

impl Walk<'_> {
    fn error(&self, at: usize, key: &str, message: impl Into<String>) -> Error {
        let (line, column) = line_col(self.text, at);
        Error::Invalid {
            path: self.path.to_path_buf(),
            line,
            column,
            key: key.to_string(),
            message: message.into(),
        }
    }

    /// Checks `node` (at `key`) against what the schema expects there; `anchor` is where a
    /// missing key of it is reported (its header, or its key).
    fn check(
        &self,
        node: Node<'_>,
        expect: &Expect<'_>,
        key: &str,
        anchor: usize,
    ) -> Result<(), Error> {
        let at = node.span().map_or(anchor, |s| s.start);
        let written = written(node);
        let text = match node {
            Node::Scalar(v) => v.as_str().unwrap_or_default(),
            _ => "",
        };
        match expect {
            Expect::Any => Ok(()),
            Expect::Either(all) => match all.iter().find(|e| e.accepts(written)) {
                Some(one) => self.check(node, one, key, anchor),
                None => Err(self.error(at, key, self.wrong(node, expect))),
            },
            _ if !expect.accepts(written) => Err(self.error(at, key, self.wrong(node, expect))),
            Expect::Duration => match humantime::parse_duration(text) {
                Ok(_) => Ok(()),
                Err(_) => {
                    let mut message = format!("expected {DURATION}, got {}", quote(text));
                    if text.trim().parse::<f64>().is_ok() {
                        message.push_str(&format!("; add a unit, e.g. \"{}s\"", text.trim()));
                    }
                    Err(self.error(at, key, message))
                }
            },
            Expect::Integer { min, max } => {
                let n = match node {
                    Node::Scalar(v) => i128::from(v.as_integer().unwrap_or_default()),
                    _ => 0,
                };
                if n < *min {
                    return Err(self.error(
                        at,
                        key,
                        format!("expected a whole number of at least {min}, got {n}"),
                    ));
                }
                if n > *max {
                    return Err(self.error(
                        at,
                        key,
                        format!("expected a whole number of at most {max}, got {n}"),
                    ));
                }
                Ok(())
            }
            Expect::Choice(values) if !values.contains(&text) => {
                let mut message =
                    format!("expected one of {}, got {}", quoted_or(values), quote(text));
                if let Some(near) = closest(text, values) {
                    message.push_str(&format!("; did you mean {near:?}?"));
                }
                Err(self.error(at, key, message))
            }
            Expect::List(item) => {
                for child in children(node, key) {
                    self.check(child.node, item, &child.key, child.at.unwrap_or(at))?;
                }
                Ok(())
            }
            Expect::Table(table) => self.table(node, table, key, anchor),
            Expect::Tagged { tag, variants } => self.tagged(node, tag, variants, key, anchor),
            Expect::String | Expect::Number | Expect::Bool | Expect::Choice(_) => Ok(()),
        }
    }

    /// "expected …, got …", with a hint where the fix is plain.
    fn wrong(&self, node: Node<'_>, expect: &Expect<'_>) -> String {
        let got = self.got(node);
        let mut message = format!("expected {}, got {got}", expect.describe());
        match (expect, node) {
            (Expect::Duration, Node::Scalar(v)) if v.is_integer() || v.is_float() => {
                let number = got.trim_start_matches("the number ");
                message.push_str(&format!("; add a unit, e.g. \"{number}s\""));
            }
            (_, Node::Scalar(v)) if v.is_datetime() && expect.accepts(Written::String) => {
                message.push_str("; write it in quotes");
            }
            (Expect::Table(_) | Expect::Tagged { .. }, Node::Tables(_)) => {
                if let Some(name) = self.header(node) {
                    message.push_str(&format!("; write its header [{name}]"));
                }
            }
            (Expect::List(_), Node::Table(_)) if node.is_header() => {
                if let Some(name) = self.header(node) {
                    message.push_str(&format!("; write its header [[{name}]]"));
                }
            }
            _ => {}
        }
        message
    }

    /// The name in a table's `[header]` (or `[[header]]`), as written.
    fn header(&self, node: Node<'_>) -> Option<String> {
        let rest = self.text.get(node.span()?.start..)?;
        let line = rest.lines().next()?;
        let inside = line.trim_start_matches('[').split(']').next()?;
        Some(inside.trim().to_string())
    }

    /// What was written, in words: `the string "500"`, `the number 5`, `a table`.
    fn got(&self, node: Node<'_>) -> String {
        let raw = || {
            node.span()
                .and_then(|s| self.text.get(s))
                .map_or(String::new(), |r| r.trim().to_string())
        };
        match node {
            Node::Scalar(v) => match v.as_str() {
                Some(s) => format!("the string {}", quote(s)),
                None if v.is_datetime() => format!("the date-time {}", raw()),
                None if v.is_bool() => raw(),
                None => format!("the number {}", raw()),
            },
            Node::Array(_) => "a list".into(),
            Node::Tables(_) => "a list of tables".into(),
            Node::Table(_) | Node::Inline(_) => "a table".into(),
        }
    }

    /// A table's keys: each known and of its type, the required ones present.
    fn table(
        &self,
        node: Node<'_>,
        spec: &Table<'_>,
        key: &str,
        anchor: usize,
    ) -> Result<(), Error> {
        let Some(table) = node.table() else {
            return Ok(());
        };
        let style = match self.schema.is_pagination(spec) {
            true => self.style(table, spec, key, anchor)?,
            false => None,
        };
        let property = |name: &str| spec.properties.and_then(|p| p.get(name));
        for child in children(node, key) {
            let name = child.name.unwrap_or_default();
            let at = child.at.unwrap_or(anchor);
            match (property(name), &spec.other) {
                (Some(_), _) if style.is_some() && name == "kind" => {}
                (Some(schema), _) => {
                    if let Some(style) =
                        style.as_ref().filter(|s| !s.takes(&s.kind).contains(&name))
                    {
                        return Err(self.error(at, &child.key, stray(style, name)));
                    }
                    self.check(child.node, &self.schema.expect(schema), &child.key, at)?;
                }
                (None, Some(other)) => self.check(child.node, other, &child.key, at)?,
                (None, None) => {
                    return Err(self.error(
                        at,
                        &child.key,
                        self.unknown(name, spec, style.as_ref(), child.node),
                    ));
                }
            }
        }
        for required in &spec.required {
            if !table.contains_key(required) {
                let message = self.missing(key, required, property(required));
                return Err(self.error(anchor, &child_key(key, required), message));
            }
        }
        Ok(())
    }

    /// A table whose `tag` key picks its variant: the tag first, then that variant's keys.
    fn tagged(
        &self,
        node: Node<'_>,
        tag: &str,
        variants: &[(&str, Table<'_>)],
        key: &str,
        anchor: usize,
    ) -> Result<(), Error> {
        let tags: Vec<&str> = variants.iter().map(|(t, _)| *t).collect();
        let tag_key = child_key(key, tag);
        let Some(child) = children(node, key)
            .into_iter()
            .find(|c| c.name == Some(tag))
        else {
            let message = format!("required key missing: one of {}", quoted_or(&tags));
            return Err(self.error(anchor, &tag_key, message));
        };
        let at = child.at.unwrap_or(anchor);
        self.check(child.node, &Expect::Choice(tags), &tag_key, at)?;
        let value = match child.node {
            Node::Scalar(v) => v.as_str(),
            _ => None,
        };
        match variants.iter().find(|(t, _)| Some(*t) == value) {
            Some((_, table)) => self.table(node, table, key, anchor),
            None => Ok(()),
        }
    }

    /// A pagination table's `kind`, checked first: the keys allowed beside it depend on it.
    fn style(
        &self,
        table: &dyn TableLike,
        spec: &Table<'_>,
        key: &str,
        anchor: usize,
    ) -> Result<Option<Style>, Error> {
        let Some(schema) = spec.properties.and_then(|p| p.get("kind")) else {
            return Ok(None);
        };
        let expect = self.schema.expect(schema);
        let kind_key = child_key(key, "kind");
        let Some((k, item)) = table.get_key_value("kind") else {
            let message = self.missing(key, "kind", Some(schema));
            return Err(self.error(anchor, &kind_key, message));
        };
        let at = item.span().or(k.span()).map_or(anchor, |s| s.start);
        if let Some(node) = Node::of(item) {
            self.check(node, &expect, &kind_key, at)?;
        }
        let Expect::Choice(kinds) = expect else {
            return Ok(None);
        };
        let kinds = kinds
            .iter()
            .filter_map(|k| {
                let kind: PaginationKind =
                    serde_json::from_value(Value::String(k.to_string())).ok()?;
                Some((k.to_string(), Pagination::takes(kind)))
            })
            .collect();
        Ok(item.as_str().map(|kind| Style {
            kind: kind.to_string(),
            kinds,
        }))
    }

    /// An unknown key: the closest known one, else the keys known here.
    fn unknown(
        &self,
        name: &str,
        spec: &Table<'_>,
        style: Option<&Style>,
        node: Node<'_>,
    ) -> String {
        if let Some(style) = style {
            return match closest(name, style.takes(&style.kind)) {
                Some(near) => format!("unknown key; did you mean `{near}`? ({})", style.listing()),
                None => format!("unknown key; {}", style.listing()),
            };
        }
        let what = if node.is_header() { "table" } else { "key" };
        let known: Vec<&str> = spec
            .properties
            .map(|p| p.keys().map(String::as_str).collect())
            .unwrap_or_default();
        if let Some(near) = closest(name, &known) {
            return format!("unknown {what}; did you mean `{near}`?");
        }
        // A key of a table inside this one, written a level too high (`lag` for `window.lag`).
        let has = |schema: &Value| match self.schema.expect(schema) {
            Expect::Table(t) => t.properties.is_some_and(|p| p.contains_key(name)),
            _ => false,
        };
        let inner = spec.properties.into_iter().flatten().find(|(_, s)| has(s));
        if let Some((table, _)) = inner {
            return format!("unknown key here; did you mean `{table}.{name}`?");
        }
        let known: Vec<String> = known.iter().map(|k| k.to_string()).collect();
        format!("unknown {what}; the known ones are {}", join(&known, "and"))
    }

    /// A required key that is not there.
    fn missing(&self, parent: &str, name: &str, schema: Option<&Value>) -> String {
        let Some(schema) = schema else {
            return "required key missing".into();
        };
        match self.schema.expect(schema) {
            Expect::Table(_) if parent.is_empty() => format!("missing table [{name}]"),
            Expect::List(item) if parent.is_empty() && matches!(*item, Expect::Table(_)) => {
                format!("missing; declare at least one [[{name}]]")
            }
            Expect::Choice(values) => {
                format!("required key missing: one of {}", quoted_or(&values))
            }
            _ => match self.schema.description(schema) {
                Some(what) => format!("required key missing: {what}"),
                None => "required key missing".into(),
            },
        }
    }
}

/// A pagination key of another kind.
fn stray(style: &Style, name: &str) -> String {
    let owners: Vec<&str> = style
        .kinds
        .iter()
        .filter(|(_, keys)| keys.contains(&name))
        .map(|(k, _)| k.as_str())
        .collect();
    match owners.is_empty() {
        true => format!(
            "does not apply to kind = {:?}; {}",
            style.kind,
            style.listing()
        ),
        false => format!(
            "applies to kind = {}, not {:?}; {}",
            quoted_or(&owners),
            style.kind,
            style.listing()
        ),
    }
}

fn written(node: Node<'_>) -> Written {
    match node {
        Node::Scalar(v) if v.is_str() => Written::String,
        Node::Scalar(v) if v.is_integer() => Written::Integer,
        Node::Scalar(v) if v.is_float() => Written::Float,
        Node::Scalar(v) if v.is_bool() => Written::Bool,
        Node::Scalar(_) => Written::Datetime,
        Node::Array(_) | Node::Tables(_) => Written::List,
        Node::Table(_) | Node::Inline(_) => Written::Table,
    }
}

/// A string as TOML writes it, cut after 40 characters.
fn quote(text: &str) -> String {
    let shown: String = text.chars().take(40).collect();
    let mut quoted = format!("{shown:?}");
    if shown.len() < text.len() {
        quoted.pop();
        quoted.push_str("…\"");
    }
    quoted
}
