//! Every message a broken workflow file gets, exactly: each case is a small edit of one
//! valid file (or a whole small file) and the `file:line:col: key: message` it must give.

use std::path::Path;

use super::*;

/// Valid; every case below breaks one thing of it.
const BASE: &str = r#"[sync]
name = "shop"
keep = "30d"

[source]
kind = "http"
base_url = "http://127.0.0.1:1"
timeout = "30s"
backoff = { base = "250ms", cap = "30s" }
auth = { kind = "bearer", token = { env = "SHOP_TOKEN" } }
rate_limit = { requests = 10, per = "1s" }

[[source.on_response]]
status = [429, 503]
action = "retry"
wait = "5s"

[[stream]]
name = "orders"
path = "/orders"
records = "data"
primary_key = "id"
cursor_field = "updated_at"
page_size = 100
pagination = { kind = "cursor", cursor_path = "next_cursor", cursor_param = "cursor" }
window = { lag = "2m", overlap = "1m", start_param = "since" }
columns = { total = { path = "amount.total", type = "real" } }

[[stream]]
name = "customers"
path = "/customers"
primary_key = ["org_id", "id"]
pagination = { kind = "page_number", page_param = "page" }
window.lag = "5m"
reconcile = { every = "7d", mode = "report" }

[[stream.on_response]]
status = 404
action = "ignore"

[destination]
kind = "sqlite"
path = "shop.db"
"#;

/// `BASE` with its first `from` replaced by `to` (which must be there).
fn edit(from: &str, to: &str) -> String {
    assert!(BASE.contains(from), "not in BASE: {from}");
    BASE.replacen(from, to, 1)
}

fn message(text: &str) -> String {
    match Workflow::parse(Path::new("w.toml"), text) {
        Ok(_) => "valid".into(),
        Err(e) => e.to_string(),
    }
}

#[test]
fn the_base_file_is_valid() {
    assert_eq!(message(BASE), "valid");
}

#[test]
fn each_broken_file_gets_its_exact_message() {
    let small = |stream_header: &str, sync_header: &str| {
        format!(
            "{sync_header}\nname = \"s\"\n[source]\nkind = \"http\"\nbase_url = \"http://x\"\n\
             {stream_header}\nname = \"a\"\npath = \"/a\"\nprimary_key = \"id\"\n\
             pagination = {{ kind = \"link_header\" }}\n[destination]\nkind = \"jsonl\"\npath = \"out\"\n"
        )
    };
    let cases: Vec<(String, &str)> = vec![
        // The issue's examples.
        (
            edit("path = \"/orders\"\n", ""),
            r#"w.toml:18:1: stream.orders.path: required key missing: path appended to the base URL"#,
        ),
        (
            edit("path = \"/customers\"\n", ""),
            r#"w.toml:29:1: stream.customers.path: required key missing: path appended to the base URL"#,
        ),
        (
            edit("name = \"shop\"\n", ""),
            r#"w.toml:1:1: sync.name: required key missing: name of the sync; with the stream name it identifies checkpoints"#,
        ),
        (
            edit("lag = \"2m\"", "lag = 120"),
            r#"w.toml:26:18: stream.orders.window.lag: expected a duration such as "30s", "5m" or "1h 30m", got the number 120; add a unit, e.g. "120s""#,
        ),
        (
            edit("page_size = 100", "page_size = \"500\""),
            r#"w.toml:24:13: stream.orders.page_size: expected a whole number, got the string "500""#,
        ),
        (
            edit("primary_key = \"id\"", "primary_key = 5"),
            r#"w.toml:22:15: stream.orders.primary_key: expected a string or a list of strings, got the number 5"#,
        ),
        (
            edit("timeout = \"30s\"", "timeout = \"5 mintues\""),
            r#"w.toml:8:11: source.timeout: expected a duration such as "30s", "5m" or "1h 30m", got "5 mintues""#,
        ),
        // Typos, section by section.
        (
            edit("keep = ", "kep = "),
            r#"w.toml:3:1: sync.kep: unknown key; did you mean `keep`?"#,
        ),
        (
            edit("timeout = ", "timout = "),
            r#"w.toml:8:1: source.timout: unknown key; did you mean `timeout`?"#,
        ),
        (
            edit("records = ", "recrods = "),
            r#"w.toml:21:1: stream.orders.recrods: unknown key; did you mean `records`?"#,
        ),
        (
            edit("shop.db", "shop.db\"\npth = \"x"),
            r#"w.toml:44:1: destination.pth: unknown key; did you mean `path`?"#,
        ),
        (
            edit("[destination]", "[destinaton]"),
            r#"w.toml:41:1: destinaton: unknown table; did you mean `destination`?"#,
        ),
        (
            edit("page_size = 100", "page_size = 100\nlag = \"2m\""),
            r#"w.toml:25:1: stream.orders.lag: unknown key here; did you mean `window.lag`?"#,
        ),
        (
            edit("window.lag", "window.lga"),
            r#"w.toml:34:8: stream.customers.window.lga: unknown key; did you mean `lag`?"#,
        ),
        (
            edit("base = \"250ms\", cap", "base = \"250ms\", capp"),
            r#"w.toml:9:29: source.backoff.capp: unknown key; did you mean `cap`?"#,
        ),
        (
            edit("action = \"retry\"", "acton = \"retry\""),
            r#"w.toml:15:1: source.on_response[0].acton: unknown key; did you mean `action`?"#,
        ),
        // Pagination: keys of its kind only.
        (
            edit("cursor_path = ", "cursor_pth = "),
            r#"w.toml:25:33: stream.orders.pagination.cursor_pth: unknown key; did you mean `cursor_path`? (kind = "cursor" takes cursor_path, cursor_param, cursor_in, has_more_path, end_path, max_records and limit_param)"#,
        ),
        (
            edit(
                "cursor_param = \"cursor\"",
                "cursor_param = \"cursor\", page_param = \"p\"",
            ),
            r#"w.toml:25:87: stream.orders.pagination.page_param: applies to kind = "page_number", not "cursor"; kind = "cursor" takes cursor_path, cursor_param, cursor_in, has_more_path, end_path, max_records and limit_param"#,
        ),
        (
            edit(
                "page_param = \"page\"",
                "page_param = \"page\", cursor_param = \"c\"",
            ),
            r#"w.toml:33:59: stream.customers.pagination.cursor_param: applies to kind = "cursor", not "page_number"; kind = "page_number" takes page_param, first_page, has_more_path, end_path, total_path, total_header, max_records and limit_param"#,
        ),
        (
            edit("kind = \"cursor\"", "kind = \"cursr\""),
            r#"w.toml:25:23: stream.orders.pagination.kind: expected one of "cursor", "next_url", "link_header", "page_number", "offset" or "keyset", got "cursr"; did you mean "cursor"?"#,
        ),
        (
            edit("{ kind = \"page_number\", ", "{ "),
            r#"w.toml:33:1: stream.customers.pagination.kind: required key missing: one of "cursor", "next_url", "link_header", "page_number", "offset" or "keyset""#,
        ),
        (
            edit(
                "kind = \"page_number\", page_param = \"page\"",
                "kind = \"link_header\", limit = \"n\"",
            ),
            r#"w.toml:33:38: stream.customers.pagination.limit: unknown key; did you mean `limit_param`? (kind = "link_header" takes has_more_path, end_path, max_records and limit_param)"#,
        ),
        // Enums.
        (
            edit("kind = \"http\"", "kind = \"https\""),
            r#"w.toml:6:8: source.kind: expected one of "http", got "https"; did you mean "http"?"#,
        ),
        (
            edit("kind = \"sqlite\"", "kind = \"SQLite\""),
            r#"w.toml:42:8: destination.kind: expected one of "sqlite", "postgres", "jsonl" or "http", got "SQLite"; did you mean "sqlite"?"#,
        ),
        (
            edit("mode = \"report\"", "mode = \"fix\""),
            r#"w.toml:35:36: stream.customers.reconcile.mode: expected one of "report" or "repair", got "fix""#,
        ),
        (
            edit("action = \"ignore\"", "action = \"ignored\""),
            r#"w.toml:39:10: stream.customers.on_response[0].action: expected one of "accept", "retry", "fail", "ignore", "rate_limited" or "refresh_auth", got "ignored"; did you mean "ignore"?"#,
        ),
        (
            edit("type = \"real\"", "type = \"reel\""),
            r#"w.toml:27:53: stream.orders.columns.total.type: expected one of "text", "integer", "real", "boolean", "timestamp" or "json", got "reel"; did you mean "real"?"#,
        ),
        // Wrong types and ranges.
        (
            edit("records = \"data\"", "records = true"),
            r#"w.toml:21:11: stream.orders.records: expected a string, got true"#,
        ),
        (
            edit(
                "cursor_field = \"updated_at\"",
                "cursor_field = 2026-01-01T00:00:00Z",
            ),
            r#"w.toml:23:16: stream.orders.cursor_field: expected a string, got the date-time 2026-01-01T00:00:00Z; write it in quotes"#,
        ),
        (
            edit("requests = 10", "requests = 1.5"),
            r#"w.toml:11:27: source.rate_limit.requests: expected a whole number, got the number 1.5"#,
        ),
        (
            edit("requests = 10", "requests = -1"),
            r#"w.toml:11:27: source.rate_limit.requests: expected a whole number of at least 0, got -1"#,
        ),
        (
            edit("status = [429, 503]", "status = [429, 70000]"),
            r#"w.toml:14:16: source.on_response[0].status[1]: expected a whole number of at most 65535, got 70000"#,
        ),
        (
            edit("status = 404", "status = \"404\""),
            r#"w.toml:38:10: stream.customers.on_response[0].status: expected a whole number or a list of whole numbers, got the string "404""#,
        ),
        (
            edit(
                "records = \"data\"",
                "records = \"data\"\nfields = [\"id\", 7]",
            ),
            r#"w.toml:22:17: stream.orders.fields[1]: expected a string, got the number 7"#,
        ),
        (
            edit(
                "records = \"data\"",
                "records = \"data\"\nheaders = { \"X Trace\" = 5 }",
            ),
            r#"w.toml:22:25: stream.orders.headers."X Trace": expected a string, got the number 5"#,
        ),
        (
            edit("every = \"7d\"", "every = \"weekly\""),
            r#"w.toml:35:23: stream.customers.reconcile.every: expected a duration such as "30s", "5m" or "1h 30m", got "weekly""#,
        ),
        (
            edit("base = \"250ms\"", "base = \"250\""),
            r#"w.toml:9:20: source.backoff.base: expected a duration such as "30s", "5m" or "1h 30m", got "250"; add a unit, e.g. "250s""#,
        ),
        // Inline tables: auth.
        (
            edit("kind = \"bearer\"", "kind = \"bearr\""),
            r#"w.toml:10:17: source.auth.kind: expected one of "bearer", "basic", "api_key" or "oauth2", got "bearr"; did you mean "bearer"?"#,
        ),
        (
            edit(
                "kind = \"bearer\", token = { env = \"SHOP_TOKEN\" }",
                "kind = \"bearer\"",
            ),
            r#"w.toml:10:1: source.auth.token: required key missing: the token"#,
        ),
        (
            edit("token = { env = \"SHOP_TOKEN\" }", "token = \"secret\""),
            r#"w.toml:10:35: source.auth.token: expected a table with `env`, got the string "secret""#,
        ),
        (
            edit("auth = { kind = \"bearer\", ", "auth = { "),
            r#"w.toml:10:1: source.auth.kind: required key missing: one of "bearer", "basic", "api_key" or "oauth2""#,
        ),
        (
            edit(
                "token = { env = \"SHOP_TOKEN\" }",
                "token = { env = \"SHÖP_TÖKEN\" }, extra = 1",
            ),
            r#"w.toml:10:59: source.auth.extra: unknown key; the known ones are kind and token"#,
        ),
        // Missing keys and tables.
        (
            edit("action = \"ignore\"\n", ""),
            r#"w.toml:37:1: stream.customers.on_response[0].action: required key missing: one of "accept", "retry", "fail", "ignore", "rate_limited" or "refresh_auth""#,
        ),
        (
            edit("name = \"customers\"\n", ""),
            r#"w.toml:29:1: stream[1].name: required key missing: name; also the destination table (letters, digits, `_`)"#,
        ),
        (
            edit("name = \"orders\"", "name = 5"),
            r#"w.toml:19:8: stream[0].name: expected a string, got the number 5"#,
        ),
        (
            edit("[destination]\nkind = \"sqlite\"\npath = \"shop.db\"\n", ""),
            r#"w.toml:1:1: destination: missing table [destination]"#,
        ),
        (
            small("[stream]", "[sync]"),
            r#"w.toml:6:1: stream: expected a list of tables, got a table; write its header [[stream]]"#,
        ),
        (
            small("[[stream]]", "[[sync]]"),
            r#"w.toml:1:1: sync: expected a table with `name`, got a list of tables; write its header [sync]"#,
        ),
        // Not TOML.
        (
            edit("name = \"shop\"", "name = \"shop"),
            r#"w.toml:2:13: invalid basic string"#,
        ),
        (
            edit("keep = \"30d\"", "keep = \"30d\"\nname = \"again\""),
            r#"w.toml:4:1: duplicate key `name` in table `sync`"#,
        ),
        // Semantic checks, placed by the same key paths.
        (
            edit("status = 404\n", ""),
            "w.toml:37:1: stream.customers.on_response[0]: give at least one condition: `status`, \
             `header` or `body_contains`",
        ),
        (
            edit(
                "window.lag = \"5m\"",
                "window.lag = \"5m\"\nwindow.step = \"0s\"",
            ),
            "w.toml:35:8: stream.customers.window.step: must be longer than window.overlap (each \
             slice must move forward)",
        ),
        // Values of the right type that cannot work (issue 17, item 9).
        (
            edit("timeout = \"30s\"", "timeout = \"0s\""),
            "w.toml:8:1: source.timeout: must be at least 100ms, or requests time out before the \
             API can answer (for a slow API give a long one, e.g. \"5m\")",
        ),
        (
            edit(
                "timeout = \"30s\"",
                "timeout = \"30s\"\nconnect_timeout = \"10ms\"",
            ),
            "w.toml:9:1: source.connect_timeout: must be at least 100ms, or requests time out \
             before the API can answer (for a slow API give a long one, e.g. \"5m\")",
        ),
        (
            edit("http://127.0.0.1:1", "file:///srv/api"),
            "w.toml:7:1: source.base_url: `file:///srv/api` is not an http:// or https:// URL \
             (its scheme is `file`)",
        ),
        (
            edit("http://127.0.0.1:1", "127.0.0.1:8080"),
            "w.toml:7:1: source.base_url: `127.0.0.1:8080` is not an http:// or https:// URL; \
             write the scheme, e.g. \"https://127.0.0.1:8080\"",
        ),
        (
            edit("http://127.0.0.1:1", "ftp://${API_HOST}/v1"),
            "w.toml:7:1: source.base_url: `ftp://${API_HOST}/v1` is not an http:// or https:// \
             URL (its scheme is `ftp`)",
        ),
        (
            edit(
                "auth = { kind = \"bearer\", token = { env = \"SHOP_TOKEN\" } }",
                "auth = { kind = \"oauth2\", token_url = \"file:///token\", client_id = \"a\", \
                 client_secret = { env = \"S\" } }",
            ),
            "w.toml:10:27: source.auth.token_url: `file:///token` is not an http:// or https:// \
             URL (its scheme is `file`)",
        ),
        (
            edit("timeout = \"30s\"", "timeout = \"30s\"\nmax_attempts = 0"),
            "w.toml:9:1: source.max_attempts: must be at least 1",
        ),
        (
            edit("requests = 10", "requests = 0"),
            "w.toml:11:1: source.rate_limit: needs requests >= 1, a non-zero `per` and burst >= \
             1, e.g. { requests = 10, per = \"1s\" }",
        ),
        (
            edit("per = \"1s\"", "per = \"1s\", burst = 0"),
            "w.toml:11:1: source.rate_limit: needs requests >= 1, a non-zero `per` and burst >= \
             1, e.g. { requests = 10, per = \"1s\" }",
        ),
        (
            edit("page_size = 100", "page_size = 0"),
            "w.toml:24:1: stream.orders.page_size: must be at least 1",
        ),
        (
            edit("status = [429, 503]", "status = [429, 53]"),
            "w.toml:14:16: source.on_response[0].status[1]: 53 is not an HTTP status (100 to \
             599): the rule would never match",
        ),
        (
            edit("status = 404", "status = 4040"),
            "w.toml:38:1: stream.customers.on_response[0].status: 4040 is not an HTTP status \
             (100 to 599): the rule would never match",
        ),
        (
            edit("mode = \"report\"", "mode = \"report\", window = \"0s\""),
            "w.toml:35:46: stream.customers.reconcile.window: must be longer than 0s (leave it \
             out to compare every record)",
        ),
        (
            edit("mode = \"report\"", "mode = \"report\", sample = 0"),
            "w.toml:35:46: stream.customers.reconcile.sample: must be at least 1: a sample of 0 \
             records compares no values (leave it out instead)",
        ),
        (
            edit("path = \"shop.db\"", "path = \"/dev/null\""),
            "w.toml:43:1: destination.path: /dev/null is a character device, not a regular \
             file: give the path of a SQLite database file (created if missing)",
        ),
        (
            edit("path = \"shop.db\"", "path = \"/\""),
            "w.toml:43:1: destination.path: / is a directory, not a regular file: give the path \
             of a SQLite database file (created if missing)",
        ),
        (
            edit(
                "kind = \"sqlite\"\npath = \"shop.db\"",
                "kind = \"jsonl\"\npath = \"/dev/null\"",
            ),
            "w.toml:43:1: destination.path: /dev/null is a character device, not a directory: \
             give the directory of the JSONL files (created if missing)",
        ),
        // Passes the shape, refused by serde: the key is still named.
        (
            edit("lag = \"2m\"", "lag = \"2m\", start = \"30d\""),
            r#"w.toml:26:32: stream.orders.window.start: expected one of "watermark" or "max_seen", got "30d""#,
        ),
        (
            edit(
                "window.lag = \"5m\"",
                "window.lag = \"5m\"\nwindow.start = \"max_seen\"",
            ),
            r#"w.toml:35:8: stream.customers.window.start: `max_seen` needs a `cursor_field` (the time each window after the first starts from)"#,
        ),
    ];
    let mut wrong = Vec::new();
    for (i, (text, expected)) in cases.iter().enumerate() {
        let got = message(text);
        if got != *expected {
            wrong.push(format!(
                "case {i}:\n  expected: {expected}\n       got: {got}"
            ));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// A URL that starts with `${VAR}` is the address itself, checked once expanded at run time;
/// a variable inside the URL stands for a plain value.
#[test]
fn urls_with_variables_are_checked_as_far_as_they_are_written() {
    for url in [
        "${API_URL}",
        "https://${API_HOST}/v1",
        "http://127.0.0.1:1/${TOKEN}/x",
    ] {
        let text = edit("http://127.0.0.1:1\"", &format!("{url}\""));
        assert_eq!(message(&text), "valid", "{url}");
    }
}

#[test]
fn every_example_workflow_has_the_right_shape() -> Result<(), Box<dyn std::error::Error>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../workflows");
    let mut checked = 0;
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "toml") {
            Workflow::load(&path)?;
            checked += 1;
        }
    }
    assert!(checked > 0);
    Ok(())
}

/// Cut anywhere, or with a stray character anywhere (non-ASCII too), the file gets a
/// message, never a panic, and never one in serde's words.
#[test]
fn no_edit_panics_or_speaks_rust() {
    let serde_words = [
        "invalid type",
        "untagged enum",
        "expected u",
        "missing field",
    ];
    let texts = [
        BASE.to_string(),
        BASE.replace("shop", "шоп")
            .replace("/orders", "/zamówienia"),
    ];
    for text in &texts {
        for (i, _) in text.char_indices() {
            let cut = message(&text[..i]);
            assert!(!serde_words.iter().any(|w| cut.contains(w)), "{cut}");
            for stray in ["é", "[", "{", "\"", "=\n", " 7\n"] {
                let mut edited = text.clone();
                edited.insert_str(i, stray);
                let got = message(&edited);
                assert!(!serde_words.iter().any(|w| got.contains(w)), "{got}");
            }
        }
    }
}

#[test]
fn schedule_mistakes_get_exact_messages() {
    let after_page_size =
        |schedule: &str| edit("page_size = 100", &format!("page_size = 100\n{schedule}"));
    let cases = [
        (
            edit("keep = \"30d\"", "keep = \"30d\"\nschedule = { every = \"15m\", cron = \"0 2 * * *\" }"),
            "w.toml:4:1: sync.schedule: give exactly one of `every` and `cron`",
        ),
        (
            edit("keep = \"30d\"", "keep = \"30d\"\nschedule = { every = \"1m\", timezone = \"UTC\" }"),
            "w.toml:4:28: sync.schedule.timezone: applies to `cron` only",
        ),
        (
            after_page_size("schedule = { cron = \"0 25 * * *\" }"),
            "w.toml:25:14: stream.orders.schedule.cron: `0 25 * * *` is not a cron expression \
             (Component error: Number out of bounds.); write five fields: minute hour \
             day-of-month month day-of-week, e.g. \"0 2 * * *\"",
        ),
        (
            edit(
                "window.lag = \"5m\"",
                "window.lag = \"5m\"\nschedule = { cron = \"0 2 * * *\", timezone = \"Europe/Berln\" }",
            ),
            "w.toml:35:34: stream.customers.schedule.timezone: `Europe/Berln` is not an IANA \
             time zone (e.g. \"Europe/Berlin\")",
        ),
        (
            after_page_size("schedule = { every = \"1m\", jitter = \"2m\" }"),
            "w.toml:25:28: stream.orders.schedule.jitter: must be shorter than `every`",
        ),
        (
            after_page_size("schedule = { every = \"soon\" }"),
            "w.toml:25:22: stream.orders.schedule.every: expected a duration such as \"30s\", \
             \"5m\" or \"1h 30m\", got \"soon\"",
        ),
        (
            after_page_size("schedule = { evry = \"1m\" }"),
            "w.toml:25:14: stream.orders.schedule.evry: unknown key; did you mean `every`?",
        ),
    ];
    for (text, want) in cases {
        assert_eq!(message(&text), want);
    }
    // A stream's own schedule or `[sync]`'s: both valid.
    assert_eq!(
        message(&after_page_size(
            "schedule = { cron = \"*/5 * * * *\", timezone = \"Asia/Tokyo\", jitter = \"30s\" }"
        )),
        "valid"
    );
}

#[test]
fn webhook_mistakes_get_exact_messages() {
    let hook = |w: &str| {
        edit(
            "page_size = 100",
            &format!("page_size = 100\nwebhook = {w}"),
        )
    };
    let cases = [
        (
            hook(r#"{ scheme = "standard", secrets = [] }"#),
            "w.toml:25:34: stream.orders.webhook.secrets: give at least one, e.g. [{ env = \"SHOP_WEBHOOK_SECRET\" }]",
        ),
        (
            hook(r#"{ scheme = "hmac", secrets = [{ env = "S" }] }"#),
            "w.toml:25:1: stream.orders.webhook.hmac: `scheme = \"hmac\"` needs an `hmac` table: { header = \"X-Signature\" }",
        ),
        (
            hook(r#"{ scheme = "github", secrets = [{ env = "S" }], apply = "fetch" }"#),
            "w.toml:25:1: stream.orders.webhook.fetch: `apply = \"fetch\"` needs the record's path, e.g. \"/orders/{event.data.id}\"",
        ),
        (
            hook(r#"{ scheme = "stripe", secrets = [{ env = "S" }], tolerance = "0s" }"#),
            "w.toml:25:59: stream.orders.webhook.tolerance: must be at least 1s",
        ),
        (
            hook(r#"{ scheme = "svix", secrets = [{ env = "S" }] }"#),
            "w.toml:25:22: stream.orders.webhook.scheme: expected one of \"standard\", \"stripe\", \"github\", \"shopify\" or \"hmac\", got \"svix\"",
        ),
    ];
    for (text, want) in cases {
        assert_eq!(message(&text), want);
    }
}

#[test]
fn body_mapping_mistakes_get_exact_messages() {
    let crm = |stream: &str, destination: &str| {
        edit(
            "[destination]\nkind = \"sqlite\"\npath = \"shop.db\"\n",
            &format!(
                "{stream}[destination]\nkind = \"http\"\nbase_url = \"http://127.0.0.1:2\"\n\
                 lookup = \"/c?external_id={{key}}\"\ncreate = \"/c\"\nupdate = \"/c/{{id}}\"\n\
                 {destination}"
            ),
        )
    };
    let cases = [
        (
            crm("", "body = { total = \"amount\" }\n"),
            "w.toml:47:10: destination.body.total: a destination field is `{ path = \"…\" }` (a \
             record field), `{ template = \"…{record.<path>}…\" }`, `{ value = … }` (a constant), \
             `{ link = \"<stream>\", by = \"<path>\" }`, or a table of fields (a nested object)",
        ),
        (
            crm(
                "",
                "[destination.body]\naccount = { link = \"accounts\", by = \"customer_id\" }\n",
            ),
            "w.toml:48:13: destination.body.account.link: `link = \"accounts\"`: no stream has that name \
             (streams: orders, customers)",
        ),
        (
            crm(
                "[stream.destination]\ncreate = \"/people\"\n\
                 body.name = { template = \"{record.first} {cursor}\" }\n",
                "",
            ),
            "w.toml:43:15: stream.customers.destination.body.name.template: `{cursor}`: a body \
             template takes `{record.<path>}` and `{key}`",
        ),
        (
            crm(
                "",
                "[destination.body.properties]\nemail = { path = \"email\", missing = \"drop\" }\n",
            ),
            "w.toml:48:27: destination.body.properties.email.missing: use `omit`, `null` or \
             `dead_letter`",
        ),
        (
            edit(
                "[destination]",
                "[stream.destination]\ncreate = \"/people\"\n\n[destination]",
            ),
            "w.toml:41:1: stream.customers.destination: a stream's `destination` table sets its \
             endpoints on an http destination",
        ),
        (
            crm("[stream.destination]\nlookup = \"\"\n", ""),
            "w.toml:41:1: stream.customers.destination: an http destination needs `lookup` (in \
             [destination], or in the stream's own `destination` table)",
        ),
    ];
    for (text, want) in cases {
        assert_eq!(message(&text), want, "{text}");
    }
}
