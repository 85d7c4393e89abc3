//! `kubectl mpo verify`.

use std::path::PathBuf;

use clap::Args;
use serde::Serialize;

use super::super::{
    CliError,
    args::{Global, RepoArgs, split_operands},
    image::image_at,
    output::{self, Table},
    source,
};
use crate::{
    Digest,
    registry::{ModuleRef, Registry},
    signing::{self, PublicKey},
};

/// Check the cosign signatures of a module image (classic `.sig` tags and Sigstore bundle
/// referrers) against public keys: the `--key` files, else the ModuleSource's `spec.verify`
/// keys. Exit 1 when none verifies.
#[derive(Debug, Args)]
#[command(
    override_usage = "kubectl mpo verify [OPTIONS] [--key FILE] [SOURCE] MODULE:TAG",
    after_help = "Examples:\n  kubectl mpo verify deckhouse-prod echo:v1.23.1               # the source's spec.verify keys\n  kubectl mpo verify deckhouse-prod echo:v1.23.1 --key cosign.pub\n  kubectl mpo verify --repo registry.example.com/modules echo:main --key old.pub --key new.pub"
)]
pub struct VerifyArgs {
    #[command(flatten)]
    pub repo: RepoArgs,
    /// A trusted public key in PEM (ECDSA P-256 as `cosign generate-key-pair` writes it, RSA or
    /// Ed25519); repeat it for several, as during a key rotation. Without it, the keys of the
    /// ModuleSource's signature policy.
    #[arg(long = "key", value_name = "FILE")]
    pub keys: Vec<PathBuf>,
    /// [SOURCE] MODULE:TAG: the ModuleSource (none with --repo) and the image, as MODULE:TAG, MODULE@sha256:… or MODULE:TAG@sha256:….
    #[arg(value_name = "[SOURCE] MODULE:TAG")]
    pub operands: Vec<String>,
}

#[derive(Serialize)]
struct Signed {
    image: String,
    digest: String,
    key: String,
    algorithm: &'static str,
    format: signing::Format,
    reference: String,
    annotations: std::collections::BTreeMap<String, serde_json::Value>,
    /// cosign attached a transparency-log entry; it is not checked (offline, keyed signature).
    tlog_entry_unchecked: bool,
}

pub async fn run(global: &Global, args: VerifyArgs) -> Result<(), CliError> {
    let (source, rest) = split_operands(&args.repo, &args.operands, &["MODULE:TAG"], 0)?;
    let (registry, policy) =
        source::registry_and_policy(global, source.as_deref(), &args.repo).await?;
    let keys = trusted_keys(&args.keys, policy, source.as_deref())?;
    let (image, digest) = image_at(&registry, &rest[0]).await?;
    let verified = check(&registry, &keys, &image, &digest)
        .await?
        .map_err(|refusal| CliError::Unverified {
            image: image.at_digest(&digest),
            refusal,
        })?;
    let algorithm = keys
        .iter()
        .find(|k| k.fingerprint() == verified.key)
        .map_or("", |k| k.algorithm().name());
    let tlog = verified.has_tlog_entry;
    let row = Signed {
        image: image.name(),
        digest: verified.payload.digest.clone(),
        key: verified.key.clone(),
        algorithm,
        format: verified.format,
        reference: verified.payload.reference.clone(),
        annotations: verified.payload.annotations.clone(),
        tlog_entry_unchecked: tlog,
    };
    output::print(global.output, &[row], |rows| {
        let mut table = Table::new(&[
            "DIGEST",
            "KEY",
            "ALGORITHM",
            "FORMAT",
            "SIGNED FOR",
            "ANNOTATIONS",
        ]);
        for r in rows {
            let annotations: Vec<String> = r
                .annotations
                .iter()
                .map(|(k, v)| match v {
                    serde_json::Value::String(s) => format!("{k}={s}"),
                    other => format!("{k}={other}"),
                })
                .collect();
            table.row(vec![
                r.digest.clone(),
                r.key.clone(),
                r.algorithm.to_owned(),
                r.format.name().to_owned(),
                if r.reference.is_empty() {
                    "(the digest only)".to_owned()
                } else {
                    r.reference.clone()
                },
                annotations.join(","),
            ]);
        }
        table
    })?;
    if tlog {
        eprintln!(
            "note: the signature carries a transparency-log entry, which was not checked against a log"
        );
    }
    Ok(())
}

/// The signatures of `image@digest` checked against `keys`: the outer error is the registry's,
/// the inner result the verdict.
pub async fn check(
    registry: &Registry,
    keys: &[PublicKey],
    image: &ModuleRef,
    digest: &Digest,
) -> Result<Result<signing::Verified, signing::Refusal>, CliError> {
    let signatures = registry
        .signatures(image, digest)
        .await
        .map_err(CliError::registry(
            "cannot read the signatures of",
            image.at_digest(digest),
        ))?;
    Ok(signing::check_any(
        keys,
        &signatures,
        &digest.to_string(),
        &image.name(),
    ))
}

/// `--key` files when given, else the source's policy keys; one or the other is needed.
pub fn trusted_keys(
    paths: &[PathBuf],
    policy: Option<Vec<PublicKey>>,
    source: Option<&str>,
) -> Result<Vec<PublicKey>, CliError> {
    if !paths.is_empty() {
        return read_keys(paths);
    }
    policy.ok_or_else(|| {
        CliError::Usage(match source {
            Some(name) => format!(
                "ModuleSource {name:?} has no signature policy (spec.verify): give the keys with --key FILE"
            ),
            None => "give the trusted keys with --key FILE".into(),
        })
    })
}

pub fn read_keys(paths: &[PathBuf]) -> Result<Vec<PublicKey>, CliError> {
    paths
        .iter()
        .map(|path| {
            let pem = std::fs::read_to_string(path).map_err(|cause| CliError::ReadFile {
                path: path.clone(),
                cause,
            })?;
            PublicKey::from_pem(&pem).map_err(|cause| CliError::Key {
                path: path.clone(),
                cause,
            })
        })
        .collect()
}
