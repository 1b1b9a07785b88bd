//! Tests of page reading, shaping and pagination.

use reqwest::header::{HeaderMap, HeaderValue};

use waymark_engine::source::{self, ErrorKind};

use super::page::{records_at, records_by_query, shape, Document};
use super::pagination::{link_next, token};
use crate::config::StreamSection;
use crate::record::Fields;

/// A JSON value of random shape from `seed` (xorshift): nested arrays and objects, strings
/// with escapes, quotes, brackets and commas inside, numbers, white space around tokens.
fn random_json(seed: &mut u64, depth: u32) -> String {
    let mut next = |n: usize| {
        *seed ^= *seed << 13;
        *seed ^= *seed >> 7;
        *seed ^= *seed << 17;
        usize::try_from(*seed % n as u64).unwrap_or(0)
    };
    let space = [" ", "", "\n\t", ""][next(4)];
    let value = match next(if depth == 0 { 4 } else { 6 }) {
        0 => ["0", "-1.5e3", "12345678901234567890", "true", "null"][next(5)].to_string(),
        1 | 2 => {
            let parts = [
                r#"a"#,
                r#"\""#,
                r#"\\"#,
                "]",
                "}",
                ",",
                "[",
                "é",
                r#"\u005d"#,
                r#"\\\""#,
            ];
            let text: String = (0..next(5)).map(|_| parts[next(10)]).collect();
            format!("\"{text}\"")
        }
        3 => String::new() + "{}",
        4 => {
            let items: Vec<String> = (0..next(4)).map(|_| random_json(seed, depth - 1)).collect();
            format!("[{}]", items.join(","))
        }
        _ => {
            let fields: Vec<String> = (0..next(4))
                .map(|i| format!("\"k{i}]\":{}", random_json(seed, depth - 1)))
                .collect();
            format!("{{{}}}", fields.join(","))
        }
    };
    format!("{space}{value}{space}")
}

#[test]
fn records_are_split_as_a_json_parser_splits_them() -> Result<(), source::Error> {
    let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
    for case in 0..3_000 {
        let items: Vec<String> = (0..case % 7).map(|_| random_json(&mut seed, 3)).collect();
        let body = format!("{{\"data\": [{}] , \"next\":\"x\"}}", items.join(","));
        let doc = Document::parse(body.as_bytes())?;
        let parsed: Vec<&serde_json::value::RawValue> = doc
            .at("data")
            .and_then(|raw| serde_json::from_str(raw.get()).ok())
            .unwrap_or_default();
        let expected: Vec<&str> = parsed.iter().map(|r| r.get()).collect();
        assert_eq!(records_at(&doc, "data")?, expected, "case {case}: {body}");
        // Split while the page is checked: the same records, the same array's text.
        let split = Document::with_records(body.as_bytes(), "data")?;
        assert_eq!(records_at(&split, "data")?, expected, "case {case}: {body}");
        let text = |d: &Document<'_>| d.at("data").map(|raw| raw.get().to_string());
        match expected.is_empty() {
            true => assert_eq!(text(&split).as_deref(), Some("[]"), "case {case}"),
            false => assert_eq!(text(&split), text(&doc), "case {case}: {body}"),
        }
        let bare = format!(" [{}] ", items.join(" , "));
        let bare_doc = Document::with_records(bare.as_bytes(), "")?;
        assert_eq!(records_at(&bare_doc, "")?, expected, "case {case}: {bare}");
        // A record's fields are found by a scan as a parser finds them.
        for item in expected {
            let fields = |f: Fields<'_>| -> Vec<(String, String)> {
                f.entries()
                    .map(|(k, v)| (k.to_string(), v.get().to_string()))
                    .collect()
            };
            let scanned = Fields::scan(item).map(fields);
            let parsed = Fields::parse(item).ok().map(fields);
            assert_eq!(scanned, parsed, "case {case}: {item}");
        }
    }
    for read in [Document::parse, |b| Document::with_records(b, "data")] {
        let doc = read(br#"{"data":{"a":[1]}}"#)?;
        assert!(
            records_at(&doc, "data").is_err(),
            "an object is not an array"
        );
        // Of duplicate fields, the last counts, array or not.
        let doc = read(br#"{"data":[1,2],"next":"x","data":[3]}"#)?;
        assert_eq!(records_at(&doc, "data")?, ["3"]);
        assert_eq!(doc.at("data").map(|raw| raw.get()), Some("[3]"));
        let doc = read(br#"{"data":[1,2],"data":{"a":[1]}}"#)?;
        assert!(records_at(&doc, "data").is_err());
        let doc = read(br#"{"data":"x","data":[ 1 ]}"#)?;
        assert_eq!(records_at(&doc, "data")?, ["1"]);
        assert_eq!(doc.at("data").map(|raw| raw.get()), Some("[ 1 ]"));
        // A value of that name that only a checked parse refuses (beyond `f64`, a lone
        // surrogate) is JSON all the same; the last duplicate still counts.
        let doc = read(br#"{"data":1e400}"#)?;
        assert!(
            records_at(&doc, "data").is_err(),
            "a number is not an array"
        );
        let doc = read(br#"{"data":"\ud800","data":[{"id":1}]}"#)?;
        assert_eq!(records_at(&doc, "data")?, [r#"{"id":1}"#]);
        let doc = read(br#"{"data":{"\udc00":1},"data":[2]}"#)?;
        assert_eq!(records_at(&doc, "data")?, ["2"]);
        // Not JSON, wherever it breaks.
        assert!(read(br#"{"data":[1,]}"#).is_err());
        assert!(read(br#"{"data":[1],"next":tru}"#).is_err());
        assert!(read(br#"{"data":[1]} x"#).is_err());
    }
    let bare = Document::with_records(br#""x""#, "")?;
    assert!(records_at(&bare, "").is_err(), "a string is not an array");
    assert!(Document::with_records(b"[1,", "").is_err());
    Ok(())
}

#[test]
fn reads_records_without_reserialising() -> Result<(), source::Error> {
    let body = br#"{"data":[{"id":1, "a":"x"},{"id":2}],"meta":{"next":"c2"}}"#;
    let doc = Document::parse(body)?;
    let records = records_at(&doc, "data")?;
    assert_eq!(records, [r#"{"id":1, "a":"x"}"#, r#"{"id":2}"#]);
    assert_eq!(
        token(doc.value("meta.next"), "meta.next")?.as_deref(),
        Some("c2")
    );
    let bare = Document::parse(br#" [{"id":1}]"#)?;
    assert_eq!(records_at(&bare, "")?.len(), 1);
    // Only what the path goes through is read: a nested page, a duplicate key (the last).
    let nested = Document::parse(br#"{"a":{"b":[{"id":1},{"id":2}]},"a":{"b":[{"id":3}]}}"#)?;
    assert_eq!(records_at(&nested, "a.b")?.len(), 1);
    assert!(Document::parse(br#"{"data":[]} trailing"#).is_err());
    assert!(Document::parse(b"{\"data\":[\"\xff\"]}").is_err());
    Ok(())
}

#[test]
fn a_cursor_of_the_wrong_type_is_an_error_not_the_end() -> Result<(), source::Error> {
    let doc = Document::parse(
        br#"{"s":"c","n":7,"e":"","z":null,"o":{"after":"x","secret":"y"},"a":[1,2],"b":false}"#,
    )?;
    let at = |path: &str| token(doc.value(path), path);
    assert_eq!(at("s")?.as_deref(), Some("c"));
    assert_eq!(at("n")?.as_deref(), Some("7"));
    assert_eq!((at("e")?, at("z")?, at("missing")?), (None, None, None));
    for (path, kind) in [
        ("o", "an object (keys: `after`, `secret`)"),
        ("a", "an array (2 items)"),
        ("b", "the boolean false"),
    ] {
        let e = at(path).unwrap_err();
        assert!(
            e.kind == ErrorKind::Fatal
                && e.message
                    .contains(&format!("cursor at `{path}` is {kind}, not a string")),
            "{e:?}"
        );
    }
    Ok(())
}

#[test]
fn classifies_bad_pages_and_names_the_page() {
    let not_json = Document::parse(b"<html>oops")
        .err()
        .unwrap_or_else(|| unreachable!());
    assert!(
        not_json.kind == ErrorKind::Retry && not_json.message.contains("the page is not JSON"),
        "{not_json:?}"
    );
    let doc = Document::parse(br#"{"items":[]}"#).unwrap_or_else(|_| unreachable!());
    let missing = records_at(&doc, "data").unwrap_err();
    assert!(
        missing.kind == ErrorKind::Fatal
            && missing
                .message
                .contains("records path `data` is not in the page"),
        "{missing:?}"
    );
}

#[test]
fn filters_and_projects_records() -> Result<(), String> {
    let stream: StreamSection = toml::from_str(
        r#"
name = "s"
path = "/s"
primary_key = "id"
pagination = { kind = "link_header" }
filter = { path = "status", one_of = ["paid", "7"] }
fields = ["id", "customer.id", "missing"]
"#,
    )
    .map_err(|e| e.to_string())?;
    let records = vec![
        r#"{"id":1,"status":"paid","customer":{"id":5,"name":"x"},"big":[1,2]}"#.into(),
        r#"{"id":2,"status":"open"}"#.into(),
        r#"{"id":3,"status":7}"#.into(),
    ];
    assert_eq!(
        shape(records, &stream)?,
        [r#"{"customer":{"id":5},"id":1}"#, r#"{"id":3}"#]
    );
    Ok(())
}

#[test]
fn shaping_and_queries_keep_numbers_as_sent_and_read_deep_records() -> Result<(), String> {
    let stream: StreamSection = toml::from_str(
        r#"
name = "s"
path = "/s"
primary_key = "id"
pagination = { kind = "link_header" }
filter = { path = "id", one_of = ["12345678901234567890123", "1e2"] }
fields = ["id", "c.x"]
"#,
    )
    .map_err(|e| e.to_string())?;
    let deep = format!(
        r#"{{"id":1e2,"d":{}0{}}}"#,
        "[".repeat(300),
        "]".repeat(300)
    );
    let records = vec![
        r#"{"id":12345678901234567890123,"c":{"x":-0, "y":1}}"#.into(),
        r#"{"id":12345678901234567890124}"#.into(),
        deep,
    ];
    assert_eq!(
        shape(records, &stream)?,
        [
            r#"{"c":{"x":-0},"id":12345678901234567890123}"#,
            r#"{"id":1e2}"#
        ]
    );
    let body = br#"{"a":{"items":[{"id":12345678901234567890123, "v":1.50}]},"b":[{"id":1e2}]}"#;
    let doc = Document::parse(body).map_err(|e| e.message)?;
    let query = serde_json_path::JsonPath::parse("$..[?@.id]").map_err(|e| e.to_string())?;
    let mut found: Vec<&str> = records_by_query(&doc, &query)?;
    found.sort_unstable();
    assert_eq!(
        found,
        [
            r#"{"id":12345678901234567890123, "v":1.50}"#,
            r#"{"id":1e2}"#
        ]
    );
    Ok(())
}

#[test]
fn finds_the_next_link_among_several() {
    let mut h = HeaderMap::new();
    h.append(
        reqwest::header::LINK,
        HeaderValue::from_static(
            r#"<https://a.test/x?page=1>; rel="first", <https://a.test/x?page=3&q=a,b>; rel="prev next""#,
        ),
    );
    assert_eq!(
        link_next(&h).as_deref(),
        Some("https://a.test/x?page=3&q=a,b")
    );
    let mut none = HeaderMap::new();
    none.append(
        reqwest::header::LINK,
        HeaderValue::from_static(r#"<https://a.test/x?page=1>; rel="prev""#),
    );
    assert_eq!(link_next(&none), None);
}
