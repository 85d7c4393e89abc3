//! SPEC §8: the module names of each ModuleSource (the tags of its root repository), written to
//! its status under a field manager of their own, on creation, spec change and every few minutes.

use std::{sync::Arc, time::Instant};

use kube::{
    Api, ResourceExt,
    api::{Patch, PatchParams},
    runtime::controller::Action,
};
use serde_json::{Value, json};
use tracing::{info, instrument, warn};

use super::{
    Context, ControllerError,
    schedule::{LastCheck, jittered},
    source::registry_for,
};
use crate::crd::ModuleSource;

pub const SCAN_FIELD_MANAGER: &str = "mpo-operator-scan";

#[instrument(skip_all, fields(source = %source.name_any()))]
pub async fn scan_source(
    source: Arc<ModuleSource>,
    ctx: Arc<Context>,
) -> Result<Action, ControllerError> {
    let name = source.name_any();
    let key = format!("source/{name}");
    let generation = source.metadata.generation.unwrap_or_default() as u64;
    let now = Instant::now();
    if let Some(last) = ctx
        .last_check(&key)
        .filter(|l| l.fingerprint == generation && now < l.due)
    {
        return Ok(Action::requeue(last.due - now));
    }
    let listed = match registry_for(&ctx, &source) {
        Ok(registry) => registry
            .list_modules()
            .await
            .map_err(|e| format!("cannot list modules of {}: {e}", registry.repo())),
        Err(e) => Err(e.to_string()),
    };
    if ctx.fence.is_cancelled() {
        return Ok(Action::await_change());
    }
    let body = scan_status(&source, &listed);
    let api = Api::<ModuleSource>::all(ctx.client.clone());
    api.patch_status(
        &name,
        &PatchParams::apply(SCAN_FIELD_MANAGER).force(),
        &Patch::Apply(body),
    )
    .await?;
    match &listed {
        Ok(modules) => info!(source = %name, count = modules.len(), "scanned the source's modules"),
        Err(message) => warn!(source = %name, "{message}"),
    }
    let wait = jittered(ctx.settings.source_scan_interval, &key);
    ctx.record_check(
        &key,
        LastCheck {
            fingerprint: generation,
            due: now + wait,
            failed: listed.is_err(),
            failures: 0,
            renew_handled: Vec::new(),
        },
    );
    Ok(Action::requeue(wait))
}

/// The status the scan owns. A failed scan re-applies the names it had, because an apply that
/// leaves them out would give them up and empty the list on every registry hiccup.
fn scan_status(source: &ModuleSource, listed: &Result<Vec<String>, String>) -> Value {
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let (modules, message) = match listed {
        Ok(modules) => (modules.clone(), String::new()),
        Err(message) => (known_modules(source), message.clone()),
    };
    json!({
        "apiVersion": "deckhouse.io/v1alpha1",
        "kind": "ModuleSource",
        "status": {
            "modules": modules.iter().map(|m| json!({ "name": m })).collect::<Vec<_>>(),
            "modulesCount": modules.len(),
            "syncTime": now,
            "phase": "Active",
            "message": message,
        }
    })
}

/// The names the source lists now; entries that only carry a flag are not names to keep.
fn known_modules(source: &ModuleSource) -> Vec<String> {
    source
        .status
        .iter()
        .flat_map(|s| s.modules.iter().flatten())
        .filter(|m| super::source::is_listed(source, &m.name))
        .map(|m| m.name.clone())
        .collect()
}

pub fn scan_error_policy(
    source: Arc<ModuleSource>,
    err: &ControllerError,
    _: Arc<Context>,
) -> Action {
    warn!(source = %source.name_any(), "scan failed: {err}");
    Action::requeue(std::time::Duration::from_secs(10))
}
