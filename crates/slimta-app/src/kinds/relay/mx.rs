//! `type = "mx"`: each recipient domain's MX hosts (`port`, default 25;
//! other values are for tests), with `force_mx` naming the host to use
//! instead of a domain's MX records, and the shared client keys
//! (`client.rs`; `tls_verify` defaults to false: opportunistic TLS to MX
//! hosts does not verify).

use std::collections::BTreeMap;
use std::sync::Arc;

use slimta::DynRelay;
use slimta::relay::smtp::{ClientOptions, MxSmtpRelay};

use super::client::{read_smtp_client, with_hostname};
use super::{BuildContext, RelayKind, RelaySettings};
use crate::config::fields::{Errors, Section, domain_keyed, non_empty_string, port};

/// `[relay.NAME]` keys of an MX relay.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Mx {
    pub(crate) port: u16,
    /// Domain (lowercase) to the host used instead of its MX records.
    pub(crate) force_mx: BTreeMap<String, String>,
    /// `ehlo_as` unset means `process.hostname`.
    pub(crate) client: ClientOptions,
}

impl RelaySettings for Mx {
    fn build(&self, context: &BuildContext<'_>) -> Result<Arc<dyn DynRelay>, String> {
        let resolver = context
            .resolver
            .ok_or_else(|| format!("{}: no resolver", context.section))?;
        let mut relay = MxSmtpRelay::new(resolver.clone())
            .port(self.port)
            .options(with_hostname(&self.client, context.hostname));
        for (domain, host) in &self.force_mx {
            relay = relay.force_mx(domain.clone(), host.clone());
        }
        Ok(Arc::new(relay))
    }
}

pub(super) const MX: RelayKind = RelayKind {
    name: "mx",
    dns: true,
    pooled: true,
    read: |s: &mut Section<'_>, errors: &mut Errors| {
        let port = s.or(errors, "port", 25, port);
        let force_mx = s
            .table(errors, "force_mx")
            .map(|t| domain_keyed(&t, errors, non_empty_string))
            .unwrap_or_default();
        let client = read_smtp_client(s, errors, false);
        Some(Arc::new(Mx {
            port,
            force_mx,
            client,
        }))
    },
};
