//! One enum for the CLI's failures. Every message is one line, and none carries a secret: the
//! registry and dockerCfg errors it wraps are built never to quote credentials.

use std::{path::PathBuf, time::Duration};

use crate::{
    crd::RegistrySpecError, install::InstallError, registry::RegistryError, storage::StorageError,
};

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// Operands that do not fit the command (clap reports its own with exit code 2 too).
    #[error("{0}")]
    Usage(String),
    #[error("cannot load the kubeconfig: {0}")]
    Kubeconfig(String),
    #[error("cannot talk to the cluster: {0}")]
    Kube(#[from] Box<kube::Error>),
    #[error("cannot watch the ModulePullOverride: {0}")]
    Watch(#[from] Box<kube::runtime::wait::Error>),
    #[error("ModuleSource {0:?} not found")]
    SourceNotFound(String),
    #[error("ModulePullOverride {0:?} not found")]
    MpoNotFound(String),
    #[error("ModuleSource {name:?}: {cause}")]
    Source {
        name: String,
        #[source]
        cause: Box<RegistrySpecError>,
    },
    #[error("--repo: {0}")]
    Repo(#[source] Box<RegistryError>),
    #[error("{path}: {cause}")]
    DockerConfig {
        path: PathBuf,
        #[source]
        cause: crate::crd::DockerCfgError,
    },
    #[error("{path}: {cause}")]
    CredentialHelper {
        path: PathBuf,
        #[source]
        cause: super::credential_helper::HelperError,
    },
    #[error("cannot read {path}: {cause}")]
    ReadFile {
        path: PathBuf,
        #[source]
        cause: std::io::Error,
    },
    #[error("{action} {target}: {cause}")]
    Registry {
        action: &'static str,
        target: String,
        #[source]
        cause: Box<RegistryError>,
    },
    #[error("cannot download {target}: {cause}")]
    Install {
        target: String,
        #[source]
        cause: Box<InstallError>,
    },
    #[error(transparent)]
    Storage(#[from] Box<StorageError>),
    #[error("{0}")]
    WorkDir(String),
    /// The image is there but not what the command reads (no version.json, bad JSON, …).
    #[error("{0}")]
    Content(String),
    #[error("cannot write the output: {0}")]
    Output(String),
    /// `renew --wait`, `rollback`, `unpin`: the operator handled it and reports a failure.
    #[error("{mpo}: {message}")]
    Failed { mpo: String, message: String },
    #[error(
        "timed out after {} waiting for the operator to handle {mpo} (is it running?)",
        humantime::format_duration(*waited)
    )]
    Timeout { mpo: String, waited: Duration },
    #[error("a worker task stopped: {0}")]
    Task(#[from] tokio::task::JoinError),
    /// `verify`: no signature of the image verifies.
    #[error("{image}: {refusal}")]
    Unverified {
        image: String,
        #[source]
        refusal: crate::signing::Refusal,
    },
    #[error("{path}: {cause}")]
    Key {
        path: PathBuf,
        #[source]
        cause: crate::signing::KeyError,
    },
    #[error("ModuleSource {source_name:?}: spec.verify.publicKeys[{index}]: {cause}")]
    PolicyKey {
        source_name: String,
        index: usize,
        #[source]
        cause: crate::signing::KeyError,
    },
    /// `diff` found differences (and printed them): exit code 1, nothing more to say.
    #[error("the images differ")]
    Differ,
}

impl CliError {
    /// 1: the command failed (or the operator reported a failure); 2: usage; 3: timed out.
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Usage(_) => 2,
            Self::Timeout { .. } => 3,
            _ => 1,
        }
    }

    pub fn registry(
        action: &'static str,
        target: impl ToString,
    ) -> impl FnOnce(RegistryError) -> Self {
        move |cause| Self::Registry {
            action,
            target: target.to_string(),
            cause: Box::new(cause),
        }
    }
}

impl From<kube::Error> for CliError {
    fn from(err: kube::Error) -> Self {
        Self::Kube(Box::new(err))
    }
}

impl From<StorageError> for CliError {
    fn from(err: StorageError) -> Self {
        Self::Storage(Box::new(err))
    }
}

impl From<kube::runtime::wait::Error> for CliError {
    fn from(err: kube::runtime::wait::Error) -> Self {
        Self::Watch(Box::new(err))
    }
}
