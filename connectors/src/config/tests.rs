//! Tests of workflow files: parsing, validation messages, digests, scopes.

use std::path::Path;

use waymark_engine::Timestamp;

use super::*;

const GOOD: &str = r#"
[sync]
name = "shop"

[source]
kind = "http"
base_url = "http://127.0.0.1:1"

[[stream]]
name = "orders"
path = "/orders"
records = "data"
primary_key = "id"
cursor_field = "updated_at"
pagination = { kind = "cursor", cursor_path = "next_cursor", cursor_param = "cursor" }

[destination]
kind = "sqlite"
path = "shop.db"
"#;

#[test]
fn unknown_key_is_reported_with_line_and_column() {
    let text = GOOD.replace("records = \"data\"", "recrods = \"data\"");
    let err = Workflow::parse(Path::new("w.toml"), &text)
        .map(|_| ())
        .unwrap_err();
    let msg = err.to_string();
    assert_eq!(
        msg,
        "w.toml:12:1: stream.orders.recrods: unknown key; did you mean `records`?"
    );
}

#[test]
fn wrong_type_and_bad_duration_are_reported() {
    let text = GOOD.replace("kind = \"http\"", "kind = \"http\"\ntimeout = \"soon\"");
    let msg = Workflow::parse(Path::new("w.toml"), &text)
        .map(|_| ())
        .unwrap_err()
        .to_string();
    assert_eq!(
        msg,
        "w.toml:7:11: source.timeout: expected a duration such as \"30s\", \"5m\" or \"1h 30m\", \
         got \"soon\""
    );
    let text = GOOD.replace("path = \"/orders\"", "path = 3");
    let msg = Workflow::parse(Path::new("w.toml"), &text)
        .map(|_| ())
        .unwrap_err()
        .to_string();
    assert_eq!(
        msg,
        "w.toml:11:8: stream.orders.path: expected a string, got the number 3"
    );
}

fn error(text: &str) -> String {
    Workflow::parse(Path::new("w.toml"), text)
        .map(|_| ())
        .map_err(|e| e.to_string())
        .err()
        .unwrap_or_default()
}

#[test]
fn keys_inside_inline_tables_and_later_tables_are_named() {
    let text = GOOD.replace("cursor_param = \"cursor\"", "cursor_parm = \"cursor\"");
    let msg = error(&text);
    assert_eq!(
        msg,
        "w.toml:15:62: stream.orders.pagination.cursor_parm: unknown key; did you mean \
         `cursor_param`? (kind = \"cursor\" takes cursor_path, cursor_param, cursor_in, \
         has_more_path, end_path, max_records and limit_param)"
    );
    let two = format!("{GOOD}\n[[stream]]\nname = \"b\"\npath = 7\n");
    let msg = error(&two.replace("[destination]\nkind = \"sqlite\"\npath = \"shop.db\"\n", ""));
    assert_eq!(
        msg,
        "w.toml:20:8: stream.b.path: expected a string, got the number 7"
    );
}

#[test]
fn each_pagination_style_checks_its_own_keys() {
    let keyset = GOOD.replace(
        "{ kind = \"cursor\", cursor_path = \"next_cursor\", cursor_param = \"cursor\" }",
        "{ kind = \"keyset\", id_param = \"since_id\" }",
    );
    assert_eq!(
        error(&keyset),
        "w.toml:15:1: stream.orders.pagination.since_param: required with kind = \"keyset\""
    );
    let stray = GOOD.replace(
        "cursor_param = \"cursor\"",
        "cursor_param = \"c\", page_param = \"p\"",
    );
    assert_eq!(
        error(&stray),
        "w.toml:15:82: stream.orders.pagination.page_param: applies to kind = \"page_number\", \
         not \"cursor\"; kind = \"cursor\" takes cursor_path, cursor_param, cursor_in, \
         has_more_path, end_path, max_records and limit_param"
    );
    let no_field = keyset
        .replace("id_param", "since_param")
        .replace("cursor_field = \"updated_at\"\n", "");
    assert!(error(&no_field).contains("stream.orders.cursor_field: keyset pagination needs"));
}

#[test]
fn warns_about_offset_pages_on_an_incremental_stream() -> Result<(), Error> {
    let text = GOOD.replace(
        "{ kind = \"cursor\", cursor_path = \"next_cursor\", cursor_param = \"cursor\" }",
        "{ kind = \"offset\", offset_param = \"offset\" }\nwindow = { start_param = \"since\" }",
    );
    let w = Workflow::parse(Path::new("w.toml"), &text)?;
    let warnings = w.warnings();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert_eq!(warnings[0].0, "stream.orders.pagination.kind");
    assert!(warnings[0].1.contains("skip or repeat records"));
    Ok(())
}

#[test]
fn warns_about_max_seen_when_nothing_sends_the_window_start() -> Result<(), Error> {
    let warned = |window: &str, params: &str| -> Result<bool, Error> {
        let text = GOOD.replace(
            "primary_key = \"id\"",
            &format!("primary_key = \"id\"\nwindow = {window}\n{params}"),
        );
        let w = Workflow::parse(Path::new("w.toml"), &text)?;
        Ok(w.warnings().iter().any(|(key, message)| {
            key == "stream.orders.window.start" && message.contains("nothing sends the start")
        }))
    };
    assert!(warned("{ start = \"max_seen\" }", "")?);
    assert!(!warned(
        "{ start = \"max_seen\", start_param = \"since\" }",
        ""
    )?);
    let templated = "params = { since = \"{window.start|unix}\" }";
    assert!(!warned("{ start = \"max_seen\" }", templated)?);
    assert!(!warned("{ start = \"watermark\" }", "")?);
    Ok(())
}

#[test]
fn concurrent_partitions_need_a_step_and_both_window_bounds_sent() -> Result<(), Error> {
    let with = |lines: &str| {
        GOOD.replace(
            "primary_key = \"id\"",
            &format!("primary_key = \"id\"\n{lines}"),
        )
    };
    let bounds = "start_param = \"since\", end_param = \"until\"";
    assert!(
        error(&with(&format!("window = {{ {bounds} }}\nconcurrency = 4")))
            .contains("stream.orders.concurrency: needs `window.step`")
    );
    let one_bound = with("window = { step = \"1d\", start_param = \"since\" }\nconcurrency = 4");
    assert!(error(&one_bound).contains("must send both of its bounds"));
    assert!(error(&with("concurrency = 0")).contains("stream.orders.concurrency"));
    // Templates count as sending a bound; one partition at a time needs nothing.
    let templated = with(
        "window = { step = \"1d\", initial = \"30d\", start_param = \"since\" }\n\
         params = { before = \"{window.end|unix}\" }\nconcurrency = 4",
    );
    let w = Workflow::parse(Path::new("w.toml"), &templated)?;
    assert!(w.warnings().is_empty(), "{:?}", w.warnings());
    assert_eq!(
        w.plan(&w.file().stream[0], false).step,
        None,
        "the run is the whole window"
    );
    Workflow::parse(Path::new("w.toml"), &with("concurrency = 1"))?;
    // Without `initial` the first window has no start to cut: a warning says so.
    let first = with(&format!(
        "window = {{ step = \"1d\", {bounds} }}\nconcurrency = 4"
    ));
    let w = Workflow::parse(Path::new("w.toml"), &first)?;
    assert_eq!(w.warnings()[0].0, "stream.orders.concurrency");
    Ok(())
}

#[test]
fn backfill_scopes_round_trip() {
    let scope = backfill_scope("orders", Timestamp(1_000), Timestamp(2_000));
    assert_eq!(
        scope,
        "orders@backfill:1970-01-01T00:00:01.000Z..1970-01-01T00:00:02.000Z"
    );
    assert_eq!(
        parse_scope(&scope),
        ("orders", Some((Timestamp(1_000), Timestamp(2_000))))
    );
    assert_eq!(parse_scope("orders"), ("orders", None));
    assert_eq!(parse_scope(&repair_scope("orders")), ("orders", None));
    assert!(is_repair_scope(&repair_scope("orders")));
    assert_eq!(parse_scope("orders@dlq-retry"), ("orders", None));
}

#[test]
fn initial_is_a_time_or_an_age() {
    let now = Timestamp(1_000_000_000_000);
    assert_eq!(initial_start("30s", now), Ok(Timestamp(999_999_970_000)));
    assert_eq!(
        initial_start("2001-09-09T01:46:40Z", now),
        Ok(Timestamp(1_000_000_000_000))
    );
    assert!(initial_start("last tuesday", now).is_err());
}

#[test]
fn semantic_errors_name_the_key() {
    let text = GOOD.replace("primary_key = \"id\"", "primary_key = \"\"");
    let msg = Workflow::parse(Path::new("w.toml"), &text)
        .map(|_| ())
        .unwrap_err()
        .to_string();
    assert_eq!(
        msg,
        "w.toml:13:1: stream.orders.primary_key: every stream needs a primary key"
    );
}

#[test]
fn an_integer_key_is_one_path_and_a_deletions_feed_keys_like_its_target() {
    let composite = GOOD.replace(
        "primary_key = \"id\"",
        "primary_key = [\"shop\", \"id\"]\nkey_type = \"integer\"",
    );
    assert_eq!(
        error(&composite),
        "w.toml:14:1: stream.orders.key_type: an integer key is a single path: a composite \
         primary_key is kept as text"
    );
    let feed = |key_type: &str| {
        format!(
            "{}\n[[stream]]\nname = \"gone\"\npath = \"/gone\"\nprimary_key = \"id\"\n\
             cursor_field = \"deleted_at\"\ndeletes = \"orders\"\n{key_type}\n\
             pagination = {{ kind = \"cursor\", cursor_path = \"n\", cursor_param = \"c\" }}\n",
            GOOD.replace(
                "primary_key = \"id\"",
                "primary_key = \"id\"\nkey_type = \"integer\""
            )
        )
    };
    let msg = error(&feed(""));
    assert!(
        msg.contains("stream.gone.key_type") && msg.contains("`orders`'s key_type (\"integer\")"),
        "{msg}"
    );
    assert_eq!(error(&feed("key_type = \"integer\"")), "");
}

#[test]
fn digest_ignores_formatting_and_names_changes() -> Result<(), Error> {
    let a = Workflow::parse(Path::new("w.toml"), GOOD)?;
    let b = Workflow::parse(Path::new("w.toml"), &format!("# comment\n{GOOD}"))?;
    let c = Workflow::parse(Path::new("w.toml"), &GOOD.replace("\"id\"", "\"order_id\""))?;
    let plan = |w: &Workflow| w.plan(&w.streams()[0], false);
    assert_eq!(plan(&a).workflow_digest, plan(&b).workflow_digest);
    assert_ne!(plan(&a).workflow_digest, plan(&c).workflow_digest);
    assert!(plan(&a)
        .fingerprint
        .contains(&("stream.primary_key".into(), "\"id\"".into())));
    Ok(())
}

#[test]
fn operational_knobs_do_not_change_the_digest() -> Result<(), Error> {
    let a = Workflow::parse(Path::new("w.toml"), GOOD)?;
    let tuned = GOOD.replace(
        "kind = \"http\"",
        "kind = \"http\"\ntimeout = \"5s\"\nmax_attempts = 9\nrate_limit = { requests = 2, per = \"1s\" }\n\
         auth = { kind = \"bearer\", token = { env = \"T\" } }\n\
         on_response = [{ status = 400, action = \"retry\" }]",
    );
    let tuned = tuned.replace(
        "cursor_field = \"updated_at\"",
        "cursor_field = \"updated_at\"\non_response = [{ status = 404, action = \"ignore\" }]",
    );
    let b = Workflow::parse(
        Path::new("w.toml"),
        &tuned
            .replace("name = \"shop\"", "name = \"shop\"\nkeep = \"1d\"")
            .replace(
                "primary_key = \"id\"",
                "primary_key = \"id\"\nkey_type = \"integer\"",
            ),
    )?;
    assert_eq!(
        a.plan(&a.streams()[0], false).workflow_digest,
        b.plan(&b.streams()[0], false).workflow_digest
    );
    Ok(())
}

#[test]
fn resilience_settings_are_checked() {
    let with = |source: &str| {
        let text = GOOD.replace("kind = \"http\"", &format!("kind = \"http\"\n{source}"));
        Workflow::parse(Path::new("w.toml"), &text)
            .map(|_| ())
            .err()
            .map(|e| e.to_string())
    };
    assert_eq!(
        with("on_response = [{ action = \"retry\" }]").as_deref(),
        Some(
            "w.toml:7:16: source.on_response[0]: give at least one condition: `status`, \
             `header` or `body_contains`"
        )
    );
    assert!(with("backoff = { base = \"5s\", cap = \"1s\" }")
        .is_some_and(|e| e.contains("source.backoff: needs 0 < base <= cap")));
    assert!(with("max_wait = \"1s\"")
        .is_some_and(|e| e.contains("source.max_wait: must be at least backoff.cap")));
    assert!(with("rate_limit = { requests = 0, per = \"1s\" }")
        .is_some_and(|e| e.contains("source.rate_limit: needs requests >= 1")));
    assert!(
        with("auth = { kind = \"bearer\", token = { env = \"T\" }, extra = 1 }")
            .is_some_and(|e| e
                .ends_with("source.auth.extra: unknown key; the known ones are kind and token")),
        "{:?}",
        with("auth = { kind = \"bearer\", token = { env = \"T\" }, extra = 1 }")
    );
    assert!(with("auth = { kind = \"magic\" }").is_some_and(|e| e.contains("magic")));
    assert!(with(
        "auth = { kind = \"oauth2\", token_url = \"nope\", client_id = \"a\", \
         client_secret = { env = \"S\" } }"
    )
    .is_some_and(|e| e.contains(
        "source.auth.token_url: `nope` is not an http:// or https:// URL; write the scheme"
    )));
    assert_eq!(
        with("auth = { kind = \"bearer\", token = { env = \"T\" } }\nrate_limit = { requests = 3, per = \"1s\", burst = 2 }"),
        None
    );
}

#[test]
fn expands_environment_variables() {
    std::env::set_var("WAYMARK_TEST_HOST", "example.test");
    assert_eq!(
        expand_env("http://${WAYMARK_TEST_HOST}/x").as_deref(),
        Ok("http://example.test/x")
    );
    assert!(expand_env("${WAYMARK_TEST_MISSING_VAR}").is_err());
}
