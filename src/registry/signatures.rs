//! cosign's classic signatures (cosign v2's default): an OCI manifest tagged
//! `sha256-<hex of the image's digest>.sig` in the image's own repository, one layer per
//! signature. Each layer is the simple signing payload, with the signature in the layer's
//! `dev.cosignproject.cosign/signature` annotation (base64). Only fetched here; whether they hold
//! is for [`crate::signing`].

use base64::Engine as _;
use oci_client::manifest::OciImageManifest;

use super::{ModuleRef, Registry, RegistryError};
use crate::Digest;

pub const SIMPLE_SIGNING_MEDIA_TYPE: &str = "application/vnd.dev.cosign.simplesigning.v1+json";
const SIGNATURE_ANNOTATION: &str = "dev.cosignproject.cosign/signature";
/// The Rekor inclusion proof cosign attaches when it uploaded to a transparency log.
const BUNDLE_ANNOTATION: &str = "dev.sigstore.cosign/bundle";
/// A payload is a few hundred bytes.
const MAX_PAYLOAD_BYTES: usize = 64 * 1024;
/// Signatures of one image looked at: each is one blob GET, and an attacker may add many.
const MAX_SIGNATURES: usize = 8;

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

impl Registry {
    /// The classic cosign signatures of the image `digest` in `image`'s repository: none when
    /// the signature tag does not exist. A layer that is no simple signing payload, or has no
    /// signature annotation, is skipped; at most [`MAX_SIGNATURES`] are read.
    pub async fn cosign_signatures(
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
    }
}
