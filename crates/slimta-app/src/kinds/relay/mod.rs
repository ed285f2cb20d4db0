//! Relays of the app: `[relay.NAME]` sections, each named by the queues
//! that deliver through it (`queue.NAME.relay`).
//!
//! Each kind is a [`RelayKind`] in [`KINDS`]: its `type` name, whether it
//! needs the DNS resolver, and the function that reads its keys into
//! [`RelaySettings`] (which later builds the library relay as an
//! `Arc<dyn DynRelay>`). Reading goes through `kinds/sections.rs`, as for
//! policies and checks: a key that another relay type takes is reported as
//! "unknown key for type".
//!
//! Decisions:
//! - The resolver is set up once, and only when a relay that resolves
//!   names is configured ([`RelayKind::dns`]), so a file with only local
//!   relays never reads the system's resolver configuration.
//! - The SMTP-family relays (static, mx, lmtp) share their client keys
//!   (`client.rs`); an unset `ehlo_as` means `process.hostname`.

mod agent;
mod blackhole;
mod client;
mod destinations;
mod http;
mod lmtp;
mod mx;
mod pipe;
mod static_smtp;

use std::any::Any;
use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use slimta::DynRelay;
use toml::Table;

use crate::config::fields::{Errors, Section};

/// What a configured relay needs to build its library object.
pub struct BuildContext<'a> {
    /// The relay's key path (`relay.NAME`), for error messages.
    pub section: &'a str,
    /// `process.hostname`, the default `ehlo_as`.
    pub hostname: &'a str,
    /// The resolver, set up when some relay's kind needs it.
    pub resolver: Option<&'a slimta::dns::Resolver>,
}

/// The settings one kind read from its section, able to build the relay.
pub trait RelaySettings: Any + fmt::Debug + Send + Sync {
    /// The library relay.
    ///
    /// # Errors
    ///
    /// A message with its key path when the relay cannot be built.
    fn build(&self, context: &BuildContext<'_>) -> Result<Arc<dyn DynRelay>, String>;
}

/// Reads a kind's keys from its section (`type` is already taken).
type ReadSettings = super::sections::Reader<dyn RelaySettings>;

/// One `type` of relay.
pub struct RelayKind {
    /// The `type` in the file.
    pub name: &'static str,
    /// Whether it resolves names (MX records, a smart host's address).
    pub dns: bool,
    /// Whether it keeps a session pool per host (`pool_size`).
    pub pooled: bool,
    read: ReadSettings,
}

/// Every kind of relay the app knows, in the order the `type` error lists
/// them.
pub const KINDS: &[RelayKind] = &[
    static_smtp::STATIC,
    mx::MX,
    blackhole::BLACKHOLE,
    lmtp::LMTP,
    http::HTTP,
    pipe::PIPE,
    agent::MAILDROP,
    agent::DOVECOT,
];

/// A configured relay: a `[relay.NAME]` section, its kind's settings and
/// the queue's per-destination limits for it (`destinations.rs`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RelayConfig {
    section: super::sections::Configured<RelayKind>,
    /// The per-destination scheduling keys every relay type takes.
    pub destinations: slimta::queue::DestinationSettings,
}

/// The section's name and kind read through, as for policies and checks.
impl std::ops::Deref for RelayConfig {
    type Target = super::sections::Configured<RelayKind>;
    fn deref(&self) -> &Self::Target {
        &self.section
    }
}

impl RelayConfig {
    /// See [`RelaySettings::build`].
    ///
    /// # Errors
    ///
    /// See [`RelaySettings::build`].
    pub fn build(&self, context: &BuildContext<'_>) -> Result<Arc<dyn DynRelay>, String> {
        self.settings.build(context)
    }

    /// The kind's settings as `T`, for tests of the readers.
    #[cfg(test)]
    pub(crate) fn settings_as<T: Any>(&self) -> Option<&T> {
        let any: &dyn Any = &*self.settings;
        any.downcast_ref()
    }
}

impl super::sections::Kind for RelayKind {
    type Settings = dyn RelaySettings;
    fn name(&self) -> &'static str {
        self.name
    }
}

impl super::sections::Readable for RelayKind {
    fn reader(&self) -> Option<ReadSettings> {
        Some(self.read)
    }
}

/// Reads every `[relay.NAME]` section (see `kinds/sections.rs`): the
/// kind's keys, then the destination keys every kind takes.
pub(crate) fn read_sections(
    tables: &BTreeMap<String, &Table>,
    errors: &mut Errors,
) -> BTreeMap<String, RelayConfig> {
    let elsewhere = super::sections::keys_of(KINDS);
    let mut out = BTreeMap::new();
    for (name, table) in tables {
        let mut s = Section::new(format!("relay.{name}"), table);
        let Some((kind, settings)) = super::sections::read_kind("relay", KINDS, &mut s, errors)
        else {
            continue;
        };
        let pool_size = kind.pooled.then(|| {
            table
                .get("pool_size")
                .and_then(toml::Value::as_integer)
                .and_then(|n| usize::try_from(n).ok())
                .filter(|&n| n > 0)
                .unwrap_or(client::POOL_SIZE)
        });
        let destinations = destinations::read_destinations(&mut s, errors, pool_size);
        s.finish(errors, &elsewhere, Some(kind.name));
        if let Some(settings) = settings {
            out.insert(
                name.clone(),
                RelayConfig {
                    section: super::sections::Configured {
                        name: name.clone(),
                        kind,
                        settings,
                    },
                    destinations,
                },
            );
        }
    }
    out
}

#[cfg(test)]
pub(crate) use agent::Agent;
#[cfg(test)]
pub(crate) use mx::Mx;
#[cfg(test)]
pub(crate) use static_smtp::StaticSmtp;

#[cfg(test)]
mod tests {
    use super::*;

    /// The keys found by running every reader on an empty section are all
    /// the keys the relay types take (what "unknown key for type" needs).
    #[test]
    fn every_relay_key_is_found_from_the_readers() {
        let mut expected = vec![
            "host",
            "port",
            "force_mx",
            "path",
            "url",
            "timeout",
            "command",
            "per_recipient",
            "args",
            "ehlo_as",
            "connect_timeout",
            "command_timeout",
            "pool_size",
            "idle_timeout",
            "tls",
            "tls_verify",
            "credentials",
            "source_addresses",
            "source_selection",
            "tls_ca_file",
            "allow_plaintext_auth",
            "chunking",
        ];
        expected.sort_unstable();
        assert_eq!(super::super::sections::keys_of(KINDS), expected);
        assert_eq!(
            super::super::storage::keys(),
            [
                "bucket",
                "credentials_file",
                "endpoint",
                "journal_max_message",
                "lease",
                "notify",
                "password_file",
                "path",
                "prefix",
                "region",
                "store",
                "timeout",
                "tls_ca_file",
                "url"
            ]
        );
    }
}
