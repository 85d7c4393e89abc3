//! What makes a pass run: the renew annotations, the fingerprint of everything a pass depends
//! on, the ModuleSource → MPO mapping and the jittered interval.

use std::{
    hash::{DefaultHasher, Hash, Hasher},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use kube::{ResourceExt, runtime::reflector::ObjectRef};
use serde_json::{Value, json};

use crate::crd::{ModulePullOverride, ModuleSource, RENEW_ANNOTATION, RENEW_FORCE_ANNOTATION};

/// What the user asked for with an annotation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Renew {
    None,
    /// `renew` (any value): check the tag now.
    Check,
    /// `modules.deckhouse.io/renew: "true"`: check now and download again even if unchanged.
    Force,
}

pub fn renew_requested(mpo: &ModulePullOverride) -> Renew {
    let annotations = mpo.annotations();
    if annotations
        .get(RENEW_FORCE_ANNOTATION)
        .is_some_and(|v| v == "true")
    {
        Renew::Force
    } else if annotations.contains_key(RENEW_ANNOTATION)
        || annotations.contains_key(RENEW_FORCE_ANNOTATION)
    {
        Renew::Check
    } else {
        Renew::None
    }
}

/// Merge patch removing whichever renew annotations are present, or `None` when there are none.
pub fn renew_removal_patch(mpo: &ModulePullOverride) -> Option<Value> {
    let present: serde_json::Map<String, Value> = [RENEW_ANNOTATION, RENEW_FORCE_ANNOTATION]
        .into_iter()
        .filter(|key| mpo.annotations().contains_key(*key))
        .map(|key| (key.to_owned(), Value::Null))
        .collect();
    (!present.is_empty()).then(|| json!({ "metadata": { "annotations": present } }))
}

/// A hash of everything a pass reads from the API: the MPO's spec, the source's spec and
/// whether the source lists the module. Status writes and the source's syncTime do not change it.
pub fn fingerprint(mpo: &ModulePullOverride, source: Option<&ModuleSource>) -> u64 {
    let mut hasher = DefaultHasher::new();
    serde_json::to_string(&mpo.spec)
        .unwrap_or_default()
        .hash(&mut hasher);
    mpo.metadata.generation.hash(&mut hasher);
    if let Some(source) = source {
        serde_json::to_string(&source.spec)
            .unwrap_or_default()
            .hash(&mut hasher);
        // Only whether this module is listed matters; other MPOs' entries must not retrigger it.
        let listed = super::source::check_module_listed(source, &mpo.name_any()).is_ok();
        listed.hash(&mut hasher);
    }
    hasher.finish()
}

/// The MPOs that name `source`.
pub fn mpos_of_source<'a>(
    source: &'a ModuleSource,
    mpos: impl IntoIterator<Item = &'a ModulePullOverride> + 'a,
) -> impl Iterator<Item = ObjectRef<ModulePullOverride>> + 'a {
    let name = source.name_any();
    mpos.into_iter()
        .filter(move |mpo| mpo.spec.source == name)
        .map(ObjectRef::from_obj)
}

/// `interval` plus up to 5 %, so that many MPOs created together drift apart.
pub fn jittered(interval: Duration, seed: &str) -> Duration {
    let mut hasher = DefaultHasher::new();
    seed.hash(&mut hasher);
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .subsec_nanos()
        .hash(&mut hasher);
    let per_mille = hasher.finish() % 50;
    interval + interval.mul_f64(per_mille as f64 / 1000.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::ModulePullOverrideSpec;

    fn mpo(annotations: &[(&str, &str)]) -> ModulePullOverride {
        let mut m = ModulePullOverride::new(
            "echo",
            ModulePullOverrideSpec {
                image_tag: "t".into(),
                source: "s".into(),
                scan_interval: Default::default(),
            },
        );
        m.metadata.annotations = Some(
            annotations
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        );
        m
    }

    #[test]
    fn renew_annotations() {
        assert_eq!(renew_requested(&mpo(&[])), Renew::None);
        assert_eq!(renew_requested(&mpo(&[("renew", "")])), Renew::Check);
        assert_eq!(
            renew_requested(&mpo(&[(RENEW_FORCE_ANNOTATION, "true")])),
            Renew::Force
        );
        assert_eq!(renew_removal_patch(&mpo(&[])), None);
        assert_eq!(
            renew_removal_patch(&mpo(&[("renew", ""), ("other", "x")])),
            Some(json!({"metadata": {"annotations": {"renew": null}}}))
        );
    }

    #[test]
    fn status_does_not_change_the_fingerprint() {
        let a = mpo(&[]);
        let mut b = a.clone();
        b.status = Some(Default::default());
        assert_eq!(fingerprint(&a, None), fingerprint(&b, None));
        let mut c = a.clone();
        c.spec.image_tag = "other".into();
        assert_ne!(fingerprint(&a, None), fingerprint(&c, None));
    }

    #[test]
    fn jitter_stays_within_five_percent() {
        let base = Duration::from_secs(100);
        for seed in ["a", "b", "c"] {
            let d = jittered(base, seed);
            assert!(d >= base && d < base + Duration::from_secs(5), "{d:?}");
        }
    }
}
