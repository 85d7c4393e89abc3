//! The fence every leader write goes through. It closes when the lease is lost, when the
//! shutdown timeout cuts a drain, and also on this replica's own clock the moment the lease
//! runs past its renew deadline: a leader frozen (SIGSTOP, a stalled node) and then resumed must
//! not write in the instant before its lease loop wakes up and notices that the standby took
//! over meanwhile. `Instant` is monotonic and keeps counting while the process is stopped.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use tokio_util::sync::CancellationToken;

/// Until when the lease may be written under, as this replica's lease loop renews it.
#[derive(Clone, Debug)]
pub struct LeaseValidity {
    base: Instant,
    /// Nanoseconds after `base`.
    until: Arc<AtomicU64>,
}

impl LeaseValidity {
    /// Valid for `deadline` from `sent`, when the write that took the lease was sent.
    pub fn taken_at(sent: Instant, deadline: Duration) -> Self {
        let validity = Self {
            base: sent,
            until: Arc::new(AtomicU64::new(0)),
        };
        validity.extend_from(sent, deadline);
        validity
    }

    /// A renewal sent at `sent` succeeded: valid until `sent + deadline`. The send time, not the
    /// answer's, because the standby counts from when the apiserver had the renewal.
    pub fn extend_from(&self, sent: Instant, deadline: Duration) {
        let until = nanos(sent.saturating_duration_since(self.base) + deadline);
        self.until.fetch_max(until, Ordering::SeqCst);
    }

    /// The lease is gone for good (lost or released): nothing is valid any more.
    pub fn end(&self) {
        self.until.store(0, Ordering::SeqCst);
    }

    pub fn holds_at(&self, now: Instant) -> bool {
        nanos(now.saturating_duration_since(self.base)) < self.until.load(Ordering::SeqCst)
    }

    fn expires(&self) -> Instant {
        self.base + Duration::from_nanos(self.until.load(Ordering::SeqCst))
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// Closed once, for good. Without leader election only the token closes it.
#[derive(Clone, Debug, Default)]
pub struct Fence {
    token: CancellationToken,
    lease: Option<LeaseValidity>,
}

impl Fence {
    pub fn new(lease: Option<LeaseValidity>) -> Self {
        Self {
            token: CancellationToken::new(),
            lease,
        }
    }

    /// Whether nothing may be written any more. Checked right before each write.
    pub fn is_cancelled(&self) -> bool {
        if self.token.is_cancelled() {
            return true;
        }
        match &self.lease {
            Some(lease) if !lease.holds_at(Instant::now()) => {
                self.token.cancel();
                true
            }
            _ => false,
        }
    }

    pub fn cancel(&self) {
        self.token.cancel();
    }

    /// Resolves when the fence closes, by a cancel or by the lease's deadline passing.
    pub async fn cancelled(&self) {
        let Some(lease) = &self.lease else {
            return self.token.cancelled().await;
        };
        loop {
            if self.is_cancelled() {
                return;
            }
            tokio::select! {
                () = self.token.cancelled() => return,
                () = tokio::time::sleep_until(lease.expires().into()) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_holds_until_its_deadline_from_the_last_renewal_sent() {
        let lease = LeaseValidity::taken_at(Instant::now(), Duration::from_secs(10));
        let start = lease.base;
        assert!(lease.holds_at(start + Duration::from_secs(9)));
        assert!(!lease.holds_at(start + Duration::from_secs(10)));
        lease.extend_from(start + Duration::from_secs(4), Duration::from_secs(10));
        assert!(lease.holds_at(start + Duration::from_secs(13)));
        assert!(!lease.holds_at(start + Duration::from_secs(14)));
        // A late answer to an older renewal never shortens it.
        lease.extend_from(start + Duration::from_secs(1), Duration::from_secs(10));
        assert!(lease.holds_at(start + Duration::from_secs(13)));
        lease.end();
        assert!(!lease.holds_at(start));
    }

    #[test]
    fn the_fence_closes_on_cancel_or_when_the_lease_runs_out() {
        let open = Fence::new(None);
        assert!(!open.is_cancelled());
        open.cancel();
        assert!(open.is_cancelled());

        let lease = LeaseValidity::taken_at(Instant::now(), Duration::from_secs(10));
        let fence = Fence::new(Some(lease.clone()));
        assert!(!fence.is_cancelled());
        lease.end();
        assert!(
            fence.is_cancelled(),
            "a lease past its deadline closes the fence"
        );
        assert!(fence.token.is_cancelled(), "and for good");
    }

    #[tokio::test]
    async fn waiting_on_the_fence_ends_at_the_lease_deadline_without_a_cancel() {
        let lease = LeaseValidity::taken_at(Instant::now(), Duration::from_millis(50));
        let fence = Fence::new(Some(lease));
        tokio::time::timeout(Duration::from_secs(5), fence.cancelled())
            .await
            .expect("the deadline closes the fence");
        assert!(fence.is_cancelled());
    }
}
