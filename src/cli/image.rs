//! What the registry commands share: naming an image (`MODULE:TAG`, `MODULE@sha256:…`,
//! `MODULE:TAG@sha256:…`), resolving it, and downloading it through the operator's own install
//! pipeline into a private work directory.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
};

use super::{CliError, progress::TerminalProgress};
use crate::{
    Digest,
    install::{self, Progress},
    registry::{ModuleRef, Registry},
    storage::{Limits, ModuleStore},
};

/// The operator's default `--max-compressed-size`.
const MAX_COMPRESSED: u64 = 1 << 30;
/// version.json and images_digests.json are small; more is not what we read.
const MAX_METADATA_BYTES: u64 = 4 << 20;

pub(super) fn module_ref(
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
pub(super) async fn image_at(
    registry: &Registry,
    operand: &str,
) -> Result<(ModuleRef, Digest), CliError> {
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

pub(super) async fn resolve(registry: &Registry, image: &ModuleRef) -> Result<Digest, CliError> {
    registry
        .resolve(image)
        .await
        .map_err(CliError::registry("cannot resolve", image))
}

/// Downloads into a store under `work/<name>` and keeps the tree as `work/<name>.tree`.
pub(super) async fn fetch_tree(
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
pub(super) async fn download(
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
pub(super) fn read_small(path: &Path, image: &ModuleRef, name: &str) -> Result<Vec<u8>, CliError> {
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

pub(super) fn absolute(path: &Path) -> Result<PathBuf, CliError> {
    std::path::absolute(path).map_err(|cause| CliError::ReadFile {
        path: path.to_owned(),
        cause,
    })
}

/// A private directory removed when the command ends (also on failure).
pub(super) struct WorkDir(tempfile::TempDir);

impl WorkDir {
    pub(super) fn temporary() -> Result<Self, CliError> {
        Self::inside(&std::env::temp_dir())
    }

    /// In `parent`, so that a rename from it into a sibling stays on one filesystem.
    pub(super) fn inside(parent: &Path) -> Result<Self, CliError> {
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

    pub(super) fn path(&self) -> &Path {
        self.0.path()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
