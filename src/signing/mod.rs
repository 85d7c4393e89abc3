//! Signature verification of module images (issue #21), as cosign writes signatures: a
//! *simple signing* payload naming the image's manifest digest and repository, signed with a
//! key pair whose public half the ModuleSource trusts. Pure: no registry, no Kubernetes; the
//! caller fetches the payload and the signature, this layer says whether they hold.
//!
//! The cryptography is RustCrypto's (`p256`, `rsa`, `ed25519-dalek`), never written here.

mod keys;
mod payload;

pub use keys::{KeyAlgorithm, PublicKey};
pub use payload::SimpleSigning;

/// Why a signature does not make an image trusted. Each says which check failed, in one line,
/// and never carries key material.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
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
    pub payload: SimpleSigning,
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
    let payload = SimpleSigning::parse(payload).map_err(Refusal::Malformed)?;
    if payload.digest != digest {
        return Err(Refusal::OtherImage {
            signed: payload.digest,
            expected: digest.to_owned(),
        });
    }
    if !same_repository(&payload.reference, repository) {
        return Err(Refusal::OtherRepository {
            signed: payload.reference,
            expected: repository.to_owned(),
        });
    }
    Ok(Verified {
        key: key.fingerprint().to_owned(),
        payload,
    })
}

/// Of several signatures of one image, the first that verifies; else the refusal that says the
/// most (an image signed for another repository tells more than "not verified").
pub fn check_any<'a>(
    keys: &[PublicKey],
    signatures: impl IntoIterator<Item = (&'a [u8], &'a [u8])>,
    digest: &str,
    repository: &str,
) -> Result<Verified, Refusal> {
    let mut refusal = Refusal::Unsigned;
    for (payload, signature) in signatures {
        match check(keys, payload, signature, digest, repository) {
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
