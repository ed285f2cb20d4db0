//! [`StaticLmtpRelay`]: final delivery to a local LMTP server (RFC 2033),
//! such as Dovecot's or Cyrus's, over TCP or a unix socket.
//!
//! LMTP is SMTP with two differences that matter to a relay: the greeting
//! is `LHLO` (there is no HELO fallback), and after the message the server
//! answers once *per accepted recipient*, so one mailbox over quota does
//! not fail the others.
//!
//! Design decisions:
//! - The relay is the static SMTP relay's session driver in its LMTP
//!   dialect (`relay/smtp/connection.rs`), not a second client: pooling,
//!   timeouts, error texts, the smuggling-safe DATA encoder, SIZE/SMTPUTF8
//!   checks and PIPELINING are the same code.
//! - The result is always per recipient, in envelope order: a recipient
//!   refused at RCPT keeps that reply, an accepted one gets its own reply
//!   after the data. A reply that never comes (lost connection, timeout) is
//!   transient for that recipient and every one after it.
//! - TLS is off by default: LMTP servers sit on the same machine or a
//!   trusted network (RFC 2033 4: LMTP is not for wide-area use); it can be
//!   turned on for TCP like the SMTP relay's. A unix socket is never TLS.
//! - Defaults: port 24 is LMTP's registered port but servers are usually
//!   on a socket or a local port, so there is no default destination; the
//!   pool keeps no idle sessions (`idle_timeout` zero) unless configured.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::envelope::Envelope;
use crate::relay::smtp::{Credentials, StaticSmtpRelay, TlsMode};
use crate::relay::{Delivery, Relay, RelayError};

/// Delivers every envelope to one LMTP server.
#[derive(Clone, Debug)]
pub struct StaticLmtpRelay {
    inner: StaticSmtpRelay,
}

impl StaticLmtpRelay {
    /// A relay to the LMTP server at `host` (an IP address or a name) and
    /// `port`.
    pub fn new(host: impl Into<String>, port: u16) -> Self {
        Self {
            inner: StaticSmtpRelay::new(host, port).lmtp().tls(TlsMode::Off),
        }
    }

    /// A relay to the LMTP server listening on the unix socket at `path`
    /// (Dovecot's is usually `/run/dovecot/lmtp`).
    pub fn unix(path: impl Into<PathBuf>) -> Self {
        let path = path.into();
        Self {
            inner: StaticSmtpRelay::new(path.display().to_string(), 0)
                .lmtp()
                .tls(TlsMode::Off)
                .unix_path(path),
        }
    }

    /// The most sessions open at once (default 20).
    pub fn pool_size(mut self, size: usize) -> Self {
        self.inner = self.inner.pool_size(size);
        self
    }

    /// How long a session may wait idle for the next message (default zero:
    /// QUIT after each delivery).
    pub fn idle_timeout(mut self, timeout: Duration) -> Self {
        self.inner = self.inner.idle_timeout(timeout);
        self
    }

    /// The name to send with LHLO (default: this machine's host name).
    pub fn lhlo_as(mut self, name: impl Into<String>) -> Self {
        self.inner = self.inner.ehlo_as(name);
        self
    }

    /// How long to wait for the connection (default 30 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.inner = self.inner.connect_timeout(timeout);
        self
    }

    /// How long to wait for each reply and each write (default 5 minutes).
    pub fn command_timeout(mut self, timeout: Duration) -> Self {
        self.inner = self.inner.command_timeout(timeout);
        self
    }

    /// When to use TLS over TCP (default [`TlsMode::Off`]); see
    /// [`StaticSmtpRelay::tls`]. Never used on a unix socket.
    pub fn tls(mut self, mode: TlsMode) -> Self {
        self.inner = self.inner.tls(mode);
        self
    }

    /// Whether the server's certificate is verified (default true); see
    /// [`StaticSmtpRelay::tls_verify`] for what `false` risks.
    pub fn tls_verify(mut self, verify: bool) -> Self {
        self.inner = self.inner.tls_verify(verify);
        self
    }

    /// Trust only the CAs in this PEM file; see
    /// [`StaticSmtpRelay::tls_ca_file`].
    pub fn tls_ca_file(mut self, file: impl Into<PathBuf>) -> Self {
        self.inner = self.inner.tls_ca_file(file);
        self
    }

    /// AUTH with these credentials after LHLO; see
    /// [`StaticSmtpRelay::credentials`].
    pub fn credentials(mut self, credentials: Credentials) -> Self {
        self.inner = self.inner.credentials(credentials);
        self
    }

    /// Send messages with BDAT when the server offers CHUNKING (default
    /// true); see [`StaticSmtpRelay::chunking`].
    pub fn chunking(mut self, enabled: bool) -> Self {
        self.inner = self.inner.chunking(enabled);
        self
    }

    /// Local addresses to connect from over TCP; see
    /// [`StaticSmtpRelay::source_addresses`].
    pub fn source_addresses(mut self, ips: impl IntoIterator<Item = IpAddr>) -> Self {
        self.inner = self.inner.source_addresses(ips);
        self
    }
}

impl Relay for StaticLmtpRelay {
    async fn attempt(&self, envelope: &Envelope, attempt: u32) -> Result<Delivery, RelayError> {
        self.inner.attempt(envelope, attempt).await
    }
}
