//! [`IpRange`]: an address or a CIDR block (`127.0.0.2`, `127.0.0.10/31`,
//! `2001:db8::/32`), for the edge checks that match addresses: which DNS
//! list answers count, which clients are trusted.
//!
//! Decisions:
//! - A plain address is a range of one (`/32` or `/128`).
//! - Host bits below the prefix are ignored (`127.0.0.10/31` is
//!   `127.0.0.10-11`), as most configuration formats do.
//! - An IPv4-mapped IPv6 address (`::ffff:192.0.2.1`, from a dual-stack
//!   socket) matches as the IPv4 address; an IPv4 range never matches other
//!   IPv6 addresses, nor the other way round.
//! - Written here rather than pulled in as a crate: twenty lines, and
//!   every parse error can say what it expected.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

/// An address or a CIDR block; see the module docs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct IpRange {
    network: IpAddr,
    prefix: u8,
}

impl IpRange {
    /// The range of `network` with the top `prefix` bits significant.
    ///
    /// # Errors
    ///
    /// A prefix longer than the address (32 for IPv4, 128 for IPv6).
    pub fn new(network: IpAddr, prefix: u8) -> Result<Self, String> {
        let max = if network.is_ipv4() { 32 } else { 128 };
        if prefix > max {
            return Err(format!("prefix /{prefix} is longer than {max} bits"));
        }
        Ok(Self { network, prefix })
    }

    /// The range holding `ip` alone.
    pub fn host(ip: IpAddr) -> Self {
        let prefix = if ip.is_ipv4() { 32 } else { 128 };
        Self {
            network: ip,
            prefix,
        }
    }

    /// Whether `ip` is in the range.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.network, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl FromStr for IpRange {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = |why: &str| format!("invalid address or CIDR range \"{s}\": {why}");
        let (addr, prefix) = match s.trim().split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (s.trim(), None),
        };
        let ip: IpAddr = addr
            .parse()
            .map_err(|_| bad("expected e.g. 127.0.0.2 or 127.0.0.0/24"))?;
        match prefix {
            None => Ok(Self::host(ip)),
            Some(p) => {
                let p: u8 = p.parse().map_err(|_| bad("the prefix is not a number"))?;
                Self::new(ip, p).map_err(|e| bad(&e))
            }
        }
    }
}

impl fmt::Display for IpRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_of_ranges() {
        let cases: &[(&str, &str, bool)] = &[
            ("127.0.0.2", "127.0.0.2", true),
            ("127.0.0.2", "127.0.0.3", false),
            ("127.0.0.10/31", "127.0.0.10", true),
            ("127.0.0.10/31", "127.0.0.11", true),
            ("127.0.0.10/31", "127.0.0.12", false),
            ("127.0.0.10/31", "127.0.0.9", false),
            ("127.0.0.0/8", "127.255.1.2", true),
            ("127.0.0.0/8", "128.0.0.1", false),
            ("0.0.0.0/0", "192.0.2.1", true),
            ("0.0.0.0/0", "2001:db8::1", false),
            ("127.0.0.0/8", "::ffff:127.0.0.1", true),
            ("2001:db8::/32", "2001:db8:ffff::1", true),
            ("2001:db8::/32", "2001:db9::1", false),
            ("::1", "::1", true),
            ("::/0", "::1", true),
            ("::/0", "127.0.0.1", false),
        ];
        for (range, ip, want) in cases {
            let r: IpRange = range.parse().unwrap();
            assert_eq!(r.contains(ip.parse().unwrap()), *want, "{range} {ip}");
        }
    }

    #[test]
    fn bad_ranges_say_why() {
        for (s, part) in [
            ("127.0.0.1/33", "longer than 32"),
            ("::1/129", "longer than 128"),
            ("127.0.0/8", "expected e.g."),
            ("127.0.0.1/x", "not a number"),
            ("zen.test", "expected e.g."),
        ] {
            let e = s.parse::<IpRange>().unwrap_err();
            assert!(e.contains(part), "{s}: {e}");
        }
    }
}
