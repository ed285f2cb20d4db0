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
//! - The client settings are a [`ClientOptions`] (shared with the MX and
//!   LMTP relays), resolved once when the relay takes them into the session
//!   settings every connection reads behind an `Arc`. Unset TLS settings
//!   mean STARTTLS when offered, certificate verified: a smart host is a
//!   known host.
//! - Sessions come from a pool (`pool.rs`): at most `pool_size` at once
//!   (default 20); with an `idle_timeout` (default zero: QUIT after every
//!   delivery) a session waits that long for the next message and is
//!   reused after a successful RSET. Clones of a relay share its pool.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;

use crate::envelope::Envelope;
use crate::relay::{Delivery, Destination, Relay, RelayError};
use crate::reply::Reply;

use super::ClientOptions;
use super::client_options::RelayDefaults;
use super::connection::{ConnectOptions, Connection, Dialect, SessionError};
use super::pool::Pool;

/// Delivers every envelope to one SMTP server.
#[derive(Clone, Debug)]
pub struct StaticSmtpRelay {
    host: String,
    port: u16,
    unix_path: Option<PathBuf>,
    /// What [`Relay::destination`] answers, made once (the queue asks for
    /// every message it takes).
    destination: Destination,
    #[cfg(feature = "mx")]
    resolver: Option<crate::dns::Resolver>,
    client: ClientOptions,
    defaults: RelayDefaults,
    session: Arc<ConnectOptions>,
    pool: Arc<Pool>,
}

impl StaticSmtpRelay {
    /// A relay to `host` (an IP address or a name) on `port`, with the
    /// default [`ClientOptions`].
    pub fn new(host: impl Into<String>, port: u16) -> Self {
        Self::with_defaults(host.into(), port, RelayDefaults::SMTP, Dialect::Smtp)
    }

    /// A relay with `defaults` for the options left unset, speaking
    /// `dialect` (the LMTP and MX relays are built this way).
    pub(crate) fn with_defaults(
        host: String,
        port: u16,
        defaults: RelayDefaults,
        dialect: Dialect,
    ) -> Self {
        let client = ClientOptions::new();
        Self {
            destination: server_key(&host, port),
            host,
            port,
            unix_path: None,
            #[cfg(feature = "mx")]
            resolver: None,
            session: Arc::new(ConnectOptions::resolve(&client, defaults, dialect)),
            pool: Arc::new(Pool::new(client.get_pool_size(), client.get_idle_timeout())),
            client,
            defaults,
        }
    }

    /// Uses these client settings (greeting name, timeouts, TLS, AUTH, pool,
    /// BDAT, source addresses) instead of the current ones. Unset TLS
    /// settings mean STARTTLS when offered, with the certificate verified.
    /// The relay gets a new, empty connection pool.
    pub fn options(mut self, options: ClientOptions) -> Self {
        self.session = Arc::new(ConnectOptions::resolve(
            &options,
            self.defaults,
            self.session.dialect,
        ));
        self.pool = Arc::new(Pool::new(
            options.get_pool_size(),
            options.get_idle_timeout(),
        ));
        self.client = options;
        self
    }

    /// The client settings in use.
    pub fn client_options(&self) -> &ClientOptions {
        &self.client
    }

    /// The session settings the options resolved to.
    #[cfg(test)]
    pub(crate) fn session(&self) -> &ConnectOptions {
        &self.session
    }

    /// What the relay assumes for the options left unset.
    #[cfg(test)]
    pub(crate) fn defaults(&self) -> RelayDefaults {
        self.defaults
    }

    /// Connects to a unix socket instead of host and port.
    pub(crate) fn unix_path(mut self, path: PathBuf) -> Self {
        self.destination = Destination::new(path.display().to_string());
        self.unix_path = Some(path);
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

    /// A relay with the same settings to another host, with its own pool
    /// (the MX relay's per-destination relays are made this way).
    #[cfg(feature = "mx")]
    pub(crate) fn with_host(&self, host: &str, port: u16) -> Self {
        Self {
            host: host.to_string(),
            port,
            destination: server_key(host, port),
            pool: Arc::new(Pool::new(
                self.client.get_pool_size(),
                self.client.get_idle_timeout(),
            )),
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
                Connection::open_unix(path, &self.session).await?
            }
            None => {
                let addrs = self.resolve().await.map_err(|error| SessionError {
                    error,
                    before_transaction: true,
                })?;
                let conn = Connection::open(&self.host, &addrs, &self.session).await?;
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

    /// One destination: the server (`host:port`, or the socket path).
    fn destination(&self, _recipient: &str) -> Destination {
        self.destination.clone()
    }
}

/// `host:port` (`[v6]:port` for a bare IPv6 address): the destination of a
/// relay to one server.
fn server_key(host: &str, port: u16) -> Destination {
    if host.contains(':') && !host.starts_with('[') {
        Destination::new(format!("[{host}]:{port}"))
    } else {
        Destination::new(format!("{host}:{port}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::relay::smtp::{Credentials, TlsMode};

    #[test]
    fn static_relay_resolves_unset_options_with_the_smtp_defaults() {
        let relay = StaticSmtpRelay::new("smarthost.test", 25);
        assert_eq!(relay.defaults, RelayDefaults::SMTP);
        assert_eq!(relay.session.tls, TlsMode::Opportunistic);
        assert_eq!(relay.session.dialect, Dialect::Smtp);
        assert!(!relay.session.ehlo_as.is_empty());

        let relay = relay.options(
            ClientOptions::new()
                .ehlo_as("relay.test")
                .credentials(Credentials::new("u", "s3cret"))
                .chunking(false),
        );
        assert_eq!(relay.defaults, RelayDefaults::SMTP);
        assert_eq!(relay.session.tls, TlsMode::Opportunistic);
        assert!(relay.client_options().resolved_tls_verify(relay.defaults));
        assert_eq!(relay.session.ehlo_as, "relay.test");
        assert_eq!(
            relay.session.credentials,
            Some(Credentials::new("u", "s3cret"))
        );
        assert!(!relay.session.chunking);

        let shown = format!("{relay:?}");
        assert!(!shown.contains("s3cret"), "{shown}");

        let relay = relay.options(ClientOptions::new().tls(TlsMode::Required));
        assert_eq!(relay.session.tls, TlsMode::Required);
        assert_eq!(relay.session.credentials, None);
    }
}
