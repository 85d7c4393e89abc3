//! Warm standby (SPEC §10): while a replica waits for the lease it pulls every recorded
//! `status.imageDigest` into its own download directory, switched in as the leader's are, so
//! that a failover downloads nothing and a consumer beside any replica sees the modules. It
//! writes nothing to the API (no status, no event, no flag), and nothing to a directory another
//! replica writes ([`Sharing`]). Readiness does not wait for it: a rollout must not stall on a
//! slow registry.

use std::{
    collections::HashMap,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use futures::StreamExt;
use kube::{
    Api, Client, ResourceExt,
    runtime::{WatchStreamExt, reflector, watcher},
};
use tokio::{sync::Notify, task::JoinHandle};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::{Context, fence::Fence, flags::Flags, restore};
use crate::{
    Digest,
    crd::{ModulePullOverride, ModuleSource},
    metrics::Metrics,
    settings::Settings,
    storage::{CommitGate, ModuleStore, Sharing},
};

/// A round starts at most this often, however often the statuses change.
const SETTLE: Duration = Duration::from_millis(500);
/// A round runs this often without any change too: sharing comes and goes.
const RECHECK: Duration = Duration::from_secs(30);
/// A digest whose pull failed is not tried again before this.
const RETRY_FAILED: Duration = Duration::from_secs(30);
/// The longest a replica waits for its first round before it stands for the lease.
pub const WARM_UP_BOUND: Duration = Duration::from_secs(60);

/// The running warm-up of a standby.
pub struct Standby {
    stop: CancellationToken,
    /// Read by the commit gate on the blocking thread, which the stop cannot drop.
    stopped: Arc<AtomicBool>,
    /// True once the first round is over (pulled, failed or skipped).
    warmed: tokio::sync::watch::Receiver<bool>,
    task: JoinHandle<()>,
}

impl Standby {
    /// Starts warming `store` unless there is no standby (no leader election) or it is off.
    pub fn start(
        client: Client,
        store: &ModuleStore,
        settings: &Settings,
        metrics: Arc<Metrics>,
    ) -> Option<Self> {
        if !settings.leader_election || !settings.warm_standby {
            return None;
        }
        let replica = super::leader::replica_name(settings);
        let stop = CancellationToken::new();
        let stopped = Arc::new(AtomicBool::new(false));
        // Asked right before each switch: a leader may have taken this directory meanwhile.
        let gated = store.clone().with_commit_gate(CommitGate::new({
            let stopped = stopped.clone();
            let store = store.clone();
            let replica = replica.clone();
            move || !stopped.load(Ordering::SeqCst) && store.sharing(&replica) == Sharing::Private
        }));
        let (sources, source_writer) = reflector::store::<ModuleSource>();
        let ctx = Context::new(
            client,
            gated,
            settings.clone(),
            metrics,
            sources,
            Arc::new(Flags::with_manager(String::new())),
            Fence::new(None),
        );
        let (warmed_tx, warmed) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(warm(
            Arc::new(ctx),
            source_writer,
            replica,
            warmed_tx,
            stop.clone(),
        ));
        Some(Self {
            stop,
            stopped,
            warmed,
            task,
        })
    }

    /// Until the first round is over, at most `within`. A replica stands for the lease only
    /// then: a pod that just started with an empty volume would otherwise take a released lease
    /// before a warm standby's next poll and download everything as the new leader.
    pub async fn warmed(&self, within: Duration) {
        let mut warmed = self.warmed.clone();
        let waited = tokio::time::timeout(within, warmed.wait_for(|done| *done)).await;
        if waited.is_err() {
            info!(
                ?within,
                "warm standby: still pulling; standing for the lease anyway"
            );
        }
    }

    /// Stops before this replica leads, so that nothing of the standby's runs beside the
    /// leader's sweep and passes.
    pub async fn stop(self) {
        self.stopped.store(true, Ordering::SeqCst);
        self.stop.cancel();
        if let Err(err) = self.task.await {
            warn!("the warm standby ended badly: {err}");
        }
    }
}

/// Watches the overrides and sources and keeps this disk holding what the statuses record.
async fn warm(
    ctx: Arc<Context>,
    source_writer: reflector::store::Writer<ModuleSource>,
    replica: String,
    warmed: tokio::sync::watch::Sender<bool>,
    stop: CancellationToken,
) {
    let changed = Notify::new();
    let config = super::watch_config(&ctx);
    let source_events = watcher(Api::<ModuleSource>::all(ctx.client.clone()), config.clone())
        .default_backoff()
        .reflect(source_writer);
    let (mpos, mpo_writer) = reflector::store::<ModulePullOverride>();
    let mpo_events = watcher(Api::<ModulePullOverride>::all(ctx.client.clone()), config)
        .default_backoff()
        // Nothing here reads managedFields; a thousand MPOs carry a megabyte of them.
        .modify(|mpo| mpo.managed_fields_mut().clear())
        .reflect(mpo_writer);
    tokio::select! {
        () = follow(source_events, &changed) => {}
        () = follow(mpo_events, &changed) => {}
        () = rounds(&ctx, &mpos, &changed, &replica, &warmed, &stop) => {}
        () = stop.cancelled() => {}
    }
    ctx.fence.cancel();
    // Standby figures: a leader's disk is told by its passes.
    ctx.metrics.set_standby_volume_shared(false);
    ctx.metrics.set_standby_digests(0, 0);
}

/// Drives a watch (its store fills only while polled) and says that something changed.
async fn follow<K, E: std::fmt::Display>(
    events: impl futures::Stream<Item = Result<K, E>>,
    changed: &Notify,
) {
    let mut events = std::pin::pin!(events);
    while let Some(event) = events.next().await {
        if let Err(err) = event {
            warn!("warm standby watch: {err}");
        }
        // A permit is kept when no round waits: a change during a round is not lost.
        changed.notify_one();
    }
}

/// One round after each change (settled), and every [`RECHECK`].
async fn rounds(
    ctx: &Arc<Context>,
    mpos: &reflector::Store<ModulePullOverride>,
    changed: &Notify,
    replica: &str,
    warmed: &tokio::sync::watch::Sender<bool>,
    stop: &CancellationToken,
) {
    if ctx.sources.wait_until_ready().await.is_err() || mpos.wait_until_ready().await.is_err() {
        warmed.send_replace(true);
        return;
    }
    info!("warm standby: pulling the recorded digests into this replica's download directory");
    let mut failed: HashMap<(String, Digest), Instant> = HashMap::new();
    let mut said_shared = None;
    loop {
        match ctx.store.sharing(replica) {
            Sharing::Private => {
                ctx.metrics.set_standby_volume_shared(false);
                said_shared = None;
                round(ctx, mpos, &mut failed, stop).await;
            }
            shared => {
                ctx.metrics.set_standby_volume_shared(true);
                if said_shared.as_ref() != Some(&shared) {
                    info!(
                        dir = %ctx.store.root().display(),
                        "warm standby: not writing the download directory: {}",
                        describe(&shared)
                    );
                    said_shared = Some(shared);
                }
            }
        }
        warmed.send_replace(true);
        tokio::select! {
            () = changed.notified() => {}
            () = tokio::time::sleep(RECHECK) => {}
        }
        tokio::time::sleep(SETTLE).await;
    }
}

fn describe(sharing: &Sharing) -> String {
    match sharing {
        Sharing::Private => "it is this replica's".to_owned(),
        Sharing::NamedFor(other) => format!("replica {other} writes it too (a shared volume)"),
        Sharing::Locked => "another running operator holds it (a shared volume)".to_owned(),
    }
}

/// Pulls what is missing, a few at a time, as the leader's restore does.
async fn round(
    ctx: &Arc<Context>,
    mpos: &reflector::Store<ModulePullOverride>,
    failed: &mut HashMap<(String, Digest), Instant>,
    stop: &CancellationToken,
) {
    let recorded: Vec<(ModulePullOverride, Digest)> = mpos
        .state()
        .iter()
        .filter_map(|mpo| Some(((**mpo).clone(), restore::recorded(mpo)?)))
        .collect();
    let (held, missing): (Vec<_>, Vec<_>) = recorded
        .into_iter()
        .partition(|(mpo, digest)| ctx.store.is_active(&mpo.name_any(), digest));
    ctx.metrics.set_standby_digests(held.len(), missing.len());
    failed.retain(|_, at| at.elapsed() < RETRY_FAILED);
    let due: Vec<_> = missing
        .into_iter()
        .filter(|(mpo, digest)| !failed.contains_key(&(mpo.name_any(), digest.clone())))
        .collect();
    if due.is_empty() {
        return;
    }
    info!(count = due.len(), "warm standby: pulling recorded digests");
    let mut results = futures::stream::iter(due)
        .map(|(mpo, digest)| async move {
            let key = (mpo.name_any(), digest.clone());
            (key, restore::restore_one(ctx, mpo, digest).await)
        })
        .buffer_unordered(usize::from(ctx.settings.concurrency.max(1)));
    let mut pulled = 0usize;
    loop {
        let next = tokio::select! {
            next = results.next() => next,
            () = stop.cancelled() => return,
        };
        let Some((key, ok)) = next else { break };
        if ok {
            pulled += 1;
        } else {
            failed.insert(key, Instant::now());
        }
    }
    let (held, missing) = on_disk(ctx, mpos);
    ctx.metrics.set_standby_digests(held, missing);
    info!(
        pulled,
        held, missing, "warm standby: recorded digests on this disk"
    );
}

/// How many recorded digests are active on this disk, and how many are not.
fn on_disk(ctx: &Context, mpos: &reflector::Store<ModulePullOverride>) -> (usize, usize) {
    let recorded: Vec<bool> = mpos
        .state()
        .iter()
        .filter_map(|mpo| {
            let digest = restore::recorded(mpo)?;
            Some(ctx.store.is_active(&mpo.name_any(), &digest))
        })
        .collect();
    let held = recorded.iter().filter(|held| **held).count();
    (held, recorded.len() - held)
}
