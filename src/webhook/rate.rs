//! A token bucket per source address: one misbehaving sender (a loop in a CI job, a flood)
//! gets 429 while the others are served. Pure.

use std::{collections::HashMap, net::IpAddr, time::Instant};

/// Requests per second an address may send on average.
const RATE: f64 = 20.0;
/// Requests an address may send at once (a registry delivers a backlog after an outage).
const BURST: f64 = 100.0;
/// Addresses remembered before idle ones are forgotten: a full bucket is no memory lost.
const MAX_ADDRESSES: usize = 10_000;

#[derive(Debug, Default)]
pub struct PerAddress {
    buckets: HashMap<IpAddr, Bucket>,
}

#[derive(Clone, Copy, Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl PerAddress {
    /// Takes a token for `address` at `now`; false when it has none left.
    pub fn allow(&mut self, address: IpAddr, now: Instant) -> bool {
        if self.buckets.len() >= MAX_ADDRESSES && !self.buckets.contains_key(&address) {
            self.forget_full(now);
        }
        let bucket = self.buckets.entry(address).or_insert(Bucket {
            tokens: BURST,
            at: now,
        });
        bucket.tokens = refilled(*bucket, now);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    fn forget_full(&mut self, now: Instant) {
        self.buckets
            .retain(|_, bucket| refilled(*bucket, now) < BURST);
    }
}

fn refilled(bucket: Bucket, now: Instant) -> f64 {
    let elapsed = now.saturating_duration_since(bucket.at);
    (bucket.tokens + elapsed.as_secs_f64() * RATE).min(BURST)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// How long until an empty bucket has a token again.
    fn one_token() -> Duration {
        Duration::from_secs_f64(1.0 / RATE)
    }

    #[test]
    fn a_burst_then_the_rate_per_address() {
        let mut limit = PerAddress::default();
        let now = Instant::now();
        let a: IpAddr = [10, 0, 0, 1].into();
        let b: IpAddr = [10, 0, 0, 2].into();
        let allowed = (0..150).filter(|_| limit.allow(a, now)).count();
        assert_eq!(allowed, BURST as usize);
        assert!(limit.allow(b, now), "another address is served");
        assert!(!limit.allow(a, now));
        assert!(
            limit.allow(a, now + one_token()),
            "a token back after 1/RATE s"
        );
        assert!(!limit.allow(a, now + one_token()));
    }

    #[test]
    fn idle_addresses_are_forgotten_when_the_table_is_full() {
        let mut limit = PerAddress::default();
        let now = Instant::now();
        for n in 0..MAX_ADDRESSES as u32 {
            assert!(limit.allow(IpAddr::from(n.to_be_bytes()), now));
        }
        let later = now + Duration::from_secs(60);
        assert!(limit.allow([192, 168, 0, 1].into(), later));
        assert_eq!(limit.buckets.len(), 1, "every refilled bucket forgotten");
    }
}
