use std::{
    fmt,
    time::{Duration, SystemTime},
};

use oci_client::errors::{OciDistributionError, OciEnvelope, OciErrorCode};
use reqwest::{StatusCode, header::HeaderMap};

/// The longest `Retry-After` taken from a registry: a buggy or hostile header must not park an
/// MPO for days (a spec change or a renew annotation still triggers a pass at once).
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// What went wrong talking to a registry. Messages are one line, name no URL, credential or token.
/// Whether a failure is transient, and the registry's `Retry-After`, are data of the variant,
/// never re-derived from the message.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("invalid repo {repo:?}: {reason}")]
    BadRepo { repo: String, reason: String },
    #[error("{0}")]
    BadReference(String),
    #[error("invalid ca: {0}")]
    BadCa(&'static str),
    #[error("cannot set up the registry client: {0}")]
    Client(&'static str),
    /// The registry answered with an error status. `code` is the first error code of the
    /// distribution error body, if it sent one; `retry_after` its own `Retry-After` (429, 503).
    /// `resource` is what was asked for (a bodyless 404 names it); `answered_by` the host that
    /// answered when the registry redirected the request there (S3, a CDN), so that its 403 is
    /// not read as the registry's own denial.
    #[error("{}", status_message(*.status, .code.as_ref(), *.resource, .answered_by.as_deref()))]
    Status {
        status: u16,
        code: Option<RegistryCode>,
        retry_after: Option<Duration>,
        resource: Option<Resource>,
        answered_by: Option<String>,
    },
    /// The request could not be sent or its response not read.
    #[error("{kind}: {}", root_cause(.source))]
    Transport {
        kind: TransportKind,
        #[source]
        source: reqwest::Error,
    },
    /// A failure inside oci-client (auth challenge, token request, tag listing). Its own
    /// messages carry URLs and raw bodies, so the message is rebuilt from the variant.
    #[error("{}", describe(.0).0)]
    Oci(#[source] OciDistributionError),
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    /// A blob body stopped flowing for the read timeout.
    #[error("timed out: no data from the registry for {}", humantime::format_duration(*.0))]
    Stalled(Duration),
    /// A blob body kept flowing, but too slowly to arrive within its deadline.
    #[error("the blob of {size} bytes did not arrive within {} (minimum rate {min_rate} bytes/s, --min-download-rate)", humantime::format_duration(*.allowed))]
    TooSlow {
        size: u64,
        allowed: Duration,
        min_rate: u64,
    },
    #[error("blob size mismatch: the manifest says {expected} bytes, the registry sent {} {seen}", if .seen > .expected { "more than" } else { "only" })]
    BlobSize { expected: u64, seen: u64 },
    #[error("digest mismatch: the manifest says {expected}, the bytes are sha256:{actual}")]
    BlobDigest {
        expected: crate::Digest,
        actual: String,
    },
    /// The token server (the realm of a bearer challenge) answered with an error status.
    #[error("{}", token_server_message(*.status))]
    TokenServer {
        status: u16,
        retry_after: Option<Duration>,
    },
    #[error("bad token from the token server: {0}")]
    BadToken(&'static str),
    #[error("the registry's token realm is plain HTTP; credentials are only sent over HTTPS")]
    InsecureRealm,
    #[error("the token server redirected to {0}, another origin; credentials are not sent there")]
    TokenRedirect(String),
    #[error("unsupported layer media type {0:?}")]
    UnsupportedMediaType(String),
    #[error(
        "the image has a foreign (non-distributable) layer {0:?}: its bytes are not in the registry, so a module cannot be made of it"
    )]
    ForeignLayer(String),
    #[error("the image is {0}")]
    NotAModule(super::media::NotAModule),
    #[error("the image index holds no module image (its entries: {})", if .platforms.is_empty() { "none".to_owned() } else { .platforms.join(", ") })]
    NoPlatform { platforms: Vec<String> },
    #[error("image has no layers")]
    NoLayers,
    #[error("{0}")]
    BadManifest(String),
}

/// The distribution spec's error codes that change what we tell the user.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RegistryCode {
    ManifestUnknown,
    NameUnknown,
    Unauthorized,
    Denied,
    TooManyRequests,
    BlobUnknown,
    ManifestInvalid,
    NameInvalid,
    TagInvalid,
    Other,
    /// The registry's own detail beside the code, one line, shortened.
    WithDetail(Box<RegistryCode>, String),
}

/// What a request asked the registry for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resource {
    Manifest,
    Blob,
    Tags,
}

impl Resource {
    /// From the path of a distribution API URL (`/v2/<name>/manifests/…`, `/blobs/…`,
    /// `/tags/list`).
    pub(super) fn of_path(path: &str) -> Option<Self> {
        if path.contains("/manifests/") {
            Some(Self::Manifest)
        } else if path.contains("/blobs/") {
            Some(Self::Blob)
        } else if path.ends_with("/tags/list") {
            Some(Self::Tags)
        } else {
            None
        }
    }

    /// What a 404 without a distribution error body means for this resource.
    fn not_found(self) -> &'static str {
        match self {
            Self::Manifest => "manifest unknown",
            Self::Blob => "blob unknown",
            Self::Tags => "name unknown: no such repository in the registry",
        }
    }
}

/// Why a request got no usable response.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TransportKind {
    TimedOut,
    Connect,
    BrokenBody,
    Other,
}

impl fmt::Display for TransportKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::TimedOut => "timed out",
            Self::Connect => "cannot connect to the registry",
            Self::BrokenBody => "the connection broke while reading the response",
            Self::Other => "request failed",
        })
    }
}

impl RegistryError {
    /// Network trouble, 5xx and 429 may go away by themselves; everything else needs a change.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Status { status, code, .. } => {
                status_is_transient(*status)
                    || code
                        .as_ref()
                        .is_some_and(|c| *c.base() == RegistryCode::TooManyRequests)
            }
            Self::TokenServer { status, .. } => status_is_transient(*status),
            Self::Transport { .. } | Self::Timeout(_) | Self::Stalled(_) | Self::TooSlow { .. } => {
                true
            }
            Self::Oci(err) => describe(err).1,
            _ => false,
        }
    }

    /// How long the registry asked us to stay away (`Retry-After`), capped at [`MAX_RETRY_AFTER`].
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Status { retry_after, .. } | Self::TokenServer { retry_after, .. } => {
                *retry_after
            }
            _ => None,
        }
    }

    /// An error status from the registry (or from the host it redirected to, `answered_by`).
    /// `body` is the (bounded) response body, empty for HEAD.
    pub(super) fn from_status(
        status: StatusCode,
        headers: &HeaderMap,
        body: &[u8],
        resource: Option<Resource>,
        answered_by: Option<String>,
    ) -> Self {
        let code = match serde_json::from_slice::<OciEnvelope>(body) {
            Ok(envelope) if status.is_client_error() && answered_by.is_none() => {
                envelope.errors.first().map(code_of)
            }
            _ => None,
        };
        let retry_after = headers
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, SystemTime::now()));
        Self::Status {
            status: status.as_u16(),
            code,
            retry_after,
            resource,
            answered_by,
        }
    }

    /// The request could not be sent or its response not read: always worth retrying.
    pub(super) fn transport(source: reqwest::Error) -> Self {
        if let Some(status) = source.status() {
            return Self::Status {
                status: status.as_u16(),
                code: None,
                retry_after: None,
                resource: None,
                answered_by: None,
            };
        }
        let kind = transport_kind(&source);
        Self::Transport { kind, source }
    }
}

impl RegistryCode {
    fn base(&self) -> &RegistryCode {
        match self {
            Self::WithDetail(code, _) => code.base(),
            other => other,
        }
    }

    fn name(&self) -> &'static str {
        match self {
            Self::ManifestUnknown => "manifest unknown",
            Self::NameUnknown => "name unknown",
            Self::Unauthorized => "unauthorized",
            Self::Denied => "denied",
            Self::TooManyRequests => "too many requests",
            Self::BlobUnknown => "blob unknown",
            Self::ManifestInvalid => "manifest invalid",
            Self::NameInvalid => "name invalid",
            Self::TagInvalid => "tag invalid",
            Self::Other => "registry error",
            Self::WithDetail(code, _) => code.name(),
        }
    }
}

impl fmt::Display for RegistryCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::WithDetail(code, detail) => write!(f, "{}: {detail}", code.name()),
            other => f.write_str(other.name()),
        }
    }
}

impl From<OciDistributionError> for RegistryError {
    fn from(err: OciDistributionError) -> Self {
        Self::Oci(err)
    }
}

fn code_of(error: &oci_client::errors::OciError) -> RegistryCode {
    let code = match error.code {
        OciErrorCode::ManifestUnknown => RegistryCode::ManifestUnknown,
        OciErrorCode::NameUnknown => RegistryCode::NameUnknown,
        OciErrorCode::Unauthorized => RegistryCode::Unauthorized,
        OciErrorCode::Denied => RegistryCode::Denied,
        OciErrorCode::Toomanyrequests => RegistryCode::TooManyRequests,
        OciErrorCode::BlobUnknown => RegistryCode::BlobUnknown,
        OciErrorCode::ManifestInvalid => RegistryCode::ManifestInvalid,
        OciErrorCode::NameInvalid => RegistryCode::NameInvalid,
        OciErrorCode::TagInvalid => RegistryCode::TagInvalid,
        _ => RegistryCode::Other,
    };
    let detail = error.message.trim();
    if detail.is_empty() || detail.eq_ignore_ascii_case(code.name()) {
        code
    } else {
        RegistryCode::WithDetail(Box::new(code), one_line(detail))
    }
}

fn status_is_transient(status: u16) -> bool {
    matches!(status, 408 | 429) || status >= 500
}

fn token_server_message(status: u16) -> String {
    match status {
        401 | 403 => "unauthorized: the token server refused the credentials".into(),
        429 => "the token server is rate limiting (HTTP 429)".into(),
        c if status_is_transient(c) => format!("token server error (HTTP {c})"),
        c => format!("the token server answered HTTP {c}"),
    }
}

fn status_message(
    status: u16,
    code: Option<&RegistryCode>,
    resource: Option<Resource>,
    answered_by: Option<&str>,
) -> String {
    if let Some(host) = answered_by {
        let what = match resource {
            Some(Resource::Blob) | None => "the blob",
            Some(Resource::Manifest) => "the manifest",
            Some(Resource::Tags) => "the tag list",
        };
        return match status {
            403 => format!(
                "denied by {host}, where the registry redirected the download of {what} (HTTP 403: an expired or refused storage link, not the registry's credentials)"
            ),
            404 => format!("{what} is not at {host}, where the registry redirected (HTTP 404)"),
            c => format!(
                "{} from {host}, where the registry redirected the download of {what}",
                describe_status(c).0
            ),
        };
    }
    match (code, resource) {
        (Some(code), _) => code.to_string(),
        (None, Some(resource)) if status == 404 => resource.not_found().to_owned(),
        (None, _) => describe_status(status).0,
    }
}

/// `Retry-After` is either delay-seconds or an HTTP-date (RFC 9110 §10.2.3).
pub(super) fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
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
        E::RegistryError { envelope, .. } => match envelope.errors.first().map(code_of) {
            Some(code) => {
                let transient = *code.base() == RegistryCode::TooManyRequests;
                (code.to_string(), transient)
            }
            None => ("registry returned an empty error".into(), false),
        },
        E::ServerError { code, .. } => describe_status(*code),
        E::ImageManifestNotFoundError(_) => ("manifest unknown".into(), false),
        E::RequestError(e) => (format!("{}: {}", transport_kind(e), root_cause(e)), true),
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

fn transport_kind(err: &reqwest::Error) -> TransportKind {
    if err.is_timeout() {
        TransportKind::TimedOut
    } else if err.is_connect() {
        TransportKind::Connect
    } else if err.is_body() || err.is_decode() {
        TransportKind::BrokenBody
    } else {
        TransportKind::Other
    }
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
        let limited = RegistryError::from_status(
            StatusCode::TOO_MANY_REQUESTS,
            &headers("3"),
            b"",
            None,
            None,
        );
        assert!(limited.is_transient());
        assert_eq!(limited.retry_after(), Some(Duration::from_secs(3)));
        assert!(limited.to_string().contains("HTTP 429"), "{limited}");

        let unavailable = RegistryError::from_status(
            StatusCode::SERVICE_UNAVAILABLE,
            &HeaderMap::new(),
            b"",
            None,
            None,
        );
        assert!(unavailable.is_transient());
        assert_eq!(unavailable.retry_after(), None);
        assert_eq!(unavailable.to_string(), "registry error (HTTP 503)");

        let body = br#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown"}]}"#;
        let missing =
            RegistryError::from_status(StatusCode::NOT_FOUND, &HeaderMap::new(), body, None, None);
        assert!(!missing.is_transient());
        assert_eq!(missing.to_string(), "manifest unknown");

        let body = br#"{"errors":[{"code":"TOOMANYREQUESTS","message":"slow down"}]}"#;
        let limited = RegistryError::from_status(
            StatusCode::TOO_MANY_REQUESTS,
            &headers("7"),
            body,
            None,
            None,
        );
        assert!(limited.is_transient());
        assert_eq!(limited.to_string(), "too many requests: slow down");
        assert_eq!(limited.retry_after(), Some(Duration::from_secs(7)));
    }

    #[test]
    fn a_bodyless_404_names_what_was_asked_for() {
        let of = |path| Resource::of_path(path);
        assert_eq!(of("/v2/a/b/manifests/v1"), Some(Resource::Manifest));
        assert_eq!(of("/v2/a/blobs/sha256:00"), Some(Resource::Blob));
        assert_eq!(of("/v2/a/tags/list"), Some(Resource::Tags));
        assert_eq!(of("/v2/"), None);
        let not_found = |resource| {
            RegistryError::from_status(
                StatusCode::NOT_FOUND,
                &HeaderMap::new(),
                b"",
                resource,
                None,
            )
            .to_string()
        };
        assert_eq!(not_found(Some(Resource::Manifest)), "manifest unknown");
        assert_eq!(not_found(Some(Resource::Blob)), "blob unknown");
        assert!(not_found(Some(Resource::Tags)).starts_with("name unknown"));
        // The registry's own code wins over the guess from the path.
        let body = br#"{"errors":[{"code":"NAME_UNKNOWN","message":"repository name not known to registry"}]}"#;
        let named = RegistryError::from_status(
            StatusCode::NOT_FOUND,
            &HeaderMap::new(),
            body,
            Some(Resource::Manifest),
            None,
        );
        assert!(named.to_string().starts_with("name unknown"), "{named}");
    }

    #[test]
    fn a_refusal_from_a_redirect_target_names_that_host_not_the_registry() {
        let body = br#"<?xml version="1.0"?><Error><Code>AccessDenied</Code><Message>Request has expired</Message></Error>"#;
        let denied = RegistryError::from_status(
            StatusCode::FORBIDDEN,
            &HeaderMap::new(),
            body,
            Some(Resource::Blob),
            Some("bucket.s3.eu-west-1.amazonaws.com".into()),
        );
        let message = denied.to_string();
        assert!(
            message.starts_with("denied by bucket.s3.eu-west-1.amazonaws.com, where the registry redirected the download of the blob"),
            "{message}"
        );
        assert!(!denied.is_transient());
        let unavailable = RegistryError::from_status(
            StatusCode::SERVICE_UNAVAILABLE,
            &HeaderMap::new(),
            b"",
            Some(Resource::Blob),
            Some("cdn.example:8443".into()),
        );
        assert!(unavailable.is_transient());
        assert!(
            unavailable.to_string().contains("cdn.example:8443"),
            "{unavailable}"
        );
    }
}
