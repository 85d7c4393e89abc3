//! `kubectl-mpo`, also run as `kubectl mpo …` when on PATH. See docs/cli.md.

use std::process::ExitCode;

use clap::Parser;
use mpo_operator::cli::{self, Cli};

#[tokio::main]
async fn main() -> ExitCode {
    // Warnings and errors of the shared layers go to stderr; info logs would clutter a tool's
    // output (RUST_LOG=info shows them).
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("error"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    cli::run(Cli::parse()).await
}
