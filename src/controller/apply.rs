//! One pass over a ModulePullOverride (SPEC §3): source → resolve → fetch+unpack → publish.

use std::{sync::Arc, time::Instant};

use kube::{
    Api, ResourceExt,
    api::{Patch, PatchParams},
    runtime::controller::Action,
};
use tracing::{debug, info, warn};

use super::{
    Context, ControllerError, PassError,
    context::LastCheck,
    error::retry_delay,
    fetch::download_and_install,
    source::{check_module_listed, load_source, registry_for},
    status::{self, Outcome},
    triggers::{self, Renew},
};
use crate::{
    Digest,
    crd::{ModulePullOverride, ModuleSource},
    registry::ModuleRef,
};

pub async fn apply(mpo: Arc<ModulePullOverride>, ctx: &Context) -> Result<Action, ControllerError> {
    let name = mpo.metadata.name.clone().ok_or(ControllerError::NoName)?;
    let interval = match mpo.spec.scan_interval.duration() {
        Ok(interval) => interval,
        Err(e) => {
            let outcome = Outcome::Failed(PassError::BadSpec(e.to_string()));
            publish(&mpo, ctx, &outcome).await?;
            return Ok(Action::await_change());
        }
    };
    let source = load_source(ctx, &mpo.spec.source).await?;
    let last = ctx.last_check(&name);
    let renew = pending_renew(&mpo, last.as_ref());
    let fingerprint = triggers::fingerprint(&mpo, source.as_ref());
    if let Some(wait) = skip_until(ctx, &mpo, last.as_ref(), fingerprint, renew) {
        debug!(mpo = %name, ?wait, "nothing changed since the last check");
        return Ok(Action::requeue(wait));
    }

    let started = Instant::now();
    let outcome = run_pass(&mpo, ctx, source.as_ref(), renew).await;
    ctx.metrics
        .reconciled(outcome_label(&outcome), started.elapsed());
    if let Outcome::Failed(err) = &outcome {
        warn!(mpo = %name, reason = err.reason(), "{err}");
    }
    let written = publish(&mpo, ctx, &outcome).await?;
    if let Some(source) = source.as_ref().filter(|_| flag_allowed(&outcome)) {
        mark_overridden(ctx, source, &name).await?;
    }
    let expected_version = written
        .clone()
        .or_else(|| mpo.metadata.resource_version.clone());
    clear_renew(&mpo, ctx, expected_version).await?;

    let check = next_check(
        &outcome,
        interval,
        &name,
        last.as_ref(),
        fingerprint,
        handled_versions(&mpo, renew, written),
    );
    let wait = check.due.saturating_duration_since(Instant::now());
    ctx.record_check(&name, check);
    Ok(Action::requeue(wait))
}

/// The renew the user asked for, unless this very object version was already handled: the watch
/// can hand back the annotated object (or our status write on it) after the annotation is gone.
fn pending_renew(mpo: &ModulePullOverride, last: Option<&LastCheck>) -> Renew {
    let version = mpo.metadata.resource_version.as_ref();
    let handled = last.is_some_and(|l| version.is_some_and(|v| l.renew_handled.contains(v)));
    if handled {
        Renew::None
    } else {
        triggers::renew_requested(mpo)
    }
}

/// The object versions that still carry a renew this pass handled.
fn handled_versions(
    mpo: &ModulePullOverride,
    renew: Renew,
    written: Option<String>,
) -> Vec<String> {
    if renew == Renew::None {
        return Vec::new();
    }
    mpo.metadata
        .resource_version
        .iter()
        .cloned()
        .chain(written)
        .collect()
}

/// When to look again: the jittered interval after a success or a permanent failure, a backoff
/// (never sooner than `Retry-After`) after a transient one.
fn next_check(
    outcome: &Outcome,
    interval: std::time::Duration,
    name: &str,
    last: Option<&LastCheck>,
    fingerprint: u64,
    renew_handled: Vec<String>,
) -> LastCheck {
    let previous_failures = last.map_or(0, |c| c.failures);
    let (wait, failures) = match outcome {
        Outcome::Failed(err) if err.is_transient() => (
            retry_delay(previous_failures, interval, err.retry_after()),
            previous_failures + 1,
        ),
        Outcome::Failed(_) => (interval, 0),
        Outcome::InSync { .. } => (triggers::jittered(interval, name), 0),
    };
    LastCheck {
        fingerprint,
        due: Instant::now() + wait,
        failed: matches!(outcome, Outcome::Failed(_)),
        failures,
        renew_handled,
    }
}

/// How long to wait instead of running a pass: only when nothing the pass reads has changed, no
/// renew was asked for, the next check is not due and (after a success) the module is still on disk.
fn skip_until(
    ctx: &Context,
    mpo: &ModulePullOverride,
    last: Option<&LastCheck>,
    fingerprint: u64,
    renew: Renew,
) -> Option<std::time::Duration> {
    let last = last?;
    let now = Instant::now();
    if renew != Renew::None || last.fingerprint != fingerprint || now >= last.due {
        return None;
    }
    if !last.failed && !active_digest_on_disk(ctx, mpo, &mpo.name_any()) {
        return None;
    }
    Some(last.due - now)
}

fn active_digest_on_disk(ctx: &Context, mpo: &ModulePullOverride, name: &str) -> bool {
    recorded_digest(mpo).is_some_and(|digest| ctx.store.is_active(name, &digest))
}

fn recorded_digest(mpo: &ModulePullOverride) -> Option<Digest> {
    mpo.status.as_ref()?.image_digest.as_deref()?.parse().ok()
}

async fn run_pass(
    mpo: &ModulePullOverride,
    ctx: &Context,
    source: Option<&ModuleSource>,
    renew: Renew,
) -> Outcome {
    match try_pass(mpo, ctx, source, renew).await {
        Ok(outcome) => outcome,
        Err(err) => Outcome::Failed(err),
    }
}

async fn try_pass(
    mpo: &ModulePullOverride,
    ctx: &Context,
    source: Option<&ModuleSource>,
    renew: Renew,
) -> Result<Outcome, PassError> {
    let name = mpo.name_any();
    let source = source.ok_or_else(|| PassError::SourceMissing(mpo.spec.source.clone()))?;
    check_module_listed(source, &name)?;
    let registry = registry_for(ctx, source)?;
    let image = ModuleRef::new(registry.repo().clone(), &name, &mpo.spec.image_tag)
        .map_err(|e| PassError::BadSpec(e.to_string()))?;
    let digest = registry
        .resolve(&image)
        .await
        .map_err(|cause| PassError::Resolve {
            reference: image.to_string(),
            cause,
        })?;
    ctx.metrics.resolved(&name);
    let recorded = recorded_digest(mpo);
    let up_to_date = recorded.as_ref() == Some(&digest) && ctx.store.is_active(&name, &digest);
    if up_to_date && renew != Renew::Force {
        debug!(mpo = %name, %digest, "tag unchanged");
        let weight = mpo.status.as_ref().and_then(|s| s.weight).unwrap_or(900);
        return Ok(Outcome::InSync {
            digest,
            weight,
            changed: false,
        });
    }
    info!(
        mpo = %name,
        image = %image,
        %digest,
        previous = recorded.as_ref().map(ToString::to_string).unwrap_or_default(),
        "resolved a digest to download"
    );
    let (_, module_info) = download_and_install(ctx, &registry, &image, &digest).await?;
    Ok(Outcome::InSync {
        digest,
        weight: module_info.weight,
        changed: true,
    })
}

fn flag_allowed(outcome: &Outcome) -> bool {
    match outcome {
        Outcome::InSync { .. } => true,
        Outcome::Failed(err) => err.allows_override_flag(),
    }
}

fn outcome_label(outcome: &Outcome) -> &'static str {
    match outcome {
        Outcome::InSync { changed: true, .. } => "Updated",
        Outcome::InSync { changed: false, .. } => "Unchanged",
        Outcome::Failed(err) => err.reason(),
    }
}

/// The one status write of a pass, skipped when nothing would change.
/// Returns the resourceVersion of the written object, or `None` when nothing needed writing.
async fn publish(
    mpo: &ModulePullOverride,
    ctx: &Context,
    outcome: &Outcome,
) -> Result<Option<String>, ControllerError> {
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let desired = status::desired_status(mpo, outcome, &now);
    if !status::status_differs(mpo, &desired) {
        return Ok(None);
    }
    let api = Api::<ModulePullOverride>::all(ctx.client.clone());
    let name = mpo.name_any();
    let written = api
        .patch_status(
            &name,
            &PatchParams::default(),
            &Patch::Merge(status::status_patch(&desired)),
        )
        .await?;
    info!(
        mpo = %name,
        digest = desired.image_digest.as_deref().unwrap_or_default(),
        status_message = desired.message.as_deref().unwrap_or_default(),
        "status patched"
    );
    announce(mpo, ctx, outcome).await;
    Ok(written.metadata.resource_version)
}

/// Events for what changed: a new module switched in, or a new failure. An identical failure
/// writes no status and so repeats no event.
async fn announce(mpo: &ModulePullOverride, ctx: &Context, outcome: &Outcome) {
    match outcome {
        Outcome::InSync {
            digest,
            changed: true,
            ..
        } => {
            let note = format!("switched to {digest} of tag {}", mpo.spec.image_tag);
            ctx.event(mpo, false, "ModuleUpdated", note).await;
        }
        Outcome::InSync { .. } => {}
        Outcome::Failed(err) => ctx.event(mpo, true, err.reason(), err.to_string()).await,
    }
}

/// SPEC §3.6: `overridden: true` in the source's entry for this module, owned by this MPO's
/// own field manager and written only when missing.
async fn mark_overridden(
    ctx: &Context,
    source: &ModuleSource,
    module: &str,
) -> Result<(), ControllerError> {
    if status::source_marks_overridden(source, module) {
        return Ok(());
    }
    let api = Api::<ModuleSource>::all(ctx.client.clone());
    let params = PatchParams::apply(&status::override_field_manager(module)).force();
    api.patch_status(
        &source.name_any(),
        &params,
        &Patch::Apply(status::override_entry_apply(module)),
    )
    .await?;
    info!(mpo = %module, source = %source.name_any(), "marked the module overridden in the source");
    Ok(())
}

/// SPEC §3.7: the renew annotation is consumed once its pass is handled. The patch is
/// conditional on the object version this pass saw (or wrote): if the user annotated again
/// meanwhile, the apiserver refuses it and that new request gets a pass of its own.
async fn clear_renew(
    mpo: &ModulePullOverride,
    ctx: &Context,
    expected_version: Option<String>,
) -> Result<(), ControllerError> {
    let Some(mut patch) = triggers::renew_removal_patch(mpo) else {
        return Ok(());
    };
    if let Some(version) = expected_version {
        patch["metadata"]["resourceVersion"] = version.into();
    }
    let api = Api::<ModulePullOverride>::all(ctx.client.clone());
    match api
        .patch(
            &mpo.name_any(),
            &PatchParams::default(),
            &Patch::Merge(patch),
        )
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 409 => {
            debug!(mpo = %mpo.name_any(), "the object changed since the pass; keeping its renew");
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}
