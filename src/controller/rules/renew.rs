//! What a renew annotation asks for, and the patch that takes it away once served.

use kube::ResourceExt;
use serde_json::{Value, json};

use crate::crd::{ModulePullOverride, RENEW_ANNOTATION, RENEW_FORCE_ANNOTATION};

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

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::crd::ModulePullOverrideSpec;

    /// An MPO with `annotations`, for the tests of the parts that read them.
    pub(crate) fn mpo(annotations: &[(&str, &str)]) -> ModulePullOverride {
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
}
