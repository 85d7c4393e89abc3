//! `kubectl mpo channel`.

use std::path::Path;

use clap::Args;
use serde::Serialize;

use super::super::{
    CliError,
    args::{Global, RepoArgs, split_operands},
    image::{WorkDir, fetch_tree, module_ref, read_small, resolve},
    output::{self, Table},
    source,
};
use super::releases::list_releases;
use crate::registry::ModuleRef;

/// Show the version a release channel points to (its version.json), for one channel or all.
#[derive(Debug, Args)]
#[command(
    override_usage = "kubectl mpo channel [OPTIONS] [SOURCE] MODULE [CHANNEL]",
    after_help = "Examples:\n  kubectl mpo channel deckhouse-prod echo\n  kubectl mpo channel deckhouse-prod echo stable -o json"
)]
pub struct ChannelArgs {
    #[command(flatten)]
    pub repo: RepoArgs,
    /// [SOURCE] MODULE [CHANNEL]: the ModuleSource (none with --repo), the module and a channel (default: every channel).
    #[arg(value_name = "[SOURCE] MODULE [CHANNEL]")]
    pub operands: Vec<String>,
}

#[derive(Serialize)]
struct ChannelRow {
    channel: String,
    version: String,
    digest: String,
}

pub async fn run(global: &Global, args: ChannelArgs) -> Result<(), CliError> {
    let (source, rest) = split_operands(&args.repo, &args.operands, &["MODULE"], 1)?;
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
