use std::time::Duration;

use crate::{
    Digest,
    install::InstallError,
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
        #[source]
        cause: RegistryError,
    },
    #[error("cannot resolve {reference}: {cause}")]
    Resolve {
        reference: String,
        #[source]
        cause: RegistryError,
    },
    #[error("cannot download {reference}: {cause}")]
    Download {
        reference: String,
        #[source]
        cause: Box<InstallError>,
    },
    #[error("invalid module {module}@{digest}: {cause}")]
    InvalidModule {
        module: String,
        digest: Digest,
        #[source]
        cause: Box<InstallError>,
    },
    #[error("cannot store module {module}: {cause}")]
    Store {
        module: String,
        #[source]
        cause: Box<InstallError>,
    },
    /// The source's signature policy refuses the image; nothing of it was downloaded.
    #[error("not applied: {image}: {refusal}")]
    Unverified {
        image: String,
        #[source]
        refusal: crate::signing::Refusal,
    },
    #[error("ModuleSource {source_name:?}: spec.verify.publicKeys[{index}]: {cause}")]
    BadPolicy {
        source_name: String,
        index: usize,
        #[source]
        cause: crate::signing::KeyError,
    },
    #[error("cannot read the signatures of {image}: {cause}")]
    Signatures {
        image: String,
        #[source]
        cause: RegistryError,
    },
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
            Self::Unverified { .. } => "SignatureRefused",
            Self::BadPolicy { .. } => "InvalidSource",
            Self::Signatures { .. } => "SignaturesUnreadable",
        }
    }

    /// Transient failures are retried with backoff; the others wait for a change or the interval.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Resolve { cause, .. } => cause.is_transient(),
            Self::Download { cause, .. } => cause.is_transient(),
            Self::Signatures { cause, .. } => cause.is_transient(),
            Self::Store { .. } => true,
            _ => false,
        }
    }

    /// The registry's `Retry-After`, when it sent one with this failure.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Resolve { cause, .. } => cause.retry_after(),
            Self::Download { cause, .. } => cause.retry_after(),
            Self::Signatures { cause, .. } => cause.retry_after(),
            _ => None,
        }
    }

    /// The status message an install failure belongs to (SPEC §5) follows its class.
    pub fn install(image: &ModuleRef, digest: &Digest, cause: InstallError) -> Self {
        let class = cause.class();
        // Boxed: an install error is large, and every pass result carries a PassError.
        let cause = Box::new(cause);
        match class {
            FailureClass::Download => Self::Download {
                reference: image.at_digest(digest),
                cause,
            },
            FailureClass::InvalidModule => Self::InvalidModule {
                module: image.module().to_owned(),
                digest: digest.clone(),
                cause,
            },
            FailureClass::Store => Self::Store {
                module: image.module().to_owned(),
                cause,
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
    /// The lease was lost during the reconcile: nothing more may be written.
    #[error("the lease was lost; the new leader takes over")]
    Fenced,
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
            Self::Fenced => "Fenced",
        }
    }
}

/// Whether the apiserver refused a write because the object would be too large: its own body
/// limit (413); etcd's request limit (1.5 MiB), answered with 413 or a 500 carrying etcd's
/// "request is too large"; or, past 2 MiB, the apiserver's own etcd client refusing to send it
/// (a 500 carrying gRPC's "trying to send message larger than max", met on kube-apiserver 1.36).
pub fn is_too_large(err: &kube::Error) -> bool {
    match err {
        kube::Error::Api(status) => {
            status.code == 413
                || (status.code == 500
                    && (status.message.contains("request is too large")
                        || status.message.contains("message larger than max")))
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api_error(code: u16, message: &str) -> kube::Error {
        kube::Error::Api(Box::new(kube::core::Status {
            code,
            message: message.into(),
            ..Default::default()
        }))
    }

    #[test]
    fn size_refusals_are_told_apart() {
        assert!(is_too_large(&api_error(
            413,
            "Request entity too large: limit is 3145728"
        )));
        assert!(is_too_large(&api_error(
            500,
            "etcdserver: request is too large"
        )));
        assert!(is_too_large(&api_error(
            500,
            "rpc error: code = ResourceExhausted desc = trying to send message larger than max (2473591 vs. 2097152)"
        )));
        assert!(!is_too_large(&api_error(500, "etcdserver: leader changed")));
        assert!(!is_too_large(&api_error(409, "conflict")));
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
