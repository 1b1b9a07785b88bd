//! Fault injection: each kind of bad day at its own rate, drawn deterministically from the
//! seed and the request number.

use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

use super::data::{mix, unit};

/// Rates (0.0 – 1.0, of data requests) and shapes of injected faults.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Faults {
    /// Added to every data response, in milliseconds.
    pub latency_ms: u64,
    /// HTTP 429 with `Retry-After`.
    pub rate_429: f64,
    /// The `Retry-After` of a 429 or 503, in seconds.
    pub retry_after_s: u64,
    /// HTTP 500.
    pub rate_500: f64,
    /// HTTP 503 with `Retry-After`.
    pub rate_503: f64,
    /// Requests that hang for `hang_ms` before answering (clients should time out).
    pub rate_hang: f64,
    /// How long a hung request hangs, in milliseconds.
    pub hang_ms: u64,
    /// Responses cut off mid-body (the connection is dropped).
    pub rate_reset: f64,
    /// HTTP 200 with a body that is not valid JSON.
    pub rate_malformed: f64,
    /// The API's rate limit: more data requests than this in any second are answered 429
    /// (`Retry-After` until one falls out of the second); 0: no limit.
    pub quota_per_second: u64,
}

/// The fault chosen for one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Fault {
    /// 429 with `Retry-After`.
    TooManyRequests,
    /// 500.
    ServerError,
    /// 503 with `Retry-After`.
    Unavailable,
    /// Sleep, then answer normally.
    Hang,
    /// Drop the connection mid-body.
    Reset,
    /// 200 with broken JSON.
    Malformed,
}

impl Fault {
    /// All kinds, in the order their rates are stacked.
    pub const ALL: [Fault; 6] = [
        Fault::TooManyRequests,
        Fault::ServerError,
        Fault::Unavailable,
        Fault::Hang,
        Fault::Reset,
        Fault::Malformed,
    ];

    /// Name used in `/_stats`.
    pub fn name(self) -> &'static str {
        match self {
            Fault::TooManyRequests => "429",
            Fault::ServerError => "500",
            Fault::Unavailable => "503",
            Fault::Hang => "hang",
            Fault::Reset => "reset",
            Fault::Malformed => "malformed",
        }
    }
}

impl Faults {
    fn rate(&self, fault: Fault) -> f64 {
        match fault {
            Fault::TooManyRequests => self.rate_429,
            Fault::ServerError => self.rate_500,
            Fault::Unavailable => self.rate_503,
            Fault::Hang => self.rate_hang,
            Fault::Reset => self.rate_reset,
            Fault::Malformed => self.rate_malformed,
        }
        .clamp(0.0, 1.0)
    }

    /// The fault (if any) for request number `n`.
    pub fn draw(&self, seed: u64, n: u64) -> Option<Fault> {
        let roll = unit(mix(seed ^ 0xFA17_0000_0000_0000 ^ n));
        let mut edge = 0.0;
        for fault in Fault::ALL {
            edge += self.rate(fault);
            if roll < edge {
                return Some(fault);
            }
        }
        None
    }
}

/// How many faults of each kind were injected.
#[derive(Default)]
pub struct Injected([AtomicU64; 6]);

impl Injected {
    /// Counts one.
    pub fn count(&self, fault: Fault) {
        if let Some(i) = Fault::ALL.iter().position(|f| *f == fault) {
            self.0[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// `{"429": n, ...}`
    pub fn to_json(&self) -> serde_json::Value {
        Fault::ALL
            .iter()
            .zip(&self.0)
            .map(|(f, n)| (f.name().to_string(), n.load(Ordering::Relaxed).into()))
            .collect::<serde_json::Map<_, _>>()
            .into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_each_fault_near_its_rate() {
        let faults = Faults {
            rate_429: 0.10,
            rate_500: 0.05,
            rate_reset: 0.02,
            ..Faults::default()
        };
        let mut seen = std::collections::HashMap::new();
        for n in 0..100_000 {
            if let Some(f) = faults.draw(3, n) {
                *seen.entry(f).or_insert(0u32) += 1;
            }
        }
        let near = |f: Fault, expected: f64| {
            let got = f64::from(seen.get(&f).copied().unwrap_or(0)) / 100_000.0;
            assert!((got - expected).abs() < 0.005, "{f:?}: {got}");
        };
        near(Fault::TooManyRequests, 0.10);
        near(Fault::ServerError, 0.05);
        near(Fault::Reset, 0.02);
        assert!(!seen.contains_key(&Fault::Hang));
        assert_eq!(Faults::default().draw(3, 1), None);
        assert_eq!(faults.draw(3, 42), faults.draw(3, 42), "deterministic");
    }
}
