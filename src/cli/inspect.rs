//! Registry commands: list, read and pull what a module source holds, through the operator's
//! own registry client and install pipeline.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::Arc,
};

use futures::StreamExt;
use serde::Serialize;

use super::{
    CliError,
    args::{DiffArgs, Global, Operands, PullArgs, TagsArgs},
    diff::{self, Entry},
    output::{self, Table},
    progress::TerminalProgress,
    source,
};
use crate::{
    Digest,
    install::{self, Progress},
    registry::{ModuleRef, Registry, RegistryError},
    storage::{Limits, ModuleStore},
};

/// The operator's default `--max-compressed-size`.
const MAX_COMPRESSED: u64 = 1 << 30;
/// version.json and images_digests.json are small; more is not what we read.
const MAX_METADATA_BYTES: u64 = 4 << 20;
/// Tags classified at once by `tags` (each costs a HEAD, a manifest and a config GET).
const CLASSIFY_CONCURRENCY: usize = 8;
/// Channel names in their order of stability (Deckhouse's), for sorting.
const CHANNELS: [&str; 5] = ["alpha", "beta", "early-access", "stable", "rock-solid"];

#[derive(Serialize)]
struct Named {
    name: String,
}

pub async fn modules(global: &Global, args: Operands) -> Result<(), CliError> {
    let (source, _) = args.split(&[], 0)?;
    let registry = source::registry(global, source.as_deref(), &args.repo).await?;
    let names = registry.list_modules().await.map_err(CliError::registry(
        "cannot list the modules of",
        registry.repo(),
    ))?;
    let rows: Vec<Named> = names.into_iter().map(|name| Named { name }).collect();
    output::print(global.output, &rows, |rows| {
        let mut table = Table::new(&["NAME"]);
        rows.iter().for_each(|r| table.row(vec![r.name.clone()]));
        table
    })
}

/// What a tag of `<repo>/<module>` holds, judged from its image config.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ImageKind {
    /// No entrypoint and no command: a bundle of files (`FROM scratch` + files), which is what
    /// a module image is.
    Module,
    /// Has an entrypoint or a command: an image meant to run, such as the module's
    /// applications that `images_digests.json` points at.
    Application,
    /// Not an image config (an artifact), or a manifest we do not read (no layers, an index
    /// without linux/amd64).
    Unknown,
}

#[derive(Serialize)]
struct TagRow {
    tag: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    kind: Option<ImageKind>,
    #[serde(skip_serializing_if = "Option::is_none")]
    digest: Option<String>,
    /// Why this tag could not be resolved or read (a deleted manifest or blob, a registry
    /// error): the other tags are still listed.
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

pub async fn tags(global: &Global, args: TagsArgs) -> Result<(), CliError> {
    let (source, rest) = args.operands.split(&["MODULE"], 0)?;
    let registry = source::registry(global, source.as_deref(), &args.operands.repo).await?;
    let image = module_ref(&registry, &rest[0], "latest", false)?;
    let tags = registry
        .list_tags(&image)
        .await
        .map_err(CliError::registry("cannot list the tags of", image.name()))?;
    let rows: Vec<TagRow> = if args.no_kind {
        tags.into_iter()
            .map(|tag| TagRow {
                tag,
                kind: None,
                digest: None,
                error: None,
            })
            .collect()
    } else {
        futures::stream::iter(tags)
            .map(|tag| classify_or_report(&registry, &image, tag))
            .buffered(CLASSIFY_CONCURRENCY)
            .collect()
            .await
    };
    let failed = rows.iter().filter(|r| r.error.is_some()).count();
    output::print(global.output, &rows, |rows| {
        let mut headers = vec!["TAG", "KIND", "DIGEST"];
        if failed > 0 {
            headers.push("ERROR");
        }
        let mut table = Table::new(&headers);
        for row in rows {
            let kind = row.kind.map(|k| format!("{k:?}").to_lowercase());
            table.row(vec![
                row.tag.clone(),
                kind.unwrap_or_default(),
                row.digest.clone().unwrap_or_default(),
                row.error.clone().unwrap_or_default(),
            ]);
        }
        table
    })?;
    // One unreadable tag is a row; only when every tag failed is the command a failure.
    if failed > 0 && failed == rows.len() {
        return Err(CliError::Content(format!(
            "none of the {failed} tags of {} could be read",
            image.name()
        )));
    }
    Ok(())
}

/// [`classify`], a failure reported in the tag's row instead of failing the listing.
async fn classify_or_report(registry: &Registry, image: &ModuleRef, tag: String) -> TagRow {
    match classify(registry, image, tag.clone()).await {
        Ok(row) => row,
        Err(err) => TagRow {
            tag,
            kind: None,
            digest: None,
            error: Some(err.to_string()),
        },
    }
}

async fn classify(registry: &Registry, image: &ModuleRef, tag: String) -> Result<TagRow, CliError> {
    let Ok(image) = image.with_tag(&tag) else {
        return Ok(TagRow {
            tag,
            kind: Some(ImageKind::Unknown),
            digest: None,
            error: None,
        });
    };
    let digest = registry
        .resolve(&image)
        .await
        .map_err(CliError::registry("cannot resolve", &image))?;
    let kind = match image_config(registry, &image, &digest).await {
        Ok((media_type, config)) => image_kind(&media_type, &config),
        Err(err) if is_about_content(&err) => ImageKind::Unknown,
        Err(err) => {
            return Err(CliError::registry("cannot read", image.at_digest(&digest))(
                err,
            ));
        }
    };
    Ok(TagRow {
        tag,
        kind: Some(kind),
        digest: Some(digest.to_string()),
        error: None,
    })
}

async fn image_config(
    registry: &Registry,
    image: &ModuleRef,
    digest: &Digest,
) -> Result<(String, Vec<u8>), RegistryError> {
    let manifest = registry.manifest(image, digest).await?;
    let config = registry.config_blob(image, &manifest.config).await?;
    Ok((manifest.config.media_type, config))
}

/// Failures that say what the image is (not a readable image), not that the registry failed.
fn is_about_content(err: &RegistryError) -> bool {
    matches!(
        err,
        RegistryError::BadManifest(_)
            | RegistryError::NoLayers
            | RegistryError::NoPlatform { .. }
            | RegistryError::UnsupportedMediaType(_)
            | RegistryError::ForeignLayer(_)
            | RegistryError::NotAModule(_)
    )
}

/// A module image is a bundle of files: its config runs nothing. Application images have an
/// entrypoint or a command. Configs of other media types (Helm charts, artifacts) are unknown.
pub fn image_kind(media_type: &str, config: &[u8]) -> ImageKind {
    const IMAGE_CONFIGS: [&str; 2] = [
        "application/vnd.oci.image.config.v1+json",
        "application/vnd.docker.container.image.v1+json",
    ];
    if !IMAGE_CONFIGS.contains(&media_type) {
        return ImageKind::Unknown;
    }
    let Ok(config) = serde_json::from_slice::<serde_json::Value>(config) else {
        return ImageKind::Unknown;
    };
    let runs = |key: &str| {
        config["config"][key]
            .as_array()
            .is_some_and(|args| !args.is_empty())
    };
    if runs("Entrypoint") || runs("Cmd") {
        ImageKind::Application
    } else {
        ImageKind::Module
    }
}

#[derive(Serialize)]
struct Releases {
    versions: Vec<String>,
    channels: Vec<String>,
}

pub async fn releases(global: &Global, args: Operands) -> Result<(), CliError> {
    let (source, rest) = args.split(&["MODULE"], 0)?;
    let registry = source::registry(global, source.as_deref(), &args.repo).await?;
    let releases = list_releases(&registry, &rest[0]).await?;
    output::print(global.output, &releases, |releases| {
        let mut table = Table::new(&["TAG", "KIND"]);
        for version in &releases.versions {
            table.row(vec![version.clone(), "version".into()]);
        }
        for channel in &releases.channels {
            table.row(vec![channel.clone(), "channel".into()]);
        }
        table
    })
}

async fn list_releases(registry: &Registry, module: &str) -> Result<Releases, CliError> {
    let image = module_ref(registry, module, "latest", true)?;
    let tags = registry
        .list_tags(&image)
        .await
        .map_err(CliError::registry(
            "cannot list the releases of",
            image.name(),
        ))?;
    Ok(split_releases(tags))
}

/// Versions (`v1.2.3`, semver with an optional `v`) in version order; everything else is a
/// channel, known channels in their order of stability first.
fn split_releases(tags: Vec<String>) -> Releases {
    let (mut versions, mut channels): (Vec<(semver::Version, String)>, Vec<String>) =
        (Vec::new(), Vec::new());
    for tag in tags {
        match semver::Version::parse(tag.strip_prefix('v').unwrap_or(&tag)) {
            Ok(version) => versions.push((version, tag)),
            Err(_) => channels.push(tag),
        }
    }
    versions.sort();
    let rank = |c: &String| {
        CHANNELS
            .iter()
            .position(|k| k == c)
            .unwrap_or(CHANNELS.len())
    };
    channels.sort_by(|a, b| rank(a).cmp(&rank(b)).then(a.cmp(b)));
    Releases {
        versions: versions.into_iter().map(|(_, tag)| tag).collect(),
        channels,
    }
}

#[derive(Serialize)]
struct ChannelRow {
    channel: String,
    version: String,
    digest: String,
}

pub async fn channel(global: &Global, args: Operands) -> Result<(), CliError> {
    let (source, rest) = args.split(&["MODULE"], 1)?;
    let registry = source::registry(global, source.as_deref(), &args.repo).await?;
    let module = &rest[0];
    let channels = match rest.get(1) {
        Some(channel) => vec![channel.clone()],
        None => list_releases(&registry, module).await?.channels,
    };
    let work = WorkDir::temporary()?;
    let mut rows = Vec::with_capacity(channels.len());
    for (i, channel) in channels.into_iter().enumerate() {
        let image = module_ref(&registry, module, &channel, true)?;
        let digest = resolve(&registry, &image).await?;
        let tree = fetch_tree(&registry, &image, &digest, work.path(), &format!("c{i}")).await?;
        let version = read_version(&tree, &image)?;
        rows.push(ChannelRow {
            channel,
            version,
            digest: digest.to_string(),
        });
    }
    output::print(global.output, &rows, |rows| {
        let mut table = Table::new(&["CHANNEL", "VERSION", "DIGEST"]);
        for row in rows {
            table.row(vec![
                row.channel.clone(),
                row.version.clone(),
                row.digest.clone(),
            ]);
        }
        table
    })
}

fn read_version(tree: &Path, image: &ModuleRef) -> Result<String, CliError> {
    #[derive(serde::Deserialize)]
    struct VersionJson {
        version: String,
    }
    let text = read_small(&tree.join("version.json"), image, "version.json")?;
    serde_json::from_slice::<VersionJson>(&text)
        .map(|v| v.version)
        .map_err(|e| {
            CliError::Content(format!(
                "{image}: version.json is not {{\"version\": …}}: {e}"
            ))
        })
}

pub async fn files(global: &Global, args: Operands) -> Result<(), CliError> {
    let (source, rest) = args.split(&["MODULE:TAG"], 0)?;
    let registry = source::registry(global, source.as_deref(), &args.repo).await?;
    let (image, digest) = image_at(&registry, &rest[0]).await?;
    let work = WorkDir::temporary()?;
    let tree = fetch_tree(&registry, &image, &digest, work.path(), "image").await?;
    let entries = diff::snapshot(&tree, false)?;
    output::print(global.output, &entries, |entries| {
        let mut table = Table::new(&["PATH", "TYPE", "MODE", "SIZE", "TARGET"]);
        for e in entries {
            table.row(vec![
                e.display_path(),
                format!("{:?}", e.kind).to_lowercase(),
                e.mode.clone(),
                e.size.to_string(),
                e.target.clone().unwrap_or_default(),
            ]);
        }
        table
    })
}

#[derive(Serialize)]
struct ImageRow {
    name: String,
    digest: String,
}

pub async fn images(global: &Global, args: Operands) -> Result<(), CliError> {
    let (source, rest) = args.split(&["MODULE:TAG"], 0)?;
    let registry = source::registry(global, source.as_deref(), &args.repo).await?;
    let (image, digest) = image_at(&registry, &rest[0]).await?;
    let work = WorkDir::temporary()?;
    let tree = fetch_tree(&registry, &image, &digest, work.path(), "image").await?;
    let text = read_small(
        &tree.join("images_digests.json"),
        &image,
        "images_digests.json",
    )?;
    let digests: BTreeMap<String, String> = serde_json::from_slice(&text).map_err(|e| {
        CliError::Content(format!(
            "{image}: images_digests.json is not a map of names to digests: {e}"
        ))
    })?;
    let rows: Vec<ImageRow> = digests
        .into_iter()
        .map(|(name, digest)| ImageRow { name, digest })
        .collect();
    output::print(global.output, &rows, |rows| {
        let mut table = Table::new(&["NAME", "DIGEST"]);
        rows.iter()
            .for_each(|r| table.row(vec![r.name.clone(), r.digest.clone()]));
        table
    })
}

#[derive(Serialize)]
struct Pulled {
    module: String,
    digest: String,
    weight: u32,
    files: u64,
    bytes: u64,
    path: PathBuf,
}

pub async fn pull(global: &Global, args: PullArgs) -> Result<(), CliError> {
    let (source, rest) = args.operands.split(&["MODULE:TAG", "DIR"], 0)?;
    let registry = source::registry(global, source.as_deref(), &args.operands.repo).await?;
    let (image, digest) = image_at(&registry, &rest[0]).await?;
    let dir = absolute(Path::new(&rest[1]))?;
    let pulled = if args.store {
        pull_into_store(&registry, &image, &digest, &dir).await?
    } else {
        pull_into_dir(&registry, &image, &digest, &dir).await?
    };
    output::print(global.output, &pulled, |p| {
        let mut table = Table::new(&["MODULE", "DIGEST", "WEIGHT", "FILES", "BYTES", "PATH"]);
        table.row(vec![
            p.module.clone(),
            p.digest.clone(),
            p.weight.to_string(),
            p.files.to_string(),
            p.bytes.to_string(),
            p.path.display().to_string(),
        ]);
        table
    })
}

/// The module's files straight into `dir` (which must not exist or be empty): staged next to
/// it, validated as the operator validates, then renamed into place, so that a failure leaves
/// nothing behind.
async fn pull_into_dir(
    registry: &Registry,
    image: &ModuleRef,
    digest: &Digest,
    dir: &Path,
) -> Result<Pulled, CliError> {
    let parent = dir.parent().unwrap_or(Path::new("/"));
    let work = WorkDir::inside(parent)?;
    let store = ModuleStore::new(work.path(), Limits::default());
    let downloaded = download(registry, &store, image, digest).await?;
    let (module, target) = (image.module().to_owned(), dir.to_owned());
    let (info, files, bytes) = tokio::task::spawn_blocking(move || {
        let staging = downloaded.staging;
        let info = staging.validate(&module)?;
        let (files, bytes) = staging.totals();
        staging.keep_as(&target)?;
        Ok::<_, crate::storage::StorageError>((info, files, bytes))
    })
    .await?
    .map_err(|cause| CliError::Install {
        target: image.at_digest(digest),
        cause: Box::new(cause.into()),
    })?;
    Ok(Pulled {
        module: image.module().to_owned(),
        digest: digest.to_string(),
        weight: info.weight,
        files,
        bytes,
        path: dir.to_owned(),
    })
}

/// As the operator installs: `<dir>/<module>/versions/<hex>`, `dev`, `modules/<weight>-<module>`.
async fn pull_into_store(
    registry: &Registry,
    image: &ModuleRef,
    digest: &Digest,
    dir: &Path,
) -> Result<Pulled, CliError> {
    let store = ModuleStore::new(dir, Limits::default());
    let downloaded = download(registry, &store, image, digest).await?;
    let report = install::switch_in(downloaded, image, digest)
        .await
        .map_err(|cause| CliError::Install {
            target: image.at_digest(digest),
            cause: Box::new(cause),
        })?;
    Ok(Pulled {
        module: image.module().to_owned(),
        digest: digest.to_string(),
        weight: report.info.weight,
        files: report.installed.files,
        bytes: report.installed.bytes,
        path: report.installed.path,
    })
}

pub async fn diff(global: &Global, args: DiffArgs) -> Result<(), CliError> {
    let DiffArgs {
        operands: args,
        exit_zero,
    } = args;
    let (source, rest) = args.split(&["MODULE", "TAG_A", "TAG_B"], 0)?;
    let registry = source::registry(global, source.as_deref(), &args.repo).await?;
    let work = WorkDir::temporary()?;
    let mut trees: Vec<Vec<Entry>> = Vec::with_capacity(2);
    for (i, tag) in rest[1..].iter().enumerate() {
        let image = module_ref(&registry, &rest[0], tag, false)?;
        let digest = resolve(&registry, &image).await?;
        let tree = fetch_tree(&registry, &image, &digest, work.path(), &format!("t{i}")).await?;
        trees.push(diff::snapshot(&tree, true)?);
    }
    let changes = diff::compare(&trees[0], &trees[1]);
    output::print(global.output, &changes, |changes| {
        let mut table = Table::new(&["CHANGE", "PATH", "DETAIL"]);
        for c in changes {
            let kind = format!("{:?}", c.change).to_lowercase();
            table.row(vec![kind, c.path.clone(), c.detail.clone()]);
        }
        table
    })?;
    if changes.is_empty() || exit_zero {
        Ok(())
    } else {
        Err(CliError::Differ)
    }
}

fn module_ref(
    registry: &Registry,
    module: &str,
    tag: &str,
    release: bool,
) -> Result<ModuleRef, CliError> {
    let repo = registry.repo().clone();
    let built = if release {
        ModuleRef::release(repo, module, tag)
    } else {
        ModuleRef::new(repo, module, tag)
    };
    built.map_err(|e| CliError::Usage(e.to_string()))
}

/// `MODULE:TAG` (resolved now), `MODULE@sha256:…` or `MODULE:TAG@sha256:…` (the digest taken as
/// it is, the tag only shown), as docker and crane read references.
async fn image_at(registry: &Registry, operand: &str) -> Result<(ModuleRef, Digest), CliError> {
    match parse_image_operand(operand)? {
        (module, Pin::Digest { digest, tag }) => Ok((
            module_ref(registry, module, tag.unwrap_or("latest"), false)?,
            digest,
        )),
        (module, Pin::Tag(tag)) => {
            let image = module_ref(registry, module, tag, false)?;
            let digest = resolve(registry, &image).await?;
            Ok((image, digest))
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Pin<'a> {
    Tag(&'a str),
    /// The digest wins; a tag written beside it is kept for display.
    Digest {
        digest: Digest,
        tag: Option<&'a str>,
    },
}

fn parse_image_operand(operand: &str) -> Result<(&str, Pin<'_>), CliError> {
    if let Some((named, digest)) = operand.split_once('@') {
        let digest = digest
            .parse()
            .map_err(|_| CliError::Usage(format!("{digest:?} is not a sha256:… digest")))?;
        let (module, tag) = match named.split_once(':') {
            Some((module, tag)) if !tag.is_empty() => (module, Some(tag)),
            Some(_) => return Err(usage_of_image(operand)),
            None => (named, None),
        };
        if module.is_empty() {
            return Err(usage_of_image(operand));
        }
        return Ok((module, Pin::Digest { digest, tag }));
    }
    match operand.split_once(':') {
        Some((module, tag)) if !module.is_empty() && !tag.is_empty() => Ok((module, Pin::Tag(tag))),
        _ => Err(usage_of_image(operand)),
    }
}

fn usage_of_image(operand: &str) -> CliError {
    CliError::Usage(format!(
        "{operand:?}: name the image as MODULE:TAG, MODULE@sha256:… or MODULE:TAG@sha256:…"
    ))
}

async fn resolve(registry: &Registry, image: &ModuleRef) -> Result<Digest, CliError> {
    registry
        .resolve(image)
        .await
        .map_err(CliError::registry("cannot resolve", image))
}

/// Downloads into a store under `work/<name>` and keeps the tree as `work/<name>.tree`.
async fn fetch_tree(
    registry: &Registry,
    image: &ModuleRef,
    digest: &Digest,
    work: &Path,
    name: &str,
) -> Result<PathBuf, CliError> {
    let store = ModuleStore::new(work.join(name), Limits::default());
    let downloaded = download(registry, &store, image, digest).await?;
    let target = work.join(format!("{name}.tree"));
    let staging = downloaded.staging;
    Ok(tokio::task::spawn_blocking(move || staging.keep_as(&target)).await??)
}

/// The install pipeline up to validation, with progress on a terminal.
async fn download(
    registry: &Registry,
    store: &ModuleStore,
    image: &ModuleRef,
    digest: &Digest,
) -> Result<install::Downloaded, CliError> {
    let label = format!("{}@{}", image.name(), short_digest(digest));
    let progress = TerminalProgress::on_terminal(label);
    let shown = progress.clone().map(|p| p as Arc<dyn Progress>);
    let downloaded = install::download(registry, store, image, digest, MAX_COMPRESSED, shown).await;
    if let Some(progress) = progress {
        progress.finish();
    }
    downloaded.map_err(|cause| CliError::Install {
        target: image.at_digest(digest),
        cause: Box::new(cause),
    })
}

pub fn short_digest(digest: &Digest) -> String {
    let text = digest.to_string();
    text.chars().take("sha256:".len() + 12).collect()
}

/// Reads a metadata file of an image, refusing a symlink or an oversized file.
fn read_small(path: &Path, image: &ModuleRef, name: &str) -> Result<Vec<u8>, CliError> {
    let missing = || CliError::Content(format!("{image} has no {name}"));
    let meta = path.symlink_metadata().map_err(|_| missing())?;
    if !meta.is_file() {
        return Err(missing());
    }
    if meta.len() > MAX_METADATA_BYTES {
        return Err(CliError::Content(format!(
            "{image}: {name} is over {MAX_METADATA_BYTES} bytes"
        )));
    }
    std::fs::read(path).map_err(|cause| CliError::ReadFile {
        path: PathBuf::from(name),
        cause,
    })
}

fn absolute(path: &Path) -> Result<PathBuf, CliError> {
    std::path::absolute(path).map_err(|cause| CliError::ReadFile {
        path: path.to_owned(),
        cause,
    })
}

/// A private directory removed when the command ends (also on failure).
struct WorkDir(tempfile::TempDir);

impl WorkDir {
    fn temporary() -> Result<Self, CliError> {
        Self::inside(&std::env::temp_dir())
    }

    /// In `parent`, so that a rename from it into a sibling stays on one filesystem.
    fn inside(parent: &Path) -> Result<Self, CliError> {
        tempfile::Builder::new()
            .prefix(".kubectl-mpo-")
            .tempdir_in(parent)
            .map(Self)
            .map_err(|e| {
                CliError::WorkDir(format!(
                    "cannot create a work directory in {}: {e}",
                    parent.display()
                ))
            })
    }

    fn path(&self) -> &Path {
        self.0.path()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_kind_reads_the_config() {
        let oci = "application/vnd.oci.image.config.v1+json";
        assert_eq!(image_kind(oci, br#"{"config":{}}"#), ImageKind::Module);
        assert_eq!(
            image_kind(oci, br#"{"config":{"Cmd":[]}}"#),
            ImageKind::Module
        );
        assert_eq!(image_kind(oci, br#"{"os":"linux"}"#), ImageKind::Module);
        let app = br#"{"config":{"Entrypoint":["/bin/app"]}}"#;
        assert_eq!(image_kind(oci, app), ImageKind::Application);
        let docker = "application/vnd.docker.container.image.v1+json";
        assert_eq!(
            image_kind(docker, br#"{"config":{"Cmd":["sh"]}}"#),
            ImageKind::Application
        );
        let helm = "application/vnd.cncf.helm.config.v1+json";
        assert_eq!(image_kind(helm, br#"{"name":"x"}"#), ImageKind::Unknown);
        assert_eq!(image_kind(oci, b"not json"), ImageKind::Unknown);
    }

    #[test]
    fn releases_split_versions_in_semver_order_from_channels_in_stability_order() {
        let tags = [
            "v1.10.0",
            "stable",
            "v1.9.2",
            "alpha",
            "custom",
            "v1.23.1-rc.1",
            "beta",
            "1.2.3",
        ]
        .map(String::from)
        .to_vec();
        let releases = split_releases(tags);
        assert_eq!(
            releases.versions,
            ["1.2.3", "v1.9.2", "v1.10.0", "v1.23.1-rc.1"]
        );
        assert_eq!(releases.channels, ["alpha", "beta", "stable", "custom"]);
    }

    #[test]
    fn image_operands_take_a_tag_or_a_digest() {
        assert_eq!(
            parse_image_operand("echo:v1.2").expect("tag"),
            ("echo", Pin::Tag("v1.2"))
        );
        let digest = Digest::of(b"x");
        let operand = format!("echo@{digest}");
        let (module, pin) = parse_image_operand(&operand).expect("digest");
        assert_eq!(
            (module, pin),
            (
                "echo",
                Pin::Digest {
                    digest: digest.clone(),
                    tag: None
                }
            )
        );
        let operand = format!("echo:v1.2@{digest}");
        let (module, pin) = parse_image_operand(&operand).expect("tag and digest");
        assert_eq!(
            (module, pin),
            (
                "echo",
                Pin::Digest {
                    digest: digest.clone(),
                    tag: Some("v1.2")
                }
            )
        );
        let torn = [format!("echo:@{digest}"), format!(":v1@{digest}")];
        for bad in torn.iter().map(String::as_str).chain([
            "echo",
            "echo:",
            ":v1",
            "echo@sha256:zz",
            "echo:v1@sha256:zz",
        ]) {
            let err = parse_image_operand(bad).expect_err(bad);
            assert_eq!(err.exit_code(), 2, "{bad}: {err}");
        }
    }
}
