//! The entry points kube-runtime calls: a thin shell around apply/cleanup with the finalizer.

use std::{sync::Arc, time::Duration};

use kube::{
    Api, ResourceExt,
    runtime::{
        controller::Action,
        finalizer::{Event, finalizer},
    },
};
use tracing::{debug, instrument, warn};

use super::{Context, ControllerError, apply::apply, cleanup::cleanup, rules};
use crate::crd::{FINALIZER, ModulePullOverride};

#[instrument(skip_all, fields(mpo = %mpo.name_any()))]
pub async fn reconcile(
    mpo: Arc<ModulePullOverride>,
    ctx: Arc<Context>,
) -> Result<Action, ControllerError> {
    if ctx.fence.is_cancelled() {
        // The lease is lost: not even a finalizer write.
        return Ok(Action::await_change());
    }
    let api = Api::<ModulePullOverride>::all(ctx.client.clone());
    let name = mpo.name_any();
    let action = finalizer(&api, FINALIZER, mpo, |event| async {
        match event {
            Event::Apply(mpo) => apply(mpo, &ctx).await,
            Event::Cleanup(mpo) => cleanup(mpo, &ctx).await,
        }
    })
    .await
    .map_err(|e| ControllerError::Finalizer(Box::new(e)))?;
    ctx.api_succeeded(&name);
    Ok(action)
}

/// API failures: retry with a backoff that grows to minutes, so a persistently failing write does
/// not redo the pass (and its registry HEAD) every few seconds.
pub fn error_policy(
    mpo: Arc<ModulePullOverride>,
    err: &ControllerError,
    ctx: Arc<Context>,
) -> Action {
    if is_fenced(err) {
        return Action::await_change();
    }
    if is_stale_finalizer_patch(err) {
        // The cached object predates our own finalizer write; the watch brings the new one.
        debug!(mpo = %mpo.name_any(), "finalizer already changed on the server; retrying");
        return Action::requeue(Duration::from_secs(1));
    }
    let name = mpo.name_any();
    let wait = rules::backoff::api_backoff(ctx.api_failed(&name), &name);
    warn!(mpo = %name, reason = err.reason(), ?wait, "reconcile failed: {err}");
    ctx.metrics.api_failed(err.reason());
    Action::requeue(wait)
}

/// A reconcile the fence stopped: not a failure to back off from, nothing to retry here.
fn is_fenced(err: &ControllerError) -> bool {
    use kube::runtime::finalizer::Error as F;
    match err {
        ControllerError::Fenced => true,
        ControllerError::Finalizer(inner) => matches!(
            inner.as_ref(),
            F::CleanupFailed(ControllerError::Fenced) | F::ApplyFailed(ControllerError::Fenced)
        ),
        _ => false,
    }
}

/// The finalizer helper guards its JSON patches with a `test` of the cached finalizers; the
/// apiserver answers 422 (add) or 404 (remove, object already gone) when the cache is behind.
fn is_stale_finalizer_patch(err: &ControllerError) -> bool {
    use kube::runtime::finalizer::Error as F;
    let ControllerError::Finalizer(inner) = err else {
        return false;
    };
    match inner.as_ref() {
        F::AddFinalizer(kube::Error::Api(s)) => s.code == 422,
        F::RemoveFinalizer(kube::Error::Api(s)) => s.code == 404,
        _ => false,
    }
}
