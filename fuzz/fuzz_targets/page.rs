//! Any response as a page of a stream, through everything Waymark reads from it: the
//! records (a dotted path or a JSONPath), shaping, the next cursor of each pagination style
//! with its stop rules and guards, then each record's key, version and deletion (its
//! fields found by the scan as the parser finds them), and the write plan. Never a panic,
//! and writing the page twice leaves what writing it once did.
#![no_main]

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use waymark_connectors::http::api::Accepted;
use waymark_connectors::record::Fields;
use waymark_connectors::sink::plan::{plan, Binding, Identified, Op, Stored};
use waymark_connectors::{Api, HttpSource, Workflow};
use waymark_engine::source::PageRequest;
use waymark_engine::time::{SystemClock, Timestamp};
use waymark_engine::window::Window;

/// Streams covering each pagination style, records path kind and key shape.
const STREAMS: [&str; 7] = [
    r#"records = "data"
primary_key = "id"
cursor_field = "updated_at"
pagination = { kind = "cursor", cursor_path = "next_cursor", cursor_param = "cursor", limit_param = "limit" }"#,
    r#"records = "$.items[*]"
primary_key = ["org.id", "id"]
cursor_field = "meta.rev"
pagination = { kind = "next_url", next_url_path = "links.next" }"#,
    r#"records = ""
primary_key = "id"
cursor_field = "updated_at"
deleted_when = { path = "status", one_of = ["deleted", "gone"] }
pagination = { kind = "link_header", limit_param = "per_page" }"#,
    r#"records = "result.rows"
primary_key = "id"
filter = { path = "kind", one_of = ["a", "b"] }
fields = ["id", "kind", "v"]
pagination = { kind = "page_number", page_param = "page", limit_param = "per_page", total_header = "X-Total-Count" }"#,
    r#"records = "data"
primary_key = "id"
pagination = { kind = "offset", offset_param = "offset", limit_param = "limit", has_more_path = "has_more", total_path = "total" }"#,
    r#"records = "data"
primary_key = "id"
cursor_field = "updated_at"
pagination = { kind = "keyset", since_param = "updated_since", id_param = "since_id", limit_param = "limit" }"#,
    r#"records = "$..records[*]"
primary_key = "id"
cursor_field = "deleted_at"
deletes = "orders"
pagination = { kind = "cursor", cursor_path = "meta.after", cursor_param = "X-Cursor", cursor_in = "header" }"#,
];

/// The table a deletions feed deletes from.
const ORDERS: &str = r#"[[stream]]
name = "orders"
path = "/orders"
records = "data"
primary_key = "id"
cursor_field = "updated_at"
pagination = { kind = "cursor", cursor_path = "next_cursor", cursor_param = "cursor" }
"#;

struct Stream {
    workflow: Workflow,
    api: Arc<Api>,
    binding: Binding,
}

fn streams() -> &'static [Stream] {
    static STREAMS_BUILT: OnceLock<Vec<Stream>> = OnceLock::new();
    STREAMS_BUILT.get_or_init(|| {
        STREAMS
            .iter()
            .map(|stream| {
                let text = format!(
                    "[sync]\nname = \"fuzz\"\n[source]\nkind = \"http\"\n\
                     base_url = \"http://127.0.0.1:9\"\n[[stream]]\nname = \"items\"\n\
                     path = \"/items\"\npage_size = 3\n{stream}\n{ORDERS}\
                     [destination]\nkind = \"sqlite\"\npath = \"fuzz.db\"\n"
                );
                let workflow = Workflow::parse(std::path::Path::new("fuzz.toml"), &text)
                    .unwrap_or_else(|e| panic!("fuzz workflow: {e}\n{text}"));
                let api = Api::new(&workflow, None, Arc::new(SystemClock)).expect("api");
                let stream = workflow.streams().first().expect("a stream").clone();
                let binding = Binding::new(&workflow, &stream);
                Stream {
                    workflow,
                    api,
                    binding,
                }
            })
            .collect()
    })
}

/// What a destination holds after `ops` (the model every store implements).
fn apply(store: &mut HashMap<String, Stored>, ops: &[Op<'_>]) {
    for op in ops {
        let after = match op {
            Op::Put {
                version, record, ..
            } => Stored {
                version: version.map(str::to_string),
                deleted: false,
                record: Some(record.to_string()),
            },
            Op::Tombstone {
                key,
                version,
                record,
            } => Stored {
                version: version.map(str::to_string),
                deleted: true,
                record: match store.get(*key).and_then(|s| s.record.clone()) {
                    Some(kept) => Some(kept),
                    None => Some(record.to_string()),
                },
            },
            Op::Remove { version, .. } => Stored {
                version: version.map(str::to_string),
                deleted: true,
                record: None,
            },
        };
        store.insert(op.key().to_string(), after);
    }
}

fuzz_target!(|data: &[u8]| {
    let [which, page, rest @ ..] = data else {
        return;
    };
    let Some(stream) = streams().get(usize::from(*which) % STREAMS.len()) else {
        return;
    };
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    // [cursor line if the page is not the first] [header lines] "\n\n" [body]
    let (head, body) = text.split_once("\n\n").unwrap_or(("", text));
    let mut lines = head.lines();
    let page = u64::from(page % 4) + 1;
    let cursor = match page {
        1 => None,
        _ => lines.next(),
    };
    let mut headers = HeaderMap::new();
    for line in lines {
        if let Some((name, value)) = line.split_once(':') {
            if let (Ok(name), Ok(value)) = (
                HeaderName::from_bytes(name.trim().as_bytes()),
                HeaderValue::from_str(value.trim()),
            ) {
                headers.append(name, value);
            }
        }
    }
    let stream_section = stream.workflow.streams().first().expect("a stream");
    let Ok(mut source) = HttpSource::new(&stream.workflow, stream_section, stream.api.clone(), None)
    else {
        return;
    };
    let request = PageRequest {
        page,
        cursor,
        window: Window {
            start: None,
            end: Timestamp(1_800_000_000_000),
        },
    };
    let response = Accepted {
        what: "GET /items".into(),
        status: 200,
        headers,
        body: body.as_bytes().to_vec(),
    };
    let Ok(read) = source.read_page(&request, None, &response) else {
        return;
    };
    if let Some(next) = &read.next_cursor {
        assert!(!next.is_empty(), "an empty cursor is the last page");
    }

    // Each record's fields, found by the write path's scan, are the parser's.
    for record in &read.records {
        let fields = |f: Fields<'_>| -> Vec<(String, String)> {
            f.entries()
                .map(|(k, v)| (k.to_string(), v.get().to_string()))
                .collect()
        };
        if let (Some(scanned), Ok(parsed)) = (Fields::scan(record), Fields::parse(record)) {
            assert_eq!(fields(scanned), fields(parsed), "{record}");
        }
    }
    let identified = Identified::new(&stream.binding, read.records);
    let keys: Vec<String> = identified.keys().into_iter().map(str::to_string).collect();
    let mut store: HashMap<String, Stored> = HashMap::new();
    let first = plan(&stream.binding, "run", page, &identified, |key| {
        Ok::<_, Infallible>(store.get(key).cloned())
    })
    .unwrap_or_else(|e| match e {});
    for op in &first.ops {
        assert!(keys.iter().any(|k| k == op.key()), "a change to a key no record has");
    }
    apply(&mut store, &first.ops);
    let once = store.clone();
    let again = plan(&stream.binding, "run", page, &identified, |key| {
        Ok::<_, Infallible>(store.get(key).cloned())
    })
    .unwrap_or_else(|e| match e {});
    apply(&mut store, &again.ops);
    assert_eq!(store, once, "writing the page again changed what is stored");
});
