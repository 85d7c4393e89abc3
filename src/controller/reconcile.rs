//! The entry points kube-runtime calls: a thin shell around apply/cleanup with the finalizer.

use std::{sync::Arc, time::Duration};

use kube::{
    Api, ResourceExt,
    runtime::{
        controller::Action,
        finalizer::{Event, finalizer},
    },
};
use tracing::{instrument, warn};

use super::{Context, ControllerError, apply::apply, cleanup::cleanup};
use crate::crd::{FINALIZER, ModulePullOverride};

#[instrument(skip_all, fields(mpo = %mpo.name_any()))]
pub async fn reconcile(
    mpo: Arc<ModulePullOverride>,
    ctx: Arc<Context>,
) -> Result<Action, ControllerError> {
    let api = Api::<ModulePullOverride>::all(ctx.client.clone());
    finalizer(&api, FINALIZER, mpo, |event| async {
        match event {
            Event::Apply(mpo) => apply(mpo, &ctx).await,
            Event::Cleanup(mpo) => cleanup(mpo, &ctx).await,
        }
    })
    .await
    .map_err(|e| ControllerError::Finalizer(Box::new(e)))
}

/// API failures: retry soon, but not in a tight loop.
pub fn error_policy(
    mpo: Arc<ModulePullOverride>,
    err: &ControllerError,
    ctx: Arc<Context>,
) -> Action {
    warn!(mpo = %mpo.name_any(), reason = err.reason(), "reconcile failed: {err}");
    ctx.metrics.reconciled(err.reason(), Duration::ZERO);
    Action::requeue(Duration::from_secs(5))
}
