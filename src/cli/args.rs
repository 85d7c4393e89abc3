//! The command line. Registry commands take the ModuleSource name first; with `--repo` there is
//! no source operand (`kubectl mpo tags test echo` = `kubectl mpo tags --repo r.example/m echo`).

use std::{path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand};

use super::{CliError, output::Format};

#[derive(Debug, Parser)]
#[command(
    name = "kubectl-mpo",
    bin_name = "kubectl mpo",
    version,
    about = "Inspect module sources and drive ModulePullOverrides (a kubectl plugin)"
)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Args)]
pub struct Global {
    /// Output format.
    #[arg(short, long, global = true, value_enum, default_value_t = Format::Table)]
    pub output: Format,
    /// The kubeconfig file (default: $KUBECONFIG or ~/.kube/config, as kubectl).
    #[arg(long, global = true)]
    pub kubeconfig: Option<PathBuf>,
    /// The kubeconfig context to use.
    #[arg(long, global = true)]
    pub context: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Module names in a source (the tags of its repo).
    Modules(Operands),
    /// Tags of a module's image repository, module images told apart from application images.
    Tags(TagsArgs),
    /// Release tags of a module: versions and channels.
    Releases(Operands),
    /// The version a channel points to (version.json), for one channel or all of them.
    Channel(Operands),
    /// The files of a module image.
    Files(Operands),
    /// images_digests.json of a module image, as a table.
    Images(Operands),
    /// Downloads a module image and unpacks it, with the operator's limits and checks.
    Pull(PullArgs),
    /// Files added, removed and changed between two tags of a module. Exits 1 when they differ
    /// (as diff(1) and `kubectl diff` do), 2 or more when it cannot compare.
    Diff(DiffArgs),
    /// Asks the operator to check a ModulePullOverride now, and optionally waits for the result.
    Renew(RenewArgs),
    /// ModulePullOverrides with tag, digest, age, Ready, message and the source's flag.
    Status(StatusArgs),
}

/// Where the registry comes from: a ModuleSource in the cluster, or these flags.
#[derive(Debug, Args)]
pub struct RepoArgs {
    /// A repository to use instead of a ModuleSource, e.g. registry.example.com/deckhouse/modules.
    #[arg(long)]
    pub repo: Option<String>,
    /// A docker config.json with credentials for the repo (default: $DOCKER_CONFIG/config.json
    /// or ~/.docker/config.json, when it has an entry for the host).
    #[arg(long, requires = "repo")]
    pub docker_config: Option<PathBuf>,
    /// A PEM file of CA certificates to trust for the repo, besides the system roots.
    #[arg(long, requires = "repo")]
    pub ca: Option<PathBuf>,
    /// Talk plain HTTP to the repo's registry.
    #[arg(long, requires = "repo")]
    pub insecure_http: bool,
}

#[derive(Debug, Args)]
pub struct Operands {
    #[command(flatten)]
    pub repo: RepoArgs,
    /// `[SOURCE]` (absent with --repo), then the command's own operands: `modules`: none;
    /// `releases`: MODULE; `channel`: MODULE [CHANNEL]; `files`, `images`: MODULE:TAG (or
    /// MODULE@sha256:…); `diff`: MODULE TAG_A TAG_B.
    #[arg(value_name = "OPERANDS")]
    pub operands: Vec<String>,
}

#[derive(Debug, Args)]
pub struct TagsArgs {
    #[command(flatten)]
    pub operands: Operands,
    /// Only list the tags, without reading each image's config to tell its kind.
    #[arg(long)]
    pub no_kind: bool,
}

#[derive(Debug, Args)]
pub struct DiffArgs {
    #[command(flatten)]
    pub operands: Operands,
    /// Exit 0 even when the images differ (for scripts that only want the listing).
    #[arg(long)]
    pub exit_zero: bool,
}

#[derive(Debug, Args)]
pub struct PullArgs {
    #[command(flatten)]
    pub operands: Operands,
    /// Treat DIR as an operator download directory: unpack into <DIR>/<module>/versions/<hex>,
    /// switch <DIR>/<module>/dev and link <DIR>/modules/<weight>-<module>, as the operator does.
    #[arg(long)]
    pub store: bool,
}

#[derive(Debug, Args)]
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

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// One ModulePullOverride (default: all).
    pub mpo: Option<String>,
}

impl Operands {
    /// Splits off the source operand (unless --repo is given) and checks the count of the rest:
    /// `required` names the operands every call has, `optional` how many more may follow.
    pub fn split(
        &self,
        required: &[&str],
        optional: usize,
    ) -> Result<(Option<String>, Vec<String>), CliError> {
        let mut rest = self.operands.clone();
        let source = match self.repo.repo {
            Some(_) => None,
            None if rest.is_empty() => {
                return Err(CliError::Usage(
                    "name a ModuleSource, or give --repo <registry/path>".into(),
                ));
            }
            None => Some(rest.remove(0)),
        };
        if rest.len() < required.len() {
            let missing = required[rest.len()..].join(" ");
            return Err(CliError::Usage(format!("missing operand: {missing}")));
        }
        if rest.len() > required.len() + optional {
            let extra = rest[required.len() + optional..].join(" ");
            return Err(CliError::Usage(format!("unexpected operand: {extra}")));
        }
        Ok((source, rest))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Cli {
        Cli::try_parse_from(std::iter::once("kubectl-mpo").chain(args.iter().copied()))
            .expect("parses")
    }

    fn operands(cli: Cli) -> Operands {
        match cli.command {
            Command::Channel(o) | Command::Files(o) => o,
            Command::Diff(d) => d.operands,
            Command::Tags(t) => t.operands,
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn the_source_operand_comes_first_unless_repo_is_given() {
        let o = operands(parse(&["channel", "test", "echo", "alpha"]));
        let (source, rest) = o.split(&["MODULE"], 1).expect("valid");
        assert_eq!(source.as_deref(), Some("test"));
        assert_eq!(rest, ["echo", "alpha"]);

        let o = operands(parse(&["channel", "--repo", "r.example/m", "echo"]));
        let (source, rest) = o.split(&["MODULE"], 1).expect("valid");
        assert_eq!(source, None);
        assert_eq!(rest, ["echo"]);
    }

    #[test]
    fn wrong_operand_counts_say_what_is_missing_or_extra() {
        let o = operands(parse(&["diff", "test", "echo", "a"]));
        let err = o
            .split(&["MODULE", "TAG_A", "TAG_B"], 0)
            .expect_err("short");
        assert_eq!(err.to_string(), "missing operand: TAG_B");
        let o = operands(parse(&["files", "--repo", "r/m", "echo:a", "b"]));
        let err = o.split(&["MODULE:TAG"], 0).expect_err("long");
        assert_eq!(err.to_string(), "unexpected operand: b");
        let o = operands(parse(&["tags"]));
        assert!(o.split(&["MODULE"], 0).is_err());
    }

    #[test]
    fn repo_only_flags_need_repo() {
        let cli = Cli::try_parse_from(["kubectl-mpo", "modules", "test", "--insecure-http"]);
        assert!(cli.is_err());
    }

    #[test]
    fn output_format_is_global() {
        let cli = parse(&["status", "-o", "json"]);
        assert_eq!(cli.global.output, Format::Json);
        let cli = parse(&["-o", "yaml", "modules", "test"]);
        assert_eq!(cli.global.output, Format::Yaml);
    }
}
