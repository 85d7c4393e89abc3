use std::time::{Duration, SystemTime};

use oci_client::errors::{OciDistributionError, OciEnvelope, OciErrorCode};
use reqwest::{StatusCode, header::HeaderMap};

/// The longest `Retry-After` taken from a registry: a buggy or hostile header must not park an
/// MPO for days (a spec change or a renew annotation still triggers a pass at once).
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

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
    /// The registry answered with an error or could not be reached. `retry_after` is the
    /// registry's own `Retry-After` (429, 503), when it sent one.
    #[error("{message}")]
    Request {
        message: String,
        transient: bool,
        retry_after: Option<Duration>,
    },
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

    /// How long the registry asked us to stay away (`Retry-After`), capped at [`MAX_RETRY_AFTER`].
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Request { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// The registry error behind a layer reader's I/O error, if the reader produced it (the
    /// unpacker only sees `std::io::Error`): tells a broken connection (transient) from bad bytes.
    pub fn in_io_error(err: &std::io::Error) -> Option<&RegistryError> {
        err.get_ref()?.downcast_ref::<RegistryError>()
    }

    /// An error status from the registry. `body` is the (bounded) response body, empty for HEAD.
    pub(super) fn from_status(status: StatusCode, headers: &HeaderMap, body: &[u8]) -> Self {
        let (message, status_transient) = describe_status(status.as_u16());
        let (message, transient) = match serde_json::from_slice::<OciEnvelope>(body) {
            Ok(envelope) if status.is_client_error() && !envelope.errors.is_empty() => {
                let (message, transient) = describe_envelope(&envelope);
                (message, transient || status_transient)
            }
            _ => (message, status_transient),
        };
        let retry_after = headers
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, SystemTime::now()));
        Self::Request {
            message,
            transient,
            retry_after,
        }
    }

    /// The request could not be sent or its response not read: always worth retrying.
    pub(super) fn transport(err: &reqwest::Error) -> Self {
        let (message, transient) = describe_transport(err);
        Self::Request {
            message,
            transient,
            retry_after: None,
        }
    }
}

impl From<OciDistributionError> for RegistryError {
    fn from(err: OciDistributionError) -> Self {
        let (message, transient) = describe(&err);
        Self::Request {
            message,
            transient,
            retry_after: None,
        }
    }
}

/// `Retry-After` is either delay-seconds or an HTTP-date (RFC 9110 §10.2.3).
fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    let wait = match value.parse::<u64>() {
        Ok(seconds) => Duration::from_secs(seconds),
        Err(_) => {
            let at: SystemTime = chrono::DateTime::parse_from_rfc2822(value).ok()?.into();
            at.duration_since(now).unwrap_or_default()
        }
    };
    Some(wait.min(MAX_RETRY_AFTER))
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

fn describe_envelope(envelope: &OciEnvelope) -> (String, bool) {
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
        408 => ("the registry timed out the request (HTTP 408)".into(), true),
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

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::{HeaderValue, RETRY_AFTER};

    fn headers(retry_after: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(
            RETRY_AFTER,
            HeaderValue::from_str(retry_after).expect("header"),
        );
        headers
    }

    #[test]
    fn retry_after_takes_seconds_or_a_date_and_is_capped() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_445_412_480);
        assert_eq!(parse_retry_after(" 3 ", now), Some(Duration::from_secs(3)));
        // 1445412480 is Wed, 21 Oct 2015 07:28:00 GMT.
        let date = "Wed, 21 Oct 2015 07:28:20 GMT";
        assert_eq!(parse_retry_after(date, now), Some(Duration::from_secs(20)));
        let past = "Wed, 21 Oct 2015 07:27:00 GMT";
        assert_eq!(parse_retry_after(past, now), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("999999999", now), Some(MAX_RETRY_AFTER));
        assert_eq!(parse_retry_after("soon", now), None);
    }

    #[test]
    fn error_statuses_name_the_code_and_keep_retry_after() {
        let limited = RegistryError::from_status(StatusCode::TOO_MANY_REQUESTS, &headers("3"), b"");
        assert!(limited.is_transient());
        assert_eq!(limited.retry_after(), Some(Duration::from_secs(3)));
        assert!(limited.to_string().contains("HTTP 429"), "{limited}");

        let unavailable =
            RegistryError::from_status(StatusCode::SERVICE_UNAVAILABLE, &HeaderMap::new(), b"");
        assert!(unavailable.is_transient());
        assert_eq!(unavailable.retry_after(), None);
        assert_eq!(unavailable.to_string(), "registry error (HTTP 503)");

        let body = br#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown"}]}"#;
        let missing = RegistryError::from_status(StatusCode::NOT_FOUND, &HeaderMap::new(), body);
        assert!(!missing.is_transient());
        assert_eq!(missing.to_string(), "manifest unknown");

        let body = br#"{"errors":[{"code":"TOOMANYREQUESTS","message":"slow down"}]}"#;
        let limited =
            RegistryError::from_status(StatusCode::TOO_MANY_REQUESTS, &headers("7"), body);
        assert!(limited.is_transient());
        assert_eq!(limited.to_string(), "too many requests: slow down");
        assert_eq!(limited.retry_after(), Some(Duration::from_secs(7)));
    }

    #[test]
    fn a_reader_error_carries_its_registry_cause() {
        let cause = RegistryError::Request {
            message: "reset".into(),
            transient: true,
            retry_after: None,
        };
        let io = std::io::Error::other(cause);
        assert!(RegistryError::in_io_error(&io).is_some_and(RegistryError::is_transient));
        assert!(RegistryError::in_io_error(&std::io::Error::other("x")).is_none());
    }
}
