//! A source's signature policy (`spec.verify`), applied to a digest before anything of it is
//! switched in: after the resolve, before any layer is downloaded. A digest verified under the
//! same keys is remembered for the life of the process, so an idle pass adds no request and a
//! restart verifies each digest once.

use kube::ResourceExt;
use sha2::{Digest as _, Sha256};
use tracing::{info, warn};

use super::{context::Context, error::PassError};
use crate::{
    Digest,
    crd::ModuleSource,
    registry::{ModuleRef, Registry},
    signing::{self, PublicKey},
};

/// Whether the source's policy lets `digest` be applied: `Ok(None)` without a policy, else the
/// `Verified` condition's message.
pub(super) async fn check_signature(
    ctx: &Context,
    source: &ModuleSource,
    registry: &Registry,
    image: &ModuleRef,
    digest: &Digest,
) -> Result<Option<String>, PassError> {
    let Some(remembered) = remembered_key(source, digest) else {
        return Ok(None);
    };
    if let Some(message) = ctx.verified(&remembered) {
        return Ok(Some(message));
    }
    let keys = trusted_keys(source)?;
    let signatures =
        registry
            .signatures(image, digest)
            .await
            .map_err(|cause| PassError::Signatures {
                image: image.at_digest(digest),
                cause,
            })?;
    match signing::check_any(&keys, &signatures, &digest.to_string(), &image.name()) {
        Ok(verified) => {
            ctx.metrics.verification("Verified");
            let message = verified_message_of(&verified);
            info!(image = %image.at_digest(digest), key = %verified.key, format = verified.format.name(), "signature verified");
            ctx.remember_verified(remembered, message.clone());
            Ok(Some(message))
        }
        Err(refusal) => {
            ctx.metrics.verification(refusal.reason());
            warn!(image = %image.at_digest(digest), "signature refused: {refusal}");
            Err(PassError::Unverified {
                image: image.at_digest(digest),
                refusal,
            })
        }
    }
}

/// The `Verified` condition's message: the key, the format, and that a transparency-log entry
/// (if the signature has one) was not checked against a log.
fn verified_message_of(verified: &signing::Verified) -> String {
    let mut message = format!(
        "signature verified with key {} ({})",
        verified.key,
        verified.format.description()
    );
    if verified.has_tlog_entry {
        message.push_str("; its transparency-log entry was not checked against a log");
    }
    message
}

/// The message remembered for a digest verified under the source's current keys, if any; `None`
/// when the source has no policy. Lets the status show what an earlier pass verified.
pub(super) fn verified_message(
    ctx: &Context,
    source: &ModuleSource,
    digest: &Digest,
) -> Option<Option<String>> {
    remembered_key(source, digest).map(|key| ctx.verified(&key))
}

/// `<digest> <sha256 of the keys>`: a changed key list verifies again.
fn remembered_key(source: &ModuleSource, digest: &Digest) -> Option<String> {
    let policy = source.spec.verify.as_ref()?;
    let mut hasher = Sha256::new();
    for key in &policy.public_keys {
        hasher.update(key.trim().as_bytes());
        hasher.update([0]);
    }
    Some(format!("{digest} {}", hex::encode(hasher.finalize())))
}

fn trusted_keys(source: &ModuleSource) -> Result<Vec<PublicKey>, PassError> {
    let policy = source
        .spec
        .verify
        .as_ref()
        .map_or(&[][..], |p| &p.public_keys[..]);
    policy
        .iter()
        .enumerate()
        .map(|(index, pem)| {
            PublicKey::from_pem(pem).map_err(|cause| PassError::BadPolicy {
                source_name: source.name_any(),
                index,
                cause,
            })
        })
        .collect()
}
