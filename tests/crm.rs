//! A CRM-like API for the HTTP destination's tests: collections of records (`contacts`,
//! `accounts`, …) with an `external_id`, found by `GET /<collection>?external_id=…`, created
//! by `POST /<collection>` (201 with the new `id`, unique across collections), updated by
//! `PATCH /<collection>/{id}`, deleted by `DELETE /<collection>/{id}`. It honours
//! `Idempotency-Key` (a repeated key gets the first answer), refuses a record whose `qty` is
//! `"bad"` (422) and, for a collection given its `fields`, any other field (400, as a real
//! CRM does), counts creates, updates and lookups, and can answer every n-th request with a
//! 429 or 503.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, PoisonError};

use serde_json::Value;

use crate::scripted::{Reply, Request};

#[derive(Default)]
pub struct Crm {
    next: u64,
    /// Collection → id → record.
    pub collections: BTreeMap<String, BTreeMap<u64, Value>>,
    /// Collection → the only fields its records may have (none given: any).
    pub fields: BTreeMap<String, Vec<String>>,
    /// Collection → lookups (`GET`s) answered.
    pub lookups: BTreeMap<String, u64>,
    answers: HashMap<String, (u16, String)>,
    pub creates: u64,
    pub updates: u64,
    pub deletes: u64,
    requests: u64,
    /// Every n-th request fails (429, then 503, alternately); 0: never.
    pub fail_every: u64,
}

pub type Shared = Arc<Mutex<Crm>>;

/// The handler serving `crm`.
pub fn handler(crm: Shared) -> impl Fn(&Request) -> Reply + Send + Sync + 'static {
    move |r: &Request| {
        let mut c = crm.lock().unwrap_or_else(PoisonError::into_inner);
        c.requests += 1;
        if c.fail_every > 0 && c.requests.is_multiple_of(c.fail_every) {
            return match (c.requests / c.fail_every) % 2 {
                0 => Reply::json(429, r#"{"error":"slow down"}"#).with("Retry-After", "0"),
                _ => Reply::json(503, r#"{"error":"busy"}"#),
            };
        }
        let idem = r.header("idempotency-key").map(str::to_string);
        if let Some((status, body)) = idem.as_ref().and_then(|k| c.answers.get(k)) {
            return Reply::json(*status, body.clone());
        }
        let (status, body) = c.answer(r);
        if let Some(key) = idem {
            if status < 500 {
                c.answers.insert(key, (status, body.clone()));
            }
        }
        Reply::json(status, body)
    }
}

impl Crm {
    fn answer(&mut self, r: &Request) -> (u16, String) {
        let path = r.path().trim_start_matches('/').to_string();
        let (collection, id) = match path.split_once('/') {
            Some((c, id)) => match id.parse::<u64>() {
                Ok(id) => (c.to_string(), Some(id)),
                Err(_) => return (400, r#"{"error":"no such route"}"#.into()),
            },
            None => (path.clone(), None),
        };
        let body: Value = serde_json::from_str(&r.body).unwrap_or(Value::Null);
        if let (Some(allowed), Value::Object(map)) = (self.fields.get(&collection), &body) {
            if let Some(unknown) = map.keys().find(|k| !allowed.contains(k)) {
                return (
                    400,
                    format!(r#"{{"error":"property {unknown:?} does not exist"}}"#),
                );
            }
        }
        let records = self.collections.entry(collection.clone()).or_default();
        match (r.method.as_str(), id) {
            ("GET", None) => {
                *self.lookups.entry(collection).or_default() += 1;
                let wanted = r.param("external_id").unwrap_or_default();
                let found: Vec<Value> = records
                    .iter()
                    .filter(|(_, c)| c["external_id"].as_str() == Some(wanted.as_str()))
                    .map(|(id, c)| with_id(*id, c))
                    .collect();
                (200, Value::from(found).to_string())
            }
            ("POST", None) if body["qty"] == "bad" => {
                (422, r#"{"error":"qty must be a number"}"#.into())
            }
            ("POST", None) => {
                self.next += 1;
                self.creates += 1;
                records.insert(self.next, body.clone());
                (201, with_id(self.next, &body).to_string())
            }
            ("PATCH", Some(id)) => match records.get_mut(&id) {
                Some(c) => {
                    *c = body;
                    self.updates += 1;
                    (200, with_id(id, c).to_string())
                }
                None => (404, "{}".into()),
            },
            ("DELETE", Some(id)) => match records.remove(&id) {
                Some(_) => {
                    self.deletes += 1;
                    (204, String::new())
                }
                None => (404, "{}".into()),
            },
            _ => (400, r#"{"error":"no such route"}"#.into()),
        }
    }

    /// A collection's records by id.
    pub fn collection(&self, name: &str) -> BTreeMap<u64, Value> {
        self.collections.get(name).cloned().unwrap_or_default()
    }

    /// Contacts by external id: the record as sent, without `external_id`.
    pub fn by_external_id(&self) -> BTreeMap<String, Value> {
        self.collection("contacts")
            .into_values()
            .map(|mut c| {
                let key = c["external_id"].as_str().unwrap_or_default().to_string();
                if let Value::Object(map) = &mut c {
                    map.remove("external_id");
                }
                (key, c)
            })
            .collect()
    }
}

fn with_id(id: u64, contact: &Value) -> Value {
    let mut c = contact.clone();
    if let Value::Object(map) = &mut c {
        map.insert("id".into(), Value::from(id));
    }
    c
}

/// The `[destination]` lines for a CRM at `url`.
pub fn destination(url: &str) -> String {
    format!(
        "kind = \"http\"\nbase_url = \"{url}\"\nlookup = \"/contacts?external_id={{key}}\"\n\
         create = \"/contacts\"\nupdate = \"/contacts/{{id}}\"\ndelete = \"/contacts/{{id}}\""
    )
}
