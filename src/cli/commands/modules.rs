//! `kubectl mpo modules`.

use clap::Args;
use serde::Serialize;

use super::super::{
    CliError,
    args::{Global, RepoArgs, split_operands},
    output::{self, Table},
    source,
};

/// List the module names of a source: the tags of its repo.
#[derive(Debug, Args)]
#[command(
    override_usage = "kubectl mpo modules [OPTIONS] [SOURCE]",
    after_help = "Examples:\n  kubectl mpo modules deckhouse-prod\n  kubectl mpo modules --repo registry.example.com/deckhouse/modules"
)]
pub struct ModulesArgs {
    #[command(flatten)]
    pub repo: RepoArgs,
    /// SOURCE: the ModuleSource to read (none with --repo).
    #[arg(value_name = "SOURCE")]
    pub operands: Vec<String>,
}

#[derive(Serialize)]
struct Named {
    name: String,
}

pub async fn run(global: &Global, args: ModulesArgs) -> Result<(), CliError> {
    let (source, _) = split_operands(&args.repo, &args.operands, &[], 0)?;
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
