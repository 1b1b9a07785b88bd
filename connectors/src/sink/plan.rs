//! What one batch does to a destination, decided without I/O (the rules carry no handle
//! to any store) and shared by every
//! destination, so they all keep the same promises: each record is identified (key,
//! version, deletion flag, declared columns) or dead-lettered; compared with what is stored
//! (an older version never overwrites a newer one; a deletion never removes a newer
//! record; a deleted record is not brought back by an older copy); and turned into
//! operations and the counts of the write acknowledgement.

use std::borrow::Cow;
use std::cmp::Ordering;
use std::collections::HashMap;
use std::sync::Arc;

use waymark_engine::{FieldIndex, Preparer, WriteAck};

use crate::config::{DeleteMode, KeyType, RecordFilter, StreamSection, Workflow};
use crate::record::{compare_versions, key_by, raw_at, scalar_text, Fields};
use crate::sink::columns::{Cell, Columns};
use crate::state::audit::{Outcome, Seen};
use crate::state::dead_letters::DeadLetter;
use crate::state::schema::Frozen;

/// Where one stream's records go and by which rules.
#[derive(Clone, Debug)]
pub struct Binding {
    /// The sync; with `stream` it names the checkpoint row.
    pub sync: String,
    /// The stream (or a backfill scope of it): names the checkpoint row.
    pub stream: String,
    /// The table written (the stream's own, or the one a deletions feed deletes from).
    pub table: String,
    /// Dotted paths of the record key (several: a composite key, stored as a JSON array).
    pub primary_key: Vec<String>,
    /// What the key is: an integer key that is not one is refused (and SQLite keeps the
    /// table's keys as row ids).
    pub key_type: KeyType,
    /// Dotted path of the record version (for a deletions feed: the deletion time).
    pub version_field: Option<String>,
    /// Records mark rows of `table` deleted instead of being stored.
    pub deletes: bool,
    /// Records matching this are deletions too.
    pub deleted_when: Option<RecordFilter>,
    /// Deletions remove rows (remembering their deletion version) instead of marking them.
    pub hard_delete: bool,
    /// Typed columns beside the raw record.
    pub columns: Columns,
    /// Records carrying `"_waymark_deleted": true` are deletions: a reconciliation's repair
    /// (of records gone from the source) or a webhook's deletion events.
    pub marked_deletions: bool,
    /// With `schema_policy = "freeze"`, the shape records must fit (else they are dead
    /// letters); set when the destination opens, once a shape was observed.
    pub frozen: Option<Arc<Frozen>>,
}

impl Binding {
    /// The binding of `stream` in `workflow`.
    pub fn new(workflow: &Workflow, stream: &StreamSection) -> Self {
        let table = stream
            .deletes
            .clone()
            .unwrap_or_else(|| stream.name.clone());
        // A deletions feed fills no columns: it only marks rows of its target.
        let columns = match &stream.deletes {
            Some(_) => Columns::default(),
            None => Columns::new(&stream.columns),
        };
        Binding {
            sync: workflow.name().to_string(),
            stream: stream.name.clone(),
            table,
            primary_key: stream.primary_key.paths(),
            key_type: stream.key_type,
            version_field: stream.cursor_field.clone(),
            deletes: stream.deletes.is_some(),
            deleted_when: stream.deleted_when.clone(),
            hard_delete: workflow.file().destination.delete_mode == DeleteMode::Hard,
            columns,
            marked_deletions: false,
            frozen: None,
        }
    }

    /// Whether the record is a deletion: the stream is a deletions feed, the record matches
    /// `deleted_when`, or it carries the
    /// deletion mark of a repair or a webhook.
    pub fn is_deletion(&self, record: &Fields<'_>) -> bool {
        self.deletes
            || self.deleted_when.as_ref().is_some_and(|f| {
                record
                    .scalar(&f.path)
                    .is_some_and(|v| f.one_of.contains(&v))
            })
            || (self.marked_deletions
                && record.raw(DELETION_MARK).is_some_and(|r| r.get() == "true"))
    }
}

/// The field marking a deletion record of a repair or a webhook.
pub const DELETION_MARK: &str = "_waymark_deleted";

/// The one field of the record a webhook passes on for an event whose body is not JSON
/// (`{"body": <its text>, "error": <the parser's>}`): it is dead-lettered, saying why.
/// Records are JSON past the edges that read them ([`identify`]).
pub const NOT_JSON_MARK: &str = "_waymark_not_json";

/// What a destination holds for a key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stored {
    /// The stored version.
    pub version: Option<String>,
    /// The row is marked deleted, or (with `record: None`) only its deletion is remembered.
    pub deleted: bool,
    /// The stored record; `None` after a hard delete.
    pub record: Option<String>,
}

/// One change to a destination, borrowed from the batch's records and their identities.
#[derive(Clone, Debug, PartialEq)]
pub enum Op<'a> {
    /// Insert or replace the row; `revived`: it had been hard-deleted (forget that).
    Put {
        /// The key.
        key: &'a str,
        /// The version.
        version: Option<&'a str>,
        /// The record.
        record: &'a str,
        /// Its declared columns.
        cells: &'a [Cell],
        /// It had been hard-deleted.
        revived: bool,
    },
    /// Soft delete: the row stays (its last record kept, for audit), `deleted_at` and the
    /// version become the deletion's time.
    Tombstone {
        /// The key.
        key: &'a str,
        /// The deletion's version.
        version: Option<&'a str>,
        /// The deletion record (stored only when the row is new).
        record: &'a str,
    },
    /// Hard delete: the row goes; `(key, version)` is remembered.
    Remove {
        /// The key.
        key: &'a str,
        /// The deletion's version.
        version: Option<&'a str>,
    },
}

impl Op<'_> {
    /// The key it changes.
    pub fn key(&self) -> &str {
        match self {
            Op::Put { key, .. } | Op::Tombstone { key, .. } | Op::Remove { key, .. } => key,
        }
    }
}

/// A batch's changes, dead letters and counts.
#[derive(Debug, Default)]
pub struct Plan<'a> {
    /// The changes, in record order.
    pub ops: Vec<Op<'a>>,
    /// The refused records.
    pub dead: Vec<DeadLetter>,
    /// The counts.
    pub ack: WriteAck,
    /// What became of each record that has a key, in record order.
    pub seen: Vec<Seen<'a>>,
}

impl<'a> Plan<'a> {
    /// The changes with only the last one per key (what a set-based write applies).
    pub fn last_per_key(&self) -> Vec<&Op<'a>> {
        let mut last: HashMap<&str, usize> = HashMap::new();
        for (i, op) in self.ops.iter().enumerate() {
            last.insert(op.key(), i);
        }
        let mut keep: Vec<usize> = last.into_values().collect();
        keep.sort_unstable();
        keep.into_iter().map(|i| &self.ops[i]).collect()
    }
}

/// [`Stored`] as a batch's plan sees it: a record of the batch is borrowed, not copied.
#[derive(Clone)]
struct Known<'a> {
    version: Option<Cow<'a, str>>,
    deleted: bool,
    record: Option<Cow<'a, str>>,
}

impl From<Stored> for Known<'_> {
    fn from(s: Stored) -> Self {
        Known {
            version: s.version.map(Cow::Owned),
            deleted: s.deleted,
            record: s.record.map(Cow::Owned),
        }
    }
}

/// A record's identity and columns.
pub(crate) struct Identity {
    /// Its key ([`crate::record`]: the exact text of its primary key).
    pub(crate) key: String,
    /// Its version, exactly as written.
    pub(crate) version: Option<String>,
    /// It is a deletion.
    pub(crate) deletion: bool,
    cells: Vec<Cell>,
}

/// A record the sync refuses: its key (if it has one) and why.
pub(crate) type Refused = (Option<String>, String);

/// The record's identity, or its key (if any) and why it is refused: how the sync reads
/// every record, and a reconciliation every source record. The key, version and deletion
/// flag are read from the record's text ([`Fields`]: exact, only the paths needed); the
/// whole record is parsed only for declared columns.
///
/// `record` is JSON: records come from pages checked when they were read or are serialised
/// by Waymark (a webhook event that is not JSON arrives as [`NOT_JSON_MARK`]), and `dlq
/// retry` passes on only the dead letters that are JSON. So its fields are found by
/// [`Fields::scan`], which checks only the values it reads.
pub(crate) fn identify(record: &str, b: &Binding) -> Result<Identity, Refused> {
    identify_found(record, None, b)
}

/// [`identify`], with the record's top-level fields already found (`found`: where the
/// source's index says they are), so the record is not scanned again.
fn identify_found<'r>(
    record: &'r str,
    found: Option<Fields<'r>>,
    b: &Binding,
) -> Result<Identity, Refused> {
    let fields = match found
        .or_else(|| Fields::scan(record))
        .ok_or(())
        .or_else(|()| Fields::parse(record))
    {
        Ok(fields) => fields,
        // JSON, but not an object: it has no key.
        Err(e) if e.is_data() => Fields::default(),
        Err(e) => return Err((None, format!("not JSON: {e}"))),
    };
    // The mark is the record's one field (a record of the API may have such a field too).
    let marked = b.marked_deletions && fields.entries().nth(1).is_none();
    if let Some(mark) = marked.then(|| fields.raw(NOT_JSON_MARK)).flatten() {
        let why = raw_at(mark, "error")
            .and_then(scalar_text)
            .unwrap_or_default();
        return Err((None, format!("not JSON: {why}")));
    }
    let key = key_by(&b.primary_key, |path| fields.scalar(path)).ok_or_else(|| {
        (
            None,
            format!(
                "primary key `{}` is missing or not a scalar",
                b.primary_key.join(", ")
            ),
        )
    })?;
    if key.contains('\0') {
        return Err((None, "the primary key contains a NUL character".into()));
    }
    if !b.key_type.admits(&key) {
        return Err((
            Some(key),
            "the primary key is not an integer (key_type = \"integer\": a whole number \
             from -9223372036854775808 to 9223372036854775807, without a plus sign or \
             leading zeros)"
                .into(),
        ));
    }
    let version = match &b.version_field {
        None => None,
        Some(field) => Some(fields.scalar(field).ok_or_else(|| {
            (
                Some(key.clone()),
                format!("version field `{field}` is missing or not a scalar"),
            )
        })?),
    };
    let deletion = b.is_deletion(&fields);
    if let (Some(frozen), false) = (&b.frozen, deletion) {
        if let Some(why) = frozen.misfit(record) {
            return Err((Some(key), why));
        }
    }
    let cells = match deletion || b.columns.is_empty() {
        true => Vec::new(),
        false => serde_json::from_str(record)
            .map_err(|e| format!("the record cannot be read for its columns: {e}"))
            .and_then(|value| b.columns.cells(&value))
            .map_err(|why| (Some(key.clone()), why))?,
    };
    Ok(Identity {
        key,
        version,
        deletion,
        cells,
    })
}

/// A page's records, each read for its identity (or why it has none): what [`plan`] works
/// on. Made by [`Binding::preparer`] while the page before is written, off the write path.
pub struct Identified {
    records: Vec<String>,
    ids: Vec<Result<Identity, Refused>>,
}

impl Identified {
    /// Reads each of `records` by the binding's rules.
    pub fn new(b: &Binding, records: Vec<String>) -> Self {
        Self::indexed(b, records, None)
    }

    /// Reads each of `records` by the binding's rules, where `fields` (the source's index,
    /// if it gave one) says their fields are.
    pub fn indexed(b: &Binding, records: Vec<String>, fields: Option<&FieldIndex>) -> Self {
        let ids = records
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let found = fields.and_then(|f| Fields::at(r, f.record(i)?));
                identify_found(r, found, b)
            })
            .collect();
        Identified { records, ids }
    }

    /// The key of each record that has one.
    pub fn keys(&self) -> Vec<&str> {
        self.ids
            .iter()
            .filter_map(|id| match id {
                Ok(id) => Some(id.key.as_str()),
                Err((key, _)) => key.as_deref(),
            })
            .collect()
    }
}

impl Binding {
    /// What the sync does with `record`: its key, its version and whether it is a
    /// deletion; or why it would be dead-lettered (`waymark run --dry-run`).
    pub fn preview(&self, record: &str) -> Result<(String, Option<String>, bool), String> {
        identify(record, self)
            .map(|id| (id.key, id.version, id.deletion))
            .map_err(|(_, why)| why)
    }

    /// What makes a page ready for a destination writing by this binding.
    pub fn preparer(&self) -> Preparer<Arc<Identified>> {
        let b = self.clone();
        Arc::new(move |records, fields| Arc::new(Identified::indexed(&b, records, fields.as_ref())))
    }
}

/// Decides what `records` (page `page` of run `run`) do, given what is stored for a key
/// (`stored` is asked once per key; later records of the batch see the batch's own changes).
pub fn plan<'a, E>(
    b: &Binding,
    run: &str,
    page: u64,
    records: &'a Identified,
    mut stored: impl FnMut(&str) -> Result<Option<Stored>, E>,
) -> Result<Plan<'a>, E> {
    let mut out = Plan::default();
    // What each key holds as the batch goes (records borrowed from the batch).
    let mut seen: HashMap<&'a str, Option<Known<'a>>> = HashMap::with_capacity(records.ids.len());
    for (record, id) in records.records.iter().zip(&records.ids) {
        let id = match id {
            Ok(id) => id,
            Err((key, reason)) => {
                out.refuse(b, run, page, key.as_deref(), reason, record);
                continue;
            }
        };
        let before = match seen.get(id.key.as_str()) {
            Some(s) => s.clone(),
            None => stored(&id.key)?.map(Known::from),
        };
        let order = match (
            before.as_ref().and_then(|s| s.version.as_ref()),
            &id.version,
        ) {
            (Some(old), Some(new)) => compare_versions(new, old),
            _ => Ordering::Equal,
        };
        let (outcome, revived) = match id.deletion {
            true => (deletion_outcome(before.as_ref(), order), false),
            false => record_outcome(before.as_ref(), order, record),
        };
        out.note(id, outcome);
        let (op, after) = match outcome {
            Outcome::Unchanged | Outcome::Stale | Outcome::DeadLettered => {
                // The key's later records compare with the same (`stored` is asked once).
                seen.insert(&id.key, before);
                continue;
            }
            _ if id.deletion => deletion(b, id, record, before),
            _ => put(id, record, revived),
        };
        seen.insert(&id.key, Some(after));
        out.ops.push(op);
    }
    Ok(out)
}

impl<'a> Plan<'a> {
    /// A record refused before it was compared: to the dead letters.
    fn refuse(
        &mut self,
        b: &Binding,
        run: &str,
        page: u64,
        key: Option<&'a str>,
        reason: &str,
        record: &str,
    ) {
        if let Some(key) = key {
            self.seen.push(Seen {
                key,
                version: None,
                outcome: Outcome::DeadLettered,
            });
        }
        self.dead.push(DeadLetter {
            stream: b.stream.clone(),
            run_id: run.to_string(),
            page,
            key: key.map(str::to_string),
            reason: reason.to_string(),
            record: record.to_string(),
        });
        self.ack.dead_lettered += 1;
    }

    /// What became of an identified record: the audit trail and the counts.
    fn note(&mut self, id: &'a Identity, outcome: Outcome) {
        self.seen.push(Seen {
            key: &id.key,
            version: id.version.as_deref(),
            outcome,
        });
        let count = match outcome {
            Outcome::Inserted => &mut self.ack.inserted,
            Outcome::Updated => &mut self.ack.updated,
            Outcome::Unchanged => &mut self.ack.unchanged,
            Outcome::Stale => &mut self.ack.skipped_stale,
            Outcome::Deleted => &mut self.ack.deleted,
            Outcome::DeadLettered => &mut self.ack.dead_lettered,
        };
        *count += 1;
    }
}

/// What a deletion (version `order` against the stored one) does to a key holding `before`:
/// a deleted record stays deleted unless the deletion is newer; an older deletion never
/// removes a newer record.
fn deletion_outcome(before: Option<&Known<'_>>, order: Ordering) -> Outcome {
    match before {
        Some(s) if s.deleted && order != Ordering::Greater => Outcome::Unchanged,
        Some(_) if order == Ordering::Less => Outcome::Stale,
        _ => Outcome::Deleted,
    }
}

/// What a record (version `order` against the stored one) does to a key holding `before`,
/// and whether it comes back after a hard delete (an id reused, or undeleted).
fn record_outcome(before: Option<&Known<'_>>, order: Ordering, record: &str) -> (Outcome, bool) {
    match before {
        None => (Outcome::Inserted, false),
        Some(_) if order == Ordering::Less => (Outcome::Stale, false),
        Some(s)
            if order == Ordering::Equal && !s.deleted && s.record.as_deref() == Some(record) =>
        {
            (Outcome::Unchanged, false)
        }
        Some(s) if s.deleted && s.record.is_none() => (Outcome::Inserted, true),
        Some(_) => (Outcome::Updated, false),
    }
}

/// A deletion's change, and what the key holds after it: soft, the row stays with its last
/// record (for audit); hard, it goes and only its deletion version is remembered.
fn deletion<'a>(
    b: &Binding,
    id: &'a Identity,
    record: &'a str,
    before: Option<Known<'a>>,
) -> (Op<'a>, Known<'a>) {
    let (key, version) = (id.key.as_str(), id.version.as_deref());
    let after = Known {
        version: version.map(Cow::Borrowed),
        deleted: true,
        record: match b.hard_delete {
            true => None,
            false => before
                .and_then(|s| s.record)
                .or(Some(Cow::Borrowed(record))),
        },
    };
    let op = match b.hard_delete {
        true => Op::Remove { key, version },
        false => Op::Tombstone {
            key,
            version,
            record,
        },
    };
    (op, after)
}

/// A record's change, and what the key holds after it.
fn put<'a>(id: &'a Identity, record: &'a str, revived: bool) -> (Op<'a>, Known<'a>) {
    let after = Known {
        version: id.version.as_deref().map(Cow::Borrowed),
        deleted: false,
        record: Some(Cow::Borrowed(record)),
    };
    let op = Op::Put {
        key: &id.key,
        version: id.version.as_deref(),
        record,
        cells: &id.cells,
        revived,
    };
    (op, after)
}

/// A binding for unit tests: stream `t` of sync `s`, key `id`, version `v`, rows with
/// `gone = true` deleted.
#[cfg(test)]
pub(crate) fn tests_binding() -> Binding {
    tests::binding(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn binding(hard: bool) -> Binding {
        Binding {
            sync: "s".into(),
            stream: "t".into(),
            table: "t".into(),
            primary_key: vec!["id".into()],
            key_type: KeyType::Text,
            version_field: Some("v".into()),
            deletes: false,
            deleted_when: Some(RecordFilter {
                path: "gone".into(),
                one_of: vec!["true".into()],
            }),
            hard_delete: hard,
            columns: Columns::default(),
            marked_deletions: false,
            frozen: None,
        }
    }

    fn records(texts: &[&str]) -> Vec<String> {
        texts.iter().map(|t| t.to_string()).collect()
    }

    /// A webhook event that was not JSON arrives as its text under the mark, and is
    /// refused as not JSON: it is never taken for a record with the fields a scan found.
    #[test]
    fn an_event_that_is_not_json_is_refused_as_such() {
        let b = Binding {
            marked_deletions: true,
            ..binding(false)
        };
        let body = r#"{"id":7,"v":"1","total":NaN}"#;
        let error = serde_json::from_str::<serde_json::Value>(body)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        let mark = serde_json::json!({ "body": body, "error": error });
        let record = serde_json::json!({ NOT_JSON_MARK: mark }).to_string();
        let refused = identify(&record, &b)
            .err()
            .map(|(_, why)| why)
            .unwrap_or_default();
        assert_eq!(refused, format!("not JSON: {error}"));
        assert!(error.starts_with("expected value"), "{error}");
        // The same text as a record of a page would have been checked with the page.
        assert!(identify(body, &b).is_ok());
        // A record of the API with a field of that name beside others is a record.
        let beside = serde_json::json!({ NOT_JSON_MARK: "x", "id": 1, "v": "1" }).to_string();
        assert!(identify(&beside, &b).is_ok());
    }

    #[test]
    fn versions_decide_and_the_batch_sees_its_own_changes() -> Result<(), String> {
        let b = binding(false);
        let batch = records(&[
            r#"{"id":1,"v":5}"#,
            r#"{"id":1,"v":4}"#,
            r#"{"id":1,"v":5}"#,
            r#"{"id":2,"v":9}"#,
            r#"{"id":3,"v":1,"gone":true}"#,
            r#"{"v":1}"#,
        ]);
        let stored = |key: &str| -> Result<Option<Stored>, String> {
            Ok((key == "2").then(|| Stored {
                version: Some("10".into()),
                deleted: false,
                record: Some("{}".into()),
            }))
        };
        let batch = Identified::new(&b, batch);
        let plan = plan(&b, "r", 1, &batch, stored)?;
        let ack = plan.ack;
        assert_eq!(
            (
                ack.inserted,
                ack.skipped_stale,
                ack.unchanged,
                ack.deleted,
                ack.dead_lettered
            ),
            (1, 2, 1, 1, 1)
        );
        assert_eq!(plan.ops.len(), 2);
        assert_eq!(
            plan.dead[0].reason,
            "primary key `id` is missing or not a scalar"
        );
        Ok(())
    }
}
