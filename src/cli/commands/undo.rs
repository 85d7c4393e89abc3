//! Undo: `kubectl mpo history` lists what an override applied; `rollback` pins it to an earlier
//! digest (`spec.imageDigest`) and waits until the operator switched it in; `unpin` clears the
//! pin, so that the tag is followed again, and waits likewise.

use std::time::Duration;

use clap::Args;
use kube::{
    Api,
    api::{Patch, PatchParams},
    runtime::wait::await_condition,
};
use serde::Serialize;
use serde_json::{Value, json};

use super::super::{
    CliError,
    args::Global,
    output::{self, Table},
    overrides::not_found_as,
    source::kube_client,
};
use crate::crd::{AppliedVersion, ModulePullOverride};

/// List the digests an override applied, newest (the active one) first.
#[derive(Debug, Args)]
#[command(
    override_usage = "kubectl mpo history [OPTIONS] MPO",
    after_help = "Examples:\n  kubectl mpo history echo\n  kubectl mpo history echo -o json"
)]
pub struct HistoryArgs {
    /// The ModulePullOverride.
    pub mpo: String,
}

/// Go back to an earlier digest: pins the override to it (`spec.imageDigest`) and waits until
/// the operator switched it in (from disk when it is kept there: no download).
#[derive(Debug, Args)]
#[command(
    override_usage = "kubectl mpo rollback [OPTIONS] MPO",
    after_help = "Examples:\n  kubectl mpo rollback echo                 # the digest before the active one\n  kubectl mpo rollback echo --steps 2\n  kubectl mpo rollback echo --to sha256:3f1c…\n  kubectl mpo unpin echo                    # follow the tag again"
)]
pub struct RollbackArgs {
    /// The ModulePullOverride.
    pub mpo: String,
    /// Go back to this digest (`sha256:…`), one of `kubectl mpo history` or any other.
    #[arg(long, conflicts_with = "steps")]
    pub to: Option<String>,
    /// Go back this many entries of the history (1: the one before the active).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..))]
    pub steps: u16,
    #[command(flatten)]
    pub wait: WaitArgs,
}

/// Clear the pin of an override: it follows its tag again, at once.
#[derive(Debug, Args)]
#[command(
    override_usage = "kubectl mpo unpin [OPTIONS] MPO",
    after_help = "Examples:\n  kubectl mpo unpin echo\n  kubectl mpo unpin echo --no-wait"
)]
pub struct UnpinArgs {
    /// The ModulePullOverride.
    pub mpo: String,
    #[command(flatten)]
    pub wait: WaitArgs,
}

#[derive(Debug, Args)]
pub struct WaitArgs {
    /// Return once the spec is written, without waiting for the operator.
    #[arg(long)]
    pub no_wait: bool,
    /// How long to wait for the operator (exit code 3 when it runs out).
    #[arg(long, default_value = "2m", value_parser = humantime::parse_duration, conflicts_with = "no_wait")]
    pub timeout: Duration,
}

/// One line of `history`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct HistoryRow {
    digest: String,
    applied_at: String,
    active: bool,
    pinned: bool,
}

pub async fn history(global: &Global, args: HistoryArgs) -> Result<(), CliError> {
    let api = Api::<ModulePullOverride>::all(kube_client(global).await?);
    let mpo = get(&api, &args.mpo).await?;
    let rows = history_rows(&mpo);
    output::print(global.output, &rows, |rows| {
        let mut table = Table::new(&["STEPS BACK", "DIGEST", "APPLIED", "ACTIVE"]);
        for (steps, row) in rows.iter().enumerate() {
            let active = match (row.active, row.pinned) {
                (true, true) => "yes (pinned)",
                (true, false) => "yes",
                _ => "",
            };
            table.row(vec![
                steps.to_string(),
                row.digest.clone(),
                row.applied_at.clone(),
                active.to_owned(),
            ]);
        }
        table
    })
}

fn history_rows(mpo: &ModulePullOverride) -> Vec<HistoryRow> {
    let status = mpo.status.clone().unwrap_or_default();
    let active = status.image_digest.unwrap_or_default();
    let pinned = status.pinned == Some(true);
    status
        .history
        .unwrap_or_default()
        .into_iter()
        .map(|AppliedVersion { digest, applied_at }| HistoryRow {
            active: digest == active,
            pinned: pinned && digest == active,
            digest,
            applied_at,
        })
        .collect()
}

/// The digest `rollback` goes to: `--to`, or the history entry `steps` back.
fn rollback_target(
    mpo: &ModulePullOverride,
    name: &str,
    to: Option<&str>,
    steps: u16,
) -> Result<String, CliError> {
    if let Some(digest) = to {
        let valid = digest.strip_prefix("sha256:").is_some_and(|hex| {
            hex.len() == 64
                && hex
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        });
        if !valid {
            return Err(CliError::Usage(format!(
                "--to {digest:?}: expected a digest sha256:<64 hex digits> (see `kubectl mpo history {name}`)"
            )));
        }
        return Ok(digest.to_owned());
    }
    let history = history_rows(mpo);
    history
        .get(usize::from(steps))
        .map(|row| row.digest.clone())
        .ok_or_else(|| {
            CliError::Failed {
                mpo: format!("modulepulloverride/{name}"),
                message: format!(
                    "its history has {} entr{}; nothing {steps} step{} back (kubectl mpo history {name})",
                    history.len(),
                    if history.len() == 1 { "y" } else { "ies" },
                    if steps == 1 { "" } else { "s" },
                ),
            }
        })
}

pub async fn rollback(global: &Global, args: RollbackArgs) -> Result<(), CliError> {
    let api = Api::<ModulePullOverride>::all(kube_client(global).await?);
    let mpo = get(&api, &args.mpo).await?;
    let target = rollback_target(&mpo, &args.mpo, args.to.as_deref(), args.steps)?;
    let written = set_pin(&api, &args.mpo, json!(target)).await?;
    let reached = move |mpo: &ModulePullOverride| {
        mpo.status.as_ref().is_some_and(|s| {
            s.image_digest.as_deref() == Some(target.as_str()) && s.pinned == Some(true)
        })
    };
    finish(
        global, &api, &args.mpo, written, &args.wait, reached, "pinned",
    )
    .await
}

pub async fn unpin(global: &Global, args: UnpinArgs) -> Result<(), CliError> {
    let api = Api::<ModulePullOverride>::all(kube_client(global).await?);
    get(&api, &args.mpo).await?;
    let written = set_pin(&api, &args.mpo, Value::Null).await?;
    let reached =
        |mpo: &ModulePullOverride| mpo.status.as_ref().is_some_and(|s| s.pinned != Some(true));
    finish(
        global, &api, &args.mpo, written, &args.wait, reached, "unpinned",
    )
    .await
}

async fn get(api: &Api<ModulePullOverride>, name: &str) -> Result<ModulePullOverride, CliError> {
    api.get(name)
        .await
        .map_err(|e| not_found_as(e, || CliError::MpoNotFound(name.to_owned())))
}

async fn set_pin(
    api: &Api<ModulePullOverride>,
    name: &str,
    digest: Value,
) -> Result<ModulePullOverride, CliError> {
    let patch = json!({ "spec": { "imageDigest": digest } });
    api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map_err(|e| not_found_as(e, || CliError::MpoNotFound(name.to_owned())))
}

/// Without `--no-wait`: waits until the operator's status describes the spec just written
/// (`observedGeneration`) and `reached` holds, or reports its failure.
async fn finish(
    global: &Global,
    api: &Api<ModulePullOverride>,
    name: &str,
    written: ModulePullOverride,
    wait: &WaitArgs,
    reached: impl Fn(&ModulePullOverride) -> bool + Send + 'static,
    done: &str,
) -> Result<(), CliError> {
    let object = format!("modulepulloverride/{name}");
    if wait.no_wait {
        return match global.output {
            output::Format::Table => {
                println!("{object} {done}");
                Ok(())
            }
            format => output::print(format, &written, |_| Table::new(&[])),
        };
    }
    let generation = written.metadata.generation.unwrap_or_default();
    let handled = move |mpo: Option<&ModulePullOverride>| {
        mpo.is_none_or(|mpo| {
            let status = mpo.status.clone().unwrap_or_default();
            status.observed_generation.unwrap_or_default() >= generation
                && (reached(mpo) || status.message.is_some_and(|m| !m.is_empty()))
        })
    };
    let waited = tokio::time::timeout(wait.timeout, await_condition(api.clone(), name, handled))
        .await
        .map_err(|_| CliError::Timeout {
            mpo: object.clone(),
            waited: wait.timeout,
        })?;
    let mpo = waited?.ok_or_else(|| CliError::MpoNotFound(name.to_owned()))?;
    let status = mpo.status.clone().unwrap_or_default();
    if let Some(message) = status.message.filter(|m| !m.is_empty()) {
        return Err(CliError::Failed {
            mpo: object,
            message,
        });
    }
    output::print(global.output, &mpo, |mpo| {
        let status = mpo.status.clone().unwrap_or_default();
        let mut table = Table::new(&["NAME", "TAG", "DIGEST", "PINNED", "UPDATED"]);
        table.row(vec![
            name.to_owned(),
            mpo.spec.image_tag.clone(),
            status.image_digest.unwrap_or_default(),
            (status.pinned == Some(true)).to_string(),
            status.updated_at.unwrap_or_default(),
        ]);
        table
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::crd::{ModulePullOverrideSpec, ModulePullOverrideStatus};

    fn with_history(digests: &[&str]) -> ModulePullOverride {
        let mut mpo = ModulePullOverride::new(
            "echo",
            ModulePullOverrideSpec {
                image_tag: "main".into(),
                source: "s".into(),
                scan_interval: Default::default(),
                image_digest: None,
                rollback: None,
            },
        );
        mpo.status = Some(ModulePullOverrideStatus {
            image_digest: digests.first().map(|d| (*d).to_owned()),
            history: Some(
                digests
                    .iter()
                    .map(|d| AppliedVersion {
                        digest: (*d).to_owned(),
                        applied_at: "t".into(),
                    })
                    .collect(),
            ),
            ..Default::default()
        });
        mpo
    }

    #[test]
    fn rollback_goes_steps_back_in_the_history_or_to_a_given_digest() {
        let a = format!("sha256:{}", "a".repeat(64));
        let b = format!("sha256:{}", "b".repeat(64));
        let mpo = with_history(&[&a, &b]);
        assert_eq!(rollback_target(&mpo, "echo", None, 1).unwrap(), b);
        let none = rollback_target(&mpo, "echo", None, 2)
            .unwrap_err()
            .to_string();
        assert!(none.contains("2 entries; nothing 2 steps back"), "{none}");
        assert_eq!(rollback_target(&mpo, "echo", Some(&a), 1).unwrap(), a);
        let bad = rollback_target(&mpo, "echo", Some("sha256:AB"), 1).unwrap_err();
        assert_eq!(bad.exit_code(), 2, "{bad}");
        let rows = history_rows(&mpo);
        assert!(rows[0].active && !rows[1].active);
    }
}
