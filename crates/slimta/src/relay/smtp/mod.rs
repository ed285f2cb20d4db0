//! SMTP relays: delivery to another SMTP server.
//!
//! - [`StaticSmtpRelay`] sends everything to one configured host (a smarthost
//!   or the next hop of a gateway).
//! - `MxSmtpRelay` (feature `mx`) sends each recipient domain to its mail
//!   exchangers, found in the DNS.
//! - [`crate::relay::lmtp::StaticLmtpRelay`] is the static relay in the
//!   session driver's LMTP dialect.
//!
//! All three take their client settings as one [`ClientOptions`]
//! (`client_options.rs`), each with its own defaults for what is left unset.
//!
//! All three speak through `connection.rs`, the tokio driver of one SMTP client
//! session, which in turn uses the sans-IO client pieces in
//! [`crate::smtp::client`] (reply parsing, EHLO extensions, the smuggling-safe
//! DATA encoder). Keeping the session driver separate from the relays means
//! the MX relay, the static relay and the connection pool share one
//! implementation of the protocol rules and of the error texts.

pub(crate) mod client_options;
pub(crate) mod connection;
#[cfg(feature = "mx")]
mod mx;
mod pool;
mod source;
mod static_relay;
mod stream;
#[cfg(feature = "tls")]
mod tls;

pub use client_options::ClientOptions;
#[cfg(feature = "mx")]
pub use mx::MxSmtpRelay;
pub use source::SourceSelection;
pub use static_relay::StaticSmtpRelay;

use std::fmt;

/// When a client session uses TLS.
///
/// Without the `tls` feature only [`TlsMode::Off`] and
/// [`TlsMode::Opportunistic`] (which then never starts TLS) deliver;
/// [`TlsMode::Required`] and [`TlsMode::Immediate`] fail transiently.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum TlsMode {
    /// Never TLS, even when the server offers STARTTLS.
    Off,
    /// STARTTLS when the server offers it, plaintext otherwise (RFC 7435).
    /// A failed handshake fails the attempt (transiently).
    #[default]
    Opportunistic,
    /// STARTTLS or nothing: a server that does not offer it fails the
    /// attempt with a transient `451 4.7.4`.
    Required,
    /// TLS from the first byte (port 465, RFC 8314), no STARTTLS.
    Immediate,
}

/// A user name and password for AUTH to a smart host. `Debug` does not show
/// the password.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// The authentication identity.
    pub username: String,
    /// The password.
    pub password: String,
}

impl Credentials {
    /// Credentials from a user name and a password.
    pub fn new(username: impl Into<String>, password: impl Into<String>) -> Self {
        Self {
            username: username.into(),
            password: password.into(),
        }
    }
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &"<hidden>")
            .finish()
    }
}
