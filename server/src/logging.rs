//! Log output through `tracing`: text or JSON lines on standard error, levels from
//! `OTTER_LOG` (or `RUST_LOG`), `info` by default.

use std::io::IsTerminal;
use std::str::FromStr;

use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::config::LogFormat;

/// Why logging could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum LoggingError {
    /// The level filter does not parse.
    #[error("log filter {filter:?} (OTTER_LOG or RUST_LOG): {message}; use e.g. \"info\" or \"otter_server=debug,info\"")]
    Filter {
        /// The filter given.
        filter: String,
        /// What is wrong with it.
        message: String,
    },
    /// A global subscriber was already installed.
    #[error("logging was already set up: {0}")]
    AlreadySet(String),
}

/// Installs the global subscriber. Call once, from the binary.
pub fn init(format: LogFormat) -> Result<(), LoggingError> {
    let filter_text = std::env::var("OTTER_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .unwrap_or_else(|_| "info".into());
    let filter = Targets::from_str(&filter_text).map_err(|e| LoggingError::Filter {
        filter: filter_text.clone(),
        message: e.to_string(),
    })?;
    let registry = tracing_subscriber::registry().with(filter);
    let result = match format {
        LogFormat::Text => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_ansi(std::io::stderr().is_terminal())
                    .with_writer(std::io::stderr),
            )
            .try_init(),
        LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .with_writer(std::io::stderr),
            )
            .try_init(),
    };
    result.map_err(|e| LoggingError::AlreadySet(e.to_string()))
}
