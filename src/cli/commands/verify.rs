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
use crate::signing::{self, PublicKey};

/// Check the cosign signature of a module image against public keys; exit 1 when none verifies.
#[derive(Debug, Args)]
#[command(
    override_usage = "kubectl mpo verify [OPTIONS] --key FILE [SOURCE] MODULE:TAG",
    after_help = "Examples:\n  kubectl mpo verify deckhouse-prod echo:v1.23.1 --key cosign.pub\n  kubectl mpo verify --repo registry.example.com/modules echo:main --key old.pub --key new.pub"
)]
pub struct VerifyArgs {
    #[command(flatten)]
    pub repo: RepoArgs,
    /// A trusted public key in PEM (ECDSA P-256 as `cosign generate-key-pair` writes it, RSA or
    /// Ed25519); repeat it for several, as during a key rotation.
    #[arg(long = "key", value_name = "FILE", required = true)]
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
    reference: String,
    annotations: std::collections::BTreeMap<String, serde_json::Value>,
    /// cosign attached a transparency-log entry; it is not checked (offline, keyed signature).
    tlog_entry_unchecked: bool,
}

pub async fn run(global: &Global, args: VerifyArgs) -> Result<(), CliError> {
    let keys = read_keys(&args.keys)?;
    let (source, rest) = split_operands(&args.repo, &args.operands, &["MODULE:TAG"], 0)?;
    let registry = source::registry(global, source.as_deref(), &args.repo).await?;
    let (image, digest) = image_at(&registry, &rest[0]).await?;
    let signatures =
        registry
            .cosign_signatures(&image, &digest)
            .await
            .map_err(CliError::registry(
                "cannot read the signatures of",
                image.at_digest(&digest),
            ))?;
    let pairs = signatures
        .iter()
        .map(|s| (s.payload.as_slice(), s.signature.as_slice()));
    let verified = signing::check_any(&keys, pairs, &digest.to_string(), &image.name()).map_err(
        |refusal| CliError::Unverified {
            image: image.at_digest(&digest),
            refusal,
        },
    )?;
    let algorithm = keys
        .iter()
        .find(|k| k.fingerprint() == verified.key)
        .map_or("", |k| k.algorithm().name());
    // The signature that verified is the one whose payload names the digest; its log entry,
    // if any, is what the note is about.
    let tlog = signatures.iter().any(|s| s.has_tlog_entry);
    let row = Signed {
        image: image.name(),
        digest: verified.payload.digest.clone(),
        key: verified.key.clone(),
        algorithm,
        reference: verified.payload.reference.clone(),
        annotations: verified.payload.annotations.clone(),
        tlog_entry_unchecked: tlog,
    };
    output::print(global.output, &[row], |rows| {
        let mut table = Table::new(&["DIGEST", "KEY", "ALGORITHM", "SIGNED FOR", "ANNOTATIONS"]);
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
                r.reference.clone(),
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

fn read_keys(paths: &[PathBuf]) -> Result<Vec<PublicKey>, CliError> {
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
