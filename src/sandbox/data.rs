//! The sandbox's dataset: resources whose records are rendered on demand from
//! `(seed, id, revision, updated_at)`, kept sorted by `(updated_at, id)`, with a feed of
//! deletions.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::time::{Duration, UNIX_EPOCH};

/// A record's position: `(updated_at in ms since the epoch, id)`. Lists are sorted by it.
pub type Key = (u64, u64);

/// The top-level resources.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// `/orders`
    Orders,
    /// `/customers` (each with child `/customers/{id}/invoices`)
    Customers,
}

/// The sandbox's only source of randomness (so everything is reproducible from the seed).
pub use waymark_engine::decision::{splitmix64 as mix, unit};

/// RFC 3339 with milliseconds, always the same width, so timestamps sort as text.
pub fn format_ms(ms: u64) -> String {
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

/// One resource: live records, their order, and the deletions feed.
pub struct Resource {
    kind: Kind,
    seed: u64,
    /// Live records by position, with their revision (0 for the generated version).
    pub live: BTreeMap<Key, u32>,
    /// `(deleted_at, id)` of every deletion, in order.
    pub deleted: BTreeMap<Key, ()>,
    /// Live id → (updated_at, index in `ids`).
    by_id: HashMap<u64, (u64, usize)>,
    /// Live ids, for picking one at random.
    ids: Vec<u64>,
    /// Deleted ids not yet reused and when they were deleted, most recent last.
    freed: Vec<(u64, u64)>,
    next_id: u64,
    /// Orders are served in a changed shape: `priority` added, `total_cents` a string,
    /// `note` gone (schema drift, for tests).
    pub drifted: bool,
}

/// What a mutation did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mutation {
    /// A new record (or a reused id).
    Inserted(u64),
    /// A new revision with a new `updated_at`.
    Updated(u64),
    /// Removed, and added to the deletions feed.
    Deleted(u64),
    /// Nothing to do (e.g. nothing left to update).
    Nothing,
}

impl Resource {
    /// `count` records with ids `1..=count`; `tie` consecutive records share each
    /// `updated_at`, one second apart from `base_ms`.
    pub fn generate(kind: Kind, seed: u64, count: u64, tie: u64, base_ms: u64) -> Self {
        let tie = tie.max(1);
        let mut resource = Resource {
            kind,
            seed,
            live: BTreeMap::new(),
            deleted: BTreeMap::new(),
            by_id: HashMap::with_capacity(count as usize),
            ids: Vec::with_capacity(count as usize),
            freed: Vec::new(),
            next_id: count + 1,
            drifted: false,
        };
        for id in 1..=count {
            let ms = base_ms + (id - 1) / tie * 1000;
            resource.live.insert((ms, id), 0);
            resource.by_id.insert(id, (ms, resource.ids.len()));
            resource.ids.push(id);
        }
        resource
    }

    /// Number of live records.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// The position of a live record.
    pub fn key_of(&self, id: u64) -> Option<Key> {
        self.by_id.get(&id).map(|&(ms, _)| (ms, id))
    }

    /// Live ids in ascending order.
    pub fn sorted_ids(&self) -> Vec<u64> {
        let mut ids = self.ids.clone();
        ids.sort_unstable();
        ids
    }

    /// Deleted ids that are not live again, ascending.
    pub fn gone_ids(&self) -> Vec<u64> {
        let mut gone: Vec<u64> = self
            .deleted
            .keys()
            .map(|&(_, id)| id)
            .filter(|id| !self.by_id.contains_key(id))
            .collect();
        gone.sort_unstable();
        gone.dedup();
        gone
    }

    /// Appends the JSON of the live record at `key` with revision `rev`.
    pub fn render(&self, key: Key, rev: u32, out: &mut String) {
        let from = out.len();
        render(self.kind, self.seed, key, rev, out);
        if self.drifted && self.kind == Kind::Orders {
            drift(out, from);
        }
    }

    /// Inserts a record at `ms`; `reuse` takes the most recently deleted id among those
    /// deleted before `ms` (a re-insert never shares its deletion's timestamp).
    pub fn insert(&mut self, ms: u64, reuse: bool) -> Mutation {
        let reusable = self
            .freed
            .iter()
            .rposition(|&(_, deleted)| deleted < ms)
            .filter(|_| reuse);
        let id = match reusable.map(|i| self.freed.remove(i)) {
            Some((id, _)) => id,
            None => {
                let id = self.next_id;
                self.next_id += 1;
                id
            }
        };
        self.live.insert((ms, id), 0);
        self.by_id.insert(id, (ms, self.ids.len()));
        self.ids.push(id);
        Mutation::Inserted(id)
    }

    /// Gives the live record picked by `pick` a new revision at `ms`.
    pub fn update(&mut self, pick: u64, ms: u64) -> Mutation {
        let Some(&id) = self.ids.get((pick % self.ids.len().max(1) as u64) as usize) else {
            return Mutation::Nothing;
        };
        let Some(entry) = self.by_id.get_mut(&id) else {
            return Mutation::Nothing;
        };
        let old = (entry.0, id);
        let ms = ms.max(entry.0);
        entry.0 = ms;
        let rev = self.live.remove(&old).unwrap_or(0);
        self.live.insert((ms, id), rev + 1);
        Mutation::Updated(id)
    }

    /// Gives a live record a new revision *without* a new `updated_at` (an API that does
    /// not bump its timestamps): an incremental sync cannot see the change.
    pub fn touch(&mut self, id: u64) -> Mutation {
        match self.key_of(id).and_then(|key| self.live.get_mut(&key)) {
            Some(rev) => {
                *rev += 1;
                Mutation::Updated(id)
            }
            None => Mutation::Nothing,
        }
    }

    /// Gives the live record `id` a new revision at `ms`.
    pub fn update_id(&mut self, id: u64, ms: u64) -> Mutation {
        match self.by_id.get(&id) {
            Some(&(_, index)) => self.update(index as u64, ms),
            None => Mutation::Nothing,
        }
    }

    /// Deletes the live record `id` at `ms`.
    pub fn delete_id(&mut self, id: u64, ms: u64) -> Mutation {
        match self.by_id.get(&id) {
            Some(&(_, index)) => self.delete(index as u64, ms),
            None => Mutation::Nothing,
        }
    }

    /// Deletes the live record picked by `pick` at `ms`.
    pub fn delete(&mut self, pick: u64, ms: u64) -> Mutation {
        let index = (pick % self.ids.len().max(1) as u64) as usize;
        if index >= self.ids.len() {
            return Mutation::Nothing;
        }
        let id = self.ids.swap_remove(index);
        if let Some(&moved) = self.ids.get(index) {
            if let Some(entry) = self.by_id.get_mut(&moved) {
                entry.1 = index;
            }
        }
        if let Some((old_ms, _)) = self.by_id.remove(&id) {
            self.live.remove(&(old_ms, id));
        }
        self.deleted.insert((ms.max(1), id), ());
        self.freed.push((id, ms));
        Mutation::Deleted(id)
    }
}

const STATUSES: [&str; 5] = ["pending", "paid", "shipped", "delivered", "refunded"];
const SKUS: [&str; 6] = [
    "SKU-TEA-001",
    "SKU-MUG-204",
    "SKU-KETTLE-9",
    "SKU-SPOON-12",
    "SKU-TIN-33",
    "SKU-CUP-07",
];
const CITIES: [(&str, &str); 6] = [
    ("Lyon", "FR"),
    ("Porto", "PT"),
    ("Leipzig", "DE"),
    ("Gent", "BE"),
    ("Turin", "IT"),
    ("Cork", "IE"),
];
const NAMES: [&str; 8] = [
    "Ada", "Bruno", "Chiara", "Dmitri", "Elif", "Farah", "Goran", "Hana",
];

/// Appends the JSON of a record (~400 bytes for an order). `write!` to a `String` cannot
/// fail, so its results are ignored.
pub fn render(kind: Kind, seed: u64, (ms, id): Key, rev: u32, out: &mut String) {
    let r = mix(seed ^ id.wrapping_mul(0x2545_F491_4F6C_DD1D) ^ u64::from(rev) << 48);
    let updated = format_ms(ms);
    match kind {
        Kind::Orders => {
            let (city, country) = CITIES[(r % 6) as usize];
            let _ = write!(
                out,
                r#"{{"id":{id},"updated_at":"{updated}","rev":{rev},"status":"{}","customer_id":{},"currency":"EUR","total_cents":{},"items":["#,
                STATUSES[(r % 5) as usize],
                1 + r % 1000,
                r % 250_000,
            );
            for k in 0..(1 + r % 3) {
                let x = mix(r ^ k);
                if k > 0 {
                    out.push(',');
                }
                let _ = write!(
                    out,
                    r#"{{"sku":"{}","quantity":{},"unit_price_cents":{}}}"#,
                    SKUS[(x % 6) as usize],
                    1 + x % 4,
                    199 + x % 5000
                );
            }
            let _ = write!(
                out,
                r#"],"shipping":{{"city":"{city}","country":"{country}","method":"standard"}},"note":"order {id} revision {rev}"}}"#
            );
        }
        Kind::Customers => {
            let (city, country) = CITIES[(r % 6) as usize];
            let _ = write!(
                out,
                r#"{{"id":{id},"updated_at":"{updated}","rev":{rev},"name":"{} {id}","email":"customer{id}@example.com","city":"{city}","country":"{country}","invoices":{}}}"#,
                NAMES[(r % 8) as usize],
                invoice_count(id)
            );
        }
    }
}

/// Invoices a customer has (0–3, fixed by its id).
pub fn invoice_count(customer: u64) -> u64 {
    customer % 4
}

/// The invoices of a customer, keyed like records, with the customer's first `updated_at`.
pub fn invoices(customer: u64, base_ms: u64) -> BTreeMap<Key, u32> {
    (0..invoice_count(customer))
        .map(|k| ((base_ms + k * 1000, customer * 10 + k), 0))
        .collect()
}

/// Appends an invoice's JSON.
pub fn render_invoice(customer: u64, (ms, id): Key, out: &mut String) {
    let _ = write!(
        out,
        r#"{{"id":{id},"customer_id":{customer},"updated_at":"{}","amount_cents":{},"status":"{}"}}"#,
        format_ms(ms),
        mix(id) % 100_000,
        if id % 3 == 0 { "open" } else { "paid" }
    );
}

/// The order rendered at `out[from..]` in the drifted shape: `total_cents` as a string,
/// `note` (the last field) replaced by `priority`.
fn drift(out: &mut String, from: usize) {
    const TOTAL: &str = "\"total_cents\":";
    if let Some(at) = out[from..].find(TOTAL) {
        let start = from + at + TOTAL.len();
        if let Some(len) = out[start..].find(',') {
            let number = out[start..start + len].to_string();
            out.replace_range(start..start + len, &format!("\"{number}\""));
        }
    }
    if let Some(at) = out[from..].find(",\"note\":") {
        let end = out.len() - 1;
        out.replace_range(from + at..end, ",\"priority\":\"high\"");
    }
}

/// Appends a deletion's JSON.
pub fn render_deletion((ms, id): Key, out: &mut String) {
    let _ = write!(out, r#"{{"id":{id},"deleted_at":"{}"}}"#, format_ms(ms));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generates_tie_groups_and_mutates_consistently() {
        let mut r = Resource::generate(Kind::Orders, 7, 10, 4, 1_000_000);
        let keys: Vec<Key> = r.live.keys().copied().collect();
        assert_eq!(
            keys[..5],
            [
                (1_000_000, 1),
                (1_000_000, 2),
                (1_000_000, 3),
                (1_000_000, 4),
                (1_001_000, 5)
            ]
        );
        assert_eq!(r.update(2, 5_000_000), Mutation::Updated(3));
        assert_eq!(r.live.get(&(5_000_000, 3)), Some(&1));
        assert_eq!(r.key_of(3), Some((5_000_000, 3)));
        assert_eq!(r.delete(0, 6_000_000), Mutation::Deleted(1));
        assert_eq!(r.len(), 9);
        assert_eq!(r.key_of(1), None);
        assert_eq!(r.gone_ids(), vec![1]);
        // The swapped-in id keeps a correct index: deleting it by the same pick works.
        assert_eq!(r.delete(0, 6_000_001), Mutation::Deleted(10));
        assert_eq!(
            r.insert(6_000_001, true),
            Mutation::Inserted(1),
            "10 was deleted in this ms: not reused; 1 was deleted earlier"
        );
        assert_eq!(r.insert(6_000_001, true), Mutation::Inserted(11));
        assert_eq!(r.insert(7_000_000, true), Mutation::Inserted(10));
        assert_eq!(r.insert(7_000_000, false), Mutation::Inserted(12));
        assert_eq!(r.gone_ids(), Vec::<u64>::new());
        assert_eq!(r.sorted_ids(), (1..=12).collect::<Vec<u64>>());
        let mut text = String::new();
        r.render((7_000_000, 10), 0, &mut text);
        let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
        assert_eq!(v["id"], 10);
        assert_eq!(v["updated_at"], "1970-01-01T01:56:40.000Z");
    }
}
