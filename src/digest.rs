//! The content digest shared by the registry and storage layers.

use std::{fmt, str::FromStr};

/// A `sha256:<64 hex>` content digest. Other algorithms are refused: the on-disk layout is keyed
/// by the hex part, and sha256 is what registries return for manifests.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest {
    hex: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0:?} is not a sha256 digest")]
pub struct DigestParseError(pub String);

impl Digest {
    /// The 64 lowercase hex characters, used as a directory name.
    pub fn hex(&self) -> &str {
        &self.hex
    }

    /// The digest of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        use sha2::Digest as _;
        Self {
            hex: hex::encode(sha2::Sha256::digest(bytes)),
        }
    }

    pub fn from_hex(hex: &str) -> Result<Self, DigestParseError> {
        let valid = hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        if valid {
            Ok(Self {
                hex: hex.to_owned(),
            })
        } else {
            Err(DigestParseError(hex.to_owned()))
        }
    }
}

impl FromStr for Digest {
    type Err = DigestParseError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let hex = text
            .strip_prefix("sha256:")
            .ok_or_else(|| DigestParseError(text.to_owned()))?;
        Self::from_hex(hex).map_err(|_| DigestParseError(text.to_owned()))
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.hex)
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_other_forms() {
        let d = Digest::of(b"hello");
        assert_eq!(d.to_string().parse::<Digest>(), Ok(d.clone()));
        assert_eq!(d.hex().len(), 64);
        for bad in ["sha512:ab", "sha256:XYZ", d.hex(), "sha256:../../etc"] {
            assert!(bad.parse::<Digest>().is_err(), "{bad}");
        }
    }
}
