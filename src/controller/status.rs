//! Pure builders of the status the operator writes. The pass computes an outcome; these
//! functions turn it into the desired status, and the caller writes only when it differs.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use serde_json::{Value, json};

use super::error::PassError;
use crate::{
    Digest,
    crd::{ModulePullOverride, ModulePullOverrideStatus},
};

pub const READY: &str = "Ready";

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
) -> ModulePullOverrideStatus {
    let current = mpo.status.clone().unwrap_or_default();
    let mut next = current.clone();
    next.observed_generation = mpo.metadata.generation;
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
            next.image_digest = Some(digest);
            next.weight = Some(*weight);
            (true, "InSync", String::new())
        }
        Outcome::Failed(err) => (false, err.reason(), err.to_string()),
    };
    next.message = Some(message.clone());
    next.conditions = Some(vec![ready_condition(
        &current,
        ready,
        reason,
        &message,
        mpo.metadata.generation,
    )]);
    next
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
    let previous = current
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == READY);
    let last_transition_time = match previous {
        Some(p) if p.status == status => p.last_transition_time.clone(),
        _ => Time(k8s_openapi::jiff::Timestamp::now()),
    };
    Condition {
        type_: READY.to_owned(),
        status: status.to_owned(),
        reason: reason.to_owned(),
        message: if message.is_empty() {
            "module on disk matches the tag".to_owned()
        } else {
            message.to_owned()
        },
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
        let s = desired_status(&mpo(None), &outcome, "2026-01-01T00:00:00Z");
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
        );
        let failed = desired_status(
            &mpo(Some(ok)),
            &Outcome::Failed(PassError::SourceMissing("s".into())),
            "t2",
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
}
