//! Time filters of the list endpoints (`updated_since`, `updated_after`, `updated_before`).

use super::query::ListQuery;
use super::BadRequest;
use crate::sandbox::data::{format_ms, Key};
use crate::sandbox::{Quirk, Sandbox};

/// One end of a time filter.
pub(super) enum Edge {
    /// Compare instants.
    Ms(u64),
    /// Compare the stored text with this text (quirk `string-compare`).
    Text(String),
}

impl Edge {
    pub(super) fn compare(&self, ms: u64) -> std::cmp::Ordering {
        match self {
            Edge::Ms(t) => ms.cmp(t),
            Edge::Text(t) => format_ms(ms).as_str().cmp(t.as_str()),
        }
    }
}

/// Parses a filter value: RFC 3339, unix seconds, or unix milliseconds.
pub(super) fn instant(name: &str, text: &str) -> Result<u64, BadRequest> {
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        let n: u64 = text
            .parse()
            .map_err(|_| BadRequest(format!("{name}: out of range")))?;
        // Up to 11 digits are seconds (until year 5138), more are milliseconds.
        return Ok(if text.len() <= 11 { n * 1000 } else { n });
    }
    humantime::parse_rfc3339_weak(text)
        .map(|t| waymark_engine::Timestamp::from_system(t).0)
        .map_err(|e| {
            BadRequest(format!(
                "{name}: `{text}` is not RFC 3339, unix seconds or milliseconds ({e})"
            ))
        })
}

/// The time filters of a request.
pub(super) struct Filter {
    /// Lower edge and whether it is inclusive.
    pub(super) lower: Option<(Edge, bool)>,
    /// Approximate lower instant, where the scan starts.
    pub(super) scan_from: u64,
    pub(super) since_id: Option<u64>,
    pub(super) upper: Option<(Edge, bool)>,
}

impl Filter {
    pub(super) fn parse(s: &Sandbox, q: &ListQuery) -> Result<Filter, BadRequest> {
        let text = s.quirk(Quirk::StringCompare);
        let inclusive_only = s.quirk(Quirk::InclusiveFilters);
        let edge = |name: &str, value: &str| -> Result<(Edge, u64), BadRequest> {
            let ms = instant(name, value)?;
            Ok(if text {
                (Edge::Text(value.to_string()), ms.saturating_sub(1000))
            } else {
                (Edge::Ms(ms), ms)
            })
        };
        if inclusive_only && q.updated_after.is_some() {
            return Err(BadRequest(
                "unknown parameter `updated_after`; use `updated_since` (inclusive)".into(),
            ));
        }
        let (lower, scan_from) = match (&q.updated_since, &q.updated_after) {
            (Some(_), Some(_)) => {
                return Err(BadRequest(
                    "give `updated_since` or `updated_after`, not both".into(),
                ))
            }
            (Some(v), None) => {
                let (e, ms) = edge("updated_since", v)?;
                (Some((e, true)), ms)
            }
            (None, Some(v)) => {
                let (e, ms) = edge("updated_after", v)?;
                (Some((e, false)), ms)
            }
            (None, None) => (None, 0),
        };
        if q.since_id.is_some() && q.updated_since.is_none() {
            return Err(BadRequest(
                "`since_id` needs `updated_since` (keyset pagination)".into(),
            ));
        }
        let upper = match &q.updated_before {
            Some(v) => Some((edge("updated_before", v)?.0, inclusive_only)),
            None => None,
        };
        Ok(Filter {
            lower,
            scan_from,
            since_id: q.since_id,
            upper,
        })
    }

    pub(super) fn above_lower(&self, (ms, id): Key) -> bool {
        use std::cmp::Ordering::*;
        match &self.lower {
            None => true,
            Some((edge, inclusive)) => match edge.compare(ms) {
                Greater => true,
                Less => false,
                Equal => self.since_id.map_or(*inclusive, |since| id > since),
            },
        }
    }

    pub(super) fn below_upper(&self, (ms, _): Key) -> bool {
        use std::cmp::Ordering::*;
        match &self.upper {
            None => true,
            Some((edge, inclusive)) => match edge.compare(ms) {
                Less => true,
                Equal => *inclusive,
                Greater => false,
            },
        }
    }
}
