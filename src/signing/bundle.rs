//! Sigstore bundles (`application/vnd.dev.sigstore.bundle.v0.3+json`), what cosign v3 stores as an
//! OCI referrer of the image it signs: a DSSE envelope whose payload is an in-toto statement
//! naming the image (subject name and sha256 digest), signed over DSSE's pre-authentication
//! encoding. The bundle's verification material (a key hint, transparency-log entries) is not
//! trusted for anything: the key is one of the source's, and a log entry is only reported.

use std::collections::BTreeMap;

use base64::Engine as _;
use serde::Deserialize;

use super::{PublicKey, payload::MAX_PAYLOAD_BYTES};

pub const BUNDLE_MEDIA_TYPE_PREFIX: &str = "application/vnd.dev.sigstore.bundle";
const IN_TOTO_PAYLOAD_TYPE: &str = "application/vnd.in-toto+json";
/// The predicate type of what `cosign sign` v3 writes. Anything else signed with a trusted key
/// (an attestation from `cosign attest`: an SBOM, a provenance) says something else of the image
/// and is no signature of it: `cosign verify` does not look, we do.
pub(super) const COSIGN_SIGN_PREDICATE_TYPE: &str = "https://sigstore.dev/cosign/sign/v1";
const IN_TOTO_STATEMENT_TYPES: [&str; 2] = [
    "https://in-toto.io/Statement/v1",
    "https://in-toto.io/Statement/v0.1",
];

/// A bundle whose envelope was read; nothing of it verified yet.
#[derive(Debug)]
pub(super) struct Bundle {
    pub payload_type: String,
    pub payload: Vec<u8>,
    pub signatures: Vec<Vec<u8>>,
    pub has_tlog_entry: bool,
}

/// What a verified statement says of the image.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Statement {
    pub subjects: Vec<Subject>,
}

#[derive(Debug, PartialEq, Eq)]
pub(super) struct Subject {
    pub name: String,
    /// `sha256:<hex>`, when the subject has a sha256 digest.
    pub digest: Option<String>,
    /// The subject's annotations: cosign v3 puts the signer's `-a key=value` there.
    pub annotations: BTreeMap<String, serde_json::Value>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Document {
    media_type: String,
    #[serde(default)]
    verification_material: Option<VerificationMaterial>,
    #[serde(default)]
    dsse_envelope: Option<Envelope>,
    #[serde(default)]
    message_signature: Option<serde_json::Value>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct VerificationMaterial {
    #[serde(default)]
    tlog_entries: Vec<serde_json::Value>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Envelope {
    payload: String,
    payload_type: String,
    #[serde(default)]
    signatures: Vec<EnvelopeSignature>,
}

#[derive(Deserialize)]
struct EnvelopeSignature {
    sig: String,
}

#[derive(Deserialize)]
struct StatementDocument {
    #[serde(rename = "_type")]
    kind: String,
    #[serde(default)]
    subject: Vec<SubjectDocument>,
    #[serde(rename = "predicateType", default)]
    predicate_type: String,
}

#[derive(Deserialize)]
struct SubjectDocument {
    #[serde(default)]
    name: String,
    #[serde(default)]
    digest: BTreeMap<String, String>,
    #[serde(default)]
    annotations: BTreeMap<String, serde_json::Value>,
}

/// The most signatures of one envelope tried: each is a verification per key.
const MAX_ENVELOPE_SIGNATURES: usize = 8;

impl Bundle {
    /// Reads the envelope out of a bundle document. The error is one line for the status.
    pub fn parse(bytes: &[u8]) -> Result<Self, String> {
        let document: Document = serde_json::from_slice(bytes)
            .map_err(|e| format!("the Sigstore bundle cannot be read ({e})"))?;
        if !document.media_type.starts_with(BUNDLE_MEDIA_TYPE_PREFIX) {
            return Err(format!(
                "the bundle's media type is {:?}, not a Sigstore bundle",
                document.media_type
            ));
        }
        let Some(envelope) = document.dsse_envelope else {
            return Err(if document.message_signature.is_some() {
                "the bundle holds a message signature, which does not name the image (cosign v3 signs images with a DSSE envelope)".into()
            } else {
                "the bundle holds no DSSE envelope".into()
            });
        };
        let b64 = base64::engine::general_purpose::STANDARD;
        let payload = b64
            .decode(envelope.payload.trim())
            .map_err(|_| "the envelope's payload is not base64".to_owned())?;
        let signatures = envelope
            .signatures
            .iter()
            .take(MAX_ENVELOPE_SIGNATURES)
            // Undecodable base64 is kept as no bytes: it then fails verification and says so.
            .map(|s| b64.decode(s.sig.trim()).unwrap_or_default())
            .collect();
        Ok(Self {
            payload_type: envelope.payload_type,
            payload,
            signatures,
            has_tlog_entry: document
                .verification_material
                .is_some_and(|m| !m.tlog_entries.is_empty()),
        })
    }

    /// The key of `keys` that signed the envelope, if any.
    pub fn signed_by<'k>(&self, keys: &'k [PublicKey]) -> Option<&'k PublicKey> {
        let message = pre_authentication_encoding(&self.payload_type, &self.payload);
        keys.iter().find(|key| {
            self.signatures
                .iter()
                .any(|signature| key.verifies(&message, signature))
        })
    }
}

/// DSSE's PAE: what the envelope's signatures are over, binding the payload to its type.
/// `DSSEv1 <len(type)> <type> <len(body)> <body>`, lengths in ASCII decimal bytes.
pub(super) fn pre_authentication_encoding(payload_type: &str, payload: &[u8]) -> Vec<u8> {
    let mut message = format!(
        "DSSEv1 {} {payload_type} {} ",
        payload_type.len(),
        payload.len()
    )
    .into_bytes();
    message.extend_from_slice(payload);
    message
}

impl Statement {
    /// Reads the in-toto statement of an envelope whose signature already verified. Only a
    /// signature statement is accepted: an attestation is refused here, whatever it names.
    pub fn parse(payload_type: &str, payload: &[u8]) -> Result<Self, String> {
        if payload_type != IN_TOTO_PAYLOAD_TYPE {
            return Err(format!(
                "the envelope's payload type is {payload_type:?}, not {IN_TOTO_PAYLOAD_TYPE:?}"
            ));
        }
        if payload.len() > MAX_PAYLOAD_BYTES {
            return Err(format!(
                "the statement has {} bytes, more than a signature statement has",
                payload.len()
            ));
        }
        let document: StatementDocument = serde_json::from_slice(payload)
            .map_err(|e| format!("the payload is not an in-toto statement ({e})"))?;
        if !IN_TOTO_STATEMENT_TYPES.contains(&document.kind.as_str()) {
            return Err(format!(
                "the statement's type is {:?}, not an in-toto statement",
                document.kind
            ));
        }
        if document.predicate_type != COSIGN_SIGN_PREDICATE_TYPE {
            return Err(format!(
                "the statement is an attestation (predicate type {:?}), not a signature ({COSIGN_SIGN_PREDICATE_TYPE:?})",
                document.predicate_type
            ));
        }
        let subjects = document
            .subject
            .into_iter()
            .map(|s| Subject {
                digest: s.digest.get("sha256").map(|hex| format!("sha256:{hex}")),
                name: s.name,
                annotations: s.annotations,
            })
            .collect();
        Ok(Self { subjects })
    }
}
