//! A record rendered into the body an HTTP destination sends, by the stream's body mapping
//! (pure: the ids of linked records are looked up first, by the destination, from
//! [`links`]).

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use crate::config::{Body, BodySource, Missing};
use crate::record::{lookup, scalar};

/// The ids of related destination records, by (stream, source key); an absent entry is a
/// record the destination does not have.
pub type Linked = BTreeMap<(String, String), String>;

/// The (stream, source key) pairs `record` links to, in field order.
pub fn links(body: &Body, record: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for field in body.fields.values() {
        match &field.source {
            BodySource::Link { stream, by } => {
                if let Some(key) = lookup(record, by).and_then(scalar) {
                    out.push((stream.clone(), key));
                }
            }
            BodySource::Object(inner) => out.extend(links(inner, record)),
            _ => {}
        }
    }
    out
}

/// The body of `record` (whose source key is `key`), with `key` at `external_id_field`
/// unless a field of the mapping is written there; `Err` is why the record is a dead
/// letter instead (a field it lacks whose policy says so).
pub fn render(
    body: &Body,
    missing: Missing,
    record: &Value,
    key: &str,
    external_id_field: &str,
    linked: &Linked,
) -> Result<Value, String> {
    let mut out = object(body, missing, record, key, linked, "")?;
    if !body.sets(external_id_field) {
        insert(&mut out, external_id_field, Value::String(key.to_string()));
    }
    Ok(Value::Object(out))
}

fn object(
    body: &Body,
    missing: Missing,
    record: &Value,
    key: &str,
    linked: &Linked,
    at: &str,
) -> Result<Map<String, Value>, String> {
    let mut out = Map::new();
    for (name, field) in &body.fields {
        let here = match at {
            "" => name.clone(),
            _ => format!("{at}.{name}"),
        };
        let policy = field.missing.unwrap_or(missing);
        let value = match &field.source {
            BodySource::Object(inner) => Ok(Value::Object(object(
                inner, policy, record, key, linked, &here,
            )?)),
            BodySource::Value(constant) => Ok(constant.clone()),
            BodySource::Path(path) => match lookup(record, path) {
                None | Some(Value::Null) => Err(format!("the record has no `{path}`")),
                Some(value) => Ok(value.clone()),
            },
            BodySource::Template(template) => fill(template, record, key),
            BodySource::Link { stream, by } => match lookup(record, by).and_then(scalar) {
                None => Err(format!("the record has no `{by}`")),
                Some(related) => linked
                    .get(&(stream.clone(), related.clone()))
                    .map(|id| Value::String(id.clone()))
                    .ok_or_else(|| {
                        format!("the destination has no `{stream}` record with key {related}")
                    }),
            },
        };
        match (value, policy) {
            (Ok(value), _) => {
                out.insert(name.clone(), value);
            }
            (Err(_), Missing::Omit) => {}
            (Err(_), Missing::Null) => {
                out.insert(name.clone(), Value::Null);
            }
            (Err(why), Missing::DeadLetter) => {
                return Err(format!("{why} (for the destination field `{here}`)"))
            }
        }
    }
    Ok(out)
}

/// A template filled from the record: a placeholder whose value is absent or null makes
/// the whole field missing.
fn fill(template: &str, record: &Value, key: &str) -> Result<Value, String> {
    let placeholders = crate::config::template::placeholders(template)?;
    let mut out = String::with_capacity(template.len());
    let mut from = 0;
    for p in placeholders {
        out.push_str(&template[from..p.range.start]);
        let text = match p.name.strip_prefix("record.") {
            None => key.to_string(),
            Some(path) => match lookup(record, path) {
                None | Some(Value::Null) => return Err(format!("the record has no `{path}`")),
                Some(value) => scalar(value).unwrap_or_else(|| value.to_string()),
            },
        };
        out.push_str(&text);
        from = p.range.end;
    }
    out.push_str(&template[from..]);
    Ok(Value::String(out))
}

/// `value` at the dotted `path` of `map`, making the objects on the way (a non-object on
/// the way is replaced).
fn insert(map: &mut Map<String, Value>, path: &str, value: Value) {
    match path.split_once('.') {
        None => {
            map.insert(path.to_string(), value);
        }
        Some((head, rest)) => {
            let slot = map
                .entry(head.to_string())
                .or_insert_with(|| Value::Object(Map::new()));
            if !slot.is_object() {
                *slot = Value::Object(Map::new());
            }
            if let Value::Object(inner) = slot {
                insert(inner, rest, value);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn mapping(value: Value) -> Body {
        Body::parse(&value, "destination.body").unwrap()
    }

    #[test]
    fn renders_paths_templates_constants_links_and_nested_objects() {
        let body = mapping(json!({
            "amount": { "path": "total_cents" },
            "title": { "template": "Order {record.id} ({record.status}) of {key}" },
            "source": { "value": "shop" },
            "account_id": { "link": "customers", "by": "customer_id" },
            "properties": { "city": { "path": "shipping.city" }, "first_sku": { "path": "items.0.sku" } },
        }));
        let record = json!({
            "id": 7, "status": "paid", "total_cents": 1250, "customer_id": 3,
            "shipping": { "city": "Lyon" }, "items": [{ "sku": "TEA" }],
        });
        let linked = Linked::from([(("customers".into(), "3".into()), "acc-9".into())]);
        let out = render(
            &body,
            Missing::Omit,
            &record,
            "7",
            "properties.external_id",
            &linked,
        );
        assert_eq!(
            out.unwrap(),
            json!({
                "amount": 1250,
                "title": "Order 7 (paid) of 7",
                "source": "shop",
                "account_id": "acc-9",
                "properties": { "city": "Lyon", "first_sku": "TEA", "external_id": "7" },
            })
        );
        assert_eq!(
            links(&body, &record),
            vec![("customers".to_string(), "3".to_string())]
        );
    }

    #[test]
    fn a_missing_value_is_omitted_nulled_or_dead_letters_the_record() {
        let body = mapping(json!({
            "a": { "path": "absent" },
            "z": { "path": "nothing" },
            "b": { "path": "absent", "missing": "null" },
            "c": { "template": "x {record.absent}", "missing": "null" },
            "n": { "d": { "path": "there" }, "e": { "path": "absent" } },
        }));
        let record = json!({ "there": 1, "nothing": null });
        let out = render(
            &body,
            Missing::Omit,
            &record,
            "k",
            "external_id",
            &Linked::new(),
        );
        assert_eq!(
            out.unwrap(),
            json!({ "b": null, "c": null, "n": { "d": 1 }, "external_id": "k" })
        );
        // The destination's policy applies to every field without its own, nested too.
        let out = render(
            &body,
            Missing::DeadLetter,
            &record,
            "k",
            "external_id",
            &Linked::new(),
        );
        assert_eq!(
            out.unwrap_err(),
            "the record has no `absent` (for the destination field `a`)"
        );
        let linking = mapping(json!({
            "account": { "link": "customers", "by": "customer_id", "missing": "dead_letter" },
        }));
        let out = render(
            &linking,
            Missing::Omit,
            &json!({ "customer_id": 12 }),
            "k",
            "external_id",
            &Linked::new(),
        );
        assert_eq!(
            out.unwrap_err(),
            "the destination has no `customers` record with key 12 (for the destination field \
             `account`)"
        );
    }

    #[test]
    fn a_mapped_external_id_is_not_overwritten() {
        let body = mapping(json!({ "ref": { "template": "shop-{key}" } }));
        let out = render(&body, Missing::Omit, &json!({}), "7", "ref", &Linked::new());
        assert_eq!(out.unwrap(), json!({ "ref": "shop-7" }));
    }
}
