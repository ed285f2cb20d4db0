//! SIGHUP: re-reads the configuration file and applies what can change
//! while the daemon runs.
//!
//! Applied at once (new sessions and the next RCPT or AUTH see them):
//! - `edge.NAME.accept_domains`;
//! - `edge.NAME.auth.users` of an edge that already has `[auth]`;
//! - the TLS certificate and key files of every edge with TLS (re-read
//!   from the same paths on every SIGHUP, changed or not);
//! - the files checks and policies load (address lists, alias files: see
//!   `file_reloads.rs`), re-read the same way.
//!
//! Everything else (listeners, limits, queues, relays, process, dns, an
//! edge gaining or losing TLS or AUTH, TLS file paths) is built once at
//! start: a change there is logged as needing a restart and not applied,
//! rather than applied halfway. A file that does not parse or check is
//! logged with every error and changes nothing; the daemon keeps running
//! on what it has. (Postfix's `postfix reload` is the model; restarting
//! listeners and queues live is not worth the risk of losing a session.)
//!
//! After a drop of privileges the file is read as that user: a
//! configuration readable only by root cannot be reloaded (logged).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use slimta::edge::AcceptDomains;
use slimta::edge::credentials::Credentials;
use slimta::edge::tls::ReloadableTls;

use crate::config::{Config, EdgeConfig};
use crate::file_reloads::FileReloads;

/// What SIGHUP can reach in one running edge.
pub(crate) struct EdgeHandles {
    pub(crate) accept_domains: AcceptDomains,
    pub(crate) credentials: Option<Credentials>,
    pub(crate) tls: Option<ReloadableTls>,
}

/// The running configuration and the handles to change it.
pub(crate) struct Reloader {
    path: Option<PathBuf>,
    running: Config,
    edges: BTreeMap<String, EdgeHandles>,
    files: FileReloads,
}

/// Reads and checks a configuration file as the daemon does at start.
fn read(path: &Path) -> Result<Config, Vec<String>> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| vec![format!("{}: cannot read: {e}", path.display())])?;
    crate::parse_and_check(&text).map_err(|errors| errors.iter().map(ToString::to_string).collect())
}

/// `edge` with the fields SIGHUP applies taken from `new`.
fn with_reloadable(edge: &EdgeConfig, new: &EdgeConfig) -> EdgeConfig {
    let mut merged = edge.clone();
    merged.accept_domains.clone_from(&new.accept_domains);
    if let (Some(auth), Some(new_auth)) = (&mut merged.auth, &new.auth) {
        auth.users.clone_from(&new_auth.users);
    }
    merged
}

impl Reloader {
    /// `running` was read from `path` (`None`: the embedded default, which
    /// cannot change).
    pub(crate) fn new(
        path: Option<PathBuf>,
        running: Config,
        edges: BTreeMap<String, EdgeHandles>,
        files: FileReloads,
    ) -> Self {
        Self {
            path,
            running,
            edges,
            files,
        }
    }

    /// One SIGHUP.
    pub(crate) fn reload(&mut self) {
        self.files.reload_all();
        for (name, handles) in &self.edges {
            if let Some(tls) = &handles.tls {
                match tls.reload() {
                    Ok(()) => tracing::info!(edge = %name, "TLS certificate reloaded"),
                    Err(e) => {
                        tracing::error!(edge = %name, error = %e, "TLS reload failed; keeping the old certificate");
                    }
                }
            }
        }
        let Some(path) = self.path.clone() else {
            tracing::info!("running the embedded default: no configuration file to reload");
            return;
        };
        let new = match read(&path) {
            Ok(new) => new,
            Err(errors) => {
                for error in &errors {
                    tracing::error!(error = %error, "configuration not reloaded");
                }
                return;
            }
        };
        let (applied, restart) = match self.apply(&new) {
            Ok(outcome) => outcome,
            Err(error) => {
                tracing::error!(error = %error, "configuration not reloaded");
                return;
            }
        };
        if !restart.is_empty() {
            tracing::warn!(keys = ?restart, "these configuration changes need a restart; not applied");
        }
        tracing::info!(changed = ?applied, file = %path.display(), "configuration reloaded");
    }

    /// Applies `new`'s reloadable fields; returns the keys applied and the
    /// keys that need a restart. Nothing is applied if any new user
    /// secret is malformed.
    fn apply(&mut self, new: &Config) -> Result<(Vec<String>, Vec<String>), String> {
        let mut restart = Vec::new();
        let mut changes = Vec::new();
        for (name, edge) in &self.running.edges {
            let Some(new_edge) = new.edges.get(name) else {
                restart.push(format!("edge.{name} (removed)"));
                continue;
            };
            if with_reloadable(edge, new_edge) != *new_edge {
                restart.push(format!("edge.{name}"));
            }
            if edge.accept_domains != new_edge.accept_domains {
                changes.push((name.clone(), Change::Domains));
            }
            if let (Some(auth), Some(new_auth)) = (&edge.auth, &new_edge.auth)
                && auth.users != new_auth.users
            {
                let users = Credentials::from_map(new_auth.users.clone())
                    .map_err(|e| format!("edge.{name}.auth.users: {e}"))?;
                changes.push((name.clone(), Change::Users(users)));
            }
        }
        for name in new.edges.keys() {
            if !self.running.edges.contains_key(name) {
                restart.push(format!("edge.{name} (added)"));
            }
        }
        if new.process != self.running.process {
            restart.push("process".into());
        }
        if new.dns != self.running.dns {
            restart.push("dns".into());
        }
        for (kind, running, new) in [
            ("queue", keys(&self.running.queues), keys(&new.queues)),
            ("relay", keys(&self.running.relays), keys(&new.relays)),
        ] {
            if running != new {
                restart.push(format!("{kind} names"));
            }
        }
        for (name, queue) in &self.running.queues {
            if new.queues.get(name).is_some_and(|q| q != queue) {
                restart.push(format!("queue.{name}"));
            }
        }
        for (name, relay) in &self.running.relays {
            if new.relays.get(name).is_some_and(|r| r != relay) {
                restart.push(format!("relay.{name}"));
            }
        }
        let mut applied = Vec::new();
        for (name, change) in changes {
            let (Some(handles), Some(new_edge)) = (self.edges.get(&name), new.edges.get(&name))
            else {
                continue;
            };
            let Some(edge) = self.running.edges.get_mut(&name) else {
                continue;
            };
            let key = match change {
                Change::Domains => {
                    handles.accept_domains.set_domains(&new_edge.accept_domains);
                    edge.accept_domains.clone_from(&new_edge.accept_domains);
                    "accept_domains"
                }
                Change::Users(users) => {
                    if let (Some(credentials), Some(auth), Some(new_auth)) =
                        (&handles.credentials, &mut edge.auth, &new_edge.auth)
                    {
                        credentials.replace(&users);
                        auth.users.clone_from(&new_auth.users);
                    }
                    "auth.users"
                }
            };
            applied.push(format!("edge.{name}.{key}"));
        }
        Ok((applied, restart))
    }
}

/// One change SIGHUP applies to a running edge.
enum Change {
    Domains,
    Users(Credentials),
}

fn keys<V>(map: &BTreeMap<String, V>) -> Vec<&String> {
    map.keys().collect()
}
