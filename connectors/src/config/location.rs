//! Where a key is in the file's text, read off the parsed TOML document (which keeps the
//! byte span of every key, value and `[header]`): the key path of each value, the offset
//! of a key path, the key path at an offset, and line and column of an offset.
//!
//! Key paths are dotted (`source.backoff.base`); an element of a list is `[i]` (0-based:
//! `source.on_response[1]` is the second rule), except a table with a `name`, which is
//! named by it (`stream.orders.window.lag`). A key that is not a bare TOML key is quoted
//! (`stream.orders.headers."X Trace"`).

use std::ops::Range;

use toml_edit::{
    Array, ArrayOfTables, ImDocument, InlineTable, Item, Key, Table, TableLike, Value,
};

/// 1-based line and column (in characters) of a byte offset.
pub(super) fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

/// One value of the document, as far as its shape goes.
#[derive(Clone, Copy)]
pub(super) enum Node<'d> {
    /// A string, number, boolean or date-time.
    Scalar(&'d Value),
    /// `[…]`
    Array(&'d Array),
    /// `[[name]]` tables.
    Tables(&'d ArrayOfTables),
    /// A `[name]` table, or one made by dotted keys (`window.lag = …`) or implied by a
    /// deeper header.
    Table(&'d Table),
    /// `{…}`
    Inline(&'d InlineTable),
}

impl<'d> Node<'d> {
    /// The node of an item (`None` for an empty one).
    pub(super) fn of(item: &'d Item) -> Option<Self> {
        match item {
            Item::None => None,
            Item::Value(v) => Some(Self::value(v)),
            Item::Table(t) => Some(Node::Table(t)),
            Item::ArrayOfTables(a) => Some(Node::Tables(a)),
        }
    }

    fn value(value: &'d Value) -> Self {
        match value {
            Value::Array(a) => Node::Array(a),
            Value::InlineTable(t) => Node::Inline(t),
            _ => Node::Scalar(value),
        }
    }

    /// Where it is written (a header table: from its header on).
    pub(super) fn span(&self) -> Option<Range<usize>> {
        match self {
            Node::Scalar(v) => v.span(),
            Node::Array(a) => a.span(),
            Node::Tables(a) => a.span(),
            Node::Table(t) => t.span(),
            Node::Inline(t) => t.span(),
        }
    }

    /// A table with its own `[header]` (or `[[header]]`).
    pub(super) fn is_header(&self) -> bool {
        match self {
            Node::Table(t) => !t.is_implicit() && !t.is_dotted() && t.span().is_some(),
            Node::Tables(_) => true,
            _ => false,
        }
    }

    /// Its keys, if it is a table.
    pub(super) fn table(&self) -> Option<&'d dyn TableLike> {
        match self {
            Node::Table(t) => Some(*t),
            Node::Inline(t) => Some(*t),
            _ => None,
        }
    }

    /// Its elements, if it is a list.
    pub(super) fn elements(&self) -> Vec<Node<'d>> {
        match self {
            Node::Array(a) => a.iter().map(Node::value).collect(),
            Node::Tables(a) => a.iter().map(Node::Table).collect(),
            _ => Vec::new(),
        }
    }
}

/// A node below another: its key path, where to point at it, and the node.
pub(super) struct Child<'d> {
    /// Its key path.
    pub(super) key: String,
    /// Its key as written (`None` for an element of a list).
    pub(super) name: Option<&'d str>,
    /// Where an error about it points: its header, its key, or (an element) itself.
    pub(super) at: Option<usize>,
    /// The node.
    pub(super) node: Node<'d>,
}

/// The keys of a table, or the elements of a list, in file order.
pub(super) fn children<'d>(node: Node<'d>, key: &str) -> Vec<Child<'d>> {
    match node.table() {
        Some(table) => table
            .iter()
            .filter_map(|(name, item)| {
                let node = Node::of(item)?;
                let key_at = table.key(name).and_then(Key::span).map(|s| s.start);
                let at = match node.is_header() {
                    true => node.span().map(|s| s.start).or(key_at),
                    false => key_at,
                };
                Some(Child {
                    key: child_key(key, name),
                    name: Some(name),
                    at,
                    node,
                })
            })
            .collect(),
        None => node
            .elements()
            .into_iter()
            .enumerate()
            .map(|(i, node)| Child {
                key: element_key(key, i, node),
                name: None,
                at: node.span().map(|s| s.start),
                node,
            })
            .collect(),
    }
}

/// `parent.key`, the key quoted unless it is bare.
pub(super) fn child_key(parent: &str, key: &str) -> String {
    let key = match bare(key) {
        true => key.to_string(),
        false => format!("{key:?}"),
    };
    match parent.is_empty() {
        true => key,
        false => format!("{parent}.{key}"),
    }
}

/// `list.<name>` for a table with a usable `name`, else `list[i]`.
fn element_key(list: &str, i: usize, node: Node<'_>) -> String {
    let name = node
        .table()
        .and_then(|t| t.get("name"))
        .and_then(Item::as_str)
        .filter(|n| bare(n));
    match name {
        Some(name) => format!("{list}.{name}"),
        None => format!("{list}[{i}]"),
    }
}

fn bare(key: &str) -> bool {
    !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// The byte offset of a key path (`stream.orders.pagination.since_param`) in the text: the
/// key itself, else the nearest enclosing key, element or table that is there (0 when
/// nothing is).
pub(super) fn locate(text: &str, key: &str) -> usize {
    let Ok(doc) = ImDocument::parse(text) else {
        return 0;
    };
    let (mut node, mut at, mut path) = (Node::Table(doc.as_table()), 0, String::new());
    loop {
        let next = children(node, &path).into_iter().find(|c| {
            key.strip_prefix(c.key.as_str())
                .is_some_and(|rest| rest.is_empty() || rest.starts_with(['.', '[']))
        });
        let Some(child) = next else {
            return at;
        };
        at = child
            .at
            .or(child.node.span().map(|s| s.start))
            .unwrap_or(at);
        (node, path) = (child.node, child.key);
    }
}

/// The key path of the innermost key or value whose text holds `offset`.
pub(super) fn key_at(text: &str, offset: usize) -> Option<String> {
    let doc = ImDocument::parse(text).ok()?;
    innermost(Node::Table(doc.as_table()), "", offset)
}

fn innermost(node: Node<'_>, key: &str, offset: usize) -> Option<String> {
    let holds = |span: Option<Range<usize>>| {
        span.is_some_and(|s| s.start <= offset && offset < s.end.max(s.start + 1))
    };
    for child in children(node, key) {
        if let Some(found) = innermost(child.node, &child.key, offset) {
            return Some(found);
        }
        let key_span = child.at.map(|at| at..at + child.name.map_or(0, str::len));
        if holds(key_span) || holds(child.node.span()) {
            return Some(child.key);
        }
    }
    None
}
