//! The semantic checks run after parsing (one key path per message), and warnings.

use std::time::Duration;

use waymark_engine::Timestamp;

use super::destination::{DestinationKind, FileKind, HttpTarget, StreamDestination};
use super::digest::json_strings;
use super::error::Error;
use super::http::{AuthSection, RateLimit, ResponseRule, Statuses};
use super::schedule::Cadence;
use super::source::{CursorIn, Method, PaginationKind};
use super::stream::StreamSection;
use super::stream::{initial_start, KeyType, PrimaryKey, WindowStart, RESERVED};
use super::template::check;
use super::tenants::mentions_tenant;
use super::url::check_written;
use super::workflow::Workflow;

/// The shortest request or connect timeout: a shorter one fails requests before an API can
/// answer (and `"0s"` does not mean "no timeout").
const SHORTEST_TIMEOUT: Duration = Duration::from_millis(100);

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

impl Workflow {
    /// Every check, section by section, in file order: the first problem is reported.
    pub(super) fn validate(&self) -> Result<(), Error> {
        self.check_sync()?;
        self.check_alerts()?;
        self.check_destination()?;
        self.check_source()?;
        self.check_response_rules()?;
        let mut seen = std::collections::HashSet::new();
        for s in &self.file.stream {
            self.check_stream_name(s)?;
            if !seen.insert(&s.name) {
                let key = format!("stream.{}.name", s.name);
                return Err(self.invalid(key, "two streams have this name"));
            }
            self.check_records(s)?;
            self.check_key_type(s)?;
            self.check_deletes(s)?;
            self.check_reconcile(s)?;
            self.check_schedule(s)?;
            self.check_webhook(s)?;
            self.check_requests(s)?;
            self.check_parent(s)?;
            self.check_paging(s)?;
            self.check_http_target(s)?;
        }
        Ok(())
    }

    /// `[sync]`.
    fn check_sync(&self) -> Result<(), Error> {
        if !valid_name(&self.file.sync.name) {
            return Err(self.invalid("sync.name".into(), "use letters, digits, `_` or `-`"));
        }
        if self.file.stream.is_empty() {
            return Err(self.invalid("stream".into(), "declare at least one [[stream]]"));
        }
        Ok(())
    }

    /// `[tenants]`: one list, and a destination that keeps each tenant's records apart.
    pub(super) fn check_tenants(&self) -> Result<(), Error> {
        let Some(t) = &self.file.tenants else {
            return Ok(());
        };
        let d = &self.file.destination;
        match (&t.file, &t.query) {
            (Some(_), Some(_)) | (None, None) => {
                return Err(self.invalid(
                    "tenants".into(),
                    "give the list as `file` (a .toml, .json or .csv file) or as `query` (SQL \
                     on the PostgreSQL destination), one of the two",
                ))
            }
            (None, Some(_)) if d.kind != DestinationKind::Postgres => {
                return Err(self.invalid(
                    "tenants.query".into(),
                    "a tenants query runs on the destination, which is not PostgreSQL; list \
                     the tenants in a `file` instead",
                ))
            }
            (None, Some(_)) if d.url.as_ref().is_some_and(|u| mentions_tenant(&u.env)) => {
                return Err(self.invalid(
                    "tenants.query".into(),
                    "the tenants query runs before any tenant is known, so the destination's \
                     `url` cannot depend on the tenant",
                ))
            }
            _ => {}
        }
        if t.id.is_empty() {
            return Err(self.invalid("tenants.id".into(), "name the field holding tenant ids"));
        }
        // Names are the template's: each tenant's instance is `<sync>:<tenant>`.
        let names = std::iter::once(("sync.name".to_string(), &self.file.sync.name)).chain(
            self.file
                .stream
                .iter()
                .map(|s| (format!("stream.{}.name", s.name), &s.name)),
        );
        for (key, name) in names {
            if mentions_tenant(name) {
                return Err(self.invalid(
                    key,
                    "names are the same for every tenant (each tenant's sync is \
                     `<sync>:<tenant id>`); keep `{tenant.…}` out of them",
                ));
            }
        }
        self.check_sync()?;
        let apart = match d.kind {
            DestinationKind::Sqlite | DestinationKind::Jsonl => {
                d.path.as_deref().is_some_and(mentions_tenant)
            }
            DestinationKind::Postgres => {
                d.schema.as_deref().is_some_and(mentions_tenant)
                    || d.url.as_ref().is_some_and(|u| mentions_tenant(&u.env))
            }
            DestinationKind::Http => d.base_url.as_deref().is_some_and(mentions_tenant),
        };
        if !apart {
            let key = match d.kind {
                DestinationKind::Sqlite | DestinationKind::Jsonl => "path",
                DestinationKind::Postgres => "schema",
                DestinationKind::Http => "base_url",
            };
            return Err(self.invalid(
                format!("destination.{key}"),
                format!(
                    "with [tenants], each tenant's records need a place of their own (two \
                     tenants' record 1 are not the same record): put `{{tenant.id}}` in \
                     `destination.{key}`"
                ),
            ));
        }
        Ok(())
    }

    /// `[alerts]`: somewhere to send them.
    fn check_alerts(&self) -> Result<(), Error> {
        let Some(alerts) = &self.file.alerts else {
            return Ok(());
        };
        if alerts.webhook.is_none() && alerts.command.is_none() {
            return Err(self.invalid(
                "alerts".into(),
                "give `webhook` (a URL to POST to), `command`, or both",
            ));
        }
        if let Some(url) = &alerts.webhook {
            check_written(url).map_err(|e| self.invalid("alerts.webhook".into(), e))?;
        }
        if !(0.0..=1.0).contains(&alerts.server_errors_above) {
            return Err(self.invalid(
                "alerts.server_errors_above".into(),
                "must be a fraction from 0 to 1 (0.005 is 0.5%)",
            ));
        }
        if alerts.command.as_ref().is_some_and(|c| c.is_empty()) {
            return Err(self.invalid(
                "alerts.command".into(),
                "give the program to run (and its arguments), e.g. [\"/usr/local/bin/page\"]",
            ));
        }
        Ok(())
    }

    /// `[destination]`: what its kind needs.
    fn check_destination(&self) -> Result<(), Error> {
        let d = &self.file.destination;
        match d.kind {
            DestinationKind::Sqlite | DestinationKind::Jsonl if d.path.is_none() => {
                return Err(self.invalid(
                    "destination".into(),
                    "sqlite and jsonl destinations need `path` (the database file, or the \
                     directory)",
                ))
            }
            DestinationKind::Postgres if d.url.is_none() => {
                return Err(self.invalid(
                    "destination".into(),
                    "a postgres destination needs `url = { env = \"…\" }` (the connection \
                     string, read from the environment)",
                ))
            }
            DestinationKind::Http if d.base_url.is_none() => {
                return Err(
                    self.invalid("destination".into(), "an http destination needs `base_url`")
                )
            }
            DestinationKind::Http => {}
            _ if d.body.is_some() => {
                return Err(self.invalid(
                    "destination.body".into(),
                    "`body` maps records onto an http destination's fields",
                ))
            }
            _ => {}
        }
        self.check_destination_path()?;
        if let Some(url) = &d.base_url {
            check_written(url).map_err(|e| self.invalid("destination.base_url".into(), e))?;
        }
        self.check_auth("destination.auth", d.auth.as_ref())?;
        self.check_rate_limit("destination.rate_limit", d.rate_limit.as_ref())
    }

    /// What is already at a SQLite or JSONL destination's path: SQLite writes its
    /// `-journal` and `-wal` files beside the database, so a device (`/dev/null`), a
    /// directory or a FIFO is refused before anything is created next to it.
    fn check_destination_path(&self) -> Result<(), Error> {
        let path = self.destination_path();
        let (wanted, instead) = match self.file.destination.kind {
            DestinationKind::Sqlite => (FileKind::Regular, "the path of a SQLite database file"),
            DestinationKind::Jsonl => (FileKind::Directory, "the directory of the JSONL files"),
            DestinationKind::Postgres | DestinationKind::Http => return Ok(()),
        };
        match FileKind::at(&path) {
            Some(kind) if kind != wanted => Err(self.invalid(
                "destination.path".into(),
                format!(
                    "{} is {kind}, not {wanted}: give {instead} (created if missing)",
                    path.display()
                ),
            )),
            _ => Ok(()),
        }
    }

    /// `[source]`: URL, timeouts, retries, rate limit, credentials.
    fn check_source(&self) -> Result<(), Error> {
        let source = &self.file.source;
        check_written(&source.base_url).map_err(|e| self.invalid("source.base_url".into(), e))?;
        for (key, timeout) in [
            ("source.timeout", source.timeout),
            ("source.connect_timeout", source.connect_timeout),
        ] {
            if timeout.0 < SHORTEST_TIMEOUT {
                return Err(self.invalid(
                    key.into(),
                    format!(
                        "must be at least {}, or requests time out before the API can answer \
                         (for a slow API give a long one, e.g. \"5m\")",
                        humantime::format_duration(SHORTEST_TIMEOUT)
                    ),
                ));
            }
        }
        if source.max_attempts == 0 {
            return Err(self.invalid("source.max_attempts".into(), "must be at least 1"));
        }
        if source.backoff.base.0.is_zero() || source.backoff.base.0 > source.backoff.cap.0 {
            return Err(self.invalid(
                "source.backoff".into(),
                "needs 0 < base <= cap, e.g. { base = \"250ms\", cap = \"30s\" }",
            ));
        }
        if source.backoff.cap.0 > source.max_wait.0 {
            return Err(self.invalid(
                "source.max_wait".into(),
                "must be at least backoff.cap (a backoff would otherwise pause the run)",
            ));
        }
        self.check_rate_limit("source.rate_limit", source.rate_limit.as_ref())?;
        self.check_auth("source.auth", source.auth.as_ref())
    }

    /// A `rate_limit` (the source's or an HTTP destination's): a budget that allows no
    /// request would stall every run.
    fn check_rate_limit(&self, key: &str, limit: Option<&RateLimit>) -> Result<(), Error> {
        match limit {
            Some(limit) if limit.requests == 0 || limit.per.0.is_zero() || limit.burst == 0 => {
                Err(self.invalid(
                    key.into(),
                    "needs requests >= 1, a non-zero `per` and burst >= 1, e.g. \
                     { requests = 10, per = \"1s\" }",
                ))
            }
            Some(RateLimit {
                bucket_header: Some(name),
                ..
            }) if reqwest::header::HeaderName::from_bytes(name.as_bytes()).is_err() => {
                Err(self.invalid(format!("{key}.bucket_header"), "is not a header name"))
            }
            _ => Ok(()),
        }
    }

    /// An `auth` table (the source's or an HTTP destination's): an OAuth2 token endpoint
    /// is an http(s) URL.
    fn check_auth(&self, key: &str, auth: Option<&AuthSection>) -> Result<(), Error> {
        if let Some(AuthSection::Oauth2 { token_url, .. }) = auth {
            super::url::http_url(token_url)
                .map_err(|e| self.invalid(format!("{key}.token_url"), e))?;
        }
        Ok(())
    }

    /// Every `on_response` rule, the source's and the streams'.
    fn check_response_rules(&self) -> Result<(), Error> {
        let rules = self
            .file
            .source
            .on_response
            .iter()
            .enumerate()
            .map(|(i, r)| (format!("source.on_response[{i}]"), r))
            .chain(self.file.stream.iter().flat_map(|s| {
                s.on_response
                    .iter()
                    .enumerate()
                    .map(move |(i, r)| (format!("stream.{}.on_response[{i}]", s.name), r))
            }));
        for (key, rule) in rules {
            if !rule.has_condition() {
                return Err(self.invalid(
                    key,
                    "give at least one condition: `status`, `header` or `body_contains`",
                ));
            }
            self.check_statuses(&key, rule)?;
        }
        Ok(())
    }

    /// A rule's status codes: one outside 100–599 never matches a response.
    fn check_statuses(&self, key: &str, rule: &ResponseRule) -> Result<(), Error> {
        let (codes, listed): (&[u16], bool) = match &rule.status {
            None => return Ok(()),
            Some(Statuses::One(code)) => (std::slice::from_ref(code), false),
            Some(Statuses::Many(codes)) => (codes, true),
        };
        for (i, code) in codes.iter().enumerate() {
            if !(100..=599).contains(code) {
                let key = match listed {
                    true => format!("{key}.status[{i}]"),
                    false => format!("{key}.status"),
                };
                return Err(self.invalid(
                    key,
                    format!(
                        "{code} is not an HTTP status (100 to 599): the rule would never match"
                    ),
                ));
            }
        }
        Ok(())
    }

    /// A stream's name (it names a table).
    fn check_stream_name(&self, s: &StreamSection) -> Result<(), Error> {
        let key = |k: &str| format!("stream.{}.{k}", s.name);
        if !s
            .name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_')
            || s.name.is_empty()
        {
            return Err(self.invalid(
                key("name"),
                "use letters, digits and `_` (it names a table)",
            ));
        }
        if s.name.starts_with("_waymark") {
            return Err(self.invalid(key("name"), "names starting with `_waymark` are reserved"));
        }
        Ok(())
    }

    /// What a stream reads: records path, key, columns, page size.
    fn check_records(&self, s: &StreamSection) -> Result<(), Error> {
        let key = |k: &str| format!("stream.{}.{k}", s.name);
        if s.records.starts_with('$') {
            serde_json_path::JsonPath::parse(&s.records)
                .map_err(|e| self.invalid(key("records"), format!("not a JSONPath: {e}")))?;
        }
        if s.primary_key.paths().iter().any(|p| p.trim().is_empty()) {
            return Err(self.invalid(key("primary_key"), "every stream needs a primary key"));
        }
        for name in s.columns.keys() {
            let key = key(&format!("columns.{name}"));
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(self.invalid(key, "a column name uses letters, digits and `_`"));
            }
            if RESERVED.contains(&name.as_str()) {
                return Err(self.invalid(
                    key,
                    format!("`{name}` is a column of every table; choose another name"),
                ));
            }
        }
        if s.page_size == 0 {
            return Err(self.invalid(key("page_size"), "must be at least 1"));
        }
        Ok(())
    }

    /// `key_type`: an integer key is one field (a deletions feed's is its target's:
    /// [`Self::check_deletes`]).
    fn check_key_type(&self, s: &StreamSection) -> Result<(), Error> {
        if s.key_type == KeyType::Integer && matches!(s.primary_key, PrimaryKey::Composite(_)) {
            return Err(self.invalid(
                format!("stream.{}.key_type", s.name),
                "an integer key is a single path: a composite primary_key is kept as text",
            ));
        }
        Ok(())
    }

    /// A deletions feed (`deletes`) and its target.
    fn check_deletes(&self, s: &StreamSection) -> Result<(), Error> {
        let key = |k: &str| format!("stream.{}.{k}", s.name);
        if let Some(target) = &s.deletes {
            let Some(t) = self.file.stream.iter().find(|t| &t.name == target) else {
                return Err(self.invalid(
                    key("deletes"),
                    format!("no stream named `{target}` in this file"),
                ));
            };
            if t.name == s.name || t.deletes.is_some() {
                return Err(self.invalid(
                    key("deletes"),
                    format!("`{target}` is itself a deletions feed"),
                ));
            }
            if t.key_type != s.key_type {
                return Err(self.invalid(
                    key("key_type"),
                    format!(
                        "a deletions feed deletes rows of `{target}` by their keys: give it \
                         `{target}`'s key_type ({})",
                        serde_json::to_string(&t.key_type).unwrap_or_default()
                    ),
                ));
            }
            if s.cursor_field.is_none() || t.cursor_field.is_none() {
                return Err(self.invalid(
                    key("deletes"),
                    format!(
                        "a deletions feed and `{target}` both need a `cursor_field` (the \
                         deletion time and the record version), so a delete never removes \
                         a newer record"
                    ),
                ));
            }
        }
        Ok(())
    }

    /// The schedule `waymark serve` follows: the stream's own, else `[sync]`'s.
    fn check_schedule(&self, s: &StreamSection) -> Result<(), Error> {
        let (section, at) = match (&s.schedule, &self.file.sync.schedule) {
            (Some(own), _) => (own, format!("stream.{}.schedule", s.name)),
            (None, Some(shared)) => (shared, "sync.schedule".to_string()),
            (None, None) => return Ok(()),
        };
        match Cadence::new(section, &format!("{}/{}", self.file.sync.name, s.name)) {
            Ok(_) => Ok(()),
            Err(("", why)) => Err(self.invalid(at, why)),
            Err((key, why)) => Err(self.invalid(format!("{at}.{key}"), why)),
        }
    }

    /// A stream's webhook.
    fn check_webhook(&self, s: &StreamSection) -> Result<(), Error> {
        let Some(w) = &s.webhook else {
            return Ok(());
        };
        let at = format!("stream.{}.webhook", s.name);
        if s.parent.is_some() || s.deletes.is_some() {
            return Err(self.invalid(
                at,
                "a child stream or a deletions feed cannot take webhooks: put the webhook on \
                 the stream its events change",
            ));
        }
        match w.check() {
            Ok(()) => Ok(()),
            Err((key, why)) => Err(self.invalid(format!("{at}.{key}"), why)),
        }
    }

    /// A stream's declared reconciliation.
    fn check_reconcile(&self, s: &StreamSection) -> Result<(), Error> {
        let key = |k: &str| format!("stream.{}.{k}", s.name);
        if let Some(r) = &s.reconcile {
            if r.every.0.is_zero() {
                return Err(self.invalid(key("reconcile.every"), "must be longer than 0s"));
            }
            if r.window.is_some_and(|w| w.0.is_zero()) {
                return Err(self.invalid(
                    key("reconcile.window"),
                    "must be longer than 0s (leave it out to compare every record)",
                ));
            }
            if r.sample == Some(0) {
                return Err(self.invalid(
                    key("reconcile.sample"),
                    "must be at least 1: a sample of 0 records compares no values (leave it out instead)",
                ));
            }
            if !(0.0..=1.0).contains(&r.max_gap_rate) {
                return Err(self.invalid(
                    key("reconcile.max_gap_rate"),
                    "a fraction between 0 and 1, e.g. 0.01 for 1%",
                ));
            }
            if s.deletes.is_some() {
                return Err(self.invalid(
                    key("reconcile"),
                    "a deletions feed is reconciled with the stream it deletes from",
                ));
            }
            if r.window.is_some() && !s.sends_window() {
                return Err(self.invalid(
                    key("reconcile.window"),
                    "the stream has no window parameters, so only a full reconciliation \
                     is possible: remove `window`",
                ));
            }
        }
        Ok(())
    }

    /// A stream's window start and request templates.
    fn check_requests(&self, s: &StreamSection) -> Result<(), Error> {
        let key = |k: &str| format!("stream.{}.{k}", s.name);
        if let Some(initial) = &s.window.initial {
            initial_start(initial, Timestamp(0))
                .map_err(|e| self.invalid(key("window.initial"), e))?;
        }
        let child = s.parent.is_some();
        let templates = std::iter::once(("path".to_string(), s.path.clone()))
            .chain(
                s.params
                    .iter()
                    .map(|(k, v)| (format!("params.{k}"), v.clone())),
            )
            .chain(
                s.headers
                    .iter()
                    .map(|(k, v)| (format!("headers.{k}"), v.clone())),
            )
            .chain(
                s.body
                    .iter()
                    .flat_map(json_strings)
                    .map(|v| ("body".to_string(), v)),
            );
        for (k, template) in templates {
            check(&template, child).map_err(|e| self.invalid(key(&k), e))?;
        }
        Ok(())
    }

    /// On an HTTP destination, the stream's endpoints (its own or the destination's) and
    /// its body mapping, whose links name streams of this file.
    fn check_http_target(&self, s: &StreamSection) -> Result<(), Error> {
        let d = &self.file.destination;
        if d.kind != DestinationKind::Http {
            return match s.destination {
                Some(_) => Err(self.invalid(
                    format!("stream.{}.destination", s.name),
                    "a stream's `destination` table sets its endpoints on an http destination",
                )),
                None => Ok(()),
            };
        }
        let target = HttpTarget::of(d, &s.name, s.destination.as_ref())
            .map_err(|(key, why)| self.invalid(key, why))?;
        let at = match s.destination {
            Some(_) => format!("stream.{}.destination", s.name),
            None => "destination".into(),
        };
        for (k, v) in [
            ("lookup", &target.lookup),
            ("create", &target.create),
            ("update", &target.update),
        ] {
            if v.is_empty() {
                return Err(self.invalid(
                    at.clone(),
                    format!(
                        "an http destination needs `{k}` (in [destination], or in the stream's \
                         own `destination` table)"
                    ),
                ));
            }
        }
        let body = match (&s.destination, &target.body) {
            (Some(StreamDestination { body: Some(_), .. }), _) => {
                format!("stream.{}.destination.body", s.name)
            }
            _ => "destination.body".into(),
        };
        for (key, stream, _) in target.body.iter().flat_map(|b| b.links(&body)) {
            if self.file.stream.iter().all(|other| other.name != stream) {
                let names: Vec<&str> = self.file.stream.iter().map(|s| s.name.as_str()).collect();
                return Err(self.invalid(
                    format!("{key}.link"),
                    format!(
                        "`link = \"{stream}\"`: no stream has that name (streams: {})",
                        names.join(", ")
                    ),
                ));
            }
        }
        Ok(())
    }

    /// A child stream's parent.
    fn check_parent(&self, s: &StreamSection) -> Result<(), Error> {
        let key = |k: &str| format!("stream.{}.{k}", s.name);
        if let Some(parent) = &s.parent {
            let kind = self.file.destination.kind;
            if !matches!(kind, DestinationKind::Sqlite | DestinationKind::Postgres) {
                return Err(self.invalid(
                    key("parent"),
                    "child streams read their parents from a sqlite or postgres destination",
                ));
            }
            let position = self.file.stream.iter().position(|t| &t.name == parent);
            let me = self.file.stream.iter().position(|t| t.name == s.name);
            match (position, me) {
                (Some(p), Some(m)) if p < m => {
                    if self.file.stream[p].deletes.is_some() {
                        return Err(
                            self.invalid(key("parent"), format!("`{parent}` is a deletions feed"))
                        );
                    }
                }
                (Some(_), _) => {
                    return Err(self.invalid(
                        key("parent"),
                        format!("`{parent}` must come before this stream in the file"),
                    ))
                }
                (None, _) => {
                    return Err(self.invalid(
                        key("parent"),
                        format!("no stream named `{parent}` in this file"),
                    ))
                }
            }
        }
        Ok(())
    }

    /// Deletion flags, window slices and pagination.
    fn check_paging(&self, s: &StreamSection) -> Result<(), Error> {
        let key = |k: &str| format!("stream.{}.{k}", s.name);
        if s.deleted_when.is_some() && s.cursor_field.is_none() {
            return Err(self.invalid(
                key("deleted_when"),
                "needs a `cursor_field` (the version compared with later copies)",
            ));
        }
        if s.window.start == WindowStart::MaxSeen && s.cursor_field.is_none() {
            return Err(self.invalid(
                key("window.start"),
                "`max_seen` needs a `cursor_field` (the time each window after the first \
                 starts from)",
            ));
        }
        if partitioned(s) {
            let why = if s.window.step.is_none() {
                Some("needs `window.step`, the length of each partition read at once")
            } else if s.parent.is_some() {
                Some("a child stream is read parent after parent; it cannot be partitioned")
            } else if !s.sends("start") || !s.sends("end") {
                Some(
                    "each partition is a slice of the window: the stream must send both of \
                     its bounds to the API (`window.start_param` and `window.end_param`, or \
                     `{window.start}` and `{window.end}` in the path, parameters, headers or \
                     body), or every partition reads to the present",
                )
            } else {
                None
            };
            if let Some(why) = why {
                return Err(self.invalid(key("concurrency"), why));
            }
        }
        if s.pagination.max_records.is_some() {
            let why = if s.cursor_field.is_none() {
                Some("needs a `cursor_field`: a capped query starts again from its greatest value")
            } else if s.parent.is_some() {
                Some("a child stream's queries are per parent; it cannot start them again")
            } else if !s.sends("start") {
                Some(
                    "a capped query starts again from a later window start: the stream must \
                     send the start (`window.start_param`, or `{window.start}` in the path, \
                     parameters, headers or body)",
                )
            } else if s.pagination.max_records < Some(u64::from(s.page_size)) {
                Some("must be at least page_size")
            } else {
                None
            };
            if let Some(why) = why {
                return Err(self.invalid(key("pagination.max_records"), why));
            }
        }
        if let Some(step) = s.window.step {
            if step.0 <= s.window.overlap.0 {
                return Err(self.invalid(
                    key("window.step"),
                    "must be longer than window.overlap (each slice must move forward)",
                ));
            }
        }
        s.pagination
            .check()
            .map_err(|(k, message)| self.invalid(key(&k), message))?;
        if s.pagination.kind == PaginationKind::Keyset
            && matches!(s.primary_key, PrimaryKey::Composite(_))
        {
            return Err(self.invalid(
                key("pagination.kind"),
                "keyset pagination needs a single-path primary_key (its tie-breaker)",
            ));
        }
        if s.pagination.kind == PaginationKind::Keyset && s.cursor_field.is_none() {
            return Err(self.invalid(
                key("cursor_field"),
                "keyset pagination needs a `cursor_field` (with `primary_key`, the position \
                 sent back)",
            ));
        }
        if s.pagination.cursor_in == Some(CursorIn::Body) && s.method != Method::Post {
            return Err(self.invalid(
                key("pagination.cursor_in"),
                "a cursor in the body needs `method = \"post\"`",
            ));
        }
        Ok(())
    }
}

impl Workflow {
    /// Things that work but probably not as meant: `(key, message)`.
    pub fn warnings(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for s in &self.file.stream {
            let incremental = s.sends_window();
            if incremental
                && matches!(
                    s.pagination.kind,
                    PaginationKind::PageNumber | PaginationKind::Offset
                )
            {
                out.push((
                    format!("stream.{}.pagination.kind", s.name),
                    "page-number and offset pagination skip or repeat records while the data \
                     changes during a run (a record updated out of the window shifts every later \
                     page); prefer cursor, next_url, link_header or keyset pagination for an \
                     incremental stream"
                        .to_string(),
                ));
            }
            if s.window.start == WindowStart::MaxSeen && !s.sends("start") {
                out.push((
                    format!("stream.{}.window.start", s.name),
                    "`max_seen` moves each window's start, but nothing sends the start to the \
                     API (no `window.start_param`, no `{window.start}` in the path, \
                     parameters, headers or body): every run reads everything"
                        .to_string(),
                ));
            }
            if partitioned(s) && s.window.initial.is_none() {
                out.push((
                    format!("stream.{}.concurrency", s.name),
                    "partitions are cut from a window's start: the first run, from the \
                     beginning, reads its window as one partition (set `window.initial` to \
                     partition it too)"
                        .to_string(),
                ));
            }
            if s.conditional && partitioned(s) {
                out.push((
                    format!("stream.{}.conditional", s.name),
                    "partitions send no conditional requests: `conditional` does nothing \
                     with `concurrency` above 1"
                        .to_string(),
                ));
            }
            if s.cursor_field.is_some() && !incremental && s.deletes.is_none() {
                out.push((
                    format!("stream.{}.window", s.name),
                    "the stream has a cursor_field but no window parameters: every run reads \
                     everything (a full refresh)"
                        .to_string(),
                ));
            }
        }
        out
    }
}

/// Whether `s` reads several partitions of its window at once.
fn partitioned(s: &StreamSection) -> bool {
    s.concurrency.is_some_and(|n| n > 1)
}
