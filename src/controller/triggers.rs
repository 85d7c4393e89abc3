//! What makes a pass run: the fingerprint of everything a pass depends on, and which MPOs a
//! ModuleSource change must wake. (What a renew annotation asks is in [`super::rules::renew`].)

use std::hash::{DefaultHasher, Hash, Hasher};

use kube::ResourceExt;

use super::rules::listing::{self, Listing};
use crate::crd::{ModulePullOverride, ModuleSource};

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
        let listed = listing::admits(source, &mpo.name_any());
        listed.hash(&mut hasher);
    }
    hasher.finish()
}

/// What of a ModuleSource matters to its MPOs: how to reach the registry (and its signature
/// policy), and which modules it lists. Flags, `syncTime` and messages are not part of it, so writing them wakes nobody.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourceView {
    registry: u64,
    listing: Listing,
}

impl SourceView {
    pub fn of(source: &ModuleSource) -> Self {
        let mut hasher = DefaultHasher::new();
        serde_json::to_string(&source.spec.registry)
            .unwrap_or_default()
            .hash(&mut hasher);
        // A changed signature policy changes what each MPO may apply, as a new registry does.
        serde_json::to_string(&source.spec.verify)
            .unwrap_or_default()
            .hash(&mut hasher);
        Self {
            registry: hasher.finish(),
            listing: Listing::of(source),
        }
    }

    /// Whether an MPO for `module` may proceed (SPEC §3.2).
    pub fn admits(&self, module: &str) -> bool {
        self.listing.admits(module)
    }
}

/// The MPOs (given by name, all on this source) that a change of the source from `old` to `new`
/// must wake: all of them when the source appears, goes or its registry settings change; else
/// only those whose module became listed or unlisted.
pub fn mpos_to_wake<'a>(
    old: Option<&SourceView>,
    new: Option<&SourceView>,
    mpos_on_source: impl IntoIterator<Item = &'a str>,
) -> Vec<&'a str> {
    match (old, new) {
        (Some(old), Some(new)) if old.registry == new.registry => mpos_on_source
            .into_iter()
            .filter(|m| old.admits(m) != new.admits(m))
            .collect(),
        (None, None) => Vec::new(),
        _ => mpos_on_source.into_iter().collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::rules::renew::tests::mpo;

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

    fn source(registry: &str, count: i64, listed: &[&str]) -> ModuleSource {
        use crate::crd::{ModuleSourceSpec, ModuleSourceStatus, RegistrySpec, SourceModule};
        let mut s = ModuleSource::new(
            "src",
            ModuleSourceSpec {
                registry: RegistrySpec {
                    repo: registry.into(),
                    docker_cfg: Default::default(),
                    ca: None,
                    scheme: Default::default(),
                },
                release_channel: None,
                verify: None,
            },
        );
        s.status = Some(ModuleSourceStatus {
            modules: Some(
                listed
                    .iter()
                    .map(|n| SourceModule {
                        name: (*n).into(),
                        overridden: Some(true),
                        ..Default::default()
                    })
                    .collect(),
            ),
            modules_count: Some(count),
            sync_time: Some("t".into()),
            ..Default::default()
        });
        s
    }

    #[test]
    fn only_what_matters_to_an_mpo_wakes_it() {
        let view =
            |registry, count, listed: &[&str]| SourceView::of(&source(registry, count, listed));
        let mpos = ["a", "b", "c"];
        let base = view("r/m", 2, &["a", "b"]);
        let mut flags_and_sync = source("r/m", 2, &["a", "b"]);
        if let Some(status) = flags_and_sync.status.as_mut() {
            status.sync_time = Some("later".into());
            status.message = Some("x".into());
            for m in status.modules.iter_mut().flatten() {
                m.overridden = None;
            }
        }
        type Case<'a> = (
            &'a str,
            Option<SourceView>,
            Option<SourceView>,
            Vec<&'a str>,
        );
        let cases: Vec<Case<'_>> = vec![
            (
                "source appears",
                None,
                Some(base.clone()),
                vec!["a", "b", "c"],
            ),
            (
                "source deleted",
                Some(base.clone()),
                None,
                vec!["a", "b", "c"],
            ),
            (
                "flags, syncTime, message",
                Some(base.clone()),
                Some(SourceView::of(&flags_and_sync)),
                vec![],
            ),
            (
                "registry changed",
                Some(base.clone()),
                Some(view("r/other", 2, &["a", "b"])),
                vec!["a", "b", "c"],
            ),
            (
                "c listed, b dropped",
                Some(base.clone()),
                Some(view("r/m", 2, &["a", "c"])),
                vec!["b", "c"],
            ),
            (
                "first scan lists only a",
                Some(view("r/m", 0, &[])),
                Some(view("r/m", 1, &["a"])),
                vec!["b", "c"],
            ),
        ];
        for (name, old, new, expected) in cases {
            assert_eq!(
                mpos_to_wake(old.as_ref(), new.as_ref(), mpos),
                expected,
                "{name}"
            );
        }
    }
}
