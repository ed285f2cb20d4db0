//! Turns a checked [`Config`] into running edges, queues and relays.
//!
//! This is a stub: the wiring to the library lands separately. It keeps the
//! signature the daemon calls so `main.rs` (CLI, logging, signals) is done.

use crate::config::Config;

/// Runs everything `config` describes until `shutdown` becomes `true`.
///
/// # Errors
///
/// When something cannot be started (a listener cannot bind, a spool
/// cannot be opened); the message is printed and the process exits 1.
pub async fn run(
    config: &Config,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) -> Result<(), String> {
    tracing::warn!(
        edges = config.edges.len(),
        queues = config.queues.len(),
        relays = config.relays.len(),
        "not wired yet: nothing listens; waiting for shutdown"
    );
    // A dropped sender counts as shutdown too.
    while !*shutdown.borrow_and_update() {
        if shutdown.changed().await.is_err() {
            break;
        }
    }
    Ok(())
}
