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

/// Files added, removed and changed between two tags of a module; with --pending, between what
/// an override applied and what its next check would switch in (no cluster write).
///
/// Exits 1 when they differ (as diff(1) and `kubectl diff` do), 2 or more when it cannot compare.
#[derive(Debug, Args)]
#[command(
    override_usage = "kubectl mpo diff [OPTIONS] [SOURCE] MODULE TAG_A TAG_B\n       kubectl mpo diff --pending MPO",
    after_help = "Examples:\n  kubectl mpo diff deckhouse-prod echo v1.23.1 main-patch-03354\n  kubectl mpo diff deckhouse-prod echo v1.23.1 v1.23.2 -o json --exit-zero\n  kubectl mpo diff --pending echo"
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
    /// MPO: compare the digest the override applied with what its tag points to now (or its
    /// pin), from the override's ModuleSource.
    #[arg(long, conflicts_with = "repo")]
    pub pending: bool,
}

pub async fn run(global: &Global, args: DiffArgs) -> Result<(), CliError> {
    let exit_zero = args.exit_zero;
    let (registry, module, sides) = if args.pending {
        pending_sides(global, &args.operands).await?
    } else {
        let (source, rest) =
            split_operands(&args.repo, &args.operands, &["MODULE", "TAG_A", "TAG_B"], 0)?;
        let registry = source::registry(global, source.as_deref(), &args.repo).await?;
        let mut sides = Vec::with_capacity(2);
        for tag in &rest[1..] {
            let image = module_ref(&registry, &rest[0], tag, false)?;
            let digest = resolve(&registry, &image).await?;
            sides.push((tag.clone(), digest));
        }
        (registry, rest[0].clone(), sides)
    };
    let work = WorkDir::temporary()?;
    let mut trees: Vec<Vec<Entry>> = Vec::with_capacity(2);
    for (i, (tag, digest)) in sides.iter().enumerate() {
        let image = module_ref(&registry, &module, tag, false)?;
        let tree = fetch_tree(&registry, &image, digest, work.path(), &format!("t{i}")).await?;
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

/// `--pending MPO`: the registry of its source, the module, and (tag, digest) of what it applied
/// and of what its next check would switch in: its pin, else the tag's digest now.
async fn pending_sides(
    global: &Global,
    operands: &[String],
) -> Result<
    (
        crate::registry::Registry,
        String,
        Vec<(String, crate::Digest)>,
    ),
    CliError,
> {
    let [name] = operands else {
        return Err(CliError::Usage(
            "--pending takes one operand: the MPO".into(),
        ));
    };
    let api = kube::Api::<crate::crd::ModulePullOverride>::all(source::kube_client(global).await?);
    let mpo = api.get(name).await.map_err(|e| {
        super::super::overrides::not_found_as(e, || CliError::MpoNotFound(name.clone()))
    })?;
    let applied = mpo
        .status
        .as_ref()
        .and_then(|s| s.image_digest.as_deref())
        .and_then(|d| d.parse().ok())
        .ok_or_else(|| CliError::Failed {
            mpo: format!("modulepulloverride/{name}"),
            message: "no module applied yet: nothing to compare with".into(),
        })?;
    let registry = source::registry(global, Some(&mpo.spec.source), &Default::default()).await?;
    let tag = mpo.spec.image_tag.clone();
    let next = match mpo.spec.image_digest.as_deref() {
        Some(pin) => pin
            .parse()
            .map_err(|_| CliError::Usage(format!("spec.imageDigest {pin:?} is not a digest")))?,
        None => resolve(&registry, &module_ref(&registry, name, &tag, false)?).await?,
    };
    Ok((
        registry,
        name.clone(),
        vec![(tag.clone(), applied), (tag, next)],
    ))
}
