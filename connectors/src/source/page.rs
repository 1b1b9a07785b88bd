//! Reading a page's body: the records array (a dotted path or a JSONPath) without
//! re-serialising records, values at paths, record shaping (filter, projection), and the
//! fingerprint that notices the same page served twice.

use std::collections::BTreeMap;

use serde_json::value::RawValue;
use serde_json::Value;
use serde_json_path::{JsonPath, PathElement};

use waymark_engine::source::{self, ErrorKind};

use crate::config::StreamSection;
use crate::http::excerpt::excerpt;
use crate::record::{instant, raw_at, raw_child, space, value_end, Fields};
use waymark_engine::Timestamp;

pub(super) fn fatal(message: String) -> source::Error {
    source::Error::new(ErrorKind::Fatal, message)
}

/// A page body, read once: one scan checks that it is JSON and, for an object (the usual
/// page), splits its top-level fields as raw JSON, so the records array, the cursor and the
/// stop signals are found without scanning the page again.
pub struct Document<'a> {
    text: &'a str,
    shape: Shape<'a>,
    /// The records array's items, split by the same scan ([`Document::with_records`]).
    records: Option<(String, Vec<&'a str>)>,
}

enum Shape<'a> {
    /// An object's top-level fields.
    Object(Fields<'a>),
    /// Any other JSON value (an array of records).
    Other(&'a RawValue),
    /// An array, checked and split into its items (read again only if a path asks).
    Array,
}

impl<'a> Document<'a> {
    /// The page body as a JSON document (not JSON: worth a retry, the API may have sent
    /// an error page).
    pub fn parse(body: &'a [u8]) -> Result<Self, source::Error> {
        Self::read(body, None)
    }

    /// The page body as [`Document::parse`] reads it, its records array at `records` (a
    /// top-level field, or empty: the whole document) split into records by the same scan
    /// ([`records_at`] then has them at once).
    pub fn with_records(body: &'a [u8], records: &str) -> Result<Self, source::Error> {
        Self::read(body, Some(records))
    }

    fn read(body: &'a [u8], records: Option<&str>) -> Result<Self, source::Error> {
        let not_json = |e: &dyn std::fmt::Display| {
            source::Error::new(
                ErrorKind::Retry,
                format!("the page is not JSON ({e}); it starts: {}", excerpt(body)),
            )
        };
        let text = std::str::from_utf8(body).map_err(|e| not_json(&e))?;
        let object = text.trim_start().starts_with('{');
        let (shape, split) = match records {
            Some(path) if object && !path.is_empty() && !path.contains('.') => {
                let (fields, split) =
                    Fields::parse_splitting(text, path).map_err(|e| not_json(&e))?;
                (
                    Shape::Object(fields),
                    split.map(|items| (path.to_string(), items)),
                )
            }
            Some("") if !object => match serde_json::from_str::<Vec<&RawValue>>(text) {
                Ok(items) => {
                    let items = items.iter().map(|item| item.get()).collect();
                    (Shape::Array, Some((String::new(), items)))
                }
                Err(_) => (
                    Shape::Other(serde_json::from_str(text).map_err(|e| not_json(&e))?),
                    None,
                ),
            },
            _ if object => (
                Shape::Object(Fields::parse(text).map_err(|e| not_json(&e))?),
                None,
            ),
            _ => (
                Shape::Other(serde_json::from_str(text).map_err(|e| not_json(&e))?),
                None,
            ),
        };
        Ok(Document {
            text,
            shape,
            records: split,
        })
    }

    /// The page's text.
    pub fn text(&self) -> &'a str {
        self.text
    }

    /// The raw JSON at a dotted path (empty: the whole document), without scanning what
    /// the path does not go through.
    pub fn at(&self, path: &str) -> Option<&'a RawValue> {
        match (&self.shape, path.is_empty()) {
            (Shape::Other(raw), true) => Some(raw),
            (Shape::Other(raw), false) => raw_at(raw, path),
            (Shape::Object(_) | Shape::Array, true) => serde_json::from_str(self.text).ok(),
            (Shape::Array, false) => raw_at(serde_json::from_str(self.text).ok()?, path),
            (Shape::Object(fields), false) => fields.raw(path),
        }
    }

    /// The JSON value at a dotted path, if present.
    pub fn value(&self, path: &str) -> Option<Value> {
        self.at(path)
            .and_then(|raw| serde_json::from_str(raw.get()).ok())
    }
}

/// The records array at `path` (empty: the document is the array), each record's text as
/// the API sent it.
pub fn records_at<'a>(doc: &Document<'a>, path: &str) -> Result<Vec<&'a str>, source::Error> {
    if let Some((_, items)) = doc.records.as_ref().filter(|(at, _)| *at == path) {
        return Ok(items.clone());
    }
    let array = doc.at(path).ok_or_else(|| {
        fatal(format!(
            "records path `{path}` is not in the page: {}",
            excerpt(doc.text().as_bytes())
        ))
    })?;
    items(array).ok_or_else(|| {
        fatal(format!(
            "records path `{path}` is not an array: {}",
            excerpt(array.get().as_bytes())
        ))
    })
}

/// The items of a JSON array, each as its text; `None` when `array` is not an array.
///
/// The page was checked as JSON when it was read ([`Document::parse`]), so this scan only
/// follows strings and nesting ([`value_end`]) to find the items: checking the grammar a
/// second time (a `serde_json` parse) was a visible share of a sync's CPU.
fn items(array: &RawValue) -> Option<Vec<&str>> {
    let text = array.get();
    let bytes = text.as_bytes();
    let mut at = space(bytes, 0);
    if bytes.get(at) != Some(&b'[') {
        return None;
    }
    let mut out = Vec::new();
    at = space(bytes, at + 1);
    if bytes.get(at) == Some(&b']') {
        return Some(out);
    }
    loop {
        let end = value_end(bytes, at)?;
        out.push(text.get(at..end)?);
        at = space(bytes, end);
        match bytes.get(at)? {
            b',' => at = space(bytes, at + 1),
            b']' => return Some(out),
            _ => return None,
        }
    }
}

/// The records a JSONPath expression selects in a page, each record's text as the API sent
/// it: the query runs on the parsed page, then each match is taken from the page's text by
/// its location (re-serialising a parsed record would put its numbers through an `f64`).
pub(super) fn records_by_query<'a>(
    doc: &Document<'a>,
    path: &JsonPath,
) -> Result<Vec<&'a str>, String> {
    let value: Value = serde_json::from_str(doc.text()).map_err(|e| e.to_string())?;
    let doc: &RawValue = serde_json::from_str(doc.text()).map_err(|e| e.to_string())?;
    path.query_located(&value)
        .iter()
        .map(|node| {
            node.location()
                .iter()
                .try_fold(doc, |at, step| match step {
                    PathElement::Name(name) => raw_child(at, name),
                    PathElement::Index(i) => raw_child(at, &i.to_string()),
                })
                .map(RawValue::get)
                .ok_or_else(|| format!("{} is not in the page's text", node.location()))
        })
        .collect()
}

/// A projected record: the kept values as the API wrote them, under the objects of their
/// paths.
enum Kept<'a> {
    Raw(&'a RawValue),
    Object(BTreeMap<String, Kept<'a>>),
}

impl serde::Serialize for Kept<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Kept::Raw(raw) => raw.serialize(s),
            Kept::Object(map) => map.serialize(s),
        }
    }
}

/// The greatest value at `field` among `records`, read as an instant ([`instant`]); records
/// without one (or whose value is not a time) do not count.
pub(super) fn max_seen(records: &[String], field: &str) -> Option<Timestamp> {
    records
        .iter()
        .filter_map(|r| Fields::parse(r).ok()?.scalar(field))
        .filter_map(|text| instant(&text))
        .max()
}

/// Applies the stream's record filter and field projection, reading only the paths they
/// name, as raw JSON ([`Fields`]): numbers keep their text, and a record nested deeper than
/// a JSON tree allows is shaped like any other.
pub(super) fn shape(records: Vec<String>, stream: &StreamSection) -> Result<Vec<String>, String> {
    let mut out = Vec::with_capacity(records.len());
    for text in records {
        let shaped = {
            let fields = match Fields::parse(&text) {
                Ok(fields) => fields,
                // JSON, but not an object: no path is in it.
                Err(e) if e.is_data() => Fields::default(),
                Err(e) => return Err(format!("a record is not JSON: {e}")),
            };
            if let Some(filter) = &stream.filter {
                let found = fields.scalar(&filter.path);
                if !found.is_some_and(|v| filter.one_of.contains(&v)) {
                    continue;
                }
            }
            match &stream.fields {
                None => None,
                Some(paths) => Some(project(&fields, paths)?),
            }
        };
        out.push(shaped.unwrap_or(text));
    }
    Ok(out)
}

/// The record with only the values at `paths`, each under the objects of its path.
fn project(fields: &Fields<'_>, paths: &[String]) -> Result<String, String> {
    let mut kept = Kept::Object(BTreeMap::new());
    for path in paths {
        let Some(raw) = fields.raw(path) else {
            continue;
        };
        let mut slot = &mut kept;
        let parts: Vec<&str> = path.split('.').collect();
        for (i, part) in parts.iter().enumerate() {
            let Kept::Object(map) = slot else { break };
            slot = if i + 1 == parts.len() {
                map.insert((*part).to_string(), Kept::Raw(raw));
                break;
            } else {
                map.entry((*part).to_string())
                    .or_insert_with(|| Kept::Object(BTreeMap::new()))
            };
        }
    }
    serde_json::to_string(&kept).map_err(|e| format!("projecting a record: {e}"))
}

/// A page's records in brief: their number, their total length, their CRC-32.
pub(super) type Fingerprint = (usize, usize, u32);

/// A cheap fingerprint of a page's records, to notice the same page served twice: their
/// number, their length and a CRC-32 of them (hardware-accelerated; a byte-wise hash of
/// every page was a visible share of a sync's CPU).
pub(super) fn fingerprint(records: &[String]) -> Fingerprint {
    let mut crc = crc32fast::Hasher::new();
    let mut len = 0;
    for r in records {
        crc.update(r.as_bytes());
        crc.update(&[0]);
        len += r.len();
    }
    (records.len(), len, crc.finalize())
}
