//! Which manifest of an image index a module is taken from.
//!
//! A module image is files, not a program: any platform's manifest serves. What an index holds
//! besides images must not count: BuildKit's default push adds an attestation manifest (platform
//! `unknown/unknown`, annotation `vnd.docker.reference.type: attestation-manifest`), so a module
//! built on an arm64 laptop arrives as `[linux/arm64, unknown/unknown]`.

use oci_client::manifest::ImageIndexEntry;

use super::RegistryError;

/// BuildKit's annotation on the manifests it adds for provenance and SBOM attestations.
const REFERENCE_TYPE: &str = "vnd.docker.reference.type";
const ATTESTATION: &str = "attestation-manifest";
const UNKNOWN: &str = "unknown";

/// The entry chosen from an index, and why (for the logs).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChosenPlatform {
    pub digest: String,
    /// `linux/amd64`, `linux/arm64/v8`, or `unspecified` for an entry without a platform.
    pub platform: String,
    pub reason: ChoiceReason,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChoiceReason {
    /// linux/amd64 is there: what `docker pull` takes on the usual cluster node.
    LinuxAmd64,
    /// The index holds one image (attestations aside).
    OnlyImage,
    /// Several images, none linux/amd64: the first linux one, in index order.
    FirstLinux,
}

impl std::fmt::Display for ChoiceReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::LinuxAmd64 => "linux/amd64 is preferred",
            Self::OnlyImage => "the only image in the index",
            Self::FirstLinux => "no linux/amd64; the first linux image",
        })
    }
}

/// Drops attestations and `unknown/unknown` entries, then takes linux/amd64, else the only
/// image left, else the first linux one. An index with none of these is refused, naming what it
/// holds.
pub fn choose_platform(entries: &[ImageIndexEntry]) -> Result<ChosenPlatform, RegistryError> {
    let images: Vec<&ImageIndexEntry> = entries.iter().filter(|e| !is_attestation(e)).collect();
    let chosen = |entry: &ImageIndexEntry, reason| ChosenPlatform {
        digest: entry.digest.clone(),
        platform: platform_name(entry),
        reason,
    };
    if let Some(amd64) = images.iter().find(|e| is(e, "linux", Some("amd64"))) {
        return Ok(chosen(amd64, ChoiceReason::LinuxAmd64));
    }
    if let [only] = images.as_slice() {
        return Ok(chosen(only, ChoiceReason::OnlyImage));
    }
    if let Some(linux) = images.iter().find(|e| is(e, "linux", None)) {
        return Ok(chosen(linux, ChoiceReason::FirstLinux));
    }
    Err(RegistryError::NoPlatform {
        platforms: entries.iter().map(platform_name).collect(),
    })
}

/// An attestation manifest (BuildKit provenance, SBOM) or any `unknown/unknown` entry: metadata
/// about an image, never the image.
fn is_attestation(entry: &ImageIndexEntry) -> bool {
    let annotated = entry
        .annotations
        .as_ref()
        .and_then(|a| a.get(REFERENCE_TYPE))
        .is_some_and(|kind| kind == ATTESTATION);
    annotated || is(entry, UNKNOWN, Some(UNKNOWN))
}

/// The entry's os and architecture as the index spells them (GOOS/GOARCH names).
fn os_arch(entry: &ImageIndexEntry) -> Option<(String, String)> {
    let platform = entry.platform.as_ref()?;
    Some((platform.os.to_string(), platform.architecture.to_string()))
}

fn is(entry: &ImageIndexEntry, os: &str, arch: Option<&str>) -> bool {
    os_arch(entry).is_some_and(|(o, a)| o == os && arch.is_none_or(|arch| a == arch))
}

/// `os/arch[/variant]` as docker writes it, or `unspecified`.
fn platform_name(entry: &ImageIndexEntry) -> String {
    match &entry.platform {
        None => "unspecified".into(),
        Some(p) => {
            let mut name = format!("{}/{}", p.os, p.architecture);
            if let Some(variant) = p.variant.as_deref().filter(|v| !v.is_empty()) {
                name.push('/');
                name.push_str(variant);
            }
            name
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use oci_client::manifest::OciImageIndex;

    use super::*;

    fn index(json: &str) -> Vec<ImageIndexEntry> {
        serde_json::from_str::<OciImageIndex>(json)
            .unwrap()
            .manifests
    }

    const A: &str = "sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    const B: &str = "sha256:bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";
    const C: &str = "sha256:cccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccc";

    /// `docker buildx build --push` on an arm64 laptop, as BuildKit documents its attestation
    /// storage (docs/attestations/attestation-storage.md): the image, then its provenance.
    fn buildkit_arm64_with_provenance() -> String {
        format!(
            r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[
            {{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{A}","size":673,"platform":{{"architecture":"arm64","os":"linux"}}}},
            {{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{B}","size":566,
              "annotations":{{"vnd.docker.reference.digest":"{A}","vnd.docker.reference.type":"attestation-manifest"}},
              "platform":{{"architecture":"unknown","os":"unknown"}}}}]}}"#
        )
    }

    #[test]
    fn a_buildkit_attestation_does_not_count() {
        let chosen = choose_platform(&index(&buildkit_arm64_with_provenance())).unwrap();
        assert_eq!(chosen.digest, A);
        assert_eq!(chosen.platform, "linux/arm64");
        assert_eq!(chosen.reason, ChoiceReason::OnlyImage);
    }

    #[test]
    fn linux_amd64_wins_wherever_it_stands() {
        // A Docker Hub style manifest list (docker manifest create) of arm64/v8 then amd64.
        let list = format!(
            r#"{{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.list.v2+json","manifests":[
            {{"mediaType":"application/vnd.docker.distribution.manifest.v2+json","digest":"{A}","size":528,"platform":{{"architecture":"arm64","os":"linux","variant":"v8"}}}},
            {{"mediaType":"application/vnd.docker.distribution.manifest.v2+json","digest":"{B}","size":528,"platform":{{"architecture":"amd64","os":"linux"}}}}]}}"#
        );
        let chosen = choose_platform(&index(&list)).unwrap();
        assert_eq!(
            (chosen.digest.as_str(), chosen.reason),
            (B, ChoiceReason::LinuxAmd64)
        );
    }

    #[test]
    fn without_amd64_the_first_linux_image_is_taken() {
        // GHCR and Quay serve what was pushed: here windows, arm64/v8, s390x and an attestation.
        let list = format!(
            r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[
            {{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{C}","size":1,"platform":{{"architecture":"amd64","os":"windows","os.version":"10.0.17763.1"}}}},
            {{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{A}","size":1,"platform":{{"architecture":"arm64","os":"linux","variant":"v8"}}}},
            {{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{B}","size":1,"platform":{{"architecture":"s390x","os":"linux"}}}},
            {{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{B}","size":1,"annotations":{{"vnd.docker.reference.type":"attestation-manifest"}},"platform":{{"architecture":"unknown","os":"unknown"}}}}]}}"#
        );
        let chosen = choose_platform(&index(&list)).unwrap();
        assert_eq!(chosen.digest, A);
        assert_eq!(chosen.platform, "linux/arm64/v8");
        assert_eq!(chosen.reason, ChoiceReason::FirstLinux);
    }

    #[test]
    fn a_multi_platform_buildx_push_with_an_attestation_each_takes_amd64() {
        // `docker buildx build --platform linux/arm64,linux/amd64 --push` (GHCR, Docker Hub,
        // Harbor and ECR store it as pushed): the images in the order built, then one provenance
        // attestation per image.
        let index_json = format!(
            r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[
            {{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{A}","size":673,"platform":{{"architecture":"arm64","os":"linux"}}}},
            {{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{B}","size":673,"platform":{{"architecture":"amd64","os":"linux"}}}},
            {{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{C}","size":566,"annotations":{{"vnd.docker.reference.digest":"{A}","vnd.docker.reference.type":"attestation-manifest"}},"platform":{{"architecture":"unknown","os":"unknown"}}}},
            {{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{C}","size":566,"annotations":{{"vnd.docker.reference.digest":"{B}","vnd.docker.reference.type":"attestation-manifest"}},"platform":{{"architecture":"unknown","os":"unknown"}}}}]}}"#
        );
        let chosen = choose_platform(&index(&index_json)).unwrap();
        assert_eq!(
            (chosen.digest.as_str(), chosen.reason),
            (B, ChoiceReason::LinuxAmd64)
        );
    }

    #[test]
    fn one_entry_without_a_platform_serves() {
        // `buildah manifest` of one image without --arch, or an index written by hand.
        let list = format!(
            r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{A}","size":1}}]}}"#
        );
        let chosen = choose_platform(&index(&list)).unwrap();
        assert_eq!(
            (chosen.platform.as_str(), chosen.reason),
            ("unspecified", ChoiceReason::OnlyImage)
        );
    }

    #[test]
    fn an_index_of_attestations_or_foreign_systems_is_refused_naming_them() {
        let only_attestation = format!(
            r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{B}","size":1,"platform":{{"architecture":"unknown","os":"unknown"}}}}]}}"#
        );
        let err = choose_platform(&index(&only_attestation)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "the image index holds no module image (its entries: unknown/unknown)"
        );
        let windows = format!(
            r#"{{"schemaVersion":2,"manifests":[
            {{"mediaType":"m","digest":"{A}","size":1,"platform":{{"architecture":"amd64","os":"windows"}}}},
            {{"mediaType":"m","digest":"{B}","size":1,"platform":{{"architecture":"arm64","os":"darwin"}}}}]}}"#
        );
        let err = choose_platform(&index(&windows)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "the image index holds no module image (its entries: windows/amd64, darwin/arm64)"
        );
        assert!(choose_platform(&[]).is_err());
    }
}
