//! [`StaticSmtpRelay`]: every message to one SMTP server.
//!
//! This is the smarthost relay (Postfix's `relayhost`): whatever the
//! recipients' domains, the envelope goes to one host and port in one
//! transaction.
//!
//! Design decisions:
//! - The result is always per recipient, in the envelope's recipient order,
//!   because a server may refuse some recipients with RCPT and accept the
//!   others: the queue must record the delivered ones, retry the 4xx ones and
//!   bounce the 5xx ones, by index ([`Delivery::result_for`]).
//! - The host may be an IP address or a name; a name is resolved on every
//!   attempt (with the configured [`crate::dns::Resolver`] when one is set,
//!   else tokio's `lookup_host`, i.e. the system resolver), each address
//!   tried in turn until one accepts the connection.
//! - Defaults follow RFC 5321 4.5.3.2 loosely: 30 s to connect, 5 minutes per
//!   reply; the EHLO name is the machine's host name.
//! - Sessions come from a pool (`pool.rs`): at most `pool_size` at once
//!   (default 20); with an `idle_timeout` (default zero: QUIT after every
//!   delivery) a session waits that long for the next message and is
//!   reused after a successful RSET. Clones of a relay share its pool.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::envelope::Envelope;
use crate::relay::{Delivery, Relay, RelayError};
use crate::reply::Reply;

use super::connection::{ConnectOptions, Connection, Dialect, SessionError};
use super::pool::Pool;
use super::source::SourceAddresses;
use super::{Credentials, SourceSelection, TlsMode};

/// Delivers every envelope to one SMTP server.
#[derive(Clone, Debug)]
pub struct StaticSmtpRelay {
    host: String,
    port: u16,
    unix_path: Option<PathBuf>,
    pub(crate) options: ConnectOptions,
    #[cfg(feature = "mx")]
    resolver: Option<crate::dns::Resolver>,
    pool_size: usize,
    idle_timeout: Duration,
    pool: Arc<Pool>,
}

const DEFAULT_POOL_SIZE: usize = 20;

impl StaticSmtpRelay {
    /// A relay to `host` (an IP address or a name) on `port`.
    pub fn new(host: impl Into<String>, port: u16) -> Self {
        let ehlo_as = gethostname::gethostname().to_string_lossy().into_owned();
        Self {
            host: host.into(),
            port,
            unix_path: None,
            options: ConnectOptions::new(if ehlo_as.is_empty() {
                "localhost".into()
            } else {
                ehlo_as
            }),
            #[cfg(feature = "mx")]
            resolver: None,
            pool_size: DEFAULT_POOL_SIZE,
            idle_timeout: Duration::ZERO,
            pool: Arc::new(Pool::new(DEFAULT_POOL_SIZE, Duration::ZERO)),
        }
    }

    /// The most sessions open to the host at once, busy and idle together
    /// (default 20, Postfix's `default_destination_concurrency_limit`).
    /// Deliveries beyond it wait for a session. Values below 1 count as 1.
    pub fn pool_size(mut self, size: usize) -> Self {
        self.pool_size = size;
        self.pool = Arc::new(Pool::new(size, self.idle_timeout));
        self
    }

    /// How long a session may wait idle for the next message before it is
    /// closed (default zero: QUIT right after each delivery).
    pub fn idle_timeout(mut self, timeout: Duration) -> Self {
        self.idle_timeout = timeout;
        self.pool = Arc::new(Pool::new(self.pool_size, timeout));
        self
    }

    /// The name to send with EHLO/HELO (default: this machine's host name).
    pub fn ehlo_as(mut self, name: impl Into<String>) -> Self {
        self.options.ehlo_as = name.into();
        self
    }

    /// How long to wait for the TCP connection (default 30 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.options.connect_timeout = timeout;
        self
    }

    /// How long to wait for each reply and each write (default 5 minutes).
    pub fn command_timeout(mut self, timeout: Duration) -> Self {
        self.options.command_timeout = timeout;
        self
    }

    /// The local address to connect from (default: chosen by the system).
    /// The same as [`StaticSmtpRelay::source_addresses`] with one address.
    pub fn source_address(self, ip: IpAddr) -> Self {
        self.source_addresses([ip])
    }

    /// Local addresses to connect from: each connection binds one of those
    /// of the destination's family (IPv4 or IPv6), chosen as
    /// [`StaticSmtpRelay::source_selection`] says (default round robin).
    /// With none of that family the system chooses.
    pub fn source_addresses(mut self, ips: impl IntoIterator<Item = IpAddr>) -> Self {
        let selection = self.options.source_addresses.selection();
        self.options.source_addresses = SourceAddresses::new(ips.into_iter().collect(), selection);
        self
    }

    /// How the source address of each connection is picked (default round
    /// robin).
    pub fn source_selection(mut self, selection: SourceSelection) -> Self {
        let ips = self.options.source_addresses.ips().to_vec();
        self.options.source_addresses = SourceAddresses::new(ips, selection);
        self
    }

    /// The same relay speaking LMTP (the LMTP relay is built this way).
    pub(crate) fn lmtp(mut self) -> Self {
        self.options.dialect = Dialect::Lmtp;
        self
    }

    /// Connects to a unix socket instead of host and port.
    pub(crate) fn unix_path(mut self, path: PathBuf) -> Self {
        self.unix_path = Some(path);
        self
    }

    /// When to use TLS (default [`TlsMode::Opportunistic`]: STARTTLS when
    /// offered).
    pub fn tls(mut self, mode: TlsMode) -> Self {
        self.options.tls = mode;
        self
    }

    /// Whether the server's certificate must be valid for the host name and
    /// signed by a trusted CA (default true). `false` still encrypts but
    /// accepts any certificate: anyone on the path can then read and change
    /// the mail by presenting their own, and AUTH credentials go to them.
    /// Use it only for a host you reach over a network you trust.
    pub fn tls_verify(mut self, verify: bool) -> Self {
        self.options.tls_verify = verify;
        self.rebuild_tls();
        self
    }

    /// Trust only the CA certificates in this PEM file instead of the
    /// system's store (a private CA; tests).
    pub fn tls_ca_file(mut self, file: impl Into<PathBuf>) -> Self {
        self.options.tls_ca_file = Some(file.into());
        self.rebuild_tls();
        self
    }

    fn rebuild_tls(&mut self) {
        #[cfg(feature = "tls")]
        {
            self.options.tls_client = Arc::new(super::tls::TlsClient::new(
                self.options.tls_verify,
                self.options.tls_ca_file.clone(),
            ));
        }
    }

    /// AUTH with these credentials after EHLO (and after STARTTLS).
    pub fn credentials(mut self, credentials: Credentials) -> Self {
        self.options.credentials = Some(credentials);
        self
    }

    /// Allow AUTH PLAIN and LOGIN, which reveal the password, on a session
    /// without TLS (default false: only CRAM-MD5 is used then).
    pub fn allow_plaintext_auth(mut self, allow: bool) -> Self {
        self.options.allow_plaintext_auth = allow;
        self
    }

    /// Send messages with BDAT when the server offers CHUNKING (default
    /// true); `false` always uses DATA, for a server whose CHUNKING is
    /// broken.
    pub fn chunking(mut self, enabled: bool) -> Self {
        self.options.chunking = enabled;
        self
    }

    /// Resolve the host name with this resolver instead of the system's
    /// (the MX relay passes its own, so one configured resolver answers every
    /// lookup).
    #[cfg(feature = "mx")]
    pub fn resolver(mut self, resolver: crate::dns::Resolver) -> Self {
        self.resolver = Some(resolver);
        self
    }

    /// A relay with the same settings to another host (the MX relay's
    /// per-destination relays are made this way).
    #[cfg(feature = "mx")]
    pub(crate) fn with_host(&self, host: &str, port: u16) -> Self {
        Self {
            host: host.to_string(),
            port,
            pool: Arc::new(Pool::new(self.pool_size, self.idle_timeout)),
            ..self.clone()
        }
    }

    async fn resolve(&self) -> Result<Vec<SocketAddr>, RelayError> {
        let host = self.host.trim_start_matches('[').trim_end_matches(']');
        if let Ok(ip) = host.parse::<IpAddr>() {
            return Ok(vec![SocketAddr::new(ip, self.port)]);
        }
        let cannot = |why: String| {
            RelayError::transient(Reply::new(
                451,
                "4.4.3",
                format!("Cannot resolve {}: {why}", self.host),
            ))
        };
        #[cfg(feature = "mx")]
        if let Some(resolver) = &self.resolver {
            let ips = resolver
                .ips(host)
                .await
                .map_err(|e| cannot(e.to_string()))?;
            return Ok(ips
                .into_iter()
                .map(|ip| SocketAddr::new(ip, self.port))
                .collect());
        }
        match tokio::net::lookup_host((host, self.port)).await {
            Ok(addrs) => {
                let addrs: Vec<SocketAddr> = addrs.collect();
                if addrs.is_empty() {
                    Err(cannot("no address".into()))
                } else {
                    Ok(addrs)
                }
            }
            Err(e) => Err(cannot(e.to_string())),
        }
    }

    /// One attempt, telling the caller whether it failed before the
    /// transaction started (the MX relay then tries the next host).
    pub(crate) async fn deliver(&self, envelope: &Envelope) -> Result<Delivery, SessionError> {
        let _permit = self.pool.permit().await;
        let mut conn = match self.pool.take_idle().await {
            Some(conn) => conn,
            None if self.unix_path.is_some() => {
                let path = self.unix_path.as_deref().expect("checked");
                Connection::open_unix(path, &self.options).await?
            }
            None => {
                let addrs = self.resolve().await.map_err(|error| SessionError {
                    error,
                    before_transaction: true,
                })?;
                let conn = Connection::open(&self.host, &addrs, &self.options).await?;
                tracing::debug!(peer = conn.peer(), extensions = ?conn.extensions(), "SMTP session open");
                conn
            }
        };
        let result = conn.deliver(envelope).await;
        self.pool.release(conn).await;
        result
    }
}

impl Relay for StaticSmtpRelay {
    async fn attempt(&self, envelope: &Envelope, _attempt: u32) -> Result<Delivery, RelayError> {
        self.deliver(envelope).await.map_err(RelayError::from)
    }
}
