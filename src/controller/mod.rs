//! The Kubernetes side: wiring of the two controllers (ModulePullOverride, ModuleSource scan),
//! the reconcile pipeline and the pure status builders.

mod apply;
mod cleanup;
mod context;
mod error;
mod fence;
pub mod flags;
mod leader;
mod reconcile;
mod restore;
mod rules;
mod scan;
pub mod schedule;
mod source;
mod sources;
mod standby;
pub mod status;
pub mod triggers;
mod verify;

use std::sync::Arc;

use futures::{FutureExt, StreamExt, TryStreamExt};
use kube::{
    Api, Client, ResourceExt,
    api::ListParams,
    runtime::{
        Controller, WatchStreamExt, controller,
        reflector::{self, ObjectRef, ReflectHandle, Store},
        watcher,
    },
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

pub use context::Context;
pub use error::{ControllerError, PassError};

use crate::{
    crd::{ModulePullOverride, ModuleSource},
    metrics::Metrics,
    settings::Settings,
    storage::{Limits, ModuleStore},
};

/// Errors that stop the operator from starting, or stop it afterwards.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot connect to Kubernetes: {0}")]
    Client(#[source] kube::Error),
    #[error("cannot find a kubeconfig or in-cluster service account: {0}")]
    Config(#[from] kube::config::InferConfigError),
    #[error(
        "the ModulePullOverride CRD is not installed or not readable ({0}); install it with `kubectl apply --server-side -k crds/`"
    )]
    CrdMissing(#[source] kube::Error),
    #[error("cannot prepare the download directory: {0}")]
    Storage(#[from] crate::storage::StorageError),
    #[error("leader election: {0}")]
    Lease(#[from] leader::LeaseError),
    #[error("lost the leadership; exiting so that this replica starts over as a candidate")]
    LostLeadership,
    #[error(transparent)]
    Webhook(#[from] crate::webhook::WebhookError),
}

/// How long any apiserver request may take to answer (its response headers; a watch's events
/// are bounded by [`WATCH_TIMEOUT_SECS`] instead). A request sent on a connection that stalled
/// (half-open: the apiserver's node lost power, a middlebox dropped it) would otherwise wait
/// forever, and every worker with it, while the lease loop's own bounded calls reconnect and
/// keep the replica leader. Dropping the timed-out request drops its connection too.
pub const API_CALL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(20);

/// The server-side timeout of each watch request: the watcher then notices a watch that went
/// silent (a stalled connection) within this plus 5 s, and watches again on a new connection.
/// kube's default, 290 s, left a stalled replica deaf for five minutes.
pub const WATCH_TIMEOUT_SECS: u32 = 60;

/// How long a connection to the apiserver may stay silent while something reads from it before
/// it is closed: longer than a watch lasts ([`WATCH_TIMEOUT_SECS`]), so only a stalled
/// connection meets it. A second line under [`API_CALL_TIMEOUT`] and the watch timeout, at the
/// transport: TCP keepalive would not see a stall whose peer kernel still acknowledges, and
/// kube's client speaks HTTP/1.1, which has no pings.
const CONNECTION_SILENCE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(90);

/// Connecting to the apiserver: a few round trips on a healthy network (kube's default is 30 s).
const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// A client for the inferred config whose requests name the replica that sent them (User-Agent
/// `mpo-operator/<version> (<identity>)`: the apiserver's audit log and request metrics can then
/// tell an old leader's writes from the new one's), each bounded by [`API_CALL_TIMEOUT`]. kube's
/// own retry of 429/503/504 is off: a failed write is retried by the pass's backoff, per object
/// and with jitter, not inside the call where it would hold a worker.
async fn kube_client(identity: &str) -> Result<Client, StartError> {
    let mut config = kube::Config::infer().await?;
    let agent = format!("mpo-operator/{} ({identity})", env!("CARGO_PKG_VERSION"));
    // A hostname is always a valid header value; anything else just keeps kube's default.
    if let Ok(value) = reqwest::header::HeaderValue::from_str(&agent) {
        config.headers.push((reqwest::header::USER_AGENT, value));
    }
    config.default_retry = false;
    config.connect_timeout = Some(CONNECT_TIMEOUT);
    config.read_timeout = Some(CONNECTION_SILENCE_TIMEOUT);
    let builder = kube::client::ClientBuilder::try_from(config).map_err(StartError::Client)?;
    Ok(builder
        .with_layer(&tower::timeout::TimeoutLayer::new(API_CALL_TIMEOUT))
        .build())
}

/// Runs until SIGTERM/SIGINT (exit 0, after in-flight passes finished and the lease was
/// released) or until the lease is lost (an error: the process restarts as a candidate).
pub async fn run(settings: Settings, metrics: Arc<Metrics>) -> Result<(), StartError> {
    let shutdown = shutdown_on_signals();
    crate::registry::set_max_requests_per_host(settings.registry_max_concurrent_requests);
    let client = kube_client(&leader::identity(&settings)).await?;
    preflight(&client).await?;
    // Every replica listens: a Service spreads the notifications, and each is handed to the
    // leader through the API.
    let webhook = match (settings.webhook_addr, &settings.webhook_token_file) {
        (Some(addr), Some(token_file)) => Some(
            crate::webhook::serve(
                crate::webhook::Config {
                    addr,
                    token_file: token_file.clone(),
                    selector: settings.watch_selector.clone(),
                },
                client.clone(),
                metrics.clone(),
            )
            .await?,
        ),
        _ => None,
    };
    let _webhook = AbortOnDrop(webhook);
    // Ready means healthy and, for the leader, caches synced: a standby that reached the
    // apiserver is ready too, so that a rollout (which waits for new pods to be Ready) completes.
    metrics.set_leader(false);
    metrics.set_ready(settings.leader_election);
    metrics.set_stall_bound(settings.liveness_stall_timeout);
    let heartbeat = tokio::spawn(beat(metrics.clone()));
    let store = ModuleStore::new(
        &settings.download_dir,
        Limits {
            max_unpacked_bytes: settings.limits.max_unpacked_size,
            max_entries: settings.limits.max_entries,
        },
    )
    .with_kept_versions(usize::from(settings.keep_versions));
    let standby = standby::Standby::start(client.clone(), &store, &settings, metrics.clone());
    let leadership = if settings.leader_election {
        let candidacy = async {
            if let Some(standby) = &standby {
                standby.warmed(standby::WARM_UP_BOUND).await;
            }
            leader::Leadership::acquire(client.clone(), &settings).await
        };
        tokio::select! {
            leadership = candidacy => Some(leadership),
            () = shutdown.cancelled() => None,
        }
    } else {
        None
    };
    if let Some(standby) = standby {
        standby.stop().await;
    }
    let leadership = match leadership {
        Some(leadership) => Some(leadership?),
        None if settings.leader_election => return Ok(()),
        None => None,
    };
    metrics.set_leader(true);
    // A new leader is ready again once its caches are synced.
    metrics.set_ready(false);
    // Only the leader claims and sweeps: with a shared volume, a starting standby would
    // otherwise remove the leader's staging directory in the middle of its download.
    let swept = store.sweep();
    let claim = store.claim_for_writing(&leader::replica_name(&settings));
    if !claim.exclusive {
        warn!(dir = %settings.download_dir.display(), "this replica does not hold the download directory's lock (another operator process on a shared volume, or the directory cannot be written); the lease decides who writes");
    }
    let _claim = claim;
    let swept = match swept {
        Ok(swept) => swept,
        Err(err) => {
            // Give the lease back: this container restarts with the same identity and would
            // retake it at once, failing again, while a healthy standby waits.
            if let Some(leadership) = leadership {
                leadership.release().await;
            }
            return Err(err.into());
        }
    };
    info!(dir = %settings.download_dir.display(), staging_removed = swept, "download directory ready");
    let stop = shutdown.child_token();
    let lost = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let fence = fence::Fence::new(leadership.as_ref().map(leader::Leadership::validity));
    let shutdown_bound = tokio::spawn(fence_after_grace(
        shutdown.clone(),
        settings.shutdown_timeout,
        fence.clone(),
    ));
    let lease_watch = leadership.as_ref().map(|l| {
        tokio::spawn(stop_when_lost(
            l.lost(),
            stop.clone(),
            fence.clone(),
            lost.clone(),
        ))
    });

    let scan = settings.scan_module_sources;
    let concurrency = settings.concurrency;
    let source_watch = sources::SourceWatch::new();
    let flags = Arc::new(
        flags::Flags::with_manager(rules::listing::flags_manager_for(&settings.watch_selector))
            .making_room(scan),
    );
    // A commit runs on a blocking thread that the fence cannot drop: it asks the fence itself
    // before it switches anything in.
    let store = store.with_commit_gate(crate::storage::CommitGate::new({
        let fence = fence.clone();
        move || !fence.is_cancelled()
    }));
    let ctx = Arc::new(Context::new(
        client.clone(),
        store,
        settings,
        metrics,
        source_watch.store.clone(),
        flags.clone(),
        fence,
    ));
    let (mpos, mpo_writer) = reflector::store::<ModulePullOverride>();
    let (mpos_synced, mpos_synced_rx) = tokio::sync::watch::channel(false);
    let mpo_events = watcher(
        Api::<ModulePullOverride>::all(client.clone()),
        watch_config(&ctx),
    )
    .default_backoff()
    // Nothing reads managedFields of an MPO; a thousand of them are a megabyte of cache.
    .modify(|mpo| mpo.managed_fields_mut().clear())
    .reflect(mpo_writer)
    .inspect_ok({
        let metrics = ctx.metrics.clone();
        move |event| match event {
            watcher::Event::InitDone => {
                metrics.listed("modulepulloverrides");
                mpos_synced.send_replace(true);
            }
            watcher::Event::Apply(mpo) | watcher::Event::InitApply(mpo)
                if rules::renew::renew_requested(mpo) != rules::renew::Renew::None =>
            {
                metrics.renew_seen(&mpo.name_any());
            }
            _ => {}
        }
    });
    let mpo_controller = Controller::for_stream(applied_once_stored(mpo_events), mpos.clone());
    let (wake, woken) = mpsc::unbounded_channel();
    let scan_events = source_watch.subscribe().filter(|_| scan);
    let watch = tokio::spawn(source_watch.run(
        client.clone(),
        watch_config(&ctx),
        mpos.clone(),
        flags.clone(),
        wake,
        ctx.metrics.clone(),
    ));
    // Only one task at a time may wait for a store to fill: kube-runtime's readiness signal wakes
    // just the last of several concurrent waiters. So this waits for the sources before anything
    // else does, and the MPO store's fill is told by our own signal, not by its readiness.
    tokio::select! {
        ready = ctx.sources.wait_until_ready() => if ready.is_err() { warn!("the ModuleSource watch ended before it synced") },
        () = stop.cancelled() => {}
    }
    let writer = tokio::spawn(flags_writer(
        flags,
        client.clone(),
        mpos,
        mpos_synced_rx,
        ctx.sources.clone(),
        stop.clone(),
        ctx.fence.clone(),
    ));
    ctx.metrics.set_ready(true);
    // Every recorded digest onto this disk first (listed or not), then the normal passes.
    restore::restore_recorded_first(&ctx, &stop).await;
    let overrides = override_controller(
        mpo_controller,
        woken,
        ctx.clone(),
        concurrency,
        stop.clone(),
    );
    match scan_events {
        Some(events) => {
            futures::future::join(overrides, scan_controller(events, ctx.clone(), stop)).await;
        }
        None => overrides.await,
    }
    watch.abort();
    let _ = writer.await;
    ctx.drain_events(std::time::Duration::from_secs(5)).await;
    ctx.metrics.set_ready(false);
    ctx.metrics.set_leader(false);
    heartbeat.abort();
    info!("controllers stopped; in-flight passes finished");
    shutdown_bound.abort();
    if let Some(lease_watch) = lease_watch {
        lease_watch.abort();
    }
    if let Some(leadership) = leadership {
        leadership.release().await;
    }
    if lost.load(std::sync::atomic::Ordering::Relaxed) {
        Err(StartError::LostLeadership)
    } else {
        Ok(())
    }
}

/// Stops a background task when `run` returns, whichever way.
struct AbortOnDrop(Option<tokio::task::JoinHandle<()>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        if let Some(task) = &self.0 {
            task.abort();
        }
    }
}

/// Liveness: `/healthz` fails when this stops beating (a wedged runtime or controller task).
async fn beat(metrics: Arc<Metrics>) {
    let mut every = tokio::time::interval(crate::metrics::HEARTBEAT_PERIOD);
    loop {
        every.tick().await;
        metrics.beat();
    }
}

/// Fences and stops the controllers when the lease is lost. Armed for the whole run, graceful
/// shutdown included: after SIGTERM a leader drains its passes, and if its lease goes meanwhile
/// (the standby took over) those passes must not write any more. `run` aborts it only once the
/// controllers have stopped.
async fn stop_when_lost(
    lost_lease: impl Future<Output = ()>,
    stop: CancellationToken,
    fence: fence::Fence,
    lost: Arc<std::sync::atomic::AtomicBool>,
) {
    lost_lease.await;
    warn!("lost the lease; cancelling in-flight passes and stopping the controllers");
    lost.store(true, std::sync::atomic::Ordering::Relaxed);
    // Fence first: passes in flight are dropped (their staging removed) and write nothing.
    fence.cancel();
    stop.cancel();
}

/// Bounds graceful shutdown: once `timeout` has passed since SIGTERM, passes still in flight are
/// fenced (dropped, their staging removed, nothing written) so that the controllers stop and the
/// lease is released before the kubelet's SIGKILL.
async fn fence_after_grace(
    shutdown: CancellationToken,
    timeout: std::time::Duration,
    fence: fence::Fence,
) {
    shutdown.cancelled().await;
    tokio::time::sleep(timeout).await;
    if !fence.is_cancelled() {
        warn!(
            timeout = %humantime::format_duration(timeout),
            "passes still in flight after the shutdown timeout; cancelling them"
        );
        fence.cancel();
    }
}

/// The objects to pass over, as kube's `applied_objects` gives them, except that those of a
/// (re)list come only at its `InitDone`, once the store holds the new state: woken at
/// `InitApply`, after a watch 410 say, a pass would read the old object from the store, find
/// nothing changed and wait a whole interval.
fn applied_once_stored<K, E>(
    events: impl futures::Stream<Item = Result<watcher::Event<K>, E>>,
) -> impl futures::Stream<Item = Result<K, E>> {
    let mut listed = Vec::new();
    events.flat_map(move |event| {
        let ready: Vec<Result<K, E>> = match event {
            Ok(watcher::Event::Apply(object)) => vec![Ok(object)],
            Ok(watcher::Event::Init) => {
                listed.clear();
                Vec::new()
            }
            Ok(watcher::Event::InitApply(object)) => {
                listed.push(object);
                Vec::new()
            }
            Ok(watcher::Event::InitDone) => {
                std::mem::take(&mut listed).into_iter().map(Ok).collect()
            }
            Ok(watcher::Event::Delete(_)) => Vec::new(),
            Err(err) => vec![Err(err)],
        };
        futures::stream::iter(ready)
    })
}

/// Cancelled on the first SIGTERM or SIGINT.
fn shutdown_on_signals() -> CancellationToken {
    let token = CancellationToken::new();
    let cancel = token.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        info!("shutdown requested: no new passes; waiting for the ones in flight");
        cancel.cancel();
    });
    token
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(e) => {
            warn!("cannot listen for SIGTERM ({e}); only Ctrl-C stops the operator");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

async fn preflight(client: &Client) -> Result<(), StartError> {
    let api = Api::<ModulePullOverride>::all(client.clone());
    api.list_metadata(&ListParams::default().limit(1))
        .await
        .map_err(StartError::CrdMissing)?;
    Ok(())
}

/// The flags writer starts once both stores are filled: computed from an empty MPO store, the
/// first flush would take every flag away.
async fn flags_writer(
    flags: Arc<flags::Flags>,
    client: Client,
    mpos: Store<ModulePullOverride>,
    mut mpos_synced: tokio::sync::watch::Receiver<bool>,
    sources: Store<ModuleSource>,
    stop: CancellationToken,
    fence: fence::Fence,
) {
    tokio::select! {
        synced = mpos_synced.wait_for(|synced| *synced) => {
            if synced.is_err() {
                return;
            }
        }
        () = stop.cancelled() => return,
    }
    flags::run_writer(flags, client, mpos, sources, stop, fence).await;
}

async fn override_controller(
    controller: Controller<ModulePullOverride>,
    mut woken: mpsc::UnboundedReceiver<ObjectRef<ModulePullOverride>>,
    ctx: Arc<Context>,
    concurrency: u16,
    stop: CancellationToken,
) {
    let woken = futures::stream::poll_fn(move |cx| woken.poll_recv(cx));
    controller
        .reconcile_on(woken)
        .with_config(controller::Config::default().concurrency(concurrency))
        .graceful_shutdown_on(stop.cancelled_owned())
        .run(reconcile::reconcile, reconcile::error_policy, ctx)
        .for_each(|result| async move {
            match result {
                Ok((object, action)) => debug!(%object, ?action, "reconciled"),
                Err(e) => log_controller_error(&e),
            }
        })
        .boxed()
        .await;
}

async fn scan_controller(
    events: ReflectHandle<ModuleSource>,
    ctx: Arc<Context>,
    stop: CancellationToken,
) {
    Controller::for_shared_stream(events, ctx.sources.clone())
        .graceful_shutdown_on(stop.cancelled_owned())
        .run(scan::scan_source, scan::scan_error_policy, ctx)
        .for_each(|result| async move {
            if let Err(e) = result {
                log_controller_error(&e);
            }
        })
        .await;
}

fn watch_config(ctx: &Context) -> watcher::Config {
    let config = watcher::Config::default().timeout(WATCH_TIMEOUT_SECS);
    let selector = ctx.settings.watch_selector.trim();
    if selector.is_empty() {
        config
    } else {
        config.labels(selector)
    }
}

fn log_controller_error<E: std::error::Error, Q: std::error::Error>(err: &controller::Error<E, Q>) {
    match err {
        // Already logged by the error policy.
        controller::Error::ReconcilerFailed(..) => {}
        // A queued object that was deleted meanwhile: nothing to do.
        controller::Error::ObjectNotFound(object) => debug!(%object, "object gone before its pass"),
        other => warn!("controller: {other}"),
    }
}

#[cfg(test)]
mod tests {
    use futures::StreamExt as _;

    use super::*;

    #[tokio::test]
    async fn a_relist_wakes_its_objects_only_once_the_store_holds_them() {
        use watcher::Event::*;
        let events: Vec<Result<watcher::Event<&str>, ()>> = vec![
            Ok(Init),
            Ok(InitApply("a")),
            Ok(InitApply("b")),
            Ok(InitDone),
            Ok(Apply("a")),
            Err(()),
            Ok(Delete("b")),
            // A relist after a 410: nothing before its end.
            Ok(Init),
            Ok(InitApply("c")),
            Ok(InitDone),
            // A relist cut short by an error, then done again: only the finished one counts.
            Ok(Init),
            Ok(InitApply("stale")),
            Ok(Init),
            Ok(InitApply("d")),
            Ok(InitDone),
        ];
        let woken: Vec<Result<&str, ()>> = applied_once_stored(futures::stream::iter(events))
            .collect()
            .await;
        assert_eq!(
            woken,
            vec![Ok("a"), Ok("b"), Ok("a"), Err(()), Ok("c"), Ok("d")]
        );
    }
}
