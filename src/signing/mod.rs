//! Signature verification of module images (issue #21), in both formats cosign writes: the
//! classic *simple signing* payload (cosign v2's default) and the Sigstore bundle with an
//! in-toto statement (cosign v3's default). Either names the image's manifest digest and
//! repository and is signed with a key pair whose public half the ModuleSource trusts. Pure: no
//! registry, no Kubernetes; the caller fetches the signatures, this layer says whether they hold.
//!
//! The cryptography is RustCrypto's (`p256`, `rsa`, `ed25519-dalek`), never written here.

mod bundle;
mod keys;
mod payload;

pub use bundle::BUNDLE_MEDIA_TYPE_PREFIX;
pub use keys::{KeyAlgorithm, PublicKey};
pub use payload::Claim;

/// One signature of an image as the registry holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Signature {
    /// A layer of cosign's `sha256-<hex>.sig` manifest: the simple signing payload and the
    /// signature over it; `has_tlog_entry` when cosign attached a Rekor bundle annotation.
    Classic {
        payload: Vec<u8>,
        signature: Vec<u8>,
        has_tlog_entry: bool,
    },
    /// A Sigstore bundle document, as stored in a referrer's layer.
    Bundle(Vec<u8>),
}

/// Which of cosign's formats a verified signature came in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// The `sha256-<hex>.sig` tag (cosign v2).
    Classic,
    /// A Sigstore bundle referrer (cosign v3).
    Bundle,
}

impl Format {
    pub fn name(self) -> &'static str {
        match self {
            Self::Classic => "classic",
            Self::Bundle => "bundle",
        }
    }

    /// Where cosign stored it, for messages.
    pub fn description(self) -> &'static str {
        match self {
            Self::Classic => "a classic .sig signature",
            Self::Bundle => "a Sigstore bundle referrer",
        }
    }
}

/// Why a signature does not make an image trusted. Each says which check failed, in one line,
/// and never carries key material.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum Refusal {
    #[error("the image has no signature")]
    Unsigned,
    #[error(
        "its signature does not verify with any of the {keys} trusted keys (signed with another key, or the payload was altered)"
    )]
    NotVerified { keys: usize },
    #[error("its signature is of another image ({signed}), not {expected}")]
    OtherImage { signed: String, expected: String },
    #[error("its signature names another repository ({signed}), not {expected}")]
    OtherRepository { signed: String, expected: String },
    #[error("its signature is malformed: {0}")]
    Malformed(String),
}

impl Refusal {
    /// PascalCase, for the `Verified` condition's reason and metric labels.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Unsigned => "Unsigned",
            Self::NotVerified { .. } => "NotVerified",
            Self::OtherImage { .. } => "OtherImage",
            Self::OtherRepository { .. } => "OtherRepository",
            Self::Malformed(_) => "Malformed",
        }
    }
}

/// Errors of reading trusted keys.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error(
        "not a PEM public key of a supported kind (ECDSA P-256, RSA or Ed25519 in a PUBLIC KEY or RSA PUBLIC KEY block)"
    )]
    Unsupported,
    #[error("an ECDSA key on a curve other than P-256")]
    OtherCurve,
}

/// What a verified signature established.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verified {
    /// The fingerprint of the key that verified it ([`PublicKey::fingerprint`]).
    pub key: String,
    pub payload: Claim,
    pub format: Format,
    /// The signature carries a transparency-log entry, which is not checked (offline, keyed).
    pub has_tlog_entry: bool,
}

/// Checks one signature of the image `digest` in `repository` (`host/path`, no tag): the
/// signature over `payload` verifies with one of `keys`, and the payload names that digest and
/// that repository. The signature is checked before the payload is read, so nothing an
/// attacker wrote is trusted before it verifies.
pub fn check(
    keys: &[PublicKey],
    payload: &[u8],
    signature: &[u8],
    digest: &str,
    repository: &str,
) -> Result<Verified, Refusal> {
    let key = keys
        .iter()
        .find(|key| key.verifies(payload, signature))
        .ok_or(Refusal::NotVerified { keys: keys.len() })?;
    let claim = Claim::parse_simple_signing(payload).map_err(Refusal::Malformed)?;
    names_the_image(&claim, digest, repository)?;
    Ok(Verified {
        key: key.fingerprint().to_owned(),
        payload: claim,
        format: Format::Classic,
        has_tlog_entry: false,
    })
}

/// Checks a Sigstore bundle of the image `digest` in `repository`, as [`check`] does a classic
/// signature: the envelope's signature (over DSSE's pre-authentication encoding) verifies with
/// one of `keys` before its statement is read, and the statement has a subject with that digest
/// named for that repository.
pub fn check_bundle(
    keys: &[PublicKey],
    document: &[u8],
    digest: &str,
    repository: &str,
) -> Result<Verified, Refusal> {
    let bundle = bundle::Bundle::parse(document).map_err(Refusal::Malformed)?;
    let key = bundle
        .signed_by(keys)
        .ok_or(Refusal::NotVerified { keys: keys.len() })?;
    let statement = bundle::Statement::parse(&bundle.payload_type, &bundle.payload)
        .map_err(Refusal::Malformed)?;
    let subject = statement
        .subjects
        .iter()
        .find(|s| s.digest.as_deref() == Some(digest))
        .ok_or_else(|| Refusal::OtherImage {
            signed: statement
                .subjects
                .iter()
                .find_map(|s| s.digest.clone())
                .unwrap_or_else(|| "no sha256 subject".into()),
            expected: digest.to_owned(),
        })?;
    // cosign v3 names the subject by digest only: the digest binds the signature to the exact
    // image content wherever it is stored. A name, when a signer gives one, must still match.
    // An empty reference says so to the reader (`SIGNED FOR` shows the digest only).
    let claim = Claim {
        digest: digest.to_owned(),
        reference: subject.name.clone(),
        annotations: subject.annotations.clone(),
    };
    if !claim.reference.is_empty() {
        names_the_image(&claim, digest, repository)?;
    }
    Ok(Verified {
        key: key.fingerprint().to_owned(),
        payload: claim,
        format: Format::Bundle,
        has_tlog_entry: bundle.has_tlog_entry,
    })
}

/// Checks one stored signature, whichever its format.
pub fn check_signature(
    keys: &[PublicKey],
    signature: &Signature,
    digest: &str,
    repository: &str,
) -> Result<Verified, Refusal> {
    match signature {
        Signature::Classic {
            payload,
            signature,
            has_tlog_entry,
        } => check(keys, payload, signature, digest, repository).map(|verified| Verified {
            has_tlog_entry: *has_tlog_entry,
            ..verified
        }),
        Signature::Bundle(document) => check_bundle(keys, document, digest, repository),
    }
}

fn names_the_image(claim: &Claim, digest: &str, repository: &str) -> Result<(), Refusal> {
    if claim.digest != digest {
        return Err(Refusal::OtherImage {
            signed: claim.digest.clone(),
            expected: digest.to_owned(),
        });
    }
    if !same_repository(&claim.reference, repository) {
        return Err(Refusal::OtherRepository {
            signed: claim.reference.clone(),
            expected: repository.to_owned(),
        });
    }
    Ok(())
}

/// Of several signatures of one image, the first that verifies; else the refusal that says the
/// most (an image signed for another repository tells more than "not verified").
pub fn check_any<'a>(
    keys: &[PublicKey],
    signatures: impl IntoIterator<Item = &'a Signature>,
    digest: &str,
    repository: &str,
) -> Result<Verified, Refusal> {
    let mut refusal = Refusal::Unsigned;
    for signature in signatures {
        match check_signature(keys, signature, digest, repository) {
            Ok(verified) => return Ok(verified),
            Err(refused) => {
                if rank(&refused) >= rank(&refusal) {
                    refusal = refused;
                }
            }
        }
    }
    Err(refusal)
}

fn rank(refusal: &Refusal) -> u8 {
    match refusal {
        Refusal::Unsigned => 0,
        Refusal::Malformed(_) => 1,
        Refusal::NotVerified { .. } => 2,
        Refusal::OtherImage { .. } | Refusal::OtherRepository { .. } => 3,
    }
}

/// The payload's `docker-reference` is the repository as the signer named it, sometimes with a
/// tag; Docker Hub's short names mean `index.docker.io`.
fn same_repository(signed: &str, repository: &str) -> bool {
    let signed = strip_tag(signed);
    normalize(signed) == normalize(repository)
}

fn strip_tag(reference: &str) -> &str {
    let reference = reference.split('@').next().unwrap_or(reference);
    match reference.rsplit_once(':') {
        // A colon after the last slash is a tag; before it, a port.
        Some((name, tag)) if !tag.contains('/') => name,
        _ => reference,
    }
}

fn normalize(repository: &str) -> String {
    let repository = repository.to_ascii_lowercase();
    for hub in ["docker.io/", "registry-1.docker.io/"] {
        if let Some(path) = repository.strip_prefix(hub) {
            return format!("index.docker.io/{path}");
        }
    }
    repository
}

#[cfg(test)]
mod tests;
