//! `kubectl-mpo`: what a module author does by hand with `crane` and `kubectl`, in one tool that
//! knows the module layout (docs/cli.md):
//!
//! ```text
//! <repo>:<module>                       the module names (tags of the root repository)
//! <repo>/<module>:<tag>                 module images (and application images, by digest)
//! <repo>/<module>/release:<v|channel>   release images holding version.json
//! ```
//!
//! Registry commands run the operator's own registry client and install pipeline (same
//! credentials handling, verified pull, safe unpack and limits); override commands talk to the
//! cluster as kubectl does. Imports nothing from the controller (tests/layering.rs).

mod args;
mod commands;
mod credential_helper;
mod diff;
mod error;
mod image;
mod output;
mod overrides;
mod progress;
mod source;

use std::process::ExitCode;

pub use args::{Cli, Command};
pub use error::CliError;

/// Runs one command; prints its result on stdout, or one line on stderr and a non-zero code.
pub async fn run(cli: Cli) -> ExitCode {
    // `diff` exits as diff(1) and `kubectl diff` do: 1 when the images differ, above 1 when it
    // could not tell.
    let is_diff = matches!(cli.command, Command::Diff(_));
    match dispatch(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(CliError::Differ) => ExitCode::from(1),
        Err(err) => {
            eprintln!(
                "kubectl-mpo: {}",
                output::escape_for_terminal(&err.to_string())
            );
            ExitCode::from(if is_diff {
                err.exit_code().max(2)
            } else {
                err.exit_code()
            })
        }
    }
}

async fn dispatch(cli: Cli) -> Result<(), CliError> {
    let Cli { global, command } = cli;
    match command {
        Command::Modules(args) => commands::modules::run(&global, args).await,
        Command::Tags(args) => commands::tags::run(&global, args).await,
        Command::Releases(args) => commands::releases::run(&global, args).await,
        Command::Channel(args) => commands::channel::run(&global, args).await,
        Command::Files(args) => commands::files::run(&global, args).await,
        Command::Images(args) => commands::images::run(&global, args).await,
        Command::Pull(args) => commands::pull::run(&global, args).await,
        Command::Diff(args) => commands::diff::run(&global, args).await,
        Command::Renew(args) => commands::renew::run(&global, args).await,
        Command::Status(args) => commands::status::run(&global, args).await,
        Command::History(args) => commands::undo::history(&global, args).await,
        Command::Rollback(args) => commands::undo::rollback(&global, args).await,
        Command::Unpin(args) => commands::undo::unpin(&global, args).await,
        Command::Webhook(args) => commands::webhook::run(&global, args).await,
        Command::Verify(args) => commands::verify::run(&global, args).await,
        Command::Completion(args) => commands::completion::run(args),
        Command::Complete(args) => commands::completion::complete(&global, args).await,
    }
}
