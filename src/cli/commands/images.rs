//! `kubectl mpo images`.

use std::collections::BTreeMap;

use clap::Args;
use serde::Serialize;

use super::super::{
    CliError,
    args::{Global, RepoArgs, split_operands},
    image::{WorkDir, fetch_tree, image_at, read_small},
    output::{self, Table},
    source,
};

/// Show images_digests.json of a module image as a table.
#[derive(Debug, Args)]
#[command(
    override_usage = "kubectl mpo images [OPTIONS] [SOURCE] MODULE:TAG",
    after_help = "Examples:\n  kubectl mpo images deckhouse-prod echo:v1.23.1"
)]
pub struct ImagesArgs {
    #[command(flatten)]
    pub repo: RepoArgs,
    /// [SOURCE] MODULE:TAG: the ModuleSource (none with --repo) and the image, as MODULE:TAG, MODULE@sha256:… or MODULE:TAG@sha256:….
    #[arg(value_name = "[SOURCE] MODULE:TAG")]
    pub operands: Vec<String>,
}

#[derive(Serialize)]
struct ImageRow {
    name: String,
    digest: String,
}

pub async fn run(global: &Global, args: ImagesArgs) -> Result<(), CliError> {
    let (source, rest) = split_operands(&args.repo, &args.operands, &["MODULE:TAG"], 0)?;
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
