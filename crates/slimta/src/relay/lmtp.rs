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
//! - The client settings are the SMTP relays' [`ClientOptions`], with the
//!   LMTP defaults for what they leave unset.
//! - TLS is off by default: LMTP servers sit on the same machine or a
//!   trusted network (RFC 2033 4: LMTP is not for wide-area use); it can be
//!   turned on for TCP like the SMTP relay's. A unix socket is never TLS.
//! - Defaults: port 24 is LMTP's registered port but servers are usually
//!   on a socket or a local port, so there is no default destination; the
//!   pool keeps no idle sessions (`idle_timeout` zero) unless configured.

use std::path::PathBuf;

use crate::envelope::Envelope;
use crate::relay::smtp::client_options::RelayDefaults;
use crate::relay::smtp::connection::Dialect;
use crate::relay::smtp::{ClientOptions, StaticSmtpRelay};
use crate::relay::{Delivery, Destination, Relay, RelayError};

/// Delivers every envelope to one LMTP server.
#[derive(Clone, Debug)]
pub struct StaticLmtpRelay {
    inner: StaticSmtpRelay,
}

impl StaticLmtpRelay {
    /// A relay to the LMTP server at `host` (an IP address or a name) and
    /// `port`, with the default [`ClientOptions`].
    pub fn new(host: impl Into<String>, port: u16) -> Self {
        Self {
            inner: StaticSmtpRelay::with_defaults(
                host.into(),
                port,
                RelayDefaults::LMTP,
                Dialect::Lmtp,
            ),
        }
    }

    /// A relay to the LMTP server listening on the unix socket at `path`
    /// (Dovecot's is usually `/run/dovecot/lmtp`).
    pub fn unix(path: impl Into<PathBuf>) -> Self {
        let path = path.into();
        Self {
            inner: StaticSmtpRelay::with_defaults(
                path.display().to_string(),
                0,
                RelayDefaults::LMTP,
                Dialect::Lmtp,
            )
            .unix_path(path),
        }
    }

    /// Uses these client settings; [`ClientOptions::ehlo_as`] is the LHLO
    /// name. Unset TLS settings mean no TLS, and the certificate verified
    /// when TLS is asked for. Over a unix socket there is never TLS nor a
    /// source address.
    pub fn options(mut self, options: ClientOptions) -> Self {
        self.inner = self.inner.options(options);
        self
    }

    /// The client settings in use.
    pub fn client_options(&self) -> &ClientOptions {
        self.inner.client_options()
    }
}

impl Relay for StaticLmtpRelay {
    async fn attempt(&self, envelope: &Envelope, attempt: u32) -> Result<Delivery, RelayError> {
        self.inner.attempt(envelope, attempt).await
    }

    fn destination(&self, recipient: &str) -> Destination {
        self.inner.destination(recipient)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::relay::smtp::TlsMode;

    #[test]
    fn lmtp_relay_keeps_its_defaults_under_new_options() {
        for relay in [
            StaticLmtpRelay::new("127.0.0.1", 24),
            StaticLmtpRelay::unix("/run/dovecot/lmtp"),
        ] {
            let relay = relay.options(ClientOptions::new().ehlo_as("relay.test"));
            let session = relay.inner.session();
            assert_eq!(session.dialect, Dialect::Lmtp);
            assert_eq!(session.tls, TlsMode::Off);
            assert_eq!(session.ehlo_as, "relay.test");
            assert_eq!(relay.inner.defaults(), RelayDefaults::LMTP);
            assert!(
                relay
                    .client_options()
                    .resolved_tls_verify(RelayDefaults::LMTP)
            );
        }
    }
}
