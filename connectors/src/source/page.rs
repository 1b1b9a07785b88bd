//! Reading a page's body: the records array (a dotted path or a JSONPath) without
//! re-serialising records, values at paths, record shaping (filter, projection), and the
//! fingerprint that notices the same page served twice.

use serde_json::value::RawValue;
use serde_json::Value;

use waymark_engine::source::{self, ErrorKind};

use crate::config::StreamSection;
use crate::http::excerpt::excerpt;
use crate::record::{lookup, scalar};

pub(super) fn fatal(message: String) -> source::Error {
    source::Error::new(ErrorKind::Fatal, message)
}

/// The raw JSON at a dotted path of a document, without parsing what it does not need.
pub(super) fn raw_at<'a>(
    doc: &'a RawValue,
    path: &str,
) -> Result<Option<&'a RawValue>, serde_json::Error> {
    let mut current = doc;
    for part in path.split('.').filter(|p| !p.is_empty()) {
        let map: std::collections::HashMap<String, &RawValue> =
            match serde_json::from_str(current.get()) {
                Ok(map) => map,
                Err(_) => return Ok(None),
            };
        match map.get(part) {
            Some(v) => current = v,
            None => return Ok(None),
        }
    }
    Ok(Some(current))
}

/// The page body as a JSON document, without parsing what is not needed.
pub fn document(body: &[u8]) -> Result<&RawValue, source::Error> {
    serde_json::from_slice(body).map_err(|e| {
        source::Error::new(
            ErrorKind::Retry,
            format!("the page is not JSON ({e}); it starts: {}", excerpt(body)),
        )
    })
}

/// The records array at `path` (empty: the document is the array), each record's text as
/// the API sent it.
pub fn records_at<'a>(doc: &'a RawValue, path: &str) -> Result<Vec<&'a RawValue>, source::Error> {
    let array = raw_at(doc, path)
        .map_err(|e| fatal(e.to_string()))?
        .ok_or_else(|| {
            fatal(format!(
                "records path `{path}` is not in the page: {}",
                excerpt(doc.get().as_bytes())
            ))
        })?;
    serde_json::from_str(array.get()).map_err(|_| {
        fatal(format!(
            "records path `{path}` is not an array: {}",
            excerpt(array.get().as_bytes())
        ))
    })
}

/// The JSON value at a dotted path, if present.
pub(super) fn value_at(doc: &RawValue, path: &str) -> Option<Value> {
    raw_at(doc, path)
        .ok()
        .flatten()
        .and_then(|raw| serde_json::from_str(raw.get()).ok())
}

/// Applies the stream's record filter and field projection.
pub(super) fn shape(records: Vec<String>, stream: &StreamSection) -> Result<Vec<String>, String> {
    let mut out = Vec::with_capacity(records.len());
    for text in records {
        let value: Value =
            serde_json::from_str(&text).map_err(|e| format!("a record is not JSON: {e}"))?;
        if let Some(filter) = &stream.filter {
            let found = lookup(&value, &filter.path).and_then(scalar);
            if !found.is_some_and(|v| filter.one_of.contains(&v)) {
                continue;
            }
        }
        let Some(fields) = &stream.fields else {
            out.push(text);
            continue;
        };
        let mut kept = Value::Object(serde_json::Map::new());
        for path in fields {
            if let Some(v) = lookup(&value, path) {
                let mut slot = &mut kept;
                let parts: Vec<&str> = path.split('.').collect();
                for (i, part) in parts.iter().enumerate() {
                    let Value::Object(map) = slot else { break };
                    slot = if i + 1 == parts.len() {
                        map.insert((*part).to_string(), v.clone());
                        break;
                    } else {
                        map.entry((*part).to_string())
                            .or_insert_with(|| Value::Object(serde_json::Map::new()))
                    };
                }
            }
        }
        out.push(kept.to_string());
    }
    Ok(out)
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
