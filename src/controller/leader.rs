//! Leader election with a `coordination.k8s.io` Lease, so that one replica reconciles at a time.
//!
//! As client-go's leader election, with two properties the operator needs:
//! - **fencing**: a leader that has not renewed within the renew deadline (shorter than the lease
//!   duration) reports the loss at once, from its own clock, without waiting for the apiserver to
//!   answer; so it stops before another replica may take the lease;
//! - **quick handover**: candidates look every [`RETRY_PERIOD`], so a released lease (holder
//!   cleared on SIGTERM) is taken within seconds, not after the old lease would have expired.
//!
//! Expiry is judged from when this replica *observed* the lease change, not from the holder's
//! `renewTime`, so that clock skew between nodes does not shorten a lease.

use std::time::{Duration, Instant};

use k8s_openapi::{
    api::coordination::v1::{Lease, LeaseSpec},
    apimachinery::pkg::apis::meta::v1::MicroTime,
};
use kube::{
    Api, Client,
    api::{ObjectMeta, PostParams},
};
use tokio::{sync::watch, task::JoinHandle};
use tracing::{debug, info, warn};

use super::fence::LeaseValidity;
use crate::settings::Settings;

/// How long a lease is valid without renewal.
pub const LEASE_DURATION: Duration = Duration::from_secs(15);
/// A leader that has not renewed for this long stops: before anyone else may take the lease.
pub const RENEW_DEADLINE: Duration = Duration::from_secs(10);
/// How often the leader renews, and how often a candidate looks.
pub const RETRY_PERIOD: Duration = Duration::from_secs(2);
/// The pause before a renewal that follows a failed one.
const RETRY_AFTER_FAILURE: Duration = Duration::from_millis(200);
/// One apiserver call of the lease loop may take at most this long.
const CALL_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    #[error("Lease {name:?}: {source}")]
    Api {
        name: String,
        #[source]
        source: kube::Error,
    },
}

/// What a candidate does with the lease it read (pure, see the tests).
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// Nobody holds it, it expired, or it is ours: write ourselves in.
    Take,
    /// Someone else holds it: look again after this long.
    Wait(Duration),
}

/// The holder of `lease` as this replica saw it, and since when it has seen it unchanged.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Observed {
    pub holder: Option<String>,
    pub renew_time: Option<String>,
    pub since: Instant,
}

pub fn decide(observed: &Observed, identity: &str, now: Instant) -> Step {
    let Some(holder) = observed.holder.as_deref().filter(|h| !h.is_empty()) else {
        return Step::Take;
    };
    if holder == identity {
        return Step::Take;
    }
    let expires = observed.since + LEASE_DURATION;
    if now >= expires {
        return Step::Take;
    }
    Step::Wait(RETRY_PERIOD.min(expires - now))
}

/// The held lease. [`Leadership::release`] hands it over at once instead of after it expires.
pub struct Leadership {
    lost: watch::Receiver<bool>,
    validity: LeaseValidity,
    renewer: JoinHandle<()>,
    lease: LeaseHandle,
}

#[derive(Clone)]
struct LeaseHandle {
    api: Api<Lease>,
    name: String,
    identity: String,
}

impl Leadership {
    /// Waits until this replica holds the Lease.
    pub async fn acquire(client: Client, settings: &Settings) -> Result<Self, LeaseError> {
        let namespace = lease_namespace(settings);
        let lease = LeaseHandle {
            api: Api::namespaced(client, &namespace),
            name: settings.lease_name.clone(),
            identity: identity(settings),
        };
        info!(lease = %lease.name, %namespace, identity = %lease.identity, "waiting to become the leader");
        let mut observed: Option<Observed> = None;
        let taken_at = loop {
            let sent = Instant::now();
            match lease.try_take(&mut observed).await {
                Ok(true) => break sent,
                Ok(false) => {}
                Err(err) => warn!("{err}; trying again"),
            }
            let wait = match &observed {
                Some(seen) => match decide(seen, &lease.identity, Instant::now()) {
                    Step::Wait(wait) => wait,
                    Step::Take => Duration::ZERO,
                },
                None => RETRY_PERIOD,
            };
            tokio::time::sleep(wait.max(Duration::from_millis(100))).await;
        };
        info!(identity = %lease.identity, "became the leader");
        let validity = LeaseValidity::taken_at(taken_at, RENEW_DEADLINE);
        let (lost_tx, lost) = watch::channel(false);
        let renewer = tokio::spawn(renew_until_lost(
            lease.clone(),
            validity.clone(),
            taken_at,
            lost_tx,
        ));
        Ok(Self {
            lost,
            validity,
            renewer,
            lease,
        })
    }

    /// Resolves when the lease is lost: another replica took it, or it was not renewed within the
    /// renew deadline (however the apiserver is doing).
    pub fn lost(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut lost = self.lost.clone();
        async move {
            let _ = lost.wait_for(|lost| *lost).await;
        }
    }

    /// Until when this replica may write as the leader, on its own clock (for the fence).
    pub fn validity(&self) -> LeaseValidity {
        self.validity.clone()
    }

    /// Gives the lease up so that another replica can take over without waiting for expiry.
    pub async fn release(self) {
        self.renewer.abort();
        self.validity.end();
        if *self.lost.borrow() {
            return;
        }
        match tokio::time::timeout(CALL_TIMEOUT, self.lease.clear_holder()).await {
            Ok(Ok(())) => info!("released the lease"),
            Ok(Err(e)) => warn!("could not release the lease: {e}"),
            Err(_) => warn!("could not release the lease in time"),
        }
    }
}

/// Renews every [`RETRY_PERIOD`]; reports the loss when another holder shows up, or when no
/// renewal succeeded for [`RENEW_DEADLINE`] (checked on our own clock, each call bounded).
async fn renew_until_lost(
    lease: LeaseHandle,
    validity: LeaseValidity,
    taken_at: Instant,
    lost: watch::Sender<bool>,
) {
    let mut last_renewal = taken_at;
    let lose = |why: &str| {
        validity.end();
        warn!("{why}");
        lost.send_replace(true);
    };
    // After a failed or timed-out renewal the next one goes at once: each attempt on a stalled
    // pooled connection costs its whole timeout and drops that connection, and waiting the
    // retry period on top left room for two attempts only, fewer than the pool's dead
    // connections after a half-open partition.
    let mut failed = false;
    loop {
        let deadline = last_renewal + RENEW_DEADLINE;
        let pause = if failed {
            RETRY_AFTER_FAILURE
        } else {
            RETRY_PERIOD
        };
        let wait = pause.min(deadline.saturating_duration_since(Instant::now()));
        tokio::time::sleep(wait).await;
        if Instant::now() >= deadline {
            lose("the lease was not renewed within the renew deadline; stopping");
            return;
        }
        let budget = CALL_TIMEOUT.min(deadline.saturating_duration_since(Instant::now()));
        let sent = Instant::now();
        let renewed = tokio::time::timeout(budget, lease.renew()).await;
        failed = !matches!(renewed, Ok(Ok(true)));
        match renewed {
            Ok(Ok(true)) => {
                last_renewal = sent;
                validity.extend_from(sent, RENEW_DEADLINE);
            }
            Ok(Ok(false)) => {
                lose("another replica holds the lease now; stopping");
                return;
            }
            Ok(Err(err)) => debug!("renewing the lease failed: {err}"),
            Err(_) => debug!("renewing the lease timed out"),
        }
    }
}

impl LeaseHandle {
    fn api_error(&self, source: kube::Error) -> LeaseError {
        LeaseError::Api {
            name: self.name.clone(),
            source,
        }
    }

    /// Reads the lease, notes what was seen, and writes us in if [`decide`] says so. `true`
    /// when we hold it now.
    async fn try_take(&self, observed: &mut Option<Observed>) -> Result<bool, LeaseError> {
        let current = self.bounded(self.api.get_opt(&self.name)).await?;
        let Some(mut lease) = current else {
            // Deleted (by hand, or a namespace cleanup) while another replica held it: that
            // leader goes on writing until its renewal fails, so the lease is taken no sooner
            // than the holder seen last would have expired.
            if let Some(seen) = observed.as_ref()
                && matches!(decide(seen, &self.identity, Instant::now()), Step::Wait(_))
            {
                return Ok(false);
            }
            return self.create().await;
        };
        let spec = lease.spec.clone().unwrap_or_default();
        let seen = Observed {
            holder: spec.holder_identity.clone(),
            renew_time: spec.renew_time.as_ref().map(|t| format!("{:?}", t.0)),
            since: Instant::now(),
        };
        // Only a change restarts the expiry clock.
        let seen = match observed.take() {
            Some(old) if old.holder == seen.holder && old.renew_time == seen.renew_time => old,
            _ => seen,
        };
        let step = decide(&seen, &self.identity, Instant::now());
        *observed = Some(seen);
        if step != Step::Take {
            return Ok(false);
        }
        let transitions = spec.lease_transitions.unwrap_or_default();
        let taking_over = spec.holder_identity.as_deref() != Some(self.identity.as_str());
        lease.spec = Some(self.spec_as_holder(if taking_over {
            transitions + 1
        } else {
            transitions
        }));
        // Replace carries the resourceVersion we read: a concurrent taker makes this fail (409).
        let replaced = self
            .bounded(self.api.replace(&self.name, &PostParams::default(), &lease))
            .await;
        taken_unless_conflict(replaced)
    }

    async fn create(&self) -> Result<bool, LeaseError> {
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(self.name.clone()),
                ..ObjectMeta::default()
            },
            spec: Some(self.spec_as_holder(0)),
        };
        let created = self
            .bounded(self.api.create(&PostParams::default(), &lease))
            .await;
        taken_unless_conflict(created)
    }

    /// `Ok(false)` when someone else holds the lease now.
    async fn renew(&self) -> Result<bool, LeaseError> {
        let Some(mut lease) = self
            .api
            .get_opt(&self.name)
            .await
            .map_err(|e| self.api_error(e))?
        else {
            return Ok(false);
        };
        let mut spec = lease.spec.clone().unwrap_or_default();
        if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
            return Ok(false);
        }
        spec.renew_time = Some(MicroTime(k8s_openapi::jiff::Timestamp::now()));
        spec.lease_duration_seconds = Some(LEASE_DURATION.as_secs() as i32);
        lease.spec = Some(spec);
        match self
            .api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(status)) if status.code == 409 => {
                // Written meanwhile (by us or another): the next round reads it again.
                Err(self.api_error(kube::Error::Api(status)))
            }
            Err(e) => Err(self.api_error(e)),
        }
    }

    async fn clear_holder(&self) -> Result<(), LeaseError> {
        let Some(mut lease) = self
            .api
            .get_opt(&self.name)
            .await
            .map_err(|e| self.api_error(e))?
        else {
            return Ok(());
        };
        let mut spec = lease.spec.clone().unwrap_or_default();
        if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
            return Ok(());
        }
        spec.holder_identity = None;
        spec.renew_time = None;
        lease.spec = Some(spec);
        self.api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
            .map(|_| ())
            .map_err(|e| self.api_error(e))
    }

    fn spec_as_holder(&self, transitions: i32) -> LeaseSpec {
        let now = MicroTime(k8s_openapi::jiff::Timestamp::now());
        LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            lease_duration_seconds: Some(LEASE_DURATION.as_secs() as i32),
            acquire_time: Some(now.clone()),
            renew_time: Some(now),
            lease_transitions: Some(transitions),
            ..LeaseSpec::default()
        }
    }

    async fn bounded<T>(
        &self,
        call: impl Future<Output = Result<T, kube::Error>>,
    ) -> Result<T, LeaseError> {
        match tokio::time::timeout(CALL_TIMEOUT, call).await {
            Ok(result) => result.map_err(|e| self.api_error(e)),
            Err(_) => Err(self.api_error(kube::Error::Service(
                std::io::Error::new(std::io::ErrorKind::TimedOut, "the apiserver did not answer")
                    .into(),
            ))),
        }
    }
}

/// A write that made us the holder: `true`; lost to a concurrent writer (409): `false`.
fn taken_unless_conflict(written: Result<Lease, LeaseError>) -> Result<bool, LeaseError> {
    match written {
        Ok(_) => Ok(true),
        Err(LeaseError::Api {
            source: kube::Error::Api(status),
            ..
        }) if status.code == 409 => Ok(false),
        Err(err) => Err(err),
    }
}

fn lease_namespace(settings: &Settings) -> String {
    settings
        .lease_namespace
        .clone()
        .or_else(|| std::env::var("POD_NAMESPACE").ok())
        .or_else(|| {
            std::fs::read_to_string("/var/run/secrets/kubernetes.io/serviceaccount/namespace").ok()
        })
        .map(|ns| ns.trim().to_owned())
        .filter(|ns| !ns.is_empty())
        .unwrap_or_else(|| "default".to_owned())
}

/// `<--identity or hostname>-<pid>`: unique per process, also for two replicas on one host.
pub(crate) fn identity(settings: &Settings) -> String {
    format!("{}-{}", replica_name(settings), std::process::id())
}

/// `--identity` (the pod name in deploy/), else the hostname: the same across restarts of one
/// replica's container, which is what names the writer of a download directory.
pub(crate) fn replica_name(settings: &Settings) -> String {
    settings
        .identity
        .clone()
        .or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|h| h.trim().to_owned())
        })
        .unwrap_or_else(|| "mpo-operator".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(holder: Option<&str>, ago: Duration, now: Instant) -> Observed {
        Observed {
            holder: holder.map(str::to_owned),
            renew_time: None,
            since: now - ago,
        }
    }

    #[test]
    fn a_free_expired_or_own_lease_is_taken_and_a_held_one_is_looked_at_again_soon() {
        let now = Instant::now() + Duration::from_secs(3600);
        assert_eq!(
            decide(&seen(None, Duration::ZERO, now), "me", now),
            Step::Take
        );
        assert_eq!(
            decide(&seen(Some(""), Duration::ZERO, now), "me", now),
            Step::Take
        );
        assert_eq!(
            decide(&seen(Some("me"), Duration::ZERO, now), "me", now),
            Step::Take
        );
        assert_eq!(
            decide(&seen(Some("other"), LEASE_DURATION, now), "me", now),
            Step::Take,
            "expired, by our own clock"
        );
        assert_eq!(
            decide(&seen(Some("other"), Duration::ZERO, now), "me", now),
            Step::Wait(RETRY_PERIOD),
            "looks again soon, to notice a release"
        );
        let almost = LEASE_DURATION - Duration::from_millis(500);
        assert_eq!(
            decide(&seen(Some("other"), almost, now), "me", now),
            Step::Wait(Duration::from_millis(500))
        );
    }

    #[test]
    fn the_leader_stops_before_anyone_else_may_take_over() {
        assert!(RENEW_DEADLINE + RETRY_PERIOD <= LEASE_DURATION);
        assert!(CALL_TIMEOUT < RENEW_DEADLINE);
    }
}
