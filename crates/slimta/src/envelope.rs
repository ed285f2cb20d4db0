//! The envelope: everything the queue must keep about one message.
//!
//! An [`Envelope`] is what an edge produces and what a relay consumes: the
//! reverse path (sender), the forward paths (recipients), the message bytes
//! exactly as received (after SMTP dot-unstuffing), and facts about the client
//! that delivered it. Storage backends persist every field, so adding a field
//! here means adding it to every storage format.
//!
//! Design decisions:
//! - Addresses are kept as the strings that appeared between `<` and `>`
//!   (already validated by the protocol layer), not as a parsed structure:
//!   they are compared case-insensitively only in their domain part, and
//!   relays must send them back byte for byte.
//! - The null reverse path is the empty string.
//! - The message is one contiguous buffer; header policies prepend to it.

use std::net::IpAddr;
use std::time::SystemTime;

/// How the message body was declared (RFC 1652 `BODY=` parameter).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum BodyType {
    /// No declaration or `BODY=7BIT`.
    #[default]
    SevenBit,
    /// `BODY=8BITMIME`.
    EightBitMime,
    /// `BODY=BINARYMIME` (RFC 3030), only possible with BDAT.
    BinaryMime,
}

/// The protocol a message arrived by, as written in `Received: ... with X`
/// (RFC 3848 registry).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// HELO.
    Smtp,
    /// EHLO.
    #[default]
    Esmtp,
    /// EHLO over TLS.
    Esmtps,
    /// EHLO with AUTH.
    Esmtpa,
    /// EHLO over TLS with AUTH.
    Esmtpsa,
    /// LHLO.
    Lmtp,
    /// LHLO over TLS.
    Lmtps,
    /// LHLO with AUTH.
    Lmtpa,
    /// LHLO over TLS with AUTH.
    Lmtpsa,
    /// The HTTP edge.
    Http,
    /// Generated inside the MTA (bounces).
    Local,
}

impl Protocol {
    /// The RFC 3848 keyword (`"ESMTPS"`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Smtp => "SMTP",
            Protocol::Esmtp => "ESMTP",
            Protocol::Esmtps => "ESMTPS",
            Protocol::Esmtpa => "ESMTPA",
            Protocol::Esmtpsa => "ESMTPSA",
            Protocol::Lmtp => "LMTP",
            Protocol::Lmtps => "LMTPS",
            Protocol::Lmtpa => "LMTPA",
            Protocol::Lmtpsa => "LMTPSA",
            Protocol::Http => "HTTP",
            Protocol::Local => "LOCAL",
        }
    }

    /// Parses the keyword written by [`Protocol::as_str`].
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "SMTP" => Protocol::Smtp,
            "ESMTP" => Protocol::Esmtp,
            "ESMTPS" => Protocol::Esmtps,
            "ESMTPA" => Protocol::Esmtpa,
            "ESMTPSA" => Protocol::Esmtpsa,
            "LMTP" => Protocol::Lmtp,
            "LMTPS" => Protocol::Lmtps,
            "LMTPA" => Protocol::Lmtpa,
            "LMTPSA" => Protocol::Lmtpsa,
            "HTTP" => Protocol::Http,
            "LOCAL" => Protocol::Local,
            _ => return None,
        })
    }
}

/// The negotiated TLS parameters of the client's connection.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TlsInfo {
    /// For example `"TLSv1.3"`.
    pub protocol: String,
    /// For example `"TLS13_AES_256_GCM_SHA384"`.
    pub cipher: String,
}

/// What is known about the client that delivered the message.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClientInfo {
    /// The client's address (from the socket, or from a PROXY header).
    pub ip: Option<IpAddr>,
    /// The client's port.
    pub port: u16,
    /// The forward-confirmed reverse DNS name, when looked up and confirmed.
    pub host: Option<String>,
    /// The HELO/EHLO/LHLO argument.
    pub helo: Option<String>,
    /// How the message arrived.
    pub protocol: Protocol,
    /// The authenticated identity, if the client authenticated.
    pub auth: Option<String>,
    /// TLS parameters, if the session was encrypted.
    pub tls: Option<TlsInfo>,
}

/// One message with its envelope.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Envelope {
    /// The reverse path; empty for the null sender `<>`.
    pub sender: String,
    /// The forward paths, in the order the client gave them.
    pub recipients: Vec<String>,
    /// The message (header and body) with CRLF line ends as received.
    pub message: Vec<u8>,
    /// Facts about the client.
    pub client: ClientInfo,
    /// When the edge finished receiving the message.
    pub receive_time: SystemTime,
    /// The declared body type.
    pub body: BodyType,
    /// Whether the client asked for SMTPUTF8 (RFC 6531).
    pub smtputf8: bool,
}

impl Envelope {
    /// An envelope with the given paths and message, received now.
    pub fn new(sender: impl Into<String>, recipients: Vec<String>, message: Vec<u8>) -> Self {
        Self {
            sender: sender.into(),
            recipients,
            message,
            client: ClientInfo::default(),
            receive_time: SystemTime::now(),
            body: BodyType::default(),
            smtputf8: false,
        }
    }

    /// A copy of this envelope with only the given recipients (used when a
    /// delivery is retried for some recipients, or an envelope is split).
    pub fn with_recipients(&self, recipients: Vec<String>) -> Self {
        Self {
            recipients,
            ..self.clone()
        }
    }

    /// The length of the header section including the blank line that ends
    /// it, or the whole message if there is no blank line.
    pub fn header_len(&self) -> usize {
        let m = &self.message;
        if m.starts_with(b"\r\n") {
            return 2;
        }
        memchr::memmem::find(m, b"\r\n\r\n").map_or(m.len(), |i| i + 4)
    }

    /// Inserts a header field (name and value, without line end) at the top of
    /// the message, as trace and header policies do.
    pub fn prepend_header(&mut self, name: &str, value: &str) {
        let mut out = Vec::with_capacity(self.message.len() + name.len() + value.len() + 4);
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(&self.message);
        self.message = out;
    }
}

/// The domain part of an address (after the last `@`), if any.
pub fn domain_of(address: &str) -> Option<&str> {
    address.rsplit_once('@').map(|(_, d)| d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_len_finds_the_blank_line() {
        let mut e = Envelope::new(
            "a@x",
            vec!["b@y".into()],
            b"A: 1\r\nB: 2\r\n\r\nbody\r\n".to_vec(),
        );
        assert_eq!(e.header_len(), 14);
        e.message = b"\r\nbody".to_vec();
        assert_eq!(e.header_len(), 2);
        e.message = b"A: 1\r\n".to_vec();
        assert_eq!(e.header_len(), 6);
    }

    #[test]
    fn prepend_header_keeps_the_rest() {
        let mut e = Envelope::new("", vec![], b"A: 1\r\n\r\nx".to_vec());
        e.prepend_header("Received", "from a by b");
        assert_eq!(e.message, b"Received: from a by b\r\nA: 1\r\n\r\nx");
    }

    #[test]
    fn domains_and_protocol_names() {
        assert_eq!(domain_of("a@b.test"), Some("b.test"));
        assert_eq!(domain_of("\"a@b\"@c.test"), Some("c.test"));
        assert_eq!(domain_of("postmaster"), None);
        for p in [
            Protocol::Smtp,
            Protocol::Esmtpsa,
            Protocol::Lmtp,
            Protocol::Http,
            Protocol::Local,
        ] {
            assert_eq!(Protocol::parse(p.as_str()), Some(p));
        }
    }
}
