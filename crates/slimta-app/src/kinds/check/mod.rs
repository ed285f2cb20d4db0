//! Edge checks of the app: `[check.NAME]` sections, and the names an edge
//! lists in `checks` (run, in order, after the relay-control rule of
//! `accept_domains`, at the SMTP stage each needs: a recipient check at
//! RCPT, a content check once the message is in).
//!
//! Each kind is a [`CheckKind`] in [`KINDS`]: its `type` name and the
//! function that reads its keys into [`CheckSettings`] (which later builds
//! the library [`Validators`](slimta::edge::Validators) link). A kind that
//! is named but not built yet has no reader: a file using it is refused
//! by `--check-config` with "not built yet" instead of running without it.
//!
//! Decisions:
//! - An edge's links form one `ValidatorChain`: relay control first, then
//!   the listed checks; the first refusal wins and stops the chain (a later
//!   check never turns a refusal into an acceptance).
//! - Checks are always named sections (they carry parameters: lists,
//!   hosts, zones); there are no bare names.
//! - The same check listed twice in one edge is an error.

mod address_rules;
mod dnsbl;
mod recipient_list;
mod spf;
mod trusted;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::Arc;

use slimta::edge::DynValidators;
use toml::Table;

use crate::config::DnsConfig;
use crate::config::fields::{Errors, Section, string};
use crate::file_reloads::FileReloads;

/// What a configured check needs to build its library object.
pub struct CheckContext<'a> {
    /// `process.hostname`.
    pub hostname: &'a str,
    /// The `[dns]` section: checks that ask the DNS (SPF, DNS lists) use
    /// its nameservers, never a resolver of their own choosing.
    pub dns: &'a DnsConfig,
    /// Where a check that loads a file registers its SIGHUP re-read.
    pub files: &'a FileReloads,
}

/// The settings one kind read from its section, able to build the check.
pub trait CheckSettings: fmt::Debug + Send + Sync {
    /// The link of the edge's validator chain.
    ///
    /// # Errors
    ///
    /// What stops the check from being built (a resolver that cannot be
    /// made, a file that became unreadable since the configuration was
    /// checked), prefixed by nothing: the caller names the check.
    fn validators(&self, context: &CheckContext<'_>) -> Result<Arc<dyn DynValidators>, String>;
}

/// Reads a kind's keys from its section (`type` is already taken).
type ReadSettings = super::sections::Reader<dyn CheckSettings>;

/// One `type` of check.
pub struct CheckKind {
    /// The `type` in the file.
    pub name: &'static str,
    /// `None`: the kind is known but not built yet.
    read: Option<ReadSettings>,
}

/// Every kind of check the app knows, built or planned.
pub const KINDS: &[CheckKind] = &[
    recipient_list::RECIPIENT_LIST,
    address_rules::RECIPIENTS,
    address_rules::SENDERS,
    spf::SPF,
    dnsbl::DNSBL,
    planned("milter"),
];

const fn planned(name: &'static str) -> CheckKind {
    CheckKind { name, read: None }
}

/// A configured check: a `[check.NAME]` section.
pub type CheckConfig = super::sections::Configured<CheckKind>;

impl CheckConfig {
    /// The library link.
    ///
    /// # Errors
    ///
    /// See [`CheckSettings::validators`]; the message names the check.
    pub fn validators(&self, context: &CheckContext<'_>) -> Result<Arc<dyn DynValidators>, String> {
        self.settings
            .validators(context)
            .map_err(|e| format!("check.{}: {e}", self.name))
    }
}

impl super::sections::Kind for CheckKind {
    type Settings = dyn CheckSettings;
    fn name(&self) -> &'static str {
        self.name
    }
}

impl super::sections::Readable for CheckKind {
    fn reader(&self) -> Option<ReadSettings> {
        self.read
    }
}

/// Reads every `[check.NAME]` section (see `kinds/sections.rs`).
pub(crate) fn read_sections(
    tables: &BTreeMap<String, &Table>,
    errors: &mut Errors,
) -> BTreeMap<String, CheckConfig> {
    super::sections::read("check", KINDS, tables, errors)
}

/// Reads an edge's `checks` list: each entry names a `[check.NAME]` section
/// (`sections`; `section_names` are the names of every section, read or
/// not).
pub(crate) fn read_list(
    s: &mut Section<'_>,
    errors: &mut Errors,
    sections: &BTreeMap<String, CheckConfig>,
    section_names: &BTreeSet<String>,
) -> Vec<CheckConfig> {
    let path = s.key_path("checks");
    let names = s.list(errors, "checks", string).unwrap_or_default();
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let at = format!("{path}[{i}]");
        if !seen.insert(name.clone()) {
            errors.push(at, format!("\"{name}\" is listed twice"));
        } else if let Some(check) = sections.get(name) {
            out.push(check.clone());
        } else if !section_names.contains(name) {
            errors.push(
                at,
                format!("no check named \"{name}\" (define [check.{name}] with a type)"),
            );
        }
    }
    out
}

#[cfg(test)]
pub(super) mod test_build {
    //! Builds the checks of a whole configuration file, as `build.rs` does,
    //! so a kind's test can run the link it made.

    use super::*;

    /// The links of edge `in` of `checks` (sections and the edge's list),
    /// with `[dns] nameservers = [nameserver]`.
    pub(crate) fn edge_checks(
        checks: &str,
        list: &str,
        nameserver: std::net::SocketAddr,
    ) -> Vec<Arc<dyn DynValidators>> {
        let text = format!(
            "[dns]\nnameservers = [\"{nameserver}\"]\n{checks}\n\
             [edge.in]\ntype = \"smtp\"\nlisten = [\"127.0.0.1:0\"]\nqueue = \"main\"\nchecks = {list}\n\
             [queue.main]\ntype = \"memory\"\nrelay = \"out\"\n[relay.out]\ntype = \"blackhole\"\n"
        );
        let config = crate::config::parse(&text).unwrap_or_else(|e| panic!("{e:?}"));
        let files = FileReloads::default();
        let context = CheckContext {
            hostname: "mx.test",
            dns: &config.dns,
            files: &files,
        };
        config.edges["in"]
            .checks
            .iter()
            .map(|c| c.validators(&context).unwrap())
            .collect()
    }

    /// A session of a client at `ip` that said HELO `c.test`.
    pub(crate) fn session(ip: &str) -> slimta::edge::SessionInfo {
        let mut s = slimta::edge::SessionInfo {
            id: 1,
            ..Default::default()
        };
        s.client.ip = Some(ip.parse().unwrap());
        s.client.helo = Some("c.test".into());
        s
    }
}
