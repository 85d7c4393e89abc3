//! The simple signing payload cosign signs (the "cosign container image signature" format):
//! `{"critical": {"identity": {"docker-reference": …}, "image": {"docker-manifest-digest": …},
//! "type": …}, "optional": {…}}`.

use std::collections::BTreeMap;

use serde::Deserialize;

const SIGNATURE_TYPE: &str = "cosign container image signature";
/// A payload is a few hundred bytes; anything much larger is not one.
pub const MAX_PAYLOAD_BYTES: usize = 64 * 1024;

/// What a signature says of the image, whichever format it came in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Claim {
    /// `critical.image.docker-manifest-digest`, or the statement subject's sha256 digest.
    pub digest: String,
    /// `critical.identity.docker-reference`, or the statement subject's name.
    pub reference: String,
    /// `optional` (or the statement's predicate): the signer's annotations (`cosign sign -a
    /// key=value`), shown, never trusted for anything.
    pub annotations: BTreeMap<String, serde_json::Value>,
}

#[derive(Deserialize)]
struct Document {
    critical: Critical,
    #[serde(default)]
    optional: Option<BTreeMap<String, serde_json::Value>>,
}

#[derive(Deserialize)]
struct Critical {
    identity: Identity,
    image: Image,
    #[serde(rename = "type")]
    kind: String,
}

#[derive(Deserialize)]
struct Identity {
    #[serde(rename = "docker-reference")]
    reference: String,
}

#[derive(Deserialize)]
struct Image {
    #[serde(rename = "docker-manifest-digest")]
    digest: String,
}

impl Claim {
    /// Reads a simple signing payload whose signature already verified. The error is one line
    /// for the status.
    pub fn parse_simple_signing(bytes: &[u8]) -> Result<Self, String> {
        if bytes.len() > MAX_PAYLOAD_BYTES {
            return Err(format!(
                "the payload has {} bytes, more than a signature payload has",
                bytes.len()
            ));
        }
        let document: Document = serde_json::from_slice(bytes)
            .map_err(|e| format!("the payload is not a simple signing document ({e})"))?;
        if !document.critical.kind.eq_ignore_ascii_case(SIGNATURE_TYPE) {
            return Err(format!(
                "the payload's type is {:?}, not {SIGNATURE_TYPE:?}",
                document.critical.kind
            ));
        }
        Ok(Self {
            digest: document.critical.image.digest,
            reference: document.critical.identity.reference,
            annotations: document.optional.unwrap_or_default(),
        })
    }
}
