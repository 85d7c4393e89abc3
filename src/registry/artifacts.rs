//! Tags that name no module and no version: the artifacts signing and attestation tools store
//! beside an image, under a tag made from the image's digest. cosign writes
//! `sha256-<hex>.sig`, `.att` and `.sbom`; the OCI 1.1 referrers tag schema (the fallback on
//! registries without the referrers API, cosign v3's default there) writes `sha256-<hex>`.
//! Listed as tags, they would show up as module names of a source and as versions of a module.

/// Whether `tag` is such an artifact's tag: `<algorithm>-<hex digest>`, optionally with a
/// cosign suffix. The digest must be whole (64 hex digits for sha256, 128 for sha512), so a
/// version tag that merely starts with `sha256-` stays a version.
pub fn is_digest_tag(tag: &str) -> bool {
    let stem = [".sig", ".att", ".sbom"]
        .iter()
        .find_map(|suffix| tag.strip_suffix(suffix))
        .unwrap_or(tag);
    let Some((algorithm, hex)) = stem.split_once('-') else {
        return false;
    };
    let length = match algorithm {
        "sha256" => 64,
        "sha512" => 128,
        _ => return false,
    };
    hex.len() == length && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX: &str = "2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae";

    #[test]
    fn cosign_and_referrers_tags_are_artifacts() {
        for suffix in ["", ".sig", ".att", ".sbom"] {
            assert!(is_digest_tag(&format!("sha256-{HEX}{suffix}")), "{suffix}");
        }
        assert!(is_digest_tag(&format!("sha512-{HEX}{HEX}.sig")));
    }

    #[test]
    fn versions_and_module_names_are_not() {
        for tag in [
            "v1.2.3",
            "main",
            "sha256",
            "sha256-",
            "sha256-abc.sig",
            &format!("sha256-{HEX}.sig.old"),
            &format!("sha256-{}.sig", HEX.to_uppercase()),
            &format!("sha256-{HEX}0"),
            &format!("sha512-{HEX}"),
            &format!("md5-{HEX}"),
            &format!("release-sha256-{HEX}"),
        ] {
            assert!(!is_digest_tag(tag), "{tag}");
        }
    }
}
