//! The signatures cosign stores beside an image, in both of its formats. Only fetched here;
//! whether they hold is for [`crate::signing`].
//!
//! - Classic (cosign v2's default): an OCI manifest tagged `sha256-<hex of the image's
//!   digest>.sig` in the image's own repository, one layer per signature. Each layer is the
//!   simple signing payload, with the signature in the layer's `dev.cosignproject.cosign/signature`
//!   annotation (base64).
//! - Sigstore bundles (cosign v3's default): OCI 1.1 referrers of the image, each a manifest whose
//!   layer is the bundle document. Found through the referrers API, or on registries without it
//!   (distribution 2.8, Debian's docker-registry) through the referrers tag schema: an image
//!   index tagged `sha256-<hex>` listing them.

use base64::Engine as _;
use oci_client::manifest::OciImageManifest;
use reqwest::Method;
use serde::Deserialize;

use super::{ModuleRef, Registry, RegistryError};
use crate::{
    Digest,
    signing::{BUNDLE_MEDIA_TYPE_PREFIX, Signature},
};

pub const SIMPLE_SIGNING_MEDIA_TYPE: &str = "application/vnd.dev.cosign.simplesigning.v1+json";
const SIGNATURE_ANNOTATION: &str = "dev.cosignproject.cosign/signature";
/// The Rekor inclusion proof cosign attaches when it uploaded to a transparency log.
const BUNDLE_ANNOTATION: &str = "dev.sigstore.cosign/bundle";
/// A payload is a few hundred bytes.
const MAX_PAYLOAD_BYTES: usize = 64 * 1024;
/// Signatures of one image looked at: each is one blob GET, and an attacker may add many.
const MAX_SIGNATURES: usize = 8;
/// A bundle with a certificate chain and a log entry is a few KiB.
const MAX_BUNDLE_BYTES: usize = 256 * 1024;
/// An index of referrers is one descriptor per signature, attestation or SBOM.
const MAX_REFERRERS_BYTES: usize = 1024 * 1024;
const OCI_INDEX_MEDIA_TYPE: &str = "application/vnd.oci.image.index.v1+json";

/// One signature as stored: the payload bytes (verified against their digest) and the raw
/// signature bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CosignSignature {
    pub payload: Vec<u8>,
    pub signature: Vec<u8>,
    /// Whether cosign attached a transparency-log entry (which is not checked offline).
    pub has_tlog_entry: bool,
}

/// The tag cosign stores the signatures of `digest` under.
pub fn signature_tag(digest: &Digest) -> String {
    format!("sha256-{}.sig", digest.hex())
}

/// The tag of the referrers tag schema (OCI distribution 1.1) for `digest`.
pub fn referrers_tag(digest: &Digest) -> String {
    format!("sha256-{}", digest.hex())
}

/// An index of referrers, from the API or the tag schema. Each entry names its artifact type
/// (the image index descriptors of oci-client do not carry it).
#[derive(Deserialize)]
struct ReferrersIndex {
    #[serde(default)]
    manifests: Vec<Referrer>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Referrer {
    digest: String,
    #[serde(default)]
    artifact_type: Option<String>,
}

impl Registry {
    /// Every signature of the image `digest` cosign may have stored, classic ones first, at most
    /// [`MAX_SIGNATURES`] of each format; none when there are none.
    pub async fn signatures(
        &self,
        image: &ModuleRef,
        digest: &Digest,
    ) -> Result<Vec<Signature>, RegistryError> {
        let mut signatures = self.classic_signatures(image, digest).await?;
        signatures.extend(self.bundle_signatures(image, digest).await?);
        Ok(signatures)
    }

    /// The classic signatures alone: one request when there are none (the `.sig` tag's 404).
    pub async fn classic_signatures(
        &self,
        image: &ModuleRef,
        digest: &Digest,
    ) -> Result<Vec<Signature>, RegistryError> {
        Ok(self
            .cosign_signatures(image, digest)
            .await?
            .into_iter()
            .map(|s| Signature::Classic {
                payload: s.payload,
                signature: s.signature,
                has_tlog_entry: s.has_tlog_entry,
            })
            .collect())
    }

    /// The Sigstore bundles alone, as [`Signature`]s.
    pub async fn bundle_signatures(
        &self,
        image: &ModuleRef,
        digest: &Digest,
    ) -> Result<Vec<Signature>, RegistryError> {
        Ok(self
            .sigstore_bundles(image, digest)
            .await?
            .into_iter()
            .map(Signature::Bundle)
            .collect())
    }

    /// The Sigstore bundles among the referrers of `digest`: each referrer whose artifact type
    /// (or, when the index does not say, whose manifest) is a bundle, its layer's bytes verified
    /// against their digest.
    pub async fn sigstore_bundles(
        &self,
        image: &ModuleRef,
        digest: &Digest,
    ) -> Result<Vec<Vec<u8>>, RegistryError> {
        let referrers = self.referrers(image, digest).await?;
        let mut bundles = Vec::new();
        for referrer in referrers
            .iter()
            .filter(|r| {
                r.artifact_type
                    .as_deref()
                    .is_none_or(|t| t.starts_with(BUNDLE_MEDIA_TYPE_PREFIX))
            })
            .take(MAX_SIGNATURES)
        {
            let Ok(manifest_digest) = referrer.digest.parse::<Digest>() else {
                continue;
            };
            if let Some(bundle) = self.bundle_of(image, &manifest_digest).await? {
                bundles.push(bundle);
            }
        }
        Ok(bundles)
    }

    /// The referrers of `digest`: the referrers API, else (a 404, as from registries that do not
    /// have it) the referrers tag schema; none when neither has any.
    async fn referrers(
        &self,
        image: &ModuleRef,
        digest: &Digest,
    ) -> Result<Vec<Referrer>, RegistryError> {
        let url = self.http.url(image, "referrers", &digest.to_string());
        let exchange = self
            .http
            .exchange(Method::GET, image, &url, OCI_INDEX_MEDIA_TYPE)
            .await?;
        let body = if exchange.response.status() == reqwest::StatusCode::NOT_FOUND {
            drop(exchange);
            match self.get_manifest(image, &referrers_tag(digest)).await {
                Ok((raw, _)) => raw,
                Err(RegistryError::Status { status: 404, .. }) => return Ok(Vec::new()),
                Err(e) => return Err(e),
            }
        } else {
            self.small_body(
                exchange.response,
                &url,
                MAX_REFERRERS_BYTES,
                "the referrers index",
            )
            .await?
        };
        let index: ReferrersIndex = serde_json::from_slice(&body).map_err(|e| {
            RegistryError::BadManifest(format!("the referrers index cannot be read: {e}"))
        })?;
        Ok(index.manifests)
    }

    /// The bundle document of the referrer manifest at `manifest_digest`, or `None` when the
    /// manifest is no bundle (an attestation, an SBOM).
    async fn bundle_of(
        &self,
        image: &ModuleRef,
        manifest_digest: &Digest,
    ) -> Result<Option<Vec<u8>>, RegistryError> {
        let (raw, _) = self
            .get_manifest(image, &manifest_digest.to_string())
            .await?;
        if Digest::of(&raw) != *manifest_digest {
            return Err(RegistryError::BadManifest(format!(
                "the referrer {manifest_digest} has other bytes than its digest"
            )));
        }
        let manifest: OciImageManifest = serde_json::from_slice(&raw).map_err(|e| {
            RegistryError::BadManifest(format!(
                "the referrer {manifest_digest} cannot be read: {e}"
            ))
        })?;
        let Some(layer) = manifest
            .layers
            .iter()
            .find(|l| l.media_type.starts_with(BUNDLE_MEDIA_TYPE_PREFIX))
        else {
            return Ok(None);
        };
        let layer_digest: Digest = layer.digest.parse().map_err(|_| {
            RegistryError::BadManifest(format!(
                "the bundle layer {:?} is not a sha256 digest",
                layer.digest
            ))
        })?;
        self.small_blob(image, &layer_digest, MAX_BUNDLE_BYTES, "a Sigstore bundle")
            .await
            .map(Some)
    }

    /// The classic cosign signatures of the image `digest` in `image`'s repository: none when
    /// the signature tag does not exist. A layer that is no simple signing payload, or has no
    /// signature annotation, is skipped; at most [`MAX_SIGNATURES`] are read.
    async fn cosign_signatures(
        &self,
        image: &ModuleRef,
        digest: &Digest,
    ) -> Result<Vec<CosignSignature>, RegistryError> {
        let raw = match self.get_manifest(image, &signature_tag(digest)).await {
            Ok((raw, _)) => raw,
            Err(RegistryError::Status { status: 404, .. }) => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let manifest: OciImageManifest = serde_json::from_slice(&raw).map_err(|e| {
            RegistryError::BadManifest(format!("the signature manifest cannot be read: {e}"))
        })?;
        let mut signatures = Vec::new();
        for layer in manifest
            .layers
            .iter()
            .filter(|l| l.media_type == SIMPLE_SIGNING_MEDIA_TYPE)
            .take(MAX_SIGNATURES)
        {
            let annotations = layer.annotations.as_ref();
            let Some(encoded) = annotations.and_then(|a| a.get(SIGNATURE_ANNOTATION)) else {
                continue;
            };
            // Undecodable base64 is kept as no bytes: it then fails verification and says so.
            let signature = base64::engine::general_purpose::STANDARD
                .decode(encoded.trim())
                .unwrap_or_default();
            let payload_digest: Digest = layer.digest.parse().map_err(|_| {
                RegistryError::BadManifest(format!(
                    "the signature layer {:?} is not a sha256 digest",
                    layer.digest
                ))
            })?;
            let payload = self
                .small_blob(
                    image,
                    &payload_digest,
                    MAX_PAYLOAD_BYTES,
                    "a signature payload",
                )
                .await?;
            signatures.push(CosignSignature {
                payload,
                signature,
                has_tlog_entry: annotations.is_some_and(|a| a.contains_key(BUNDLE_ANNOTATION)),
            });
        }
        Ok(signatures)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_tag_is_made_from_the_digest() {
        let digest = Digest::of(b"module");
        assert_eq!(
            signature_tag(&digest),
            format!("sha256-{}.sig", digest.hex())
        );
        assert!(super::super::is_digest_tag(&signature_tag(&digest)));
        assert_eq!(referrers_tag(&digest), format!("sha256-{}", digest.hex()));
        assert!(super::super::is_digest_tag(&referrers_tag(&digest)));
    }
}
