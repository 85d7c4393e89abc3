//! SPEC §3.2: which modules a ModuleSource lists. Pure rules, below everything that uses them
//! (the pass, the flags writer, the source watch and the scan), so none of those import each
//! other for it.
//!
//! A source "lists modules" once `modulesCount > 0` (written by the scan or whoever owns the
//! list). An entry of `status.modules` counts only when a writer other than the flags writer owns
//! it: the flags writer's own `overridden` entries would otherwise make an unlisted module look
//! listed, and keep itself so. Without managedFields (nothing to tell owners apart), any entry
//! counts.
//!
//! [`Listing::of`] reads a source once in O(N) for the bulk callers (the flags writer and the
//! source watch handle every module of a source at once: asking [`is_listed`] per module there
//! cost O(N²) per write, which made a cold start of 3000 overrides grow faster than linearly).

use std::collections::HashSet;

use kube::ResourceExt;
use serde_json::Value;

use crate::crd::ModuleSource;

/// The one field manager of the `overridden` flags.
pub const FLAGS_FIELD_MANAGER: &str = "mpo-operator-flags";
/// Field managers of earlier versions (one per MPO); their fields are given up on first contact.
pub const LEGACY_FLAGS_MANAGER_PREFIX: &str = "mpo-operator-override-";

/// Whether `manager` writes flags (this version's, a shard's, or an earlier version's), so
/// owning an entry does not make it listed.
pub fn is_flags_manager(manager: &str) -> bool {
    manager == FLAGS_FIELD_MANAGER
        || manager
            .strip_prefix(FLAGS_FIELD_MANAGER)
            .is_some_and(|rest| rest.starts_with('-'))
        || manager.starts_with(LEGACY_FLAGS_MANAGER_PREFIX)
}

/// The field manager of this operator's flags: [`FLAGS_FIELD_MANAGER`], or with `--watch-selector`
/// one per shard (`mpo-operator-flags-<hash of the selector>`). Each apply sets the whole set of
/// its manager, so two shards under one manager would erase each other's flags on one source.
pub fn flags_manager_for(watch_selector: &str) -> String {
    use sha2::Digest as _;
    let normalized: String = watch_selector.split_whitespace().collect();
    if normalized.is_empty() {
        return FLAGS_FIELD_MANAGER.to_owned();
    }
    let hash = sha2::Sha256::digest(normalized.as_bytes());
    format!("{FLAGS_FIELD_MANAGER}-{}", &hex::encode(hash)[..12])
}

/// Whether the source has been scanned: only then can it miss a module.
pub fn is_scanned(source: &ModuleSource) -> bool {
    source
        .status
        .as_ref()
        .and_then(|s| s.modules_count)
        .unwrap_or_default()
        > 0
}

/// Whether an MPO for `module` may proceed: the source is not scanned yet, or lists it.
pub fn admits(source: &ModuleSource, module: &str) -> bool {
    !is_scanned(source) || is_listed(source, module)
}

/// Whether the source's status has an entry for `module` that a lister (not only the flags
/// writer) owns. One module: O(N) in the entries, no parsing of managedFields keys.
pub fn is_listed(source: &ModuleSource, module: &str) -> bool {
    let has_entry = status_entries(source).any(|name| name == module);
    if !has_entry {
        return false;
    }
    let managers = source.managed_fields();
    if managers.is_empty() {
        return true;
    }
    let key = format!("k:{}", serde_json::json!({ "name": module }));
    lister_module_fields(source).any(|modules| modules.contains_key(&key))
}

/// What a source lists, read once.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Listing {
    scanned: bool,
    /// Listed names in the order of `status.modules`.
    listed: Vec<String>,
    index: HashSet<String>,
}

impl Listing {
    pub fn of(source: &ModuleSource) -> Self {
        let listed: Vec<String> = if source.managed_fields().is_empty() {
            status_entries(source).map(str::to_owned).collect()
        } else {
            let owned: HashSet<String> = lister_module_fields(source)
                .flat_map(|modules| modules.keys())
                .filter_map(|key| list_key_name(key))
                .collect();
            status_entries(source)
                .filter(|name| owned.contains(*name))
                .map(str::to_owned)
                .collect()
        };
        let index = listed.iter().cloned().collect();
        Self {
            scanned: is_scanned(source),
            listed,
            index,
        }
    }

    /// Whether an MPO for `module` may proceed (as [`admits`]).
    pub fn admits(&self, module: &str) -> bool {
        !self.scanned || self.index.contains(module)
    }

    /// The listed names, in the order of the source's status.
    pub fn names(&self) -> &[String] {
        &self.listed
    }
}

fn status_entries(source: &ModuleSource) -> impl Iterator<Item = &str> {
    source
        .status
        .as_ref()
        .and_then(|s| s.modules.as_ref())
        .into_iter()
        .flatten()
        .map(|m| m.name.as_str())
}

/// `f:status/f:modules` of every manager that is not a flags writer.
fn lister_module_fields(
    source: &ModuleSource,
) -> impl Iterator<Item = &serde_json::Map<String, Value>> {
    source
        .managed_fields()
        .iter()
        .filter(|e| !e.manager.as_deref().is_some_and(is_flags_manager))
        .filter_map(|e| e.fields_v1.as_ref())
        .filter_map(|f| f.0.pointer("/f:status/f:modules")?.as_object())
}

/// `k:{"name":"echo"}` → `echo`.
pub fn list_key_name(key: &str) -> Option<String> {
    let object: Value = serde_json::from_str(key.strip_prefix("k:")?).ok()?;
    object.get("name")?.as_str().map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_shard_writes_its_flags_under_a_manager_of_its_own() {
        assert_eq!(flags_manager_for(""), FLAGS_FIELD_MANAGER);
        assert_eq!(flags_manager_for("  "), FLAGS_FIELD_MANAGER);
        let a = flags_manager_for("team=a");
        let b = flags_manager_for("team=b");
        assert_ne!(a, b);
        assert_eq!(a, flags_manager_for(" team = a "), "spaces do not matter");
        assert!(
            a.starts_with("mpo-operator-flags-") && a.len() <= 128,
            "{a}"
        );
        for manager in [
            a.as_str(),
            b.as_str(),
            FLAGS_FIELD_MANAGER,
            "mpo-operator-override-echo",
        ] {
            assert!(is_flags_manager(manager), "{manager}");
        }
        assert!(!is_flags_manager("mpo-operator-flagsx"));
        assert!(!is_flags_manager("mpo-operator"));
    }
    use crate::crd::test_source_listing;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{FieldsV1, ManagedFieldsEntry};

    fn source(count: Option<i64>, names: &[&str]) -> ModuleSource {
        test_source_listing("src", count, names)
    }

    fn owns(manager: &str, names: &[&str]) -> ManagedFieldsEntry {
        let modules: serde_json::Map<String, Value> = names
            .iter()
            .map(|name| {
                (
                    format!("k:{{\"name\":\"{name}\"}}"),
                    serde_json::json!({".": {}, "f:name": {}}),
                )
            })
            .collect();
        ManagedFieldsEntry {
            manager: Some(manager.into()),
            subresource: Some("status".into()),
            fields_v1: Some(FieldsV1(
                serde_json::json!({"f:status": {"f:modules": modules}}),
            )),
            ..Default::default()
        }
    }

    #[test]
    fn only_a_source_that_lists_modules_can_miss_one() {
        assert!(
            admits(&source(None, &["other"]), "echo"),
            "override entries alone"
        );
        assert!(admits(&source(Some(0), &[]), "echo"));
        assert!(admits(&source(Some(2), &["echo", "b"]), "echo"));
        assert!(!admits(&source(Some(1), &["other"]), "echo"));
    }

    #[test]
    fn an_entry_only_the_flags_writer_owns_is_not_listed() {
        let mut s = source(Some(2), &["echo", "other"]);
        s.metadata.managed_fields = Some(vec![
            owns("mpo-operator-scan", &["other"]),
            owns(FLAGS_FIELD_MANAGER, &["echo", "other"]),
            owns("mpo-operator-override-echo", &["echo"]),
        ]);
        assert!(is_listed(&s, "other"));
        assert!(
            !is_listed(&s, "echo"),
            "a flag alone does not list a module"
        );
        assert!(!admits(&s, "echo"));
    }

    /// The bulk reading agrees with the per-module rule on every shape of source.
    #[test]
    fn the_listing_agrees_with_the_per_module_rule() {
        let names = ["a", "b", "c", "d", "e"];
        let mut cases = vec![
            source(None, &names),
            source(Some(0), &names),
            source(Some(5), &names),
        ];
        let mut owned = source(Some(3), &["a", "b", "c", "d"]);
        owned.metadata.managed_fields = Some(vec![
            owns("mpo-operator-scan", &["a", "c"]),
            owns("someone-else", &["d", "zz"]),
            owns(FLAGS_FIELD_MANAGER, &["b", "c"]),
        ]);
        cases.push(owned);
        for (i, s) in cases.iter().enumerate() {
            let listing = Listing::of(s);
            for module in names.iter().chain(&["zz", "nope"]) {
                assert_eq!(
                    listing.admits(module),
                    admits(s, module),
                    "case {i}, {module}"
                );
            }
            let expected: Vec<&str> = status_entries(s).filter(|m| is_listed(s, m)).collect();
            assert_eq!(listing.names(), expected.as_slice(), "case {i}");
        }
    }

    #[test]
    fn list_keys() {
        assert_eq!(
            list_key_name(r#"k:{"name":"echo"}"#).as_deref(),
            Some("echo")
        );
        assert_eq!(list_key_name(r#"{"name":"echo"}"#), None);
        assert_eq!(list_key_name("k:not json"), None);
    }
}
