//! A CRM-like API for the HTTP destination's tests: contacts with an `external_id`, found by
//! `GET /contacts?external_id=…`, created by `POST /contacts` (201 with the new `id`),
//! updated by `PATCH /contacts/{id}`, deleted by `DELETE /contacts/{id}`. It honours
//! `Idempotency-Key` (a repeated key gets the first answer), refuses a contact whose `qty`
//! is `"bad"` (422), counts creates and updates, and can answer every n-th request with a
//! 429 or 503.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, PoisonError};

use serde_json::Value;

use crate::scripted::{Reply, Request};

#[derive(Default)]
pub struct Crm {
    next: u64,
    pub contacts: BTreeMap<u64, Value>,
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
        let path = r.path().to_string();
        let id: Option<u64> = path
            .strip_prefix("/contacts/")
            .and_then(|id| id.parse().ok());
        let body: Value = serde_json::from_str(&r.body).unwrap_or(Value::Null);
        match (r.method.as_str(), id) {
            ("GET", None) => {
                let wanted = r.param("external_id").unwrap_or_default();
                let found: Vec<Value> = self
                    .contacts
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
                self.contacts.insert(self.next, body.clone());
                (201, with_id(self.next, &body).to_string())
            }
            ("PATCH", Some(id)) => match self.contacts.get_mut(&id) {
                Some(c) => {
                    *c = body;
                    self.updates += 1;
                    (200, with_id(id, c).to_string())
                }
                None => (404, "{}".into()),
            },
            ("DELETE", Some(id)) => match self.contacts.remove(&id) {
                Some(_) => {
                    self.deletes += 1;
                    (204, String::new())
                }
                None => (404, "{}".into()),
            },
            _ => (400, r#"{"error":"no such route"}"#.into()),
        }
    }

    /// Contacts by external id: the record as sent, without `external_id`.
    pub fn by_external_id(&self) -> BTreeMap<String, Value> {
        self.contacts
            .values()
            .map(|c| {
                let mut c = c.clone();
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
