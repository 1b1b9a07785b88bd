//! Whether a stream's dead letters grow day over day (seed 004: "DLQ depth > 100 or growing
//! daily"): an hourly sample of each stream's depth over the last two days, kept in
//! `<state>/dead_letter_depths.json` so a restart does not forget it. Growing: more now
//! than a day ago, and more a day ago than two days ago — a store that stopped growing
//! for a day recovers, a single old letter never alerts.

use std::collections::{BTreeMap, VecDeque};

use serde::{Deserialize, Serialize};
use waymark_engine::Timestamp;

use super::Key;

const HOUR: u64 = 3_600_000;
/// Samples kept: two days and the hour being sampled.
const KEPT: u64 = 49;
/// How far back a missing sample may be made up by an older one (serve was down).
const GAP: u64 = 2;

/// Hourly dead-letter depths per `sync/stream`.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Depths(BTreeMap<String, VecDeque<(u64, u64)>>);

impl Depths {
    /// `key` holds `depth` dead letters at `now` (the hour's sample is the latest); whether
    /// that changed what is kept.
    pub fn record(&mut self, key: &Key, now: Timestamp, depth: u64) -> bool {
        let hour = now.0 / HOUR;
        let samples = self.0.entry(format!("{}/{}", key.0, key.1)).or_default();
        let changed = match samples.back_mut() {
            Some((h, d)) if *h == hour => std::mem::replace(d, depth) != depth,
            _ => {
                samples.push_back((hour, depth));
                true
            }
        };
        while samples.front().is_some_and(|(h, _)| h + KEPT <= hour) {
            samples.pop_front();
        }
        changed
    }

    /// Why `key`'s dead letters grow day over day at `now`, if they do.
    pub fn growing(&self, key: &Key, now: Timestamp) -> Option<String> {
        let samples = self.0.get(&format!("{}/{}", key.0, key.1))?;
        let hour = now.0 / HOUR;
        // The sample of `hour`, or the latest shortly before it.
        let at = |hour: u64| {
            samples
                .iter()
                .rev()
                .find(|(h, _)| *h <= hour)
                .filter(|(h, _)| h + GAP >= hour)
                .map(|(_, d)| *d)
        };
        let (now, day, two) = (
            at(hour)?,
            at(hour.checked_sub(24)?)?,
            at(hour.checked_sub(48)?)?,
        );
        (two < day && day < now).then(|| {
            format!(
                "dead letters growing day over day: {two} two days ago, {day} a day ago, {now} now"
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> Key {
        ("s".into(), "a".into())
    }

    fn at(hours: u64) -> Timestamp {
        Timestamp(1_800_000_000_000 / HOUR * HOUR + hours * HOUR)
    }

    #[test]
    fn growth_on_two_days_running_is_growing_and_a_day_without_is_not() {
        let mut d = Depths::default();
        for (hour, depth) in [(0, 1), (24, 3), (47, 3)] {
            d.record(&key(), at(hour), depth);
        }
        d.record(&key(), at(48), 4);
        assert_eq!(
            d.growing(&key(), at(48)).as_deref(),
            Some("dead letters growing day over day: 1 two days ago, 3 a day ago, 4 now")
        );
        // A day later with no new letter: not growing (3 → 4 → 4).
        for hour in 49..=72 {
            d.record(&key(), at(hour), 4);
        }
        assert_eq!(d.growing(&key(), at(72)), None);
        // Old samples are dropped: two days are kept.
        assert!(d.0["s/a"].iter().all(|(h, _)| h + KEPT > at(72).0 / HOUR));
    }

    #[test]
    fn without_samples_of_two_days_ago_nothing_is_said() {
        let mut d = Depths::default();
        d.record(&key(), at(0), 1);
        d.record(&key(), at(24), 5);
        d.record(&key(), at(48), 9);
        assert!(d.growing(&key(), at(48)).is_some());
        // Serve was down around a day ago (no sample within two hours of it).
        let mut gap = Depths::default();
        gap.record(&key(), at(0), 1);
        gap.record(&key(), at(21), 5);
        gap.record(&key(), at(48), 9);
        assert_eq!(gap.growing(&key(), at(48)), None);
        assert_eq!(Depths::default().growing(&key(), at(48)), None);
    }
}
