//! `kubectl mpo files`.

use clap::Args;

use super::super::{
    CliError,
    args::{Global, RepoArgs, split_operands},
    diff,
    image::{WorkDir, fetch_tree, image_at},
    output::{self, Table},
    source,
};

/// List the files of a module image.
#[derive(Debug, Args)]
#[command(
    override_usage = "kubectl mpo files [OPTIONS] [SOURCE] MODULE:TAG",
    after_help = "Examples:\n  kubectl mpo files deckhouse-prod echo:main-patch-03354\n  kubectl mpo files --repo registry.example.com/deckhouse/modules echo@sha256:<hex> -o json"
)]
pub struct FilesArgs {
    #[command(flatten)]
    pub repo: RepoArgs,
    /// [SOURCE] MODULE:TAG: the ModuleSource (none with --repo) and the image, as MODULE:TAG, MODULE@sha256:… or MODULE:TAG@sha256:….
    #[arg(value_name = "[SOURCE] MODULE:TAG")]
    pub operands: Vec<String>,
}

pub async fn run(global: &Global, args: FilesArgs) -> Result<(), CliError> {
    let (source, rest) = split_operands(&args.repo, &args.operands, &["MODULE:TAG"], 0)?;
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
