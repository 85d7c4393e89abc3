//! A token bucket per source address, charged by refused requests only (bad token, bad body,
//! wrong path): an address guessing tokens or sending garbage gets 429 before its body is read,
//! while a registry with the token is never slowed. (It was charged by every request at first;
//! docker-registry 2.8 sends an event for every pull, the operator's own HEADs included, and at
//! 1000 overrides the 429s held its one in-order queue, and the pushes behind, for over a
//! minute.) Pure.

use std::{collections::HashMap, net::IpAddr, time::Instant};

/// Refused requests per second an address may make on average.
const RATE: f64 = 5.0;
/// Refused requests an address may make at once.
const BURST: f64 = 50.0;
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
    /// Whether `address` has no token left at `now`: its requests are refused unread.
    pub fn exhausted(&mut self, address: IpAddr, now: Instant) -> bool {
        self.buckets
            .get(&address)
            .is_some_and(|bucket| refilled(*bucket, now) < 1.0)
    }

    /// Takes a token from `address` for a refused request.
    pub fn charge(&mut self, address: IpAddr, now: Instant) {
        if self.buckets.len() >= MAX_ADDRESSES && !self.buckets.contains_key(&address) {
            self.forget_full(now);
        }
        let bucket = self.buckets.entry(address).or_insert(Bucket {
            tokens: BURST,
            at: now,
        });
        bucket.tokens = (refilled(*bucket, now) - 1.0).max(0.0);
        bucket.at = now;
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
    fn refusals_drain_an_address_and_it_refills_at_the_rate() {
        let mut limit = PerAddress::default();
        let now = Instant::now();
        let a: IpAddr = [10, 0, 0, 1].into();
        let b: IpAddr = [10, 0, 0, 2].into();
        assert!(
            !limit.exhausted(a, now),
            "an address never refused is served"
        );
        for _ in 0..BURST as usize {
            assert!(!limit.exhausted(a, now));
            limit.charge(a, now);
        }
        assert!(limit.exhausted(a, now));
        assert!(!limit.exhausted(b, now), "another address is served");
        assert!(
            !limit.exhausted(a, now + one_token()),
            "a token back after 1/RATE s"
        );
        limit.charge(a, now + one_token());
        assert!(limit.exhausted(a, now + one_token()));
    }

    #[test]
    fn idle_addresses_are_forgotten_when_the_table_is_full() {
        let mut limit = PerAddress::default();
        let now = Instant::now();
        for n in 0..MAX_ADDRESSES as u32 {
            limit.charge(IpAddr::from(n.to_be_bytes()), now);
        }
        let later = now + Duration::from_secs(60);
        limit.charge([192, 168, 0, 1].into(), later);
        assert_eq!(limit.buckets.len(), 1, "every refilled bucket forgotten");
    }
}
