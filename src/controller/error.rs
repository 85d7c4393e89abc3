use std::time::Duration;

use crate::{
    Digest,
    registry::{ModuleRef, RegistryError},
    storage::{FailureClass, StorageError},
};

/// Why one pass over a ModulePullOverride did not bring the module in sync. Its `Display` is the
/// `status.message` of SPEC §5: one line, no secret.
#[derive(Debug, thiserror::Error)]
pub enum PassError {
    #[error("{0}")]
    BadSpec(String),
    #[error("ModuleSource {0:?} not found")]
    SourceMissing(String),
    #[error("module {module:?} is not in ModuleSource {source_name:?}")]
    ModuleNotListed { module: String, source_name: String },
    #[error("{0}")]
    Credentials(String),
    #[error("ModuleSource {source_name:?}: {cause}")]
    SourceConfig {
        source_name: String,
        cause: RegistryError,
    },
    #[error("cannot resolve {reference}: {cause}")]
    Resolve {
        reference: String,
        cause: RegistryError,
    },
    #[error("cannot download {reference}: {cause}")]
    Download {
        reference: String,
        cause: String,
        transient: bool,
        retry_after: Option<Duration>,
    },
    #[error("invalid module {module}@{digest}: {cause}")]
    InvalidModule {
        module: String,
        digest: Digest,
        cause: String,
    },
    #[error("cannot store module {module}: {cause}")]
    Store { module: String, cause: String },
}

impl PassError {
    /// PascalCase reason for the Ready condition, events and metrics labels.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::BadSpec(_) => "InvalidSpec",
            Self::SourceMissing(_) => "SourceNotFound",
            Self::ModuleNotListed { .. } => "ModuleNotInSource",
            Self::Credentials(_) | Self::SourceConfig { .. } => "InvalidSource",
            Self::Resolve { .. } => "ResolveFailed",
            Self::Download { .. } => "DownloadFailed",
            Self::InvalidModule { .. } => "InvalidModule",
            Self::Store { .. } => "StoreFailed",
        }
    }

    /// Transient failures are retried with backoff; the others wait for a change or the interval.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Resolve { cause, .. } => cause.is_transient(),
            Self::Download { transient, .. } => *transient,
            Self::Store { .. } => true,
            _ => false,
        }
    }

    /// The registry's `Retry-After`, when it sent one with this failure.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Resolve { cause, .. } => cause.retry_after(),
            Self::Download { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    pub fn download(image: &ModuleRef, digest: &Digest, cause: RegistryError) -> Self {
        let transient = cause.is_transient();
        Self::Download {
            reference: image.at_digest(digest),
            retry_after: cause.retry_after(),
            cause: cause.to_string(),
            transient,
        }
    }

    pub fn from_storage(image: &ModuleRef, digest: &Digest, err: StorageError) -> Self {
        match err.class() {
            FailureClass::Download => {
                // A body that broke or stalled mid-layer is a network problem: retry with backoff.
                let cause_in_registry = match &err {
                    StorageError::Read { source, .. } => RegistryError::in_io_error(source),
                    _ => None,
                };
                Self::Download {
                    reference: image.at_digest(digest),
                    transient: cause_in_registry.is_some_and(RegistryError::is_transient),
                    retry_after: cause_in_registry.and_then(RegistryError::retry_after),
                    cause: err.to_string(),
                }
            }
            FailureClass::InvalidModule => Self::InvalidModule {
                module: image.module().to_owned(),
                digest: digest.clone(),
                cause: err.to_string(),
            },
            FailureClass::Store => Self::Store {
                module: image.module().to_owned(),
                cause: err.to_string(),
            },
        }
    }
}

/// Failures of the controller itself (talking to the apiserver), retried with backoff by
/// `error_policy`.
#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("finalizer: {0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<ControllerError>>),
    #[error("object has no name")]
    NoName,
    #[error("cannot serialize status: {0}")]
    Serialize(#[from] serde_json::Error),
    #[error("background task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
    #[error("storage: {0}")]
    Storage(#[from] StorageError),
}

impl ControllerError {
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Kube(_) => "KubeApi",
            Self::Finalizer(_) => "Finalizer",
            Self::NoName => "NoName",
            Self::Serialize(_) => "Serialize",
            Self::Join(_) => "Task",
            Self::Storage(_) => "Storage",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_follow_the_spec() {
        assert_eq!(
            PassError::SourceMissing("test".into()).to_string(),
            r#"ModuleSource "test" not found"#
        );
        let e = PassError::ModuleNotListed {
            module: "echo".into(),
            source_name: "test".into(),
        };
        assert_eq!(
            e.to_string(),
            r#"module "echo" is not in ModuleSource "test""#
        );
    }
}
