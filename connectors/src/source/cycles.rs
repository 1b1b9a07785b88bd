//! Noticing pages that cycle: an API whose cursors go A → B → A serves the same pages for
//! ever, and no single step of it looks wrong (each cursor differs from the one sent).
//!
//! Two checks, both bounded whatever the run's length: the cursors of the last [`RECENT`]
//! pages, exactly (a short cycle stops at its first repeat, naming the page it repeats),
//! and one cursor saved by Brent's cycle detection, taken again at the 1st, 2nd, 4th, 8th …
//! page: once it lies inside a cycle of any length λ and the gap to the next save is at
//! least λ, the cycle comes back to it within λ pages. So a cycle starting at page μ stops
//! by about page 2·max(μ, λ) + λ, with at most `RECENT + 1` cursors held (each at most
//! `source.max_cursor_bytes`).

use std::collections::VecDeque;

/// Cursors compared exactly.
pub(super) const RECENT: usize = 64;

/// The cursors a run sent, as far as the checks need them.
#[derive(Debug, Default)]
pub(super) struct Cycles {
    /// `(page, cursor)` of the last [`RECENT`] pages, oldest first.
    recent: VecDeque<(u64, String)>,
    /// Brent's saved `(page, cursor)`.
    saved: Option<(u64, String)>,
    /// Pages sent since `saved` was taken.
    steps: u64,
    /// The gap after which `saved` is taken again (1, 2, 4, …).
    power: u64,
}

impl Cycles {
    /// Forgets every cursor (another parent of a child stream pages on its own).
    pub(super) fn clear(&mut self) {
        *self = Cycles::default();
    }

    /// Notes that `page` was requested with `cursor`.
    pub(super) fn sent(&mut self, page: u64, cursor: &str) {
        if self.recent.len() == RECENT {
            self.recent.pop_front();
        }
        self.recent.push_back((page, cursor.to_string()));
        self.steps += 1;
        if self.saved.is_none() || self.steps >= self.power {
            self.saved = Some((page, cursor.to_string()));
            self.power = self.power.saturating_mul(2).max(1);
            self.steps = 0;
        }
    }

    /// The page, up to `page`, that was requested with `next` already: page `page` pointing
    /// at it means the pages cycle. (A page fetched again, after a failure to stage it,
    /// points at a later page's cursor: not a cycle.)
    pub(super) fn seen(&self, page: u64, next: &str) -> Option<u64> {
        self.recent
            .iter()
            .chain(&self.saved)
            .find(|(sent, cursor)| *sent <= page && cursor == next)
            .map(|(sent, _)| *sent)
    }
}

/// The start of a cursor, on one line, for messages.
pub(super) fn excerpt(cursor: &str) -> String {
    const SHOWN: usize = 60;
    let shown: String = cursor
        .chars()
        .take(SHOWN)
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    match cursor.chars().nth(SHOWN) {
        Some(_) => format!("{shown}…"),
        None => shown,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The page at which a run whose `start` first pages are distinct and whose following
    /// pages repeat every `length` stops (`None`: it never does within `limit` pages).
    fn stops_at(start: u64, length: u64, limit: u64) -> Option<u64> {
        let cursor = |page: u64| match page <= start {
            true => format!("s{page}"),
            false => format!("c{}", (page - start - 1) % length),
        };
        let mut cycles = Cycles::default();
        // Page p is requested with cursor(p - 1) and points at cursor(p).
        for page in 1..=limit {
            if page > 1 {
                cycles.sent(page, &cursor(page - 1));
            }
            if cycles.seen(page, &cursor(page)).is_some() {
                return Some(page);
            }
        }
        None
    }

    #[test]
    fn a_short_cycle_stops_at_its_first_repeat() {
        // A → B → A: page 3 points at page 2's cursor again.
        assert_eq!(stops_at(0, 2, 100), Some(3));
        assert_eq!(stops_at(5, 3, 100), Some(9));
        // A cursor pointing at itself is the same-cursor check's, but is seen too.
        assert_eq!(stops_at(0, 1, 100), Some(2));
    }

    #[test]
    fn cycles_of_any_length_stop_within_a_bound() {
        for (start, length) in [(0, 65), (0, 300), (10, 1000), (700, 130), (3, 5000)] {
            let bound = 2 * start.max(length) + length + 2;
            let stop = stops_at(start, length, bound);
            assert!(
                stop.is_some_and(|p| p > start + length),
                "start {start}, length {length}: {stop:?}"
            );
        }
    }

    #[test]
    fn distinct_cursors_never_stop_and_memory_stays_bounded() {
        let mut cycles = Cycles::default();
        for page in 2..100_000u64 {
            cycles.sent(page, &format!("c{page}"));
            assert_eq!(cycles.seen(page, &format!("c{}", page + 1)), None);
        }
        assert_eq!(cycles.recent.len(), RECENT);
    }

    #[test]
    fn a_page_fetched_again_is_not_a_cycle() {
        let mut cycles = Cycles::default();
        cycles.sent(2, "a");
        cycles.sent(3, "b");
        // Page 2 fetched again (its staging failed) points at page 3's cursor, as before.
        assert_eq!(cycles.seen(2, "b"), None);
        assert_eq!(cycles.seen(3, "a"), Some(2));
    }

    #[test]
    fn excerpts_are_short_and_on_one_line() {
        assert_eq!(excerpt("abc"), "abc");
        let long = format!("{}\n{}", "x".repeat(59), "y".repeat(100));
        assert_eq!(excerpt(&long), format!("{} …", "x".repeat(59)));
    }
}
