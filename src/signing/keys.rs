//! Trusted public keys in PEM, as `cosign generate-key-pair` writes them (ECDSA P-256 in a
//! `PUBLIC KEY` block) and as `cosign import-key-pair` accepts them (RSA, Ed25519).

use p256::pkcs8::{DecodePublicKey as _, EncodePublicKey as _};
use rsa::pkcs1::DecodeRsaPublicKey as _;
use sha2::{Digest as _, Sha256};

use super::KeyError;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyAlgorithm {
    EcdsaP256,
    Rsa,
    Ed25519,
}

impl KeyAlgorithm {
    pub fn name(self) -> &'static str {
        match self {
            Self::EcdsaP256 => "ECDSA P-256",
            Self::Rsa => "RSA",
            Self::Ed25519 => "Ed25519",
        }
    }
}

#[derive(Clone, Debug)]
enum Inner {
    EcdsaP256(p256::ecdsa::VerifyingKey),
    Rsa(rsa::pkcs1v15::VerifyingKey<Sha256>),
    Ed25519(ed25519_dalek::VerifyingKey),
}

/// A public key trusted to sign modules.
#[derive(Clone, Debug)]
pub struct PublicKey {
    inner: Inner,
    fingerprint: String,
}

impl PublicKey {
    /// Reads one PEM block: `PUBLIC KEY` (SubjectPublicKeyInfo of any supported kind) or
    /// `RSA PUBLIC KEY` (PKCS #1).
    pub fn from_pem(pem: &str) -> Result<Self, KeyError> {
        let pem = pem.trim();
        let inner = if let Ok(key) = p256::ecdsa::VerifyingKey::from_public_key_pem(pem) {
            Inner::EcdsaP256(key)
        } else if let Ok(key) = rsa::PublicKey::from_public_key_pem(pem) {
            Inner::Rsa(rsa::pkcs1v15::VerifyingKey::new(key))
        } else if let Ok(key) = rsa::PublicKey::from_pkcs1_pem(pem) {
            Inner::Rsa(rsa::pkcs1v15::VerifyingKey::new(key))
        } else if let Ok(key) = ed25519_dalek::VerifyingKey::from_public_key_pem(pem) {
            Inner::Ed25519(key)
        } else if pem.contains("BEGIN PUBLIC KEY") && is_other_curve(pem) {
            return Err(KeyError::OtherCurve);
        } else {
            return Err(KeyError::Unsupported);
        };
        let fingerprint = fingerprint_of(&inner).ok_or(KeyError::Unsupported)?;
        Ok(Self { inner, fingerprint })
    }

    pub fn algorithm(&self) -> KeyAlgorithm {
        match self.inner {
            Inner::EcdsaP256(_) => KeyAlgorithm::EcdsaP256,
            Inner::Rsa(_) => KeyAlgorithm::Rsa,
            Inner::Ed25519(_) => KeyAlgorithm::Ed25519,
        }
    }

    /// `sha256:<hex>` of the key's SubjectPublicKeyInfo (DER): the same for the same key
    /// whichever PEM block it came in, and safe to print.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// Whether `signature` is this key's signature of `message`, as cosign signs: ECDSA over
    /// SHA-256 (ASN.1 DER), RSA PKCS #1 v1.5 over SHA-256, Ed25519 over the message itself.
    pub fn verifies(&self, message: &[u8], signature: &[u8]) -> bool {
        use p256::ecdsa::signature::Verifier as _;
        match &self.inner {
            Inner::EcdsaP256(key) => p256::ecdsa::Signature::from_der(signature)
                .is_ok_and(|signature| key.verify(message, &signature).is_ok()),
            Inner::Rsa(key) => rsa::pkcs1v15::Signature::try_from(signature)
                .is_ok_and(|signature| key.verify(message, &signature).is_ok()),
            Inner::Ed25519(key) => ed25519_dalek::Signature::from_slice(signature)
                .is_ok_and(|signature| key.verify_strict(message, &signature).is_ok()),
        }
    }
}

fn fingerprint_of(inner: &Inner) -> Option<String> {
    let der = match inner {
        Inner::EcdsaP256(key) => key.to_public_key_der().ok()?,
        Inner::Rsa(key) => key.as_ref().to_public_key_der().ok()?,
        Inner::Ed25519(key) => key.to_public_key_der().ok()?,
    };
    Some(format!(
        "sha256:{}",
        hex::encode(Sha256::digest(der.as_bytes()))
    ))
}

/// An EC public key whose curve is not P-256 (P-384, secp256k1): said as such, since "not a
/// supported key" would send the user looking in the wrong place.
fn is_other_curve(pem: &str) -> bool {
    use p256::pkcs8::der::{DecodePem as _, asn1::ObjectIdentifier};
    const EC_PUBLIC_KEY: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
    p256::pkcs8::spki::SubjectPublicKeyInfoOwned::from_pem(pem)
        .is_ok_and(|spki| spki.algorithm.oid == EC_PUBLIC_KEY)
}
