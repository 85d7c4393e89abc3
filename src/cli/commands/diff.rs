//! `kubectl mpo diff`.

use clap::Args;

use super::super::{
    CliError,
    args::{Global, RepoArgs, split_operands},
    diff::{self, Entry},
    image::{WorkDir, fetch_tree, module_ref, resolve},
    output::{self, Table},
    source,
};

/// Files added, removed and changed between two tags of a module.
///
/// Exits 1 when they differ (as diff(1) and `kubectl diff` do), 2 or more when it cannot compare.
#[derive(Debug, Args)]
#[command(
    override_usage = "kubectl mpo diff [OPTIONS] [SOURCE] MODULE TAG_A TAG_B",
    after_help = "Examples:\n  kubectl mpo diff deckhouse-prod echo v1.23.1 main-patch-03354\n  kubectl mpo diff deckhouse-prod echo v1.23.1 v1.23.2 -o json --exit-zero"
)]
pub struct DiffArgs {
    #[command(flatten)]
    pub repo: RepoArgs,
    /// [SOURCE] MODULE TAG_A TAG_B: the ModuleSource (none with --repo), the module and the two
    /// tags to compare.
    #[arg(value_name = "[SOURCE] MODULE TAG_A TAG_B")]
    pub operands: Vec<String>,
    /// Exit 0 even when the images differ (for scripts that only want the listing).
    #[arg(long)]
    pub exit_zero: bool,
}

pub async fn run(global: &Global, args: DiffArgs) -> Result<(), CliError> {
    let exit_zero = args.exit_zero;
    let (source, rest) =
        split_operands(&args.repo, &args.operands, &["MODULE", "TAG_A", "TAG_B"], 0)?;
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
