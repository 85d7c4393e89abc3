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

    /// The module on disk may still be right for these: they are about reaching the registry.
    pub fn allows_override_flag(&self) -> bool {
        !matches!(
            self,
            Self::SourceMissing(_) | Self::ModuleNotListed { .. } | Self::BadSpec(_)
        )
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

/// Exponential backoff for transient failures, capped at the scan interval (SPEC §3.8).
pub fn backoff(failures: u32, cap: Duration) -> Duration {
    let exp = Duration::from_secs(1u64 << failures.min(10));
    exp.min(cap)
}

/// The wait before retrying a transient failure: the backoff, but never sooner than the
/// registry's `Retry-After` (already capped by the registry layer), which may exceed the cap:
/// asking earlier would only be refused again and count against our rate limit.
pub fn retry_delay(failures: u32, cap: Duration, retry_after: Option<Duration>) -> Duration {
    backoff(failures, cap).max(retry_after.unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_is_capped() {
        let cap = Duration::from_secs(15);
        assert_eq!(backoff(0, cap), Duration::from_secs(1));
        assert_eq!(backoff(2, cap), Duration::from_secs(4));
        assert_eq!(backoff(9, cap), cap);
    }

    #[test]
    fn retry_after_is_a_floor_for_the_backoff() {
        let cap = Duration::from_secs(15);
        let secs = Duration::from_secs;
        assert_eq!(retry_delay(0, cap, None), secs(1));
        assert_eq!(retry_delay(0, cap, Some(secs(3))), secs(3));
        assert_eq!(retry_delay(3, cap, Some(secs(3))), secs(8));
        assert_eq!(retry_delay(9, cap, Some(secs(60))), secs(60));
    }

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
