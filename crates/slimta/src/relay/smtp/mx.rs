//! [`MxSmtpRelay`]: delivery to each recipient domain's mail exchangers.
//!
//! This is how an MTA delivers to the Internet (RFC 5321 section 5): the
//! recipients of an envelope are grouped by domain, each domain's MX records
//! are looked up, and the group is delivered to the most preferred exchanger
//! that can be reached.
//!
//! Design decisions:
//! - MX records are tried in preference order. The next one is tried only
//!   when the attempt failed transiently *before the server answered MAIL
//!   FROM* (resolution of the MX host, connect, banner, EHLO): that is the
//!   host's problem. Once a server has judged the transaction, its answer
//!   stands; trying a backup MX with the same mail would only get the same
//!   answer or a duplicate.
//! - A domain without MX records is its own exchanger (the A/AAAA fallback
//!   of RFC 5321 5.1). A null MX (RFC 7505) is a permanent
//!   `556 5.1.10`; a domain that does not exist (NXDOMAIN) a permanent
//!   `550 5.1.2`; any other DNS failure is transient.
//! - An address literal (`user@[192.0.2.1]`, `user@[IPv6:2001:db8::1]`) is
//!   delivered to that address, without DNS (RFC 5321 4.1.3).
//! - `force_mx` routes a domain to a fixed host without any MX lookup (the
//!   host's addresses are still resolved through the relay's resolver).
//! - One [`StaticSmtpRelay`] per exchanger host is kept in a map, so settings
//!   (and, later, pooled connections) are shared by every domain that uses
//!   the same exchanger. The map only grows; it holds one small value per
//!   distinct exchanger seen.
//! - The queue schedules by recipient domain ([`Relay::destination`]):
//!   the domain is known before any lookup, so a domain's attempts can be
//!   limited and a dead domain left alone without asking the DNS.
//! - Domain groups are delivered one after the other, in the order their
//!   first recipient appears; results are merged back into the envelope's
//!   recipient order. When the envelope has a single domain and the attempt
//!   failed as a whole, the whole error is returned, as the static relay
//!   does; otherwise the result is per recipient and the [`Delivery`]'s reply
//!   is the first group's final reply.
//! - The client settings are the shared [`ClientOptions`]; the relay never
//!   sends AUTH, whatever they say, because the exchangers are arbitrary
//!   hosts named by the DNS and the password would go to each of them.
//! - TLS is by default opportunistic and unverified (RFC 7435): STARTTLS whenever an
//!   exchanger offers it, any certificate accepted. MX host names come from
//!   unauthenticated DNS, so verifying them against certificates proves
//!   little without DANE or MTA-STS, and most exchangers on the Internet
//!   present certificates that would fail; refusing them would stop mail
//!   that plaintext would have delivered. Encryption still defeats passive
//!   eavesdropping.
//! - Exchangers of equal preference are ordered by name and then rotated by
//!   the attempt number, so a retry starts at a different one (RFC 5321 5.1
//!   asks for load spreading among them; rotation spreads retries
//!   deterministically, which tests can check, where randomisation could not
//!   be checked).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use crate::dns::{MxAnswer, MxHost, Resolver};
use crate::envelope::{Envelope, domain_of};
use crate::relay::{Delivery, Destination, Relay, RelayError};
use crate::reply::Reply;

use super::client_options::RelayDefaults;
use super::connection::Dialect;
use super::{ClientOptions, StaticSmtpRelay};

/// Delivers each recipient domain to its mail exchangers.
#[derive(Debug)]
pub struct MxSmtpRelay {
    resolver: Resolver,
    port: u16,
    forced: HashMap<String, String>,
    template: StaticSmtpRelay,
    relays: Mutex<HashMap<String, Arc<StaticSmtpRelay>>>,
}

impl MxSmtpRelay {
    /// An MX relay looking names up with `resolver`, delivering on port 25.
    pub fn new(resolver: Resolver) -> Self {
        Self {
            template: StaticSmtpRelay::with_defaults(
                String::new(),
                25,
                RelayDefaults::MX,
                Dialect::Smtp,
            )
            .resolver(resolver.clone()),
            resolver,
            port: 25,
            forced: HashMap::new(),
            relays: Mutex::new(HashMap::new()),
        }
    }

    /// Delivers mail for `domain` (case-insensitive) to `host` instead of
    /// looking up its MX records.
    pub fn force_mx(mut self, domain: impl Into<String>, host: impl Into<String>) -> Self {
        self.forced
            .insert(domain.into().to_ascii_lowercase(), host.into());
        self
    }

    /// The port to connect to on every exchanger (default 25).
    pub fn port(mut self, port: u16) -> Self {
        self.port = port;
        self
    }

    /// Uses these client settings for every exchanger. Unset TLS settings
    /// mean STARTTLS when offered, any certificate accepted (see the module
    /// docs); [`ClientOptions::credentials`] is ignored: the relay never
    /// authenticates. The pool size and idle timeout apply per exchanger.
    pub fn options(mut self, options: ClientOptions) -> Self {
        self.template = self.template.options(options.without_credentials());
        self.relays
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
        self
    }

    /// The client settings in use (without credentials).
    pub fn client_options(&self) -> &ClientOptions {
        self.template.client_options()
    }

    fn relay_for(&self, host: &str) -> Arc<StaticSmtpRelay> {
        let mut relays = self.relays.lock().unwrap_or_else(PoisonError::into_inner);
        relays
            .entry(host.to_ascii_lowercase())
            .or_insert_with(|| Arc::new(self.template.with_host(host, self.port)))
            .clone()
    }

    /// The exchangers of `domain`, most preferred first.
    async fn destinations(&self, domain: &str, attempt: u32) -> Result<Vec<String>, RelayError> {
        if let Some(host) = self.forced.get(domain) {
            return Ok(vec![host.clone()]);
        }
        if let Some(literal) = domain.strip_prefix('[').and_then(|d| d.strip_suffix(']')) {
            let ip = literal.strip_prefix("ipv6:").unwrap_or(literal);
            return match ip.parse::<std::net::IpAddr>() {
                Ok(ip) => Ok(vec![ip.to_string()]),
                Err(_) => Err(RelayError::permanent(Reply::new(
                    553,
                    "5.1.2",
                    format!("Invalid address literal {domain}"),
                ))),
            };
        }
        match self.resolver.mx(domain).await {
            Ok(MxAnswer::Hosts(hosts)) => Ok(rotate_equal_preferences(hosts, attempt)),
            Ok(MxAnswer::NoMx) => Ok(vec![domain.to_string()]),
            Ok(MxAnswer::NullMx) => Err(RelayError::permanent(Reply::new(
                556,
                "5.1.10",
                format!("Domain {domain} does not accept mail (null MX)"),
            ))),
            Err(e) if e.is_not_found() => Err(RelayError::permanent(Reply::new(
                550,
                "5.1.2",
                format!("Domain {domain} does not exist"),
            ))),
            Err(e) => Err(RelayError::transient(Reply::new(
                451,
                "4.4.3",
                format!("MX lookup for {domain} failed: {e}"),
            ))),
        }
    }

    /// Delivers `envelope` (whose recipients all belong to `domain`).
    async fn deliver_domain(
        &self,
        envelope: &Envelope,
        domain: &str,
        attempt: u32,
    ) -> Result<Delivery, RelayError> {
        let hosts = self.destinations(domain, attempt).await?;
        let mut last = None;
        for host in hosts {
            match self.relay_for(&host).deliver(envelope).await {
                Ok(delivery) => return Ok(delivery),
                Err(e) if e.before_transaction && e.error.is_transient() => {
                    tracing::debug!(domain, host, error = %e.error, "trying the next MX");
                    last = Some(e.error);
                }
                Err(e) => return Err(e.error),
            }
        }
        Err(last.unwrap_or_else(|| {
            RelayError::transient(Reply::new(
                451,
                "4.4.4",
                format!("No usable mail exchanger for {domain}"),
            ))
        }))
    }
}

/// Host names in preference order; within one preference sorted by name and
/// rotated left by `attempt - 1`.
fn rotate_equal_preferences(mut hosts: Vec<MxHost>, attempt: u32) -> Vec<String> {
    hosts.sort_by(|a, b| (a.preference, &a.host).cmp(&(b.preference, &b.host)));
    let shift = usize::try_from(attempt.saturating_sub(1)).unwrap_or(0);
    let mut out = Vec::with_capacity(hosts.len());
    for run in hosts.chunk_by(|a, b| a.preference == b.preference) {
        let k = shift % run.len();
        out.extend(run[k..].iter().chain(&run[..k]).map(|h| h.host.clone()));
    }
    out
}

impl Relay for MxSmtpRelay {
    async fn attempt(&self, envelope: &Envelope, attempt: u32) -> Result<Delivery, RelayError> {
        // Group recipient indices by lower-cased domain, in first-seen order.
        let mut groups: Vec<(String, Vec<usize>)> = Vec::new();
        let mut results: Vec<Option<Result<Reply, RelayError>>> =
            vec![None; envelope.recipients.len()];
        for (i, rcpt) in envelope.recipients.iter().enumerate() {
            let Some(domain) = domain_of(rcpt).filter(|d| !d.is_empty()) else {
                let reply = Reply::new(553, "5.1.3", format!("Recipient {rcpt} has no domain"));
                results[i] = Some(Err(RelayError::permanent(reply)));
                continue;
            };
            let domain = domain.to_ascii_lowercase();
            match groups.iter_mut().find(|(d, _)| *d == domain) {
                Some((_, indices)) => indices.push(i),
                None => groups.push((domain, vec![i])),
            }
        }
        let single = groups.len() == 1 && results.iter().all(Option::is_none);
        let mut reply = None;
        for (domain, indices) in &groups {
            let recipients = indices
                .iter()
                .map(|&i| envelope.recipients[i].clone())
                .collect();
            let part = envelope.with_recipients(recipients);
            match self.deliver_domain(&part, domain, attempt).await {
                Ok(delivery) => {
                    reply.get_or_insert_with(|| delivery.reply().clone());
                    for (k, &i) in indices.iter().enumerate() {
                        results[i] = Some(delivery.result_for(k).cloned());
                    }
                }
                Err(e) if single => return Err(e),
                Err(e) => {
                    reply.get_or_insert_with(|| e.reply().clone());
                    for &i in indices {
                        results[i] = Some(Err(e.clone()));
                    }
                }
            }
        }
        let results: Vec<Result<Reply, RelayError>> = results
            .into_iter()
            .map(|r| r.expect("every recipient has a result"))
            .collect();
        let reply = reply.unwrap_or_else(|| match results.first() {
            Some(Err(e)) => e.reply().clone(),
            _ => Reply::new(554, "5.5.1", "No valid recipients"),
        });
        Ok(Delivery::per_recipient(reply, results))
    }

    /// The recipient's domain, lower-cased (a recipient without one is its
    /// own destination: it fails at once anyway).
    fn destination(&self, recipient: &str) -> Destination {
        match domain_of(recipient).filter(|d| !d.is_empty()) {
            Some(domain) => Destination::new(domain.to_ascii_lowercase()),
            None => Destination::new(recipient),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::relay::smtp::{Credentials, TlsMode};

    fn resolver() -> Resolver {
        Resolver::new(&["127.0.0.1:53".parse().unwrap()]).expect("resolver")
    }

    #[test]
    fn mx_relay_is_unverified_by_default_and_never_authenticates() {
        let relay = MxSmtpRelay::new(resolver());
        assert_eq!(relay.template.defaults(), RelayDefaults::MX);
        assert_eq!(relay.template.session().tls, TlsMode::Opportunistic);

        let relay = relay.options(
            ClientOptions::new()
                .ehlo_as("relay.test")
                .credentials(Credentials::new("u", "p"))
                .allow_plaintext_auth(true),
        );
        let exchanger = relay.relay_for("mx.example.test");
        assert_eq!(exchanger.defaults(), RelayDefaults::MX);
        assert_eq!(exchanger.session().tls, TlsMode::Opportunistic);
        assert!(
            !exchanger
                .client_options()
                .resolved_tls_verify(RelayDefaults::MX)
        );
        assert_eq!(exchanger.session().ehlo_as, "relay.test");
        assert_eq!(exchanger.session().credentials, None);
        assert_eq!(relay.client_options().get_credentials(), None);

        let relay = relay.options(ClientOptions::new().tls_verify(true));
        assert!(
            relay
                .relay_for("mx.example.test")
                .client_options()
                .resolved_tls_verify(RelayDefaults::MX)
        );
    }

    #[test]
    fn equal_preferences_rotate_with_the_attempt() {
        let mx = |preference, host: &str| MxHost {
            preference,
            host: host.into(),
        };
        let hosts = vec![
            mx(20, "z"),
            mx(10, "b"),
            mx(10, "a"),
            mx(10, "c"),
            mx(30, "y"),
        ];
        let order = |attempt| rotate_equal_preferences(hosts.clone(), attempt);
        assert_eq!(order(1), ["a", "b", "c", "z", "y"]);
        assert_eq!(order(2), ["b", "c", "a", "z", "y"]);
        assert_eq!(order(3), ["c", "a", "b", "z", "y"]);
        assert_eq!(order(4), order(1));
        assert_eq!(order(0), order(1));
    }
}
