//! Step 1–2 of a pass: the ModuleSource an MPO names, and how to reach its registry.

use kube::ResourceExt;

use super::{Context, PassError, flags};
use crate::{
    crd::{ConnectSettings, DockerCfgError, ModuleSource, RegistrySpecError},
    registry::{Registry, RegistryConfig},
};

/// SPEC §3.2: a source that lists modules must list this one. "Lists modules" is judged by
/// `modulesCount` (written by the scan or whoever owns the list), not by the entries alone, and an
/// entry counts only when some writer other than the flags writer owns it: the flags writer's own
/// `overridden` entries would otherwise make an unlisted module look listed, and keep itself so.
pub fn check_module_listed(source: &ModuleSource, module: &str) -> Result<(), PassError> {
    let scanned = source
        .status
        .as_ref()
        .and_then(|s| s.modules_count)
        .unwrap_or_default()
        > 0;
    if !scanned || is_listed(source, module) {
        Ok(())
    } else {
        Err(PassError::ModuleNotListed {
            module: module.to_owned(),
            source_name: source.name_any(),
        })
    }
}

/// Whether the source's status has an entry for `module` that a lister (not only the flags
/// writer) owns. Without managedFields (nothing to tell owners apart), any entry counts.
pub fn is_listed(source: &ModuleSource, module: &str) -> bool {
    let has_entry = source
        .status
        .as_ref()
        .and_then(|s| s.modules.as_ref())
        .is_some_and(|modules| modules.iter().any(|m| m.name == module));
    if !has_entry {
        return false;
    }
    let managers = source.managed_fields();
    if managers.is_empty() {
        return true;
    }
    let key = format!("k:{}", serde_json::json!({ "name": module }));
    managers
        .iter()
        .filter(|e| !e.manager.as_deref().is_some_and(flags::is_flags_manager))
        .filter_map(|e| e.fields_v1.as_ref())
        .any(|f| {
            f.0.pointer("/f:status/f:modules")
                .and_then(|m| m.get(&key))
                .is_some()
        })
}

/// The registry client for a source: credentials for its host, its CA and scheme.
pub fn registry_for(ctx: &Context, source: &ModuleSource) -> Result<Registry, PassError> {
    let config = registry_config(ctx, source)?;
    ctx.registry(&source.name_any(), &config)
        .map_err(|cause| PassError::SourceConfig {
            source_name: source.name_any(),
            cause,
        })
}

pub fn registry_config(ctx: &Context, source: &ModuleSource) -> Result<RegistryConfig, PassError> {
    let source_name = source.name_any();
    let settings = ConnectSettings {
        connect_timeout: ctx.settings.registry_connect_timeout,
        read_timeout: ctx.settings.registry_read_timeout,
        min_download_rate: ctx.settings.min_download_rate,
    };
    source
        .spec
        .registry
        .registry_config(settings)
        .map_err(|err| match err {
            RegistrySpecError::Repo(cause) => PassError::SourceConfig { source_name, cause },
            RegistrySpecError::Credentials(e) => {
                PassError::Credentials(credentials_message(&e, &source_name))
            }
        })
}

fn credentials_message(err: &DockerCfgError, source_name: &str) -> String {
    match err {
        DockerCfgError::NoEntryForHost { host } => {
            format!("no credentials for {host} in the dockerCfg of ModuleSource {source_name:?}")
        }
        other => format!("ModuleSource {source_name:?}: {other}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{ModuleSourceStatus, SourceModule, test_source};

    fn source(count: Option<i64>, names: &[&str]) -> ModuleSource {
        let mut s = test_source("src");
        s.status = Some(ModuleSourceStatus {
            modules: Some(
                names
                    .iter()
                    .map(|n| SourceModule {
                        name: (*n).into(),
                        ..Default::default()
                    })
                    .collect(),
            ),
            modules_count: count,
            ..Default::default()
        });
        s
    }

    #[test]
    fn only_a_source_that_lists_modules_can_miss_one() {
        assert!(
            check_module_listed(&source(None, &["other"]), "echo").is_ok(),
            "override entries alone"
        );
        assert!(check_module_listed(&source(Some(0), &[]), "echo").is_ok());
        assert!(check_module_listed(&source(Some(2), &["echo", "b"]), "echo").is_ok());
        assert!(matches!(
            check_module_listed(&source(Some(1), &["other"]), "echo"),
            Err(PassError::ModuleNotListed { .. })
        ));
    }

    #[test]
    fn an_entry_only_the_flags_writer_owns_is_not_listed() {
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::{FieldsV1, ManagedFieldsEntry};
        let mut s = source(Some(2), &["echo", "other"]);
        let owns = |manager: &str, name: &str| ManagedFieldsEntry {
            manager: Some(manager.into()),
            subresource: Some("status".into()),
            fields_v1: Some(FieldsV1(serde_json::json!({"f:status": {"f:modules": {
                format!("k:{{\"name\":\"{name}\"}}"): {".": {}, "f:name": {}}
            }}}))),
            ..Default::default()
        };
        s.metadata.managed_fields = Some(vec![
            owns("mpo-operator-scan", "other"),
            owns(flags::FLAGS_FIELD_MANAGER, "echo"),
            owns(flags::FLAGS_FIELD_MANAGER, "other"),
        ]);
        assert!(is_listed(&s, "other"));
        assert!(
            !is_listed(&s, "echo"),
            "a flag alone does not list a module"
        );
        assert!(check_module_listed(&s, "echo").is_err());
    }
}
