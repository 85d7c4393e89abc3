//! `kubectl mpo renew`: annotate, and with --wait follow the operator's handling, through the
//! apiserver as kubectl does.

use std::time::Duration;

use clap::Args;
use kube::{
    Api, ResourceExt,
    api::{Patch, PatchParams},
    runtime::wait::await_condition,
};
use serde_json::json;

use super::super::{
    CliError,
    args::Global,
    output::{self, Table},
    overrides::{not_found_as, override_row},
    source::kube_client,
};
use crate::crd::{ModulePullOverride, RENEW_ANNOTATION, RENEW_FORCE_ANNOTATION};

/// Ask the operator to check a ModulePullOverride now, and optionally wait for the result.
#[derive(Debug, Args)]
#[command(
    override_usage = "kubectl mpo renew [OPTIONS] MPO",
    after_help = "Examples:\n  kubectl mpo renew echo\n  kubectl mpo renew echo --force --wait --timeout 5m -o json"
)]
pub struct RenewArgs {
    /// The ModulePullOverride.
    pub mpo: String,
    /// Download and unpack again even when the digest is unchanged
    /// (the `modules.deckhouse.io/renew: "true"` annotation).
    #[arg(long)]
    pub force: bool,
    /// Wait until the operator handled it; print the digest, or the error with exit code 1.
    #[arg(long)]
    pub wait: bool,
    /// How long --wait waits (exit code 3 when it runs out); only with --wait.
    #[arg(long, default_value = "2m", value_parser = humantime::parse_duration, requires = "wait")]
    pub timeout: Duration,
}

pub async fn run(global: &Global, args: RenewArgs) -> Result<(), CliError> {
    let api = Api::<ModulePullOverride>::all(kube_client(global).await?);
    let (key, value) = if args.force {
        (RENEW_FORCE_ANNOTATION, "true")
    } else {
        (RENEW_ANNOTATION, "")
    };
    let patch = json!({ "metadata": { "annotations": { key: value } } });
    let annotated = api
        .patch(&args.mpo, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map_err(|e| not_found_as(e, || CliError::MpoNotFound(args.mpo.clone())))?;
    if !args.wait {
        // As `kubectl annotate`: a line for people, the object (as it is now) for -o json|yaml.
        return match global.output {
            output::Format::Table => {
                println!("modulepulloverride/{} annotated", args.mpo);
                Ok(())
            }
            format => output::print(format, &override_row(&annotated, None), |_| Table::new(&[])),
        };
    }
    // The operator writes the status of the pass first and then removes the annotation, so
    // once it is gone the status is that pass's outcome.
    let handled = move |mpo: Option<&ModulePullOverride>| {
        mpo.is_none_or(|mpo| !mpo.annotations().contains_key(key))
    };
    let waited = tokio::time::timeout(args.timeout, await_condition(api, &args.mpo, handled))
        .await
        .map_err(|_| CliError::Timeout {
            mpo: format!("modulepulloverride/{}", args.mpo),
            waited: args.timeout,
        })?;
    let mpo = waited?.ok_or_else(|| CliError::MpoNotFound(args.mpo.clone()))?;
    let row = override_row(&mpo, None);
    if row.digest.is_none() || !row.message.is_empty() {
        let message = if row.message.is_empty() {
            "no module applied yet".to_owned()
        } else {
            row.message.clone()
        };
        return Err(CliError::Failed {
            mpo: format!("modulepulloverride/{}", args.mpo),
            message,
        });
    }
    output::print(global.output, &row, |row| {
        let mut table = Table::new(&["NAME", "TAG", "DIGEST", "UPDATED"]);
        table.row(vec![
            row.name.clone(),
            row.tag.clone(),
            row.digest.clone().unwrap_or_default(),
            row.updated_at.clone().unwrap_or_default(),
        ]);
        table
    })
}
