//! Deletion: give back the `overridden` flag, keep the module on disk (SPEC §3, Deletion).

use std::sync::Arc;

use kube::{
    Api, ResourceExt,
    api::{Patch, PatchParams},
    runtime::controller::Action,
};
use tracing::info;

use super::{Context, ControllerError, status};
use crate::crd::{ModulePullOverride, ModuleSource};

pub async fn cleanup(
    mpo: Arc<ModulePullOverride>,
    ctx: &Context,
) -> Result<Action, ControllerError> {
    let name = mpo.name_any();
    let api = Api::<ModuleSource>::all(ctx.client.clone());
    let params = PatchParams::apply(&status::override_field_manager(&name)).force();
    match api
        .patch_status(
            &mpo.spec.source,
            &params,
            &Patch::Apply(status::override_entry_release()),
        )
        .await
    {
        Ok(_) => info!(mpo = %name, source = %mpo.spec.source, "cleared the override flag"),
        // A missing source has no flag to clear and must not block the deletion.
        Err(kube::Error::Api(status)) if status.is_not_found() => {
            info!(mpo = %name, source = %mpo.spec.source, "source is gone; nothing to clear")
        }
        Err(e) => return Err(e.into()),
    }
    ctx.forget_check(&name);
    Ok(Action::await_change())
}
