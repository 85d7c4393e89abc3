//! Deletion (SPEC §3, Deletion): the MPO's `overridden` flag goes with it — the flags writer
//! recomputes its source without this MPO — and the module stays on disk, unless
//! `spec.rollback` asks for the version from before the override back.

use std::sync::Arc;

use kube::{ResourceExt, runtime::controller::Action};
use tracing::{info, warn};

/// How long a deletion waits for the flags writer before letting the MPO go anyway.
const FLAG_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

use super::{Context, ControllerError};
use crate::crd::ModulePullOverride;

pub async fn cleanup(
    mpo: Arc<ModulePullOverride>,
    ctx: &Context,
) -> Result<Action, ControllerError> {
    let name = mpo.name_any();
    // A missing source has no flag to clear and must not block the deletion: the writer skips it.
    let ticket = ctx.flags.mpo_gone(&name, &mpo.spec.source);
    let flushed = tokio::select! {
        flushed = ctx.flags.wait_flushed(ticket, FLAG_WAIT) => flushed,
        () = ctx.fence.cancelled() => false,
    };
    if ctx.fence.is_cancelled() {
        // The lease went while waiting: the finalizer stays for the new leader to remove; an
        // `Ok` here would make the finalizer helper write it away after the fence.
        return Err(ControllerError::Fenced);
    }
    if flushed {
        info!(mpo = %name, source = %mpo.spec.source, "deleted; its overridden flag is given back");
    } else {
        warn!(mpo = %name, source = %mpo.spec.source, "deleted; its flag is cleared by a later write");
    }
    give_back_the_version_before_the_override(&mpo, ctx).await;
    ctx.forget_check(&name);
    ctx.metrics.forget(&name);
    Ok(Action::await_change())
}

/// With `spec.rollback: true`, the version that was active before the override's first switch
/// (recorded then and kept since) is switched back in: a rename of `dev`, no download. Without
/// such a version the override's module stays, and an Event says so. Either way the record is
/// dropped, so that the old version is collected like any other from now on.
async fn give_back_the_version_before_the_override(mpo: &ModulePullOverride, ctx: &Context) {
    let name = mpo.name_any();
    let store = ctx.store.clone();
    let module = name.clone();
    let rollback = mpo.spec.rollback == Some(true);
    let outcome = tokio::task::spawn_blocking(move || {
        let before = store.before_override(&module);
        let switched = match (&before, rollback) {
            (Some(digest), true) => Some(store.switch_to(&module, digest)),
            _ => None,
        };
        // A failed switch keeps the record: a later deletion attempt cannot happen (the MPO
        // is gone), but the version stays on disk for a person to switch to.
        if !matches!(switched, Some(Err(_))) {
            let _ = store.forget_before_override(&module);
        }
        (before, switched)
    })
    .await;
    let (before, switched) = match outcome {
        Ok(outcome) => outcome,
        Err(err) => return warn!(mpo = %name, "the rollback on delete stopped: {err}"),
    };
    if !rollback {
        return;
    }
    match (before, switched) {
        (Some(digest), Some(Ok(_))) => {
            info!(mpo = %name, %digest, "deleted; switched back to the version from before the override");
            let note = format!(
                "deleted with rollback: switched back to {digest}, the version from before the override"
            );
            ctx.event(mpo, false, "RolledBack", note);
        }
        (Some(digest), Some(Err(err))) => {
            warn!(mpo = %name, %digest, "deleted; cannot switch back to the version from before the override: {err}");
            let note =
                format!("deleted with rollback, but switching back to {digest} failed: {err}");
            ctx.event(mpo, true, "RollbackFailed", note);
        }
        _ => {
            info!(mpo = %name, "deleted with rollback, but no version from before the override is on disk; the override's module stays");
            let note = "deleted with rollback, but no version from before the override is on disk: the override's module stays".to_owned();
            ctx.event(mpo, true, "NothingToRollBackTo", note);
        }
    }
}
