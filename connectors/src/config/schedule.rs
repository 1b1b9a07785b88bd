//! When `waymark serve` runs a stream: `schedule = { every = "15m", jitter = "1m" }` or
//! `schedule = { cron = "0 2 * * *", timezone = "Europe/Berlin" }`, on a `[[stream]]` or
//! on `[sync]` for every stream that has none of its own.
//!
//! Due times are fixed points in time, not "so long after the last run ended": `every`
//! counts from the Unix epoch (a 15-minute schedule is due at :00, :15, :30 and :45), a
//! cron expression names wall-clock times in its zone. `jitter` shifts one stream's due
//! times by a fixed offset below it, derived from the stream's name: streams sharing a
//! cadence spread out, and each keeps an exact period.

use std::str::FromStr;
use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use waymark_engine::witness::stable_hash;
use waymark_engine::Timestamp;

use super::span::Span;

/// `schedule`: exactly one of `every` and `cron`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ScheduleSection {
    /// Due at every multiple of this span since the Unix epoch (`"15m"`: at :00, :15, …).
    pub every: Option<Span>,
    /// A cron expression (minute hour day-of-month month day-of-week), in `timezone`.
    pub cron: Option<String>,
    /// The IANA time zone of `cron` (default `"UTC"`), e.g. `"Europe/Berlin"`.
    pub timezone: Option<String>,
    /// Shifts this stream's due times by a fixed offset below this span, the same on
    /// every start (derived from the sync and stream names).
    pub jitter: Option<Span>,
}

/// A schedule, checked and ready to answer "when next?".
#[derive(Clone, Debug)]
pub struct Cadence {
    rule: Rule,
    /// This stream's share of the jitter.
    offset: Duration,
}

#[derive(Clone, Debug)]
enum Rule {
    Every(Duration),
    Cron {
        cron: Box<croner::Cron>,
        zone: jiff::tz::TimeZone,
    },
}

impl Cadence {
    /// The cadence of `section` for the stream `scope` (`sync/stream`: it picks the
    /// jitter's offset); else what is wrong, naming the key.
    pub fn new(section: &ScheduleSection, scope: &str) -> Result<Cadence, (&'static str, String)> {
        let rule = match (&section.every, &section.cron) {
            (Some(_), Some(_)) | (None, None) => {
                return Err(("", "give exactly one of `every` and `cron`".into()))
            }
            (Some(every), None) => {
                if every.0 < Duration::from_secs(1) {
                    return Err(("every", "must be at least 1s".into()));
                }
                if section.timezone.is_some() {
                    return Err(("timezone", "applies to `cron` only".into()));
                }
                Rule::Every(every.0)
            }
            (None, Some(text)) => {
                let cron = croner::Cron::from_str(text).map_err(|e| {
                    (
                        "cron",
                        format!(
                            "`{text}` is not a cron expression ({e}); write five fields: \
                             minute hour day-of-month month day-of-week, e.g. \"0 2 * * *\""
                        ),
                    )
                })?;
                let name = section.timezone.as_deref().unwrap_or("UTC");
                let zone = jiff::tz::TimeZone::get(name).map_err(|_| {
                    (
                        "timezone",
                        format!("`{name}` is not an IANA time zone (e.g. \"Europe/Berlin\")"),
                    )
                })?;
                Rule::Cron {
                    cron: Box::new(cron),
                    zone,
                }
            }
        };
        let jitter = section.jitter.map_or(Duration::ZERO, |j| j.0);
        if let Rule::Every(every) = rule {
            if jitter >= every {
                return Err(("jitter", "must be shorter than `every`".into()));
            }
        }
        let offset = match millis(jitter) {
            0 => Duration::ZERO,
            ms => Duration::from_millis(stable_hash(scope.bytes()) % ms),
        };
        Ok(Cadence { rule, offset })
    }

    /// The first due time strictly after `t` (`None`: the expression never matches again).
    pub fn next_after(&self, t: Timestamp) -> Option<Timestamp> {
        let offset = millis(self.offset);
        // The rule's next time after `t − offset`, shifted by the offset.
        let base = t.0.checked_sub(offset);
        let next = match &self.rule {
            Rule::Every(every) => {
                let period = millis(*every).max(1);
                match base {
                    Some(base) => (base / period + 1).checked_mul(period)?,
                    None => 0,
                }
            }
            Rule::Cron { cron, zone } => {
                let base = base.unwrap_or(0);
                let at = jiff::Timestamp::from_millisecond(i64::try_from(base).ok()?).ok()?;
                let next = cron
                    .find_next_occurrence(&at.to_zoned(zone.clone()), false)
                    .ok()?;
                u64::try_from(next.timestamp().as_millisecond()).ok()?
            }
        };
        next.checked_add(offset).map(Timestamp)
    }

    /// This stream's fixed shift of its due times (below the jitter).
    pub fn offset(&self) -> Duration {
        self.offset
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(rfc3339: &str) -> Timestamp {
        Timestamp::from_system(humantime::parse_rfc3339(rfc3339).unwrap_or(std::time::UNIX_EPOCH))
    }

    fn text(t: Option<Timestamp>) -> String {
        t.map_or("never".into(), |t| t.to_string())
    }

    fn section(every: Option<&str>, cron: Option<&str>, tz: Option<&str>) -> ScheduleSection {
        ScheduleSection {
            every: every.map(|e| Span(humantime::parse_duration(e).unwrap_or_default())),
            cron: cron.map(str::to_string),
            timezone: tz.map(str::to_string),
            jitter: None,
        }
    }

    #[test]
    fn every_is_due_at_multiples_of_its_span() -> Result<(), String> {
        let c = Cadence::new(&section(Some("15m"), None, None), "s/a").map_err(|e| e.1)?;
        assert_eq!(
            text(c.next_after(at("2026-03-01T10:07:12Z"))),
            "2026-03-01T10:15:00.000Z"
        );
        // Strictly after: a due time is not due again.
        assert_eq!(
            text(c.next_after(at("2026-03-01T10:15:00Z"))),
            "2026-03-01T10:30:00.000Z"
        );
        Ok(())
    }

    #[test]
    fn jitter_shifts_each_stream_by_its_own_fixed_offset_below_it() -> Result<(), String> {
        let mut s = section(Some("1m"), None, None);
        s.jitter = Some(Span(Duration::from_secs(20)));
        let mut offsets = std::collections::BTreeSet::new();
        for i in 0..50 {
            let c = Cadence::new(&s, &format!("s/stream{i}")).map_err(|e| e.1)?;
            assert!(c.offset() < Duration::from_secs(20), "{:?}", c.offset());
            let t = at("2026-03-01T10:00:30Z");
            let first = c.next_after(t).ok_or("a due time")?;
            let second = c.next_after(first).ok_or("a due time")?;
            // The period stays exact; only the phase moves.
            assert_eq!(second.0 - first.0, 60_000);
            assert_eq!((first.0 % 60_000) as u128, c.offset().as_millis());
            offsets.insert(c.offset());
            // The same stream gets the same offset on every start.
            let again = Cadence::new(&s, &format!("s/stream{i}")).map_err(|e| e.1)?;
            assert_eq!(again.offset(), c.offset());
        }
        assert!(offsets.len() > 40, "offsets spread: {}", offsets.len());
        Ok(())
    }

    #[test]
    fn cron_runs_on_wall_clock_time_across_daylight_saving_changes() -> Result<(), String> {
        let berlin = section(None, Some("30 2 * * *"), Some("Europe/Berlin"));
        let c = Cadence::new(&berlin, "s/a").map_err(|e| e.1)?;
        // 02:30 in Berlin is 00:30 UTC in summer, 01:30 UTC in winter.
        assert_eq!(
            text(c.next_after(at("2026-07-01T12:00:00Z"))),
            "2026-07-02T00:30:00.000Z"
        );
        assert_eq!(
            text(c.next_after(at("2026-01-10T12:00:00Z"))),
            "2026-01-11T01:30:00.000Z"
        );
        // 2026-03-29: clocks jump from 02:00 to 03:00, so 02:30 does not exist that day;
        // the run is not lost (it comes at the jump) and runs once.
        let after_jump = c.next_after(at("2026-03-28T12:00:00Z")).ok_or("due")?;
        assert_eq!(text(Some(after_jump)), "2026-03-29T01:00:00.000Z");
        assert_eq!(text(c.next_after(after_jump)), "2026-03-30T00:30:00.000Z");
        // 2026-10-25: 02:30 happens twice; it runs once.
        let first = c.next_after(at("2026-10-24T12:00:00Z")).ok_or("due")?;
        let next = c.next_after(first).ok_or("due")?;
        assert_eq!(next.0 - first.0, 25 * 3600 * 1000, "{first} then {next}");
        Ok(())
    }

    #[test]
    fn mistakes_name_their_key() {
        let cases = [
            (section(Some("1m"), Some("* * * * *"), None), ""),
            (section(None, None, None), ""),
            (section(Some("0s"), None, None), "every"),
            (section(Some("1m"), None, Some("UTC")), "timezone"),
            (section(None, Some("61 * * * *"), None), "cron"),
            (
                section(None, Some("0 2 * * *"), Some("Mars/Olympus")),
                "timezone",
            ),
        ];
        for (s, want) in cases {
            match Cadence::new(&s, "s/a") {
                Err((key, _)) => assert_eq!(key, want, "{s:?}"),
                Ok(_) => panic!("accepted {s:?}"),
            }
        }
        let mut s = section(Some("1m"), None, None);
        s.jitter = Some(Span(Duration::from_secs(60)));
        assert!(matches!(Cadence::new(&s, "s/a"), Err(("jitter", _))));
    }
}
