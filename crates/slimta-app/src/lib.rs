//! The `slimta` executable's pieces, as a library so that tests (and the
//! binary in `main.rs`) can use them: the TOML schema ([`config`]) and the
//! code that turns a checked configuration into running objects ([`build`]),
//! and the queue operations (`slimta queue ...`: [`queue_cli`], served by a
//! running daemon through [`control`]), and `slimta dkim keygen` ([`dkim_cli`]).
//!
//! The split keeps the binary thin: `main.rs` handles the command line,
//! logging and signals; everything that knows the schema lives here.
#![warn(missing_docs)]

pub mod build;
pub mod config;
pub mod control;
pub mod dkim_cli;
pub mod file_reloads;
pub mod kinds;
pub mod privileges;
pub mod queue_cli;
mod reload;

pub use config::{Config, ConfigError, parse};

/// [`parse`], then what only this machine can answer: the configured user
/// and group exist, and nothing unsupported is asked for. What the daemon
/// runs at start and at SIGHUP, and `--check-config` reports.
///
/// # Errors
///
/// Every problem found, each with its key path.
pub fn parse_and_check(text: &str) -> Result<Config, Vec<ConfigError>> {
    let config = parse(text)?;
    let mut errors = config.unsupported();
    errors.extend(privileges::unknown_names(
        config.process.user.as_deref(),
        config.process.group.as_deref(),
    ));
    if errors.is_empty() {
        Ok(config)
    } else {
        Err(errors)
    }
}
