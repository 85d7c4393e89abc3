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
    rules::renew::{self, Renew},
    schedule::{self, Decision, PassResult},
    source::{check_module_listed, registry_for},
    status::{self, Outcome, Verification},
    triggers, verify,
};
use crate::{
    Digest,
    crd::{ModulePullOverride, ModuleSource},
    install::{install_reporting, switch_to_kept},
    registry::{ModuleRef, Registry},
};

pub async fn apply(mpo: Arc<ModulePullOverride>, ctx: &Context) -> Result<Action, ControllerError> {
    let name = mpo.metadata.name.clone().ok_or(ControllerError::NoName)?;
    ctx.flags.mpo_seen(&mpo);
    let interval = match mpo.spec.scan_interval.duration() {
        Ok(interval) => interval,
        Err(e) => {
            let outcome = Outcome::Failed(PassError::BadSpec(e.to_string()));
            return Ok(match publish(&mpo, ctx, &outcome).await? {
                Published::Conflict => Action::requeue(CONFLICT_RETRY),
                _ => Action::await_change(),
            });
        }
    };
    let source = ctx.source(&mpo.spec.source);
    let last = ctx.last_check(&name);
    let fingerprint = triggers::fingerprint(&mpo, source.as_deref());
    let seen = schedule::Seen {
        fingerprint,
        renew: renew::renew_requested(&mpo),
        resource_version: mpo.metadata.resource_version.as_deref(),
        module_on_disk: active_digest_on_disk(ctx, &mpo, &name),
    };
    let renew = match schedule::decide(Instant::now(), last.as_ref(), &seen) {
        Decision::Wait(wait) => {
            debug!(mpo = %name, ?wait, "nothing changed since the last check");
            return Ok(Action::requeue(wait));
        }
        Decision::Run(reason) => {
            debug!(mpo = %name, ?reason, "pass");
            let pending = schedule::pending_renew(seen.renew, seen.resource_version, last.as_ref());
            schedule::renew_for_pass(pending, last.as_ref())
        }
    };

    let started = Instant::now();
    let _in_flight = ctx.metrics.pass_in_flight();
    let outcome = tokio::select! {
        // A lost lease drops the pass (its staging directory goes with it) before it writes.
        () = ctx.fence.cancelled() => return Ok(Action::await_change()),
        outcome = run_pass(&mpo, ctx, source.as_deref(), renew) => outcome,
    };
    if ctx.fence.is_cancelled() {
        return Ok(Action::await_change());
    }
    ctx.metrics
        .reconciled(outcome_label(&outcome), started.elapsed());
    if let Outcome::Failed(err) = &outcome {
        warn!(mpo = %name, reason = err.reason(), "{err}");
    }
    let written = match publish(&mpo, ctx, &outcome).await? {
        Published::Written(version) => version,
        Published::Unchanged => None,
        // The renew stays: the pass on the newer object redoes it, after a backoff that grows
        // while the refusals go on, and without downloading a forced renew's module again.
        Published::Conflict => {
            let check =
                schedule::after_conflict(Instant::now(), last.as_ref(), &name, fingerprint, renew);
            let wait = check.due.saturating_duration_since(Instant::now());
            ctx.record_check(&name, check);
            return Ok(Action::requeue(wait));
        }
    };
    let expected_version = written
        .clone()
        .or_else(|| mpo.metadata.resource_version.clone());
    let renew_cleared = clear_renew(&mpo, ctx, expected_version).await?;
    if renew != Renew::None {
        ctx.metrics.renew_handled(&name);
    }

    let mut check = schedule::after_pass(
        Instant::now(),
        pass_result(&outcome),
        interval,
        &name,
        last.as_ref(),
        fingerprint,
        handled_versions(&mpo, renew, written),
    );
    // The annotation outlived a forced renew that did download: the pass on the newer object
    // finds it again and must only record, not download once more.
    check.forced_download_done = !renew_cleared
        && (renew == Renew::Force || last.as_ref().is_some_and(|l| l.forced_download_done));
    let wait = check.due.saturating_duration_since(Instant::now());
    ctx.record_check(&name, check);
    Ok(Action::requeue(wait))
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

fn pass_result(outcome: &Outcome) -> PassResult {
    match outcome {
        Outcome::InSync { .. } => PassResult::InSync,
        Outcome::Failed(err) if err.is_transient() => PassResult::Transient {
            retry_after: err.retry_after(),
        },
        Outcome::Failed(_) => PassResult::Permanent,
    }
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
    let recorded = recorded_digest(mpo);
    if let Some(pin) = pinned_digest(mpo)? {
        // A pin is no way around the source's signature policy either.
        verify::check_signature(ctx, source, &registry, &image, &pin, renew != Renew::None).await?;
        return apply_pin(ctx, &registry, &image, mpo, recorded.as_ref(), pin, renew).await;
    }
    let digest = match registry.resolve(&image).await {
        Ok(digest) => digest,
        Err(cause) => {
            // The tag cannot be read (gone, or the registry down): whatever happens to it, the
            // applied module stays on this disk (SPEC §6).
            restore_recorded(ctx, source, &registry, &image, recorded.as_ref()).await;
            return Err(PassError::Resolve {
                reference: image.to_string(),
                cause,
            });
        }
    };
    ctx.metrics.resolved(&name);
    // Before anything of the digest is switched in or downloaded; remembered per digest, so the
    // idle path makes no request for it. A refusal leaves the active module as it is.
    verify::check_signature(
        ctx,
        source,
        &registry,
        &image,
        &digest,
        renew != Renew::None,
    )
    .await?;
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
    // Already switched in but not recorded: an earlier pass whose status write was refused (the
    // object changed meanwhile), or a leader that stopped between switch and write on a shared
    // volume. The files are whole; only the status is missing, so no second download.
    if renew != Renew::Force
        && ctx.store.is_active(&name, &digest)
        && let Some(weight) = ctx.store.active_weight(&name)
    {
        info!(mpo = %name, %digest, "already on disk; recording it");
        return Ok(Outcome::InSync {
            digest,
            weight,
            changed: true,
        });
    }
    remember_the_version_before_overrides(ctx, &name);
    // A version kept on disk (the tag moved back, or this replica led before): a switch of
    // `dev`, no download. A forced renew asks for the download.
    if renew != Renew::Force
        && let Some(report) = switch_to_kept(&ctx.store, &image, &digest)
            .await
            .map_err(|cause| PassError::install(&image, &digest, cause))?
    {
        ctx.metrics.installed(&report);
        return Ok(Outcome::InSync {
            changed: recorded.as_ref() != Some(&digest),
            digest,
            weight: report.info.weight,
        });
    }
    info!(
        mpo = %name,
        image = %image,
        %digest,
        previous = recorded.as_ref().map(ToString::to_string).unwrap_or_default(),
        "resolved a digest to download"
    );
    let max_compressed = ctx.settings.limits.max_compressed_size;
    let installed = install_reporting(
        &registry,
        &ctx.store,
        &image,
        &digest,
        max_compressed,
        Some(ctx.metrics.clone()),
    )
    .await;
    let report = match installed {
        Ok(report) => report,
        Err(cause) => {
            // The new image failed; the disk keeps (or gets back) what the status records.
            restore_recorded(ctx, source, &registry, &image, recorded.as_ref()).await;
            return Err(PassError::install(&image, &digest, cause));
        }
    };
    ctx.metrics.installed(&report);
    Ok(Outcome::InSync {
        // The same digest downloaded again (an empty disk, a forced renew without a new digest)
        // is no update: `updatedAt` and the ModuleUpdated event belong to new digests (and to a
        // forced renew, which the user asked for).
        changed: recorded.as_ref() != Some(&digest) || renew == Renew::Force,
        digest,
        weight: report.info.weight,
    })
}

/// `spec.imageDigest`, parsed; a bad one is the spec's error (the CRD's pattern refuses most).
fn pinned_digest(mpo: &ModulePullOverride) -> Result<Option<Digest>, PassError> {
    mpo.spec
        .image_digest
        .as_deref()
        .map(|pin| {
            pin.parse().map_err(|_| {
                PassError::BadSpec(format!("spec.imageDigest {pin:?} is not a sha256 digest"))
            })
        })
        .transpose()
}

/// A pin: exactly that digest, the tag not asked. No registry request at all when the digest is
/// active or kept on disk; else it is pulled by digest.
async fn apply_pin(
    ctx: &Context,
    registry: &Registry,
    image: &ModuleRef,
    mpo: &ModulePullOverride,
    recorded: Option<&Digest>,
    pin: Digest,
    renew: Renew,
) -> Result<Outcome, PassError> {
    let name = image.module();
    let changed = recorded != Some(&pin) || renew == Renew::Force;
    if renew != Renew::Force && ctx.store.is_active(name, &pin) {
        let weight = ctx
            .store
            .active_weight(name)
            .or_else(|| mpo.status.as_ref().and_then(|s| s.weight))
            .unwrap_or(900);
        return Ok(Outcome::InSync {
            digest: pin,
            weight,
            changed,
        });
    }
    remember_the_version_before_overrides(ctx, name);
    if renew != Renew::Force
        && let Some(report) = switch_to_kept(&ctx.store, image, &pin)
            .await
            .map_err(|cause| PassError::install(image, &pin, cause))?
    {
        ctx.metrics.installed(&report);
        return Ok(Outcome::InSync {
            digest: pin,
            weight: report.info.weight,
            changed,
        });
    }
    info!(mpo = %name, digest = %pin, "pulling the pinned digest");
    let max_compressed = ctx.settings.limits.max_compressed_size;
    let report = install_reporting(
        registry,
        &ctx.store,
        image,
        &pin,
        max_compressed,
        Some(ctx.metrics.clone()),
    )
    .await
    .map_err(|cause| PassError::install(image, &pin, cause))?;
    ctx.metrics.installed(&report);
    Ok(Outcome::InSync {
        digest: pin,
        weight: report.info.weight,
        changed,
    })
}

/// Before an override first switches the module, the version another process had active (a
/// release) is recorded and kept, for `spec.rollback` on delete. Called only right before a
/// switch, so an idle pass reads no extra file. Best effort: a failure only loses that
/// rollback, which the deletion then says.
fn remember_the_version_before_overrides(ctx: &Context, module: &str) {
    if let Err(err) = ctx.store.mark_before_override(module) {
        warn!(mpo = %module, "cannot record the version from before the override: {err}");
    }
}

/// SPEC §6: the disk keeps what `status.imageDigest` records when the tag cannot be read or its
/// new image fails, so that neither takes the applied module off this node: switched back in
/// when kept on disk, else pulled by that digest. A failure here is logged; the pass goes on.
async fn restore_recorded(
    ctx: &Context,
    source: &ModuleSource,
    registry: &Registry,
    image: &ModuleRef,
    recorded: Option<&Digest>,
) {
    let Some(recorded) = recorded else { return };
    if ctx.store.is_active(image.module(), recorded) {
        return;
    }
    // A recorded digest obeys the source's signature policy as a new one does.
    if let Err(err) = verify::check_signature(ctx, source, registry, image, recorded, false).await {
        warn!(mpo = %image.module(), digest = %recorded, "not restoring the recorded digest: {err}");
        return;
    }
    match restore_digest(ctx, registry, image, recorded).await {
        Ok(report) => ctx.metrics.installed(&report),
        Err(err) => {
            warn!(mpo = %image.module(), digest = %recorded, "cannot restore the recorded digest: {err}")
        }
    }
}

/// `digest` made active: from the kept versions when there, else downloaded by digest.
pub(super) async fn restore_digest(
    ctx: &Context,
    registry: &Registry,
    image: &ModuleRef,
    digest: &Digest,
) -> Result<crate::install::Report, crate::install::InstallError> {
    remember_the_version_before_overrides(ctx, image.module());
    if let Some(report) = switch_to_kept(&ctx.store, image, digest).await? {
        return Ok(report);
    }
    info!(mpo = %image.module(), %digest, "restoring the recorded digest onto this disk");
    let max_compressed = ctx.settings.limits.max_compressed_size;
    let progress = Some(ctx.metrics.clone() as std::sync::Arc<dyn crate::install::Progress>);
    install_reporting(
        registry,
        &ctx.store,
        image,
        digest,
        max_compressed,
        progress,
    )
    .await
}

fn outcome_label(outcome: &Outcome) -> &'static str {
    match outcome {
        Outcome::InSync { changed: true, .. } => "Updated",
        Outcome::InSync { changed: false, .. } => "Unchanged",
        Outcome::Failed(err) => err.reason(),
    }
}

/// After a status write refused because the object changed: the watch delivers the newer
/// object at about the same time; this is the fallback.
const CONFLICT_RETRY: std::time::Duration = std::time::Duration::from_secs(1);

enum Published {
    Unchanged,
    /// The resourceVersion the write produced.
    Written(Option<String>),
    /// The object changed since this pass read it; nothing was written.
    Conflict,
}

/// The one status write of a pass, skipped when nothing would change, and conditional on the
/// object version the pass read (SPEC §9: a stale writer fails instead of overwriting).
async fn publish(
    mpo: &ModulePullOverride,
    ctx: &Context,
    outcome: &Outcome,
) -> Result<Published, ControllerError> {
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let desired = status::desired_status(
        mpo,
        outcome,
        &now,
        usize::from(ctx.settings.keep_versions),
        &verification_of(ctx, mpo, outcome),
    );
    if !status::status_differs(mpo, &desired) {
        return Ok(Published::Unchanged);
    }
    let api = Api::<ModulePullOverride>::all(ctx.client.clone());
    let name = mpo.name_any();
    let patch = status::status_patch(&desired, mpo.metadata.resource_version.as_deref());
    let written = match api
        .patch_status(&name, &PatchParams::default(), &Patch::Merge(patch))
        .await
    {
        Ok(written) => written,
        Err(kube::Error::Api(status)) if status.code == 409 => {
            info!(mpo = %name, "status not written: the object changed since this pass read it; checking again");
            return Ok(Published::Conflict);
        }
        Err(e) => return Err(e.into()),
    };
    info!(
        mpo = %name,
        digest = desired.image_digest.as_deref().unwrap_or_default(),
        status_message = desired.message.as_deref().unwrap_or_default(),
        "status patched"
    );
    announce(mpo, ctx, outcome);
    Ok(Published::Written(written.metadata.resource_version))
}

/// What the status says of the source's signature policy after `outcome`.
fn verification_of(ctx: &Context, mpo: &ModulePullOverride, outcome: &Outcome) -> Verification {
    let Some(source) = ctx.source(&mpo.spec.source) else {
        return Verification::NoPolicy;
    };
    match outcome {
        Outcome::InSync { digest, .. } => {
            match verify::verified_message(ctx, &source, &mpo.name_any(), digest) {
                None => Verification::NoPolicy,
                Some(Some(message)) => Verification::Verified(message),
                Some(None) => Verification::Unchanged,
            }
        }
        Outcome::Failed(_) if source.spec.verify.is_some() => Verification::Unchanged,
        Outcome::Failed(_) => Verification::NoPolicy,
    }
}

/// Events for what changed: a new module switched in, or a new failure. An identical failure
/// writes no status and so repeats no event.
fn announce(mpo: &ModulePullOverride, ctx: &Context, outcome: &Outcome) {
    match outcome {
        Outcome::InSync {
            digest,
            changed: true,
            ..
        } => {
            let note = format!("switched to {digest} of tag {}", mpo.spec.image_tag);
            ctx.event(mpo, false, "ModuleUpdated", note);
        }
        Outcome::InSync { .. } => {}
        Outcome::Failed(err) => ctx.event(mpo, true, err.reason(), err.to_string()),
    }
}

/// SPEC §3.7: the renew annotation is consumed once its pass is handled. The patch is
/// conditional on the object version this pass saw (or wrote): if the user annotated again
/// meanwhile, the apiserver refuses it and that new request gets a pass of its own.
/// Removes the renew annotations the pass handled; `false` when the object changed meanwhile
/// and the annotation stays (the pass on the newer object sees it again).
async fn clear_renew(
    mpo: &ModulePullOverride,
    ctx: &Context,
    expected_version: Option<String>,
) -> Result<bool, ControllerError> {
    let Some(mut patch) = renew::renew_removal_patch(mpo) else {
        return Ok(true);
    };
    if let Some(version) = expected_version {
        patch["metadata"]["resourceVersion"] = version.into();
    }
    // The status write before this one may have waited out the lease.
    if ctx.fence.is_cancelled() {
        return Err(ControllerError::Fenced);
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
        Ok(_) => Ok(true),
        Err(kube::Error::Api(status)) if status.code == 409 => {
            debug!(mpo = %mpo.name_any(), "the object changed since the pass; keeping its renew");
            Ok(false)
        }
        Err(e) => Err(e.into()),
    }
}
