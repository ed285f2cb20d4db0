//! Forward-confirmed reverse DNS of a client address, for logs, validators
//! and the `Received` header.
//!
//! A PTR record alone proves nothing: whoever controls the reverse zone of
//! an address can name it `mail.google.com`. The name is used only when one
//! of its A/AAAA records leads back to the same address (FCrDNS, as
//! Postfix's `reverse_client_name` vs `client_name`); otherwise the client
//! is "unknown".
//!
//! Decisions:
//! - `crate::dns::Resolver` has no PTR lookup and `dns.rs` belongs to the
//!   relay side, so the PTR query is made here with hickory directly, on a
//!   resolver configured like `dns::Resolver` (the same nameserver list, no
//!   hosts file, names fully qualified). The forward half uses
//!   `dns::Resolver::ips`, so the rules for host addresses are the relay's.
//! - One deadline covers the whole check (PTR plus every forward lookup):
//!   a session must not wait on a slow reverse zone. The default is 2 s.
//!   Any failure - timeout, SERVFAIL, NXDOMAIN, no confirmation - gives
//!   `None`; the session goes on without a name.
//! - At most [`MAX_PTR_NAMES`] PTR names are checked, in answer order; the
//!   first confirmed one wins. Names are lowercase without the final dot.
//! - An IPv4-mapped IPv6 client (`::ffff:192.0.2.1`, from a dual-stack
//!   socket) is looked up as the IPv4 address.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use hickory_resolver::TokioResolver;
use hickory_resolver::proto::rr::RData;

use crate::dns::Resolver;

/// The most PTR names checked for one address.
pub const MAX_PTR_NAMES: usize = 5;

/// Why a reverse lookup gave no names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReverseDnsError {
    not_found: bool,
    message: String,
}

impl ReverseDnsError {
    /// The reverse name does not exist (NXDOMAIN).
    pub fn is_not_found(&self) -> bool {
        self.not_found
    }

    fn new(message: String) -> Self {
        Self {
            not_found: false,
            message,
        }
    }
}

impl fmt::Display for ReverseDnsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ReverseDnsError {}

/// Forward-confirmed reverse DNS lookups. Cheap to clone (clones share the
/// caches).
#[derive(Clone)]
pub struct ReverseDns {
    ptr: TokioResolver,
    forward: Resolver,
    timeout: Duration,
}

impl fmt::Debug for ReverseDns {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReverseDns")
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl ReverseDns {
    /// Lookups through `nameservers` (with an empty list, the system's),
    /// each check bounded by `timeout`.
    ///
    /// # Errors
    ///
    /// When the system configuration cannot be read (only with an empty
    /// list) or a resolver cannot be built.
    pub fn new(nameservers: &[SocketAddr], timeout: Duration) -> Result<Self, ReverseDnsError> {
        let failed = |e: hickory_resolver::net::NetError| {
            ReverseDnsError::new(format!("cannot set up the DNS resolver: {e}"))
        };
        let mut builder = crate::dns::resolver_builder(nameservers).map_err(failed)?;
        let options = builder.options_mut();
        options.timeout = timeout;
        Ok(Self {
            ptr: builder.build().map_err(failed)?,
            forward: Resolver::new(nameservers).map_err(|e| ReverseDnsError::new(e.to_string()))?,
            timeout,
        })
    }

    /// The names in the PTR records of `ip` (lowercase, no final dot), at
    /// most [`MAX_PTR_NAMES`], unconfirmed.
    ///
    /// # Errors
    ///
    /// When the lookup fails or finds nothing (NXDOMAIN is
    /// [`ReverseDnsError::is_not_found`]).
    pub async fn ptr_names(&self, ip: IpAddr) -> Result<Vec<String>, ReverseDnsError> {
        let ip = ip.to_canonical();
        let lookup = self
            .ptr
            .reverse_lookup(ip)
            .await
            .map_err(|e| ReverseDnsError {
                not_found: e.is_nx_domain(),
                message: format!("PTR {ip}: {e}"),
            })?;
        Ok(lookup
            .answers()
            .iter()
            .filter_map(|record| match &record.data {
                RData::PTR(ptr) => {
                    Some(ptr.0.to_ascii().trim_end_matches('.').to_ascii_lowercase())
                }
                _ => None,
            })
            .filter(|name| !name.is_empty())
            .take(MAX_PTR_NAMES)
            .collect())
    }

    /// The first PTR name of `ip` whose addresses include `ip`, or `None`
    /// (no PTR, no confirmation, a failure, or the deadline passed).
    pub async fn confirmed_name(&self, ip: IpAddr) -> Option<String> {
        let ip = ip.to_canonical();
        let check = async {
            let names = match self.ptr_names(ip).await {
                Ok(names) => names,
                Err(e) => {
                    tracing::debug!(client = %ip, error = %e, "no reverse DNS name");
                    return None;
                }
            };
            for name in names {
                match self.forward.ips(&name).await {
                    Ok(ips) if ips.iter().any(|a| a.to_canonical() == ip) => return Some(name),
                    Ok(_) => {
                        tracing::debug!(client = %ip, %name, "PTR name does not resolve back");
                    }
                    Err(e) => {
                        tracing::debug!(client = %ip, %name, error = %e, "PTR name lookup failed");
                    }
                }
            }
            None
        };
        match tokio::time::timeout(self.timeout, check).await {
            Ok(name) => name,
            Err(_) => {
                tracing::debug!(client = %ip, "reverse DNS timed out");
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use test_peers::Dnsmasq;

    /// dnsmasq on loopback; `--host-record` makes both the A/AAAA and the
    /// PTR record, `--ptr-record` a PTR alone. The records are about
    /// documentation addresses (dnsmasq answers every 127/8 PTR with
    /// `localhost` itself); only the queries travel, to 127.0.0.1.
    fn dns() -> Dnsmasq {
        Dnsmasq::start(&[
            "--local=/in-addr.arpa/",
            "--local=/ip6.arpa/",
            "--host-record=good.example.test,192.0.2.7",
            "--ptr-record=8.2.0.192.in-addr.arpa,Liar.Example.test",
            "--host-record=liar.example.test,192.0.2.9",
            "--ptr-record=11.2.0.192.in-addr.arpa,first.example.test",
            "--ptr-record=11.2.0.192.in-addr.arpa,second.example.test",
            "--host-record=second.example.test,192.0.2.11",
            "--host-record=six.example.test,2001:db8::25",
        ])
    }

    #[tokio::test]
    async fn confirms_only_names_that_resolve_back() {
        let dns = dns();
        let rdns = ReverseDns::new(&[dns.addr()], Duration::from_secs(5)).unwrap();
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let cases = [
            ("192.0.2.7", Some("good.example.test")),
            ("::ffff:192.0.2.7", Some("good.example.test")),
            // The PTR claims a name whose address is another one.
            ("192.0.2.8", None),
            ("192.0.2.9", Some("liar.example.test")),
            // Two PTR names; only the second leads back.
            ("192.0.2.11", Some("second.example.test")),
            ("192.0.2.12", None),
            ("2001:db8::25", Some("six.example.test")),
        ];
        for (addr, want) in cases {
            assert_eq!(
                rdns.confirmed_name(ip(addr)).await.as_deref(),
                want,
                "{addr}"
            );
        }
        assert_eq!(
            rdns.ptr_names(ip("192.0.2.8")).await.unwrap(),
            ["liar.example.test"]
        );
        let mut two = rdns.ptr_names(ip("192.0.2.11")).await.unwrap();
        two.sort();
        assert_eq!(two, ["first.example.test", "second.example.test"]);
        assert!(
            rdns.ptr_names(ip("192.0.2.12"))
                .await
                .unwrap_err()
                .is_not_found()
        );
    }

    #[tokio::test]
    async fn a_silent_server_gives_no_name() {
        // A UDP socket that never answers (and a closed TCP port).
        let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let rdns =
            ReverseDns::new(&[silent.local_addr().unwrap()], Duration::from_millis(300)).unwrap();
        assert_eq!(
            rdns.confirmed_name("192.0.2.7".parse().unwrap()).await,
            None
        );
    }
}
