//! What a running sync shows: a progress bar or step lines on stderr, and the summary of
//! a run.

use std::time::{Duration, Instant};

use waymark_connectors::http::excerpt::printable;
use waymark_engine::{Event, RunState, Status};

/// What a run shows while it goes: a live line on a terminal (pages, records, records/s,
/// retries, cursor), a log line every few seconds otherwise. Retries are always logged.
pub(crate) struct Progress {
    pub(crate) stream: String,
    bar: Option<indicatif::ProgressBar>,
    began: Instant,
    records_before: u64,
    last_log: Instant,
    last_step: Instant,
}

impl Progress {
    pub(crate) fn new(stream: &str, records_before: u64) -> Self {
        use std::io::IsTerminal;
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = indicatif::ProgressBar::new_spinner();
            if let Ok(style) = indicatif::ProgressStyle::with_template("{spinner} {wide_msg}") {
                bar.set_style(style);
            }
            bar.enable_steady_tick(Duration::from_millis(120));
            bar
        });
        Progress {
            stream: stream.to_string(),
            bar,
            began: Instant::now(),
            records_before,
            last_log: Instant::now(),
            last_step: Instant::now(),
        }
    }

    pub(crate) fn observe(&mut self, state: &RunState, event: &Event) {
        self.step(state, event);
        let c = &state.counts;
        let line = match event {
            Event::RequestRetried {
                attempt,
                wait_ms,
                error,
                rule,
                ..
            } => Some(format!(
                "{}: attempt {attempt} failed, retrying in {wait_ms} ms{}: {error}",
                self.stream,
                rule.as_ref().map_or(String::new(), |r| format!(" ({r})"))
            )),
            Event::WriteRetried {
                page,
                attempt,
                wait_ms,
                error,
                ..
            } => Some(format!(
                "{}: writing page {page} failed (attempt {attempt}), retrying in {wait_ms} ms: \
                 {error}",
                self.stream
            )),
            // A rule asked for it: counted in the summary, detailed only at debug level.
            Event::PageIgnored { page, reason, .. } => {
                tracing::debug!(
                    "{}: page {page} ignored by a response rule: {reason}",
                    self.stream
                );
                None
            }
            _ => None,
        };
        if let Some(line) = line {
            match &self.bar {
                Some(bar) => bar.suspend(|| tracing::warn!("{line}")),
                None => tracing::warn!("{line}"),
            }
        }
        if !matches!(event, Event::CursorCommitted { .. }) {
            return;
        }
        let secs = self.began.elapsed().as_secs_f64().max(0.001);
        let rate = (c.records_committed - self.records_before) as f64 / secs;
        match &self.bar {
            Some(bar) => {
                bar.set_message(format!(
                    "{}: {}, {}, {rate:.0}/s, {}, cursor {}",
                    self.stream,
                    counted(c.pages_committed, "page"),
                    counted(c.records_committed, "record"),
                    counted(c.retries, "retry"),
                    printable(state.fetch_cursor().map_or("-", |s| s.as_str())),
                ));
            }
            None if self.last_log.elapsed() >= Duration::from_secs(2) => {
                self.last_log = Instant::now();
                tracing::info!(
                    "{}: {}, {} committed ({rate:.0} records/s), {}",
                    self.stream,
                    counted(c.pages_committed, "page"),
                    counted(c.records_committed, "record"),
                    counted(c.retries, "retry")
                );
            }
            None => {}
        }
    }
}

impl Progress {
    /// One structured event per journaled step (target `waymark_step`: shown by
    /// `--log-format json`, or in text with `--log-level waymark_step=info`).
    pub(crate) fn step(&mut self, state: &RunState, event: &Event) {
        let took = self.last_step.elapsed();
        self.last_step = Instant::now();
        let (page, before, after, records, outcome) = match event {
            Event::PageFetched(p) => (
                Some(p.page),
                p.request_cursor.clone(),
                p.next_cursor.clone(),
                Some(p.records),
                "fetched".to_string(),
            ),
            Event::BatchWritten { page, ack, .. } => (
                Some(*page),
                None,
                None,
                Some(ack.total()),
                format!("{ack}{}", if ack.replayed { " (replayed)" } else { "" }),
            ),
            Event::CursorCommitted { page, .. } => (
                Some(*page),
                None,
                state.committed_cursor.clone(),
                None,
                "committed".into(),
            ),
            Event::RequestRetried {
                page,
                error,
                wait_ms,
                ..
            }
            | Event::WriteRetried {
                page,
                error,
                wait_ms,
                ..
            } => (
                Some(*page),
                None,
                None,
                None,
                format!("retry in {wait_ms} ms: {error}"),
            ),
            Event::PageIgnored { page, reason, .. } => {
                (Some(*page), None, None, None, format!("ignored: {reason}"))
            }
            Event::RunPaused { reason, .. } => {
                (None, None, None, None, format!("paused: {reason}"))
            }
            Event::RunFailed { error, .. } => (None, None, None, None, format!("failed: {error}")),
            other => (None, None, None, None, other.name().to_string()),
        };
        let c = &state.counts;
        tracing::info!(
            target: "waymark_step",
            run = %state.run_id(),
            sync = %state.started.sync,
            stream = %state.started.stream,
            step = event.name(),
            page = page.unwrap_or(0),
            cursor_before = before.as_deref().unwrap_or(""),
            cursor_after = after.as_deref().unwrap_or(""),
            records = records.unwrap_or(0),
            records_committed = c.records_committed,
            pages_committed = c.pages_committed,
            retries = c.retries,
            duration_ms = u64::try_from(took.as_millis()).unwrap_or(u64::MAX),
            outcome = %outcome,
            "step"
        );
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

/// The run's summary: one line, or one JSON object. `took` is the run's active time across
/// all its processes ([`RunState::active`], as `waymark runs` shows it): a run paused and
/// resumed an hour later took its active time, not the hour. `invocation` is this
/// process's share, shown beside it when the run was resumed.
pub(crate) fn print_summary(state: &RunState, invocation: Duration, json: bool) {
    let c = &state.counts;
    let w = &c.written;
    let sync = &state.started.sync;
    let took = state.active();
    if json {
        let reason = match &state.status {
            Status::Failed(e) => Some(e.clone()),
            Status::Paused(reason) => Some(reason.to_string()),
            _ => None,
        };
        out!(
            "{}",
            serde_json::json!({
                "run": state.run_id().to_string(),
                "sync": sync,
                "stream": state.started.stream,
                "status": state.status.name(),
                "reason": reason,
                "records": c.records_committed,
                "pages": c.pages_committed,
                "written": w,
                "dead_lettered": w.dead_lettered,
                "retries": c.retries,
                "ignored_pages": c.ignored,
                "resumes": c.resumes,
                "cursor_start": state.started.start_cursor,
                "cursor_end": state.committed_cursor,
                "window_start": state.window().start.map(|t| t.to_string()),
                "watermark": state.window().end.to_string(),
                "duration_ms": millis(took),
                "invocation_ms": millis(invocation),
            })
        );
        return;
    }
    let outcome = match &state.status {
        Status::Failed(e) => format!("failed: {}", printable(e)),
        Status::Paused(reason) => format!("paused ({})", printable(&reason.to_string())),
        other => other.name().to_string(),
    };
    let ignored = match c.ignored {
        0 => String::new(),
        n => format!(", {} ignored by response rules", counted(n, "response")),
    };
    let share = match c.resumes {
        0 => String::new(),
        _ => format!(" ({} in this process)", duration(invocation)),
    };
    out!(
        "{sync}/{}: run {} {outcome} — {} in {} this run ({w}), {}, {}{ignored}, window {}, \
         took {}{share}",
        state.started.stream,
        state.run_id(),
        counted(c.records_committed, "record"),
        counted(c.pages_committed, "page"),
        counted(c.retries, "retry"),
        counted(c.resumes, "resume"),
        state.window(),
        duration(took),
    );
}

/// Whole milliseconds, for JSON.
pub(crate) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// A duration as people read it, short enough for a table column: `0.4s`, `12.3s`,
/// `4m05s`, `3h02m`, `2d04h`.
pub(crate) fn duration(d: Duration) -> String {
    let secs = d.as_secs();
    match secs {
        0..60 => format!("{secs}.{}s", d.subsec_millis() / 100),
        60..3_600 => format!("{}m{:02}s", secs / 60, secs % 60),
        3_600..86_400 => format!("{}h{:02}m", secs / 3_600, secs % 3_600 / 60),
        _ => format!("{}d{:02}h", secs / 86_400, secs % 86_400 / 3_600),
    }
}

/// `text` cut to `width` characters, its end replaced by `…` when cut: a long value (a
/// cursor, a backfill's scope) never pushes the columns after it out of line.
pub(crate) fn fit(text: &str, width: usize) -> String {
    if text.chars().count() <= width {
        return text.to_string();
    }
    let kept: String = text.chars().take(width.saturating_sub(1)).collect();
    format!("{kept}…")
}

/// `n` and the noun, singular for one: "1 page", "2 pages", "0 retries".
pub(crate) fn counted(n: u64, noun: &str) -> String {
    match (n, noun.strip_suffix('y')) {
        (1, _) => format!("1 {noun}"),
        (_, Some(stem)) => format!("{n} {stem}ies"),
        (_, None) => format!("{n} {noun}s"),
    }
}

#[cfg(test)]
mod tests {
    use super::{counted, duration, fit};
    use std::time::Duration;

    #[test]
    fn durations_read_short() {
        let ms = Duration::from_millis;
        assert_eq!(duration(ms(0)), "0.0s");
        assert_eq!(duration(ms(449)), "0.4s");
        assert_eq!(duration(ms(59_999)), "59.9s");
        assert_eq!(duration(ms(245_000)), "4m05s");
        assert_eq!(duration(ms(3_600_000 + 120_000)), "1h02m");
        assert_eq!(duration(ms(2 * 86_400_000 + 4 * 3_600_000)), "2d04h");
    }

    #[test]
    fn long_values_are_cut_with_an_ellipsis() {
        assert_eq!(fit("shop/orders", 11), "shop/orders");
        assert_eq!(fit("shop/orders", 8), "shop/or…");
        assert_eq!(fit("ééééé", 3).chars().count(), 3);
    }

    #[test]
    fn counts_read_as_english() {
        assert_eq!(counted(1, "page"), "1 page");
        assert_eq!(counted(0, "page"), "0 pages");
        assert_eq!(counted(1, "retry"), "1 retry");
        assert_eq!(counted(3, "retry"), "3 retries");
        assert_eq!(counted(2, "resume"), "2 resumes");
    }
}
