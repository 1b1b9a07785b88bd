//! Reading a record's primary key and version by a dotted path, exactly as the API wrote
//! them.
//!
//! A key or version is read from the record's JSON text, never through a parsed number: a
//! number is its text as sent (`12345678901234567890123`, `1e2` and `-0` stay what they
//! are; through an `f64` the first would meet its neighbour), a string is its characters,
//! a boolean `true` or `false`. A key is that text, so `7` and `"7"` are one key, and `1e2`
//! and `100` two (`primary_key` in docs/workflow-reference.md says why). Only the fields a
//! path goes through are parsed, level by level as raw JSON ([`Fields`], [`raw_at`]), so a
//! record nested deeper than a tree parser allows, or holding a lone surrogate in another
//! field, is read like any other. The sync's write path and a reconciliation both read
//! records this way (`sink::plan::identify`).
//!
//! Versions compare by [`compare_versions`]: numbers by their exact decimal value, anything
//! else as text; [`instant`] reads one as a time.

use std::borrow::Cow;
use std::cmp::Ordering;

use serde_json::value::RawValue;
use serde_json::Value;
use waymark_engine::time::{Timestamp, MAX_RFC3339};

/// The value at a dotted path (`customer.id`) of a JSON value.
pub fn lookup<'a>(value: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(value, |v, part| match v {
        Value::Object(map) => map.get(part),
        Value::Array(items) => items.get(index(part, items.len())?),
        _ => None,
    })
}

/// An array index in a path: `2` the third item, `-1` the last.
pub fn index(part: &str, len: usize) -> Option<usize> {
    match part.strip_prefix('-') {
        Some(back) => len.checked_sub(back.parse::<usize>().ok().filter(|n| *n > 0)?),
        None => part.parse().ok(),
    }
}

/// A parsed scalar as text: strings as they are, numbers and booleans printed; `None` for
/// null, objects and arrays. A number parsed into a [`Value`] has been through an `f64`
/// when it is not a 64-bit integer: read keys and versions with [`scalar_text`].
pub fn scalar(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Null | Value::Array(_) | Value::Object(_) => None,
    }
}

/// A scalar's text, exactly: a string's characters, a number's text as the API wrote it,
/// `true` or `false`; `None` for null, objects, arrays, and a string that is not Unicode
/// (a lone surrogate escape such as `"\ud800"`).
pub fn scalar_text(raw: &RawValue) -> Option<String> {
    let text = raw.get().trim_matches(is_json_space);
    match text.as_bytes().first()? {
        b'"' => serde_json::from_str(text).ok(),
        b'-' | b'0'..=b'9' => Some(text.to_string()),
        b't' | b'f' => Some(text.to_string()),
        _ => None,
    }
}

pub(crate) fn is_json_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\r')
}

/// The raw JSON at a dotted path of a raw JSON value: object fields by name (the last of
/// duplicate names, as in a parsed [`Value`]), array items by index (negative: from the
/// end), as [`lookup`] does.
pub fn raw_at<'a>(raw: &'a RawValue, path: &str) -> Option<&'a RawValue> {
    path.split('.').try_fold(raw, raw_child)
}

/// One step into a raw JSON value: an object's field `part` (the last of duplicates), or an
/// array's item at index `part`.
pub fn raw_child<'a>(at: &'a RawValue, part: &str) -> Option<&'a RawValue> {
    let first = at
        .get()
        .trim_start_matches(is_json_space)
        .as_bytes()
        .first();
    match first? {
        b'{' => Fields::parse(at.get()).ok()?.field(part),
        b'[' => {
            let items: Vec<&'a RawValue> = serde_json::from_str(at.get()).ok()?;
            items.get(index(part, items.len())?).copied()
        }
        _ => None,
    }
}

/// A record's key from one path (its scalar) or several (a JSON array of their scalars);
/// `None` when a part is missing or not a scalar.
pub fn key_by(paths: &[String], scalar_at: impl Fn(&str) -> Option<String>) -> Option<String> {
    match paths {
        [one] => scalar_at(one),
        many => {
            let parts: Option<Vec<String>> = many.iter().map(|p| scalar_at(p)).collect();
            serde_json::to_string(&parts?).ok()
        }
    }
}

/// A record read only as far as it is asked: its top-level fields as raw JSON, each read
/// when a path reaches it. Reading a key and a version this way allocates no tree for the
/// rest of the record (the write path's hot spot), has no depth limit, and hashes nothing:
/// a record has a few dozen fields at most, so a scan beats a map.
#[derive(Default)]
pub struct Fields<'a> {
    top: Vec<(Cow<'a, str>, Raw<'a>)>,
}

/// A top-level field's value: checked as JSON when the record was parsed, or (found by
/// [`Fields::scan`]) checked when a path reads it.
#[derive(Clone, Copy)]
enum Raw<'a> {
    Checked(&'a RawValue),
    Unchecked(&'a str),
}

impl<'a> Raw<'a> {
    fn get(self) -> Option<&'a RawValue> {
        match self {
            Raw::Checked(raw) => Some(raw),
            Raw::Unchecked(text) => serde_json::from_str(text).ok(),
        }
    }
}

impl<'a> Fields<'a> {
    /// The top-level fields of a JSON object. An error when `record` is not JSON, or is
    /// JSON but not an object (`is_data()`).
    pub fn parse(record: &'a str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(record)
    }

    /// Parses a page as [`Fields::parse`] does and, in the same pass, splits the array at
    /// its top-level field `name` (the last of duplicates) into its items' texts: `None`
    /// when that field is missing or not an array. Checking a page and then scanning its
    /// records array again to split it were two passes over every record.
    pub fn parse_splitting(
        text: &'a str,
        name: &str,
    ) -> Result<(Self, Option<Vec<&'a str>>), serde_json::Error> {
        use serde::de::{Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
        /// The page's fields, and the last `name` field's items (`Err(())`: not an array).
        type Split<'de> = (Fields<'de>, Option<Result<Vec<&'de str>, ()>>);
        struct Top<'n, 'de> {
            name: &'n str,
            text: &'de str,
        }
        impl<'de> Visitor<'de> for Top<'_, 'de> {
            type Value = Split<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<Self::Value, M::Error> {
                let mut top = Vec::with_capacity(16);
                let mut split = None;
                while let Some(Name(name)) = map.next_key::<Name<'de>>()? {
                    if name != self.name {
                        top.push((name, Raw::Checked(map.next_value::<&'de RawValue>()?)));
                        continue;
                    }
                    let items = map.next_value_seed(Items)?;
                    if let Ok(items) = &items {
                        top.push((name, Raw::Unchecked(array_text(self.text, items))));
                    }
                    split = Some(items);
                }
                Ok((Fields { top }, split))
            }
        }
        /// An array's items; any other value is read past.
        struct Items;
        impl<'de> serde::de::DeserializeSeed<'de> for Items {
            type Value = Result<Vec<&'de str>, ()>;
            fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
                d.deserialize_any(self)
            }
        }
        impl<'de> Visitor<'de> for Items {
            type Value = Result<Vec<&'de str>, ()>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON value")
            }
            fn visit_seq<S: SeqAccess<'de>>(self, mut seq: S) -> Result<Self::Value, S::Error> {
                let mut items = Vec::with_capacity(64);
                while let Some(item) = seq.next_element::<&'de RawValue>()? {
                    items.push(item.get());
                }
                Ok(Ok(items))
            }
            fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<Self::Value, M::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(Err(()))
            }
            fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
                Ok(Err(()))
            }
            fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
                Ok(Err(()))
            }
            fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
                Ok(Err(()))
            }
            fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
                Ok(Err(()))
            }
            fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
                Ok(Err(()))
            }
            fn visit_unit<E>(self) -> Result<Self::Value, E> {
                Ok(Err(()))
            }
        }
        let mut de = serde_json::Deserializer::from_str(text);
        let parsed = de
            .deserialize_map(Top { name, text })
            .and_then(|parsed| de.end().map(|()| parsed));
        // Reading past a value that is not an array checks more than its grammar (a number
        // beyond `f64`, a lone surrogate): such a page is parsed as any other, and a page
        // that is not JSON fails as it always did.
        let Ok((fields, split)) = parsed else {
            return Ok((Self::parse(text)?, None));
        };
        match split {
            None => Ok((fields, None)),
            Some(Ok(items)) => Ok((fields, Some(items))),
            // Not an array: its text was not kept; read as any other page.
            Some(Err(())) => Ok((Self::parse(text)?, None)),
        }
    }

    /// The top-level fields of a record already known to be JSON, where an index says they
    /// are (name and value ranges of its text, as the schema scan found them); `None` when
    /// a range is not in the text or a name has escapes ([`Fields::scan`] it).
    pub fn at(
        record: &'a str,
        at: impl Iterator<Item = (std::ops::Range<usize>, std::ops::Range<usize>)>,
    ) -> Option<Self> {
        let mut top = Vec::with_capacity(at.size_hint().0);
        for (name, value) in at {
            let name = record.get(name).filter(|n| !n.contains('\\'))?;
            top.push((Cow::Borrowed(name), Raw::Unchecked(record.get(value)?)));
        }
        Some(Fields { top })
    }

    /// The top-level fields of a record already known to be JSON (a page's record: the page
    /// was checked when it was read), found by a scan that follows only strings and nesting
    /// and checks a field's value only when a path reads it: parsing every value again was
    /// the write path's largest share of CPU. `None` where the scan is unsure (not an
    /// object, a field name with escapes, anything unexpected): [`Fields::parse`] it.
    pub fn scan(record: &'a str) -> Option<Self> {
        let bytes = record.as_bytes();
        let mut at = space(bytes, 0);
        if bytes.get(at) != Some(&b'{') {
            return None;
        }
        at = space(bytes, at + 1);
        let mut top = Vec::with_capacity(16);
        if bytes.get(at) != Some(&b'}') {
            loop {
                if bytes.get(at) != Some(&b'"') {
                    return None;
                }
                let end = string_end(bytes, at + 1)?;
                let name = record.get(at + 1..end - 1)?;
                if name.contains('\\') {
                    return None;
                }
                at = space(bytes, end);
                if bytes.get(at) != Some(&b':') {
                    return None;
                }
                let start = space(bytes, at + 1);
                at = value_end(bytes, start)?;
                top.push((Cow::Borrowed(name), Raw::Unchecked(record.get(start..at)?)));
                at = space(bytes, at);
                match bytes.get(at)? {
                    b',' => at = space(bytes, at + 1),
                    b'}' => break,
                    _ => return None,
                }
            }
        }
        (space(bytes, at + 1) == bytes.len()).then_some(Fields { top })
    }

    /// The top-level fields, in record order (duplicates included; with [`Fields::scan`],
    /// those that are JSON).
    pub fn entries(&self) -> impl Iterator<Item = (&str, &'a RawValue)> + '_ {
        self.top
            .iter()
            .filter_map(|(name, raw)| Some((name.as_ref(), raw.get()?)))
    }

    /// A top-level field (the last of duplicates).
    fn field(&self, name: &str) -> Option<&'a RawValue> {
        self.top
            .iter()
            .rev()
            .find(|(k, _)| k.as_ref() == name)
            .and_then(|(_, raw)| raw.get())
    }

    /// The raw JSON at a dotted path.
    pub fn raw(&self, path: &str) -> Option<&'a RawValue> {
        match path.split_once('.') {
            None => self.field(path),
            Some((head, rest)) => raw_at(self.field(head)?, rest),
        }
    }

    /// The scalar's text at a dotted path ([`scalar_text`]).
    pub fn scalar(&self, path: &str) -> Option<String> {
        self.raw(path).and_then(scalar_text)
    }
}

/// The text of the array in `text` whose items are `items` (slices of `text`, as a parse
/// of it gave them): from its `[` to its `]`; `[]` for an empty one.
fn array_text<'a>(text: &'a str, items: &[&'a str]) -> &'a str {
    let (Some(first), Some(last)) = (items.first(), items.last()) else {
        return "[]";
    };
    let base = text.as_ptr() as usize;
    let start = first.as_ptr() as usize - base;
    let end = last.as_ptr() as usize - base + last.len();
    // White space, then the bracket, on either side (the parse checked it).
    let open = text[..start]
        .trim_end_matches(is_json_space)
        .len()
        .saturating_sub(1);
    let after = &text[end..];
    let close = end + (after.len() - after.trim_start_matches(is_json_space).len()) + 1;
    text.get(open..close).unwrap_or("[]")
}

/// Past JSON white space from `at`.
pub(crate) fn space(bytes: &[u8], mut at: usize) -> usize {
    while bytes
        .get(at)
        .is_some_and(|b| matches!(b, b' ' | b'\t' | b'\n' | b'\r'))
    {
        at += 1;
    }
    at
}

/// Where the JSON value starting at `at` ends (a value known to be JSON: the scan follows
/// only strings and nesting); `None` when it does not end there.
pub(crate) fn value_end(bytes: &[u8], at: usize) -> Option<usize> {
    match *bytes.get(at)? {
        b'"' => string_end(bytes, at + 1),
        b'{' | b'[' => {
            let mut depth = 0usize;
            let mut at = at;
            loop {
                match *bytes.get(at)? {
                    b'"' => {
                        at = string_end(bytes, at + 1)?;
                        continue;
                    }
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth -= 1;
                        if depth == 0 {
                            return Some(at + 1);
                        }
                    }
                    _ => {}
                }
                at += 1;
            }
        }
        // A number or a literal: to the next delimiter.
        _ => {
            let len = bytes
                .get(at..)?
                .iter()
                .position(|b| matches!(b, b',' | b']' | b'}' | b' ' | b'\t' | b'\n' | b'\r'))?;
            (len > 0).then_some(at + len)
        }
    }
}

/// Past a string's closing quote, from the byte after its opening one (escapes skipped: a
/// backslash and the byte after it). A record's strings are mostly short: the first bytes
/// are looked at one by one, a long rest by `memchr` (whose call costs more than a short
/// string's bytes).
pub(crate) fn string_end(bytes: &[u8], mut at: usize) -> Option<usize> {
    loop {
        let rest = bytes.get(at..)?;
        let near = rest.iter().take(24).position(|b| matches!(b, b'"' | b'\\'));
        at += match near {
            Some(i) => i,
            None if rest.len() <= 24 => return None,
            None => 24 + memchr::memchr2(b'"', b'\\', &rest[24..])?,
        };
        match bytes[at] {
            b'\\' => at += 2,
            _ => return Some(at + 1),
        }
    }
}

/// A field name, borrowed from the record unless it has escapes.
struct Name<'a>(Cow<'a, str>);

impl<'de> serde::Deserialize<'de> for Name<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Text;
        impl<'de> serde::de::Visitor<'de> for Text {
            type Value = Name<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a field name")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Name(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Name(Cow::Owned(v.to_string())))
            }
            fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
                Ok(Name(Cow::Owned(v)))
            }
        }
        d.deserialize_str(Text)
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
                while let Some((Name(name), raw)) = map.next_entry::<Name<'de>, &'de RawValue>()? {
                    top.push((name, Raw::Checked(raw)));
                }
                Ok(Fields { top })
            }
        }
        d.deserialize_map(Top)
    }
}

/// Orders two versions: by their exact decimal value when both are numbers (the grammar of
/// [`Decimal`]: integers of any length, fractions, exponents; `1e2` equals `100`), else as
/// text, byte by byte (RFC 3339 timestamps in one format order correctly as text). The
/// PostgreSQL store's `_waymark_not_older` applies the same order in SQL.
pub fn compare_versions(a: &str, b: &str) -> Ordering {
    match (Decimal::parse(a), Decimal::parse(b)) {
        (Some(x), Some(y)) => x.cmp(&y),
        _ => a.cmp(b),
    }
}

/// A decimal number as text — `[-+]?(d+.?d*|.d+)([eE][-+]?d+)?` with white space around,
/// the pattern the PostgreSQL store casts to `numeric` — compared by value without
/// converting it: any length, no rounding.
struct Decimal<'a> {
    negative: bool,
    /// The digits before and after the point.
    int: &'a str,
    frac: &'a str,
    /// The written exponent (saturated: beyond ±9.2e18 every number compares alike).
    exp: i64,
}

impl<'a> Decimal<'a> {
    fn parse(text: &'a str) -> Option<Self> {
        // PostgreSQL's `\s`: space, tab, newline, carriage return, form feed, vertical tab.
        let s = text.trim_matches(|c| matches!(c, ' ' | '\t' | '\n' | '\r' | '\x0b' | '\x0c'));
        let (negative, s) = match s.as_bytes().first()? {
            b'-' => (true, &s[1..]),
            b'+' => (false, &s[1..]),
            _ => (false, s),
        };
        let digits = |s: &'a str| {
            let n = s.bytes().take_while(u8::is_ascii_digit).count();
            (&s[..n], &s[n..])
        };
        let (int, s) = digits(s);
        let (frac, s) = match s.strip_prefix('.') {
            Some(rest) => digits(rest),
            None => ("", s),
        };
        if int.is_empty() && frac.is_empty() {
            return None;
        }
        let exp = match s.as_bytes().first() {
            None => 0,
            Some(b'e' | b'E') => {
                let s = &s[1..];
                let (sign, s) = match s.as_bytes().first()? {
                    b'-' => (-1, &s[1..]),
                    b'+' => (1, &s[1..]),
                    _ => (1, s),
                };
                let (e, rest) = digits(s);
                if e.is_empty() || !rest.is_empty() {
                    return None;
                }
                e.bytes().fold(0i64, |n, d| {
                    n.saturating_mul(10)
                        .saturating_add(sign * i64::from(d - b'0'))
                })
            }
            Some(_) => return None,
        };
        Some(Decimal {
            negative,
            int,
            frac,
            exp,
        })
    }

    /// The significant digits (no leading or trailing zeros) and the power of ten of the
    /// first: the number is `0.d₁d₂… × 10^power`. No digits: zero.
    fn significand(&self) -> (impl Iterator<Item = u8> + 'a, i64) {
        let all = || self.int.bytes().chain(self.frac.bytes());
        let total = self.int.len() + self.frac.len();
        let leading = all().take_while(|&d| d == b'0').count();
        let trailing = match leading == total {
            true => 0,
            false => all().rev().take_while(|&d| d == b'0').count(),
        };
        let shift = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
        let power = self
            .exp
            .saturating_add(shift(self.int.len()))
            .saturating_sub(shift(leading));
        let (int, frac) = (self.int, self.frac);
        let digits = int
            .bytes()
            .chain(frac.bytes())
            .skip(leading)
            .take(total - leading - trailing);
        (digits, power)
    }

    fn cmp(&self, other: &Decimal<'_>) -> Ordering {
        let (mut a, pa) = self.significand();
        let (mut b, pb) = other.significand();
        let (first_a, first_b) = (a.next(), b.next());
        // -1, 0 or 1: zero has no sign (`-0` equals `0`).
        let sign = |d: &Decimal<'_>, first: Option<u8>| match (first, d.negative) {
            (None, _) => 0,
            (Some(_), true) => -1,
            (Some(_), false) => 1,
        };
        let (sa, sb) = (sign(self, first_a), sign(other, first_b));
        if sa != sb || sa == 0 {
            return sa.cmp(&sb);
        }
        let magnitude = pa
            .cmp(&pb)
            .then_with(|| first_a.cmp(&first_b))
            .then_with(|| a.cmp(b));
        match sa {
            -1 => magnitude.reverse(),
            _ => magnitude,
        }
    }
}

/// A scalar's text ([`scalar_text`]) read as an instant: RFC 3339 with any offset (`Z`,
/// `+02:00`, `+0200`) or none (UTC), a date (`2026-01-31`: its midnight, UTC), or a Unix
/// time — seconds, or milliseconds when too large to be seconds before the year 5138
/// (fractions of a second count to the millisecond). `None` for anything else.
pub fn instant(text: &str) -> Option<Timestamp> {
    let text = text.trim();
    if text.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        let (whole, fraction) = text.split_once('.').unwrap_or((text, ""));
        let whole: u64 = whole.parse().ok()?;
        let ms = match whole > 100_000_000_000 {
            true => whole,
            false => {
                let fraction = format!("{:0<3}", &fraction[..fraction.len().min(3)]);
                whole
                    .checked_mul(1000)?
                    .checked_add(fraction.parse().ok()?)?
            }
        };
        return (ms < MAX_RFC3339).then_some(Timestamp(ms));
    }
    if text.len() == 10 {
        return instant(&format!("{text}T00:00:00Z"));
    }
    // A numeric offset after the time of day: `hh:mm`, `hhmm` or `hh`.
    let zone = text
        .char_indices()
        .skip(11)
        .find(|&(_, c)| c == '+' || c == '-')
        .map(|(i, _)| i);
    let (local, offset_ms) = match zone {
        None => (text.to_string(), 0i64),
        Some(i) => {
            let sign = if text[i..].starts_with('-') { -1 } else { 1 };
            let digits: String = text[i + 1..].chars().filter(|&c| c != ':').collect();
            if !(digits.len() == 2 || digits.len() == 4)
                || !digits.bytes().all(|b| b.is_ascii_digit())
            {
                return None;
            }
            let hours: i64 = digits[..2].parse().ok()?;
            let minutes: i64 = match digits.len() {
                4 => digits[2..].parse().ok()?,
                _ => 0,
            };
            (
                format!("{}Z", &text[..i]),
                sign * (hours * 60 + minutes) * 60_000,
            )
        }
    };
    let at = humantime::parse_rfc3339_weak(&local).ok()?;
    let ms = i64::try_from(Timestamp::from_system(at).0).ok()?;
    u64::try_from(ms - offset_ms).ok().map(Timestamp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_negative_index_counts_from_the_end() {
        let page = r#"{"data": [{"id": "a"}, {"id": "b"}, {"id": "c"}]}"#;
        let value: Value = serde_json::from_str(page).unwrap();
        let raw: &RawValue = serde_json::from_str(page).unwrap();
        for (path, want) in [
            ("data.-1.id", Some("c")),
            ("data.-3.id", Some("a")),
            ("data.0.id", Some("a")),
        ] {
            assert_eq!(lookup(&value, path).and_then(Value::as_str), want, "{path}");
            assert_eq!(
                raw_at(raw, path).map(RawValue::get),
                want.map(|w| format!("\"{w}\"")).as_deref(),
                "{path}"
            );
        }
        for path in ["data.-4.id", "data.-0.id", "data.3.id"] {
            assert_eq!(lookup(&value, path), None, "{path}");
            assert!(raw_at(raw, path).is_none(), "{path}");
        }
    }

    #[test]
    fn instants_in_the_forms_apis_write_them() {
        let at = |t: &str| instant(t).map(|t| t.to_string());
        let noon = Some("2026-03-01T12:00:00.000Z".to_string());
        for text in [
            "2026-03-01T12:00:00Z",
            "2026-03-01T12:00:00.000Z",
            "2026-03-01T14:00:00+02:00",
            "2026-03-01T07:00:00.000-0500",
            "2026-03-01T13:00:00+01",
            "2026-03-01 12:00:00",
            "1772366400",
            "1772366400000",
        ] {
            assert_eq!(at(text), noon, "{text}");
        }
        assert_eq!(
            at("1772366400.25").as_deref(),
            Some("2026-03-01T12:00:00.250Z")
        );
        assert_eq!(
            at("2026-03-01").as_deref(),
            Some("2026-03-01T00:00:00.000Z")
        );
        for text in [
            "",
            "soon",
            "2026-03-01T12:00:00+2",
            "v17x",
            "-5",
            "99999999999999999",
            "2026-13-01",
        ] {
            assert_eq!(at(text), None, "{text}");
        }
    }

    fn raw(text: &str) -> Option<&RawValue> {
        serde_json::from_str(text).ok()
    }

    #[test]
    fn fields_read_paths_like_a_value() {
        let text = r#"{"id":7,"c":{"k":"x"},"l":[1,{"z":true}],"s":"a\"b","e\u0073c":"d"}"#;
        let v: Value = serde_json::from_str(text).unwrap_or_default();
        let f = Fields::parse(text);
        assert!(f.is_ok());
        let Ok(f) = f else { return };
        for path in [
            "id",
            "c.k",
            "l.1.z",
            "s",
            "c",
            "esc",
            "missing",
            "c.missing",
            "id.x",
            "l.9",
        ] {
            let parsed = f.raw(path).and_then(|r| serde_json::from_str(r.get()).ok());
            assert_eq!(parsed.as_ref(), lookup(&v, path), "{path}");
        }
        let paths = ["c.k".to_string(), "id".to_string()];
        assert_eq!(
            key_by(&paths, |p| f.scalar(p)).as_deref(),
            Some(r#"["x","7"]"#)
        );
        let twice = r#"{"id":1,"v":"a","id":2}"#;
        let f = Fields::parse(twice).map(|f| f.scalar("id"));
        assert_eq!(
            f.ok().flatten().as_deref(),
            Some("2"),
            "the last duplicate wins"
        );
        assert!(Fields::parse("[1]").is_err_and(|e| e.is_data()));
        assert!(Fields::parse("{\"a\":").is_err_and(|e| !e.is_data()));
    }

    #[test]
    fn a_scan_finds_fields_and_leaves_what_it_is_unsure_of_to_the_parser() {
        let scalar = |text: &str, path: &str| Fields::scan(text).map(|f| f.scalar(path));
        assert_eq!(
            scalar(r#" { "id" : 7 , "v":"a\"}" } "#, "v"),
            Some(Some("a\"}".into()))
        );
        assert_eq!(
            scalar(r#"{"id":1,"v":"a","id":2}"#, "id"),
            Some(Some("2".into()))
        );
        assert_eq!(
            scalar(r#"{"c":{"k":[1,"]"]},"n":null}"#, "c.k.1"),
            Some(Some("]".into()))
        );
        assert_eq!(scalar("{}", "id"), Some(None));
        // A value is checked when it is read: a broken one is not there.
        assert_eq!(scalar(r#"{"id":tru,"v":1}"#, "id"), Some(None));
        for unsure in [
            r#"{"i\u0064":1}"#,
            "[1]",
            r#"{"id":1} x"#,
            r#"{"id" 1}"#,
            r#"{"id":1"#,
            "7",
            "",
        ] {
            assert!(Fields::scan(unsure).is_none(), "{unsure}");
        }
    }

    #[test]
    fn scalars_are_read_exactly_as_written() {
        let cases = [
            ("12345678901234567890123", Some("12345678901234567890123")),
            ("1e2", Some("1e2")),
            ("-0", Some("-0")),
            ("100.0", Some("100.0")),
            (r#""7""#, Some("7")),
            (r#""a\"b\u00e9""#, Some("a\"bé")),
            ("true", Some("true")),
            ("null", None),
            ("[1]", None),
            ("{}", None),
            (r#""\ud800""#, None),
        ];
        for (text, expected) in cases {
            assert_eq!(
                raw(text).and_then(scalar_text).as_deref(),
                expected,
                "{text}"
            );
        }
    }

    #[test]
    fn deep_records_and_lone_surrogates_elsewhere_are_read() {
        let deep = format!(
            r#"{{"id":5,"v":{{"at":9}},"d":{}1{}}}"#,
            "[".repeat(5000),
            "]".repeat(5000)
        );
        assert!(
            serde_json::from_str::<Value>(&deep).is_err(),
            "too deep for a tree"
        );
        let f = Fields::parse(&deep);
        assert_eq!(
            f.as_ref().ok().and_then(|f| f.scalar("id")).as_deref(),
            Some("5")
        );
        assert_eq!(f.ok().and_then(|f| f.scalar("v.at")).as_deref(), Some("9"));
        let lone = r#"{"id":"k","n":"\ud800"}"#;
        assert!(serde_json::from_str::<Value>(lone).is_err());
        assert_eq!(
            Fields::parse(lone)
                .ok()
                .and_then(|f| f.scalar("id"))
                .as_deref(),
            Some("k")
        );
    }

    #[test]
    fn versions_compare_by_exact_value_else_as_text() {
        use Ordering::*;
        let big = "123456789012345678901234567890123456789012345";
        let cases = [
            ("9", "10", Less),
            ("12345678901234567890123", "12345678901234567890124", Less),
            (
                big,
                "123456789012345678901234567890123456789012344",
                Greater,
            ),
            (
                big,
                "1.23456789012345678901234567890123456789012345e44",
                Equal,
            ),
            ("1e2", "100", Equal),
            ("100.0", "1E+2", Equal),
            ("-0", "0", Equal),
            ("0.000", "-0e5", Equal),
            ("-5", "-4", Less),
            ("-5", "4", Less),
            ("0.1", "0.10001", Less),
            ("1e-3", "0.01", Less),
            (".5", "0.5", Equal),
            ("5.", "5", Equal),
            (" 7 ", "7", Equal),
            ("+7", "7", Equal),
            ("007", "7", Equal),
            ("1e99999999999999999999999", "5", Greater),
            ("2024-01-02T00:00:00Z", "2024-01-10T00:00:00Z", Less),
            ("abc", "9", Greater),
            ("1e", "1", Greater),
            (".", "1", Less),
        ];
        for (a, b, order) in cases {
            assert_eq!(compare_versions(a, b), order, "{a} vs {b}");
            assert_eq!(compare_versions(b, a), order.reverse(), "{b} vs {a}");
        }
    }
}
