//! The registry a command talks to: a ModuleSource read from the cluster (its dockerCfg, CA and
//! scheme apply, exactly as the operator uses them), or `--repo` with local files.

use std::path::{Path, PathBuf};

use kube::{
    Api, Client, Config,
    config::{KubeConfigOptions, Kubeconfig},
};

use super::{CliError, args::Global, args::RepoArgs, credential_helper};
use crate::{
    crd::{ConnectSettings, DockerCfg, DockerCfgError, ModuleSource},
    registry::{Registry, RegistryConfig, RegistryCredentials, RepoName, Transport},
    signing::PublicKey,
};

/// The operator's defaults (`mpo-operator run --help`), so that a pull that works here works
/// there.
pub const CONNECT: ConnectSettings = ConnectSettings {
    connect_timeout: std::time::Duration::from_secs(10),
    read_timeout: std::time::Duration::from_secs(30),
    min_download_rate: 64 * 1024,
};

/// A client for the named ModuleSource's registry, or for `--repo`.
pub async fn registry(
    global: &Global,
    source: Option<&str>,
    flags: &RepoArgs,
) -> Result<Registry, CliError> {
    Ok(registry_and_policy(global, source, flags).await?.0)
}

/// [`registry`], with the public keys of the source's signature policy (`spec.verify`): `None`
/// with `--repo` or a source without a policy.
pub async fn registry_and_policy(
    global: &Global,
    source: Option<&str>,
    flags: &RepoArgs,
) -> Result<(Registry, Option<Vec<PublicKey>>), CliError> {
    let (config, keys) = match (source, &flags.repo) {
        (_, Some(repo)) => (repo_config(repo, flags).await?, None),
        (Some(name), None) => source_config(global, name).await?,
        (None, None) => {
            return Err(CliError::Usage(
                "name a ModuleSource, or give --repo <registry/path>".into(),
            ));
        }
    };
    let registry = Registry::new(&config).map_err(|e| CliError::Repo(Box::new(e)))?;
    Ok((registry, keys))
}

/// A client as kubectl would build it: `--kubeconfig`, `--context`, else $KUBECONFIG,
/// ~/.kube/config or the in-cluster service account.
pub async fn kube_client(global: &Global) -> Result<Client, CliError> {
    let options = KubeConfigOptions {
        context: global.context.clone(),
        ..Default::default()
    };
    let kubeconfig = |e: &dyn std::fmt::Display| CliError::Kubeconfig(e.to_string());
    let config = match &global.kubeconfig {
        Some(path) => {
            let file = Kubeconfig::read_from(path).map_err(|e| kubeconfig(&e))?;
            Config::from_custom_kubeconfig(file, &options)
                .await
                .map_err(|e| kubeconfig(&e))?
        }
        None if global.context.is_some() => Config::from_kubeconfig(&options)
            .await
            .map_err(|e| kubeconfig(&e))?,
        None => Config::infer().await.map_err(|e| kubeconfig(&e))?,
    };
    Ok(Client::try_from(config)?)
}

async fn source_config(
    global: &Global,
    name: &str,
) -> Result<(RegistryConfig, Option<Vec<PublicKey>>), CliError> {
    let api = Api::<ModuleSource>::all(kube_client(global).await?);
    let source = api
        .get_opt(name)
        .await?
        .ok_or_else(|| CliError::SourceNotFound(name.to_owned()))?;
    let config = source
        .spec
        .registry
        .registry_config(CONNECT)
        .map_err(|cause| CliError::Source {
            name: name.to_owned(),
            cause: Box::new(cause),
        })?;
    let keys = source
        .spec
        .verify
        .as_ref()
        .map(|policy| policy_keys(name, &policy.public_keys))
        .transpose()?;
    Ok((config, keys))
}

/// The policy's PEM keys, read as the operator reads them (a key it refuses is refused here).
fn policy_keys(source: &str, pems: &[String]) -> Result<Vec<PublicKey>, CliError> {
    pems.iter()
        .enumerate()
        .map(|(index, pem)| {
            PublicKey::from_pem(pem).map_err(|cause| CliError::PolicyKey {
                source_name: source.to_owned(),
                index,
                cause,
            })
        })
        .collect()
}

async fn repo_config(repo: &str, flags: &RepoArgs) -> Result<RegistryConfig, CliError> {
    let repo = RepoName::parse(repo).map_err(|e| CliError::Repo(Box::new(e)))?;
    let credentials = match &flags.docker_config {
        Some(path) => credentials_from(path, repo.host()).await?,
        None => default_credentials(repo.host()).await?,
    };
    let ca_pem = flags.ca.as_deref().map(read_text).transpose()?;
    Ok(RegistryConfig {
        repo,
        transport: if flags.insecure_http {
            Transport::Http
        } else {
            Transport::Https
        },
        ca_pem,
        credentials,
        connect_timeout: CONNECT.connect_timeout,
        read_timeout: CONNECT.read_timeout,
        min_download_rate: CONNECT.min_download_rate,
    })
}

/// An explicit `--docker-config` must have an entry or a credential helper for the host:
/// anonymous access instead would hide a typo behind a confusing `unauthorized`.
async fn credentials_from(path: &Path, host: &str) -> Result<RegistryCredentials, CliError> {
    let config = DockerCfg::new(read_text(path)?);
    let config_error = |cause| CliError::DockerConfig {
        path: path.to_owned(),
        cause,
    };
    let Some(helper) = config.credential_helper_for(host).map_err(config_error)? else {
        return config.credentials_for(host).map_err(config_error);
    };
    let server = DockerCfg::helper_server_url(host);
    let found = credential_helper::get(&helper, &server)
        .await
        .map_err(|cause| CliError::CredentialHelper {
            path: path.to_owned(),
            cause,
        })?;
    match found {
        Some(credentials) => Ok(credentials),
        // Nothing in the helper: the file's own entry if it has one, else anonymous (docker's
        // native store does the same; `docker login` with a store leaves `auths` entries empty).
        None => match config.credentials_for(host) {
            Err(DockerCfgError::NoEntryForHost { .. } | DockerCfgError::EmptyEntry { .. }) => {
                Ok(RegistryCredentials::Anonymous)
            }
            other => other.map_err(config_error),
        },
    }
}

/// Docker's own config, as `docker pull` and `crane` read it; no entry for the host (or an
/// empty one) means anonymous.
async fn default_credentials(host: &str) -> Result<RegistryCredentials, CliError> {
    let Some(path) = default_docker_config().filter(|p| p.is_file()) else {
        return Ok(RegistryCredentials::Anonymous);
    };
    match credentials_from(&path, host).await {
        Err(CliError::DockerConfig {
            cause: DockerCfgError::NoEntryForHost { .. } | DockerCfgError::EmptyEntry { .. },
            ..
        }) => Ok(RegistryCredentials::Anonymous),
        other => other,
    }
}

fn default_docker_config() -> Option<PathBuf> {
    match std::env::var_os("DOCKER_CONFIG") {
        Some(dir) => Some(PathBuf::from(dir).join("config.json")),
        None => {
            std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".docker/config.json"))
        }
    }
}

fn read_text(path: &Path) -> Result<String, CliError> {
    std::fs::read_to_string(path).map_err(|cause| CliError::ReadFile {
        path: path.to_owned(),
        cause,
    })
}
