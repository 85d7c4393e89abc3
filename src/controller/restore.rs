//! SPEC §3 "even if the tag is gone", done first: a new leader puts every recorded
//! `status.imageDigest` onto its disk before its first pass, pulled by that digest, whether the
//! source still lists the module or not, a few at a time, with progress in the log and
//! `mpo_restores_total`. The normal passes start afterwards, so a failover never shows a node
//! without the modules the statuses say are applied while passes resolve tags one by one.

use std::{sync::Arc, time::Instant};

use futures::StreamExt;
use kube::{Api, ResourceExt, api::ListParams};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::{Context, source::registry_for};
use crate::{Digest, crd::ModulePullOverride, registry::ModuleRef};

/// Lists the overrides (one LIST: the watch's store fills only once the controller runs) and
/// restores what they record and this disk lacks. Returns how many were restored.
pub async fn restore_recorded_first(ctx: &Arc<Context>, stop: &CancellationToken) -> usize {
    let mut params = ListParams::default();
    let selector = ctx.settings.watch_selector.trim();
    if !selector.is_empty() {
        params = params.labels(selector);
    }
    let api = Api::<ModulePullOverride>::all(ctx.client.clone());
    let listed = tokio::select! {
        listed = api.list(&params) => listed,
        () = stop.cancelled() => return 0,
    };
    let mpos = match listed {
        Ok(list) => list.items,
        Err(err) => {
            warn!(
                "cannot list the overrides to restore their recorded digests first: {err}; the passes restore them one by one"
            );
            return 0;
        }
    };
    let recorded: Vec<(ModulePullOverride, Digest)> = mpos
        .into_iter()
        .filter_map(|mpo| Some((recorded(&mpo)?, mpo)))
        .map(|(digest, mpo)| (mpo, digest))
        .collect();
    let held = recorded.len();
    let missing: Vec<(ModulePullOverride, Digest)> = recorded
        .into_iter()
        .filter(|(mpo, digest)| !ctx.store.is_active(&mpo.name_any(), digest))
        .collect();
    if missing.is_empty() {
        // A warm standby's takeover: nothing to download.
        info!(
            recorded = held,
            "every recorded digest is already on this disk; passes start"
        );
        return 0;
    }
    let total = missing.len();
    let started = Instant::now();
    info!(
        count = total,
        "restoring the recorded digests onto this disk before the first passes"
    );
    let mut done = 0usize;
    let mut restored = 0usize;
    let mut results = futures::stream::iter(missing)
        .map(|(mpo, digest)| restore_one(ctx, mpo, digest))
        .buffer_unordered(usize::from(ctx.settings.concurrency.max(1)));
    loop {
        let next = tokio::select! {
            next = results.next() => next,
            // The fence (or a shutdown) stops the restore; what is staged is dropped with it.
            () = stop.cancelled() => break,
            () = ctx.fence.cancelled() => break,
        };
        let Some(ok) = next else { break };
        done += 1;
        restored += usize::from(ok);
        if done.is_multiple_of(10) || done == total {
            info!(done, total, restored, "restoring recorded digests");
        }
    }
    info!(
        restored,
        total,
        took = ?started.elapsed(),
        "recorded digests restored; passes start"
    );
    restored
}

pub(super) fn recorded(mpo: &ModulePullOverride) -> Option<Digest> {
    mpo.status.as_ref()?.image_digest.as_deref()?.parse().ok()
}

/// One recorded digest; failures are logged and left to the MPO's own pass.
pub(super) async fn restore_one(ctx: &Context, mpo: ModulePullOverride, digest: Digest) -> bool {
    let name = mpo.name_any();
    let Some(source) = ctx
        .sources
        .get(&kube::runtime::reflector::ObjectRef::new(&mpo.spec.source))
    else {
        warn!(mpo = %name, source = %mpo.spec.source, "cannot restore the recorded digest: the ModuleSource is missing");
        ctx.metrics.restore_done("failed");
        return false;
    };
    let image = registry_for(ctx, &source).and_then(|registry| {
        ModuleRef::new(registry.repo().clone(), &name, &mpo.spec.image_tag)
            .map(|image| (registry, image))
            .map_err(|e| super::PassError::BadSpec(e.to_string()))
    });
    let (registry, image) = match image {
        Ok(found) => found,
        Err(err) => {
            warn!(mpo = %name, "cannot restore the recorded digest: {err}");
            ctx.metrics.restore_done("failed");
            return false;
        }
    };
    // A recorded digest obeys the source's signature policy as a new one does.
    if let Err(err) =
        super::verify::check_signature(ctx, &source, &registry, &image, &digest, false).await
    {
        warn!(mpo = %name, %digest, "not restoring the recorded digest: {err}");
        ctx.metrics.restore_done("refused");
        return false;
    }
    match super::apply::restore_digest(ctx, &registry, &image, &digest).await {
        Ok(report) => {
            ctx.metrics.installed(&report);
            ctx.metrics.restore_done("restored");
            true
        }
        Err(err) => {
            warn!(mpo = %name, %digest, "cannot restore the recorded digest: {err}");
            ctx.metrics.restore_done("failed");
            false
        }
    }
}
