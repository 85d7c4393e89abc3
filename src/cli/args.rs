//! The command line. Registry commands take the ModuleSource name first; with `--repo` there is
//! no source operand (`kubectl mpo tags test echo` = `kubectl mpo tags --repo r.example/m echo`).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use super::{CliError, commands, output::Format};

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
    Modules(commands::modules::ModulesArgs),
    Tags(commands::tags::TagsArgs),
    Releases(commands::releases::ReleasesArgs),
    Channel(commands::channel::ChannelArgs),
    Files(commands::files::FilesArgs),
    Images(commands::images::ImagesArgs),
    Pull(commands::pull::PullArgs),
    Diff(commands::diff::DiffArgs),
    Renew(commands::renew::RenewArgs),
    Status(commands::status::StatusArgs),
    History(commands::undo::HistoryArgs),
    Rollback(commands::undo::RollbackArgs),
    Unpin(commands::undo::UnpinArgs),
    Webhook(commands::webhook::WebhookArgs),
    Verify(commands::verify::VerifyArgs),
    Completion(commands::completion::CompletionArgs),
    /// Shell completion candidates in the protocol kubectl uses for plugins (cobra's
    /// `__complete`), for `kubectl_complete-mpo`.
    #[command(name = "__complete", hide = true)]
    Complete(commands::completion::CompleteArgs),
}

/// Where the registry comes from: a ModuleSource in the cluster, or these flags.
#[derive(Debug, Default, Args)]
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

/// Splits off the source operand (unless --repo is given) and checks the count of the rest:
/// `required` names the operands every call has, `optional` how many more may follow.
pub fn split_operands(
    repo: &RepoArgs,
    operands: &[String],
    required: &[&str],
    optional: usize,
) -> Result<(Option<String>, Vec<String>), CliError> {
    let mut rest = operands.to_vec();
    let source = match repo.repo {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Cli {
        Cli::try_parse_from(std::iter::once("kubectl-mpo").chain(args.iter().copied()))
            .expect("parses")
    }

    /// The repo flags and operands of a registry command.
    fn operands(cli: Cli) -> (RepoArgs, Vec<String>) {
        match cli.command {
            Command::Channel(c) => (c.repo, c.operands),
            Command::Files(f) => (f.repo, f.operands),
            Command::Diff(d) => (d.repo, d.operands),
            Command::Tags(t) => (t.repo, t.operands),
            other => panic!("unexpected {other:?}"),
        }
    }

    fn split(
        (repo, operands): (RepoArgs, Vec<String>),
        required: &[&str],
        optional: usize,
    ) -> Result<(Option<String>, Vec<String>), CliError> {
        split_operands(&repo, &operands, required, optional)
    }

    #[test]
    fn the_source_operand_comes_first_unless_repo_is_given() {
        let o = operands(parse(&["channel", "test", "echo", "alpha"]));
        let (source, rest) = split(o, &["MODULE"], 1).expect("valid");
        assert_eq!(source.as_deref(), Some("test"));
        assert_eq!(rest, ["echo", "alpha"]);

        let o = operands(parse(&["channel", "--repo", "r.example/m", "echo"]));
        let (source, rest) = split(o, &["MODULE"], 1).expect("valid");
        assert_eq!(source, None);
        assert_eq!(rest, ["echo"]);
    }

    #[test]
    fn wrong_operand_counts_say_what_is_missing_or_extra() {
        let o = operands(parse(&["diff", "test", "echo", "a"]));
        let err = split(o, &["MODULE", "TAG_A", "TAG_B"], 0).expect_err("short");
        assert_eq!(err.to_string(), "missing operand: TAG_B");
        let o = operands(parse(&["files", "--repo", "r/m", "echo:a", "b"]));
        let err = split(o, &["MODULE:TAG"], 0).expect_err("long");
        assert_eq!(err.to_string(), "unexpected operand: b");
        let o = operands(parse(&["tags"]));
        assert!(split(o, &["MODULE"], 0).is_err());
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
