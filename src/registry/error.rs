use std::time::Duration;

use oci_client::errors::{OciDistributionError, OciErrorCode};

/// What went wrong talking to a registry. Messages are one line, name no URL, credential or token.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("invalid repo {repo:?}: {reason}")]
    BadRepo { repo: String, reason: String },
    #[error("{0}")]
    BadReference(String),
    #[error("invalid ca: {0}")]
    BadCa(String),
    #[error("cannot set up the registry client: {0}")]
    Client(String),
    /// The registry answered with an error or could not be reached.
    #[error("{message}")]
    Request { message: String, transient: bool },
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    #[error("unsupported layer media type {0:?}")]
    UnsupportedMediaType(String),
    #[error("image is {size} bytes compressed, over the limit of {limit} bytes")]
    TooLarge { size: u64, limit: u64 },
    #[error("image index has no linux/amd64 manifest")]
    NoPlatform,
    #[error("image has no layers")]
    NoLayers,
    #[error("{0}")]
    BadManifest(String),
}

impl RegistryError {
    /// Network trouble, 5xx and 429 may go away by themselves; everything else needs a change.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Request { transient, .. } => *transient,
            Self::Timeout(_) => true,
            _ => false,
        }
    }
}

impl From<OciDistributionError> for RegistryError {
    fn from(err: OciDistributionError) -> Self {
        let (message, transient) = describe(&err);
        Self::Request { message, transient }
    }
}

/// A short, secret-free description: oci-client's own messages carry URLs and raw bodies.
fn describe(err: &OciDistributionError) -> (String, bool) {
    use OciDistributionError as E;
    match err {
        E::UnauthorizedError { .. } => ("unauthorized: authentication required".into(), false),
        E::AuthenticationFailure(_) => {
            ("unauthorized: the token request was refused".into(), false)
        }
        E::RegistryError { envelope, .. } => describe_envelope(envelope),
        E::ServerError { code, .. } => describe_status(*code),
        E::ImageManifestNotFoundError(_) => ("manifest unknown".into(), false),
        E::RequestError(e) => describe_transport(e),
        E::DigestError(e) => (format!("digest mismatch: {e}"), false),
        E::IncompatibleLayerMediaTypeError(t) | E::UnsupportedMediaTypeError(t) => {
            (format!("unsupported media type {t:?}"), false)
        }
        E::ImageIndexParsingNoPlatformResolverError => {
            ("image index has no usable platform".into(), false)
        }
        E::PullNoLayersError => ("image has no layers".into(), false),
        E::IoError(e) => (format!("i/o error: {e}"), true),
        E::SpecViolationError(m) => (
            format!("registry violates the distribution spec: {m}"),
            false,
        ),
        E::ManifestParsingError(m) | E::VersionedParsingError(m) => {
            (format!("bad manifest: {m}"), false)
        }
        E::JsonError(e) => (format!("bad JSON from the registry: {e}"), false),
        E::RegistryNoDigestError => ("the registry returned no digest".into(), false),
        _ => ("registry request failed".into(), true),
    }
}

fn describe_envelope(envelope: &oci_client::errors::OciEnvelope) -> (String, bool) {
    let Some(first) = envelope.errors.first() else {
        return ("registry returned an empty error".into(), false);
    };
    let code = match first.code {
        OciErrorCode::ManifestUnknown => "manifest unknown",
        OciErrorCode::NameUnknown => "name unknown",
        OciErrorCode::Unauthorized => "unauthorized",
        OciErrorCode::Denied => "denied",
        OciErrorCode::Toomanyrequests => "too many requests",
        OciErrorCode::BlobUnknown => "blob unknown",
        OciErrorCode::ManifestInvalid => "manifest invalid",
        OciErrorCode::NameInvalid => "name invalid",
        OciErrorCode::TagInvalid => "tag invalid",
        _ => "registry error",
    };
    let transient = matches!(first.code, OciErrorCode::Toomanyrequests);
    let detail = first.message.trim();
    if detail.is_empty() || detail.eq_ignore_ascii_case(code) {
        (code.to_owned(), transient)
    } else {
        (format!("{code}: {}", one_line(detail)), transient)
    }
}

fn describe_status(code: u16) -> (String, bool) {
    match code {
        401 => ("unauthorized: authentication required".into(), false),
        403 => ("denied: access forbidden".into(), false),
        404 => ("manifest unknown".into(), false),
        429 => ("too many requests (HTTP 429)".into(), true),
        c if c >= 500 => (format!("registry error (HTTP {c})"), true),
        c => (format!("unexpected HTTP status {c}"), false),
    }
}

fn describe_transport(err: &reqwest::Error) -> (String, bool) {
    if let Some(status) = err.status() {
        return describe_status(status.as_u16());
    }
    let what = if err.is_timeout() {
        "timed out"
    } else if err.is_connect() {
        "cannot connect to the registry"
    } else if err.is_body() || err.is_decode() {
        "the connection broke while reading the response"
    } else {
        "request failed"
    };
    // The innermost cause says why (refused, reset, certificate unknown) without the URL.
    (format!("{what}: {}", root_cause(err)), true)
}

fn root_cause(err: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = err;
    while let Some(next) = cause.source() {
        cause = next;
    }
    one_line(&cause.to_string())
}

fn one_line(text: &str) -> String {
    text.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .chars()
        .take(200)
        .collect()
}
