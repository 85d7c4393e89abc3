//! Leader election with a Lease (kube-lease-manager), so that one replica reconciles at a time.

use kube::Client;
use kube_lease_manager::{LeaseManagerBuilder, LeaseManagerError};
use tokio::{sync::watch, task::JoinHandle};
use tracing::{info, warn};

use crate::settings::Settings;

/// How long a Lease is valid without renewal, and how early before expiry it is renewed.
const LEASE_SECONDS: u64 = 15;
const RENEW_BEFORE_SECONDS: u64 = 5;

type Manager = JoinHandle<Result<kube_lease_manager::LeaseManager, LeaseManagerError>>;

/// The held lease. Dropping `release()` hands it over at once instead of after it expires.
pub struct Leadership {
    state: watch::Receiver<bool>,
    manager: Manager,
}

impl Leadership {
    /// Waits until this replica holds the Lease.
    pub async fn acquire(client: Client, settings: &Settings) -> Result<Self, LeaseManagerError> {
        let namespace = lease_namespace(settings);
        let identity = identity(settings);
        let manager = LeaseManagerBuilder::new(client, &settings.lease_name)
            .with_namespace(&namespace)
            .with_identity(&identity)
            .with_duration(LEASE_SECONDS)
            .with_grace(RENEW_BEFORE_SECONDS)
            .with_field_manager("mpo-operator-lease")
            .build()
            .await?;
        info!(lease = %settings.lease_name, %namespace, %identity, "waiting to become the leader");
        let (mut state, manager) = manager.watch().await;
        if state.wait_for(|leader| *leader).await.is_err() {
            warn!("the lease manager stopped before this replica became the leader");
        }
        info!(%identity, "became the leader");
        Ok(Self { state, manager })
    }

    /// Resolves when the lease is lost (another replica took it, or renewal failed).
    pub fn lost(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut state = self.state.clone();
        async move {
            let _ = state.wait_for(|leader| !*leader).await;
        }
    }

    /// Gives the lease up so that another replica can take over without waiting for expiry.
    pub async fn release(self) {
        drop(self.state);
        match self.manager.await {
            Ok(Ok(_)) => info!("released the lease"),
            Ok(Err(e)) => warn!("could not release the lease: {e}"),
            Err(e) => warn!("lease manager task failed: {e}"),
        }
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

fn identity(settings: &Settings) -> String {
    settings
        .identity
        .clone()
        .or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|h| h.trim().to_owned())
        })
        .map(|id| format!("{id}-{}", std::process::id()))
        .unwrap_or_else(|| format!("mpo-operator-{}", std::process::id()))
}
