//! `kubectl mpo releases`.

use clap::Args;
use serde::Serialize;

/// Channel names in their order of stability (Deckhouse's), for sorting.
const CHANNELS: [&str; 5] = ["alpha", "beta", "early-access", "stable", "rock-solid"];

use crate::registry::Registry;

use super::super::{
    CliError,
    args::{Global, RepoArgs, split_operands},
    image::module_ref,
    output::{self, Table},
    source,
};

/// List the release tags of a module: versions and channels.
#[derive(Debug, Args)]
#[command(
    override_usage = "kubectl mpo releases [OPTIONS] [SOURCE] MODULE",
    after_help = "Examples:\n  kubectl mpo releases deckhouse-prod echo"
)]
pub struct ReleasesArgs {
    #[command(flatten)]
    pub repo: RepoArgs,
    /// [SOURCE] MODULE: the ModuleSource (none with --repo) and the module.
    #[arg(value_name = "[SOURCE] MODULE")]
    pub operands: Vec<String>,
}

#[derive(Serialize)]
pub(super) struct Releases {
    pub(super) versions: Vec<String>,
    pub(super) channels: Vec<String>,
}

pub async fn run(global: &Global, args: ReleasesArgs) -> Result<(), CliError> {
    let (source, rest) = split_operands(&args.repo, &args.operands, &["MODULE"], 0)?;
    let registry = source::registry(global, source.as_deref(), &args.repo).await?;
    let releases = list_releases(&registry, &rest[0]).await?;
    output::print(global.output, &releases, |releases| {
        let mut table = Table::new(&["TAG", "KIND"]);
        for version in &releases.versions {
            table.row(vec![version.clone(), "version".into()]);
        }
        for channel in &releases.channels {
            table.row(vec![channel.clone(), "channel".into()]);
        }
        table
    })
}

pub(super) async fn list_releases(registry: &Registry, module: &str) -> Result<Releases, CliError> {
    let image = module_ref(registry, module, "latest", true)?;
    let tags = registry
        .list_tags(&image)
        .await
        .map_err(CliError::registry(
            "cannot list the releases of",
            image.name(),
        ))?;
    Ok(split_releases(tags))
}

/// Versions (`v1.2.3`, semver with an optional `v`) in version order; everything else is a
/// channel, known channels in their order of stability first.
fn split_releases(tags: Vec<String>) -> Releases {
    let (mut versions, mut channels): (Vec<(semver::Version, String)>, Vec<String>) =
        (Vec::new(), Vec::new());
    for tag in tags {
        match semver::Version::parse(tag.strip_prefix('v').unwrap_or(&tag)) {
            Ok(version) => versions.push((version, tag)),
            Err(_) => channels.push(tag),
        }
    }
    versions.sort();
    let rank = |c: &String| {
        CHANNELS
            .iter()
            .position(|k| k == c)
            .unwrap_or(CHANNELS.len())
    };
    channels.sort_by(|a, b| rank(a).cmp(&rank(b)).then(a.cmp(b)));
    Releases {
        versions: versions.into_iter().map(|(_, tag)| tag).collect(),
        channels,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn releases_split_versions_in_semver_order_from_channels_in_stability_order() {
        let tags = [
            "v1.10.0",
            "stable",
            "v1.9.2",
            "alpha",
            "custom",
            "v1.23.1-rc.1",
            "beta",
            "1.2.3",
        ]
        .map(String::from)
        .to_vec();
        let releases = split_releases(tags);
        assert_eq!(
            releases.versions,
            ["1.2.3", "v1.9.2", "v1.10.0", "v1.23.1-rc.1"]
        );
        assert_eq!(releases.channels, ["alpha", "beta", "stable", "custom"]);
    }
}
