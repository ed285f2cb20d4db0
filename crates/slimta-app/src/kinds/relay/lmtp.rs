//! `type = "lmtp"`: an LMTP server (Dovecot), over a unix socket (`path`)
//! or TCP (`host`, `port` default 24), exactly one of the two, with the
//! shared client keys (`client.rs`; `tls_verify` defaults to true).

use std::path::PathBuf;
use std::sync::Arc;

use slimta::DynRelay;
use slimta::relay::lmtp::StaticLmtpRelay;
use slimta::relay::smtp::ClientOptions;

use super::client::{read_smtp_client, with_hostname};
use super::{BuildContext, RelayKind, RelaySettings};
use crate::config::fields::{Errors, Section, non_empty_string, port};

/// `[relay.NAME]` keys of an LMTP relay.
#[derive(Debug, PartialEq, Eq)]
struct Lmtp {
    target: Target,
    /// `ehlo_as` unset means `process.hostname`.
    client: ClientOptions,
}

/// Where an LMTP relay connects.
#[derive(Debug, PartialEq, Eq)]
enum Target {
    Unix(PathBuf),
    Tcp { host: String, port: u16 },
}

impl RelaySettings for Lmtp {
    fn build(&self, context: &BuildContext<'_>) -> Result<Arc<dyn DynRelay>, String> {
        let relay = match &self.target {
            Target::Unix(path) => StaticLmtpRelay::unix(path.clone()),
            Target::Tcp { host, port } => StaticLmtpRelay::new(host.clone(), *port),
        };
        Ok(Arc::new(
            relay.options(with_hostname(&self.client, context.hostname)),
        ))
    }
}

pub(super) const LMTP: RelayKind = RelayKind {
    name: "lmtp",
    dns: false,
    pooled: true,
    read: |s: &mut Section<'_>, errors: &mut Errors| {
        let path = s.opt(errors, "path", non_empty_string);
        let host = s.opt(errors, "host", non_empty_string);
        let port = s.or(errors, "port", 24, port);
        let target = match (path, host) {
            (Some(path), None) => Some(Target::Unix(PathBuf::from(path))),
            (None, Some(host)) => Some(Target::Tcp { host, port }),
            (Some(_), Some(_)) => {
                errors.push(s.key_path("path"), "give either path or host, not both");
                None
            }
            (None, None) => {
                errors.push(
                    s.key_path("path"),
                    "missing required key (an LMTP relay needs path or host)",
                );
                None
            }
        };
        let client = read_smtp_client(s, errors, true);
        target.map(|target| Arc::new(Lmtp { target, client }) as Arc<dyn RelaySettings>)
    },
};
