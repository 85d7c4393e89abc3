//! A process-wide cap on requests in flight per registry host, shared by every source and MPO that
//! talks to that host: when many MPOs fall due at once (startup, a source change, a registry
//! coming back) they queue here instead of opening a burst of connections, and a registry that
//! rate-limits us does not see the burst that made it do so.

use std::{
    collections::HashMap,
    sync::{
        Arc, LazyLock, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Requests in flight per registry host unless [`set_max_requests_per_host`] says otherwise. Equal
/// to the default worker concurrency, so that with default settings nothing waits here.
pub const DEFAULT_MAX_REQUESTS_PER_HOST: usize = 4;

static LIMITS: LazyLock<HostLimits> = LazyLock::new(|| HostLimits {
    limit: AtomicUsize::new(DEFAULT_MAX_REQUESTS_PER_HOST),
    hosts: Mutex::default(),
});

struct HostLimits {
    limit: AtomicUsize,
    hosts: Mutex<HashMap<String, Arc<Semaphore>>>,
}

/// Sets how many requests may be in flight to one registry host (at least 1). Meant to be called
/// once at startup; permits already handed out stay valid until they are dropped.
pub fn set_max_requests_per_host(limit: usize) {
    LIMITS.limit.store(limit.max(1), Ordering::Relaxed);
    LIMITS
        .hosts
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .clear();
}

/// The configured limit.
pub fn max_requests_per_host() -> usize {
    LIMITS.limit.load(Ordering::Relaxed)
}

/// A slot for one request (and, for a blob, its whole body) to `host`; waits while the host is at
/// its limit. The slot is given back when the permit is dropped.
pub(super) async fn acquire(host: &str) -> Option<OwnedSemaphorePermit> {
    let semaphore = semaphore_for(host);
    // The semaphores are never closed, so this only fails if that changes; then go unlimited.
    semaphore.acquire_owned().await.ok()
}

fn semaphore_for(host: &str) -> Arc<Semaphore> {
    let mut hosts = LIMITS
        .hosts
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    hosts
        .entry(host.to_owned())
        .or_insert_with(|| Arc::new(Semaphore::new(max_requests_per_host())))
        .clone()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn a_host_at_its_limit_makes_the_next_request_wait() {
        let host = "limits-test.invalid:1";
        let limit = max_requests_per_host();
        let mut held = Vec::new();
        for _ in 0..limit {
            held.push(acquire(host).await.expect("permit"));
        }
        let waiting = tokio::time::timeout(Duration::from_millis(50), acquire(host)).await;
        assert!(waiting.is_err(), "a request beyond the limit must wait");
        let other = tokio::time::timeout(Duration::from_millis(50), acquire("other.invalid")).await;
        assert!(other.is_ok(), "another host has its own slots");
        held.pop();
        let freed = tokio::time::timeout(Duration::from_millis(50), acquire(host)).await;
        assert!(freed.is_ok(), "a dropped permit frees a slot");
    }
}
