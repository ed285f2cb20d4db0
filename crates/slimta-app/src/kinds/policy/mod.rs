//! Queue and relay policies of the app: `[policy.NAME]` sections, and the
//! names a queue lists in `policies` (run once on every message before it
//! is stored) and `relay_policies` (run on a copy before every delivery
//! attempt).
//!
//! Each kind is a [`PolicyKind`] in [`KINDS`]: its `type` name, where it
//! can run, and the function that reads its keys into a [`PolicySettings`]
//! (which later builds the library object). A kind that is named but not
//! built yet has no reader: a file using it is refused by `--check-config`
//! with "not built yet" instead of running without it.
//!
//! Decisions:
//! - A name in `policies` is first looked up as a `[policy.NAME]` section;
//!   failing that, a kind that takes no keys may be named by its `type`
//!   directly (`policies = ["add_date_header"]`, as before sections
//!   existed). A section may therefore shadow a kind's name; that is the
//!   operator's explicit choice.
//! - A policy used where it cannot run (a header policy as a relay policy,
//!   a split per attempt) is a configuration error, not a silent no-op.
//! - The same policy listed twice in one list is an error (a second
//!   `Received:` header or a second split is never what was meant).

mod authenticate;
mod dkim_sign;
mod forward;
mod headers;
mod milter;
mod on_error;
mod rspamd;
mod spamassassin;
mod split;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::Arc;

use slimta::policy::{DynQueuePolicy, DynRelayPolicy};
use toml::Table;

use crate::config::DnsConfig;
use crate::config::fields::{Errors, Section, quoted, string};
use crate::file_reloads::FileReloads;

/// Where a policy runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// Once per message, before it is stored (`queue.NAME.policies`).
    Queue,
    /// Before every delivery attempt, on a copy (`queue.NAME.relay_policies`).
    Relay,
}

impl Stage {
    fn list_key(self) -> &'static str {
        match self {
            Self::Queue => "policies",
            Self::Relay => "relay_policies",
        }
    }
}

/// What a configured policy needs to build its library object.
pub struct BuildContext<'a> {
    /// `process.hostname`.
    pub hostname: &'a str,
    /// The `[dns]` section, for policies that ask the DNS.
    pub dns: &'a DnsConfig,
    /// Where a policy that loads a file registers its SIGHUP re-read.
    pub files: &'a FileReloads,
}

/// The settings one kind read from its section, able to build the policy.
pub trait PolicySettings: fmt::Debug + Send + Sync {
    /// The queue policy, if the kind runs before storage.
    fn queue_policy(&self, context: &BuildContext<'_>) -> Option<Arc<dyn DynQueuePolicy>> {
        let _ = context;
        None
    }

    /// The relay policy, if the kind runs per attempt.
    fn relay_policy(&self, context: &BuildContext<'_>) -> Option<Arc<dyn DynRelayPolicy>> {
        let _ = context;
        None
    }
}

/// Reads a kind's keys from its section (`type` is already taken).
type ReadSettings = super::sections::Reader<dyn PolicySettings>;

/// One `type` of policy.
pub struct PolicyKind {
    /// The `type` in the file.
    pub name: &'static str,
    /// The stages it can run at.
    pub stages: &'static [Stage],
    /// Whether it can be named by its type alone (it has no keys).
    pub bare: bool,
    /// `None`: the kind is known but not built yet.
    read: Option<ReadSettings>,
}

/// Every kind of policy the app knows, built or planned.
pub const KINDS: &[PolicyKind] = &[
    headers::ADD_DATE_HEADER,
    headers::ADD_MESSAGE_ID_HEADER,
    headers::ADD_RECEIVED_HEADER,
    split::RECIPIENT_SPLIT,
    split::RECIPIENT_DOMAIN_SPLIT,
    forward::FORWARD,
    spamassassin::SPAMASSASSIN,
    rspamd::RSPAMD,
    dkim_sign::DKIM_SIGN,
    authenticate::AUTHENTICATE,
    milter::MILTER,
];

fn kind_named(name: &str) -> Option<&'static PolicyKind> {
    KINDS.iter().find(|k| k.name == name)
}

/// A configured policy: a `[policy.NAME]` section or a bare kind name.
pub type PolicyConfig = super::sections::Configured<PolicyKind>;

impl PolicyConfig {
    /// The library queue policy.
    ///
    /// # Panics
    ///
    /// Never for a checked configuration: the checker refuses a policy in
    /// `policies` whose kind cannot run there.
    pub fn queue_policy(&self, context: &BuildContext<'_>) -> Arc<dyn DynQueuePolicy> {
        self.settings
            .queue_policy(context)
            .unwrap_or_else(|| panic!("policy {:?} cannot run as a queue policy", self.name))
    }

    /// The library relay policy.
    ///
    /// # Panics
    ///
    /// Never for a checked configuration (see [`PolicyConfig::queue_policy`]).
    pub fn relay_policy(&self, context: &BuildContext<'_>) -> Arc<dyn DynRelayPolicy> {
        self.settings
            .relay_policy(context)
            .unwrap_or_else(|| panic!("policy {:?} cannot run as a relay policy", self.name))
    }
}

impl super::sections::Kind for PolicyKind {
    type Settings = dyn PolicySettings;
    fn name(&self) -> &'static str {
        self.name
    }
}

impl super::sections::Readable for PolicyKind {
    fn reader(&self) -> Option<ReadSettings> {
        self.read
    }
}

/// Reads every `[policy.NAME]` section (see `kinds/sections.rs`).
pub(crate) fn read_sections(
    tables: &BTreeMap<String, &Table>,
    errors: &mut Errors,
) -> BTreeMap<String, PolicyConfig> {
    super::sections::read("policy", KINDS, tables, errors)
}

/// Reads a queue's `policies` or `relay_policies` list: each entry names a
/// `[policy.NAME]` section (`sections`, with `section_names` the names of
/// every section, read or not) or a bare kind, and must be able to run at
/// `stage`.
pub(crate) fn read_list(
    s: &mut Section<'_>,
    errors: &mut Errors,
    stage: Stage,
    sections: &BTreeMap<String, PolicyConfig>,
    section_names: &BTreeSet<String>,
) -> Vec<PolicyConfig> {
    let key = stage.list_key();
    let path = s.key_path(key);
    let names = s.list(errors, key, string).unwrap_or_default();
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let at = format!("{path}[{i}]");
        if !seen.insert(name.clone()) {
            errors.push(at, format!("\"{name}\" is listed twice"));
            continue;
        }
        let policy = if let Some(policy) = sections.get(name) {
            policy.clone()
        } else if section_names.contains(name) {
            // The section has errors of its own, already reported.
            continue;
        } else {
            match bare(name) {
                Ok(policy) => policy,
                Err(message) => {
                    errors.push(at, message);
                    continue;
                }
            }
        };
        if !policy.kind.stages.contains(&stage) {
            let other = if stage == Stage::Queue {
                Stage::Relay
            } else {
                Stage::Queue
            };
            errors.push(
                at,
                format!(
                    "policy \"{name}\" (type \"{}\") cannot run in {key}; list it in {}",
                    policy.kind.name,
                    other.list_key()
                ),
            );
            continue;
        }
        out.push(policy);
    }
    out
}

/// A kind named by its type alone.
fn bare(name: &str) -> Result<PolicyConfig, String> {
    let kind = kind_named(name).filter(|k| k.bare);
    let Some((kind, read)) = kind.and_then(|k| k.read.map(|r| (k, r))) else {
        let usable: Vec<&str> = KINDS
            .iter()
            .filter(|k| k.bare && k.read.is_some())
            .map(|k| k.name)
            .collect();
        return Err(format!(
            "no policy named \"{name}\" (define [policy.{name}] with a type, or use one of: {})",
            quoted(&usable)
        ));
    };
    let empty = Table::new();
    let mut errors = Errors::default();
    let settings = read(&mut Section::new(String::new(), &empty), &mut errors)
        .ok_or_else(|| format!("policy type \"{name}\" needs a [policy.NAME] section"))?;
    Ok(PolicyConfig {
        name: name.to_owned(),
        kind,
        settings,
    })
}
