//! A source's signature policy (`spec.verify`), applied to a digest before anything of it is
//! switched in: after the resolve, before any layer is downloaded. A digest verified under the
//! same keys is remembered for the life of the process, so an idle pass adds no request and a
//! restart verifies each digest once. A refused digest is remembered too, and checked again
//! after a backoff (its signature may be pushed after the image), on a renew, or at once under
//! other keys.

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use kube::ResourceExt;
use sha2::{Digest as _, Sha256};
use tracing::{info, warn};

use super::{context::Context, error::PassError};
use crate::{
    Digest,
    crd::ModuleSource,
    registry::{ModuleRef, Registry},
    signing::{self, PublicKey, Refusal},
};

/// Far more digests than a cluster applies in a process's life; past it a memory starts over
/// (each digest is then checked once more).
const MAX_REMEMBERED: usize = 100_000;
/// A refused digest is checked again this long after its first refusal, the wait doubling with
/// each refusal up to [`REFUSAL_RECHECK_MAX`]: a signature pushed soon after its image is found
/// within a minute or so, and a digest that stays unsigned costs a few requests an hour instead
/// of three (the `.sig` tag, the referrers API, the referrers tag) every interval.
const REFUSAL_RECHECK_FIRST: Duration = Duration::from_secs(30);
const REFUSAL_RECHECK_MAX: Duration = Duration::from_secs(10 * 60);

/// The wait before a digest refused `refusals` times in a row is checked again.
pub(super) fn recheck_after(refusals: u32) -> Duration {
    let doublings = refusals.saturating_sub(1).min(16);
    REFUSAL_RECHECK_FIRST
        .saturating_mul(1 << doublings)
        .min(REFUSAL_RECHECK_MAX)
}

/// What signature checks found, keyed by [`remembered_key`] (digest, key set, repository).
#[derive(Default)]
pub(super) struct Memory {
    /// The `Verified` condition's message of each verified digest.
    verified: Mutex<HashMap<String, String>>,
    refused: Mutex<HashMap<String, Refused>>,
}

struct Refused {
    refusal: Refusal,
    /// Refusals in a row, for the backoff.
    refusals: u32,
    recheck_at: Instant,
}

impl Memory {
    pub fn verified(&self, key: &str) -> Option<String> {
        lock(&self.verified).get(key).cloned()
    }

    pub fn remember_verified(&self, key: String, message: String) {
        lock(&self.refused).remove(&key);
        let mut verified = lock(&self.verified);
        if verified.len() >= MAX_REMEMBERED {
            verified.clear();
        }
        verified.insert(key, message);
    }

    /// The refusal of `key` while its backoff lasts at `now`.
    pub fn refused(&self, key: &str, now: Instant) -> Option<Refusal> {
        lock(&self.refused)
            .get(key)
            .filter(|refused| now < refused.recheck_at)
            .map(|refused| refused.refusal.clone())
    }

    pub fn remember_refused(&self, key: String, refusal: Refusal, now: Instant) {
        let mut refused = lock(&self.refused);
        if refused.len() >= MAX_REMEMBERED && !refused.contains_key(&key) {
            refused.clear();
        }
        let refusals = refused.get(&key).map_or(0, |r| r.refusals) + 1;
        refused.insert(
            key,
            Refused {
                refusal,
                refusals,
                recheck_at: now + recheck_after(refusals),
            },
        );
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A pass that panicked holding the lock left a whole map behind: entries are single inserts.
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

/// Whether the source's policy lets `digest` be applied: `Ok(None)` without a policy, else the
/// `Verified` condition's message. `recheck` (a renew) looks again at a digest refused earlier.
pub(super) async fn check_signature(
    ctx: &Context,
    source: &ModuleSource,
    registry: &Registry,
    image: &ModuleRef,
    digest: &Digest,
    recheck: bool,
) -> Result<Option<String>, PassError> {
    let Some(remembered) = remembered_key(source, image.module(), digest) else {
        return Ok(None);
    };
    if let Some(message) = ctx.signatures.verified(&remembered) {
        return Ok(Some(message));
    }
    if !recheck && let Some(refusal) = ctx.signatures.refused(&remembered, Instant::now()) {
        return Err(PassError::Unverified {
            image: image.at_digest(digest),
            refusal,
        });
    }
    let keys = trusted_keys(source)?;
    match read_and_check(registry, &keys, image, digest).await? {
        Ok(verified) => {
            ctx.metrics.verification("Verified");
            let message = verified_message_of(&verified);
            info!(image = %image.at_digest(digest), key = %verified.key, format = verified.format.name(), "signature verified");
            ctx.signatures
                .remember_verified(remembered, message.clone());
            Ok(Some(message))
        }
        Err(refusal) => {
            ctx.metrics.verification(refusal.reason());
            warn!(image = %image.at_digest(digest), "signature refused: {refusal}");
            ctx.signatures
                .remember_refused(remembered, refusal.clone(), Instant::now());
            Err(PassError::Unverified {
                image: image.at_digest(digest),
                refusal,
            })
        }
    }
}

/// Checks the classic signatures first and reads the bundles only when none of those verifies:
/// an image signed by cosign v2 costs two requests (the `.sig` manifest and its payload), not
/// four. A refusal weighs every signature of both formats, so it says the most it can.
async fn read_and_check(
    registry: &Registry,
    keys: &[PublicKey],
    image: &ModuleRef,
    digest: &Digest,
) -> Result<Result<signing::Verified, Refusal>, PassError> {
    let unreadable = |cause| PassError::Signatures {
        image: image.at_digest(digest),
        cause,
    };
    let (digest_text, repository) = (digest.to_string(), image.name());
    let mut signatures = registry
        .classic_signatures(image, digest)
        .await
        .map_err(unreadable)?;
    if let Ok(verified) = signing::check_any(keys, &signatures, &digest_text, &repository) {
        return Ok(Ok(verified));
    }
    signatures.extend(
        registry
            .bundle_signatures(image, digest)
            .await
            .map_err(unreadable)?,
    );
    Ok(signing::check_any(
        keys,
        &signatures,
        &digest_text,
        &repository,
    ))
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
    module: &str,
    digest: &Digest,
) -> Option<Option<String>> {
    remembered_key(source, module, digest).map(|key| ctx.signatures.verified(&key))
}

/// `<digest> <sha256 of the keys> <repository>/<module>`: a changed key list verifies again, and
/// the same content in another repository is checked on its own (a signature names its
/// repository, and is stored beside its image: one module's signature says nothing of another's).
fn remembered_key(source: &ModuleSource, module: &str, digest: &Digest) -> Option<String> {
    let policy = source.spec.verify.as_ref()?;
    let mut hasher = Sha256::new();
    for key in &policy.public_keys {
        hasher.update(key.trim().as_bytes());
        hasher.update([0]);
    }
    Some(format!(
        "{digest} {} {}/{module}",
        hex::encode(hasher.finalize()),
        source.spec.registry.repo.trim_end_matches('/')
    ))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_digest_is_checked_again_after_a_doubling_wait_with_a_ceiling() {
        let waits: Vec<u64> = (1..=8).map(|n| recheck_after(n).as_secs()).collect();
        assert_eq!(waits, [30, 60, 120, 240, 480, 600, 600, 600]);
        assert_eq!(recheck_after(u32::MAX), REFUSAL_RECHECK_MAX);
        assert_eq!(recheck_after(0), REFUSAL_RECHECK_FIRST);
    }

    #[test]
    fn a_remembered_refusal_holds_until_its_wait_is_over_and_a_verification_ends_it() {
        let memory = Memory::default();
        let start = Instant::now();
        let key = "sha256:aa keys".to_owned();
        assert_eq!(memory.refused(&key, start), None);
        memory.remember_refused(key.clone(), Refusal::Unsigned, start);
        assert_eq!(memory.refused(&key, start), Some(Refusal::Unsigned));
        let second = start + Duration::from_secs(29);
        assert_eq!(memory.refused(&key, second), Some(Refusal::Unsigned));
        let after = start + Duration::from_secs(30);
        assert_eq!(memory.refused(&key, after), None);
        // Refused again: the next wait is twice as long, and says the latest refusal.
        let refusal = Refusal::NotVerified { keys: 2 };
        memory.remember_refused(key.clone(), refusal.clone(), after);
        assert_eq!(
            memory.refused(&key, after + Duration::from_secs(59)),
            Some(refusal)
        );
        assert_eq!(memory.refused(&key, after + Duration::from_secs(60)), None);
        // Another key set is another key: nothing remembered for it.
        assert_eq!(memory.refused("sha256:aa other-keys", after), None);
        memory.remember_verified(key.clone(), "verified".into());
        assert_eq!(memory.refused(&key, after), None);
        assert_eq!(memory.verified(&key).as_deref(), Some("verified"));
    }
}
