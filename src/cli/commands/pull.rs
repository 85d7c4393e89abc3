//! `kubectl mpo pull`.

use std::path::{Path, PathBuf};

use clap::Args;
use serde::Serialize;

use super::super::{
    CliError,
    args::{Global, RepoArgs, split_operands},
    image::{WorkDir, absolute, download, image_at},
    output::{self, Table},
    source,
};
use crate::{
    Digest, install,
    registry::{ModuleRef, Registry},
    storage::{Limits, ModuleStore},
};

/// Download a module image and unpack it, with the operator's limits and checks.
#[derive(Debug, Args)]
#[command(
    override_usage = "kubectl mpo pull [OPTIONS] [SOURCE] MODULE:TAG DIR",
    after_help = "Examples:\n  kubectl mpo pull deckhouse-prod echo:main-patch-03354 ./echo\n  kubectl mpo pull deckhouse-prod echo@sha256:<hex> /var/lib/deckhouse/downloaded --store"
)]
pub struct PullArgs {
    #[command(flatten)]
    pub repo: RepoArgs,
    /// [SOURCE] MODULE:TAG DIR: the ModuleSource (none with --repo), the image (MODULE:TAG,
    /// MODULE@sha256:… or MODULE:TAG@sha256:…) and the directory to unpack into (absent or empty).
    #[arg(value_name = "[SOURCE] MODULE:TAG DIR")]
    pub operands: Vec<String>,
    /// Treat DIR as an operator download directory: unpack into <DIR>/<module>/versions/<hex>,
    /// switch <DIR>/<module>/dev and link <DIR>/modules/<weight>-<module>, as the operator does.
    #[arg(long)]
    pub store: bool,
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

pub async fn run(global: &Global, args: PullArgs) -> Result<(), CliError> {
    let (source, rest) = split_operands(&args.repo, &args.operands, &["MODULE:TAG", "DIR"], 0)?;
    let registry = source::registry(global, source.as_deref(), &args.repo).await?;
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
