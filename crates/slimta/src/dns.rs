//! DNS lookups for mail routing: MX records (RFC 5321 section 5) and host
//! addresses; A records alone for the edge's DNS lists.
//!
//! A thin wrapper around `hickory-resolver`, so the rest of the crate sees
//! only the answers mail routing needs ([`MxAnswer`], a list of addresses)
//! and one error type that says whether a name does not exist (a permanent
//! failure for mail) or the lookup merely failed (transient).
//!
//! Design decisions:
//! - The nameservers are configurable as plain `SocketAddr`s, so tests point
//!   the resolver at a dnsmasq on a loopback port and never reach the
//!   system's resolver; an empty list means the system configuration
//!   (`/etc/resolv.conf`).
//! - Names are always queried as fully qualified (a final dot is added): the
//!   search list of `/etc/resolv.conf` must never turn a mail domain into a
//!   different, local one.
//! - The hosts file is not consulted: like Postfix's default
//!   `smtp_host_lookup = dns`, mail routing follows the DNS only.
//! - Addresses are returned IPv4 first, then IPv6: outbound IPv6 is more
//!   often misconfigured than IPv4 on mail hosts.
//! - Answers are cached by hickory for their TTL.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{
    LookupIpStrategy, NameServerConfig, ResolveHosts, ResolverConfig, ResolverOpts,
};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::{DnsError, NetError};
use hickory_resolver::proto::op::ResponseCode;
use hickory_resolver::proto::rr::RData;

/// Why a lookup gave no answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LookupError {
    not_found: bool,
    message: String,
}

impl LookupError {
    /// The name does not exist (NXDOMAIN): retrying will not help.
    pub fn is_not_found(&self) -> bool {
        self.not_found
    }

    /// A human-readable reason.
    pub fn message(&self) -> &str {
        &self.message
    }

    fn from_net(name: &str, e: &NetError) -> Self {
        Self {
            not_found: e.is_nx_domain(),
            message: format!("{name}: {e}"),
        }
    }
}

impl fmt::Display for LookupError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for LookupError {}

/// One mail exchanger.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MxHost {
    /// Lower is preferred.
    pub preference: u16,
    /// The exchanger's host name, without the final dot.
    pub host: String,
}

/// The result of an MX lookup of a domain that exists.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MxAnswer {
    /// Mail exchangers, sorted by preference (stable for equal preferences).
    Hosts(Vec<MxHost>),
    /// A null MX (RFC 7505): the domain accepts no mail.
    NullMx,
    /// No MX record: the domain itself is the implicit MX (RFC 5321 5.1).
    NoMx,
}

/// A resolver builder for `nameservers` (the system configuration when the
/// list is empty) with what every lookup of ours wants: no hosts file, and
/// names always fully qualified (no search list). Shared with the edge's
/// reverse DNS.
pub(crate) fn resolver_builder(
    nameservers: &[SocketAddr],
) -> Result<hickory_resolver::ResolverBuilder<TokioRuntimeProvider>, NetError> {
    let provider = TokioRuntimeProvider::default();
    let mut builder = if nameservers.is_empty() {
        TokioResolver::builder(provider)?
    } else {
        let servers = nameservers
            .iter()
            .map(|addr| {
                let mut server = NameServerConfig::udp_and_tcp(addr.ip());
                for connection in &mut server.connections {
                    connection.port = addr.port();
                }
                server
            })
            .collect();
        TokioResolver::builder_with_config(ResolverConfig::from_name_servers(servers), provider)
            .with_options(ResolverOpts::default())
    };
    let options = builder.options_mut();
    options.use_hosts_file = ResolveHosts::Never;
    options.ndots = 0;
    Ok(builder)
}

/// A DNS resolver for mail routing. Cheap to clone (clones share the cache).
#[derive(Clone)]
pub struct Resolver {
    inner: TokioResolver,
}

impl fmt::Debug for Resolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Resolver").finish_non_exhaustive()
    }
}

impl Resolver {
    /// A resolver asking `nameservers` (UDP, then TCP for truncated answers);
    /// with an empty list, the nameservers of the system configuration.
    ///
    /// # Errors
    ///
    /// When the system configuration cannot be read (only with an empty
    /// list) or the resolver cannot be built.
    pub fn new(nameservers: &[SocketAddr]) -> Result<Self, LookupError> {
        let failed = |e: NetError| LookupError {
            not_found: false,
            message: format!("cannot set up the DNS resolver: {e}"),
        };
        let mut builder = resolver_builder(nameservers).map_err(failed)?;
        let options = builder.options_mut();
        options.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
        Ok(Self {
            inner: builder.build().map_err(failed)?,
        })
    }

    /// The resolver of the system configuration.
    ///
    /// # Errors
    ///
    /// As [`Resolver::new`].
    pub fn system() -> Result<Self, LookupError> {
        Self::new(&[])
    }

    /// The MX records of `domain`.
    ///
    /// # Errors
    ///
    /// [`LookupError::is_not_found`] for NXDOMAIN; otherwise a failure worth
    /// retrying (timeout, SERVFAIL, ...).
    pub async fn mx(&self, domain: &str) -> Result<MxAnswer, LookupError> {
        let name = fqdn(domain);
        let lookup = match self.inner.mx_lookup(name.as_str()).await {
            Ok(lookup) => lookup,
            Err(e) if is_empty_answer(&e) => return Ok(MxAnswer::NoMx),
            Err(e) => return Err(LookupError::from_net(domain, &e)),
        };
        let mut hosts: Vec<MxHost> = lookup
            .answers()
            .iter()
            .filter_map(|record| match &record.data {
                RData::MX(mx) => Some(MxHost {
                    preference: mx.preference,
                    host: mx.exchange.to_ascii().trim_end_matches('.').to_string(),
                }),
                _ => None,
            })
            .collect();
        if hosts.is_empty() {
            return Ok(MxAnswer::NoMx);
        }
        // RFC 7505: a single MX whose exchange is the root means "no mail".
        if hosts.len() == 1 && hosts[0].host.is_empty() {
            return Ok(MxAnswer::NullMx);
        }
        // A root exchange among real ones is a broken zone; skip it.
        hosts.retain(|h| !h.host.is_empty());
        hosts.sort_by_key(|h| h.preference);
        Ok(MxAnswer::Hosts(hosts))
    }

    /// The addresses of `host` (A records first, then AAAA).
    ///
    /// # Errors
    ///
    /// [`LookupError::is_not_found`] for NXDOMAIN; a host that exists without
    /// addresses is an error that is not "not found".
    pub async fn ips(&self, host: &str) -> Result<Vec<IpAddr>, LookupError> {
        if let Ok(ip) = host.parse::<IpAddr>() {
            return Ok(vec![ip]);
        }
        match self.inner.lookup_ip(fqdn(host).as_str()).await {
            Ok(lookup) => {
                let ips: Vec<IpAddr> = lookup.iter().collect();
                if ips.is_empty() {
                    Err(LookupError {
                        not_found: false,
                        message: format!("{host}: no address records"),
                    })
                } else {
                    Ok(ips)
                }
            }
            Err(e) => Err(LookupError::from_net(host, &e)),
        }
    }
}

impl Resolver {
    /// The A records of `name` alone (no AAAA, no CNAME chasing beyond
    /// what the server does): what a DNS list answers. A name that exists
    /// without A records gives an empty list.
    ///
    /// # Errors
    ///
    /// [`LookupError::is_not_found`] for NXDOMAIN (for a DNS list: not
    /// listed); otherwise the lookup failed.
    pub async fn ipv4s(&self, name: &str) -> Result<Vec<Ipv4Addr>, LookupError> {
        match self.inner.ipv4_lookup(fqdn(name).as_str()).await {
            Ok(lookup) => Ok(lookup
                .answers()
                .iter()
                .filter_map(|record| match &record.data {
                    RData::A(a) => Some(a.0),
                    _ => None,
                })
                .collect()),
            Err(e) if is_empty_answer(&e) => Ok(Vec::new()),
            Err(e) => Err(LookupError::from_net(name, &e)),
        }
    }

    /// The hickory resolver inside, for checks that bring their own lookup
    /// logic (SPF through mail-auth) but must ask the same nameservers.
    #[cfg(feature = "auth")]
    pub(crate) fn hickory(&self) -> &TokioResolver {
        &self.inner
    }
}

fn fqdn(name: &str) -> String {
    if name.ends_with('.') {
        name.to_string()
    } else {
        format!("{name}.")
    }
}

/// NOERROR without records of the asked type.
fn is_empty_answer(e: &NetError) -> bool {
    matches!(e, NetError::Dns(DnsError::NoRecordsFound(nr)) if nr.response_code == ResponseCode::NoError)
}
