//! The HTTP destination's body mapping, end to end: the sandbox's customers and orders
//! written by the real binary into a CRM-like API that refuses unknown fields, as accounts
//! and deals — each field mapped from a path, a template or a constant, nested, and each
//! deal linked to the CRM id of its customer's account.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::PoisonError;

use serde_json::{json, Value};

use crate::crm;
use crate::scripted::Server;
use crate::util::{run, text, waymark, Result, Sandbox, TempDir};

const WORKFLOW: &str = r#"[sync]
name = "shop"

[source]
kind = "http"
base_url = "${WAYMARK_SANDBOX_URL}"

[[stream]]
name = "customers"
path = "/customers"
records = "data"
primary_key = "id"
cursor_field = "updated_at"
page_size = 500
pagination = { kind = "cursor", cursor_path = "next_cursor", cursor_param = "cursor", limit_param = "limit" }
window = { lag = "2m", start_param = "updated_since", end_param = "updated_before" }
filter = { path = "country", one_of = ["FR", "PT"] }

[stream.destination]
lookup = "/accounts?external_id={key}"
create = "/accounts"
update = "/accounts/{id}"

[stream.destination.body]
name = { path = "name" }
email = { path = "email" }
phone = { path = "phone" }                  # no customer has one: left out
address.city = { path = "city" }
address.country = { path = "country" }

[[stream]]
name = "orders"
path = "/orders"
records = "data"
primary_key = "id"
cursor_field = "updated_at"
page_size = 100
pagination = { kind = "cursor", cursor_path = "next_cursor", cursor_param = "cursor", limit_param = "limit" }
window = { lag = "2m", start_param = "updated_since", end_param = "updated_before" }

[stream.destination]
lookup = "/deals?external_id={key}"
create = "/deals"
update = "/deals/{id}"
missing = "dead_letter"

[stream.destination.body]
title = { template = "Order {record.id} ({record.status})" }
amount = { path = "total_cents" }
currency = { value = "EUR" }
account_id = { link = "customers", by = "customer_id" }
city = { path = "shipping.city" }
coupon = { path = "coupon", missing = "null" }

[destination]
kind = "http"
base_url = "CRM_URL"
lookup = "/unused?external_id={key}"
create = "/unused"
update = "/unused/{id}"
"#;

fn fields(names: &[&str]) -> Vec<String> {
    names.iter().map(|n| n.to_string()).collect()
}

/// A collection's records by `external_id`, without it.
fn by_key(records: BTreeMap<u64, Value>) -> BTreeMap<String, (u64, Value)> {
    records
        .into_iter()
        .map(|(id, mut r)| {
            let key = r["external_id"].as_str().unwrap_or_default().to_string();
            if let Value::Object(map) = &mut r {
                map.remove("external_id");
            }
            (key, (id, r))
        })
        .collect()
}

#[test]
fn records_are_mapped_field_by_field_and_linked_to_their_related_destination_record() -> Result {
    let dir = TempDir::new("mapping");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let shared = crm::Shared::default();
    {
        let mut crm = shared.lock().unwrap_or_else(PoisonError::into_inner);
        crm.fields.insert(
            "accounts".into(),
            fields(&["name", "email", "address", "external_id"]),
        );
        crm.fields.insert(
            "deals".into(),
            fields(&[
                "title",
                "amount",
                "currency",
                "account_id",
                "city",
                "coupon",
                "external_id",
            ]),
        );
    }
    let server = runtime.block_on(Server::start(|| 0, crm::handler(shared.clone())))?;
    let sandbox = Sandbox::start(&["--records", "300", "--customers", "1000"])?;
    let file = dir.path().join("crm.toml");
    std::fs::write(&file, WORKFLOW.replace("CRM_URL", &server.url))?;
    let state = dir.path().join("state");
    let out = run(waymark(&state, &sandbox.url).arg("run").arg(&file))?;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));

    // Accounts: the French and Portuguese customers, each mapped, nested, without `phone`.
    let (customers, _) = sandbox.truth_of("customers")?;
    let kept: BTreeMap<&String, &Value> = customers
        .iter()
        .filter(|(_, c)| c["country"] == "FR" || c["country"] == "PT")
        .collect();
    let crm = shared.lock().unwrap_or_else(PoisonError::into_inner);
    let accounts = by_key(crm.collection("accounts"));
    let want: BTreeMap<String, Value> = kept
        .iter()
        .map(|(key, c)| {
            let account = json!({
                "name": c["name"], "email": c["email"],
                "address": { "city": c["city"], "country": c["country"] },
            });
            (key.to_string(), account)
        })
        .collect();
    let got: BTreeMap<String, Value> = accounts
        .iter()
        .map(|(k, (_, a))| (k.clone(), a.clone()))
        .collect();
    assert!(got == want, "the accounts differ from the mapped customers");

    // Deals: the orders of those customers, linked to their account's CRM id; the others
    // dead letters saying which account is missing.
    let orders = sandbox.truth()?;
    let deals = by_key(crm.collection("deals"));
    let mut unlinked = BTreeSet::new();
    let mut want = BTreeMap::new();
    for (key, o) in &orders {
        let customer = o["customer_id"].to_string();
        match accounts.get(&customer) {
            Some((account, _)) => {
                let deal = json!({
                    "title": format!("Order {key} ({})", o["status"].as_str().unwrap_or("")),
                    "amount": o["total_cents"], "currency": "EUR",
                    "account_id": account.to_string(), "city": o["shipping"]["city"],
                    "coupon": null,
                });
                want.insert(key.clone(), deal);
            }
            None => {
                unlinked.insert(customer);
            }
        }
    }
    let got: BTreeMap<String, Value> = deals
        .iter()
        .map(|(k, (_, d))| (k.clone(), d.clone()))
        .collect();
    assert!(!want.is_empty() && !unlinked.is_empty());
    assert!(
        got == want,
        "the deals differ from the mapped, linked orders"
    );
    // Each account was searched for once when it was created, and each one missing from
    // the id map once more for the orders, not once per order.
    assert_eq!(
        crm.lookups.get("accounts").copied().unwrap_or(0),
        (kept.len() + unlinked.len()) as u64
    );
    drop(crm);
    let shown = run(waymark(&state, "").args([
        "dlq", "show", "--stream", "orders", "--limit", "10000", "--json",
    ]))?;
    let letters: Vec<Value> = text(&shown.stdout)
        .lines()
        .map(serde_json::from_str)
        .collect::<std::result::Result<_, _>>()?;
    assert_eq!(letters.len(), orders.len() - want.len());
    for letter in &letters {
        let order = &orders[letter["key"].as_str().unwrap_or_default()];
        assert_eq!(
            letter["reason"],
            format!(
                "the destination has no `customers` record with key {} (for the destination \
                 field `account_id`)",
                order["customer_id"]
            )
        );
    }

    // Accounts made outside Waymark for two of the missing customers: retrying the dead
    // letters finds them by the lookup and links those orders.
    let made: Vec<String> = unlinked.iter().take(2).cloned().collect();
    let mut ids = BTreeMap::new();
    {
        let mut crm = shared.lock().unwrap_or_else(PoisonError::into_inner);
        for (i, key) in made.iter().enumerate() {
            let id = 900_000 + i as u64;
            crm.collections
                .entry("accounts".into())
                .or_default()
                .insert(id, json!({ "name": "made by hand", "external_id": key }));
            ids.insert(key.clone(), id);
        }
    }
    let retried = run(waymark(&state, &sandbox.url)
        .args(["dlq", "retry"])
        .arg(&file)
        .args(["--stream", "orders"]))?;
    // Exit 1: the other orders are dead letters still.
    assert_eq!(retried.status.code(), Some(1), "{}", text(&retried.stderr));
    let crm = shared.lock().unwrap_or_else(PoisonError::into_inner);
    let deals = by_key(crm.collection("deals"));
    let linked: Vec<&Value> = orders
        .iter()
        .filter(|(_, o)| made.contains(&o["customer_id"].to_string()))
        .map(|(key, o)| {
            let deal = &deals.get(key).ok_or("a retried order is not a deal")?.1;
            assert_eq!(
                deal["account_id"],
                ids[&o["customer_id"].to_string()].to_string()
            );
            Ok(deal)
        })
        .collect::<Result<_>>()?;
    assert!(!linked.is_empty());
    assert_eq!(deals.len(), want.len() + linked.len());
    let summary = format!(
        "inserted {}, updated 0, unchanged 0, stale 0, deleted 0, dead-lettered {}",
        linked.len(),
        letters.len() - linked.len()
    );
    assert!(
        text(&retried.stdout).contains(&summary),
        "{}",
        text(&retried.stdout)
    );
    drop(crm);
    drop(server);
    Ok(())
}
