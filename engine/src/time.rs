//! Wall-clock instants as journaled data.
//!
//! The engine never reads the clock inside its pure parts: the driver reads a [`Clock`] and
//! passes [`Timestamp`]s in, so a fold of the same events always gives the same state.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// Milliseconds since the Unix epoch (UTC).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Timestamp(pub u64);

impl Timestamp {
    /// The instant `system` time stands for (instants before 1970 clamp to the epoch).
    pub fn from_system(system: SystemTime) -> Self {
        Timestamp(millis(
            system.duration_since(UNIX_EPOCH).unwrap_or_default(),
        ))
    }

    /// This instant as a [`SystemTime`].
    pub fn to_system(self) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(self.0)
    }

    /// This instant moved back by `d`, clamped at the epoch.
    pub fn saturating_sub(self, d: Duration) -> Self {
        Timestamp(self.0.saturating_sub(millis(d)))
    }

    /// This instant moved forward by `d`, clamped at the end of time.
    pub fn saturating_add(self, d: Duration) -> Self {
        Timestamp(self.0.saturating_add(millis(d)))
    }

    /// Time from `earlier` to `self`, zero if `earlier` is later.
    pub fn since(self, earlier: Timestamp) -> Duration {
        Duration::from_millis(self.0.saturating_sub(earlier.0))
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // RFC 3339 stops at the year 9999; later instants show as milliseconds.
        if self.0 >= MAX_RFC3339 {
            return write!(f, "{}ms", self.0);
        }
        write!(f, "{}", humantime::format_rfc3339_millis(self.to_system()))
    }
}

/// 10000-01-01T00:00:00Z in milliseconds.
pub const MAX_RFC3339: u64 = 253_402_300_800_000;

/// A duration in whole milliseconds, saturating (journal events and timestamps count
/// milliseconds).
pub fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Where the driver reads "now" from and how it waits; tests inject a clock whose sleeps
/// only move its time forward, so backoff and rate-limit tests take no real time.
pub trait Clock: Send + Sync {
    /// The current instant.
    fn now(&self) -> Timestamp;

    /// Waits `d` (by this clock).
    fn sleep(&self, d: Duration) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        Box::pin(tokio::time::sleep(d))
    }
}

/// The operating system's clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        Timestamp::from_system(SystemTime::now())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn displays_rfc3339_and_round_trips() {
        let t = Timestamp(1_700_000_000_123);
        assert_eq!(t.to_string(), "2023-11-14T22:13:20.123Z");
        assert_eq!(Timestamp::from_system(t.to_system()), t);
        assert_eq!(
            t.saturating_sub(Duration::from_secs(1)).0,
            1_699_999_999_123
        );
        assert_eq!(
            Timestamp(5).saturating_sub(Duration::from_secs(1)),
            Timestamp(0)
        );
    }
}
