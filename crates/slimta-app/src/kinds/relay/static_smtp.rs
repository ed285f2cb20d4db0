//! `type = "static"`: every message to one smart host (`host`, required;
//! `port`, default 25) over SMTP, with the shared client keys
//! (`client.rs`; `tls_verify` defaults to true).

use std::sync::Arc;

use slimta::DynRelay;
use slimta::relay::smtp::{ClientOptions, StaticSmtpRelay};

use super::client::{read_smtp_client, with_hostname};
use super::{BuildContext, RelayKind, RelaySettings};
use crate::config::fields::{Errors, Section, non_empty_string, port};

/// `[relay.NAME]` keys of a static relay.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct StaticSmtp {
    /// The smart host's name or address.
    pub(crate) host: String,
    pub(crate) port: u16,
    /// `ehlo_as` unset means `process.hostname`.
    pub(crate) client: ClientOptions,
}

impl RelaySettings for StaticSmtp {
    fn build(&self, context: &BuildContext<'_>) -> Result<Arc<dyn DynRelay>, String> {
        let mut relay = StaticSmtpRelay::new(self.host.clone(), self.port)
            .options(with_hostname(&self.client, context.hostname));
        if let Some(resolver) = context.resolver {
            relay = relay.resolver(resolver.clone());
        }
        Ok(Arc::new(relay))
    }
}

pub(super) const STATIC: RelayKind = RelayKind {
    name: "static",
    dns: true,
    pooled: true,
    read: |s: &mut Section<'_>, errors: &mut Errors| {
        let host = s.required(errors, "host", non_empty_string);
        let port = s.or(errors, "port", 25, port);
        let client = read_smtp_client(s, errors, true);
        host.map(|host| Arc::new(StaticSmtp { host, port, client }) as Arc<dyn RelaySettings>)
    },
};
