#![allow(dead_code)] // each test binary uses a different part of the harness
//! Hand-made input for the hardening tests (hostile tar streams themselves come from
//! [`super::layers`]): gzip at the best ratio (for bombs), an image whose manifest lists no
//! layer, surgery on blobs in a registry's storage, and small file-system probes (a canary
//! directory, staging leftovers).
//!
//! Nothing here checks what it builds: the point is to hand the operator what a careless or
//! malicious module author could push.

use std::path::{Path, PathBuf};

use flate2::Compression;

use super::images::{BuiltImage, OCI_CONFIG, OCI_MANIFEST, sha256_digest};
use super::layers::RawTarEntry;
use super::registry::TestRegistry;

/// A regular file entry of `size` zero bytes (cheap to gzip into almost nothing).
pub fn zeros(name: &str, size: usize) -> RawTarEntry {
    RawTarEntry::file(name, vec![0u8; size])
}

pub fn gzip_best(bytes: &[u8]) -> Vec<u8> {
    super::layers::gzip(bytes, Compression::best())
}

/// An image whose manifest lists no layer at all (and whose config has no diff_id), which
/// registries accept but is no module. `marker` goes into the config so that digests differ.
pub fn without_layers(marker: &str) -> BuiltImage {
    let config_bytes = format!(
        r#"{{"architecture":"amd64","os":"linux","config":{{"Labels":{{"marker":"{marker}"}}}},"rootfs":{{"type":"layers","diff_ids":[]}}}}"#
    )
    .into_bytes();
    let config = super::images::Blob {
        digest: sha256_digest(&config_bytes),
        media_type: OCI_CONFIG.to_string(),
        data: config_bytes,
    };
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":"{OCI_CONFIG}","digest":"{}","size":{}}},"layers":[]}}"#,
        config.digest,
        config.data.len()
    )
    .into_bytes();
    BuiltImage {
        digest: sha256_digest(&manifest),
        manifest,
        config,
        layers: Vec::new(),
    }
}

/// A manifest of `config_media_type` with `config` and `layers` (`(bytes, media type)`), as
/// artifact tools write them (Helm, oras), or an image with a layer type we refuse.
pub fn artifact(config_media_type: &str, config: &[u8], layers: &[(Vec<u8>, &str)]) -> BuiltImage {
    let blob = |data: Vec<u8>, media_type: &str| super::images::Blob {
        digest: sha256_digest(&data),
        media_type: media_type.to_owned(),
        data,
    };
    let config = blob(config.to_vec(), config_media_type);
    let layers: Vec<_> = layers
        .iter()
        .map(|(bytes, media_type)| blob(bytes.clone(), media_type))
        .collect();
    let descriptor = |b: &super::images::Blob| serde_json::json!({ "mediaType": b.media_type, "digest": b.digest, "size": b.data.len() });
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": descriptor(&config),
        "layers": layers.iter().map(descriptor).collect::<Vec<_>>(),
    }))
    .expect("manifest JSON");
    BuiltImage {
        digest: sha256_digest(&manifest),
        manifest,
        config,
        layers,
    }
}

/// The attestation manifest BuildKit pushes beside `image` by default (`docker buildx build
/// --push`, provenance mode=min), as its docs/attestations/attestation-storage.md lays it out:
/// an image manifest for platform unknown/unknown whose one layer is an in-toto statement.
/// Goes in the index with [`buildkit_attestation_annotations`].
pub fn buildkit_attestation(image: &BuiltImage) -> BuiltImage {
    let statement = serde_json::to_vec(&serde_json::json!({
        "_type": "https://in-toto.io/Statement/v0.1",
        "predicateType": "https://slsa.dev/provenance/v0.2",
        "subject": [{ "name": "pkg:docker/module@dev", "digest": { "sha256": image.digest.trim_start_matches("sha256:") } }],
        "predicate": { "builder": { "id": "" }, "buildType": "https://mobyproject.org/buildkit@v1", "metadata": { "buildInvocationID": "mpo-test" } },
    }))
    .expect("statement JSON");
    let config = format!(
        r#"{{"architecture":"unknown","os":"unknown","config":{{}},"rootfs":{{"type":"layers","diff_ids":["{}"]}}}}"#,
        sha256_digest(&statement)
    );
    let mut attestation = artifact(
        OCI_CONFIG,
        config.as_bytes(),
        &[(statement, "application/vnd.in-toto+json")],
    );
    // The layer carries BuildKit's predicate annotation; rebuild the manifest with it.
    let layer = &attestation.layers[0];
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": { "mediaType": OCI_CONFIG, "digest": attestation.config.digest, "size": attestation.config.data.len() },
        "layers": [{
            "mediaType": "application/vnd.in-toto+json",
            "digest": layer.digest,
            "size": layer.data.len(),
            "annotations": { "in-toto.io/predicate-type": "https://slsa.dev/provenance/v0.2" },
        }],
    }))
    .expect("manifest JSON");
    attestation.digest = sha256_digest(&manifest);
    attestation.manifest = manifest;
    attestation
}

/// The index annotations BuildKit puts on the attestation of `image`.
pub fn buildkit_attestation_annotations(image: &BuiltImage) -> Vec<(&'static str, String)> {
    vec![
        ("vnd.docker.reference.digest", image.digest.clone()),
        (
            "vnd.docker.reference.type",
            "attestation-manifest".to_owned(),
        ),
    ]
}

/// Overwrites the stored bytes of blob `digest` with other bytes of the same length, so that only
/// a digest check (not a size check) can notice.
pub fn corrupt_blob(registry: &TestRegistry, digest: &str) {
    let path = registry.blob_path(digest);
    let mut bytes = std::fs::read(&path).expect("stored blob");
    let middle = bytes.len() / 2;
    for byte in bytes.iter_mut().skip(middle).take(64) {
        *byte ^= 0x5a;
    }
    std::fs::write(&path, bytes).expect("rewrite stored blob");
}

/// Deletes the stored bytes of blob `digest` (the manifest still names it).
pub fn delete_blob(registry: &TestRegistry, digest: &str) {
    let path = registry.blob_path(digest);
    std::fs::remove_file(&path).expect("remove stored blob");
}

/// A directory next to the operator's download directory that no module may ever write into.
pub struct Canary {
    pub path: PathBuf,
}

impl Canary {
    pub fn beside(download_dir: &Path) -> Self {
        let path = download_dir
            .parent()
            .expect("download dir has a parent")
            .join("canary");
        std::fs::create_dir_all(&path).expect("canary dir");
        Self { path }
    }

    /// Everything in the canary directory (it must stay empty).
    pub fn contents(&self) -> Vec<String> {
        names_in(&self.path)
    }
}

/// The names in `dir`, sorted (empty when it does not exist).
pub fn names_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// Leftover `.staging-*` directories of a module.
pub fn staging_dirs(module_dir: &Path) -> Vec<String> {
    names_in(module_dir)
        .into_iter()
        .filter(|n| n.starts_with(".staging-"))
        .collect()
}
