//! One conformance suite for every destination, run against the real SQLite and a real
//! PostgreSQL server (started by `tests/pg.rs`): idempotent re-writes, stale versions
//! skipped, a batch committed just before a crash recognised on replay, dead letters,
//! schema evolution with typed columns, and deletions (soft and hard).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::Value;
use waymark_connectors::state::dead_letters::DeadLetters;
use waymark_connectors::{sink, AnyDestination, Workflow};
use waymark_engine::destination::Destination;
use waymark_engine::{Batch, Checkpoint, RunId, Timestamp, Window, WriteAck};

use crate::crm;
use crate::scripted::Server;
use crate::util::{Result, TempDir};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Sqlite,
    Postgres,
    Jsonl,
    Http,
}

/// One destination under test, in a directory of its own.
struct Target {
    kind: Kind,
    dir: TempDir,
    /// PostgreSQL: the connection string (also in the environment variable `var`).
    url: Option<String>,
    var: String,
    /// HTTP: the CRM-like API on loopback.
    crm: Option<(Server, crm::Shared)>,
}

/// SQLite, JSONL files, an HTTP API, and PostgreSQL when it is installed (`tests/pg.rs`
/// says so loudly when not).
async fn targets(name: &str) -> Result<Vec<Target>> {
    let local = |kind: Kind| Target {
        kind,
        dir: TempDir::new(&format!("conf-{kind:?}-{name}")),
        url: None,
        var: String::new(),
        crm: None,
    };
    let shared = crm::Shared::default();
    let server = Server::start(|| 0, crm::handler(shared.clone())).await?;
    let mut all = vec![
        local(Kind::Sqlite),
        local(Kind::Jsonl),
        Target {
            crm: Some((server, shared)),
            ..local(Kind::Http)
        },
    ];
    if let Some(pg) = crate::pg::shared() {
        let url = pg.database()?;
        let var = format!("WAYMARK_CONFORMANCE_PG_{}", name.to_uppercase());
        std::env::set_var(&var, &url);
        all.push(Target {
            kind: Kind::Postgres,
            dir: TempDir::new(&format!("conf-pg-{name}")),
            url: Some(url),
            var,
            crm: None,
        });
    }
    Ok(all)
}

impl Target {
    /// The workflow: one stream `items` keyed by `id`, versioned by `v`, with `stream`
    /// lines added to it and `destination` lines to its destination.
    fn workflow(&self, stream: &str, destination: &str) -> Result<Workflow> {
        let target = match self.kind {
            Kind::Sqlite => "kind = \"sqlite\"\npath = \"out.db\"".to_string(),
            Kind::Postgres => format!("kind = \"postgres\"\nurl = {{ env = \"{}\" }}", self.var),
            Kind::Jsonl => "kind = \"jsonl\"\npath = \"out\"".to_string(),
            Kind::Http => crm::destination(&self.crm.as_ref().ok_or("no CRM")?.0.url),
        };
        let text = format!(
            r#"[sync]
name = "conf"

[source]
kind = "http"
base_url = "http://127.0.0.1:1"

[[stream]]
name = "items"
path = "/items"
records = "data"
primary_key = "id"
cursor_field = "v"
pagination = {{ kind = "cursor", cursor_path = "next", cursor_param = "cursor" }}
{stream}

[destination]
{target}
{destination}
"#
        );
        let file = self.dir.path().join("workflow.toml");
        std::fs::write(&file, text)?;
        Ok(Workflow::load(&file)?)
    }

    async fn open(&self, workflow: &Workflow) -> Result<AnyDestination> {
        let stream = &workflow.streams()[0];
        let binding = sink::binding(workflow, stream, "items");
        Ok(AnyDestination::open(
            workflow,
            binding,
            &self.state(),
            std::sync::Arc::new(waymark_engine::SystemClock),
        )
        .await?)
    }

    fn state(&self) -> std::path::PathBuf {
        self.dir.path().join("state")
    }

    /// Every row: key → (version, deleted, record).
    async fn rows(&self) -> Result<BTreeMap<String, (Option<String>, bool, Value)>> {
        let sql = "SELECT key, version, deleted_at IS NOT NULL, record FROM items";
        let mut out = BTreeMap::new();
        match self.kind {
            Kind::Sqlite => {
                let conn = rusqlite::Connection::open(self.dir.path().join("out.db"))?;
                let mut stmt = conn.prepare(sql)?;
                let rows = stmt.query_map([], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get(1)?,
                        r.get(2)?,
                        r.get::<_, String>(3)?,
                    ))
                })?;
                for row in rows {
                    let (key, version, deleted, record) = row?;
                    out.insert(key, (version, deleted, serde_json::from_str(&record)?));
                }
            }
            Kind::Http => {
                let crm = &self.crm.as_ref().ok_or("no CRM")?.1;
                let crm = crm
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                for (key, record) in crm.by_external_id() {
                    let version = record["v"].as_u64().map(|v| v.to_string());
                    out.insert(key, (version, false, record));
                }
            }
            Kind::Jsonl => {
                // Read the files directly: the newest line per key wins (page files are
                // named by time-ordered run id and page).
                let dir = self.dir.path().join("out").join("items");
                let mut files: Vec<_> = std::fs::read_dir(&dir)?
                    .filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| p.extension().is_some_and(|e| e == "jsonl"))
                    .collect();
                files.sort();
                files.sort_by_key(|p| !p.ends_with("compacted.jsonl"));
                for file in files {
                    let text = std::fs::read_to_string(&file)?;
                    let skip = usize::from(!file.ends_with("compacted.jsonl"));
                    for line in text.lines().skip(skip) {
                        let v: Value = serde_json::from_str(line)?;
                        let key = v["key"].as_str().ok_or("no key")?.to_string();
                        match v["record"].is_null() {
                            true => out.remove(&key),
                            false => out.insert(
                                key,
                                (
                                    v["version"].as_str().map(str::to_string),
                                    !v["deleted_at"].is_null(),
                                    v["record"].clone(),
                                ),
                            ),
                        };
                    }
                }
            }
            Kind::Postgres => {
                let client = self.client().await?;
                let sql = sql.replace("record", "record::text");
                for r in client.query(&sql, &[]).await? {
                    let record: String = r.get(3);
                    out.insert(
                        r.get(0),
                        (r.get(1), r.get(2), serde_json::from_str(&record)?),
                    );
                }
            }
        }
        Ok(out)
    }

    /// A column's values as JSON: key → value.
    async fn column(&self, name: &str) -> Result<BTreeMap<String, Value>> {
        let mut out = BTreeMap::new();
        match self.kind {
            Kind::Jsonl | Kind::Http => return Err("no typed columns here".into()),
            Kind::Sqlite => {
                let conn = rusqlite::Connection::open(self.dir.path().join("out.db"))?;
                let mut stmt = conn.prepare(&format!("SELECT key, \"{name}\" FROM items"))?;
                let rows = stmt.query_map([], |r| {
                    let v: rusqlite::types::Value = r.get(1)?;
                    Ok((r.get::<_, String>(0)?, v))
                })?;
                for row in rows {
                    let (key, v) = row?;
                    let v = match v {
                        rusqlite::types::Value::Null => Value::Null,
                        rusqlite::types::Value::Integer(i) => Value::from(i),
                        rusqlite::types::Value::Real(r) => Value::from(r),
                        rusqlite::types::Value::Text(t) => Value::from(t),
                        rusqlite::types::Value::Blob(_) => Value::from("blob"),
                    };
                    out.insert(key, v);
                }
            }
            Kind::Postgres => {
                let client = self.client().await?;
                let sql = format!("SELECT key, to_jsonb(\"{name}\")::text FROM items");
                for r in client.query(&sql, &[]).await? {
                    let v: Option<String> = r.get(1);
                    let v = v.map_or(Ok(Value::Null), |t| serde_json::from_str(&t))?;
                    out.insert(r.get(0), v);
                }
            }
        }
        Ok(out)
    }

    /// Runs SQL in a SQL destination's database.
    async fn execute(&self, sql: &str) -> Result {
        match self.kind {
            Kind::Sqlite => {
                let conn = rusqlite::Connection::open(self.dir.path().join("out.db"))?;
                conn.execute_batch(sql)?;
            }
            Kind::Postgres => self.client().await?.batch_execute(sql).await?,
            Kind::Jsonl | Kind::Http => return Err("not a SQL destination".into()),
        }
        Ok(())
    }

    async fn client(&self) -> Result<tokio_postgres::Client> {
        let url = self.url.as_deref().ok_or("not PostgreSQL")?;
        let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
        tokio::spawn(connection);
        Ok(client)
    }
}

/// Writes `records` as page `page` of `run`; the checkpoint says so.
async fn write(
    d: &mut AnyDestination,
    run: RunId,
    page: u64,
    records: &[&str],
) -> Result<WriteAck> {
    let records: Vec<String> = records.iter().map(|r| r.to_string()).collect();
    let checkpoint = checkpoint(run, page);
    let records = d.preparer()(records, None);
    let batch = Batch {
        run_id: run,
        page,
        records: &records,
        checkpoint: &checkpoint,
    };
    Ok(d.write(batch).await?)
}

/// Writes `pages` of `run` in one call, as the driver writes a group.
async fn write_group(
    d: &mut AnyDestination,
    run: RunId,
    pages: &[(u64, Vec<String>)],
) -> Result<Vec<WriteAck>> {
    let prepared: Vec<_> = pages
        .iter()
        .map(|(p, r)| (*p, d.preparer()(r.clone(), None), checkpoint(run, *p)))
        .collect();
    let batches: Vec<_> = prepared
        .iter()
        .map(|(page, records, checkpoint)| Batch {
            run_id: run,
            page: *page,
            records,
            checkpoint,
        })
        .collect();
    let acks: std::result::Result<Vec<_>, _> = d.write_pages(&batches).await.into_iter().collect();
    Ok(acks?)
}

/// The checkpoint after page `page` of `run`.
fn checkpoint(run: RunId, page: u64) -> Checkpoint {
    Checkpoint {
        run_id: run,
        window: Window {
            start: None,
            end: Timestamp(1_000),
        },
        cursor: Some(format!("after-{page}")),
        page,
        records: 0,
        complete: false,
        at: Timestamp(1_000),
        max_seen: Some(Timestamp(900 + page)),
    }
}

fn counts(a: &WriteAck) -> [u64; 6] {
    [
        a.inserted,
        a.updated,
        a.unchanged,
        a.skipped_stale,
        a.deleted,
        a.dead_lettered,
    ]
}

fn row(v: &str, deleted: bool, record: &str) -> Result<(Option<String>, bool, Value)> {
    Ok((Some(v.to_string()), deleted, serde_json::from_str(record)?))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rewrites_are_idempotent_and_older_versions_never_win() -> Result {
    for t in targets("idempotent").await? {
        let wf = t.workflow("", "")?;
        let mut d = t.open(&wf).await?;
        let first = [
            r#"{"id":1,"v":2,"n":"a"}"#,
            r#"{"id":2,"v":2,"n":"b"}"#,
            r#"{"id":3,"v":10,"n":"c"}"#,
        ];
        let a = write(&mut d, RunId::new(), 1, &first).await?;
        assert_eq!(counts(&a), [3, 0, 0, 0, 0, 0], "{:?}", t.kind);
        // The same records again (an overlap window, a retried run): nothing changes.
        let run = RunId::new();
        let again = write(&mut d, run, 1, &first).await?;
        assert_eq!(counts(&again), [0, 0, 3, 0, 0, 0], "{:?}", t.kind);
        // Older versions are skipped (9 < 10 compares as numbers, not text); newer win.
        let mixed = [
            r#"{"id":1,"v":1,"n":"old"}"#,
            r#"{"id":2,"v":3,"n":"new"}"#,
            r#"{"id":3,"v":9,"n":"old"}"#,
            r#"{"id":4,"v":1,"n":"d"}"#,
        ];
        let m = write(&mut d, run, 2, &mixed).await?;
        assert_eq!(counts(&m), [1, 1, 0, 2, 0, 0], "{:?}", t.kind);
        let expected = BTreeMap::from([
            ("1".to_string(), row("2", false, first[0])?),
            ("2".to_string(), row("3", false, mixed[1])?),
            ("3".to_string(), row("10", false, first[2])?),
            ("4".to_string(), row("1", false, mixed[3])?),
        ]);
        assert_eq!(t.rows().await?, expected, "{:?}", t.kind);
    }
    Ok(())
}

/// A key repeated within a batch: each of its records is compared with what the key holds
/// (stored, or as the batch's earlier records left it), also after an earlier one of them
/// was skipped — older copies and older deletions never win.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_repeated_in_a_batch_never_lets_an_older_version_win() -> Result {
    for t in targets("repeated").await? {
        let wf = t.workflow(
            "deleted_when = { path = \"gone\", one_of = [\"true\"] }",
            "",
        )?;
        let mut d = t.open(&wf).await?;
        let run = RunId::new();
        let first = [r#"{"id":1,"v":5,"n":"a"}"#, r#"{"id":2,"v":5,"n":"b"}"#];
        write(&mut d, run, 1, &first).await?;
        // Two older copies of 1, two older deletions of 2 (a deletions feed lists each
        // deletion of a reused id).
        let older = [
            r#"{"id":1,"v":3,"n":"old"}"#,
            r#"{"id":1,"v":4,"n":"old"}"#,
            r#"{"id":2,"v":3,"gone":true}"#,
            r#"{"id":2,"v":4,"gone":true}"#,
        ];
        let ack = write(&mut d, run, 2, &older).await?;
        assert_eq!(counts(&ack), [0, 0, 0, 4, 0, 0], "{:?}", t.kind);
        let expected = BTreeMap::from([
            ("1".to_string(), row("5", false, first[0])?),
            ("2".to_string(), row("5", false, first[1])?),
        ]);
        assert_eq!(t.rows().await?, expected, "{:?}", t.kind);
    }
    Ok(())
}

/// A key is the exact text of the primary key (docs/workflow-reference.md, `primary_key`):
/// integers beyond 2^64 that differ in their last digit are two records (through an `f64`
/// both were `1.2345678901234568e22`, and one overwrote the other), so are `1e2` and `100`,
/// and `-0` and `0`; `7` and `"7"` are one. A version compares by its exact value, also
/// beyond 2^64 and 2^128.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_are_the_exact_text_and_versions_compare_exactly() -> Result {
    const BIG: &str = "123456789012345678901234567890123456789012345";
    const BIG_OLDER: &str = "123456789012345678901234567890123456789012344";
    for t in targets("exact").await? {
        let wf = t.workflow("", "")?;
        let mut d = t.open(&wf).await?;
        let run = RunId::new();
        let first = [
            r#"{"id":12345678901234567890123,"v":1,"n":"a"}"#,
            r#"{"id":12345678901234567890124,"v":1,"n":"b"}"#,
            r#"{"id":1e2,"v":1,"n":"c"}"#,
            r#"{"id":100,"v":1,"n":"d"}"#,
            r#"{"id":-0,"v":1,"n":"e"}"#,
            r#"{"id":0,"v":1,"n":"f"}"#,
            r#"{"id":7,"v":1,"n":"number"}"#,
        ];
        let a = write(&mut d, run, 1, &first).await?;
        assert_eq!(counts(&a), [7, 0, 0, 0, 0, 0], "{:?}", t.kind);
        let big = format!(r#"{{"id":"big","v":{BIG},"n":"newer"}}"#);
        let second = [r#"{"id":"7","v":2,"n":"string"}"#, big.as_str()];
        let b = write(&mut d, run, 2, &second).await?;
        assert_eq!(counts(&b), [1, 1, 0, 0, 0, 0], "{:?}: \"7\" is 7", t.kind);
        // Older by one in the 45th digit: skipped (through an f64 they were equal).
        let older = format!(r#"{{"id":"big","v":{BIG_OLDER},"n":"older"}}"#);
        let c = write(&mut d, run, 3, &[older.as_str()]).await?;
        assert_eq!(counts(&c), [0, 0, 0, 1, 0, 0], "{:?}", t.kind);
        let rows = t.rows().await?;
        let names: BTreeMap<&str, &str> = rows
            .iter()
            .map(|(k, (_, _, record))| (k.as_str(), record["n"].as_str().unwrap_or("?")))
            .collect();
        let expected = BTreeMap::from([
            ("-0", "e"),
            ("0", "f"),
            ("100", "d"),
            ("12345678901234567890123", "a"),
            ("12345678901234567890124", "b"),
            ("1e2", "c"),
            ("7", "string"),
            ("big", "newer"),
        ]);
        assert_eq!(names, expected, "{:?}", t.kind);
        if t.kind != Kind::Http {
            assert_eq!(rows["big"].0.as_deref(), Some(BIG), "{:?}", t.kind);
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_committed_before_a_crash_is_recognised_not_written_again() -> Result {
    for t in targets("replay").await? {
        let wf = t.workflow("", "")?;
        let run = RunId::new();
        let records = [r#"{"id":1,"v":1}"#, r#"{"id":2,"v":1}"#];
        let ack = {
            let mut d = t.open(&wf).await?;
            write(&mut d, run, 1, &records).await?
        };
        // The process died before journaling the ack; a new one writes the page again.
        let mut d = t.open(&wf).await?;
        let replayed = write(&mut d, run, 1, &records).await?;
        assert!(replayed.replayed, "{:?}", t.kind);
        assert_eq!(counts(&replayed), counts(&ack), "{:?}", t.kind);
        assert_eq!(t.rows().await?.len(), 2);
        let checkpoint = d.checkpoint().await?.ok_or("no checkpoint")?;
        assert_eq!(
            (
                checkpoint.run_id,
                checkpoint.page,
                checkpoint.cursor.as_deref(),
                checkpoint.max_seen,
            ),
            (run, 1, Some("after-1"), Some(Timestamp(901))),
            "{:?}",
            t.kind
        );
        // The next page goes through normally.
        let next = write(&mut d, run, 2, &[r#"{"id":3,"v":1}"#]).await?;
        assert_eq!(counts(&next), [1, 0, 0, 0, 0, 0]);
    }
    Ok(())
}

/// The driver writes a group of pages before journaling any (up to `REPLAYABLE`): after a
/// crash each is replayed, and each must count what its own write counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_committed_before_a_crash_is_recognised_page_by_page() -> Result {
    use waymark_engine::group::REPLAYABLE;
    // Page p: (p % 3) + 1 new records, and on even pages a newer version of one of page
    // p - 1's: each page's counts differ from its neighbours'.
    let pages: Vec<(u64, Vec<String>)> = (1..=REPLAYABLE + 1)
        .map(|p| {
            let mut records: Vec<String> = (0..p % 3 + 1)
                .map(|i| format!(r#"{{"id":{},"v":1}}"#, p * 10 + i))
                .collect();
            if p % 2 == 0 {
                records.push(format!(r#"{{"id":{},"v":2}}"#, (p - 1) * 10));
            }
            (p, records)
        })
        .collect();
    for t in targets("replay-group").await? {
        let wf = t.workflow("", "")?;
        let run = RunId::new();
        let first = {
            let mut d = t.open(&wf).await?;
            write_group(&mut d, run, &pages).await?
        };
        assert_eq!(first.len(), pages.len(), "{:?}", t.kind);
        assert!(first.iter().all(|a| !a.replayed), "{:?}", t.kind);
        // The process died before journaling any of them; a new one writes them again.
        let mut d = t.open(&wf).await?;
        let again = write_group(&mut d, run, &pages).await?;
        assert!(again.iter().all(|a| a.replayed), "{:?}", t.kind);
        // The first page is one more than the destination keeps: it counts nothing.
        assert_eq!(counts(&again[0]), [0; 6], "{:?}", t.kind);
        for (page, (a, b)) in first.iter().zip(&again).enumerate().skip(1) {
            assert_eq!(counts(a), counts(b), "{:?}, page {}", t.kind, page + 1);
        }
        let rows: usize = pages.iter().map(|(p, _)| (p % 3 + 1) as usize).sum();
        assert_eq!(t.rows().await?.len(), rows, "{:?}", t.kind);
        let last = d.checkpoint().await?.ok_or("no checkpoint")?;
        assert_eq!(last.page, REPLAYABLE + 1, "{:?}", t.kind);
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_records_go_to_the_dead_letter_store_and_the_rest_is_written() -> Result {
    for t in targets("dead").await? {
        let wf = t.workflow("columns = { qty = \"integer\" }", "")?;
        let mut d = t.open(&wf).await?;
        let run = RunId::new();
        let records = [
            r#"{"id":1,"v":1,"qty":2}"#,
            r#"{"v":1,"qty":2}"#,
            r#"{"id":3,"v":1,"qty":"three"}"#,
            r#"{"id":4,"qty":1}"#,
            r#"{"id":5,"v":1}"#,
        ];
        let ack = write(&mut d, run, 1, &records).await?;
        assert_eq!(counts(&ack), [2, 0, 0, 0, 0, 3], "{:?}", t.kind);
        assert_eq!(
            t.rows().await?.keys().cloned().collect::<Vec<_>>(),
            ["1", "5"],
            "{:?}",
            t.kind
        );
        let store = DeadLetters::new(&t.state(), "conf", "items");
        let letters = store.list()?;
        let seen: Vec<(Option<&str>, &str, u64)> = letters
            .iter()
            .map(|l| (l.key.as_deref(), l.reason.as_str(), l.page))
            .collect();
        assert_eq!(
            seen,
            [
                (None, "primary key `id` is missing or not a scalar", 1),
                (
                    Some("3"),
                    "column `qty` (`qty`): \"three\" is not an integer",
                    1
                ),
                (Some("4"), "version field `v` is missing or not a scalar", 1),
            ],
            "{:?}",
            t.kind
        );
        assert_eq!(letters[2].record, records[3]);
        assert_eq!(letters[0].run_id, run.to_string());
        // Replaying the page (after a crash) does not duplicate them.
        let mut d = t.open(&wf).await?;
        write(&mut d, run, 1, &records).await?;
        assert_eq!(store.list()?.len(), 3, "{:?}", t.kind);
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_fields_and_new_columns_never_break_the_sync() -> Result {
    for t in targets("schema").await? {
        let before = t.workflow("columns = { status = \"text\" }", "")?;
        let mut d = t.open(&before).await?;
        write(
            &mut d,
            RunId::new(),
            1,
            &[r#"{"id":1,"v":1,"status":"open"}"#],
        )
        .await?;
        // A new declared column (typed, from a nested path) and a field nobody declared.
        let after = t.workflow(
            "columns = { status = \"text\", total = { path = \"amount.total\", type = \"real\" }, \
             paid = \"boolean\", at = \"timestamp\" }",
            "",
        )?;
        let mut d = t.open(&after).await?;
        let newer = r#"{"id":2,"v":1,"status":"paid","amount":{"total":"12.5"},"paid":true,"at":"2026-01-02T03:04:05Z","surprise":[1,2]}"#;
        let ack = write(&mut d, RunId::new(), 1, &[newer]).await?;
        assert_eq!(counts(&ack), [1, 0, 0, 0, 0, 0], "{:?}", t.kind);
        let rows = t.rows().await?;
        assert_eq!(
            rows["2"].2,
            serde_json::from_str::<Value>(newer)?,
            "raw record kept whole"
        );
        if matches!(t.kind, Kind::Jsonl | Kind::Http) {
            continue;
        }
        assert_eq!(
            t.column("total").await?,
            BTreeMap::from([("1".into(), Value::Null), ("2".into(), Value::from(12.5))]),
            "{:?}",
            t.kind
        );
        assert_eq!(t.column("status").await?["2"], Value::from("paid"));
        let paid = t.column("paid").await?["2"].clone();
        assert!(paid == true || paid == 1, "{paid:?}");
        let at = t.column("at").await?["2"].clone();
        assert!(
            at.as_str()
                .is_some_and(|s| s.starts_with("2026-01-02T03:04:05")),
            "{:?}: {at:?}",
            t.kind
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deletions_respect_versions_soft_and_hard() -> Result {
    for hard in [false, true] {
        for t in targets(if hard { "hard" } else { "soft" }).await? {
            // An API has no soft delete: a deletion removes the record there.
            let hard = hard || t.kind == Kind::Http;
            let mode = if hard { "delete_mode = \"hard\"" } else { "" };
            let wf = t.workflow(
                "deleted_when = { path = \"gone\", one_of = [\"true\"] }",
                mode,
            )?;
            let mut d = t.open(&wf).await?;
            let run = RunId::new();
            write(&mut d, run, 1, &[r#"{"id":1,"v":5}"#, r#"{"id":2,"v":5}"#]).await?;
            // An older deletion loses to the stored record; a newer one wins.
            let del = write(
                &mut d,
                run,
                2,
                &[
                    r#"{"id":1,"v":4,"gone":true}"#,
                    r#"{"id":2,"v":6,"gone":true}"#,
                ],
            )
            .await?;
            assert_eq!(counts(&del), [0, 0, 0, 1, 1, 0], "{:?} hard={hard}", t.kind);
            // A copy older than the deletion does not bring the record back.
            let old = write(&mut d, run, 3, &[r#"{"id":2,"v":5}"#]).await?;
            assert_eq!(counts(&old), [0, 0, 0, 1, 0, 0], "{:?} hard={hard}", t.kind);
            let rows = t.rows().await?;
            match hard {
                true => assert!(!rows.contains_key("2"), "{:?}", t.kind),
                false => assert_eq!(rows["2"].0.as_deref(), Some("6")),
            }
            // A newer copy does (an id reused, or undeleted).
            let back = write(&mut d, run, 4, &[r#"{"id":2,"v":7}"#]).await?;
            let expect = if hard {
                [1, 0, 0, 0, 0, 0]
            } else {
                [0, 1, 0, 0, 0, 0]
            };
            assert_eq!(counts(&back), expect, "{:?} hard={hard}", t.kind);
            assert_eq!(t.rows().await?["2"], row("7", false, r#"{"id":2,"v":7}"#)?);
        }
    }
    Ok(())
}

/// The sandbox workflow of `util::workflow` with another `[destination]`; `edit` changes
/// the rest.
fn sandbox_workflow(dir: &Path, destination: &str, edit: &[(&str, &str)]) -> Result<PathBuf> {
    let file = crate::util::workflow(dir, 100, 12)?;
    let mut text = std::fs::read_to_string(&file)?
        .replace("kind = \"sqlite\"\npath = \"shop.db\"", destination);
    for (from, to) in edit {
        text = text.replace(from, to);
    }
    std::fs::write(&file, text)?;
    Ok(file)
}

/// Starts `waymark run` and kills it once `done` holds (or after 30 s); whether it held.
fn run_and_kill(
    state: &Path,
    url: &str,
    file: &Path,
    mut done: impl FnMut() -> bool,
) -> Result<bool> {
    let mut child = crate::util::waymark(state, url)
        .arg("run")
        .arg(file)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    let held = crate::util::wait_for(&mut done, std::time::Duration::from_secs(30));
    let _ = child.kill();
    child.wait()?;
    Ok(held)
}

/// The real binary syncs the sandbox into PostgreSQL — through faults and a kill — and the
/// table equals the source.
#[test]
fn the_binary_syncs_into_postgres_exactly_through_faults_and_a_kill() -> Result {
    use crate::util::{run, text, waymark, Sandbox};
    let Some(pg) = crate::pg::shared() else {
        return Ok(());
    };
    let url = pg.database()?;
    let dir = TempDir::new("pg-e2e");
    let sandbox = Sandbox::start(&[
        "--records",
        "3000",
        "--rate-429",
        "0.1",
        "--rate-500",
        "0.05",
    ])?;
    let file = sandbox_workflow(
        dir.path(),
        "kind = \"postgres\"\nurl = { env = \"WAYMARK_E2E_PG\" }\nschema = \"shop\"",
        &[],
    )?;
    let state = dir.path().join("state");
    let command = || {
        let mut cmd = waymark(&state, &sandbox.url);
        cmd.env("WAYMARK_E2E_PG", &url).arg("run").arg(&file);
        cmd
    };
    // Killed mid-run, then run again to the end.
    std::env::set_var("WAYMARK_E2E_PG", &url);
    let began = std::time::Instant::now();
    run_and_kill(&state, &sandbox.url, &file, || {
        began.elapsed() > std::time::Duration::from_millis(700)
    })?;
    let out = run(&mut command())?;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let truth = sandbox.truth()?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let rows: BTreeMap<String, Value> = rt.block_on(async {
        let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await?;
        tokio::spawn(connection);
        let mut rows = BTreeMap::new();
        for r in client
            .query(
                "SELECT key, record::text FROM shop.orders WHERE deleted_at IS NULL",
                &[],
            )
            .await?
        {
            let record: String = r.get(1);
            rows.insert(r.get::<_, String>(0), serde_json::from_str(&record)?);
        }
        Ok::<_, Box<dyn std::error::Error>>(rows)
    })?;
    assert_eq!(rows.len(), 3000);
    assert!(rows == truth, "PostgreSQL differs from the source");
    // A connection string is never shown: the URL is not in any output.
    assert!(!text(&out.stdout).contains("host=127.0.0.1"));
    Ok(())
}

/// Child streams on PostgreSQL: the binary syncs customers, then each customer's invoices
/// (a child stream reading its parents from the customers table in PostgreSQL), paused
/// mid-parent and resumed; both tables equal the source, each invoice written once.
#[test]
fn the_binary_syncs_a_child_stream_into_postgres_once_per_parent_and_resumes() -> Result {
    use crate::util::{run, runs, text, waymark, Sandbox};
    let Some(pg) = crate::pg::shared() else {
        return Ok(());
    };
    let url = pg.database()?;
    let sandbox = Sandbox::start(&["--records", "10", "--customers", "300"])?;
    let invoices = crate::children::invoices(&sandbox)?;
    assert_eq!(invoices.len(), 450, "0–3 invoices per customer");
    let dir = TempDir::new("pg-children");
    // Pages of 2 invoices: customers with 3 have two pages.
    let file = crate::children::customers_and_invoices(dir.path(), 2)?;
    let workflow = std::fs::read_to_string(&file)?.replace(
        "kind = \"sqlite\"\npath = \"shop.db\"",
        "kind = \"postgres\"\nurl = { env = \"WAYMARK_CHILDREN_PG\" }\nschema = \"shop\"",
    );
    assert!(workflow.contains("kind = \"postgres\""), "{workflow}");
    std::fs::write(&file, workflow)?;
    let state = dir.path().join("state");
    let command = |extra: &[&str]| {
        let mut cmd = waymark(&state, &sandbox.url);
        cmd.env("WAYMARK_CHILDREN_PG", &url)
            .arg("run")
            .args(extra)
            .arg(&file);
        cmd
    };

    // Paused mid-invoices (3 pages of customers, then pages of invoices), then finished.
    let out = run(&mut command(&["--max-pages", "120"]))?;
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stdout));
    let out = run(&mut command(&[]))?;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stdout));

    let (customers, deleted) = crate::pg::table(&url, "shop.customers")?;
    assert_eq!(deleted, 0);
    assert!(
        customers == sandbox.truth_of("customers")?.0,
        "customers differ from the source"
    );
    let (got, deleted) = crate::pg::table(&url, "shop.invoices")?;
    assert_eq!(deleted, 0);
    let missing: Vec<&String> = invoices.keys().filter(|k| !got.contains_key(*k)).collect();
    let extra: Vec<&String> = got.keys().filter(|k| !invoices.contains_key(*k)).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "invoices missing: {missing:?}, not at the source: {extra:?}"
    );
    assert!(got == invoices, "invoices differ from the source");

    let all = runs(&state)?;
    let child = all
        .iter()
        .find(|r| r["stream"] == "invoices")
        .ok_or("no invoices run")?;
    assert_eq!(child["records"], 450, "each invoice written once: {child}");
    assert_eq!(child["resumes"], 1, "{child}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jsonl_compaction_keeps_the_newest_line_per_key_and_the_checkpoint() -> Result {
    let t = Target {
        kind: Kind::Jsonl,
        dir: TempDir::new("conf-jsonl-compact"),
        url: None,
        var: String::new(),
        crm: None,
    };
    let wf = t.workflow(
        "deleted_when = { path = \"gone\", one_of = [\"true\"] }",
        "delete_mode = \"hard\"",
    )?;
    let mut d = t.open(&wf).await?;
    let run = RunId::new();
    write(&mut d, run, 1, &[r#"{"id":1,"v":1}"#, r#"{"id":2,"v":1}"#]).await?;
    write(&mut d, run, 2, &[r#"{"id":1,"v":2}"#, r#"{"id":3,"v":1}"#]).await?;
    write(&mut d, run, 3, &[r#"{"id":3,"v":2,"gone":true}"#]).await?;
    let before = t.rows().await?;
    let table = t.dir.path().join("out").join("items");
    let done = waymark_connectors::sink::jsonl::compact(&table)?;
    assert_eq!((done.files, done.lines, done.keys), (3, 5, 3));
    let names: Vec<String> = std::fs::read_dir(&table)?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".jsonl"))
        .collect();
    assert_eq!(names, ["compacted.jsonl"]);
    assert_eq!(t.rows().await?, before);
    assert_eq!(before.keys().cloned().collect::<Vec<_>>(), ["1", "2"]);
    // Reopened: the checkpoint, the versions and the hard deletion are still known.
    let mut d = t.open(&wf).await?;
    let checkpoint = d
        .checkpoint()
        .await?
        .ok_or("checkpoint lost by compaction")?;
    assert_eq!((checkpoint.run_id, checkpoint.page), (run, 3));
    let stale = write(
        &mut d,
        RunId::new(),
        1,
        &[r#"{"id":1,"v":1}"#, r#"{"id":3,"v":1}"#],
    )
    .await?;
    assert_eq!(counts(&stale), [0, 0, 0, 2, 0, 0]);
    // Compacting again changes nothing.
    let again = waymark_connectors::sink::jsonl::compact(&table)?;
    assert_eq!(again.keys, 3);
    assert_eq!(t.rows().await?, before);
    Ok(())
}

/// The real binary syncs the sandbox into JSONL files, killed once; `waymark compact`
/// leaves one file whose live lines equal the source.
#[test]
fn the_binary_syncs_into_jsonl_and_compacts_exactly() -> Result {
    use crate::util::{run, text, waymark, Sandbox};
    let dir = TempDir::new("jsonl-e2e");
    let sandbox = Sandbox::start(&["--records", "3000", "--rate-429", "0.1"])?;
    let file = sandbox_workflow(dir.path(), "kind = \"jsonl\"\npath = \"out\"", &[])?;
    let state = dir.path().join("state");
    let began = std::time::Instant::now();
    run_and_kill(&state, &sandbox.url, &file, || {
        began.elapsed() > std::time::Duration::from_millis(500)
    })?;
    let out = run(waymark(&state, &sandbox.url).arg("run").arg(&file))?;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let compacted = run(waymark(&state, "").arg("compact").arg(&file))?;
    assert_eq!(
        compacted.status.code(),
        Some(0),
        "{}",
        text(&compacted.stderr)
    );
    assert!(
        text(&compacted.stdout).contains("3000 keys"),
        "{}",
        text(&compacted.stdout)
    );
    let lines = std::fs::read_to_string(dir.path().join("out/orders/compacted.jsonl"))?;
    let mut rows = BTreeMap::new();
    for line in lines.lines() {
        let v: Value = serde_json::from_str(line)?;
        rows.insert(
            v["key"].as_str().ok_or("key")?.to_string(),
            v["record"].clone(),
        );
    }
    assert!(rows == sandbox.truth()?, "JSONL differs from the source");
    // A sqlite workflow is refused by compact, clearly.
    let other = dir.path().join("other.toml");
    std::fs::write(
        &other,
        std::fs::read_to_string(&file)?.replace(
            "kind = \"jsonl\"\npath = \"out\"",
            "kind = \"sqlite\"\npath = \"out.db\"",
        ),
    )?;
    let refused = run(waymark(&state, "").arg("compact").arg(&other))?;
    assert_eq!(refused.status.code(), Some(2));
    assert!(text(&refused.stderr).contains("compact works on jsonl destinations only"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_that_refuses_a_record_dead_letters_it_and_retries_throttles() -> Result {
    let t = targets("refuse")
        .await?
        .into_iter()
        .find(|t| t.kind == Kind::Http)
        .ok_or("no HTTP target")?;
    let shared = t.crm.as_ref().ok_or("no CRM")?.1.clone();
    shared
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .fail_every = 3;
    let wf = t.workflow("", "")?;
    let mut d = t.open(&wf).await?;
    let run = RunId::new();
    let records = [
        r#"{"id":1,"v":1,"qty":1}"#,
        r#"{"id":2,"v":1,"qty":"bad"}"#,
        r#"{"id":3,"v":1,"qty":3}"#,
    ];
    let ack = write(&mut d, run, 1, &records).await?;
    assert_eq!(counts(&ack), [2, 0, 0, 0, 0, 1]);
    let letters = DeadLetters::new(&t.state(), "conf", "items").list()?;
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].key.as_deref(), Some("2"));
    assert!(
        letters[0].reason.contains("HTTP 422"),
        "{}",
        letters[0].reason
    );
    assert_eq!(
        t.rows().await?.keys().cloned().collect::<Vec<_>>(),
        ["1", "3"]
    );
    // Every third request was a 429 or 503; each record still exists exactly once.
    let crm = shared
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    assert_eq!((crm.creates, crm.collection("contacts").len()), (2, 2));
    Ok(())
}

/// The real binary syncs the sandbox into a CRM-like API that fails every seventh request,
/// killed once mid-run: afterwards every source record exists exactly once there, as the
/// source has it, and no record was ever created twice.
#[test]
fn the_binary_syncs_into_an_api_exactly_once_through_faults_and_a_kill() -> Result {
    use crate::util::{run, text, waymark, Sandbox};
    let dir = TempDir::new("http-e2e");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let shared = crm::Shared::default();
    shared
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .fail_every = 7;
    let server = runtime.block_on(Server::start(|| 0, crm::handler(shared.clone())))?;
    let sandbox = Sandbox::start(&["--records", "600"])?;
    let file = sandbox_workflow(
        dir.path(),
        &crm::destination(&server.url),
        &[
            ("page_size = 100", "page_size = 50"),
            (
                "max_attempts = 12",
                "max_attempts = 12\nbackoff = { base = \"5ms\", cap = \"20ms\" }",
            ),
        ],
    )?;
    let state = dir.path().join("state");
    // Killed as soon as the first page is committed: mid-page 2, requests in flight.
    let map = state.join("http_ids").join("shop").join("orders.json");
    let committed = run_and_kill(&state, &sandbox.url, &file, || map.exists())?;
    assert!(committed, "the first page was never committed");
    let out = run(waymark(&state, &sandbox.url).arg("run").arg(&file))?;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains(" 1 resume,"),
        "{}",
        text(&out.stdout)
    );
    let crm = shared
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    assert_eq!(
        crm.collection("contacts").len(),
        600,
        "a record is missing or doubled"
    );
    assert_eq!(crm.creates, 600, "a record was created twice");
    assert!(
        crm.by_external_id() == sandbox.truth()?,
        "the API differs from the source"
    );
    drop(crm);
    drop(server);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_connections_use_verified_tls_when_asked() -> Result {
    let Some(pg) = crate::pg::shared() else {
        return Ok(());
    };
    let url = pg.database()?.replace("sslmode=disable", "sslmode=require");
    let target = |name: &str| Target {
        kind: Kind::Postgres,
        dir: TempDir::new(name),
        url: Some(url.clone()),
        var: "WAYMARK_CONFORMANCE_PG_TLS".into(),
        crm: None,
    };
    std::env::set_var("WAYMARK_CONFORMANCE_PG_TLS", &url);
    // The server's certificate is not trusted by default: refused, and said so.
    let untrusted = target("pg-tls-untrusted");
    let wf = untrusted.workflow("", "")?;
    let refused = untrusted.open(&wf).await.err().map(|e| e.to_string());
    assert!(
        refused
            .as_deref()
            .is_some_and(|e| e.contains("certificate")),
        "{refused:?}"
    );
    // Trusted through `ca_file`: the batch goes over TLS.
    let trusted = target("pg-tls-trusted");
    let ca = format!("ca_file = \"{}\"", pg.ca_file().display());
    let wf = trusted.workflow("", &ca)?;
    let mut d = trusted.open(&wf).await?;
    let ack = write(&mut d, RunId::new(), 1, &[r#"{"id":1,"v":1}"#]).await?;
    assert_eq!(counts(&ack), [1, 0, 0, 0, 0, 0]);
    let plain = url.replace("sslmode=require", "sslmode=disable");
    let (client, connection) = tokio_postgres::connect(&plain, tokio_postgres::NoTls).await?;
    tokio::spawn(connection);
    let encrypted: i64 = client
        .query_one(
            "SELECT count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid)
             WHERE a.datname = current_database() AND s.ssl",
            &[],
        )
        .await?
        .get(0);
    assert_eq!(
        encrypted, 1,
        "the destination's connection is not encrypted"
    );
    drop(d);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_destination_wide_failure_moves_no_checkpoint_and_a_retry_completes() -> Result {
    for t in targets("refusal").await? {
        // A database that refuses the whole batch (a trigger; think disk full, permission
        // revoked) — the SQL destinations.
        let (block, unblock) = match t.kind {
            Kind::Sqlite => (
                "CREATE TRIGGER no_writes BEFORE INSERT ON items BEGIN SELECT RAISE(ABORT, 'disk full'); END",
                "DROP TRIGGER no_writes",
            ),
            Kind::Postgres => (
                "CREATE FUNCTION no_writes() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'disk full'; END $$;
                 CREATE TRIGGER no_writes BEFORE INSERT ON items FOR EACH ROW EXECUTE FUNCTION no_writes()",
                "DROP TRIGGER no_writes ON items",
            ),
            Kind::Jsonl | Kind::Http => continue,
        };
        let wf = t.workflow("", "")?;
        let mut d = t.open(&wf).await?;
        let run = RunId::new();
        write(&mut d, run, 1, &[r#"{"id":1,"v":1}"#]).await?;
        t.execute(block).await?;
        let failed = write(&mut d, run, 2, &[r#"{"id":2,"v":1}"#, r#"{"id":3,"v":1}"#]).await;
        let why = failed.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(why.contains("disk full"), "{:?}: {why}", t.kind);
        let checkpoint = d.checkpoint().await?.ok_or("no checkpoint")?;
        assert_eq!(checkpoint.page, 1, "{:?}: the checkpoint moved", t.kind);
        assert_eq!(
            t.rows().await?.len(),
            1,
            "{:?}: half a batch was kept",
            t.kind
        );
        t.execute(unblock).await?;
        let ack = write(&mut d, run, 2, &[r#"{"id":2,"v":1}"#, r#"{"id":3,"v":1}"#]).await?;
        assert_eq!(counts(&ack), [2, 0, 0, 0, 0, 0], "{:?}", t.kind);
        assert_eq!(d.checkpoint().await?.map(|c| c.page), Some(2));
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn destinations_list_what_they_hold_and_apply_a_repairs_deletions() -> Result {
    for t in targets("scan").await? {
        let wf = t.workflow("", "")?;
        let mut d = t.open(&wf).await?;
        let records = [
            r#"{"id":1,"v":1,"n":"a"}"#,
            r#"{"id":2,"v":2,"n":"b"}"#,
            r#"{"id":3,"v":3,"n":"c"}"#,
        ];
        write(&mut d, RunId::new(), 1, &records).await?;
        let mut listed = BTreeMap::new();
        let scanned = d
            .scan(&mut |key, stored| {
                listed.insert(key, stored);
                Ok(())
            })
            .await;
        if t.kind == Kind::Http {
            let e = scanned.err().map(|e| e.to_string()).unwrap_or_default();
            assert!(e.contains("cannot be reconciled"), "{e}");
            continue;
        }
        scanned?;
        assert_eq!(listed.len(), 3, "{:?}", t.kind);
        assert_eq!(listed["2"].version.as_deref(), Some("2"), "{:?}", t.kind);
        assert!(!listed["2"].deleted, "{:?}", t.kind);
        // A repair's deletion record, at the stored version: the row is marked deleted,
        // and a record without the marker is an ordinary upsert.
        let state = t.state();
        let mut binding = sink::binding(&wf, &wf.streams()[0], "items@repair");
        binding.marked_deletions = true;
        let mut repair = AnyDestination::open(
            &wf,
            binding,
            &state,
            std::sync::Arc::new(waymark_engine::SystemClock),
        )
        .await?;
        let ack = write(
            &mut repair,
            RunId::new(),
            1,
            &[
                r#"{"id":"2","v":"2","_waymark_deleted":true}"#,
                r#"{"id":3,"v":3,"n":"fixed"}"#,
            ],
        )
        .await?;
        assert_eq!(counts(&ack), [0, 1, 0, 0, 1, 0], "{:?}", t.kind);
        drop(repair);
        let rows = t.rows().await?;
        assert_eq!(rows["2"], row("2", true, records[1])?, "{:?}", t.kind);
        assert_eq!(rows["3"].2["n"], "fixed", "{:?}", t.kind);
    }
    Ok(())
}

/// A cluster's fencing: PostgreSQL checks a lease's token in each batch's own transaction
/// (a worker whose lease was taken over writes nothing, and cannot claim it back with its
/// older token); local files refuse to be written under a lease; another API relies on its
/// idempotency keys.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_under_a_lease_taken_over_is_refused() -> Result {
    for t in targets("fence").await? {
        let workflow = t.workflow("", "")?;
        let lease = |token: u64, holder: &str| waymark_engine::Lease {
            token,
            holder: holder.into(),
            previous: None,
        };
        let mut stale = t.open(&workflow).await?;
        let claimed = stale.fence(&lease(1, "w1")).await;
        match t.kind {
            Kind::Sqlite | Kind::Jsonl => {
                let e = claimed.expect_err("a local destination under a lease");
                assert!(e.to_string().contains("cannot check a lease token"), "{e}");
                continue;
            }
            Kind::Http => {
                claimed?;
                continue;
            }
            Kind::Postgres => claimed?,
        }
        let (first, second) = (RunId::new(), RunId::new());
        write(&mut stale, first, 1, &[r#"{"id":1,"v":1}"#]).await?;
        // w2 takes the partition over (token 2) while w1 is paused.
        let mut current = t.open(&workflow).await?;
        current.fence(&lease(2, "w2")).await?;
        let refused = write(&mut stale, first, 2, &[r#"{"id":1,"v":9}"#]).await;
        let e = refused.expect_err("a batch under the older token");
        assert!(e.to_string().contains("fenced"), "{e}");
        assert!(e.to_string().contains("worker w2 (token 2)"), "{e}");
        write(&mut current, second, 1, &[r#"{"id":1,"v":2}"#]).await?;
        // Nothing of the refused batch, and its older token cannot claim the scope again.
        let e = stale
            .fence(&lease(1, "w1"))
            .await
            .expect_err("an older claim");
        assert!(e.to_string().contains("fenced"), "{e}");
        let rows = t.rows().await?;
        assert_eq!(rows["1"].0.as_deref(), Some("2"), "{rows:?}");
        let checkpoint = current.checkpoint().await?.ok_or("no checkpoint")?;
        assert_eq!(checkpoint.run_id, second);
    }
    Ok(())
}

/// Streams opening together in a new schema (a tenant's first runs, in a cluster) all
/// open: the tables and function they share are made one stream at a time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_opening_at_once_in_a_new_schema_all_open() -> Result {
    for t in targets("ddl").await? {
        if t.kind != Kind::Postgres {
            continue;
        }
        for round in 0..3 {
            let workflow = t.workflow("", &format!("schema = \"fresh_{round}\""))?;
            let opens = (0..8).map(|_| t.open(&workflow));
            for opened in futures_util::future::join_all(opens).await {
                opened?;
            }
        }
    }
    Ok(())
}
