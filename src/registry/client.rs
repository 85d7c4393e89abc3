use std::{sync::Arc, time::Duration};

use futures::StreamExt;
use oci_client::manifest::{self, OciDescriptor, OciImageManifest, OciManifest};
use reqwest::Method;
use tokio::io::AsyncRead;
use tokio_util::io::StreamReader;
use tracing::info;

use super::RegistryCredentials;
use super::{
    ModuleRef, RegistryError, RepoName, RequestObserver, auth,
    http::{Http, SharedHttp, content_digest, read_body},
    media, pages,
    platform::choose_platform,
    resume::{ResumeAt, resumable},
    verify::{BodyFailure, Deadline, Verified},
};
use crate::Digest;

/// `spec.registry.scheme`, without the Kubernetes type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    Http,
    Https,
}

/// Everything needed to talk to one ModuleSource's registry.
#[derive(Clone, Debug)]
pub struct RegistryConfig {
    pub repo: RepoName,
    pub transport: Transport,
    pub ca_pem: Option<String>,
    pub credentials: RegistryCredentials,
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
    /// Bytes per second a blob must at least arrive at (after the read timeout); 0: no deadline.
    pub min_download_rate: u64,
}

/// Layer media types the unpacker understands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LayerMediaType {
    TarGzip,
    TarZstd,
    Tar,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layer {
    pub digest: Digest,
    pub size: u64,
    pub media_type: LayerMediaType,
}

/// The platform manifest of an image, checked against the limits before any blob is fetched.
#[derive(Clone, Debug)]
pub struct ImageManifest {
    pub layers: Vec<Layer>,
    pub config: ConfigBlob,
}

/// The descriptor of an image's config blob.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigBlob {
    pub digest: Digest,
    pub size: u64,
    pub media_type: String,
}

impl ImageManifest {
    pub fn compressed_size(&self) -> u64 {
        self.layers.iter().map(|l| l.size).sum()
    }
}

/// A client for one registry with one set of credentials. Cheap to clone; the `Authorization`
/// that worked (bearer token or basic) is kept and reused until the registry refuses it.
#[derive(Clone)]
pub struct Registry {
    pub(super) http: SharedHttp,
    repo: RepoName,
    read_timeout: Duration,
    min_download_rate: u64,
}

const MANIFEST_MEDIA_TYPES: &[&str] = &[
    manifest::OCI_IMAGE_MEDIA_TYPE,
    manifest::IMAGE_MANIFEST_MEDIA_TYPE,
    manifest::OCI_IMAGE_INDEX_MEDIA_TYPE,
    manifest::IMAGE_MANIFEST_LIST_MEDIA_TYPE,
];

/// Registries refuse bigger manifests too (distribution: 4 MiB); more is not a manifest.
const MAX_MANIFEST_BYTES: usize = 4 * 1024 * 1024;

impl Registry {
    pub fn new(config: &RegistryConfig) -> Result<Self, RegistryError> {
        Self::build(config, None)
    }

    /// Like [`Registry::new`], reporting every request of the MPO path to `observer`.
    pub fn observed(
        config: &RegistryConfig,
        observer: Arc<dyn RequestObserver>,
    ) -> Result<Self, RegistryError> {
        Self::build(config, Some(observer))
    }

    fn build(
        config: &RegistryConfig,
        observer: Option<Arc<dyn RequestObserver>>,
    ) -> Result<Self, RegistryError> {
        let certificates = parse_ca(config.ca_pem.as_deref())?;
        let http = Http {
            client: reqwest_client(
                config,
                certificates.clone(),
                reqwest::redirect::Policy::default(),
            )?,
            token_client: reqwest_client(config, certificates, auth::token_redirect_policy())?,
            credentials: config.credentials.clone(),
            scheme: match config.transport {
                Transport::Http => "http",
                Transport::Https => "https",
            },
            // A whole request may take a few read timeouts; none may hang a worker forever.
            request_timeout: config.connect_timeout + config.read_timeout * 2,
            authorizations: Default::default(),
            observer,
        };
        Ok(Self {
            http: Arc::new(http),
            repo: config.repo.clone(),
            read_timeout: config.read_timeout,
            min_download_rate: config.min_download_rate,
        })
    }

    pub fn repo(&self) -> &RepoName {
        &self.repo
    }

    /// The digest the tag points at now: one HEAD. A GET follows only when the HEAD carries no
    /// digest, or failed with a client error whose code only a response body names (manifest vs
    /// name unknown); never after a 429 or 5xx, which would only add load to a struggling registry.
    pub async fn resolve(&self, image: &ModuleRef) -> Result<Digest, RegistryError> {
        let url = self.http.url(image, "manifests", image.tag());
        let head = self
            .http
            .exchange(Method::HEAD, image, &url, &MANIFEST_MEDIA_TYPES.join(", "))
            .await?;
        let status = head.response.status();
        if status.is_success()
            && let Some(digest) = content_digest(head.response.headers())
        {
            return parse_digest(digest);
        }
        if !status.is_success() && !worth_a_get(status) {
            return Err(self.http.status_error(head.response, &url).await);
        }
        drop(head);
        let (body, header) = self.get_manifest(image, image.tag()).await?;
        let digest = Digest::of(&body);
        match header {
            Some(claimed) if parse_digest(&claimed)? != digest => Err(RegistryError::BadManifest(
                format!("the registry says the manifest is {claimed} but its bytes are {digest}"),
            )),
            _ => Ok(digest),
        }
    }

    /// The image manifest at `digest` (an index is resolved to one image as
    /// [`choose_platform`] does), its bytes verified against the digest.
    pub async fn manifest(
        &self,
        image: &ModuleRef,
        digest: &Digest,
    ) -> Result<ImageManifest, RegistryError> {
        let image_manifest = match self.verified_manifest(image, digest).await? {
            OciManifest::Image(m) => m,
            OciManifest::ImageIndex(index) => {
                let chosen = choose_platform(&index.manifests)?;
                info!(image = %image.at_digest(digest), platform = %chosen.platform, reason = %chosen.reason, "chose the image of an index");
                let entry: Digest = chosen.digest.parse().map_err(|_| {
                    RegistryError::BadManifest(format!(
                        "index entry {:?} is not a sha256 digest",
                        chosen.digest
                    ))
                })?;
                platform_manifest(self.verified_manifest(image, &entry).await?)?
            }
        };
        to_image_manifest(&image_manifest)
    }

    /// The bytes of one layer. The reader fails (at the latest at its end) when the bytes do not
    /// match the layer's digest or size, so a consumer must read it to EOF. The registry host's
    /// request slot is held until then.
    pub async fn layer_reader(
        &self,
        image: &ModuleRef,
        layer: &Layer,
    ) -> Result<(impl AsyncRead + Send + Unpin + 'static, BodyFailure), RegistryError> {
        let url = self.http.url(image, "blobs", &layer.digest.to_string());
        let exchange = self.http.exchange(Method::GET, image, &url, "*/*").await?;
        if !exchange.response.status().is_success() {
            return Err(self.http.status_error(exchange.response, &url).await);
        }
        let failure = BodyFailure::default();
        let resume_at = ResumeAt {
            http: self.http.clone(),
            repository: image.repository(),
            url,
            blob: layer.digest.to_string(),
        };
        let body = Verified::new(
            resumable(exchange.response.bytes_stream().boxed(), resume_at),
            layer.digest.clone(),
            layer.size,
            self.read_timeout,
            exchange.permit,
            failure.clone(),
        )
        .with_deadline(self.blob_deadline(layer.size));
        Ok((StreamReader::new(body), failure))
    }

    /// How long a blob of `size` bytes may take: the read timeout plus its size at the minimum
    /// rate (`--min-download-rate`).
    fn blob_deadline(&self, size: u64) -> Option<Deadline> {
        let rate = self.min_download_rate;
        (rate > 0).then(|| Deadline {
            allowed: self.read_timeout + Duration::from_secs(size.div_ceil(rate)),
            min_rate: rate,
        })
    }

    /// The tags of the root repository: the module names of the source. Follows the `Link`
    /// pagination of the distribution spec, so a large source is listed whole. Tags of
    /// signatures and referrers ([`is_digest_tag`](super::is_digest_tag)) are left out.
    pub async fn list_modules(&self) -> Result<Vec<String>, RegistryError> {
        let root = self.repo.root_repository();
        if root.is_empty() {
            // `/v2//tags/list` is no repository; a registry's catalog is not a module list.
            return Err(RegistryError::BadRepo {
                repo: self.repo.to_string(),
                reason: "it names only a host, so there is no root repository whose tags list the modules (e.g. give registry.example.com/modules)".into(),
            });
        }
        self.list_tags_of(root).await
    }

    /// The tags of `image`'s repository (`<repo>/<module>` or its `/release`), sorted; the tag
    /// of `image` itself plays no part. Paginated like [`Registry::list_modules`].
    pub async fn list_tags(&self, image: &ModuleRef) -> Result<Vec<String>, RegistryError> {
        self.list_tags_of(&image.repository()).await
    }

    async fn list_tags_of(&self, repository: &str) -> Result<Vec<String>, RegistryError> {
        let endpoint = self.repo.endpoint();
        let first =
            self.http.url_of(&endpoint, repository, "tags", "list") + &format!("?n={TAGS_PAGE}");
        let mut url = url::Url::parse(&first).map_err(|_| RegistryError::BadRepo {
            repo: self.repo.to_string(),
            reason: "it does not make a URL".into(),
        })?;
        let mut tags = Vec::new();
        for _ in 0..MAX_TAG_PAGES {
            let exchange = self
                .http
                .exchange_at(
                    Method::GET,
                    &endpoint,
                    repository,
                    url.as_str(),
                    "application/json",
                )
                .await?;
            let response = exchange.response;
            // Before the body: a failed status is reported as such, not as a bad link.
            let next = if response.status().is_success() {
                pages::next_page(response.headers(), &url)?
            } else {
                None
            };
            let body = self
                .small_body(
                    response,
                    url.as_str(),
                    MAX_TAGS_PAGE_BYTES,
                    "a tag list page",
                )
                .await?;
            let page: TagPage = serde_json::from_slice(&body).map_err(|_| {
                RegistryError::BadManifest("the tag list is not the expected JSON".into())
            })?;
            // Signatures, attestations and referrers are stored under tags of their own beside
            // the image; they are neither module names nor versions.
            tags.extend(
                page.tags
                    .unwrap_or_default()
                    .into_iter()
                    .filter(|tag| !super::artifacts::is_digest_tag(tag)),
            );
            match next {
                Some(next) => url = next,
                None => {
                    tags.sort();
                    tags.dedup();
                    return Ok(tags);
                }
            }
        }
        Err(RegistryError::BadManifest(format!(
            "the tag list has more than {MAX_TAG_PAGES} pages"
        )))
    }

    /// The image's config blob (small JSON: entrypoint, labels, layer diff ids), its bytes
    /// verified against the manifest's descriptor.
    pub async fn config_blob(
        &self,
        image: &ModuleRef,
        config: &ConfigBlob,
    ) -> Result<Vec<u8>, RegistryError> {
        self.small_blob(image, &config.digest, MAX_CONFIG_BYTES, "the image config")
            .await
    }

    /// A blob small enough to hold in memory (a config, a signature payload), refused past
    /// `limit` bytes and unless its bytes hash to `digest`.
    pub(super) async fn small_blob(
        &self,
        image: &ModuleRef,
        digest: &Digest,
        limit: usize,
        what: &str,
    ) -> Result<Vec<u8>, RegistryError> {
        let url = self.http.url(image, "blobs", &digest.to_string());
        let exchange = self.http.exchange(Method::GET, image, &url, "*/*").await?;
        let body = self
            .small_body(exchange.response, &url, limit, what)
            .await?;
        let seen = Digest::of(&body);
        if seen != *digest {
            return Err(RegistryError::BlobDigest {
                expected: digest.clone(),
                actual: seen.hex().to_owned(),
            });
        }
        Ok(body)
    }

    /// The manifest at `digest`, refused unless its bytes hash to `digest`.
    async fn verified_manifest(
        &self,
        image: &ModuleRef,
        digest: &Digest,
    ) -> Result<OciManifest, RegistryError> {
        let (raw, _) = self.get_manifest(image, &digest.to_string()).await?;
        media::refuse_schema1(&raw)?;
        let actual = Digest::of(&raw);
        if actual != *digest {
            return Err(RegistryError::BadManifest(format!(
                "manifest digest mismatch: asked for {digest}, got bytes of {actual}"
            )));
        }
        serde_json::from_slice(&raw)
            .map_err(|e| RegistryError::BadManifest(format!("cannot parse the manifest: {e}")))
    }

    /// GET of a manifest by tag or digest: its bytes and the digest header, if any.
    pub(super) async fn get_manifest(
        &self,
        image: &ModuleRef,
        reference: &str,
    ) -> Result<(Vec<u8>, Option<String>), RegistryError> {
        let url = self.http.url(image, "manifests", reference);
        let accept = MANIFEST_MEDIA_TYPES.join(", ");
        let exchange = self
            .http
            .exchange(Method::GET, image, &url, &accept)
            .await?;
        let response = exchange.response;
        let header = content_digest(response.headers()).map(str::to_owned);
        let body = self
            .small_body(response, &url, MAX_MANIFEST_BYTES, "the manifest")
            .await?;
        Ok((body, header))
    }

    /// The body of a successful response (manifest, config, tag page), refused past `limit`
    /// bytes; `what` names it in that error. A failed status becomes the registry's error.
    pub(super) async fn small_body(
        &self,
        response: reqwest::Response,
        requested: &str,
        limit: usize,
        what: &str,
    ) -> Result<Vec<u8>, RegistryError> {
        if !response.status().is_success() {
            return Err(self.http.status_error(response, requested).await);
        }
        let (body, truncated) = self.http.bounded(read_body(response, limit)).await??;
        if truncated {
            return Err(RegistryError::BadManifest(format!(
                "{what} is over {limit} bytes"
            )));
        }
        Ok(body)
    }
}

/// Tags asked for per page; registries may send fewer and say so with a `Link` header.
const TAGS_PAGE: usize = 1000;
const MAX_TAG_PAGES: usize = 1000;
const MAX_TAGS_PAGE_BYTES: usize = 4 * 1024 * 1024;
/// Image configs are a few KiB; registries themselves cap manifests at 4 MiB.
const MAX_CONFIG_BYTES: usize = 4 * 1024 * 1024;

#[derive(serde::Deserialize)]
struct TagPage {
    #[serde(default)]
    tags: Option<Vec<String>>,
}

/// After a HEAD with this status, a GET can tell more (the registry's own error code in a body).
fn worth_a_get(status: reqwest::StatusCode) -> bool {
    use reqwest::StatusCode as S;
    status.is_client_error()
        && !matches!(
            status,
            S::UNAUTHORIZED | S::TOO_MANY_REQUESTS | S::REQUEST_TIMEOUT
        )
}

fn parse_digest(text: &str) -> Result<Digest, RegistryError> {
    text.parse()
        .map_err(|_| RegistryError::BadManifest(format!("the registry returned digest {text:?}")))
}

/// The entry an index pointed at must be an image manifest, not another index.
fn platform_manifest(manifest: OciManifest) -> Result<OciImageManifest, RegistryError> {
    match manifest {
        OciManifest::Image(m) => Ok(m),
        OciManifest::ImageIndex(_) => Err(RegistryError::BadManifest(
            "the index points at another index".into(),
        )),
    }
}

/// Used for the requests of the MPO path, with the same trust roots and timeouts as oci-client's.
fn reqwest_client(
    config: &RegistryConfig,
    roots: Vec<reqwest::Certificate>,
    redirects: reqwest::redirect::Policy,
) -> Result<reqwest::Client, RegistryError> {
    reqwest::Client::builder()
        .tls_certs_merge(roots)
        .redirect(redirects)
        .connect_timeout(config.connect_timeout)
        .read_timeout(config.read_timeout)
        .user_agent(USER_AGENT)
        .build()
        .map_err(|_| {
            if config.ca_pem.is_some() {
                RegistryError::BadCa("the certificate cannot be used as a trust root")
            } else {
                RegistryError::Client("cannot build the HTTP client")
            }
        })
}

const USER_AGENT: &str = concat!("mpo-operator/", env!("CARGO_PKG_VERSION"));

fn to_image_manifest(manifest: &OciImageManifest) -> Result<ImageManifest, RegistryError> {
    let config = &manifest.config;
    media::refuse_artifacts(&config.media_type, manifest.artifact_type.as_deref())?;
    if manifest.layers.is_empty() {
        return Err(RegistryError::NoLayers);
    }
    let layers = manifest
        .layers
        .iter()
        .map(to_layer)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| media::unreadable_layer(&config.media_type, err))?;
    Ok(ImageManifest {
        layers,
        config: ConfigBlob {
            digest: descriptor_digest(config)?,
            size: descriptor_size(config)?,
            media_type: config.media_type.clone(),
        },
    })
}

fn descriptor_digest(descriptor: &OciDescriptor) -> Result<Digest, RegistryError> {
    descriptor.digest.parse().map_err(|_| {
        RegistryError::BadManifest(format!("digest {:?} is not sha256", descriptor.digest))
    })
}

fn descriptor_size(descriptor: &OciDescriptor) -> Result<u64, RegistryError> {
    u64::try_from(descriptor.size).map_err(|_| {
        RegistryError::BadManifest(format!("blob {} has a negative size", descriptor.digest))
    })
}

fn to_layer(descriptor: &OciDescriptor) -> Result<Layer, RegistryError> {
    let media_type = media::layer_media_type(&descriptor.media_type)?;
    Ok(Layer {
        digest: descriptor_digest(descriptor)?,
        size: descriptor_size(descriptor)?,
        media_type,
    })
}

/// The PEM bundle of `spec.registry.ca`, parsed by reqwest (any number of certificates, text
/// between them ignored); it must hold at least one.
fn parse_ca(pem: Option<&str>) -> Result<Vec<reqwest::Certificate>, RegistryError> {
    let Some(pem) = pem.filter(|p| !p.trim().is_empty()) else {
        return Ok(Vec::new());
    };
    let certs = reqwest::Certificate::from_pem_bundle(pem.as_bytes())
        .map_err(|_| RegistryError::BadCa("a certificate is not valid PEM"))?;
    if certs.is_empty() {
        return Err(RegistryError::BadCa(
            "no PEM certificate (-----BEGIN CERTIFICATE-----) found",
        ));
    }
    Ok(certs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ca_parsing_reports_garbage_clearly() {
        assert!(parse_ca(None).expect("none").is_empty());
        assert!(matches!(
            parse_ca(Some("not a cert")),
            Err(RegistryError::BadCa(_))
        ));
        let two = "# a comment\n-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\ntext\n-----BEGIN CERTIFICATE-----\nBBBB\n-----END CERTIFICATE-----\n";
        assert_eq!(parse_ca(Some(two)).expect("two").len(), 2);
        let torn = "-----BEGIN CERTIFICATE-----\nAAAA\n";
        assert!(matches!(parse_ca(Some(torn)), Err(RegistryError::BadCa(_))));
        let not_base64 = "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n";
        assert!(matches!(
            parse_ca(Some(not_base64)),
            Err(RegistryError::BadCa(_))
        ));
    }
}
