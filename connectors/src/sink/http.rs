//! The HTTP destination (API to API, e.g. into a CRM): per record, find the destination's
//! record (from the key → id map, else by searching for the source key), then update it,
//! else create it — with an `Idempotency-Key` derived from `(stream, key, version)`, so a
//! retried or replayed request never makes a second record. Each stream has its own
//! endpoints ([`HttpTarget`]) and, with a body mapping, sends the body [`body`] renders,
//! the ids of linked records looked up first.
//!
//! The key → (id, version, record) map and the stream's checkpoint are kept together in the
//! state directory (`http_ids/<sync>/<table>.json`, replaced atomically after each page),
//! so later runs update instead of searching, and a replayed page is recognised. 429 and
//! 5xx are retried with the source's backoff rules (`Retry-After` honoured); a record the
//! API refuses (another 4xx) goes to the dead-letter store with the status and the start
//! of the answer; 401/403 or exhausted retries fail the step without moving the checkpoint.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use reqwest::Method;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use waymark_engine::decision::{backoff, Jitter};
use waymark_engine::destination::{self, Batch, Destination, Preparer};
use waymark_engine::source::ErrorKind;
use waymark_engine::{Checkpoint, Clock, Lease, RetryPolicy, WriteAck};

use crate::config::{HttpTarget, Workflow};
use crate::http::rules::Rules;
use crate::http::Api;
use crate::record::lookup;
use crate::sink::body;
use crate::sink::plan::{plan, Binding, Identified, Op, Stored};
use crate::sink::store::{Commit, Earlier};
use crate::sink::upserting::Notes;
use crate::state::dead_letters::DeadLetter;

/// What the destination knows of one source record.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Known {
    /// The destination's id (`None`: deleted there).
    id: Option<String>,
    version: Option<String>,
    record: Option<String>,
    deleted: bool,
}

/// The map and the checkpoints, saved together.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Mapping {
    records: BTreeMap<String, Known>,
    /// Scope → (run, page, checkpoint, ack) of the last page written.
    checkpoints: BTreeMap<String, (String, u64, Checkpoint, WriteAck)>,
    /// Scope → the acknowledgements of the run's pages before the last (absent from what
    /// older versions saved).
    #[serde(default)]
    earlier: BTreeMap<String, Earlier>,
}

impl Mapping {
    /// The last page `scope` committed.
    fn last(&self, scope: &str) -> Option<Commit> {
        let (run, page, _, ack) = self.checkpoints.get(scope)?;
        Some(Commit {
            run: run.clone(),
            page: *page,
            ack: *ack,
            earlier: self.earlier.get(scope).cloned().unwrap_or_default(),
        })
    }
}

/// A related stream's ids, for a body mapping's links: its id map as last read, ids its
/// lookup found since, and keys it did not find (searched for again by the next run).
struct Related {
    target: HttpTarget,
    file: PathBuf,
    ids: BTreeMap<String, String>,
    absent: std::collections::BTreeSet<String>,
}

/// One stream written to an API.
pub struct HttpDestination {
    api: Arc<Api>,
    rules: Rules,
    binding: Binding,
    target: HttpTarget,
    /// Related streams by name (those the body mapping links to).
    related: BTreeMap<String, Related>,
    retry: RetryPolicy,
    clock: Arc<dyn Clock>,
    file: PathBuf,
    mapping: Mapping,
    jitter: Jitter,
    notes: Notes,
}

/// How a request ended.
enum Answer {
    Ok(Vec<u8>),
    /// The API refused this record (a 4xx other than 401/403): status and reason.
    Refused(String),
    NotFound,
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> destination::Error + '_ {
    move |e| destination::Error::permanent(format!("{}: {e}", path.display()))
}

/// Where the id map of `table` is kept.
fn map_file(state_dir: &Path, sync: &str, table: &str) -> PathBuf {
    state_dir
        .join("http_ids")
        .join(sync)
        .join(format!("{table}.json"))
}

/// The HTTP target of the stream `name` (checked when the file was loaded).
fn target_of(workflow: &Workflow, name: &str) -> Result<HttpTarget, destination::Error> {
    let stream = workflow
        .stream(name)
        .map_err(|e| destination::Error::permanent(e.to_string()))?;
    HttpTarget::of(
        &workflow.file().destination,
        name,
        stream.destination.as_ref(),
    )
    .map_err(|(key, why)| destination::Error::permanent(format!("{key}: {why}")))
}

fn id_of(target: &HttpTarget, record: &Value) -> Option<String> {
    match lookup(record, &target.id_path)? {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// The id of the lookup answer's record whose `external_id_field` is `key` (an API that
/// ignored the filter must not make every record update one stranger); two is an error.
fn found(
    target: &HttpTarget,
    key: &str,
    body: &[u8],
) -> Result<Option<String>, destination::Error> {
    let value: Value = serde_json::from_slice(body).map_err(|e| {
        destination::Error::permanent(format!("lookup of {key}: the answer is not JSON ({e})"))
    })?;
    let items = match value {
        Value::Array(items) => items,
        Value::Null => Vec::new(),
        other => vec![other],
    };
    let field = &target.external_id_field;
    let matching: Vec<&Value> = items
        .iter()
        .filter(|r| lookup(r, field).and_then(crate::record::scalar).as_deref() == Some(key))
        .collect();
    match matching.as_slice() {
        [] => Ok(None),
        [one] => Ok(id_of(target, one)),
        many => Err(destination::Error::permanent(format!(
            "lookup of {key}: {} records have {field} = {key}; resolve the duplicates in the \
             destination first",
            many.len()
        ))),
    }
}

impl Mapping {
    /// Each key's destination id (deleted ones have none).
    fn ids(self) -> impl Iterator<Item = (String, String)> {
        self.records
            .into_iter()
            .filter_map(|(key, known)| Some((key, known.id?)))
    }

    /// The map saved in `file` (empty when there is none yet).
    fn read(file: &Path) -> Result<Mapping, destination::Error> {
        match std::fs::read(file) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                destination::Error::permanent(format!("{}: unreadable id map: {e}", file.display()))
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Mapping::default()),
            Err(e) => Err(io(file)(e)),
        }
    }
}

/// What the destination holds of `table` by the id map in `state_dir`: per source key, in
/// key order, whether it is deleted there and the source record last written.
pub fn written(
    state_dir: &Path,
    sync: &str,
    table: &str,
) -> Result<BTreeMap<String, (bool, Option<String>)>, destination::Error> {
    Ok(Mapping::read(&map_file(state_dir, sync, table))?
        .records
        .into_iter()
        .map(|(key, known)| (key, (known.deleted, known.record)))
        .collect())
}

/// `{name}` in `template` replaced by `value`, percent-encoded.
fn fill(template: &str, name: &str, value: &str) -> String {
    template.replace(&format!("{{{name}}}"), &crate::http::path_segment(value))
}

impl HttpDestination {
    /// The destination of `binding` in `workflow`, noting side records in `notes`; its map
    /// is in `state_dir`.
    pub fn open(
        workflow: &Workflow,
        binding: Binding,
        notes: Notes,
        state_dir: &Path,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, destination::Error> {
        let api = Api::for_destination(workflow, Some(state_dir), clock.clone())
            .map_err(|e| destination::Error::permanent(e.to_string()))?;
        // A deletions feed writes into the table of the stream it deletes from.
        let target = target_of(workflow, &binding.table)?;
        let mut related = BTreeMap::new();
        for (_, stream, _) in target.body.iter().flat_map(|b| b.links("")) {
            if stream != binding.table && !related.contains_key(stream) {
                let file = map_file(state_dir, &binding.sync, stream);
                let ids = Mapping::read(&file)?.ids().collect();
                let target = target_of(workflow, stream)?;
                let absent = Default::default();
                let ids = Related {
                    target,
                    file,
                    ids,
                    absent,
                };
                related.insert(stream.to_string(), ids);
            }
        }
        let file = map_file(state_dir, &binding.sync, &binding.table);
        let mapping = Mapping::read(&file)?;
        Ok(HttpDestination {
            api,
            rules: Rules::default(),
            binding,
            target,
            related,
            retry: workflow.retry_policy(),
            jitter: Jitter::new(clock.now().0),
            notes,
            clock,
            file,
            mapping,
        })
    }

    /// Sends one request, retrying 429/5xx with backoff.
    async fn call(
        &mut self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        idempotency: Option<&str>,
    ) -> Result<Answer, destination::Error> {
        let url = format!(
            "{}/{}",
            self.api.base_url().as_str().trim_end_matches('/'),
            path.trim_start_matches('/')
        );
        let url = reqwest::Url::parse(&url).map_err(|e| {
            destination::Error::permanent(format!("`{path}` is not a URL path: {e}"))
        })?;
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let build = || {
                let mut request = self.api.client().request(method.clone(), url.clone());
                if let Some(body) = body {
                    request = request
                        .header(reqwest::header::CONTENT_TYPE, "application/json")
                        .body(body.to_string());
                }
                if let Some(key) = idempotency {
                    request = request.header("Idempotency-Key", key);
                }
                request.build().map_err(|e| {
                    waymark_engine::source::Error::new(
                        ErrorKind::Fatal,
                        e.without_url().to_string(),
                    )
                })
            };
            let error = match self.api.send(&self.rules, build).await {
                Ok(Ok(accepted)) => return Ok(Answer::Ok(accepted.body)),
                Ok(Err(ignored)) => return Ok(Answer::Refused(ignored.reason)),
                Err(e) => e,
            };
            match (error.kind, error.status) {
                (ErrorKind::Fatal, Some(404)) => return Ok(Answer::NotFound),
                (ErrorKind::Fatal, Some(s)) if (400..500).contains(&s) && s != 401 && s != 403 => {
                    return Ok(Answer::Refused(error.message))
                }
                (ErrorKind::Fatal, _) => return Err(destination::Error::permanent(error.message)),
                _ if attempt >= self.retry.max_attempts => {
                    return Err(destination::Error::permanent(format!(
                        "{} after {attempt} attempts",
                        error.message
                    )))
                }
                _ => {}
            }
            let jittered = backoff(&self.retry, attempt - 1, self.jitter.next_sample());
            let wait = match error.retry_after {
                Some(after) if !after.is_zero() => after.max(jittered),
                _ => jittered.max(Duration::from_millis(10)),
            };
            if wait > self.retry.max_wait {
                return Err(destination::Error::permanent(format!(
                    "{}; the API asks to wait {} (more than max_wait)",
                    error.message,
                    humantime::format_duration(wait)
                )));
            }
            tracing::warn!(
                "destination: attempt {attempt} failed, retrying in {} ms: {}",
                wait.as_millis(),
                error.message
            );
            self.clock.sleep(wait).await;
        }
    }

    /// The destination's id of `key`: known, or found by the lookup.
    async fn find(&mut self, key: &str) -> Result<Option<String>, destination::Error> {
        if let Some(id) = self.mapping.records.get(key).and_then(|k| k.id.clone()) {
            return Ok(Some(id));
        }
        let target = self.target.clone();
        self.search(&target, key).await
    }

    /// The destination's id of `key` by `target`'s lookup.
    async fn search(
        &mut self,
        target: &HttpTarget,
        key: &str,
    ) -> Result<Option<String>, destination::Error> {
        let path = fill(&target.lookup, "key", key);
        match self.call(Method::GET, &path, None, None).await? {
            Answer::Ok(body) => found(target, key, &body),
            Answer::NotFound => Ok(None),
            Answer::Refused(why) => Err(destination::Error::permanent(format!(
                "lookup of {key}: {why}"
            ))),
        }
    }

    /// The ids of the related records `records` link to, by (stream, key): from the
    /// stream's own map, the related stream's map (read again once when a key is not in
    /// it: that stream may have written since), else its lookup.
    async fn linked(
        &mut self,
        records: &[(String, Value)],
    ) -> Result<body::Linked, destination::Error> {
        let Some(mapping) = self.target.body.clone() else {
            return Ok(body::Linked::new());
        };
        let mut linked = body::Linked::new();
        let mut reread = std::collections::BTreeSet::new();
        for (_, record) in records {
            for (stream, key) in body::links(&mapping, record) {
                if linked.contains_key(&(stream.clone(), key.clone())) {
                    continue;
                }
                let id = match self.related.get_mut(&stream) {
                    None => self.mapping.records.get(&key).and_then(|k| k.id.clone()),
                    Some(related) => {
                        if !related.ids.contains_key(&key) && reread.insert(stream.clone()) {
                            related.ids.extend(Mapping::read(&related.file)?.ids());
                        }
                        match related.ids.get(&key) {
                            Some(id) => Some(id.clone()),
                            None if related.absent.contains(&key) => None,
                            None => {
                                let target = related.target.clone();
                                let id = self.search(&target, &key).await?;
                                if let Some(related) = self.related.get_mut(&stream) {
                                    if let Some(id) = &id {
                                        related.ids.insert(key.clone(), id.clone());
                                    } else {
                                        related.absent.insert(key.clone());
                                    }
                                }
                                id
                            }
                        }
                    }
                };
                if let Some(id) = id {
                    linked.insert((stream, key), id);
                }
            }
        }
        Ok(linked)
    }

    /// The id in a create answer (an object, or an array's first element).
    fn id_in(&self, body: &[u8]) -> Option<String> {
        let value: Value = serde_json::from_slice(body).ok()?;
        let first = match &value {
            Value::Array(items) => items.first()?,
            other => other,
        };
        id_of(&self.target, first)
    }

    /// The same request (retried, or replayed after a crash) gets the same key; a
    /// different one (another version, another body, another target id) a new key.
    fn idempotency_key(
        &self,
        key: &str,
        version: Option<&str>,
        action: &str,
        request: &str,
    ) -> String {
        let mut h = Sha256::new();
        for part in [
            self.binding.sync.as_str(),
            self.binding.table.as_str(),
            key,
            version.unwrap_or(""),
            action,
            request,
        ] {
            h.update(part.as_bytes());
            h.update([0]);
        }
        h.finalize()
            .iter()
            .take(16)
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    async fn write_batch(
        &mut self,
        batch: Batch<'_, Arc<Identified>>,
    ) -> Result<WriteAck, destination::Error> {
        let run = batch.run_id.to_string();
        let last = self.mapping.last(&self.binding.stream);
        if let Some(ack) = last.as_ref().and_then(|l| l.replayed(&run, batch.page)) {
            return Ok(ack);
        }
        let records = &self.mapping.records;
        let hard = self.binding.hard_delete;
        let mut plan = plan(&self.binding, &run, batch.page, batch.records, |key| {
            Ok::<_, destination::Error>(records.get(key).map(|k| Stored {
                version: k.version.clone(),
                deleted: k.deleted,
                record: match (k.deleted && hard, &k.record) {
                    (true, _) => None,
                    (false, r) => r.clone(),
                },
            }))
        })?;
        let mut parsed = Vec::new();
        for op in &plan.ops {
            if let Op::Put { key, record, .. } = op {
                let value: Value = serde_json::from_str(record)
                    .map_err(|e| destination::Error::permanent(format!("record {key}: {e}")))?;
                parsed.push((key.to_string(), value));
            }
        }
        let linked = self.linked(&parsed).await?;
        let mut parsed = parsed.into_iter();
        let mut refused = Vec::new();
        for op in &plan.ops {
            let outcome = match op {
                Op::Put {
                    key,
                    version,
                    record,
                    ..
                } => {
                    let value = parsed.next().map(|(_, v)| v).unwrap_or_default();
                    self.put(key, version.as_deref(), record, value, &linked)
                        .await?
                }
                Op::Tombstone { key, version, .. } | Op::Remove { key, version } => {
                    self.remove(key, version.as_deref()).await?
                }
            };
            if let Err(reason) = outcome {
                refused.push(DeadLetter {
                    stream: self.binding.stream.clone(),
                    run_id: run.clone(),
                    page: batch.page,
                    key: Some(op.key().to_string()),
                    reason,
                    record: match op {
                        Op::Put { record, .. } | Op::Tombstone { record, .. } => record.to_string(),
                        Op::Remove { .. } => String::new(),
                    },
                });
                // It was counted as written; it is a dead letter instead.
                let ack = &mut plan.ack;
                match op {
                    Op::Put { revived, .. }
                        if !revived && self.mapping.records.contains_key(op.key()) =>
                    {
                        ack.updated = ack.updated.saturating_sub(1)
                    }
                    Op::Put { .. } => ack.inserted = ack.inserted.saturating_sub(1),
                    _ => ack.deleted = ack.deleted.saturating_sub(1),
                }
                ack.dead_lettered += 1;
            }
        }
        for seen in plan.seen.iter_mut() {
            if refused.iter().any(|d| d.key.as_deref() == Some(seen.key)) {
                seen.outcome = crate::state::audit::Outcome::DeadLettered;
            }
        }
        plan.dead.extend(refused);
        self.notes
            .note(&self.binding, &run, batch.page, batch.checkpoint.at, &plan)?;
        let commit = Commit::after(last.as_ref(), &run, batch.page, plan.ack);
        let scope = self.binding.stream.clone();
        self.mapping.earlier.insert(scope.clone(), commit.earlier);
        self.mapping
            .checkpoints
            .insert(scope, (run, batch.page, batch.checkpoint.clone(), plan.ack));
        self.save()?;
        Ok(plan.ack)
    }

    /// The body sent for `record`: by the mapping, or the record whole with its key added;
    /// `Err` is why it is a dead letter.
    fn body(&self, key: &str, mut record: Value, linked: &body::Linked) -> Result<Value, String> {
        let t = &self.target;
        match &t.body {
            Some(mapping) => body::render(
                mapping,
                t.missing,
                &record,
                key,
                &t.external_id_field,
                linked,
            ),
            None => {
                if let Value::Object(map) = &mut record {
                    map.insert(t.external_id_field.clone(), Value::String(key.to_string()));
                }
                Ok(record)
            }
        }
    }

    /// Updates or creates one record (`value` is `record` parsed); `Err` is why the record
    /// was not written (its mapping says so, or the API refused it).
    async fn put(
        &mut self,
        key: &str,
        version: Option<&str>,
        record: &str,
        value: Value,
        linked: &body::Linked,
    ) -> Result<Result<(), String>, destination::Error> {
        let body = match self.body(key, value, linked) {
            Ok(body) => body,
            Err(why) => return Ok(Err(why)),
        };
        let id = match self.find(key).await? {
            Some(id) => {
                let path = fill(&self.target.update, "id", &id);
                let idem = self.idempotency_key(key, version, "update", &format!("{path}\0{body}"));
                match self
                    .call(Method::PATCH, &path, Some(&body), Some(&idem))
                    .await?
                {
                    Answer::Ok(_) => id,
                    // Deleted on the other side meanwhile: create it again.
                    Answer::NotFound => match self.create(key, version, &body).await? {
                        Ok(id) => id,
                        Err(why) => return Ok(Err(why)),
                    },
                    Answer::Refused(why) => return Ok(Err(why)),
                }
            }
            None => match self.create(key, version, &body).await? {
                Ok(id) => id,
                Err(why) => return Ok(Err(why)),
            },
        };
        self.mapping.records.insert(
            key.to_string(),
            Known {
                id: Some(id),
                version: version.map(str::to_string),
                record: Some(record.to_string()),
                deleted: false,
            },
        );
        Ok(Ok(()))
    }

    async fn create(
        &mut self,
        key: &str,
        version: Option<&str>,
        body: &Value,
    ) -> Result<Result<String, String>, destination::Error> {
        let idem = self.idempotency_key(key, version, "create", &body.to_string());
        let path = self.target.create.clone();
        match self
            .call(Method::POST, &path, Some(body), Some(&idem))
            .await?
        {
            Answer::Ok(answer) => match self.id_in(&answer) {
                Some(id) => Ok(Ok(id)),
                None => Err(destination::Error::permanent(format!(
                    "created {key}, but the answer has no `{}`: {}",
                    self.target.id_path,
                    self.api.secrets().excerpt(&answer)
                ))),
            },
            Answer::NotFound => Ok(Err("HTTP 404 on create".into())),
            Answer::Refused(why) => Ok(Err(why)),
        }
    }

    /// Deletes one record on the other side; `Err` is why that was not done.
    async fn remove(
        &mut self,
        key: &str,
        version: Option<&str>,
    ) -> Result<Result<(), String>, destination::Error> {
        let Some(template) = self.target.delete.clone() else {
            return Ok(Err(
                "the destination has no `delete` endpoint: the deletion was not applied".into(),
            ));
        };
        if let Some(id) = self.find(key).await? {
            let path = fill(&template, "id", &id);
            let idem = self.idempotency_key(key, version, "delete", &path);
            match self.call(Method::DELETE, &path, None, Some(&idem)).await? {
                Answer::Ok(_) | Answer::NotFound => {}
                Answer::Refused(why) => return Ok(Err(why)),
            }
        }
        self.mapping.records.insert(
            key.to_string(),
            Known {
                id: None,
                version: version.map(str::to_string),
                record: None,
                deleted: true,
            },
        );
        Ok(Ok(()))
    }

    /// Replaces the map file (written aside, synced, renamed).
    fn save(&self) -> Result<(), destination::Error> {
        if let Some(dir) = self.file.parent() {
            std::fs::create_dir_all(dir).map_err(io(dir))?;
        }
        let tmp = self.file.with_extension("tmp");
        let bytes = serde_json::to_vec(&self.mapping)
            .map_err(|e| destination::Error::permanent(format!("id map encoding: {e}")))?;
        let mut f = std::fs::File::create(&tmp).map_err(io(&tmp))?;
        std::io::Write::write_all(&mut f, &bytes).map_err(io(&tmp))?;
        f.sync_all().map_err(io(&tmp))?;
        std::fs::rename(&tmp, &self.file).map_err(io(&self.file))
    }
}

impl Destination for HttpDestination {
    type Page = Arc<Identified>;

    fn preparer(&self) -> Preparer<Arc<Identified>> {
        self.binding.preparer()
    }

    async fn write(
        &mut self,
        batch: Batch<'_, Arc<Identified>>,
    ) -> Result<WriteAck, destination::Error> {
        self.write_batch(batch).await
    }

    async fn checkpoint(&mut self) -> Result<Option<Checkpoint>, destination::Error> {
        Ok(self
            .mapping
            .checkpoints
            .get(&self.binding.stream)
            .map(|(_, _, c, _)| c.clone()))
    }

    /// Not fenced: the API cannot check a token. Every write is an upsert by external id
    /// with an `Idempotency-Key` derived from (stream, key, version), so the same version
    /// sent by two workers is applied once and a worker that lost its lease creates no
    /// duplicate; but until it notices (its next renewal) it may still send an older
    /// version of a record the new holder sent a newer one of.
    async fn fence(&mut self, lease: &Lease) -> Result<(), destination::Error> {
        tracing::debug!(
            "{}/{}: lease token {}: the http destination relies on its idempotency keys",
            self.binding.sync,
            self.binding.stream,
            lease.token
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fills_and_encodes_path_values() {
        assert_eq!(
            fill("/c?external_id={key}", "key", "a b/7"),
            "/c?external_id=a%20b%2F7"
        );
        assert_eq!(fill("/c/{id}", "id", "42"), "/c/42");
    }
}
