//! What a manifest holds, told from its media types: the layer encodings the unpacker reads, and
//! the things that are no module image (a Helm chart, a signature or other OCI artifact, a Docker
//! schema 1 manifest, a foreign layer), each refused with a message naming what it is.

use oci_client::manifest;

use super::{LayerMediaType, RegistryError};

pub const OCI_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
const DOCKER_FOREIGN_LAYER: &str = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip";
/// OCI's non-distributable layers (deprecated in image-spec 1.1, still written by Windows tools).
const OCI_NONDISTRIBUTABLE_PREFIX: &str = "application/vnd.oci.image.layer.nondistributable.";
const HELM_CONFIG: &str = "application/vnd.cncf.helm.config.v1+json";
const IMAGE_CONFIGS: [&str; 2] = [
    "application/vnd.oci.image.config.v1+json",
    "application/vnd.docker.container.image.v1+json",
];
const OCI_EMPTY: &str = "application/vnd.oci.empty.v1+json";

/// What the manifest is when it is not a module image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NotAModule {
    HelmChart,
    /// Docker's image manifest schema 1 (deprecated, removed from Docker 28): no layer digests
    /// we could verify the way a schema 2 manifest lets us.
    Schema1,
    /// An OCI artifact: a signature, an SBOM, anything `oras push` or cosign writes. Its
    /// `artifactType`, else its config's media type.
    Artifact(String),
}

impl std::fmt::Display for NotAModule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::HelmChart => f.write_str("a Helm chart (OCI artifact), not a module image"),
            Self::Schema1 => f.write_str(
                "a Docker schema 1 manifest, which is not supported: push the image again with a current tool",
            ),
            Self::Artifact(kind) => write!(f, "an OCI artifact of type {kind:?}, not a module image"),
        }
    }
}

/// The encoding of a layer the unpacker can read, or why it cannot.
pub fn layer_media_type(media_type: &str) -> Result<LayerMediaType, RegistryError> {
    match media_type {
        manifest::IMAGE_LAYER_GZIP_MEDIA_TYPE | manifest::IMAGE_DOCKER_LAYER_GZIP_MEDIA_TYPE => {
            Ok(LayerMediaType::TarGzip)
        }
        OCI_LAYER_ZSTD => Ok(LayerMediaType::TarZstd),
        manifest::IMAGE_LAYER_MEDIA_TYPE | manifest::IMAGE_DOCKER_LAYER_TAR_MEDIA_TYPE => {
            Ok(LayerMediaType::Tar)
        }
        foreign if is_foreign(foreign) => Err(RegistryError::ForeignLayer(foreign.to_owned())),
        other => Err(RegistryError::UnsupportedMediaType(other.to_owned())),
    }
}

fn is_foreign(media_type: &str) -> bool {
    media_type == DOCKER_FOREIGN_LAYER || media_type.starts_with(OCI_NONDISTRIBUTABLE_PREFIX)
}

/// Refuses a manifest that is plainly no module image before any layer is looked at: a Helm
/// chart, or an artifact (an `artifactType`, or the empty config artifacts use).
pub fn refuse_artifacts(
    config_media_type: &str,
    artifact_type: Option<&str>,
) -> Result<(), RegistryError> {
    if config_media_type == HELM_CONFIG {
        return Err(RegistryError::NotAModule(NotAModule::HelmChart));
    }
    if let Some(kind) = artifact_type.filter(|kind| !kind.is_empty()) {
        return Err(RegistryError::NotAModule(NotAModule::Artifact(
            kind.to_owned(),
        )));
    }
    if config_media_type == OCI_EMPTY {
        return Err(RegistryError::NotAModule(NotAModule::Artifact(
            config_media_type.to_owned(),
        )));
    }
    Ok(())
}

/// A layer the unpacker cannot read, explained by the config when the config says the whole
/// thing is no image (`oras push` with a custom config type).
pub fn unreadable_layer(config_media_type: &str, layer_error: RegistryError) -> RegistryError {
    match layer_error {
        RegistryError::UnsupportedMediaType(_) if !IMAGE_CONFIGS.contains(&config_media_type) => {
            RegistryError::NotAModule(NotAModule::Artifact(config_media_type.to_owned()))
        }
        other => other,
    }
}

/// A schema 1 manifest, told by its `schemaVersion` (registries serve one whatever `Accept`
/// says). Checked before the digest: a signed schema 1 manifest's digest is not of its bytes,
/// and "digest mismatch" would send the user looking in the wrong place.
pub fn refuse_schema1(raw: &[u8]) -> Result<(), RegistryError> {
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Version {
        schema_version: Option<u32>,
    }
    match serde_json::from_slice::<Version>(raw) {
        Ok(Version {
            schema_version: Some(1),
        }) => Err(RegistryError::NotAModule(NotAModule::Schema1)),
        _ => Ok(()),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn layer_encodings_the_unpacker_reads() {
        for (media_type, expected) in [
            (
                "application/vnd.oci.image.layer.v1.tar+gzip",
                LayerMediaType::TarGzip,
            ),
            (
                "application/vnd.docker.image.rootfs.diff.tar.gzip",
                LayerMediaType::TarGzip,
            ),
            (
                "application/vnd.oci.image.layer.v1.tar+zstd",
                LayerMediaType::TarZstd,
            ),
            (
                "application/vnd.oci.image.layer.v1.tar",
                LayerMediaType::Tar,
            ),
            (
                "application/vnd.docker.image.rootfs.diff.tar",
                LayerMediaType::Tar,
            ),
        ] {
            assert_eq!(
                layer_media_type(media_type).unwrap(),
                expected,
                "{media_type}"
            );
        }
    }

    #[test]
    fn foreign_layers_are_named_as_such() {
        for media_type in [
            "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
            "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
            "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
        ] {
            let err = layer_media_type(media_type).unwrap_err();
            assert!(matches!(err, RegistryError::ForeignLayer(_)), "{err:?}");
            assert!(err.to_string().contains("foreign"), "{err}");
        }
        let err =
            layer_media_type("application/vnd.cncf.helm.chart.content.v1.tar+gzip").unwrap_err();
        assert!(
            matches!(err, RegistryError::UnsupportedMediaType(_)),
            "{err:?}"
        );
    }

    #[test]
    fn charts_and_artifacts_are_refused_for_what_they_are() {
        let helm = refuse_artifacts(HELM_CONFIG, None).unwrap_err();
        assert_eq!(
            helm.to_string(),
            "the image is a Helm chart (OCI artifact), not a module image"
        );
        let signature = refuse_artifacts(
            OCI_EMPTY,
            Some("application/vnd.dev.sigstore.bundle.v0.3+json"),
        )
        .unwrap_err();
        assert_eq!(
            signature.to_string(),
            r#"the image is an OCI artifact of type "application/vnd.dev.sigstore.bundle.v0.3+json", not a module image"#
        );
        assert!(refuse_artifacts(OCI_EMPTY, None).is_err());
        assert!(refuse_artifacts(IMAGE_CONFIGS[0], None).is_ok());
        assert!(refuse_artifacts(IMAGE_CONFIGS[1], Some("")).is_ok());

        let oras = unreadable_layer(
            "application/vnd.example.config+json",
            RegistryError::UnsupportedMediaType("text/plain".into()),
        );
        assert!(
            matches!(oras, RegistryError::NotAModule(NotAModule::Artifact(_))),
            "{oras:?}"
        );
        let odd_layer = unreadable_layer(
            IMAGE_CONFIGS[0],
            RegistryError::UnsupportedMediaType("text/plain".into()),
        );
        assert!(
            matches!(odd_layer, RegistryError::UnsupportedMediaType(_)),
            "{odd_layer:?}"
        );
    }

    #[test]
    fn schema1_is_told_by_its_version() {
        let schema1 = br#"{"schemaVersion":1,"name":"m","tag":"t","architecture":"amd64","fsLayers":[],"history":[],"signatures":[]}"#;
        let err = refuse_schema1(schema1).unwrap_err();
        assert!(err.to_string().contains("schema 1"), "{err}");
        assert!(refuse_schema1(br#"{"schemaVersion":2}"#).is_ok());
        assert!(
            refuse_schema1(b"not json").is_ok(),
            "left to the manifest parser"
        );
    }
}
