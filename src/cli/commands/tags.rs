//! `kubectl mpo tags`.

use std::path::PathBuf;

use clap::Args;
use futures::StreamExt;
use serde::Serialize;

use super::super::{
    CliError,
    args::{Global, RepoArgs, split_operands},
    image::module_ref,
    output::{self, Table},
    source,
};
use super::verify::{self, read_keys};
use crate::{
    Digest,
    registry::{ModuleRef, Registry, RegistryError},
    signing::{self, PublicKey},
};

/// Tags classified at once (each costs a HEAD, a manifest and a config GET).
const CLASSIFY_CONCURRENCY: usize = 8;

/// List the tags of a module's image repository.
///
/// Module images are told apart from application images by their config; a tag that cannot be
/// read is a row with its error (exit 1 only when none can be read).
#[derive(Debug, Args)]
#[command(
    override_usage = "kubectl mpo tags [OPTIONS] [SOURCE] MODULE",
    after_help = "Examples:\n  kubectl mpo tags deckhouse-prod echo\n  kubectl mpo tags --repo registry.example.com/deckhouse/modules echo --no-kind -o json"
)]
pub struct TagsArgs {
    #[command(flatten)]
    pub repo: RepoArgs,
    /// [SOURCE] MODULE: the ModuleSource (none with --repo) and the module.
    #[arg(value_name = "[SOURCE] MODULE")]
    pub operands: Vec<String>,
    /// Only list the tags, without reading each image's config to tell its kind.
    #[arg(long)]
    pub no_kind: bool,
    /// Check each tag's signature against this public key (PEM; repeat for several) and show a
    /// SIGNED column. Without it, a ModuleSource with a signature policy (spec.verify) is checked
    /// against its own keys.
    #[arg(long = "key", value_name = "FILE")]
    pub keys: Vec<PathBuf>,
}

/// What a tag of `<repo>/<module>` holds, judged from its image config.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ImageKind {
    /// No entrypoint and no command: a bundle of files (`FROM scratch` + files), which is what
    /// a module image is.
    Module,
    /// Has an entrypoint or a command: an image meant to run, such as the module's
    /// applications that `images_digests.json` points at.
    Application,
    /// Not an image config (an artifact), or a manifest we do not read (no layers, an index
    /// without linux/amd64).
    Unknown,
}

#[derive(Serialize)]
struct TagRow {
    tag: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    kind: Option<ImageKind>,
    #[serde(skip_serializing_if = "Option::is_none")]
    digest: Option<String>,
    /// Whether a signature of the image verifies, when there are keys to check it with.
    #[serde(skip_serializing_if = "Option::is_none")]
    signed: Option<SignedCell>,
    /// Why this tag could not be resolved or read (a deleted manifest or blob, a registry
    /// error): the other tags are still listed.
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

/// The SIGNED column: `yes` with the key and format, or `no` with the refusal's reason.
#[derive(Serialize)]
struct SignedCell {
    verified: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    key: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    format: Option<signing::Format>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    message: Option<String>,
}

impl SignedCell {
    fn of(verdict: Result<signing::Verified, signing::Refusal>) -> Self {
        match verdict {
            Ok(verified) => Self {
                verified: true,
                key: Some(verified.key),
                format: Some(verified.format),
                reason: None,
                message: None,
            },
            Err(refusal) => Self {
                verified: false,
                key: None,
                format: None,
                reason: Some(refusal.reason()),
                message: Some(refusal.to_string()),
            },
        }
    }

    fn cell(&self) -> String {
        match (self.verified, self.reason) {
            (true, _) => "yes".into(),
            (false, Some(reason)) => format!("no ({reason})"),
            (false, None) => "no".into(),
        }
    }
}

pub async fn run(global: &Global, args: TagsArgs) -> Result<(), CliError> {
    let (source, rest) = split_operands(&args.repo, &args.operands, &["MODULE"], 0)?;
    let (registry, policy) =
        source::registry_and_policy(global, source.as_deref(), &args.repo).await?;
    let keys = if args.keys.is_empty() {
        policy
    } else {
        Some(read_keys(&args.keys)?)
    };
    let image = module_ref(&registry, &rest[0], "latest", false)?;
    let tags = registry
        .list_tags(&image)
        .await
        .map_err(CliError::registry("cannot list the tags of", image.name()))?;
    let rows: Vec<TagRow> = if args.no_kind {
        tags.into_iter()
            .map(|tag| TagRow {
                tag,
                kind: None,
                digest: None,
                signed: None,
                error: None,
            })
            .collect()
    } else {
        futures::stream::iter(tags)
            .map(|tag| classify_or_report(&registry, &image, tag, keys.as_deref()))
            .buffered(CLASSIFY_CONCURRENCY)
            .collect()
            .await
    };
    let failed = rows.iter().filter(|r| r.error.is_some()).count();
    // --no-kind resolves nothing, so there is no digest whose signature could be checked.
    let show_signed = keys.is_some() && !args.no_kind;
    output::print(global.output, &rows, |rows| {
        let mut headers = vec!["TAG", "KIND", "DIGEST"];
        if show_signed {
            headers.push("SIGNED");
        }
        if failed > 0 {
            headers.push("ERROR");
        }
        let mut table = Table::new(&headers);
        for row in rows {
            let kind = row.kind.map(|k| format!("{k:?}").to_lowercase());
            let mut cells = vec![
                row.tag.clone(),
                kind.unwrap_or_default(),
                row.digest.clone().unwrap_or_default(),
            ];
            if show_signed {
                cells.push(
                    row.signed
                        .as_ref()
                        .map(SignedCell::cell)
                        .unwrap_or_default(),
                );
            }
            cells.push(row.error.clone().unwrap_or_default());
            table.row(cells);
        }
        table
    })?;
    // One unreadable tag is a row; only when every tag failed is the command a failure.
    if failed > 0 && failed == rows.len() {
        return Err(CliError::Content(format!(
            "none of the {failed} tags of {} could be read",
            image.name()
        )));
    }
    Ok(())
}

/// [`classify`], a failure reported in the tag's row instead of failing the listing.
async fn classify_or_report(
    registry: &Registry,
    image: &ModuleRef,
    tag: String,
    keys: Option<&[PublicKey]>,
) -> TagRow {
    match classify(registry, image, tag.clone(), keys).await {
        Ok(row) => row,
        Err(err) => TagRow {
            tag,
            kind: None,
            digest: None,
            signed: None,
            error: Some(err.to_string()),
        },
    }
}

async fn classify(
    registry: &Registry,
    image: &ModuleRef,
    tag: String,
    keys: Option<&[PublicKey]>,
) -> Result<TagRow, CliError> {
    let Ok(image) = image.with_tag(&tag) else {
        return Ok(TagRow {
            tag,
            kind: Some(ImageKind::Unknown),
            digest: None,
            signed: None,
            error: None,
        });
    };
    let digest = registry
        .resolve(&image)
        .await
        .map_err(CliError::registry("cannot resolve", &image))?;
    let kind = match image_config(registry, &image, &digest).await {
        Ok((media_type, config)) => image_kind(&media_type, &config),
        Err(err) if is_about_content(&err) => ImageKind::Unknown,
        Err(err) => {
            return Err(CliError::registry("cannot read", image.at_digest(&digest))(
                err,
            ));
        }
    };
    let signed = match keys {
        Some(keys) => Some(SignedCell::of(
            verify::check(registry, keys, &image, &digest).await?,
        )),
        None => None,
    };
    Ok(TagRow {
        tag,
        kind: Some(kind),
        digest: Some(digest.to_string()),
        signed,
        error: None,
    })
}

async fn image_config(
    registry: &Registry,
    image: &ModuleRef,
    digest: &Digest,
) -> Result<(String, Vec<u8>), RegistryError> {
    let manifest = registry.manifest(image, digest).await?;
    let config = registry.config_blob(image, &manifest.config).await?;
    Ok((manifest.config.media_type, config))
}

/// Failures that say what the image is (not a readable image), not that the registry failed.
fn is_about_content(err: &RegistryError) -> bool {
    matches!(
        err,
        RegistryError::BadManifest(_)
            | RegistryError::NoLayers
            | RegistryError::NoPlatform { .. }
            | RegistryError::UnsupportedMediaType(_)
            | RegistryError::ForeignLayer(_)
            | RegistryError::NotAModule(_)
    )
}

/// A module image is a bundle of files: its config runs nothing. Application images have an
/// entrypoint or a command. Configs of other media types (Helm charts, artifacts) are unknown.
pub fn image_kind(media_type: &str, config: &[u8]) -> ImageKind {
    const IMAGE_CONFIGS: [&str; 2] = [
        "application/vnd.oci.image.config.v1+json",
        "application/vnd.docker.container.image.v1+json",
    ];
    if !IMAGE_CONFIGS.contains(&media_type) {
        return ImageKind::Unknown;
    }
    let Ok(config) = serde_json::from_slice::<serde_json::Value>(config) else {
        return ImageKind::Unknown;
    };
    let runs = |key: &str| {
        config["config"][key]
            .as_array()
            .is_some_and(|args| !args.is_empty())
    };
    if runs("Entrypoint") || runs("Cmd") {
        ImageKind::Application
    } else {
        ImageKind::Module
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_kind_reads_the_config() {
        let oci = "application/vnd.oci.image.config.v1+json";
        assert_eq!(image_kind(oci, br#"{"config":{}}"#), ImageKind::Module);
        assert_eq!(
            image_kind(oci, br#"{"config":{"Cmd":[]}}"#),
            ImageKind::Module
        );
        assert_eq!(image_kind(oci, br#"{"os":"linux"}"#), ImageKind::Module);
        let app = br#"{"config":{"Entrypoint":["/bin/app"]}}"#;
        assert_eq!(image_kind(oci, app), ImageKind::Application);
        let docker = "application/vnd.docker.container.image.v1+json";
        assert_eq!(
            image_kind(docker, br#"{"config":{"Cmd":["sh"]}}"#),
            ImageKind::Application
        );
        let helm = "application/vnd.cncf.helm.config.v1+json";
        assert_eq!(image_kind(helm, br#"{"name":"x"}"#), ImageKind::Unknown);
        assert_eq!(image_kind(oci, b"not json"), ImageKind::Unknown);
    }
}
