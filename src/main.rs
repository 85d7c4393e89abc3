use std::{process::ExitCode, sync::Arc};

use clap::Parser;
use mpo_operator::{
    controller,
    metrics::Metrics,
    server,
    settings::{Cli, Command},
    telemetry,
};

#[tokio::main]
async fn main() -> ExitCode {
    let Cli {
        command: Command::Run(settings),
    } = Cli::parse();
    if let Err(e) = telemetry::init(settings.log_format, &settings.log_level) {
        eprintln!("mpo-operator: {e}");
        return ExitCode::FAILURE;
    }
    let metrics = Arc::new(Metrics::default());
    let server = match server::serve(settings.metrics_addr, metrics.clone()).await {
        Ok(server) => server,
        Err(e) => {
            tracing::error!("cannot serve metrics on {}: {e}", settings.metrics_addr);
            return ExitCode::FAILURE;
        }
    };
    let result = controller::run(*settings, metrics).await;
    server.abort();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            ExitCode::FAILURE
        }
    }
}
