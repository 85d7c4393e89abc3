//! `kubectl mpo completion bash|zsh|kubectl`, and the hidden `__complete` that answers in the
//! protocol kubectl (≥ 1.26) uses for plugins: it runs `kubectl_complete-mpo <words…>` and reads
//! one candidate per line (`name<TAB>description`), then `:<directive>` (cobra's
//! `ShellCompDirective`). Candidates come from the command line's own definition, and for the
//! first operand from the cluster: ModuleSource names for registry commands, ModulePullOverride
//! names for `renew` and `status`.

use std::{io::Write, time::Duration};

use clap::{Args, CommandFactory, ValueEnum};
use kube::{Api, ResourceExt, api::ListParams};

use super::super::{
    CliError,
    args::{Cli, Global},
    source::kube_client,
};
use crate::crd::{ModulePullOverride, ModuleSource};

/// A cluster that does not answer soon gives no candidates rather than a hanging shell.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(3);

/// Print a shell completion script (bash, zsh, or kubectl's plugin helper).
///
/// `bash` and `zsh` complete `kubectl-mpo`; `kubectl` prints `kubectl_complete-mpo`, the helper
/// that kubectl ≥ 1.26 runs from PATH to complete `kubectl mpo …`.
#[derive(Debug, Args)]
#[command(
    override_usage = "kubectl mpo completion bash|zsh|kubectl",
    after_help = "Examples:\n  source <(kubectl mpo completion bash)\n  kubectl mpo completion zsh > \"${fpath[1]}/_kubectl-mpo\"\n  kubectl mpo completion kubectl > ~/.local/bin/kubectl_complete-mpo && chmod +x ~/.local/bin/kubectl_complete-mpo"
)]
pub struct CompletionArgs {
    /// The shell, or `kubectl` for the plugin completion helper.
    #[arg(value_enum)]
    pub shell: Shell,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Shell {
    Bash,
    Zsh,
    Kubectl,
}

#[derive(Debug, Args)]
pub struct CompleteArgs {
    /// The words after `kubectl mpo`, the last one being completed (may be empty).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub words: Vec<String>,
}

/// The helper kubectl looks for on PATH beside `kubectl-mpo`.
const KUBECTL_HELPER: &str = "#!/bin/sh\n# kubectl (>= 1.26) runs this to complete `kubectl mpo ...`; install it on PATH beside\n# kubectl-mpo, executable, named kubectl_complete-mpo.\nexec kubectl-mpo __complete \"$@\"\n";

pub fn run(args: CompletionArgs) -> Result<(), CliError> {
    let mut out = std::io::stdout().lock();
    match args.shell {
        Shell::Kubectl => out
            .write_all(KUBECTL_HELPER.as_bytes())
            .map_err(|e| CliError::Output(e.to_string())),
        Shell::Bash => {
            clap_complete::generate(
                clap_complete::Shell::Bash,
                &mut Cli::command(),
                "kubectl-mpo",
                &mut out,
            );
            Ok(())
        }
        Shell::Zsh => {
            clap_complete::generate(
                clap_complete::Shell::Zsh,
                &mut Cli::command(),
                "kubectl-mpo",
                &mut out,
            );
            Ok(())
        }
    }
}

/// cobra's directives: 4 = no file completion, 0 = the shell's default (files).
const NO_FILES: u8 = 4;
const FILES: u8 = 0;

/// What to offer for the last word, before any cluster lookup.
#[derive(Debug, PartialEq, Eq)]
enum Offer {
    Words(Vec<String>, u8),
    Sources,
    Overrides,
}

pub async fn complete(global: &Global, args: CompleteArgs) -> Result<(), CliError> {
    let (words, directive) = match offer(&args.words) {
        Offer::Words(words, directive) => (words, directive),
        Offer::Sources => (names::<ModuleSource>(global).await, NO_FILES),
        Offer::Overrides => (names::<ModulePullOverride>(global).await, NO_FILES),
    };
    let prefix = args.words.last().map(String::as_str).unwrap_or("");
    let mut out = String::new();
    for word in words.iter().filter(|w| w.starts_with(prefix)) {
        out.push_str(word);
        out.push('\n');
    }
    out.push_str(&format!(":{directive}\n"));
    std::io::stdout()
        .lock()
        .write_all(out.as_bytes())
        .map_err(|e| CliError::Output(e.to_string()))
}

/// Object names from the cluster; none when it cannot be reached in time.
async fn names<K>(global: &Global) -> Vec<String>
where
    K: kube::Resource<Scope = kube::core::ClusterResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
    <K as kube::Resource>::DynamicType: Default,
{
    let lookup = async {
        let client = kube_client(global).await.ok()?;
        let list = Api::<K>::all(client)
            .list(&ListParams::default())
            .await
            .ok()?;
        Some(list.items.iter().map(|o| o.name_any()).collect::<Vec<_>>())
    };
    tokio::time::timeout(LOOKUP_TIMEOUT, lookup)
        .await
        .ok()
        .flatten()
        .unwrap_or_default()
}

const REGISTRY_COMMANDS: [&str; 9] = [
    "modules", "tags", "releases", "channel", "files", "images", "pull", "diff", "verify",
];

fn offer(words: &[String]) -> Offer {
    let cli = Cli::command();
    let (last, before) = match words.split_last() {
        Some((last, before)) => (last.as_str(), before),
        None => ("", &[][..]),
    };
    let Some((name, typed)) = before.split_first() else {
        let commands = cli
            .get_subcommands()
            .filter(|c| !c.is_hide_set())
            .map(|c| match c.get_about() {
                Some(about) => format!("{}\t{}", c.get_name(), first_sentence(&about.to_string())),
                None => c.get_name().to_owned(),
            })
            .collect();
        return Offer::Words(commands, NO_FILES);
    };
    let Some(command) = cli.find_subcommand(name) else {
        return Offer::Words(Vec::new(), NO_FILES);
    };
    let arguments: Vec<&clap::Arg> = command.get_arguments().chain(cli.get_arguments()).collect();
    let takes_value = |flag: &str| {
        arguments.iter().any(|a| {
            a.get_action().takes_values()
                && (a.get_long().is_some_and(|l| flag == format!("--{l}"))
                    || a.get_short().is_some_and(|s| flag == format!("-{s}")))
        })
    };
    if last.starts_with('-') {
        let flags = arguments
            .iter()
            .filter_map(|a| a.get_long())
            .map(|l| format!("--{l}"))
            .collect();
        return Offer::Words(flags, NO_FILES);
    }
    if let Some(flag) = typed.last().filter(|w| takes_value(w)) {
        return match flag.as_str() {
            "-o" | "--output" => Offer::Words(
                ["table", "json", "yaml"].map(String::from).to_vec(),
                NO_FILES,
            ),
            "--timeout" => Offer::Words(Vec::new(), NO_FILES),
            _ => Offer::Words(Vec::new(), FILES),
        };
    }
    let positional = positional_count(typed, &takes_value);
    match (name.as_str(), positional) {
        ("renew" | "status" | "history" | "rollback" | "unpin", 0) => Offer::Overrides,
        ("completion", 0) => Offer::Words(
            Shell::value_variants()
                .iter()
                .filter_map(|s| s.to_possible_value())
                .map(|v| v.get_name().to_owned())
                .collect(),
            NO_FILES,
        ),
        (command, 0)
            if REGISTRY_COMMANDS.contains(&command) && !typed.iter().any(|w| w == "--repo") =>
        {
            Offer::Sources
        }
        _ => Offer::Words(Vec::new(), NO_FILES),
    }
}

/// Operands already typed (flags and their values skipped).
fn positional_count(typed: &[String], takes_value: &dyn Fn(&str) -> bool) -> usize {
    let mut count = 0;
    let mut skip_value = false;
    for word in typed {
        if skip_value {
            skip_value = false;
        } else if word.starts_with('-') {
            skip_value = !word.contains('=') && takes_value(word);
        } else {
            count += 1;
        }
    }
    count
}

fn first_sentence(text: &str) -> String {
    let line = text.lines().next().unwrap_or_default();
    line.split(": ")
        .next()
        .unwrap_or(line)
        .trim_end_matches('.')
        .to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(text: &str) -> Vec<String> {
        let mut words: Vec<String> = text.split(' ').map(String::from).collect();
        if text.is_empty() {
            words = vec![String::new()];
        }
        words
    }

    fn offered(text: &str) -> Vec<String> {
        match offer(&words(text)) {
            Offer::Words(words, _) => words
                .into_iter()
                .map(|w| w.split('\t').next().unwrap_or_default().to_owned())
                .filter(|w| w.starts_with(text.rsplit(' ').next().unwrap_or_default()))
                .collect(),
            other => panic!("{text:?}: {other:?}"),
        }
    }

    #[test]
    fn commands_flags_and_values_come_from_the_definition() {
        assert_eq!(offered("ta"), ["tags"]);
        assert!(offered("").contains(&"completion".to_owned()));
        assert!(!offered("").iter().any(|w| w.starts_with("__")), "hidden");
        assert!(offered("tags --no").contains(&"--no-kind".to_owned()));
        assert!(offered("pull --s").contains(&"--store".to_owned()));
        assert!(
            offered("status --out").contains(&"--output".to_owned()),
            "global"
        );
        assert_eq!(offered("status -o j"), ["json"]);
        assert_eq!(offered("completion z"), ["zsh"]);
    }

    #[test]
    fn the_first_operand_comes_from_the_cluster() {
        assert_eq!(offer(&words("tags ")), Offer::Sources);
        assert_eq!(offer(&words("files -o json ")), Offer::Sources);
        assert_eq!(offer(&words("renew ")), Offer::Overrides);
        assert_eq!(offer(&words("status e")), Offer::Overrides);
        assert_eq!(
            offer(&words("tags --repo r.example/m ")),
            Offer::Words(Vec::new(), NO_FILES),
            "no source operand with --repo"
        );
        assert_eq!(
            offer(&words("tags test ")),
            Offer::Words(Vec::new(), NO_FILES)
        );
        assert!(matches!(
            offer(&words("pull --repo r/m --docker-config ")),
            Offer::Words(_, FILES)
        ));
    }
}
