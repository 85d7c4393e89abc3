#![allow(dead_code)] // each test binary uses a different part of the harness
//! Module images built in the test (tar + gzip + OCI config + OCI manifest) and pushed with `oci-client`
//! through the registry API (blobs, then the manifest), as a module author's CI would.
//!
//! Output is deterministic: fixed mtime ([`MTIME`]), uid/gid 0, entries in the order given, gzip without
//! name or timestamp, JSON written in a fixed field order. The same content always gives the same
//! manifest digest; a different `marker` in [`ModuleImage::echo_module`] gives a different one.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use flate2::{Compression, read::GzDecoder};
use oci_client::client::{Certificate, CertificateEncoding, ClientConfig, ClientProtocol};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference, RegistryOperation};
use serde_json::json;
use sha2::{Digest as _, Sha256};

use super::registry::TestRegistry;

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const OCI_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
pub use super::layers::RawTarEntry;
use super::layers::{self, DIR_MODE, FILE_MODE, LayerWriter};
const PUSH_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Clone, Debug)]
enum Entry {
    File {
        path: String,
        data: Vec<u8>,
        mode: u32,
    },
    Symlink {
        path: String,
        target: String,
    },
}

impl Entry {
    fn path(&self) -> &str {
        match self {
            Entry::File { path, .. } | Entry::Symlink { path, .. } => path,
        }
    }
}

#[derive(Clone, Debug)]
enum Layer {
    Tar(Vec<Entry>),
    Raw { bytes: Vec<u8>, media_type: String },
}

/// A module image under construction: a stack of layers, the last one receiving new entries.
#[derive(Clone, Debug)]
pub struct ModuleImage {
    layers: Vec<Layer>,
    /// `config.Entrypoint` of the image config: set for application images, none for modules.
    entrypoint: Option<String>,
}

impl Default for ModuleImage {
    fn default() -> Self {
        Self::new()
    }
}

impl ModuleImage {
    /// One empty gzip tar layer.
    pub fn new() -> Self {
        ModuleImage {
            entrypoint: None,
            layers: vec![Layer::Tar(Vec::new())],
        }
    }

    /// A regular file (mode 0644, uid/gid 0) in the current layer; parent directories get entries of
    /// their own (0755) in that layer. Adding the same path again in a layer overrides it.
    pub fn file(self, path: &str, content: impl AsRef<[u8]>) -> Self {
        self.file_with_mode(path, content, FILE_MODE)
    }

    /// Like [`Self::file`] with the given mode, written to the tar header as is (setuid bits included,
    /// for tests that check they are dropped).
    pub fn file_with_mode(self, path: &str, content: impl AsRef<[u8]>, mode: u32) -> Self {
        let entry = Entry::File {
            path: clean(path),
            data: content.as_ref().to_vec(),
            mode,
        };
        self.push_entry(entry)
    }

    pub fn symlink(self, path: &str, target: &str) -> Self {
        self.push_entry(Entry::Symlink {
            path: clean(path),
            target: target.to_string(),
        })
    }

    /// An OCI whiteout for `path` (an empty `<dir>/.wh.<name>`) in the current layer: `path` from
    /// lower layers is gone after unpacking.
    pub fn whiteout(self, path: &str) -> Self {
        let path = clean(path);
        let wh = match path.rsplit_once('/') {
            Some((dir, name)) => format!("{dir}/.wh.{name}"),
            None => format!(".wh.{path}"),
        };
        self.file(&wh, [])
    }

    /// An OCI opaque whiteout for directory `dir` (`<dir>/.wh..wh..opq`): its content from lower
    /// layers is gone, the directory itself stays.
    pub fn opaque_dir(self, dir: &str) -> Self {
        self.file(&format!("{}/.wh..wh..opq", clean(dir)), [])
    }

    /// Starts another gzip tar layer on top.
    pub fn new_layer(mut self) -> Self {
        self.layers.push(Layer::Tar(Vec::new()));
        self
    }

    /// Appends `bytes` as a layer of its own with `media_type`, unchecked (for hostile tests; see
    /// [`raw_tar`]). Entries added afterwards go to a new tar layer above it.
    pub fn raw_layer(mut self, bytes: Vec<u8>, media_type: &str) -> Self {
        self.layers.push(Layer::Raw {
            bytes,
            media_type: media_type.to_string(),
        });
        self
    }

    /// The `echo` module: [`Self::module`] with the name `echo`.
    pub fn echo_module(weight: u32, marker: &str) -> Self {
        Self::module("echo", weight, marker)
    }

    /// A realistic module called `name` (use distinct names for tests running in parallel: MPOs are
    /// cluster-scoped and `module.yaml`'s name must equal the MPO's): `module.yaml` (name, weight),
    /// `openapi/config-values.yaml`, `openapi/values.yaml`, `templates/deployment.yaml`,
    /// `images_digests.json`, and `version.json` = `{"version":"<marker>"}` so two builds differ.
    pub fn module(name: &str, weight: u32, marker: &str) -> Self {
        let image_digest = format!(
            "sha256:{}",
            hex::encode(Sha256::digest(format!("{name}/{marker}")))
        );
        Self::new()
            .file("module.yaml", format!("name: {name}\nweight: {weight}\ndescription: test module {name}\n"))
            .file(
                "openapi/config-values.yaml",
                "type: object\nproperties:\n  replicas:\n    type: integer\n    default: 1\n    minimum: 0\n",
            )
            .file(
                "openapi/values.yaml",
                "x-extend:\n  schema: config-values.yaml\ntype: object\nproperties:\n  internal:\n    type: object\n    default: {}\n",
            )
            .file("templates/deployment.yaml", deployment_yaml(name))
            .file("images_digests.json", json!({ name: image_digest }).to_string())
            .file("version.json", json!({ "version": marker }).to_string())
    }

    /// The regular files expected after unpacking, sorted by path, with later layers winning and OCI
    /// whiteouts applied; symlinks and directories are not listed, raw layers are ignored.
    pub fn files(&self) -> Vec<(String, Vec<u8>)> {
        self.unpacked()
            .into_iter()
            .filter_map(|(path, node)| match node {
                Node::File(data, _) => Some((path, data)),
                _ => None,
            })
            .collect()
    }

    /// The regular files with their modes (as written to the tar headers).
    pub fn file_modes(&self) -> Vec<(String, u32)> {
        self.unpacked()
            .into_iter()
            .filter_map(|(path, node)| match node {
                Node::File(_, mode) => Some((path, mode)),
                _ => None,
            })
            .collect()
    }

    /// The symlinks expected after unpacking: (path, target).
    pub fn symlinks(&self) -> Vec<(String, String)> {
        self.unpacked()
            .into_iter()
            .filter_map(|(path, node)| match node {
                Node::Symlink(target) => Some((path, target)),
                _ => None,
            })
            .collect()
    }

    /// An image meant to run (as a module's application images are): its config names `path`
    /// as the entrypoint.
    pub fn entrypoint(mut self, path: &str) -> Self {
        self.entrypoint = Some(path.to_owned());
        self
    }

    /// Builds every blob and the manifest without pushing (to know layer digests, e.g. to corrupt one
    /// with `TestRegistry::blob_path`).
    pub fn build(&self) -> Result<BuiltImage> {
        let mut layers = Vec::with_capacity(self.layers.len());
        let mut diff_ids = Vec::with_capacity(self.layers.len());
        for (i, layer) in self.layers.iter().enumerate() {
            let (data, media_type, diff_id) = match layer {
                Layer::Tar(entries) => {
                    let tar =
                        tar_bytes(entries).with_context(|| format!("building tar layer {i}"))?;
                    let gz = gzip(&tar).with_context(|| format!("compressing layer {i}"))?;
                    (gz, OCI_LAYER_GZIP.to_string(), sha256_digest(&tar))
                }
                Layer::Raw { bytes, media_type } => (
                    bytes.clone(),
                    media_type.clone(),
                    raw_diff_id(bytes, media_type),
                ),
            };
            diff_ids.push(diff_id);
            layers.push(Blob::new(data, media_type));
        }
        // Field order fixed by hand (serde_json may or may not preserve insertion order).
        let run = match &self.entrypoint {
            Some(path) => serde_json::json!({ "Entrypoint": [path] }).to_string(),
            None => "{}".to_owned(),
        };
        let config = format!(
            r#"{{"architecture":"amd64","os":"linux","config":{run},"rootfs":{{"type":"layers","diff_ids":{}}}}}"#,
            serde_json::to_string(&diff_ids).context("encoding diff_ids")?
        );
        let config = Blob::new(config.into_bytes(), OCI_CONFIG.to_string());
        let layer_descs: Vec<String> = layers.iter().map(Blob::descriptor).collect();
        let manifest = format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{},"layers":[{}]}}"#,
            config.descriptor(),
            layer_descs.join(",")
        )
        .into_bytes();
        let digest = sha256_digest(&manifest);
        Ok(BuiltImage {
            manifest,
            digest,
            config,
            layers,
        })
    }

    fn push_entry(mut self, entry: Entry) -> Self {
        match self.layers.last_mut() {
            Some(Layer::Tar(entries)) => entries.push(entry),
            _ => self.layers.push(Layer::Tar(vec![entry])),
        }
        self
    }

    /// The tree after applying the layers in order (OCI semantics: a layer's whiteouts hide paths of
    /// the layers below it; a non-directory entry replaces whatever was at its path, subtree included).
    fn unpacked(&self) -> BTreeMap<String, Node> {
        let mut tree: BTreeMap<String, Node> = BTreeMap::new();
        for layer in &self.layers {
            let Layer::Tar(entries) = layer else { continue };
            for entry in entries {
                if let Some((dir, name)) = whiteout_of(entry.path()) {
                    if name.is_empty() {
                        remove_subtree(&mut tree, &dir, false);
                    } else {
                        remove_subtree(&mut tree, &join(&dir, &name), true);
                    }
                }
            }
            for entry in entries {
                if whiteout_of(entry.path()).is_some() {
                    continue;
                }
                for parent in parents(entry.path()) {
                    tree.insert(parent, Node::Dir);
                }
                remove_subtree(&mut tree, entry.path(), true);
                let node = match entry {
                    Entry::File { data, mode, .. } => Node::File(data.clone(), *mode),
                    Entry::Symlink { target, .. } => Node::Symlink(target.clone()),
                };
                tree.insert(entry.path().to_string(), node);
            }
        }
        tree
    }
}

#[derive(Clone, Debug)]
enum Node {
    File(Vec<u8>, u32),
    Symlink(String),
    Dir,
}

/// A blob as pushed: bytes, digest, media type.
#[derive(Clone, Debug)]
pub struct Blob {
    pub digest: String,
    pub media_type: String,
    pub data: Vec<u8>,
}

impl Blob {
    fn new(data: Vec<u8>, media_type: String) -> Self {
        Blob {
            digest: sha256_digest(&data),
            media_type,
            data,
        }
    }

    fn descriptor(&self) -> String {
        format!(
            r#"{{"mediaType":"{}","digest":"{}","size":{}}}"#,
            self.media_type,
            self.digest,
            self.data.len()
        )
    }
}

/// Everything [`push_built`] sends: the exact manifest bytes and their digest, the config and the layers.
#[derive(Clone, Debug)]
pub struct BuiltImage {
    pub manifest: Vec<u8>,
    /// `sha256:…` of `manifest`, which is what the registry reports for the tag.
    pub digest: String,
    pub config: Blob,
    pub layers: Vec<Blob>,
}

/// Pushes `image` to `<reg host>/<repository>:<tag>` (blobs, then the manifest, with the registry's
/// credentials and CA) and returns the manifest digest `sha256:…`.
pub async fn push(
    reg: &TestRegistry,
    repository: &str,
    tag: &str,
    image: &ModuleImage,
) -> Result<String> {
    let built = image.build()?;
    push_built(reg, repository, tag, &built).await
}

/// Pushes an already built image; returns its manifest digest after checking the registry agrees.
pub async fn push_built(
    reg: &TestRegistry,
    repository: &str,
    tag: &str,
    built: &BuiltImage,
) -> Result<String> {
    let reference = Reference::with_tag(
        reg.host().to_string(),
        repository.to_string(),
        tag.to_string(),
    );
    let client = Pusher::connect(reg, &reference).await?;
    client.push_blobs(&reference, built).await?;
    client
        .push_manifest(&reference, &built.manifest, OCI_MANIFEST, &built.digest)
        .await?;
    Ok(built.digest.clone())
}

/// A registry outside the harness (the demo's), as [`push_to`] reaches it.
pub struct PushTarget {
    pub https: bool,
    pub ca_pem: Option<String>,
    pub credentials: Option<(String, String)>,
}

/// Pushes an already built image to `<host>/<repository>:<tag>` of any registry.
pub async fn push_to(
    target: &PushTarget,
    host: &str,
    repository: &str,
    tag: &str,
    built: &BuiltImage,
) -> Result<String> {
    let reference = Reference::with_tag(host.to_string(), repository.to_string(), tag.to_string());
    let client = Pusher::connect_to(target, &reference).await?;
    client.push_blobs(&reference, built).await?;
    client
        .push_manifest(&reference, &built.manifest, OCI_MANIFEST, &built.digest)
        .await?;
    Ok(built.digest.clone())
}

/// Pushes each image by digest, then an OCI image index under `tag` listing them with the given
/// platforms (`(os, architecture)`, e.g. `("linux", "arm64")`). Returns the index digest.
pub async fn push_index(
    reg: &TestRegistry,
    repository: &str,
    tag: &str,
    images: &[((&str, &str), &BuiltImage)],
) -> Result<String> {
    let entries: Vec<IndexEntry> = images
        .iter()
        .map(|&(platform, image)| IndexEntry {
            image,
            platform: Some(platform),
            annotations: Vec::new(),
        })
        .collect();
    push_index_of(reg, repository, tag, &entries).await
}

/// One manifest of an index as [`push_index_of`] writes it.
pub struct IndexEntry<'a> {
    pub image: &'a BuiltImage,
    /// `(os, architecture)`; `None` writes no `platform`.
    pub platform: Option<(&'a str, &'a str)>,
    pub annotations: Vec<(&'a str, String)>,
}

/// Pushes each entry's image by digest, then an OCI index of them, in order, under `tag`.
pub async fn push_index_of(
    reg: &TestRegistry,
    repository: &str,
    tag: &str,
    entries: &[IndexEntry<'_>],
) -> Result<String> {
    let tagged = Reference::with_tag(
        reg.host().to_string(),
        repository.to_string(),
        tag.to_string(),
    );
    let client = Pusher::connect(reg, &tagged).await?;
    let mut descriptors = Vec::with_capacity(entries.len());
    for entry in entries {
        let built = entry.image;
        let by_digest = Reference::with_digest(
            reg.host().to_string(),
            repository.to_string(),
            built.digest.clone(),
        );
        client.push_blobs(&by_digest, built).await?;
        client
            .push_manifest(&by_digest, &built.manifest, OCI_MANIFEST, &built.digest)
            .await?;
        let mut descriptor = serde_json::json!({
            "mediaType": OCI_MANIFEST,
            "digest": built.digest,
            "size": built.manifest.len(),
        });
        if !entry.annotations.is_empty() {
            let annotations: serde_json::Map<String, serde_json::Value> = entry
                .annotations
                .iter()
                .map(|(k, v)| (k.to_string(), serde_json::Value::from(v.as_str())))
                .collect();
            descriptor["annotations"] = annotations.into();
        }
        if let Some((os, arch)) = entry.platform {
            descriptor["platform"] = serde_json::json!({ "architecture": arch, "os": os });
        }
        descriptors.push(descriptor);
    }
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": descriptors,
    }))
    .context("encoding the index")?;
    let digest = sha256_digest(&index);
    client
        .push_manifest(&tagged, &index, OCI_INDEX, &digest)
        .await?;
    Ok(digest)
}

/// Pushes one tiny image under every name as a tag of `repository` (the root repository's tags are the
/// module names, SPEC §1).
pub async fn push_module_names(reg: &TestRegistry, repository: &str, names: &[&str]) -> Result<()> {
    let built = ModuleImage::new()
        .file("README.md", "module list placeholder\n")
        .build()?;
    for name in names {
        push_built(reg, repository, name, &built)
            .await
            .with_context(|| format!("pushing the module name tag {repository}:{name}"))?;
    }
    Ok(())
}

/// Many module-name tags on one small image: its blobs once, then its manifest under each name,
/// sixteen PUTs at a time (a source with thousands of modules in seconds, not minutes).
pub async fn push_many_module_names(
    reg: &TestRegistry,
    repository: &str,
    names: &[String],
) -> Result<()> {
    use futures::{StreamExt as _, TryStreamExt as _};
    let Some(first) = names.first() else {
        return Ok(());
    };
    let built = ModuleImage::new()
        .file("README.md", "module list placeholder\n")
        .build()?;
    let reference = |tag: &str| {
        Reference::with_tag(
            reg.host().to_string(),
            repository.to_string(),
            tag.to_string(),
        )
    };
    let client = Pusher::connect(reg, &reference(first)).await?;
    client.push_blobs(&reference(first), &built).await?;
    futures::stream::iter(names)
        .map(|name| {
            let (client, built, target) = (&client, &built, reference(name));
            async move {
                client
                    .push_manifest(&target, &built.manifest, OCI_MANIFEST, &built.digest)
                    .await
            }
        })
        .buffer_unordered(16)
        .try_collect::<Vec<()>>()
        .await?;
    Ok(())
}

/// A module `name` with `files/blob.bin` holding `size` bytes of incompressible pseudo-random data
/// (seeded from `name`, so deterministic) and a `module.yaml`.
pub fn large_module(name: &str, size: usize) -> ModuleImage {
    ModuleImage::new()
        .file("module.yaml", format!("name: {name}\nweight: 900\n"))
        .file("files/blob.bin", pseudo_random(seed_from(name), size))
}

/// A tar (gzipped when `gzip`) of `entries` exactly as given, for [`ModuleImage::raw_layer`] with
/// [`OCI_LAYER_GZIP`] or [`OCI_LAYER_TAR`].
pub fn raw_tar(entries: &[RawTarEntry], gzip_it: bool) -> Result<Vec<u8>> {
    let mut writer = LayerWriter::new(Vec::new());
    for entry in entries {
        writer.raw(entry).context("appending a raw tar entry")?;
    }
    let tar = writer.finish().context("finishing the raw tar")?;
    if gzip_it { gzip(&tar) } else { Ok(tar) }
}

/// Client plus credentials for one registry, authenticated for pushing.
struct Pusher {
    client: Client,
}

impl Pusher {
    async fn connect(reg: &TestRegistry, reference: &Reference) -> Result<Self> {
        let target = PushTarget {
            https: reg.kind().has_tls(),
            ca_pem: reg.ca_pem().map(str::to_owned),
            credentials: reg
                .credentials()
                .map(|(user, password)| (user.to_string(), password.to_string())),
        };
        Self::connect_to(&target, reference).await
    }

    async fn connect_to(target: &PushTarget, reference: &Reference) -> Result<Self> {
        let extra_root_certificates = target
            .ca_pem
            .as_ref()
            .map(|pem| Certificate {
                encoding: CertificateEncoding::Pem,
                data: pem.as_bytes().to_vec(),
            })
            .into_iter()
            .collect();
        let protocol = if target.https {
            ClientProtocol::Https
        } else {
            ClientProtocol::Http
        };
        let client = Client::new(ClientConfig {
            protocol,
            extra_root_certificates,
            connect_timeout: Some(Duration::from_secs(10)),
            read_timeout: Some(PUSH_TIMEOUT),
            ..Default::default()
        });
        let auth = match &target.credentials {
            Some((user, password)) => RegistryAuth::Basic(user.clone(), password.clone()),
            None => RegistryAuth::Anonymous,
        };
        client
            .auth(reference, &auth, RegistryOperation::Push)
            .await
            .with_context(|| format!("authenticating to {} for push", reference.registry()))?;
        Ok(Pusher { client })
    }

    /// Layers, then config (the order a registry expects before the manifest that references them).
    async fn push_blobs(&self, reference: &Reference, built: &BuiltImage) -> Result<()> {
        for blob in built.layers.iter().chain(std::iter::once(&built.config)) {
            self.client
                .push_blob(reference, blob.data.clone(), &blob.digest)
                .await
                .with_context(|| {
                    format!(
                        "pushing blob {} ({}) to {reference}",
                        blob.digest, blob.media_type
                    )
                })?;
        }
        Ok(())
    }

    /// PUTs the exact `bytes` and checks the registry's `Location` names `digest`.
    async fn push_manifest(
        &self,
        reference: &Reference,
        bytes: &[u8],
        media_type: &str,
        digest: &str,
    ) -> Result<()> {
        let content_type = media_type
            .parse()
            .context("manifest media type as a header value")?;
        let location = self
            .client
            .push_manifest_raw(reference, bytes.to_vec(), content_type)
            .await
            .with_context(|| format!("pushing manifest {digest} to {reference}"))?;
        if !location.ends_with(digest) {
            bail!(
                "registry stored the manifest for {reference} at {location}, expected digest {digest}"
            );
        }
        Ok(())
    }
}

fn deployment_yaml(name: &str) -> String {
    format!(
        r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: {name}
  namespace: d8-{name}
spec:
  replicas: {{{{ .Values.{name}.replicas }}}}
  selector:
    matchLabels:
      app: {name}
  template:
    metadata:
      labels:
        app: {name}
    spec:
      containers:
        - name: {name}
          image: {{{{ include "helm_lib_module_image" (list . "{name}") }}}}
          args: ["-text", "hello from {name}"]
          ports:
            - containerPort: 5678
"#
    )
}

/// Normalises a path as tests write it: no leading `./`, no trailing `/`.
fn clean(path: &str) -> String {
    let mut p = path;
    while let Some(rest) = p.strip_prefix("./") {
        p = rest;
    }
    p.trim_end_matches('/').to_string()
}

fn join(dir: &str, name: &str) -> String {
    if dir.is_empty() {
        name.to_string()
    } else {
        format!("{dir}/{name}")
    }
}

/// `a/b/c` → `["a", "a/b"]`.
fn parents(path: &str) -> Vec<String> {
    let parts: Vec<&str> = path.split('/').collect();
    (1..parts.len()).map(|n| parts[..n].join("/")).collect()
}

/// For a whiteout entry, `(dir, hidden name)`; the name is empty for an opaque whiteout.
fn whiteout_of(path: &str) -> Option<(String, String)> {
    let (dir, base) = path.rsplit_once('/').unwrap_or(("", path));
    if base == ".wh..wh..opq" {
        return Some((dir.to_string(), String::new()));
    }
    base.strip_prefix(".wh.")
        .map(|name| (dir.to_string(), name.to_string()))
}

/// Removes everything below `path` (and `path` itself when `inclusive`).
fn remove_subtree(tree: &mut BTreeMap<String, Node>, path: &str, inclusive: bool) {
    let prefix = if path.is_empty() {
        String::new()
    } else {
        format!("{path}/")
    };
    tree.retain(|p, _| !(p.starts_with(&prefix) || (inclusive && p == path)));
}

/// One layer's tar: directory entries for parents first (once each), then the entries in order.
fn tar_bytes(entries: &[Entry]) -> Result<Vec<u8>> {
    let mut writer = LayerWriter::new(Vec::new());
    let mut dirs_written = BTreeSet::new();
    for entry in entries {
        for dir in parents(entry.path()) {
            if dirs_written.insert(dir.clone()) {
                writer
                    .dir(&format!("{dir}/"), DIR_MODE)
                    .with_context(|| format!("tar directory entry {dir}/"))?;
            }
        }
        match entry {
            Entry::File { path, data, mode } => writer
                .file(path, *mode, data.len() as u64, data.as_slice())
                .with_context(|| format!("tar file entry {path}"))?,
            Entry::Symlink { path, target } => writer
                .symlink(path, target)
                .with_context(|| format!("tar symlink entry {path} -> {target}"))?,
        }
    }
    writer.finish().context("finishing the tar")
}

fn gzip(data: &[u8]) -> Result<Vec<u8>> {
    // fast(): the large-module tests push tens of MiB of incompressible data on 2 cores.
    Ok(layers::gzip(data, Compression::fast()))
}

/// diff_id of a raw layer: sha256 of its uncompressed form when it is gzip and decodes, else of the bytes.
fn raw_diff_id(bytes: &[u8], media_type: &str) -> String {
    if media_type.ends_with("gzip") {
        let mut plain = Vec::new();
        if GzDecoder::new(bytes).read_to_end(&mut plain).is_ok() {
            return sha256_digest(&plain);
        }
    }
    sha256_digest(bytes)
}

pub fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

fn seed_from(name: &str) -> u64 {
    // FNV-1a: stable across runs and platforms, unlike std's RandomState.
    name.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// splitmix64 stream: fast, deterministic, and incompressible enough for gzip.
fn pseudo_random(mut state: u64, size: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(size + 8);
    while out.len() < size {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        out.extend_from_slice(&(z ^ (z >> 31)).to_le_bytes());
    }
    out.truncate(size);
    out
}
