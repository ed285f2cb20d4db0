//! Which local address an outbound connection binds to: the Rust form of
//! python-slimta's `socket_creator` (its seed example picks a random source
//! IP from a pool).
//!
//! Design decisions:
//! - The pool is a list of IPs; each connection takes one of the
//!   destination's family (IPv4 for an IPv4 destination, IPv6 for IPv6), as
//!   Postfix's `smtp_bind_address` / `smtp_bind_address6` do. When the pool
//!   has none of that family the system chooses, rather than failing a
//!   delivery that any address could make.
//! - Round robin (the default) spreads connections evenly and predictably
//!   (the reputation of every address grows alike, and tests can check it);
//!   random is there for python-slimta's behaviour. One counter per relay, shared
//!   by its clones and by the MX relay's per-exchanger relays.
//! - Random picks need no cryptographic quality: they come from std's
//!   randomly keyed SipHash over a counter, with no extra dependency.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// How [`crate::relay::smtp::ClientOptions::source_addresses`] picks an
/// address for each connection.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum SourceSelection {
    /// In turn, one after the other.
    #[default]
    RoundRobin,
    /// At random.
    Random,
}

/// A pool of local addresses to connect from.
#[derive(Clone, Debug, Default)]
pub(crate) struct SourceAddresses {
    ips: Vec<IpAddr>,
    selection: SourceSelection,
    counter: Arc<AtomicUsize>,
    hasher: RandomState,
}

impl SourceAddresses {
    pub(crate) fn new(ips: Vec<IpAddr>, selection: SourceSelection) -> Self {
        Self {
            ips,
            selection,
            counter: Arc::new(AtomicUsize::new(0)),
            hasher: RandomState::new(),
        }
    }

    /// The address to bind for a connection to `destination`, if the pool
    /// has one of its family.
    pub(crate) fn pick(&self, destination: &SocketAddr) -> Option<IpAddr> {
        let candidates: Vec<IpAddr> = self
            .ips
            .iter()
            .copied()
            .filter(|ip| ip.is_ipv4() == destination.is_ipv4())
            .collect();
        if candidates.is_empty() {
            return None;
        }
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let index = match self.selection {
            SourceSelection::RoundRobin => n % candidates.len(),
            SourceSelection::Random => {
                let hash = self.hasher.hash_one(n);
                usize::try_from(hash % candidates.len() as u64).unwrap_or(0)
            }
        };
        Some(candidates[index])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn round_robin_within_the_destination_family() {
        let pool = SourceAddresses::new(
            vec![ip("127.0.0.1"), ip("::1"), ip("127.0.0.2")],
            SourceSelection::RoundRobin,
        );
        let v4: SocketAddr = "192.0.2.1:25".parse().unwrap();
        let v6: SocketAddr = "[2001:db8::1]:25".parse().unwrap();
        let picks: Vec<IpAddr> = (0..4).filter_map(|_| pool.pick(&v4)).collect();
        assert_eq!(
            picks,
            [
                ip("127.0.0.1"),
                ip("127.0.0.2"),
                ip("127.0.0.1"),
                ip("127.0.0.2")
            ]
        );
        assert_eq!(pool.pick(&v6), Some(ip("::1")));
        let only_v4 = SourceAddresses::new(vec![ip("127.0.0.1")], SourceSelection::Random);
        assert_eq!(only_v4.pick(&v6), None);
        assert_eq!(SourceAddresses::default().pick(&v4), None);
    }

    #[test]
    fn random_picks_stay_in_the_pool() {
        let ips = vec![ip("127.0.0.1"), ip("127.0.0.2"), ip("127.0.0.3")];
        let pool = SourceAddresses::new(ips.clone(), SourceSelection::Random);
        let dest: SocketAddr = "192.0.2.1:25".parse().unwrap();
        let mut seen = std::collections::HashSet::new();
        for _ in 0..300 {
            let pick = pool.pick(&dest).unwrap();
            assert!(ips.contains(&pick));
            seen.insert(pick);
        }
        // 300 fair draws missing one of three addresses: (2/3)^300 ~ 1e-53.
        assert_eq!(seen.len(), 3);
    }
}
