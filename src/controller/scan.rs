//! SPEC §8: the module names of each ModuleSource (the tags of its root repository), written to
//! its status under a field manager of their own, on creation, spec change and every few minutes.

use std::{sync::Arc, time::Instant};

use kube::{
    Api, ResourceExt,
    api::{Patch, PatchParams},
    runtime::controller::Action,
};
use serde_json::{Value, json};
use tracing::{debug, info, instrument, warn};

use super::{
    Context, ControllerError, error::is_too_large, rules::backoff::jittered, schedule::LastCheck,
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
    let generation = scan_fingerprint(&source);
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
    let api = Api::<ModuleSource>::all(ctx.client.clone());
    // While the flags are refused for size, the names stay out (the flags writer took them out
    // to make room): writing them back would fit, and refuse the flags again.
    if let (Some(refusal), Ok(_)) = (ctx.flags.size_refusal(&name), &listed) {
        debug!(source = %name, "{refusal}");
        leave_names_out(&api, &name, refusal).await?;
        return Ok(schedule_next_scan(&ctx, &key, generation, now, false));
    }
    let listed = match write_scan(&api, &source, listed).await? {
        Written::Listed(listed) => listed,
        Written::TooLarge { count, bytes } => {
            let message = too_large_message(count, bytes);
            // Said once: a repeated refusal writes the same message and logs at debug.
            if source.status.as_ref().and_then(|s| s.message.as_deref()) == Some(&message) {
                debug!(source = %name, "{message}");
            } else {
                warn!(source = %name, "{message}");
            }
            leave_names_out(&api, &name, &message).await?;
            Err(message)
        }
    };
    if let Ok(modules) = &listed {
        info!(source = %name, count = modules.len(), "scanned the source's modules");
    }
    Ok(schedule_next_scan(
        &ctx,
        &key,
        generation,
        now,
        listed.is_err(),
    ))
}

/// Records the scan and plans the next one, an interval (jittered per source) from `now`.
fn schedule_next_scan(
    ctx: &Context,
    key: &str,
    fingerprint: u64,
    now: Instant,
    failed: bool,
) -> Action {
    let wait = jittered(ctx.settings.source_scan_interval, key);
    ctx.record_check(
        key,
        LastCheck {
            fingerprint,
            due: now + wait,
            failed,
            failures: 0,
            renew_handled: Vec::new(),
            conflicts: 0,
            forced_download_done: false,
        },
    );
    Action::requeue(wait)
}

/// What makes a scan due before its interval: a new spec (generation) or a new object under
/// the same name (uid): a source deleted and re-created starts at generation 1 again.
fn scan_fingerprint(source: &ModuleSource) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::hash::DefaultHasher::new();
    source.metadata.uid.hash(&mut hasher);
    source.metadata.generation.hash(&mut hasher);
    // A push notification for the root repository sets a `renew` of its own: scan now.
    source
        .annotations()
        .get(crate::crd::RENEW_ANNOTATION)
        .hash(&mut hasher);
    hasher.finish()
}

enum Written {
    /// The scan's status was written: the modules, or the failure to list them.
    Listed(Result<Vec<String>, String>),
    /// The apiserver refused the module list as too large for one object.
    TooLarge { count: usize, bytes: usize },
}

async fn write_scan(
    api: &Api<ModuleSource>,
    source: &ModuleSource,
    listed: Result<Vec<String>, String>,
) -> Result<Written, kube::Error> {
    let body = scan_status(source, &listed);
    match apply_scan(api, &source.name_any(), body.clone()).await {
        Ok(()) => {
            if let Err(message) = &listed {
                warn!(source = %source.name_any(), "{message}");
            }
            Ok(Written::Listed(listed))
        }
        Err(e) if is_too_large(&e) => Ok(Written::TooLarge {
            count: listed.as_ref().map_or(0, Vec::len),
            bytes: body.to_string().len(),
        }),
        Err(e) => Err(e),
    }
}

async fn apply_scan(api: &Api<ModuleSource>, name: &str, body: Value) -> Result<(), kube::Error> {
    api.patch_status(
        name,
        &PatchParams::apply(SCAN_FIELD_MANAGER).force(),
        &Patch::Apply(body),
    )
    .await
    .map(drop)
}

/// SPEC §8 and issue 22: one ModuleSource holds about 1.5 MiB (etcd's default request limit).
pub fn too_large_message(count: usize, bytes: usize) -> String {
    format!(
        "cannot list {count} modules in the status: {} KiB of module names is more than one \
         ModuleSource can hold beside its overridden flags (the apiserver refused the write as \
         too large); every module of this source is admitted",
        bytes.div_ceil(1024)
    )
}

/// Leaves the names out of the source's status, with `message` saying why: what the scan does
/// when its list does not fit, and the flags writer when the flags no longer do. It only takes
/// away, so it fits where the refused write did not.
pub(super) async fn leave_names_out(
    api: &Api<ModuleSource>,
    name: &str,
    message: &str,
) -> Result<(), kube::Error> {
    apply_scan(api, name, unlisted_status(message)).await
}

/// The scan's status when its list does not fit: no names and no count, so that the source
/// counts as not scanned and every MPO on it goes on (SPEC §3.2), with the reason in `message`.
fn unlisted_status(message: &str) -> Value {
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    json!({
        "apiVersion": "deckhouse.io/v1alpha1",
        "kind": "ModuleSource",
        "status": { "syncTime": now, "phase": "Active", "message": message }
    })
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
    super::rules::listing::Listing::of(source).names().to_vec()
}

pub fn scan_error_policy(
    source: Arc<ModuleSource>,
    err: &ControllerError,
    _: Arc<Context>,
) -> Action {
    warn!(source = %source.name_any(), "scan failed: {err}");
    Action::requeue(std::time::Duration::from_secs(10))
}
