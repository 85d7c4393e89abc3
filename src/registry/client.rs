use std::{pin::Pin, task::Poll, time::Duration};

use futures::{Stream, StreamExt};
use oci_client::{
    Client, Reference,
    client::{Certificate, CertificateEncoding, ClientConfig, ClientProtocol},
    manifest::{self, ImageIndexEntry, OciDescriptor, OciManifest},
    secrets::RegistryAuth,
};
use tokio::io::AsyncRead;
use tokio_util::io::StreamReader;

use super::{ModuleRef, RegistryError, RepoName};
use crate::{Digest, crd::RegistryCredentials};

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
}

/// Layer media types the unpacker understands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LayerMediaType {
    TarGzip,
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
}

impl ImageManifest {
    pub fn compressed_size(&self) -> u64 {
        self.layers.iter().map(|l| l.size).sum()
    }
}

/// A client for one registry with one set of credentials. Cheap to clone; bearer tokens are cached
/// inside and reused until they expire.
#[derive(Clone)]
pub struct Registry {
    client: Client,
    auth: RegistryAuth,
    repo: RepoName,
    request_timeout: Duration,
}

const MANIFEST_MEDIA_TYPES: &[&str] = &[
    manifest::OCI_IMAGE_MEDIA_TYPE,
    manifest::IMAGE_MANIFEST_MEDIA_TYPE,
    manifest::OCI_IMAGE_INDEX_MEDIA_TYPE,
    manifest::IMAGE_MANIFEST_LIST_MEDIA_TYPE,
];

impl Registry {
    pub fn new(config: &RegistryConfig) -> Result<Self, RegistryError> {
        let client_config = ClientConfig {
            protocol: match config.transport {
                Transport::Http => ClientProtocol::Http,
                Transport::Https => ClientProtocol::Https,
            },
            extra_root_certificates: parse_ca(config.ca_pem.as_deref())?,
            platform_resolver: Some(Box::new(linux_amd64_or_only)),
            connect_timeout: Some(config.connect_timeout),
            read_timeout: Some(config.read_timeout),
            user_agent: concat!("mpo-operator/", env!("CARGO_PKG_VERSION")),
            ..ClientConfig::default()
        };
        let client = Client::try_from(client_config).map_err(|e| match e {
            oci_client::errors::OciDistributionError::RequestError(_)
                if config.ca_pem.is_some() =>
            {
                RegistryError::BadCa("the certificate cannot be used as a trust root".into())
            }
            other => RegistryError::Client(other.to_string()),
        })?;
        Ok(Self {
            client,
            auth: to_auth(&config.credentials),
            repo: config.repo.clone(),
            // A whole manifest request may take a few read timeouts; none may hang a worker forever.
            request_timeout: config.connect_timeout + config.read_timeout * 2,
        })
    }

    pub fn repo(&self) -> &RepoName {
        &self.repo
    }

    /// The digest the tag points at now: one HEAD (GET when HEAD carries no digest).
    pub async fn resolve(&self, image: &ModuleRef) -> Result<Digest, RegistryError> {
        let reference = image.by_tag();
        let digest = self
            .bounded(self.client.fetch_manifest_digest(&reference, &self.auth))
            .await??;
        digest.parse().map_err(|_| {
            RegistryError::BadManifest(format!("the registry returned digest {digest:?}"))
        })
    }

    /// The image manifest at `digest` (an index is resolved to linux/amd64 or its only entry),
    /// its bytes verified against the digest by the client.
    pub async fn manifest(
        &self,
        image: &ModuleRef,
        digest: &Digest,
    ) -> Result<ImageManifest, RegistryError> {
        let reference = image.by_digest(digest);
        let (raw, _) = self
            .bounded(
                self.client
                    .pull_manifest_raw(&reference, &self.auth, MANIFEST_MEDIA_TYPES),
            )
            .await??;
        let parsed: OciManifest = serde_json::from_slice(&raw)
            .map_err(|e| RegistryError::BadManifest(format!("cannot parse the manifest: {e}")))?;
        let image_manifest = match parsed {
            OciManifest::Image(m) => m,
            OciManifest::ImageIndex(index) => {
                let chosen =
                    linux_amd64_or_only(&index.manifests).ok_or(RegistryError::NoPlatform)?;
                let chosen: Digest = chosen.parse().map_err(|_| {
                    RegistryError::BadManifest(format!(
                        "index entry {chosen:?} is not a sha256 digest"
                    ))
                })?;
                let (m, _) = self
                    .bounded(
                        self.client
                            .pull_image_manifest(&image.by_digest(&chosen), &self.auth),
                    )
                    .await??;
                m
            }
        };
        to_image_manifest(&image_manifest.layers)
    }

    /// The bytes of one layer. The reader fails (at the latest at its end) when the bytes do not
    /// match the layer's digest or size, so a consumer must read it to EOF.
    pub async fn layer_reader(
        &self,
        image: &ModuleRef,
        layer: &Layer,
    ) -> Result<impl AsyncRead + Send + Unpin + 'static, RegistryError> {
        let descriptor = OciDescriptor {
            digest: layer.digest.to_string(),
            size: i64::try_from(layer.size).unwrap_or(i64::MAX),
            ..OciDescriptor::default()
        };
        let stream = self
            .bounded(self.client.pull_blob_stream(&image.by_tag(), &descriptor))
            .await??;
        let checked = SizeChecked {
            inner: stream.stream,
            expected: layer.size,
            seen: 0,
        };
        Ok(StreamReader::new(checked))
    }

    /// The tags of the root repository: the module names of the source.
    pub async fn list_modules(&self) -> Result<Vec<String>, RegistryError> {
        let reference: Reference = self.repo.root_reference();
        let mut tags = self
            .bounded(self.client.list_tags(&reference, &self.auth, None, None))
            .await??
            .tags;
        tags.sort();
        Ok(tags)
    }

    async fn bounded<T>(&self, fut: impl Future<Output = T>) -> Result<T, RegistryError> {
        tokio::time::timeout(self.request_timeout, fut)
            .await
            .map_err(|_| RegistryError::Timeout(self.request_timeout))
    }
}

fn to_image_manifest(layers: &[OciDescriptor]) -> Result<ImageManifest, RegistryError> {
    if layers.is_empty() {
        return Err(RegistryError::NoLayers);
    }
    let layers = layers.iter().map(to_layer).collect::<Result<Vec<_>, _>>()?;
    Ok(ImageManifest { layers })
}

fn to_layer(descriptor: &OciDescriptor) -> Result<Layer, RegistryError> {
    let media_type = match descriptor.media_type.as_str() {
        manifest::IMAGE_LAYER_GZIP_MEDIA_TYPE | manifest::IMAGE_DOCKER_LAYER_GZIP_MEDIA_TYPE => {
            LayerMediaType::TarGzip
        }
        manifest::IMAGE_LAYER_MEDIA_TYPE | manifest::IMAGE_DOCKER_LAYER_TAR_MEDIA_TYPE => {
            LayerMediaType::Tar
        }
        other => return Err(RegistryError::UnsupportedMediaType(other.to_owned())),
    };
    let digest = descriptor.digest.parse().map_err(|_| {
        RegistryError::BadManifest(format!(
            "layer digest {:?} is not sha256",
            descriptor.digest
        ))
    })?;
    let size = u64::try_from(descriptor.size).map_err(|_| {
        RegistryError::BadManifest(format!("layer {} has a negative size", descriptor.digest))
    })?;
    Ok(Layer {
        digest,
        size,
        media_type,
    })
}

/// The single manifest of an index, or its linux/amd64 one.
fn linux_amd64_or_only(entries: &[ImageIndexEntry]) -> Option<String> {
    if let [only] = entries {
        return Some(only.digest.clone());
    }
    oci_client::client::linux_amd64_resolver(entries)
}

fn to_auth(credentials: &RegistryCredentials) -> RegistryAuth {
    match credentials {
        RegistryCredentials::Anonymous => RegistryAuth::Anonymous,
        RegistryCredentials::Basic { username, password } => {
            RegistryAuth::Basic(username.clone(), password.clone())
        }
        RegistryCredentials::Bearer(token) => RegistryAuth::Bearer(token.clone()),
    }
}

/// Splits a PEM bundle into certificates; each is added to the system roots for this source only.
fn parse_ca(pem: Option<&str>) -> Result<Vec<Certificate>, RegistryError> {
    const BEGIN: &str = "-----BEGIN CERTIFICATE-----";
    const END: &str = "-----END CERTIFICATE-----";
    let Some(pem) = pem.filter(|p| !p.trim().is_empty()) else {
        return Ok(Vec::new());
    };
    let mut certs = Vec::new();
    let mut rest = pem;
    while let Some(start) = rest.find(BEGIN) {
        let after = &rest[start..];
        let end = after
            .find(END)
            .ok_or_else(|| RegistryError::BadCa("a certificate has no END line".into()))?;
        let block = &after[..end + END.len()];
        validate_pem_body(&block[BEGIN.len()..end])?;
        certs.push(Certificate {
            encoding: CertificateEncoding::Pem,
            data: format!("{block}\n").into_bytes(),
        });
        rest = &after[end + END.len()..];
    }
    if certs.is_empty() {
        return Err(RegistryError::BadCa(
            "no PEM certificate (-----BEGIN CERTIFICATE-----) found".into(),
        ));
    }
    Ok(certs)
}

fn validate_pem_body(body: &str) -> Result<(), RegistryError> {
    use base64::Engine;
    let compact: String = body.split_whitespace().collect();
    base64::engine::general_purpose::STANDARD
        .decode(compact)
        .map(|_| ())
        .map_err(|_| RegistryError::BadCa("a certificate is not valid base64".into()))
}

/// Fails the stream when the blob is longer or shorter than the manifest says, so that a registry
/// cannot feed an endless body.
struct SizeChecked<S> {
    inner: S,
    expected: u64,
    seen: u64,
}

impl<S> Stream for SizeChecked<S>
where
    S: Stream<Item = std::io::Result<bytes::Bytes>> + Unpin,
{
    type Item = std::io::Result<bytes::Bytes>;

    fn poll_next(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        match this.inner.poll_next_unpin(cx) {
            Poll::Ready(Some(Ok(chunk))) => {
                this.seen += chunk.len() as u64;
                if this.seen > this.expected {
                    return Poll::Ready(Some(Err(size_error(
                        this.expected,
                        this.seen,
                        "more than",
                    ))));
                }
                Poll::Ready(Some(Ok(chunk)))
            }
            Poll::Ready(None) if this.seen < this.expected => {
                Poll::Ready(Some(Err(size_error(this.expected, this.seen, "only"))))
            }
            other => other,
        }
    }
}

fn size_error(expected: u64, seen: u64, how: &str) -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::InvalidData,
        format!(
            "blob size mismatch: the manifest says {expected} bytes, the registry sent {how} {seen}"
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::TryStreamExt;

    #[test]
    fn ca_parsing_reports_garbage_clearly() {
        assert!(parse_ca(None).expect("none").is_empty());
        assert!(matches!(
            parse_ca(Some("not a cert")),
            Err(RegistryError::BadCa(_))
        ));
        let two = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n-----BEGIN CERTIFICATE-----\nBBBB\n-----END CERTIFICATE-----";
        assert_eq!(parse_ca(Some(two)).expect("two").len(), 2);
    }

    #[tokio::test]
    async fn size_check_refuses_short_and_long_blobs() {
        let chunks = || futures::stream::iter(vec![Ok(bytes::Bytes::from_static(b"abc"))]);
        let short = SizeChecked {
            inner: chunks(),
            expected: 4,
            seen: 0,
        };
        assert!(short.try_collect::<Vec<_>>().await.is_err());
        let long = SizeChecked {
            inner: chunks(),
            expected: 2,
            seen: 0,
        };
        assert!(long.try_collect::<Vec<_>>().await.is_err());
        let exact = SizeChecked {
            inner: chunks(),
            expected: 3,
            seen: 0,
        };
        assert!(exact.try_collect::<Vec<_>>().await.is_ok());
    }
}
