//! [`ClientOptions`]: the settings of the SMTP/LMTP client, one type for
//! every SMTP-family relay ([`super::StaticSmtpRelay`], `MxSmtpRelay`,
//! [`crate::relay::lmtp::StaticLmtpRelay`]).
//!
//! Design decisions:
//! - One type, handed whole to a relay (`relay.options(options)`), instead of
//!   a copy of every setter on every relay: a knob added here reaches every
//!   relay, and an application turns its configuration into client settings
//!   in one place. The relay keeps only what is its own: the destination
//!   (host and port, MX resolver and forced routes, LMTP target).
//! - Private fields with builder setters and accessors, so new settings can
//!   be added without breaking anyone.
//! - Where relays differ by default, the option is an `Option` whose `None`
//!   means "the relay's default" ([`RelayDefaults`]): TLS mode
//!   (opportunistic for SMTP and MX, off for LMTP, which runs on the same
//!   machine or a trusted network) and certificate verification (on for the
//!   static SMTP and LMTP relays, off for MX, which is opportunistic by
//!   RFC 7435: see the MX relay's docs). The EHLO name defaults to the
//!   machine's host name, looked up when the relay takes the options.
//! - A relay resolves its options once (when it takes them) into the
//!   session settings its connections share behind an `Arc`; nothing is
//!   copied per attempt.
//! - `Debug` never shows the password ([`Credentials`]' own `Debug`).

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{Credentials, SourceSelection, TlsMode};

/// The most sessions open to one destination, by default.
const DEFAULT_POOL_SIZE: usize = 20;

/// Settings of the SMTP/LMTP client of a relay: greeting name, timeouts,
/// TLS, AUTH, the connection pool, BDAT and source addresses.
///
/// Build it with the setters and give it to a relay:
///
/// ```
/// use std::time::Duration;
/// use slimta::relay::smtp::{ClientOptions, StaticSmtpRelay};
///
/// let options = ClientOptions::new()
///     .ehlo_as("mail.example.com")
///     .command_timeout(Duration::from_secs(60))
///     .idle_timeout(Duration::from_secs(10));
/// let relay = StaticSmtpRelay::new("smarthost.example.com", 25).options(options);
/// ```
///
/// Every setting applies to every relay, with these exceptions:
/// - The MX relay never authenticates: it ignores
///   [`ClientOptions::credentials`] (and so `allow_plaintext_auth`), because
///   the exchangers are arbitrary hosts named by the DNS and the password
///   would go to each of them.
/// - Over a unix socket (LMTP) there is no TLS and no source address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientOptions {
    ehlo_as: Option<String>,
    connect_timeout: Duration,
    command_timeout: Duration,
    tls: Option<TlsMode>,
    tls_verify: Option<bool>,
    tls_ca_file: Option<PathBuf>,
    credentials: Option<Credentials>,
    allow_plaintext_auth: bool,
    pool_size: usize,
    idle_timeout: Duration,
    chunking: bool,
    source_addresses: Vec<IpAddr>,
    source_selection: SourceSelection,
}

impl Default for ClientOptions {
    fn default() -> Self {
        Self::new()
    }
}

impl ClientOptions {
    /// The defaults: the machine's host name, 30 s to connect, 5 minutes per
    /// reply (RFC 5321 4.5.3.2, loosely), the relay's TLS mode and
    /// verification, no AUTH, 20 sessions, no idle reuse, BDAT when offered,
    /// source address chosen by the system.
    pub fn new() -> Self {
        Self {
            ehlo_as: None,
            connect_timeout: Duration::from_secs(30),
            command_timeout: Duration::from_secs(300),
            tls: None,
            tls_verify: None,
            tls_ca_file: None,
            credentials: None,
            allow_plaintext_auth: false,
            pool_size: DEFAULT_POOL_SIZE,
            idle_timeout: Duration::ZERO,
            chunking: true,
            source_addresses: Vec::new(),
            source_selection: SourceSelection::RoundRobin,
        }
    }

    /// The name to send with EHLO/HELO, or LHLO (default: this machine's host
    /// name, `localhost` when it has none).
    pub fn ehlo_as(mut self, name: impl Into<String>) -> Self {
        self.ehlo_as = Some(name.into());
        self
    }

    /// How long to wait for each connection (default 30 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// How long to wait for each reply and each write, the TLS handshake
    /// included (default 5 minutes).
    pub fn command_timeout(mut self, timeout: Duration) -> Self {
        self.command_timeout = timeout;
        self
    }

    /// When to use TLS (default: the relay's, [`TlsMode::Opportunistic`] for
    /// the SMTP and MX relays, [`TlsMode::Off`] for LMTP). Never used on a
    /// unix socket.
    pub fn tls(mut self, mode: TlsMode) -> Self {
        self.tls = Some(mode);
        self
    }

    /// Whether the server's certificate must be valid for the host name and
    /// signed by a trusted CA (default: the relay's, true for the static SMTP
    /// and LMTP relays, false for MX). `false` still encrypts but accepts any
    /// certificate: anyone on the path can then read and change the mail by
    /// presenting their own, and AUTH credentials go to them. Use it only for
    /// a host you reach over a network you trust.
    pub fn tls_verify(mut self, verify: bool) -> Self {
        self.tls_verify = Some(verify);
        self
    }

    /// Trust only the CA certificates in this PEM file instead of the
    /// system's store (a private CA; tests). Used only when certificates are
    /// verified.
    pub fn tls_ca_file(mut self, file: impl Into<PathBuf>) -> Self {
        self.tls_ca_file = Some(file.into());
        self
    }

    /// AUTH with these credentials after EHLO (and after STARTTLS). Ignored
    /// by the MX relay (see the type's docs).
    pub fn credentials(mut self, credentials: Credentials) -> Self {
        self.credentials = Some(credentials);
        self
    }

    /// Allow AUTH PLAIN and LOGIN, which reveal the password, on a session
    /// without TLS (default false: only CRAM-MD5 is used then).
    pub fn allow_plaintext_auth(mut self, allow: bool) -> Self {
        self.allow_plaintext_auth = allow;
        self
    }

    /// The most sessions open to one destination at once, busy and idle
    /// together (default 20, Postfix's
    /// `default_destination_concurrency_limit`). Deliveries beyond it wait
    /// for a session. Values below 1 count as 1. For the MX relay the limit
    /// is per exchanger.
    pub fn pool_size(mut self, size: usize) -> Self {
        self.pool_size = size;
        self
    }

    /// How long a session may wait idle for the next message before it is
    /// closed (default zero: QUIT right after each delivery).
    pub fn idle_timeout(mut self, timeout: Duration) -> Self {
        self.idle_timeout = timeout;
        self
    }

    /// Send messages with BDAT when the server offers CHUNKING (default
    /// true); `false` always uses DATA, for a server whose CHUNKING is
    /// broken.
    pub fn chunking(mut self, enabled: bool) -> Self {
        self.chunking = enabled;
        self
    }

    /// The local address to connect from (default: chosen by the system).
    /// The same as [`ClientOptions::source_addresses`] with one address.
    pub fn source_address(self, ip: IpAddr) -> Self {
        self.source_addresses([ip])
    }

    /// Local addresses to connect from: each connection binds one of those
    /// of the destination's family (IPv4 or IPv6), chosen as
    /// [`ClientOptions::source_selection`] says. With none of that family
    /// the system chooses.
    pub fn source_addresses(mut self, ips: impl IntoIterator<Item = IpAddr>) -> Self {
        self.source_addresses = ips.into_iter().collect();
        self
    }

    /// How the source address of each connection is picked (default round
    /// robin).
    pub fn source_selection(mut self, selection: SourceSelection) -> Self {
        self.source_selection = selection;
        self
    }

    /// The EHLO/LHLO name, `None` for the machine's host name.
    pub fn get_ehlo_as(&self) -> Option<&str> {
        self.ehlo_as.as_deref()
    }

    /// How long to wait for each connection.
    pub fn get_connect_timeout(&self) -> Duration {
        self.connect_timeout
    }

    /// How long to wait for each reply and each write.
    pub fn get_command_timeout(&self) -> Duration {
        self.command_timeout
    }

    /// The TLS mode, `None` for the relay's default.
    pub fn get_tls(&self) -> Option<TlsMode> {
        self.tls
    }

    /// Whether certificates are verified, `None` for the relay's default.
    pub fn get_tls_verify(&self) -> Option<bool> {
        self.tls_verify
    }

    /// The PEM file of trusted CAs, `None` for the system's store.
    pub fn get_tls_ca_file(&self) -> Option<&Path> {
        self.tls_ca_file.as_deref()
    }

    /// The AUTH credentials, if any.
    pub fn get_credentials(&self) -> Option<&Credentials> {
        self.credentials.as_ref()
    }

    /// Whether PLAIN and LOGIN may be used without TLS.
    pub fn get_allow_plaintext_auth(&self) -> bool {
        self.allow_plaintext_auth
    }

    /// The most sessions open to one destination at once, as set (the pool
    /// counts values below 1 as 1).
    pub fn get_pool_size(&self) -> usize {
        self.pool_size
    }

    /// How long a session may wait idle for the next message.
    pub fn get_idle_timeout(&self) -> Duration {
        self.idle_timeout
    }

    /// Whether BDAT is used when offered.
    pub fn get_chunking(&self) -> bool {
        self.chunking
    }

    /// The local addresses to connect from.
    pub fn get_source_addresses(&self) -> &[IpAddr] {
        &self.source_addresses
    }

    /// How the source address of each connection is picked.
    pub fn get_source_selection(&self) -> SourceSelection {
        self.source_selection
    }

    /// The same options without AUTH (the MX relay's).
    #[cfg_attr(not(feature = "mx"), allow(dead_code, reason = "the MX relay's"))]
    pub(crate) fn without_credentials(mut self) -> Self {
        self.credentials = None;
        self
    }
}

/// What a relay assumes for the options left unset.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct RelayDefaults {
    /// The TLS mode without [`ClientOptions::tls`].
    pub(crate) tls: TlsMode,
    /// Certificate verification without [`ClientOptions::tls_verify`].
    pub(crate) tls_verify: bool,
}

impl RelayDefaults {
    /// The static SMTP relay: STARTTLS when offered, verified (a smart host
    /// is a known host).
    pub(crate) const SMTP: Self = Self {
        tls: TlsMode::Opportunistic,
        tls_verify: true,
    };
    /// The MX relay: STARTTLS when offered, unverified (RFC 7435).
    #[cfg_attr(not(feature = "mx"), allow(dead_code, reason = "the MX relay's"))]
    pub(crate) const MX: Self = Self {
        tls: TlsMode::Opportunistic,
        tls_verify: false,
    };
    /// The LMTP relay: no TLS unless asked (a local or trusted server),
    /// verified when asked.
    pub(crate) const LMTP: Self = Self {
        tls: TlsMode::Off,
        tls_verify: true,
    };
}

impl ClientOptions {
    /// The EHLO name to use: the configured one or the machine's host name.
    pub(crate) fn resolved_ehlo_as(&self) -> String {
        if let Some(name) = &self.ehlo_as {
            return name.clone();
        }
        let name = gethostname::gethostname().to_string_lossy().into_owned();
        if name.is_empty() {
            "localhost".into()
        } else {
            name
        }
    }

    /// The TLS mode to use with `defaults`.
    pub(crate) fn resolved_tls(&self, defaults: RelayDefaults) -> TlsMode {
        self.tls.unwrap_or(defaults.tls)
    }

    /// Whether to verify certificates with `defaults`.
    #[cfg_attr(not(feature = "tls"), allow(dead_code, reason = "read by TLS"))]
    pub(crate) fn resolved_tls_verify(&self, defaults: RelayDefaults) -> bool {
        self.tls_verify.unwrap_or(defaults.tls_verify)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_leave_relay_specific_settings_to_the_relay() {
        let options = ClientOptions::default();
        assert_eq!(options, ClientOptions::new());
        assert_eq!(options.get_ehlo_as(), None);
        assert_eq!(options.get_connect_timeout(), Duration::from_secs(30));
        assert_eq!(options.get_command_timeout(), Duration::from_secs(300));
        assert_eq!(options.get_tls(), None);
        assert_eq!(options.get_tls_verify(), None);
        assert_eq!(options.get_tls_ca_file(), None);
        assert_eq!(options.get_credentials(), None);
        assert!(!options.get_allow_plaintext_auth());
        assert_eq!(options.get_pool_size(), 20);
        assert_eq!(options.get_idle_timeout(), Duration::ZERO);
        assert!(options.get_chunking());
        assert!(options.get_source_addresses().is_empty());
        assert_eq!(options.get_source_selection(), SourceSelection::RoundRobin);

        assert_eq!(
            options.resolved_tls(RelayDefaults::SMTP),
            TlsMode::Opportunistic
        );
        assert!(options.resolved_tls_verify(RelayDefaults::SMTP));
        assert_eq!(
            options.resolved_tls(RelayDefaults::MX),
            TlsMode::Opportunistic
        );
        assert!(!options.resolved_tls_verify(RelayDefaults::MX));
        assert_eq!(options.resolved_tls(RelayDefaults::LMTP), TlsMode::Off);
        assert!(options.resolved_tls_verify(RelayDefaults::LMTP));
        assert!(!options.resolved_ehlo_as().is_empty());
    }

    #[test]
    fn set_values_override_every_relay_default() {
        let ip: IpAddr = "192.0.2.7".parse().unwrap();
        let options = ClientOptions::new()
            .ehlo_as("relay.test")
            .connect_timeout(Duration::from_secs(1))
            .command_timeout(Duration::from_secs(2))
            .tls(TlsMode::Required)
            .tls_verify(false)
            .tls_ca_file("/ca.pem")
            .credentials(Credentials::new("u", "p"))
            .allow_plaintext_auth(true)
            .pool_size(3)
            .idle_timeout(Duration::from_secs(4))
            .chunking(false)
            .source_address(ip)
            .source_selection(SourceSelection::Random);
        assert_eq!(options.get_ehlo_as(), Some("relay.test"));
        assert_eq!(options.resolved_ehlo_as(), "relay.test");
        assert_eq!(options.get_connect_timeout(), Duration::from_secs(1));
        assert_eq!(options.get_command_timeout(), Duration::from_secs(2));
        assert_eq!(options.get_tls_ca_file(), Some(Path::new("/ca.pem")));
        assert_eq!(options.get_credentials(), Some(&Credentials::new("u", "p")));
        assert!(options.get_allow_plaintext_auth());
        assert_eq!(options.get_pool_size(), 3);
        assert_eq!(options.get_idle_timeout(), Duration::from_secs(4));
        assert!(!options.get_chunking());
        assert_eq!(options.get_source_addresses(), [ip]);
        assert_eq!(options.get_source_selection(), SourceSelection::Random);
        for defaults in [RelayDefaults::SMTP, RelayDefaults::MX, RelayDefaults::LMTP] {
            assert_eq!(options.resolved_tls(defaults), TlsMode::Required);
            assert!(!options.resolved_tls_verify(defaults));
        }
        assert!(
            ClientOptions::new()
                .tls_verify(true)
                .resolved_tls_verify(RelayDefaults::MX)
        );
        assert_eq!(options.without_credentials().get_credentials(), None);
    }

    #[test]
    fn debug_never_shows_the_password() {
        let options =
            ClientOptions::new().credentials(Credentials::new("relayuser", "s3cret pass"));
        let shown = format!("{options:?} {options:#?}");
        assert!(shown.contains("relayuser"), "{shown}");
        assert!(!shown.contains("s3cret"), "{shown}");
    }
}
