//! The observed shape of a stream's records, kept in the state directory
//! (`schema/<sync>/<stream>.json`): each field path seen (objects by `.`, array elements by
//! `[]`, four levels deep) with its JSON types, whether it was null, whether every record
//! had it (top-level fields), and when it was first and last seen; and the history of its
//! changes. Each page read is compared with it ([`Schema::observe`]): fields new, gone (a
//! top-level field every record had, missing from a record) or of another type are the
//! page's drift, which the stream's `schema_policy` evolves into the shape, leaves out of
//! it (`freeze`: such records are dead-lettered by [`Frozen`]) or refuses (`fail`).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::{BuildHasherDefault, Hasher};
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use waymark_engine::event::FieldChange;
use waymark_engine::{FieldIndex, Timestamp};

use crate::config::{ColumnSpec, SchemaPolicy};
use crate::record::{string_end, Fields};

/// Paths deeper than this are not followed (a map of arbitrary keys, e.g. `metadata.*`,
/// stays one field per key at most this deep).
const DEPTH: usize = 4;
/// At most this many paths are kept; more are not observed (a record of arbitrary keys).
const MAX_FIELDS: usize = 2_000;
/// At most this many changes are kept in the history (the oldest go first).
const MAX_HISTORY: usize = 1_000;

const STRING: u8 = 1;
const INTEGER: u8 = 2;
const NUMBER: u8 = 4;
const BOOLEAN: u8 = 8;
const OBJECT: u8 = 16;
const ARRAY: u8 = 32;
const NAMES: [(u8, &str); 6] = [
    (ARRAY, "array"),
    (BOOLEAN, "boolean"),
    (INTEGER, "integer"),
    (NUMBER, "number"),
    (OBJECT, "object"),
    (STRING, "string"),
];

/// The JSON type of a raw value (`None`: null).
fn kind(raw: &RawValue) -> Option<u8> {
    let text = raw.get().trim_start();
    Some(match text.as_bytes().first()? {
        b'"' => STRING,
        b'{' => OBJECT,
        b'[' => ARRAY,
        b't' | b'f' => BOOLEAN,
        b'n' => return None,
        _ if text.contains(['.', 'e', 'E']) => NUMBER,
        _ => INTEGER,
    })
}

/// `integer|string`.
pub fn names(types: u8) -> String {
    let names = names_list(types);
    match names.is_empty() {
        true => "null".into(),
        false => names.join("|"),
    }
}

/// The names of `types`, in name order.
fn names_list(types: u8) -> Vec<String> {
    NAMES
        .iter()
        .filter(|(bit, _)| types & bit != 0)
        .map(|(_, name)| name.to_string())
        .collect()
}

fn bits(names: &[String]) -> u8 {
    NAMES
        .iter()
        .filter(|(_, name)| names.iter().any(|n| n == name))
        .fold(0, |acc, (bit, _)| acc | bit)
}

/// One field of the shape.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Field {
    /// Its JSON types (null apart).
    pub types: Vec<String>,
    /// It was null in some record.
    pub nullable: bool,
    /// Every record had it (top-level fields only).
    pub required: bool,
    /// When it was first seen.
    pub first_seen: Timestamp,
    /// When it was last seen (as of the last page that saved the shape).
    pub last_seen: Timestamp,
}

/// A change kept in the history: when, on which page, what, and what the policy did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    /// When the page was read.
    pub at: Timestamp,
    /// The page of its run.
    pub page: u64,
    /// The change.
    pub change: FieldChange,
    /// `evolved` (taken into the shape), `frozen` (left out; such records dead-lettered) or
    /// `refused` (the run failed before writing).
    pub action: String,
}

/// The file.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Shape {
    /// Records observed.
    pub records: u64,
    /// Each path's shape.
    pub fields: BTreeMap<String, Field>,
    /// The changes, oldest first.
    pub history: Vec<Change>,
}

/// What one page's records hold, per path: types, null seen, records having it.
#[derive(Default)]
struct Seen {
    types: u8,
    null: bool,
    records: u64,
}

/// Visits every path of a record (to `DEPTH`), each with its type (`None`: null).
fn walk(raw: &RawValue, path: &mut String, depth: usize, visit: &mut dyn FnMut(&str, Option<u8>)) {
    let kind = kind(raw);
    visit(path, kind);
    if depth >= DEPTH {
        return;
    }
    let len = path.len();
    match kind {
        Some(OBJECT) => {
            let Ok(fields) = Fields::parse(raw.get()) else {
                return;
            };
            for (name, value) in fields.entries() {
                path.push('.');
                path.push_str(name);
                walk(value, path, depth + 1, visit);
                path.truncate(len);
            }
        }
        Some(ARRAY) => {
            let Ok(items) = serde_json::from_str::<Vec<&RawValue>>(raw.get()) else {
                return;
            };
            path.push_str("[]");
            for item in items {
                walk(item, path, depth + 1, visit);
            }
            path.truncate(len);
        }
        _ => {}
    }
}

/// One record's paths: each with its types, whether it was null, and whether it is a
/// top-level field.
type Paths = Vec<(String, u8, bool, bool)>;

/// The paths of `record` (none when it is not a JSON object).
fn record_paths(record: &str) -> Paths {
    let Ok(fields) = Fields::parse(record) else {
        return Vec::new();
    };
    let mut found: BTreeMap<String, (u8, bool, bool)> = BTreeMap::new();
    let mut path = String::with_capacity(64);
    for (name, value) in fields.entries() {
        path.clear();
        path.push_str(name);
        walk(value, &mut path, 1, &mut |p, kind| {
            let top = !p.contains(['.', '[']);
            let entry = match found.get_mut(p) {
                Some(entry) => entry,
                None => found.entry(p.to_string()).or_insert((0, false, top)),
            };
            match kind {
                Some(bit) => entry.0 |= bit,
                None => entry.1 = true,
            }
        });
    }
    found
        .into_iter()
        .map(|(p, (types, null, top))| (p, types, null, top))
        .collect()
}

/// The paths of record structures already walked, by [`structure`] (most pages repeat a
/// handful of structures: a record of a known one costs one scan of its bytes).
#[derive(Default)]
struct Structures(HashMap<u64, Paths, BuildHasherDefault<Hashed>>);

/// A hasher for keys that are hashes already.
#[derive(Default)]
struct Hashed(u64);

impl Hasher for Hashed {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        self.0 = mix_bytes(self.0, bytes);
    }

    fn write_u64(&mut self, value: u64) {
        self.0 = value;
    }
}

/// Structures kept at most (a stream of ever-new structures walks every record).
const MAX_STRUCTURES: usize = 512;

impl Structures {
    /// A page's paths, in path order, and how many records it has; `index` notes where
    /// each record's top-level fields are (the same scan finds them).
    fn page(
        &mut self,
        records: &[String],
        index: &mut FieldIndex,
    ) -> (BTreeMap<String, Seen>, u64) {
        // A page has a handful of structures: a list beats a map.
        let mut counts: Vec<(u64, u64)> = Vec::new();
        let mut seen: BTreeMap<String, Seen> = BTreeMap::new();
        let mut top = Vec::with_capacity(16);
        for record in records {
            top.clear();
            let hashed = structure_at(record.as_bytes(), Some(&mut top));
            let object = record.starts_with('{');
            index.push((hashed.is_some() && object).then_some(top.as_slice()));
            match hashed {
                Some(hash) => {
                    if !self.0.contains_key(&hash) {
                        if self.0.len() >= MAX_STRUCTURES {
                            // The records counted so far first, then room.
                            for (hash, n) in counts.drain(..) {
                                if let Some(paths) = self.0.get(&hash) {
                                    add(&mut seen, paths, n);
                                }
                            }
                            self.0.clear();
                        }
                        self.0.insert(hash, record_paths(record));
                    }
                    match counts.iter_mut().find(|(h, _)| *h == hash) {
                        Some((_, n)) => *n += 1,
                        None => counts.push((hash, 1)),
                    }
                }
                None => add(&mut seen, &record_paths(record), 1),
            }
        }
        for (hash, n) in counts {
            if let Some(paths) = self.0.get(&hash) {
                add(&mut seen, paths, n);
            }
        }
        (seen, records.len() as u64)
    }
}

/// Adds `n` records of `paths` to `seen`.
fn add(seen: &mut BTreeMap<String, Seen>, paths: &Paths, n: u64) {
    for (path, types, null, top) in paths {
        let entry = match seen.get_mut(path) {
            Some(entry) => entry,
            None => seen.entry(path.clone()).or_default(),
        };
        entry.types |= types;
        entry.null |= null;
        if *top {
            entry.records += n;
        }
    }
}

/// A hash of a JSON value's structure: its keys, in order, and each value's type, the
/// elements of an array with consecutive equal structures counted once (`[{a},{a}]` is
/// `[{a}]`); string contents and numbers' digits are skipped. `None` when it is not JSON
/// (or nests deeper than 64).
#[cfg(test)]
fn structure(bytes: &[u8]) -> Option<u64> {
    structure_at(bytes, None)
}

/// [`structure`], noting in `top` (when given) each top-level field's name and value
/// ranges of `bytes`.
fn structure_at(bytes: &[u8], top: Option<&mut TopFields>) -> Option<u64> {
    let mut scan = Scan { bytes, at: 0, top };
    let hash = scan.value(0)?;
    scan.space();
    (scan.at == bytes.len()).then_some(hash)
}

/// A record's top-level fields: name (between its quotes) and value ranges of its text.
type TopFields = Vec<(Range<usize>, Range<usize>)>;

struct Scan<'a, 't> {
    bytes: &'a [u8],
    at: usize,
    top: Option<&'t mut TopFields>,
}

const SEED: u64 = 0xcbf2_9ce4_8422_2325;

/// Mixes one word into a hash (a multiply-rotate step: one multiplication per word, where a
/// byte-wise hash took eight).
fn mix(hash: u64, word: u64) -> u64 {
    (hash ^ word)
        .wrapping_mul(0x9e37_79b9_7f4a_7c15)
        .rotate_left(29)
}

/// Mixes a marker byte (a value's type, a bracket) into a hash.
fn mark(hash: u64, byte: u8) -> u64 {
    mix(hash, u64::from(byte))
}

/// Mixes bytes into a hash, eight at a time, with their length.
fn mix_bytes(hash: u64, bytes: &[u8]) -> u64 {
    let mut chunks = bytes.chunks_exact(8);
    let mut hash = mix(hash, bytes.len() as u64);
    for chunk in chunks.by_ref() {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        hash = mix(hash, u64::from_le_bytes(word));
    }
    let tail = chunks.remainder();
    if !tail.is_empty() {
        let mut word = [0u8; 8];
        word[..tail.len()].copy_from_slice(tail);
        hash = mix(hash, u64::from_le_bytes(word));
    }
    hash
}

impl Scan<'_, '_> {
    fn space(&mut self) {
        while self
            .bytes
            .get(self.at)
            .is_some_and(|b| matches!(b, b' ' | b'\t' | b'\r' | b'\n'))
        {
            self.at += 1;
        }
    }

    fn next(&mut self) -> Option<u8> {
        self.space();
        let byte = *self.bytes.get(self.at)?;
        self.at += 1;
        Some(byte)
    }

    /// Skips a string's body (after its opening quote); the bytes it spans.
    fn string(&mut self) -> Option<std::ops::Range<usize>> {
        let start = self.at;
        self.at = string_end(self.bytes, start)?;
        Some(start..self.at - 1)
    }

    fn value(&mut self, depth: usize) -> Option<u64> {
        if depth > 64 {
            return None;
        }
        match self.next()? {
            b'{' => {
                let mut hash = mark(SEED, b'{');
                self.space();
                if self.bytes.get(self.at) == Some(&b'}') {
                    self.at += 1;
                    return Some(mark(hash, b'}'));
                }
                loop {
                    if self.next()? != b'"' {
                        return None;
                    }
                    let key = self.string()?;
                    hash = mix_bytes(mark(hash, b'"'), &self.bytes[key.clone()]);
                    if self.next()? != b':' {
                        return None;
                    }
                    self.space();
                    let start = self.at;
                    hash = mix(mark(hash, b':'), self.value(depth + 1)?);
                    if let (0, Some(top)) = (depth, self.top.as_deref_mut()) {
                        top.push((key, start..self.at));
                    }
                    match self.next()? {
                        b',' => continue,
                        b'}' => return Some(mark(hash, b'}')),
                        _ => return None,
                    }
                }
            }
            b'[' => {
                let mut hash = mark(SEED, b'[');
                self.space();
                if self.bytes.get(self.at) == Some(&b']') {
                    self.at += 1;
                    return Some(mark(hash, b']'));
                }
                let mut previous = None;
                loop {
                    let item = self.value(depth + 1)?;
                    if previous != Some(item) {
                        hash = mix(hash, item);
                        previous = Some(item);
                    }
                    match self.next()? {
                        b',' => continue,
                        b']' => return Some(mark(hash, b']')),
                        _ => return None,
                    }
                }
            }
            b'"' => {
                self.string()?;
                Some(mark(SEED, b's'))
            }
            b't' | b'f' | b'n' => {
                let null = self.bytes[self.at - 1] == b'n';
                while self.bytes.get(self.at).is_some_and(u8::is_ascii_alphabetic) {
                    self.at += 1;
                }
                Some(mark(SEED, if null { b'n' } else { b'b' }))
            }
            b'-' | b'0'..=b'9' => {
                let mut float = false;
                while let Some(b) = self.bytes.get(self.at) {
                    match b {
                        b'0'..=b'9' | b'-' | b'+' => {}
                        b'.' | b'e' | b'E' => float = true,
                        _ => break,
                    }
                    self.at += 1;
                }
                Some(mark(SEED, if float { b'f' } else { b'i' }))
            }
            _ => None,
        }
    }
}

/// Whether `path` lies under one of `paths` (`a.b` and `a[].b` under `a`).
fn under(path: &str, paths: &BTreeSet<String>) -> bool {
    paths.iter().any(|p| {
        path.strip_prefix(p.as_str())
            .is_some_and(|rest| rest.starts_with(['.', '[']))
    })
}

impl Shape {
    /// How `page` differs from the shape: new paths (only the outermost of a new object),
    /// new types of known paths, and top-level fields every record had that a record of
    /// the page lacks. The page's shape comes along, to be taken in.
    fn compare(
        &self,
        structures: &mut Structures,
        records: &[String],
        index: &mut FieldIndex,
    ) -> (Vec<FieldChange>, BTreeMap<String, Seen>, u64) {
        let (page, n) = structures.page(records, index);
        let mut changes = Vec::new();
        if self.records == 0 {
            return (changes, page, n);
        }
        let mut new = BTreeSet::new();
        for (path, seen) in &page {
            match self.fields.get(path) {
                None if self.fields.len() + new.len() >= MAX_FIELDS => {}
                None => {
                    if !under(path, &new) {
                        changes.push(FieldChange {
                            path: path.clone(),
                            was: None,
                            now: Some(names(seen.types)),
                            column: None,
                        });
                    }
                    new.insert(path.clone());
                }
                Some(field) => {
                    let known = bits(&field.types);
                    if seen.types & !known != 0 {
                        changes.push(FieldChange {
                            path: path.clone(),
                            was: Some(names(known)),
                            now: Some(names(known | seen.types)),
                            column: None,
                        });
                    }
                }
            }
        }
        for (path, field) in &self.fields {
            let had = page.get(path).map_or(0, |s| s.records);
            if field.required && n > 0 && had < n {
                changes.push(FieldChange {
                    path: path.clone(),
                    was: Some(names(bits(&field.types))),
                    now: None,
                    column: None,
                });
            }
        }
        (changes, page, n)
    }

    /// Takes a page's shape in.
    fn take(&mut self, page: BTreeMap<String, Seen>, n: u64, at: Timestamp) {
        let first = self.records == 0;
        // A top-level field no record of the page had is no longer in every record.
        if n > 0 {
            for (path, field) in self.fields.iter_mut() {
                if !page.contains_key(path) {
                    field.required = false;
                }
            }
        }
        for (path, seen) in page {
            let top = !path.contains(['.', '[']);
            let full = self.fields.len() >= MAX_FIELDS;
            match self.fields.get_mut(&path) {
                Some(field) => {
                    let types = bits(&field.types) | seen.types;
                    field.types = names_list(types);
                    field.nullable |= seen.null;
                    field.required &= seen.records == n;
                    field.last_seen = at;
                }
                None if full => {}
                None => {
                    let field = Field {
                        types: names_list(seen.types),
                        nullable: seen.null,
                        required: top && seen.records == n && (first || n > 0),
                        first_seen: at,
                        last_seen: at,
                    };
                    self.fields.insert(path, field);
                }
            }
        }
        self.records += n;
    }
}

/// What [`Schema::observe`] found on a page.
#[derive(Debug, Default)]
pub struct Observed {
    /// The changes to journal.
    pub changes: Vec<FieldChange>,
    /// Whether the stream's policy refuses the page.
    pub refused: bool,
    /// Where each record's top-level fields are (none when nothing was observed).
    pub fields: Option<FieldIndex>,
}

/// A stream's schema as its source observes it, page after page.
pub struct Schema {
    file: PathBuf,
    shape: Shape,
    policy: SchemaPolicy,
    /// Declared columns by the path they are filled from.
    columns: BTreeMap<String, String>,
    /// Changes already journaled by this process (a frozen change is reported once).
    reported: BTreeSet<String>,
    /// Reads that are not the stream's runs (a reconciliation) observe nothing.
    off: bool,
    structures: Structures,
}

/// Why the schema file cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {why}")]
pub struct Error {
    path: String,
    why: String,
}

impl Schema {
    /// Where `stream`'s shape is kept under the state directory `root`.
    pub fn file(root: &Path, sync: &str, stream: &str) -> PathBuf {
        root.join("schema")
            .join(sync)
            .join(format!("{stream}.json"))
    }

    /// The shape kept in `file` (empty when there is none yet).
    pub fn read(file: &Path) -> Result<Shape, Error> {
        let error = |why: String| Error {
            path: file.display().to_string(),
            why,
        };
        match std::fs::read(file) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                error(format!(
                    "unreadable schema ({e}); remove the file to observe the stream afresh"
                ))
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Shape::default()),
            Err(e) => Err(error(e.to_string())),
        }
    }

    /// The schema of `stream` (`columns` its declared columns), kept in `file`.
    pub fn open(
        file: PathBuf,
        policy: SchemaPolicy,
        columns: &BTreeMap<String, ColumnSpec>,
    ) -> Result<Schema, Error> {
        let shape = Schema::read(&file)?;
        let columns = columns
            .iter()
            .map(|(name, spec)| match spec {
                ColumnSpec::Type(_) => (name.clone(), name.clone()),
                ColumnSpec::Full { path, .. } => (path.clone(), name.clone()),
            })
            .collect();
        Ok(Schema {
            file,
            shape,
            policy,
            columns,
            reported: BTreeSet::new(),
            off: false,
            structures: Structures::default(),
        })
    }

    /// Observes nothing from now on: the reads are not the stream's runs.
    pub fn turn_off(&mut self) {
        self.off = true;
    }

    /// Compares page `page`'s records with the shape and applies the policy: the changes
    /// to journal (a frozen one once per process), whether the page is refused, and where
    /// each record's top-level fields are (the scan found them). The shape and its
    /// history are saved when something changed, and on the run's last page (`last`: when
    /// each field was last seen).
    pub fn observe(
        &mut self,
        page: u64,
        records: &[String],
        at: Timestamp,
        last: bool,
    ) -> Result<Observed, Error> {
        if self.off {
            return Ok(Observed::default());
        }
        let mut fields = FieldIndex::with_capacity(records.len(), 12);
        let (mut changes, seen, n) = self
            .shape
            .compare(&mut self.structures, records, &mut fields);
        for change in &mut changes {
            change.column = self.columns.get(&change.path).cloned();
        }
        let action = match (changes.is_empty(), self.policy) {
            (true, _) | (false, SchemaPolicy::Evolve) => "evolved",
            (false, SchemaPolicy::Freeze) => "frozen",
            (false, SchemaPolicy::Fail) => "refused",
        };
        // The first page of a stream is its shape; a frozen or failing stream keeps it.
        if action == "evolved" {
            self.shape.take(seen, n, at);
        }
        let before = self.shape.history.len();
        for change in &changes {
            let known = self
                .shape
                .history
                .iter()
                .any(|c| c.action == action && action != "evolved" && c.change == *change);
            if !known {
                self.shape.history.push(Change {
                    at,
                    page,
                    change: change.clone(),
                    action: action.into(),
                });
            }
        }
        let overflow = self.shape.history.len().saturating_sub(MAX_HISTORY);
        self.shape.history.drain(..overflow);
        if self.shape.history.len() != before || last || (n > 0 && self.shape.records == n) {
            self.save()?;
        }
        let refused = action == "refused";
        if action == "frozen" {
            changes.retain(|c| self.reported.insert(c.to_string()));
        }
        Ok(Observed {
            changes,
            refused,
            fields: Some(fields),
        })
    }

    /// Replaces the file (written aside, renamed).
    fn save(&self) -> Result<(), Error> {
        let error = |e: &dyn std::fmt::Display| Error {
            path: self.file.display().to_string(),
            why: e.to_string(),
        };
        if let Some(dir) = self.file.parent() {
            std::fs::create_dir_all(dir).map_err(|e| error(&e))?;
        }
        let tmp = self.file.with_extension("json.tmp");
        let bytes = serde_json::to_vec_pretty(&self.shape).map_err(|e| error(&e))?;
        std::fs::write(&tmp, bytes).map_err(|e| error(&e))?;
        std::fs::rename(&tmp, &self.file).map_err(|e| error(&e))
    }
}

/// A frozen stream's shape, for its destination: a record with a field the shape does not
/// have, or a value of a type it does not have, is refused (dead-lettered) with the reason.
#[derive(Clone, Debug)]
pub struct Frozen {
    fields: BTreeMap<String, u8>,
}

impl Frozen {
    /// The shape kept in `file`; `None` while nothing was observed (the first page is the
    /// shape).
    pub fn open(file: &Path) -> Result<Option<Frozen>, Error> {
        let shape = Schema::read(file)?;
        Ok((shape.records > 0).then(|| Frozen {
            fields: shape
                .fields
                .iter()
                .map(|(path, f)| (path.clone(), bits(&f.types)))
                .collect(),
        }))
    }

    /// Why `record` does not fit the frozen shape (each misfit, in record order, the
    /// outermost of an unknown object only), if it does not.
    pub fn misfit(&self, record: &str) -> Option<String> {
        let fields = Fields::parse(record).ok()?;
        let mut path = String::with_capacity(64);
        let mut why: Vec<String> = Vec::new();
        let mut unknown = BTreeSet::new();
        for (name, value) in fields.entries() {
            path.clear();
            path.push_str(name);
            walk(value, &mut path, 1, &mut |p, kind| {
                if self.fields.len() >= MAX_FIELDS || under(p, &unknown) {
                    return;
                }
                match (self.fields.get(p), kind) {
                    (None, _) => {
                        why.push(format!("unknown field `{p}`"));
                        unknown.insert(p.to_string());
                    }
                    (Some(known), Some(bit)) if known & bit == 0 => why.push(format!(
                        "field `{p}` is {} (the frozen schema has {})",
                        names(bit),
                        names(*known)
                    )),
                    _ => {}
                }
            });
        }
        (!why.is_empty()).then(|| format!("{} (schema_policy = \"freeze\")", why.join("; ")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schema(dir: &Path, policy: SchemaPolicy) -> Schema {
        Schema::open(dir.join("s.json"), policy, &BTreeMap::new()).unwrap()
    }

    fn texts(changes: &[FieldChange]) -> Vec<String> {
        changes.iter().map(ToString::to_string).collect()
    }

    fn dir(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("waymark-schema-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn structures_ignore_values_and_repeated_elements_but_not_keys_or_types() {
        let s = |t: &str| structure(t.as_bytes()).unwrap();
        let a = s(r#"{"id":1,"n":"x","items":[{"k":"a"},{"k":"b"}],"e":{}}"#);
        assert_eq!(
            a,
            s(r#" { "id" : 22 , "n":"y\"z","items":[{"k":"c"}],"e":{} } "#)
        );
        assert_ne!(a, s(r#"{"id":1.5,"n":"x","items":[{"k":"a"}],"e":{}}"#));
        assert_ne!(a, s(r#"{"id":1,"n":null,"items":[{"k":"a"}],"e":{}}"#));
        assert_ne!(a, s(r#"{"id":1,"m":"x","items":[{"k":"a"}],"e":{}}"#));
        assert_ne!(a, s(r#"{"id":1,"n":"x","items":[{"k":1}],"e":{}}"#));
        for broken in [r#"{"id":1"#, r#"{"id" 1}"#, "[1,]x", r#"{"a":tru"#] {
            let _ = structure(broken.as_bytes());
        }
        assert_eq!(structure(br#"{"id":1} x"#), None);
    }

    #[test]
    fn the_scan_finds_each_records_top_level_fields_as_a_parser_does() {
        let mut seed = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            usize::try_from(seed % n).unwrap_or(0)
        };
        // A duplicate name, an escaped one, a non-ASCII one; values with brackets, quotes
        // and escapes inside; white space around tokens.
        let names = ["id", "id", r"k\u0031", "été", "v"];
        let values = [
            r#""a\"b""#,
            r#"[1,{"x":"}"}]"#,
            r#"{"k":[],"m":{"n":null}}"#,
            "-1.5e3",
            "null",
            r#"" \u005d ""#,
            "true",
        ];
        let space = ["", " ", "\n\t", ""];
        let entries = |f: Fields<'_>| -> Vec<(String, String)> {
            f.entries()
                .map(|(k, v)| (k.to_string(), v.get().to_string()))
                .collect()
        };
        let (mut indexed, mut left_out) = (0, 0);
        for _ in 0..300 {
            let records: Vec<String> = (0..8)
                .map(|_| match next(12) {
                    0 => "{}".to_string(),
                    1 => "[1,{\"id\":2}]".to_string(),
                    _ => {
                        let fields: Vec<String> = (0..1 + next(5))
                            .map(|_| {
                                let (a, b) = (space[next(4)], space[next(4)]);
                                let (name, value) = (names[next(5)], values[next(7)]);
                                format!("{a}\"{name}\"{b}:{a}{value}{b}")
                            })
                            .collect();
                        format!("{{{}}}", fields.join(","))
                    }
                })
                .collect();
            let mut index = FieldIndex::default();
            Structures::default().page(&records, &mut index);
            assert_eq!(index.len(), records.len());
            for (i, record) in records.iter().enumerate() {
                let parsed = Fields::parse(record).map(entries).ok();
                match index.record(i).and_then(|at| Fields::at(record, at)) {
                    Some(found) => {
                        indexed += 1;
                        assert_eq!(Some(entries(found)), parsed, "{record}");
                    }
                    None => {
                        left_out += 1;
                        let escaped = parsed.is_some_and(|p| p.iter().any(|(k, _)| k == "k1"));
                        assert!(escaped || !record.starts_with('{'), "{record}");
                    }
                }
            }
        }
        assert!(
            indexed > 1_000 && left_out > 200,
            "{indexed} indexed, {left_out} left out"
        );
    }

    #[test]
    fn a_page_of_known_structures_counts_like_one_walked_record_by_record() {
        let records: Vec<String> = (0..40)
            .map(|i| match i % 3 {
                0 => format!(r#"{{"id":{i},"a":{{"b":[{{"c":1}}]}}}}"#),
                1 => format!(r#"{{"id":{i},"a":null,"d":"x"}}"#),
                _ => format!(r#"{{"id":{i},"a":{{"b":[]}}}}"#),
            })
            .collect();
        let mut structures = Structures::default();
        let (cached, n) = structures.page(&records, &mut FieldIndex::default());
        let mut walked: BTreeMap<String, Seen> = BTreeMap::new();
        for r in &records {
            add(&mut walked, &record_paths(r), 1);
        }
        assert_eq!(n, 40);
        let view = |m: &BTreeMap<String, Seen>| -> Vec<(String, u8, bool, u64)> {
            m.iter()
                .map(|(p, s)| (p.clone(), s.types, s.null, s.records))
                .collect()
        };
        assert_eq!(view(&cached), view(&walked));
        assert_eq!(structures.0.len(), 3);
    }

    #[test]
    fn new_gone_and_retyped_fields_are_found_once() {
        let dir = dir("evolve");
        let mut s = schema(&dir, SchemaPolicy::Evolve);
        let first = [
            r#"{"id":1,"total":5,"note":"a","ship":{"city":"Lyon"},"items":[{"sku":"x"}]}"#
                .to_string(),
            r#"{"id":2,"total":7,"note":null,"ship":{"city":"Gent"},"items":[]}"#.to_string(),
        ];
        let Observed {
            changes, refused, ..
        } = s.observe(1, &first, Timestamp(1), false).unwrap();
        assert!(
            changes.is_empty() && !refused,
            "the first page is the shape"
        );
        let drifted = [
            r#"{"id":3,"total":"9.50","ship":{"city":"Cork","zip":"T12"},"items":[{"sku":"y","qty":2}],"priority":{"level":1}}"#.to_string(),
        ];
        let changes = s.observe(2, &drifted, Timestamp(2), false).unwrap().changes;
        assert_eq!(
            texts(&changes),
            [
                "new field `items[].qty` (integer)",
                "new field `priority` (object)",
                "new field `ship.zip` (string)",
                "field `total`: integer → integer|string",
                "field `note` gone (was string)",
            ]
        );
        // Evolved: the same shape again is no change, and the file holds it.
        let changes = s.observe(3, &drifted, Timestamp(3), true).unwrap().changes;
        assert!(changes.is_empty(), "{:?}", texts(&changes));
        let kept = Schema::read(&dir.join("s.json")).unwrap();
        assert_eq!(kept.records, 4);
        assert_eq!(kept.history.len(), 5);
        assert_eq!(kept.fields["total"].types, ["integer", "string"]);
        assert!(!kept.fields["note"].required && kept.fields["id"].required);
        assert!(kept.fields["note"].nullable);
    }
}
