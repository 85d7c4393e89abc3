use kube::CustomResource;
use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Serialize};

use super::{DockerCfg, DockerCfgError};
use crate::registry::{RegistryConfig, RegistryError, RepoName, Transport};

/// Why a ModuleSource's `spec.registry` cannot be turned into a registry client.
#[derive(Debug, thiserror::Error)]
pub enum RegistrySpecError {
    #[error(transparent)]
    Repo(RegistryError),
    #[error(transparent)]
    Credentials(DockerCfgError),
}

/// Connection settings that come from the process, not from the ModuleSource.
#[derive(Clone, Copy, Debug)]
pub struct ConnectSettings {
    pub connect_timeout: std::time::Duration,
    pub read_timeout: std::time::Duration,
    pub min_download_rate: u64,
}

impl RegistrySpec {
    /// The client settings for this registry: its repo, the dockerCfg entry for its host, its CA
    /// and scheme. The one translation the operator and the CLI share.
    pub fn registry_config(
        &self,
        settings: ConnectSettings,
    ) -> Result<RegistryConfig, RegistrySpecError> {
        let repo = RepoName::parse(&self.repo).map_err(RegistrySpecError::Repo)?;
        let credentials = self
            .docker_cfg
            .credentials_for(repo.host())
            .map_err(RegistrySpecError::Credentials)?;
        Ok(RegistryConfig {
            repo,
            transport: match self.scheme {
                Scheme::Http => Transport::Http,
                Scheme::Https => Transport::Https,
            },
            ca_pem: self.ca.clone(),
            credentials,
            connect_timeout: settings.connect_timeout,
            read_timeout: settings.read_timeout,
            min_download_rate: settings.min_download_rate,
        })
    }
}

/// A registry that holds modules: `<repo>` lists them as tags, `<repo>/<module>:<tag>` are images.
// printcolumn(...) repeats `type_ = "string"`, which clippy mistakes for a duplicated attribute.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "deckhouse.io",
    version = "v1alpha1",
    kind = "ModuleSource",
    shortname = "ms",
    status = "ModuleSourceStatus",
    derive = "PartialEq",
    doc = "A registry of modules and how to reach it.",
    printcolumn(name = "COUNT", type_ = "integer", json_path = ".status.modulesCount"),
    printcolumn(name = "SYNC", type_ = "date", json_path = ".status.syncTime"),
    printcolumn(name = "MESSAGE", type_ = "string", json_path = ".status.message")
)]
#[serde(rename_all = "camelCase")]
pub struct ModuleSourceSpec {
    pub registry: RegistrySpec,
    /// Deprecated upstream; accepted and ignored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub release_channel: Option<String>,
    /// A signature policy: when set, no module image of this source is switched in (by an
    /// override, a pin or a restore) unless a signature of it verifies with one of the keys.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verify: Option<VerifyPolicy>,
}

/// Which signatures a source's modules must carry.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VerifyPolicy {
    pub provider: SignatureProvider,
    /// Trusted public keys in PEM: ECDSA P-256 (as `cosign generate-key-pair` writes it), RSA or
    /// Ed25519. One that verifies is enough, so a key rotation lists the old and the new key for
    /// a while.
    #[schemars(length(min = 1))]
    pub public_keys: Vec<String>,
}

/// The signing tool whose formats are read.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum SignatureProvider {
    /// Keyed cosign signatures (`sha256-<hex>.sig` beside the image), verified offline.
    #[serde(rename = "cosign")]
    Cosign,
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RegistrySpec {
    /// Repository of the modules, e.g. `registry.example.com/deckhouse/modules`.
    #[schemars(length(min = 1))]
    pub repo: String,
    #[serde(default, skip_serializing_if = "DockerCfg::is_empty")]
    pub docker_cfg: DockerCfg,
    /// PEM CA certificate(s) trusted for this registry in addition to the system roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<String>,
    #[serde(default)]
    pub scheme: Scheme,
}

/// How to talk to the registry.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum Scheme {
    #[serde(rename = "HTTP")]
    Http,
    #[default]
    #[serde(rename = "HTTPS")]
    Https,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ModuleSourceStatus {
    /// The modules of the source; each writer owns only its own entries and fields.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "modules_list_map")]
    pub modules: Option<Vec<SourceModule>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub modules_count: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sync_time: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SourceModule {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overridden: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// For unit tests: [`test_source`] whose status has an entry for each of `names` and
/// `modulesCount` = `count`.
#[cfg(test)]
pub fn test_source_listing(name: &str, count: Option<i64>, names: &[&str]) -> ModuleSource {
    let mut source = test_source(name);
    source.status = Some(ModuleSourceStatus {
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
    source
}

/// For unit tests: a source named `name` on `r/m` over HTTPS, anonymous, without status.
#[cfg(test)]
pub fn test_source(name: &str) -> ModuleSource {
    ModuleSource::new(
        name,
        ModuleSourceSpec {
            registry: RegistrySpec {
                repo: "r/m".into(),
                docker_cfg: Default::default(),
                ca: None,
                scheme: Scheme::Https,
            },
            release_channel: None,
            verify: None,
        },
    )
}

/// A list-map keyed by `name`, so that server-side apply merges entries instead of replacing the
/// list: the scan and each MPO own different entries and fields.
fn modules_list_map(generator: &mut SchemaGenerator) -> Schema {
    let item = generator.subschema_for::<SourceModule>();
    json_schema!({
        "type": "array",
        "items": item,
        "x-kubernetes-list-type": "map",
        "x-kubernetes-list-map-keys": ["name"]
    })
}
