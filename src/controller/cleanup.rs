//! Deletion (SPEC §3, Deletion): the MPO's `overridden` flag goes with it — the flags writer
//! recomputes its source without this MPO — and the module stays on disk.

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
    ctx.forget_check(&name);
    ctx.metrics.forget(&name);
    Ok(Action::await_change())
}
