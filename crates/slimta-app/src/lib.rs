//! The `slimta` executable's pieces, as a library so that tests (and the
//! binary in `main.rs`) can use them: the TOML schema ([`config`]) and the
//! code that turns a checked configuration into running objects ([`build`]),
//! and the queue operations (`slimta queue ...`: [`queue_cli`], served by a
//! running daemon through [`control`]).
//!
//! The split keeps the binary thin: `main.rs` handles the command line,
//! logging and signals; everything that knows the schema lives here.
#![warn(missing_docs)]

pub mod build;
pub mod config;
pub mod control;
pub mod privileges;
pub mod queue_cli;
mod reload;

pub use config::{Config, ConfigError, parse};
