//! Pure builders of the status the operator writes. The pass computes an outcome; these
//! functions turn it into the desired status, and the caller writes only when it differs.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use serde_json::{Value, json};

use super::error::PassError;
use crate::{
    Digest,
    crd::{AppliedVersion, ModulePullOverride, ModulePullOverrideStatus},
};

pub const READY: &str = "Ready";
pub const VERIFIED: &str = "Verified";

/// What the status says of the source's signature policy (the `Verified` condition).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verification {
    /// The source has no policy: no `Verified` condition.
    NoPolicy,
    /// The outcome's digest verified; the condition's message.
    Verified(String),
    /// A policy applies, and this pass did not get as far as a check: the condition stays.
    Unchanged,
}

/// What a pass found.
#[derive(Debug)]
pub enum Outcome {
    /// The module on disk is the tag's digest. `changed` when this pass switched it in.
    InSync {
        digest: Digest,
        weight: u32,
        changed: bool,
    },
    Failed(PassError),
}

/// The status after `outcome`, starting from the current one: on failure the digest, time and
/// weight stay as they were (the files on disk did not change either).
pub fn desired_status(
    mpo: &ModulePullOverride,
    outcome: &Outcome,
    now: &str,
    history_len: usize,
    verification: &Verification,
) -> ModulePullOverrideStatus {
    let current = mpo.status.clone().unwrap_or_default();
    let mut next = current.clone();
    next.observed_generation = mpo.metadata.generation;
    let pinned = mpo.spec.image_digest.is_some();
    // A merge patch cannot drop a field: once there, `pinned` turns false instead.
    next.pinned = (pinned || current.pinned.is_some()).then_some(pinned);
    let (ready, reason, message) = match outcome {
        Outcome::InSync {
            digest,
            weight,
            changed,
        } => {
            let digest = digest.to_string();
            if *changed || current.image_digest.as_deref() != Some(digest.as_str()) {
                next.updated_at = Some(now.to_owned());
            }
            // Status written before there was a history: the digest applied then, at its time.
            let applied_at = match (&current.history, &current.updated_at) {
                (None, Some(updated))
                    if !*changed && current.image_digest.as_ref() == Some(&digest) =>
                {
                    updated.as_str()
                }
                _ => now,
            };
            let history = next_history(
                current.history.as_deref().unwrap_or_default(),
                &digest,
                applied_at,
                history_len,
            );
            next.history = Some(history);
            next.image_digest = Some(digest);
            next.weight = Some(*weight);
            (
                true,
                if pinned { "Pinned" } else { "InSync" },
                String::new(),
            )
        }
        Outcome::Failed(err) => (false, err.reason(), err.to_string()),
    };
    next.message = Some(message.clone());
    let mut conditions = vec![ready_condition(
        &current,
        ready,
        reason,
        &message,
        mpo.metadata.generation,
    )];
    conditions.extend(verified_condition(
        &current,
        outcome,
        verification,
        mpo.metadata.generation,
    ));
    next.conditions = Some(conditions);
    next
}

/// The `Verified` condition after `outcome`: True with the verification's message, False with
/// the refusal's reason, else what it was.
fn verified_condition(
    current: &ModulePullOverrideStatus,
    outcome: &Outcome,
    verification: &Verification,
    generation: Option<i64>,
) -> Option<Condition> {
    let (status, reason, message) = match (outcome, verification) {
        (_, Verification::NoPolicy) => return None,
        (Outcome::Failed(err @ PassError::Unverified { refusal, .. }), _) => {
            ("False", refusal.reason(), err.to_string())
        }
        (Outcome::Failed(err @ PassError::BadPolicy { .. }), _) => {
            ("False", "InvalidPolicy", err.to_string())
        }
        (Outcome::InSync { .. }, Verification::Verified(message)) => {
            ("True", "Verified", message.clone())
        }
        _ => {
            return current
                .conditions
                .iter()
                .flatten()
                .find(|c| c.type_ == VERIFIED)
                .cloned();
        }
    };
    Some(condition(
        current, VERIFIED, status, reason, message, generation,
    ))
}

/// `status.history` after `digest` is the active one: it goes first (with `now`, unless it is
/// first already), any older entry of it is dropped, and at most `len` entries stay.
pub fn next_history(
    current: &[AppliedVersion],
    digest: &str,
    now: &str,
    len: usize,
) -> Vec<AppliedVersion> {
    if current.first().is_some_and(|first| first.digest == digest) {
        return current.iter().take(len.max(1)).cloned().collect();
    }
    std::iter::once(AppliedVersion {
        digest: digest.to_owned(),
        applied_at: now.to_owned(),
    })
    .chain(current.iter().filter(|v| v.digest != digest).cloned())
    .take(len.max(1))
    .collect()
}

/// The Ready condition; its transition time moves only when its status flips.
fn ready_condition(
    current: &ModulePullOverrideStatus,
    ready: bool,
    reason: &str,
    message: &str,
    generation: Option<i64>,
) -> Condition {
    let status = if ready { "True" } else { "False" };
    let message = if message.is_empty() && reason == "Pinned" {
        "module on disk is the pinned digest".to_owned()
    } else if message.is_empty() {
        "module on disk matches the tag".to_owned()
    } else {
        message.to_owned()
    };
    condition(current, READY, status, reason, message, generation)
}

/// A condition of `type_`; its transition time moves only when its status flips.
fn condition(
    current: &ModulePullOverrideStatus,
    type_: &str,
    status: &str,
    reason: &str,
    message: String,
    generation: Option<i64>,
) -> Condition {
    let previous = current
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == type_);
    let last_transition_time = match previous {
        Some(p) if p.status == status => p.last_transition_time.clone(),
        _ => Time(k8s_openapi::jiff::Timestamp::now()),
    };
    Condition {
        type_: type_.to_owned(),
        status: status.to_owned(),
        reason: reason.to_owned(),
        message,
        last_transition_time,
        observed_generation: generation,
    }
}

/// True when writing `desired` would change anything a user can see.
pub fn status_differs(mpo: &ModulePullOverride, desired: &ModulePullOverrideStatus) -> bool {
    mpo.status.as_ref() != Some(desired)
}

/// The merge patch body for the status subresource. It carries the resourceVersion the pass
/// read (when known) as a precondition: if the object changed since — a newer leader wrote its
/// result, a user edited the spec — the apiserver refuses the write with 409 instead of letting
/// a stale pass overwrite it.
pub fn status_patch(desired: &ModulePullOverrideStatus, read_version: Option<&str>) -> Value {
    match read_version {
        Some(version) => json!({ "metadata": { "resourceVersion": version }, "status": desired }),
        None => json!({ "status": desired }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::ModulePullOverrideSpec;

    #[test]
    fn status_patches_are_conditional_on_the_version_the_pass_read() {
        let desired = ModulePullOverrideStatus {
            message: Some(String::new()),
            ..Default::default()
        };
        let patch = status_patch(&desired, Some("42"));
        assert_eq!(patch["metadata"]["resourceVersion"], "42");
        assert_eq!(patch["status"]["message"], "");
        assert!(status_patch(&desired, None).get("metadata").is_none());
    }

    fn mpo(status: Option<ModulePullOverrideStatus>) -> ModulePullOverride {
        let mut m = ModulePullOverride::new(
            "echo",
            ModulePullOverrideSpec {
                image_tag: "t".into(),
                source: "s".into(),
                scan_interval: Default::default(),
                image_digest: None,
                rollback: None,
            },
        );
        m.metadata.generation = Some(3);
        m.status = status;
        m
    }

    #[test]
    fn a_new_digest_moves_updated_at_and_clears_the_message() {
        let digest = Digest::of(b"x");
        let outcome = Outcome::InSync {
            digest: digest.clone(),
            weight: 910,
            changed: true,
        };
        let s = desired_status(
            &mpo(None),
            &outcome,
            "2026-01-01T00:00:00Z",
            3,
            &Verification::NoPolicy,
        );
        assert_eq!(s.image_digest, Some(digest.to_string()));
        assert_eq!(s.updated_at.as_deref(), Some("2026-01-01T00:00:00Z"));
        assert_eq!(s.message.as_deref(), Some(""));
        assert_eq!(s.weight, Some(910));
        assert_eq!(s.observed_generation, Some(3));
        assert_eq!(
            s.conditions.as_ref().map(|c| c[0].status.as_str()),
            Some("True")
        );
    }

    #[test]
    fn the_history_puts_each_switch_first_once_and_keeps_the_last_few() {
        let v = |d: &str, at: &str| AppliedVersion {
            digest: d.into(),
            applied_at: at.into(),
        };
        let h = next_history(&[], "a", "t1", 3);
        assert_eq!(h, [v("a", "t1")]);
        let h = next_history(&h, "b", "t2", 3);
        let h = next_history(&h, "c", "t3", 3);
        assert_eq!(h, [v("c", "t3"), v("b", "t2"), v("a", "t1")]);
        assert_eq!(
            next_history(&h, "c", "t9", 3),
            h,
            "the same digest again: no entry"
        );
        let h = next_history(&h, "d", "t4", 3);
        assert_eq!(h, [v("d", "t4"), v("c", "t3"), v("b", "t2")]);
        // A rollback to `b`: first, with its new time, and only once.
        assert_eq!(
            next_history(&h, "b", "t5", 3),
            [v("b", "t5"), v("d", "t4"), v("c", "t3")]
        );
        assert_eq!(next_history(&h, "e", "t6", 1), [v("e", "t6")]);
    }

    #[test]
    fn a_pin_is_shown_and_an_unpin_turns_it_false() {
        let digest = Digest::of(b"x");
        let outcome = Outcome::InSync {
            digest: digest.clone(),
            weight: 900,
            changed: true,
        };
        let mut pinned = mpo(None);
        pinned.spec.image_digest = Some(digest.to_string());
        let s = desired_status(&pinned, &outcome, "t1", 3, &Verification::NoPolicy);
        assert_eq!(s.pinned, Some(true));
        assert_eq!(
            s.conditions.as_ref().map(|c| c[0].reason.as_str()),
            Some("Pinned")
        );
        let unpinned = mpo(Some(s));
        let s = desired_status(&unpinned, &outcome, "t2", 3, &Verification::NoPolicy);
        assert_eq!(s.pinned, Some(false));
        assert_eq!(
            desired_status(&mpo(None), &outcome, "t1", 3, &Verification::NoPolicy).pinned,
            None
        );
    }

    #[test]
    fn an_existing_digest_enters_the_history_at_its_own_time() {
        let digest = Digest::of(b"x");
        let old = ModulePullOverrideStatus {
            image_digest: Some(digest.to_string()),
            updated_at: Some("2026-01-01T00:00:00Z".into()),
            ..Default::default()
        };
        let outcome = Outcome::InSync {
            digest: digest.clone(),
            weight: 900,
            changed: false,
        };
        let s = desired_status(&mpo(Some(old)), &outcome, "t2", 3, &Verification::NoPolicy);
        let history = s.history.expect("a history");
        assert_eq!(history[0].applied_at, "2026-01-01T00:00:00Z");
    }

    #[test]
    fn an_unchanged_check_is_not_a_write() {
        let digest = Digest::of(b"x");
        let first = desired_status(
            &mpo(None),
            &Outcome::InSync {
                digest: digest.clone(),
                weight: 900,
                changed: true,
            },
            "t1",
            3,
            &Verification::NoPolicy,
        );
        let settled = mpo(Some(first));
        let again = desired_status(
            &settled,
            &Outcome::InSync {
                digest,
                weight: 900,
                changed: false,
            },
            "t2",
            3,
            &Verification::NoPolicy,
        );
        assert!(!status_differs(&settled, &again));
    }

    #[test]
    fn a_failure_keeps_the_digest_and_time() {
        let digest = Digest::of(b"x");
        let ok = desired_status(
            &mpo(None),
            &Outcome::InSync {
                digest: digest.clone(),
                weight: 900,
                changed: true,
            },
            "t1",
            3,
            &Verification::NoPolicy,
        );
        let failed = desired_status(
            &mpo(Some(ok)),
            &Outcome::Failed(PassError::SourceMissing("s".into())),
            "t2",
            3,
            &Verification::NoPolicy,
        );
        assert_eq!(failed.image_digest, Some(digest.to_string()));
        assert_eq!(failed.updated_at.as_deref(), Some("t1"));
        assert_eq!(
            failed.message.as_deref(),
            Some(r#"ModuleSource "s" not found"#)
        );
        let ready = &failed.conditions.expect("conditions")[0];
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("False", "SourceNotFound")
        );
    }

    fn verified(s: &ModulePullOverrideStatus) -> Option<(String, String, String)> {
        s.conditions
            .iter()
            .flatten()
            .find(|c| c.type_ == VERIFIED)
            .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
    }

    #[test]
    fn the_verified_condition_follows_the_policy_and_the_check() {
        let digest = Digest::of(b"x");
        let in_sync = Outcome::InSync {
            digest: digest.clone(),
            weight: 900,
            changed: true,
        };
        let none = desired_status(&mpo(None), &in_sync, "t1", 3, &Verification::NoPolicy);
        assert_eq!(verified(&none), None, "no policy, no condition");

        let ok = desired_status(
            &mpo(None),
            &in_sync,
            "t1",
            3,
            &Verification::Verified("signature verified with key sha256:ab".into()),
        );
        assert_eq!(
            verified(&ok),
            Some((
                "True".into(),
                "Verified".into(),
                "signature verified with key sha256:ab".into()
            ))
        );

        let refused = Outcome::Failed(PassError::Unverified {
            image: "r/m/echo@sha256:cd".into(),
            refusal: crate::signing::Refusal::Unsigned,
        });
        let s = desired_status(
            &mpo(Some(ok.clone())),
            &refused,
            "t2",
            3,
            &Verification::Unchanged,
        );
        let (status, reason, message) = verified(&s).expect("a Verified condition");
        assert_eq!((status.as_str(), reason.as_str()), ("False", "Unsigned"));
        assert!(message.contains("has no signature"), "{message}");
        assert_eq!(s.image_digest, ok.image_digest, "the applied digest stays");
        let ready = &s.conditions.as_ref().expect("conditions")[0];
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("False", "SignatureRefused")
        );

        // A failure before any check (the registry down) leaves the condition as it was.
        let down = Outcome::Failed(PassError::SourceMissing("s".into()));
        let s = desired_status(
            &mpo(Some(ok.clone())),
            &down,
            "t2",
            3,
            &Verification::Unchanged,
        );
        assert_eq!(verified(&s), verified(&ok));
        // The policy removed: the condition goes.
        let s = desired_status(&mpo(Some(ok)), &in_sync, "t3", 3, &Verification::NoPolicy);
        assert_eq!(verified(&s), None);
    }
}
