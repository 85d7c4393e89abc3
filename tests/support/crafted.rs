#![allow(dead_code)] // each test binary uses a different part of the harness
//! Hand-made input for the hardening tests: tar streams whose entries may carry PAX `path` and
//! `linkpath` records (names longer than a ustar field, or with a NUL byte), gzip at the best
//! ratio (for bombs), an image whose manifest lists no layer, surgery on blobs in a registry's
//! storage, and small file-system probes (a canary directory, staging leftovers).
//!
//! Nothing here checks what it builds: the point is to hand the operator what a careless or
//! malicious module author could push.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use flate2::{Compression, write::GzEncoder};

use super::images::{BuiltImage, MTIME, OCI_CONFIG, OCI_MANIFEST, RawTarEntry, sha256_digest};
use super::registry::TestRegistry;

/// A tar stream built entry by entry (no end-of-archive check, no path sanitising).
pub struct CraftedTar {
    builder: tar::Builder<Vec<u8>>,
}

impl Default for CraftedTar {
    fn default() -> Self {
        Self::new()
    }
}

impl CraftedTar {
    pub fn new() -> Self {
        Self {
            builder: tar::Builder::new(Vec::new()),
        }
    }

    /// `entry` with its name and link target in the ustar header fields (at most 100 bytes each).
    pub fn entry(mut self, entry: &RawTarEntry) -> Self {
        let mut header = header_for(entry);
        set_field(&mut header.as_old_mut().name, &entry.name);
        set_field(&mut header.as_old_mut().linkname, &entry.link);
        header.set_cksum();
        self.builder
            .append(&header, entry.data.as_slice())
            .expect("appending a tar entry");
        self
    }

    /// `entry` preceded by a PAX extended header whose `path` is `entry.name` and, when the entry
    /// has a link target, whose `linkpath` is `entry.link`. The ustar fields hold a placeholder
    /// that a reader must ignore.
    pub fn pax_entry(mut self, entry: &RawTarEntry) -> Self {
        let mut records = pax_record("path", &entry.name);
        if !entry.link.is_empty() {
            records.extend(pax_record("linkpath", &entry.link));
        }
        let mut pax = tar::Header::new_ustar();
        pax.set_entry_type(tar::EntryType::XHeader);
        pax.set_mode(0o644);
        pax.set_mtime(MTIME);
        pax.set_size(records.len() as u64);
        set_field(&mut pax.as_old_mut().name, b"PaxHeaders/entry");
        pax.set_cksum();
        self.builder
            .append(&pax, records.as_slice())
            .expect("appending a PAX header");
        let placeholder = RawTarEntry {
            name: b"pax-placeholder".to_vec(),
            link: if entry.link.is_empty() {
                Vec::new()
            } else {
                b"pax-placeholder-target".to_vec()
            },
            ..entry.clone()
        };
        self.entry(&placeholder)
    }

    pub fn tar(self) -> Vec<u8> {
        self.builder.into_inner().expect("finishing the tar")
    }

    /// The tar gzipped at the best ratio.
    pub fn gzip(self) -> Vec<u8> {
        gzip_best(&self.tar())
    }
}

/// A regular file entry of `size` zero bytes (cheap to gzip into almost nothing).
pub fn zeros(name: &str, size: usize) -> RawTarEntry {
    RawTarEntry::file(name, vec![0u8; size])
}

pub fn gzip_best(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = GzEncoder::new(Vec::new(), Compression::best());
    encoder.write_all(bytes).expect("gzip write");
    encoder.finish().expect("gzip finish")
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

/// One PAX record, `<len> <key>=<value>\n`, where `<len>` counts the whole record itself.
fn pax_record(key: &str, value: &[u8]) -> Vec<u8> {
    let body = key.len() + value.len() + 3; // ' ', '=', '\n'
    let mut len = body + 1;
    while len != body + len.to_string().len() {
        len = body + len.to_string().len();
    }
    let mut record = format!("{len} {key}=").into_bytes();
    record.extend_from_slice(value);
    record.push(b'\n');
    record
}

fn header_for(entry: &RawTarEntry) -> tar::Header {
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(entry.kind);
    header.set_mode(entry.mode);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(MTIME);
    header.set_size(entry.data.len() as u64);
    header
}

fn set_field(field: &mut [u8], value: &[u8]) {
    assert!(
        value.len() <= field.len(),
        "{} bytes do not fit a {}-byte tar field; use pax_entry",
        value.len(),
        field.len()
    );
    field.fill(0);
    field[..value.len()].copy_from_slice(value);
}
