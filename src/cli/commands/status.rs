//! `kubectl mpo status`: overrides with their source's flag.

use std::collections::BTreeMap;

use chrono::Utc;
use clap::Args;
use kube::{Api, ResourceExt, api::ListParams};

use super::super::{
    CliError,
    args::Global,
    output::{self, Table},
    overrides::{OverrideRow, override_row, status_table},
    source::kube_client,
};
use crate::crd::{ModulePullOverride, ModuleSource};

/// List ModulePullOverrides with tag, digest, age, Ready, message and the source's flag.
#[derive(Debug, Args)]
#[command(
    override_usage = "kubectl mpo status [OPTIONS] [MPO]",
    after_help = "Examples:\n  kubectl mpo status\n  kubectl mpo status echo -o yaml"
)]
pub struct StatusArgs {
    /// One ModulePullOverride (default: all).
    pub mpo: Option<String>,
}

pub async fn run(global: &Global, args: StatusArgs) -> Result<(), CliError> {
    let client = kube_client(global).await?;
    let mpos = Api::<ModulePullOverride>::all(client.clone());
    let mpos = match &args.mpo {
        Some(name) => vec![
            mpos.get_opt(name)
                .await?
                .ok_or_else(|| CliError::MpoNotFound(name.clone()))?,
        ],
        None => mpos.list(&ListParams::default()).await?.items,
    };
    let sources: BTreeMap<String, ModuleSource> = Api::<ModuleSource>::all(client)
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .map(|s| (s.name_any(), s))
        .collect();
    let mut rows: Vec<OverrideRow> = mpos
        .iter()
        .map(|mpo| override_row(mpo, sources.get(&mpo.spec.source)))
        .collect();
    rows.sort_by(|a, b| a.name.cmp(&b.name));
    let now = Utc::now();
    if args.mpo.is_some() && global.output != output::Format::Table {
        return output::print(global.output, &rows[0], |_| Table::default());
    }
    output::print(global.output, &rows, |rows| status_table(rows, now))
}
