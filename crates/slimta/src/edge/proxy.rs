//! The PROXY protocol (HAProxy, versions 1 and 2): the real client address
//! of a connection that arrives through a load balancer.
//!
//! A load balancer in front of the MTA hides the client: the socket's peer
//! is the balancer. With the PROXY protocol it writes one header before any
//! client byte, and the edge takes the client address from it for logs,
//! validators and the `Received` header.
//!
//! The parser is sans-IO ([`parse`], [`ProxyMode::parse`]): it takes the
//! bytes read so far and answers "need more", "bad header" or the header
//! with the number of bytes it used. [`read_proxy_header`] is the thin tokio
//! driver an edge calls before its banner.
//!
//! Decisions (the header comes from a trusted balancer, so anything odd is
//! an error, never a guess):
//! - v1 is at most 107 bytes including CRLF (the spec's limit). Exactly one
//!   space separates fields; the line must end in CRLF; a bare LF or CR, an
//!   extra field or a trailing space is an error. Ports are decimal
//!   `0..=65535` without leading zeros (the spec's ABNF has none, and a
//!   leading zero is how octal confusion starts). Addresses are parsed with
//!   the standard library, which rejects leading zeros in IPv4 too.
//!   `TCP4` with an IPv6 address (or the reverse) is an error.
//! - v1 `UNKNOWN` may carry anything up to the CRLF (the spec says the
//!   receiver must ignore it); it yields no addresses.
//! - v2: version nibble 2, command LOCAL or PROXY. LOCAL (health checks)
//!   and PROXY with `AF_UNSPEC` or `AF_UNIX` yield no addresses; PROXY over
//!   INET/INET6 must be `STREAM` (we serve TCP). The declared length must
//!   cover the address block of its family; what follows (TLVs) is skipped
//!   unparsed. The declared length is capped at [`V2_MAX_PAYLOAD`] so a
//!   header never needs more than 16 + 2048 bytes of memory.
//! - With no addresses the edge uses the socket's own, as the spec asks.

use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};

/// The longest v1 header, CRLF included (spec section 2.1).
pub const V1_MAX_LEN: usize = 107;

/// The v2 signature (spec section 2.2).
pub const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";

/// The largest v2 payload (address block plus TLVs) accepted.
pub const V2_MAX_PAYLOAD: usize = 2048;

const V1_PREFIX: &[u8] = b"PROXY ";

/// The addresses a PROXY header announced.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProxyHeader {
    /// The real client; `None` for v1 `UNKNOWN`, v2 `LOCAL` and v2 families
    /// without IP addresses: then the socket's peer address applies.
    pub source: Option<SocketAddr>,
    /// The address the client connected to (the balancer's front end).
    pub destination: Option<SocketAddr>,
}

/// Which header versions a listener accepts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ProxyMode {
    /// Only the v1 text header.
    V1,
    /// Only the v2 binary header.
    V2,
    /// Either, told apart by the first byte.
    #[default]
    Auto,
}

impl ProxyMode {
    /// Parses the start of `buf` as a header of this mode; see [`parse`].
    ///
    /// # Errors
    ///
    /// When the bytes cannot start a valid header of this mode.
    pub fn parse(self, buf: &[u8]) -> Result<Option<(ProxyHeader, usize)>, ProxyError> {
        match self {
            ProxyMode::V1 => parse_v1(buf),
            ProxyMode::V2 => parse_v2(buf),
            ProxyMode::Auto => parse(buf),
        }
    }

    /// The most bytes a header of this mode can take.
    pub fn max_len(self) -> usize {
        match self {
            ProxyMode::V1 => V1_MAX_LEN,
            ProxyMode::V2 | ProxyMode::Auto => 16 + V2_MAX_PAYLOAD,
        }
    }
}

/// Why a PROXY header was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProxyError {
    /// The bytes start neither `PROXY ` nor the v2 signature (or not the one
    /// the listener expects).
    BadSignature,
    /// v1: no CRLF within 107 bytes.
    TooLong,
    /// v1: a CR or LF that is not part of the final CRLF.
    BadLineEnd,
    /// v1: the protocol word is not `TCP4`, `TCP6` or `UNKNOWN`.
    BadProtocol,
    /// An address that does not parse or does not match the family.
    BadAddress,
    /// v1: a port that is not a decimal number in `0..=65535` without
    /// leading zeros.
    BadPort,
    /// v1: a missing or extra field, or a wrong separator.
    BadSyntax,
    /// v2: the version nibble is not 2.
    BadVersion,
    /// v2: the command is neither LOCAL nor PROXY.
    BadCommand,
    /// v2: an unknown address family or transport protocol.
    BadFamily,
    /// v2: a length too short for the family's addresses, or over
    /// [`V2_MAX_PAYLOAD`].
    BadLength,
}

impl fmt::Display for ProxyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ProxyError::BadSignature => "not a PROXY protocol header",
            ProxyError::TooLong => "PROXY v1 header longer than 107 bytes",
            ProxyError::BadLineEnd => "PROXY v1 header with a bare CR or LF",
            ProxyError::BadProtocol => "PROXY v1 header with an unknown protocol",
            ProxyError::BadAddress => "PROXY header with a bad address",
            ProxyError::BadPort => "PROXY v1 header with a bad port",
            ProxyError::BadSyntax => "PROXY v1 header with bad field syntax",
            ProxyError::BadVersion => "PROXY v2 header with a bad version",
            ProxyError::BadCommand => "PROXY v2 header with a bad command",
            ProxyError::BadFamily => "PROXY v2 header with a bad address family or protocol",
            ProxyError::BadLength => "PROXY v2 header with a bad length",
        })
    }
}

impl std::error::Error for ProxyError {}

/// Parses a v1 or v2 header at the start of `buf` (told apart by the first
/// byte). `Ok(None)` means the bytes so far are a valid beginning: read more.
/// `Ok(Some((header, n)))` means the header is the first `n` bytes; anything
/// after them belongs to the session.
///
/// # Errors
///
/// When the bytes cannot start a valid header ([`ProxyError`] says why).
pub fn parse(buf: &[u8]) -> Result<Option<(ProxyHeader, usize)>, ProxyError> {
    match buf.first() {
        None => Ok(None),
        Some(b'P') => parse_v1(buf),
        Some(b'\r') => parse_v2(buf),
        Some(_) => Err(ProxyError::BadSignature),
    }
}

/// Parses a v1 (text) header; see [`parse`].
///
/// # Errors
///
/// When the bytes cannot start a valid v1 header.
pub fn parse_v1(buf: &[u8]) -> Result<Option<(ProxyHeader, usize)>, ProxyError> {
    let n = buf.len().min(V1_PREFIX.len());
    if buf[..n] != V1_PREFIX[..n] {
        return Err(ProxyError::BadSignature);
    }
    let window = &buf[..buf.len().min(V1_MAX_LEN)];
    let Some(end) = window.iter().position(|&b| b == b'\r' || b == b'\n') else {
        if buf.len() >= V1_MAX_LEN {
            return Err(ProxyError::TooLong);
        }
        return Ok(None);
    };
    if window[end] == b'\n' {
        return Err(ProxyError::BadLineEnd);
    }
    match window.get(end + 1) {
        None if buf.len() >= V1_MAX_LEN => return Err(ProxyError::TooLong),
        None => return Ok(None),
        Some(b'\n') => {}
        Some(_) => return Err(ProxyError::BadLineEnd),
    }
    if end < V1_PREFIX.len() {
        return Err(ProxyError::BadSyntax);
    }
    let line = &window[V1_PREFIX.len()..end];
    let header = parse_v1_fields(line)?;
    Ok(Some((header, end + 2)))
}

fn parse_v1_fields(line: &[u8]) -> Result<ProxyHeader, ProxyError> {
    // Anything may follow UNKNOWN; everything else is ASCII.
    if line == b"UNKNOWN" || line.starts_with(b"UNKNOWN ") {
        return Ok(ProxyHeader::default());
    }
    let line = std::str::from_utf8(line).map_err(|_| ProxyError::BadSyntax)?;
    let mut fields = line.split(' ');
    let family = fields.next().unwrap_or("");
    let v6 = match family {
        "TCP4" => false,
        "TCP6" => true,
        _ => return Err(ProxyError::BadProtocol),
    };
    let mut next = || fields.next().ok_or(ProxyError::BadSyntax);
    let (src, dst, sport, dport) = (next()?, next()?, next()?, next()?);
    if fields.next().is_some() {
        return Err(ProxyError::BadSyntax);
    }
    let ip = |s: &str| -> Result<IpAddr, ProxyError> {
        if s.is_empty() {
            return Err(ProxyError::BadSyntax);
        }
        if v6 {
            s.parse::<Ipv6Addr>().map(IpAddr::V6)
        } else {
            s.parse::<Ipv4Addr>().map(IpAddr::V4)
        }
        .map_err(|_| ProxyError::BadAddress)
    };
    let (src, dst) = (ip(src)?, ip(dst)?);
    let (sport, dport) = (port(sport)?, port(dport)?);
    Ok(ProxyHeader {
        source: Some(SocketAddr::new(src, sport)),
        destination: Some(SocketAddr::new(dst, dport)),
    })
}

fn port(s: &str) -> Result<u16, ProxyError> {
    if s.is_empty() {
        return Err(ProxyError::BadSyntax);
    }
    if !s.bytes().all(|b| b.is_ascii_digit()) || s.len() > 5 || (s.len() > 1 && s.starts_with('0'))
    {
        return Err(ProxyError::BadPort);
    }
    s.parse().map_err(|_| ProxyError::BadPort)
}

/// Parses a v2 (binary) header; see [`parse`].
///
/// # Errors
///
/// When the bytes cannot start a valid v2 header.
pub fn parse_v2(buf: &[u8]) -> Result<Option<(ProxyHeader, usize)>, ProxyError> {
    let n = buf.len().min(V2_SIGNATURE.len());
    if buf[..n] != V2_SIGNATURE[..n] {
        return Err(ProxyError::BadSignature);
    }
    let Some(&ver_cmd) = buf.get(12) else {
        return Ok(None);
    };
    if ver_cmd >> 4 != 2 {
        return Err(ProxyError::BadVersion);
    }
    let local = match ver_cmd & 0x0f {
        0 => true,
        1 => false,
        _ => return Err(ProxyError::BadCommand),
    };
    let Some(&fam) = buf.get(13) else {
        return Ok(None);
    };
    let (family, transport) = (fam >> 4, fam & 0x0f);
    if family > 3 || transport > 2 {
        return Err(ProxyError::BadFamily);
    }
    let Some(len) = buf.get(14..16) else {
        return Ok(None);
    };
    let len = usize::from(u16::from_be_bytes([len[0], len[1]]));
    if len > V2_MAX_PAYLOAD {
        return Err(ProxyError::BadLength);
    }
    let needed = match family {
        1 => 12,
        2 => 36,
        3 => 216,
        _ => 0,
    };
    if !local && len < needed {
        return Err(ProxyError::BadLength);
    }
    // Only STREAM over INET/INET6 carries a TCP client; UNSPEC means "no
    // address information".
    if !local && matches!(family, 1 | 2) && transport != 1 {
        return Err(ProxyError::BadFamily);
    }
    let Some(block) = buf.get(16..16 + len) else {
        return Ok(None);
    };
    let header = if local {
        ProxyHeader::default()
    } else {
        match family {
            1 => {
                let ip = |i: usize| {
                    IpAddr::V4(Ipv4Addr::new(
                        block[i],
                        block[i + 1],
                        block[i + 2],
                        block[i + 3],
                    ))
                };
                let port = |i: usize| u16::from_be_bytes([block[i], block[i + 1]]);
                ProxyHeader {
                    source: Some(SocketAddr::new(ip(0), port(8))),
                    destination: Some(SocketAddr::new(ip(4), port(10))),
                }
            }
            2 => {
                let ip = |i: usize| {
                    let mut octets = [0u8; 16];
                    octets.copy_from_slice(&block[i..i + 16]);
                    IpAddr::V6(Ipv6Addr::from(octets))
                };
                let port = |i: usize| u16::from_be_bytes([block[i], block[i + 1]]);
                ProxyHeader {
                    source: Some(SocketAddr::new(ip(0), port(32))),
                    destination: Some(SocketAddr::new(ip(16), port(34))),
                }
            }
            _ => ProxyHeader::default(),
        }
    };
    Ok(Some((header, 16 + len)))
}

/// Reads exactly one PROXY header of `mode` from `stream`, within `timeout`.
/// Returns the header and the bytes read after it (the first bytes of the
/// session, which the caller must process before reading again).
///
/// It never reads more than the longest header of `mode`, so the leftover is
/// small and bounded.
///
/// # Errors
///
/// [`io::ErrorKind::InvalidData`] (wrapping a [`ProxyError`]) for a bad
/// header, [`io::ErrorKind::TimedOut`] when it is not complete within
/// `timeout`, [`io::ErrorKind::UnexpectedEof`] when the peer closes first,
/// and read errors.
pub async fn read_proxy_header<S>(
    stream: &mut S,
    mode: ProxyMode,
    timeout: Duration,
) -> io::Result<(ProxyHeader, Vec<u8>)>
where
    S: AsyncRead + Unpin,
{
    let max = mode.max_len();
    let read = async {
        let mut buf = Vec::with_capacity(256);
        loop {
            match mode.parse(&buf) {
                Ok(Some((header, used))) => return Ok((header, buf.split_off(used))),
                Ok(None) => {}
                Err(e) => return Err(io::Error::new(io::ErrorKind::InvalidData, e)),
            }
            // A valid beginning is always shorter than `max`.
            let room = max - buf.len();
            let start = buf.len();
            buf.resize(start + room.min(512), 0);
            let n = stream.read(&mut buf[start..]).await?;
            buf.truncate(start + n);
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "connection closed inside the PROXY header",
                ));
            }
        }
    };
    tokio::time::timeout(timeout, read)
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "PROXY header not complete in time"))?
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v2(cmd: u8, fam: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = V2_SIGNATURE.to_vec();
        out.push(cmd);
        out.push(fam);
        out.extend_from_slice(&u16::try_from(payload.len()).unwrap().to_be_bytes());
        out.extend_from_slice(payload);
        out
    }

    #[test]
    fn v1_valid_headers() {
        type Case<'a> = (&'a [u8], Option<&'a str>, Option<&'a str>, usize);
        let cases: &[Case<'_>] = &[
            (
                b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 25\r\nEHLO x\r\n",
                Some("192.0.2.1:56324"),
                Some("198.51.100.2:25"),
                44,
            ),
            (
                b"PROXY TCP6 2001:db8::1 2001:db8::2 0 65535\r\n",
                Some("[2001:db8::1]:0"),
                Some("[2001:db8::2]:65535"),
                44,
            ),
            (b"PROXY UNKNOWN\r\n", None, None, 15),
            (
                b"PROXY UNKNOWN ffff:f...f:ffff 1.2 junk\r\nQUIT\r\n",
                None,
                None,
                40,
            ),
        ];
        for (input, src, dst, used) in cases {
            let (h, n) = parse(input).unwrap().unwrap();
            assert_eq!(h.source, src.map(|s| s.parse().unwrap()), "{input:?}");
            assert_eq!(h.destination, dst.map(|s| s.parse().unwrap()), "{input:?}");
            assert_eq!(n, *used, "{input:?}");
        }
        // The spec's worst case (UNKNOWN with full addresses) is exactly
        // 107 bytes.
        let max = b"PROXY UNKNOWN ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n";
        assert_eq!(max.len(), V1_MAX_LEN);
        assert_eq!(parse(max).unwrap().unwrap().1, V1_MAX_LEN);
    }

    #[test]
    fn incomplete_is_not_invalid() {
        let full = b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 25\r\n";
        for i in 0..full.len() {
            assert_eq!(parse(&full[..i]), Ok(None), "prefix {i}");
        }
        let full = v2(0x21, 0x11, &[127, 0, 0, 9, 127, 0, 0, 1, 0, 80, 0, 25]);
        for i in 0..full.len() {
            assert_eq!(parse(&full[..i]), Ok(None), "prefix {i}");
        }
        assert!(parse(&full).unwrap().is_some());
    }

    #[test]
    fn v1_malformed_headers() {
        let long_unknown = format!("PROXY UNKNOWN {}\r\n", "x".repeat(100));
        let no_crlf = "PROXY UNKNOWN ".to_string() + &"x".repeat(V1_MAX_LEN);
        let cases: &[(&[u8], ProxyError)] = &[
            (long_unknown.as_bytes(), ProxyError::TooLong),
            (no_crlf.as_bytes(), ProxyError::TooLong),
            (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n", ProxyError::BadLineEnd),
            (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\rX", ProxyError::BadLineEnd),
            (
                b"PROXY TCP4 1.2.3.4\r5.6.7.8 1 2\r\n",
                ProxyError::BadLineEnd,
            ),
            (b"PROXY\r\n", ProxyError::BadSignature),
            (b"PROXX TCP4", ProxyError::BadSignature),
            (
                b"proxy TCP4 1.2.3.4 5.6.7.8 1 2\r\n",
                ProxyError::BadSignature,
            ),
            (b"EHLO x\r\n", ProxyError::BadSignature),
            (
                b"PROXY  TCP4 1.2.3.4 5.6.7.8 1 2\r\n",
                ProxyError::BadProtocol,
            ),
            (
                b"PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n",
                ProxyError::BadProtocol,
            ),
            (
                b"PROXY tcp4 1.2.3.4 5.6.7.8 1 2\r\n",
                ProxyError::BadProtocol,
            ),
            (
                b"PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n",
                ProxyError::BadProtocol,
            ),
            (b"PROXY \r\n", ProxyError::BadProtocol),
            (b"PROXY UNKNOWNX\r\n", ProxyError::BadProtocol),
            (
                b"PROXY TCP4 1.2.3.4 5.6.7.8 1 65536\r\n",
                ProxyError::BadPort,
            ),
            (
                b"PROXY TCP4 1.2.3.4 5.6.7.8 99999 1\r\n",
                ProxyError::BadPort,
            ),
            (b"PROXY TCP4 1.2.3.4 5.6.7.8 025 1\r\n", ProxyError::BadPort),
            (b"PROXY TCP4 1.2.3.4 5.6.7.8 -1 1\r\n", ProxyError::BadPort),
            (b"PROXY TCP4 1.2.3.4 5.6.7.8 +1 1\r\n", ProxyError::BadPort),
            (
                b"PROXY TCP4 1.2.3.4 5.6.7.8 0x19 1\r\n",
                ProxyError::BadPort,
            ),
            (
                b"PROXY TCP4 1.2.3.4 5.6.7.8 100000 1\r\n",
                ProxyError::BadPort,
            ),
            (
                b"PROXY TCP4 1.2.3.256 5.6.7.8 1 2\r\n",
                ProxyError::BadAddress,
            ),
            (
                b"PROXY TCP4 1.2.3.04 5.6.7.8 1 2\r\n",
                ProxyError::BadAddress,
            ),
            (b"PROXY TCP4 1.2.3 5.6.7.8 1 2\r\n", ProxyError::BadAddress),
            (
                b"PROXY TCP4 host.test 5.6.7.8 1 2\r\n",
                ProxyError::BadAddress,
            ),
            (b"PROXY TCP4 ::1 5.6.7.8 1 2\r\n", ProxyError::BadAddress),
            (b"PROXY TCP6 1.2.3.4 ::1 1 2\r\n", ProxyError::BadAddress),
            (b"PROXY TCP6 ::1 5.6.7.8 1 2\r\n", ProxyError::BadAddress),
            (b"PROXY TCP6 [::1] ::1 1 2\r\n", ProxyError::BadAddress),
            (
                b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n",
                ProxyError::BadSyntax,
            ),
            (
                b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 \r\n",
                ProxyError::BadSyntax,
            ),
            (b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n", ProxyError::BadSyntax),
            (
                b"PROXY TCP4 1.2.3.4  5.6.7.8 1 2\r\n",
                ProxyError::BadSyntax,
            ),
            (
                b"PROXY TCP4 1.2.3.4\t5.6.7.8 1 2\r\n",
                ProxyError::BadSyntax,
            ),
            (b"PROXY TCP4\r\n", ProxyError::BadSyntax),
            (
                b"PROXY TCP4 1.2.3.4 5.6.7.8 1 \xff\r\n",
                ProxyError::BadSyntax,
            ),
        ];
        for (input, want) in cases {
            assert_eq!(
                parse(input),
                Err(*want),
                "{:?}",
                String::from_utf8_lossy(input)
            );
            assert_eq!(parse_v1(input), Err(*want));
        }
    }

    #[test]
    fn v2_valid_headers() {
        let inet = [192, 0, 2, 1, 198, 51, 100, 2, 0xdc, 0x04, 0, 25];
        let (h, n) = parse(&v2(0x21, 0x11, &inet)).unwrap().unwrap();
        assert_eq!(h.source, Some("192.0.2.1:56324".parse().unwrap()));
        assert_eq!(h.destination, Some("198.51.100.2:25".parse().unwrap()));
        assert_eq!(n, 28);

        let mut inet6 = [0u8; 36];
        inet6[0] = 0x20;
        inet6[1] = 0x01;
        inet6[15] = 1;
        inet6[31] = 2;
        inet6[32..].copy_from_slice(&[0, 1, 0, 25]);
        let (h, n) = parse_v2(&v2(0x21, 0x21, &inet6)).unwrap().unwrap();
        assert_eq!(h.source, Some("[2001::1]:1".parse().unwrap()));
        assert_eq!(h.destination, Some("[::2]:25".parse().unwrap()));
        assert_eq!(n, 52);

        // TLVs after the address block are skipped; the rest is the session.
        let mut with_tlv = inet.to_vec();
        with_tlv.extend_from_slice(&[0x04, 0, 3, b'a', b'b', b'c']);
        let mut bytes = v2(0x21, 0x11, &with_tlv);
        bytes.extend_from_slice(b"EHLO x\r\n");
        let (h, n) = parse(&bytes).unwrap().unwrap();
        assert_eq!(h.source, Some("192.0.2.1:56324".parse().unwrap()));
        assert_eq!(&bytes[n..], b"EHLO x\r\n");

        // LOCAL: addresses ignored, whatever the family says.
        for (cmd, fam, payload) in [
            (0x20, 0x00, &[][..]),
            (0x20, 0x11, &inet[..]),
            (0x20, 0x11, &[][..]),
            (0x21, 0x00, &[][..]),
            (0x21, 0x00, &[1, 2, 3][..]),
            (0x21, 0x31, &[0u8; 216][..]),
        ] {
            let (h, n) = parse(&v2(cmd, fam, payload)).unwrap().unwrap();
            assert_eq!(h, ProxyHeader::default(), "{cmd:x} {fam:x}");
            assert_eq!(n, 16 + payload.len());
        }
    }

    #[test]
    fn v2_malformed_headers() {
        let inet = [127, 0, 0, 1, 127, 0, 0, 1, 0, 1, 0, 2];
        let mut bad_sig = v2(0x21, 0x11, &inet);
        bad_sig[5] = b'X';
        let mut too_long = V2_SIGNATURE.to_vec();
        too_long.extend_from_slice(&[0x21, 0x11, 0x08, 0x01]);
        let cases: &[(Vec<u8>, ProxyError)] = &[
            (bad_sig, ProxyError::BadSignature),
            (b"\r\n\r\n\0\r\nQUIX".to_vec(), ProxyError::BadSignature),
            (v2(0x11, 0x11, &inet), ProxyError::BadVersion),
            (v2(0x31, 0x11, &inet), ProxyError::BadVersion),
            (v2(0x01, 0x11, &inet), ProxyError::BadVersion),
            (v2(0x22, 0x11, &inet), ProxyError::BadCommand),
            (v2(0x2f, 0x11, &inet), ProxyError::BadCommand),
            (v2(0x21, 0x41, &inet), ProxyError::BadFamily),
            (v2(0x21, 0x13, &inet), ProxyError::BadFamily),
            (v2(0x21, 0x12, &inet), ProxyError::BadFamily),
            (v2(0x21, 0x10, &inet), ProxyError::BadFamily),
            (v2(0x21, 0x11, &inet[..11]), ProxyError::BadLength),
            (v2(0x21, 0x21, &inet), ProxyError::BadLength),
            (v2(0x21, 0x31, &[0u8; 100]), ProxyError::BadLength),
            (too_long, ProxyError::BadLength),
        ];
        for (input, want) in cases {
            assert_eq!(parse(input), Err(*want), "{input:?}");
            assert_eq!(parse_v2(input), Err(*want), "{input:?}");
        }
    }

    #[test]
    fn modes_refuse_the_other_version() {
        let one = b"PROXY UNKNOWN\r\n";
        let two = v2(0x20, 0x00, &[]);
        assert_eq!(ProxyMode::V2.parse(one), Err(ProxyError::BadSignature));
        assert_eq!(ProxyMode::V1.parse(&two), Err(ProxyError::BadSignature));
        assert!(ProxyMode::Auto.parse(one).unwrap().is_some());
        assert!(ProxyMode::Auto.parse(&two).unwrap().is_some());
    }

    #[tokio::test]
    async fn reader_hands_back_what_follows() {
        let (mut client, mut server) = tokio::io::duplex(4096);
        use tokio::io::AsyncWriteExt;
        client
            .write_all(b"PROXY TCP4 10.0.0.1 10.0.0.2 1000 25\r\nEHLO a\r\n")
            .await
            .unwrap();
        let (h, rest) = read_proxy_header(&mut server, ProxyMode::Auto, Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(h.source, Some("10.0.0.1:1000".parse().unwrap()));
        assert_eq!(rest, b"EHLO a\r\n");
    }

    #[tokio::test(start_paused = true)]
    async fn reader_times_out_and_refuses_junk() {
        let (mut client, mut server) = tokio::io::duplex(4096);
        use tokio::io::AsyncWriteExt;
        client.write_all(b"PROXY TCP4 10.0").await.unwrap();
        let e = read_proxy_header(&mut server, ProxyMode::V1, Duration::from_secs(3))
            .await
            .unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);

        let (mut client, mut server) = tokio::io::duplex(4096);
        client.write_all(b"EHLO me\r\n").await.unwrap();
        let e = read_proxy_header(&mut server, ProxyMode::Auto, Duration::from_secs(3))
            .await
            .unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        assert_eq!(e.to_string(), ProxyError::BadSignature.to_string());

        let (mut client, mut server) = tokio::io::duplex(4096);
        client.write_all(b"PROXY TCP4").await.unwrap();
        drop(client);
        let e = read_proxy_header(&mut server, ProxyMode::Auto, Duration::from_secs(3))
            .await
            .unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
    }

    mod props {
        use super::super::*;
        use proptest::prelude::*;

        fn valid_header() -> impl Strategy<Value = Vec<u8>> {
            prop_oneof![
                (
                    any::<[u8; 4]>(),
                    any::<[u8; 4]>(),
                    any::<u16>(),
                    any::<u16>()
                )
                    .prop_map(|(s, d, sp, dp)| {
                        format!(
                            "PROXY TCP4 {} {} {sp} {dp}\r\n",
                            Ipv4Addr::from(s),
                            Ipv4Addr::from(d)
                        )
                        .into_bytes()
                    }),
                (
                    any::<[u8; 16]>(),
                    any::<[u8; 16]>(),
                    any::<u16>(),
                    any::<u16>()
                )
                    .prop_map(|(s, d, sp, dp)| {
                        format!(
                            "PROXY TCP6 {} {} {sp} {dp}\r\n",
                            Ipv6Addr::from(s),
                            Ipv6Addr::from(d)
                        )
                        .into_bytes()
                    }),
                (
                    any::<[u8; 12]>(),
                    proptest::collection::vec(any::<u8>(), 0..64)
                )
                    .prop_map(|(block, tlv)| {
                        let mut out = V2_SIGNATURE.to_vec();
                        out.extend_from_slice(&[0x21, 0x11]);
                        let len = u16::try_from(12 + tlv.len()).unwrap();
                        out.extend_from_slice(&len.to_be_bytes());
                        out.extend_from_slice(&block);
                        out.extend_from_slice(&tlv);
                        out
                    }),
            ]
        }

        proptest! {
            /// An error never turns into success with more bytes, and
            /// "need more" never appears beyond the longest header.
            #[test]
            fn errors_are_final(
                start in 0..4usize,
                rest in proptest::collection::vec(any::<u8>(), 0..300),
            ) {
                // Random bytes behind each signature, so the parser gets past
                // the first byte.
                let starts: [&[u8]; 4] = [b"", b"PROXY ", b"PROXY TCP4 1", &V2_SIGNATURE];
                let mut bytes = starts[start].to_vec();
                bytes.extend_from_slice(&rest);
                let mut seen_error = false;
                for i in 0..=bytes.len() {
                    match parse(&bytes[..i]) {
                        Err(_) => seen_error = true,
                        Ok(None) => {
                            prop_assert!(!seen_error, "error then need-more at {}", i);
                            prop_assert!(i < ProxyMode::Auto.max_len());
                        }
                        Ok(Some((_, n))) => {
                            prop_assert!(!seen_error);
                            prop_assert!(n <= i);
                            break;
                        }
                    }
                }
            }

            /// A valid header followed by anything parses the same, and
            /// mutating one byte never panics.
            #[test]
            fn valid_headers_round_trip(
                header in valid_header(),
                tail in proptest::collection::vec(any::<u8>(), 0..32),
                flip in any::<(usize, u8)>(),
            ) {
                let (h, n) = parse(&header).unwrap().unwrap();
                prop_assert_eq!(n, header.len());
                prop_assert!(h.source.is_some());
                let mut full = header;
                full.extend_from_slice(&tail);
                prop_assert_eq!(parse(&full), Ok(Some((h, n))));
                let i = flip.0 % full.len();
                full[i] ^= flip.1;
                let _ = parse(&full);
            }
        }
    }
}
