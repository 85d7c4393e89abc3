//! Step 1–2 of a pass: the ModuleSource an MPO names, and how to reach its registry.

use kube::ResourceExt;

use super::{Context, PassError, rules::listing};
use crate::{
    crd::{ConnectSettings, DockerCfgError, ModuleSource, RegistrySpecError},
    registry::{Registry, RegistryConfig},
};

/// SPEC §3.2 as a pass error: the rule itself is in [`listing`].
pub fn check_module_listed(source: &ModuleSource, module: &str) -> Result<(), PassError> {
    if listing::admits(source, module) {
        Ok(())
    } else {
        Err(PassError::ModuleNotListed {
            module: module.to_owned(),
            source_name: source.name_any(),
        })
    }
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

    #[test]
    fn an_unlisted_module_is_a_pass_error_naming_both() {
        let mut s = test_source("src");
        s.status = Some(ModuleSourceStatus {
            modules: Some(vec![SourceModule {
                name: "other".into(),
                ..Default::default()
            }]),
            modules_count: Some(1),
            ..Default::default()
        });
        assert!(check_module_listed(&s, "other").is_ok());
        let err = check_module_listed(&s, "echo").expect_err("not listed");
        assert_eq!(
            err.to_string(),
            r#"module "echo" is not in ModuleSource "src""#
        );
    }
}
