//! Logging setup: text or JSON lines on stderr, filtered by a RUST_LOG-style directive.

use tracing_subscriber::{EnvFilter, fmt, prelude::*};

use crate::settings::LogFormat;

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("invalid log level {0:?}: {1}")]
    Filter(String, tracing_subscriber::filter::ParseError),
    #[error("a global logger is already installed")]
    AlreadyInstalled,
}

pub fn init(format: LogFormat, level: &str) -> Result<(), TelemetryError> {
    let filter =
        EnvFilter::try_new(level).map_err(|e| TelemetryError::Filter(level.to_owned(), e))?;
    let registry = tracing_subscriber::registry().with(filter);
    let result = match format {
        LogFormat::Text => registry
            .with(
                fmt::layer()
                    .with_ansi(colours_wanted())
                    .with_writer(std::io::stderr),
            )
            .try_init(),
        LogFormat::Json => registry
            .with(
                fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_writer(std::io::stderr),
            )
            .try_init(),
    };
    result.map_err(|_| TelemetryError::AlreadyInstalled)
}

/// Colours only on a terminal (and not with `NO_COLOR`): `kubectl logs`, a log shipper or a file
/// gets plain text that a `grep key=value` finds.
fn colours_wanted() -> bool {
    use std::io::IsTerminal as _;
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}
