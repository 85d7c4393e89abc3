//! How long to wait after failures: the registry's (capped by the scan interval, never before
//! `Retry-After`) and the apiserver's (to minutes), with a per-object jitter.

use std::{
    hash::{DefaultHasher, Hash, Hasher},
    time::Duration,
};

/// Exponential backoff for transient failures: 1 s, 2 s, 4 s … capped at the scan interval
/// (SPEC §3.8).
pub fn backoff(failures: u32, cap: Duration) -> Duration {
    Duration::from_secs(1u64 << failures.min(16)).min(cap)
}

/// The wait before retrying a transient failure: the backoff, but never sooner than the
/// registry's `Retry-After` (capped by the registry layer), which may exceed the interval: asking
/// earlier would only be refused again and count against our rate limit.
pub fn retry_delay(failures: u32, cap: Duration, retry_after: Option<Duration>) -> Duration {
    backoff(failures, cap).max(retry_after.unwrap_or_default())
}

/// The longest wait after failed API calls (the apiserver refusing or unreachable).
pub const MAX_API_BACKOFF: Duration = Duration::from_secs(300);

/// The wait after `failures` failed API calls in a row: 1 s doubling up to five minutes, plus
/// jitter, so that a persistently failing write does not redo the pass (and its registry HEAD)
/// every few seconds, and many objects failing together do not retry in lockstep.
pub fn api_backoff(failures: u32, name: &str) -> Duration {
    let base = Duration::from_secs(1u64 << failures.min(16)).min(MAX_API_BACKOFF);
    jittered(base, name)
}

/// `interval` plus 0–5 %, chosen by the object's name: objects created together (or checked at
/// once after a restart) drift apart instead of hitting the registry in lockstep, and one
/// object's rhythm stays steady. Deterministic, so it can be tested.
pub fn jittered(interval: Duration, name: &str) -> Duration {
    let mut hasher = DefaultHasher::new();
    name.hash(&mut hasher);
    let per_mille = hasher.finish() % 50;
    interval + interval.mul_f64(per_mille as f64 / 1000.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_spreads_objects_within_five_percent() {
        let base = Duration::from_secs(100);
        let waits: std::collections::BTreeSet<Duration> = (0..200)
            .map(|i| jittered(base, &format!("m-{i}")))
            .collect();
        assert!(
            waits.iter().all(|d| *d >= base && *d < base + base / 20),
            "{waits:?}"
        );
        // Zero jitter would put all 200 objects on one instant.
        assert!(waits.len() > 30, "only {} distinct waits", waits.len());
        assert_eq!(jittered(base, "echo"), jittered(base, "echo"), "steady");
    }

    #[test]
    fn api_failures_back_off_to_minutes() {
        let near = |d: Duration, secs: u64| {
            d >= Duration::from_secs(secs) && d <= Duration::from_secs(secs).mul_f64(1.05)
        };
        assert!(near(api_backoff(0, "a"), 1));
        assert!(near(api_backoff(3, "a"), 8));
        assert!(near(api_backoff(30, "a"), 300));
    }
}
