//! The Kubernetes side: wiring of the two controllers (ModulePullOverride, ModuleSource scan),
//! the reconcile pipeline and the pure status builders.

mod apply;
mod cleanup;
mod context;
mod error;
mod fetch;
mod reconcile;
mod scan;
mod source;
pub mod status;
pub mod triggers;

use std::sync::Arc;

use futures::{FutureExt, StreamExt};
use kube::{
    Api, Client,
    api::ListParams,
    runtime::{Controller, controller, watcher},
};
use tracing::{debug, info, warn};

pub use context::Context;
pub use error::{ControllerError, PassError};

use crate::{
    crd::{ModulePullOverride, ModuleSource},
    metrics::Metrics,
    settings::Settings,
    storage::{Limits, ModuleStore},
};

/// Errors that stop the operator from starting.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot connect to Kubernetes: {0}")]
    Client(#[source] kube::Error),
    #[error(
        "the ModulePullOverride CRD is not installed or not readable ({0}); install it with `kubectl apply -f crds/`"
    )]
    CrdMissing(#[source] kube::Error),
    #[error("cannot prepare the download directory: {0}")]
    Storage(#[from] crate::storage::StorageError),
}

/// Runs until SIGTERM/SIGINT: both controllers share one context.
pub async fn run(settings: Settings, metrics: Arc<Metrics>) -> Result<(), StartError> {
    let client = Client::try_default().await.map_err(StartError::Client)?;
    preflight(&client).await?;
    let store = ModuleStore::new(
        &settings.download_dir,
        Limits {
            max_unpacked_bytes: settings.limits.max_unpacked_size,
            max_entries: settings.limits.max_entries,
        },
    );
    let swept = store.sweep()?;
    info!(dir = %settings.download_dir.display(), staging_removed = swept, "download directory ready");
    let scan = settings.scan_module_sources;
    let concurrency = settings.concurrency;
    let ctx = Arc::new(Context::new(client.clone(), store, settings, metrics));
    metrics_ready(&ctx);

    let overrides = override_controller(client.clone(), ctx.clone(), concurrency);
    if scan {
        futures::future::join(overrides, scan_controller(client, ctx.clone())).await;
    } else {
        overrides.await;
    }
    info!("controllers stopped");
    Ok(())
}

fn metrics_ready(ctx: &Context) {
    ctx.metrics.set_ready(true);
}

async fn preflight(client: &Client) -> Result<(), StartError> {
    let api = Api::<ModulePullOverride>::all(client.clone());
    api.list_metadata(&ListParams::default().limit(1))
        .await
        .map_err(StartError::CrdMissing)?;
    Ok(())
}

async fn override_controller(client: Client, ctx: Arc<Context>, concurrency: u16) {
    let mpos = Api::<ModulePullOverride>::all(client.clone());
    let sources = Api::<ModuleSource>::all(client);
    let controller = Controller::new(mpos, watch_config(&ctx));
    let store = controller.store();
    controller
        .watches(sources, watch_config(&ctx), move |source| {
            triggers::mpos_of_source(&source, store.state().iter().map(|m| m.as_ref()))
                .collect::<Vec<_>>()
        })
        .with_config(controller::Config::default().concurrency(concurrency))
        .shutdown_on_signal()
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

async fn scan_controller(client: Client, ctx: Arc<Context>) {
    let sources = Api::<ModuleSource>::all(client);
    Controller::new(sources, watch_config(&ctx))
        .shutdown_on_signal()
        .run(scan::scan_source, scan::scan_error_policy, ctx)
        .for_each(|result| async move {
            if let Err(e) = result {
                log_controller_error(&e);
            }
        })
        .await;
}

fn watch_config(ctx: &Context) -> watcher::Config {
    let selector = ctx.settings.watch_selector.trim();
    if selector.is_empty() {
        watcher::Config::default()
    } else {
        watcher::Config::default().labels(selector)
    }
}

fn log_controller_error<E: std::error::Error, Q: std::error::Error>(err: &controller::Error<E, Q>) {
    match err {
        // Already logged by the error policy.
        controller::Error::ReconcilerFailed(..) => {}
        other => warn!("controller: {other}"),
    }
}
