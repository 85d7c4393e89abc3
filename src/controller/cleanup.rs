//! Deletion (SPEC §3, Deletion): the MPO's `overridden` flag goes with it — the flags writer
//! recomputes its source without this MPO — and the module stays on disk.

use std::sync::Arc;

use kube::{ResourceExt, runtime::controller::Action};
use tracing::info;

use super::{Context, ControllerError};
use crate::crd::ModulePullOverride;

pub async fn cleanup(
    mpo: Arc<ModulePullOverride>,
    ctx: &Context,
) -> Result<Action, ControllerError> {
    let name = mpo.name_any();
    // A missing source has no flag to clear and must not block the deletion: the writer skips it.
    ctx.flags.mpo_gone(&name, &mpo.spec.source);
    info!(mpo = %name, source = %mpo.spec.source, "deleted; its overridden flag is given back");
    ctx.forget_check(&name);
    ctx.metrics.forget(&name);
    Ok(Action::await_change())
}
