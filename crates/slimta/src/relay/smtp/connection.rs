//! One outbound SMTP connection: the tokio driver around the sans-IO pieces
//! in [`crate::smtp::client`].
//!
//! A [`Connection`] connects, reads the banner, says EHLO (HELO when EHLO is
//! refused with 5xx) and then runs transactions: MAIL, RCPT per recipient,
//! DATA, the message, the final reply. With PIPELINING the MAIL, RCPT and DATA
//! commands go out in one write (RFC 2920); without it, or with more than
//! [`PIPELINE_MAX_RCPTS`] recipients, in lockstep.
//!
//! Design decisions:
//! - Every failure is a [`RelayError`] whose reply names the stage and the
//!   peer, so a bounce or a log line says what happened where:
//!   `451 4.4.1 Connection to host:port failed: ...`,
//!   `451 4.4.2 Timed out waiting for RCPT TO reply from host:port`,
//!   `550 5.1.1 host:port said: No such user (in reply to RCPT TO)`.
//! - Remote 5xx replies are permanent and 4xx transient, keeping the remote
//!   code and enhanced code (a missing enhanced code becomes `X.0.0`). A 2xx
//!   or 3xx where it makes no sense, an unparsable reply, a timeout or a lost
//!   connection is transient: anything unexpected must not bounce mail.
//! - A failure before the transaction (connect, banner, EHLO, MAIL) fails the
//!   whole attempt. Once recipients have their own RCPT replies the result is
//!   per recipient: a recipient refused with 5xx stays permanent even if the
//!   connection is lost later, the accepted ones share the fate of DATA.
//! - A timeout or lost connection after the message was sent, before the
//!   final reply, is transient: the message may then be delivered twice,
//!   which RFC 1047 accepts as the lesser evil over losing it.
//! - A connection that saw a 421, an I/O error, a timeout or a malformed reply
//!   is marked broken and never reused.
//! - One timeout (`command_timeout`) bounds each read of a reply and each
//!   write, including the write of the message. QUIT waits at most
//!   [`QUIT_TIMEOUT`] for its reply: the mail is already delivered then.
//! - `BODY=8BITMIME` is declared when the envelope is 8-bit (or binary,
//!   which the DATA encoder has made line-based) and the server offers it.
//!   When it does not, the message is sent anyway, undeclared, as Postfix
//!   does by default: bouncing or downgrading it would be worse for nearly
//!   every real server.
//! - `SMTPUTF8` is declared when the envelope asks for it and the server
//!   offers it. If the server does not and an address is not ASCII, the
//!   attempt fails with a permanent `553 5.6.7` (RFC 6531 3.2); with ASCII
//!   addresses the message is sent without it.
//! - Addresses holding control characters are never written (they would
//!   inject commands): a bad sender fails the attempt with `501 5.1.7`, a
//!   bad recipient gets `501 5.1.3` and the others are still delivered.
//! - A message larger than the server's advertised SIZE fails permanently
//!   with `552 5.3.4` before MAIL FROM is sent.
//! - CHUNKING (RFC 3030): when the server offers it (and the relay's
//!   `chunking` setting, on by default, allows it) the message goes as one
//!   `BDAT <size> LAST` chunk instead of DATA: no dot-stuffing, and the
//!   server counts bytes instead of scanning for the terminator. The line
//!   ends are normalised as for DATA (`smtp::client::encode_bdat_last`).
//!   With PIPELINING, MAIL and RCPT go in one write and BDAT with the chunk
//!   follows their replies (never pipelined behind them: a chunk sent after
//!   refused recipients would only be read and thrown away), so a
//!   transaction takes the same two round trips as a pipelined DATA. For
//!   LMTP the per-recipient replies follow the chunk as they follow DATA.
//! - One driver, two dialects: LMTP (RFC 2033) greets with LHLO (no HELO
//!   fallback) and reads one reply per accepted recipient after the data;
//!   everything else is shared with SMTP. The stream may be TCP, a unix
//!   socket or TLS (`stream.rs`).
//! - TLS (feature `tls`, settings from the relay): `Immediate` handshakes
//!   before the banner; `Opportunistic` sends STARTTLS when offered and
//!   stays in plaintext when it is refused; `Required` fails with a
//!   transient `451 4.7.4` when STARTTLS is not offered or refused. A failed
//!   handshake is a transient `451 4.7.5`. After STARTTLS the client says
//!   EHLO again and forgets the old extensions (RFC 3207 4.2). Bytes the
//!   server sent after its `220` to STARTTLS, before the handshake, fail
//!   the session (`451 4.7.0`, CVE-2011-0411): they were not protected, and
//!   reading them as replies inside TLS is exactly the injection attack.
//! - AUTH (when the relay has credentials) follows TLS: the strongest
//!   offered of CRAM-MD5, PLAIN, LOGIN; PLAIN and LOGIN only over TLS
//!   unless `allow_plaintext_auth`. No usable mechanism is a transient
//!   `451 4.7.0` that says why. `535` is permanent (`5.7.8` unless the
//!   server gave another code): retrying the same password cannot help, and
//!   the operator learns at once. `454` and other 4xx are transient. The
//!   error text names the mechanism and says `(in reply to AUTH)`.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use std::path::Path;
#[cfg(feature = "tls")]
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream, UnixStream};
use tokio::time::timeout;

use super::client_options::{ClientOptions, RelayDefaults};
use super::source::SourceAddresses;
use super::stream::{Quiet, Stream};
#[cfg(feature = "tls")]
use super::tls::TlsClient;
use super::{Credentials, TlsMode};

use crate::envelope::{BodyType, Envelope};
use crate::relay::{Delivery, RelayError};
use crate::reply::{EnhancedCode, Reply};
use crate::smtp::client::{
    AuthMechanism, Extensions, MailFromParams, ReplyError, auth_plain_response,
    choose_auth_mechanism, cram_md5_response, encode_bdat_last, encode_data, mail_from,
    parse_reply, rcpt_to, sasl_base64,
};

/// The most RCPT commands sent in one pipelined write. The replies to a
/// larger batch could fill the socket buffers in both directions while the
/// client is still writing (RFC 2920 3.1 warns of that deadlock); larger
/// envelopes go in lockstep.
pub(crate) const PIPELINE_MAX_RCPTS: usize = 100;

/// The longest wait for the reply to QUIT.
pub(crate) const QUIT_TIMEOUT: Duration = Duration::from_secs(10);

/// Where in the session a reply was expected or a write happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Stage {
    Banner,
    Ehlo,
    Lhlo,
    Helo,
    StartTls,
    TlsHandshake,
    Auth,
    Mail,
    Rcpt,
    Data,
    Message,
    EndOfData,
    Bdat,
    Rset,
    Quit,
}

impl Stage {
    fn name(self) -> &'static str {
        match self {
            Stage::Banner => "banner",
            Stage::Ehlo => "EHLO",
            Stage::Lhlo => "LHLO",
            Stage::Helo => "HELO",
            Stage::StartTls => "STARTTLS",
            Stage::TlsHandshake => "TLS handshake",
            Stage::Auth => "AUTH",
            Stage::Mail => "MAIL FROM",
            Stage::Rcpt => "RCPT TO",
            Stage::Data => "DATA",
            Stage::Message => "message data",
            Stage::EndOfData => "end of data",
            Stage::Bdat => "BDAT",
            Stage::Rset => "RSET",
            Stage::Quit => "QUIT",
        }
    }
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// SMTP (RFC 5321) or LMTP (RFC 2033).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Dialect {
    Smtp,
    Lmtp,
}

/// How to open a connection.
#[derive(Clone, Debug)]
pub(crate) struct ConnectOptions {
    pub(crate) dialect: Dialect,
    pub(crate) ehlo_as: String,
    pub(crate) connect_timeout: Duration,
    pub(crate) command_timeout: Duration,
    pub(crate) source_addresses: SourceAddresses,
    pub(crate) tls: TlsMode,
    #[cfg(feature = "tls")]
    pub(crate) tls_client: Arc<TlsClient>,
    pub(crate) credentials: Option<Credentials>,
    pub(crate) allow_plaintext_auth: bool,
    /// Use BDAT when the server offers CHUNKING.
    pub(crate) chunking: bool,
}

impl ConnectOptions {
    /// The session settings of a relay speaking `dialect`: `client` with
    /// the options it leaves unset taken from `defaults`.
    pub(crate) fn resolve(
        client: &ClientOptions,
        defaults: RelayDefaults,
        dialect: Dialect,
    ) -> Self {
        Self {
            dialect,
            ehlo_as: client.resolved_ehlo_as(),
            connect_timeout: client.get_connect_timeout(),
            command_timeout: client.get_command_timeout(),
            source_addresses: SourceAddresses::new(
                client.get_source_addresses().to_vec(),
                client.get_source_selection(),
            ),
            tls: client.resolved_tls(defaults),
            #[cfg(feature = "tls")]
            tls_client: Arc::new(TlsClient::new(
                client.resolved_tls_verify(defaults),
                client.get_tls_ca_file().map(Path::to_path_buf),
            )),
            credentials: client.get_credentials().cloned(),
            allow_plaintext_auth: client.get_allow_plaintext_auth(),
            chunking: client.get_chunking(),
        }
    }
}

/// A failed whole attempt, with whether it failed before the server
/// answered MAIL FROM (the MX relay tries the next host only then: a
/// connection, banner or EHLO problem is the host's, not the message's).
#[derive(Debug)]
pub(crate) struct SessionError {
    pub(crate) error: RelayError,
    #[cfg_attr(not(feature = "mx"), allow(dead_code, reason = "read by the MX relay"))]
    pub(crate) before_transaction: bool,
}

impl From<SessionError> for RelayError {
    fn from(e: SessionError) -> Self {
        e.error
    }
}

/// One SMTP session with a server, after the banner and EHLO.
#[derive(Debug)]
pub(crate) struct Connection {
    stream: Stream,
    dialect: Dialect,
    buf: Vec<u8>,
    peer: String,
    command_timeout: Duration,
    extensions: Extensions,
    broken: bool,
}

fn connect_failed(peer: &str, err: impl fmt::Display) -> RelayError {
    RelayError::unreachable(Reply::new(
        451,
        "4.4.1",
        format!("Connection to {peer} failed: {err}"),
    ))
}

async fn connect_one(addr: SocketAddr, options: &ConnectOptions) -> std::io::Result<TcpStream> {
    let socket = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    if let Some(ip) = options.source_addresses.pick(&addr) {
        socket.bind(SocketAddr::new(ip, 0))?;
    }
    match timeout(options.connect_timeout, socket.connect(addr)).await {
        Ok(result) => result,
        Err(_) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "connect timed out",
        )),
    }
}

impl Connection {
    /// Connects to the first of `addrs` that accepts, reads the banner and
    /// says EHLO. `host` (a name or an IP address) names the destination in
    /// error texts: `host:port` before the connection, `host[ip]:port` (or
    /// `ip:port`) once it is known which address answered.
    pub(crate) async fn open(
        host: &str,
        addrs: &[SocketAddr],
        options: &ConnectOptions,
    ) -> Result<Self, SessionError> {
        let early = |error| SessionError {
            error,
            before_transaction: true,
        };
        let mut last_error = None;
        let mut stream = None;
        let port = addrs.first().map_or(0, SocketAddr::port);
        let mut peer = if host.contains(':') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        };
        for &addr in addrs {
            match connect_one(addr, options).await {
                Ok(s) => {
                    if host.parse::<IpAddr>().is_ok() {
                        peer = addr.to_string();
                    } else {
                        peer = format!("{host}[{}]:{}", addr.ip(), addr.port());
                    }
                    stream = Some(s);
                    break;
                }
                Err(e) => {
                    tracing::debug!(%addr, error = %e, "SMTP connect failed");
                    last_error = Some(e.to_string());
                }
            }
        }
        let Some(stream) = stream else {
            let why = last_error.unwrap_or_else(|| "no address to connect to".into());
            return Err(early(connect_failed(&peer, why)));
        };
        let _ = stream.set_nodelay(true);
        Self::start(Stream::Tcp(stream), peer, host, options)
            .await
            .map_err(early)
    }

    /// Connects to the unix socket at `path`, reads the banner and greets.
    pub(crate) async fn open_unix(
        path: &Path,
        options: &ConnectOptions,
    ) -> Result<Self, SessionError> {
        let early = |error| SessionError {
            error,
            before_transaction: true,
        };
        let peer = path.display().to_string();
        let stream = match timeout(options.connect_timeout, UnixStream::connect(path)).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => return Err(early(connect_failed(&peer, e))),
            Err(_) => return Err(early(connect_failed(&peer, "connect timed out"))),
        };
        Self::start(Stream::Unix(stream), peer, "", options)
            .await
            .map_err(early)
    }

    /// Banner, greeting, TLS and AUTH as configured. `host` is the name the
    /// server's certificate must carry.
    async fn start(
        stream: Stream,
        peer: String,
        host: &str,
        options: &ConnectOptions,
    ) -> Result<Self, RelayError> {
        let mut conn = Connection {
            stream,
            dialect: options.dialect,
            buf: Vec::with_capacity(4096),
            peer,
            command_timeout: options.command_timeout,
            extensions: Extensions::default(),
            broken: false,
        };
        let tcp = matches!(conn.stream, Stream::Tcp(_));
        if tcp && options.tls == TlsMode::Immediate {
            conn.tls_handshake(host, options).await?;
        }
        conn.handshake(&options.ehlo_as).await?;
        if tcp {
            conn.secure(host, options).await?;
        }
        if let Some(credentials) = &options.credentials {
            conn.authenticate(credentials, options.allow_plaintext_auth)
                .await?;
        }
        if !options.chunking {
            conn.extensions.chunking = false;
        }
        Ok(conn)
    }

    /// STARTTLS as the mode asks, then EHLO again (RFC 3207 4.2: the server
    /// forgets everything it said before).
    async fn secure(&mut self, host: &str, options: &ConnectOptions) -> Result<(), RelayError> {
        let required = match options.tls {
            TlsMode::Off | TlsMode::Immediate => return Ok(()),
            TlsMode::Opportunistic if !cfg!(feature = "tls") => return Ok(()),
            TlsMode::Opportunistic => false,
            TlsMode::Required => true,
        };
        if !self.extensions.starttls {
            if !required {
                return Ok(());
            }
            let text = format!("TLS is required, but {} does not offer STARTTLS", self.peer);
            return Err(RelayError::transient(Reply::new(451, "4.7.4", text)));
        }
        self.write(b"STARTTLS\r\n", Stage::StartTls).await?;
        let reply = self.read_reply(Stage::StartTls).await?;
        if reply.code() != 220 {
            if !required && !self.broken {
                tracing::debug!(
                    peer = self.peer,
                    ?reply,
                    "STARTTLS refused, staying in plaintext"
                );
                return Ok(());
            }
            let said = reply.text().replace('\n', " ");
            let text = format!(
                "{} refused STARTTLS, which is required: {} {said}",
                self.peer,
                reply.code()
            );
            return Err(self.broken_error(Reply::new(451, "4.7.4", text)));
        }
        if !self.buf.is_empty() {
            // CVE-2011-0411: whatever followed the 220 in plaintext could be
            // read as an answer inside TLS; the session is not trusted.
            let text = format!(
                "{} sent data after its STARTTLS reply (possible injection, CVE-2011-0411)",
                self.peer
            );
            self.buf.clear();
            return Err(self.broken_error(Reply::new(451, "4.7.0", text)));
        }
        self.tls_handshake(host, options).await?;
        self.greet(&options.ehlo_as).await
    }

    /// Replaces the TCP stream with a TLS session over it.
    #[cfg(feature = "tls")]
    async fn tls_handshake(
        &mut self,
        host: &str,
        options: &ConnectOptions,
    ) -> Result<(), RelayError> {
        let Stream::Tcp(tcp) = std::mem::replace(&mut self.stream, Stream::Detached) else {
            let text = format!("TLS is not possible on the session with {}", self.peer);
            return Err(self.broken_error(Reply::new(451, "4.7.5", text)));
        };
        match timeout(
            self.command_timeout,
            options.tls_client.handshake(host, tcp),
        )
        .await
        {
            Ok(Ok(tls)) => {
                self.stream = Stream::Tls(Box::new(tls));
                Ok(())
            }
            Ok(Err(e)) => {
                let text = format!("TLS handshake with {} failed: {e}", self.peer);
                Err(self.broken_error(Reply::new(451, "4.7.5", text)))
            }
            Err(_) => {
                let text = format!(
                    "Timed out in the {} with {}",
                    Stage::TlsHandshake,
                    self.peer
                );
                Err(self.broken_error(Reply::new(451, "4.4.2", text)))
            }
        }
    }

    /// Without the `tls` feature every TLS session fails.
    #[cfg(not(feature = "tls"))]
    async fn tls_handshake(
        &mut self,
        _host: &str,
        _options: &ConnectOptions,
    ) -> Result<(), RelayError> {
        let text = format!(
            "{} with {} failed: slimta was built without the `tls` feature",
            Stage::TlsHandshake,
            self.peer
        );
        Err(self.broken_error(Reply::new(451, "4.7.5", text)))
    }

    /// AUTH with the strongest mechanism both sides support; PLAIN and LOGIN
    /// only over TLS unless `allow_plaintext` (RFC 4954 4: they reveal the
    /// password). 535 is a permanent failure (`5.7.8`), 454 and other 4xx
    /// transient.
    async fn authenticate(
        &mut self,
        credentials: &Credentials,
        allow_plaintext: bool,
    ) -> Result<(), RelayError> {
        let encrypted = self.stream.is_tls();
        let offered = self.extensions.auth.clone();
        let Some(mechanism) = choose_auth_mechanism(&offered, encrypted || allow_plaintext) else {
            let why = if offered.is_empty() {
                "does not offer AUTH".to_string()
            } else if choose_auth_mechanism(&offered, true).is_some() {
                format!(
                    "offers only AUTH {} without TLS, which would reveal the password",
                    offered.join(" ")
                )
            } else {
                format!("offers no supported AUTH mechanism ({})", offered.join(" "))
            };
            let text = format!("Cannot authenticate to {}: it {why}", self.peer);
            return Err(RelayError::transient(Reply::new(451, "4.7.0", text)));
        };
        let (user, pass) = (&credentials.username, &credentials.password);
        let reply = match mechanism {
            AuthMechanism::Plain => {
                let cmd = format!("AUTH PLAIN {}\r\n", auth_plain_response(user, pass));
                self.write(cmd.as_bytes(), Stage::Auth).await?;
                self.read_reply(Stage::Auth).await?
            }
            AuthMechanism::Login => {
                self.write(b"AUTH LOGIN\r\n", Stage::Auth).await?;
                let mut reply = self.read_reply(Stage::Auth).await?;
                for secret in [user, pass] {
                    if reply.code() != 334 {
                        break;
                    }
                    let line = format!("{}\r\n", sasl_base64(secret.as_bytes()));
                    self.write(line.as_bytes(), Stage::Auth).await?;
                    reply = self.read_reply(Stage::Auth).await?;
                }
                reply
            }
            AuthMechanism::CramMd5 => {
                self.write(b"AUTH CRAM-MD5\r\n", Stage::Auth).await?;
                let reply = self.read_reply(Stage::Auth).await?;
                if reply.code() == 334 {
                    match cram_md5_response(user, pass, reply.text()) {
                        Ok(response) => {
                            let line = format!("{response}\r\n");
                            self.write(line.as_bytes(), Stage::Auth).await?;
                            self.read_reply(Stage::Auth).await?
                        }
                        Err(e) => {
                            let text = format!("Cannot authenticate to {}: {e}", self.peer);
                            return Err(self.broken_error(Reply::new(451, "4.7.0", text)));
                        }
                    }
                } else {
                    reply
                }
            }
        };
        if reply.code() == 235 {
            return Ok(());
        }
        let said = reply.text().replace('\n', " ");
        let text = format!(
            "Authentication as {user} with {} failed: {} said: {said} (in reply to AUTH)",
            mechanism.name(),
            self.peer
        );
        let class = u8::try_from(reply.code() / 100).unwrap_or(4);
        let error = match reply.code() {
            535 => RelayError::permanent(Reply::from_parts(
                535,
                Some(reply.enhanced().unwrap_or(EnhancedCode::new(5, 7, 8))),
                text,
            )),
            400..=599 => RelayError::from_reply(Reply::from_parts(
                reply.code(),
                Some(reply.enhanced().unwrap_or(EnhancedCode::new(class, 7, 0))),
                text,
            )),
            // A 334 where the exchange should be over: out of step.
            _ => return Err(self.broken_error(Reply::new(451, "4.7.0", text))),
        };
        Err(error)
    }

    async fn handshake(&mut self, ehlo_as: &str) -> Result<(), RelayError> {
        // Anything but a greeting means the destination is not taking mail
        // now: the queue counts it towards marking the destination dead.
        let banner = self
            .read_reply(Stage::Banner)
            .await
            .map_err(RelayError::as_unreachable)?;
        if !banner.is_positive() {
            return Err(self.remote_error(&banner, Stage::Banner).as_unreachable());
        }
        self.greet(ehlo_as).await
    }

    /// EHLO (LHLO for LMTP), falling back to HELO when an SMTP server refuses
    /// EHLO with 5xx. LMTP has no such fallback (RFC 2033 4.1).
    async fn greet(&mut self, ehlo_as: &str) -> Result<(), RelayError> {
        let (verb, stage) = match self.dialect {
            Dialect::Smtp => ("EHLO", Stage::Ehlo),
            Dialect::Lmtp => ("LHLO", Stage::Lhlo),
        };
        self.write(format!("{verb} {ehlo_as}\r\n").as_bytes(), stage)
            .await?;
        let ehlo = self.read_reply(stage).await?;
        if ehlo.is_positive() {
            self.extensions = Extensions::from_ehlo(&ehlo);
            return Ok(());
        }
        if !ehlo.is_permanent() || self.dialect == Dialect::Lmtp {
            return Err(self.remote_error(&ehlo, stage));
        }
        self.write(format!("HELO {ehlo_as}\r\n").as_bytes(), Stage::Helo)
            .await?;
        let helo = self.read_reply(Stage::Helo).await?;
        if !helo.is_positive() {
            return Err(self.remote_error(&helo, Stage::Helo));
        }
        self.extensions = Extensions::default();
        Ok(())
    }

    /// What the server offered in its EHLO reply (nothing after HELO).
    pub(crate) fn extensions(&self) -> &Extensions {
        &self.extensions
    }

    /// Whether the session may carry another transaction.
    pub(crate) fn is_reusable(&self) -> bool {
        !self.broken
    }

    /// Whether an idle session is still quiet: nothing buffered, nothing
    /// arrived, not closed. A server that timed the session out has usually
    /// sent an unsolicited `421` and closed; such a session is never reused.
    pub(crate) fn is_quiet(&mut self) -> bool {
        if self.broken || !self.buf.is_empty() {
            return false;
        }
        match self.stream.poll_quiet() {
            Quiet::Yes => true,
            Quiet::Data(bytes) => {
                self.buf.extend_from_slice(&bytes);
                self.broken = true;
                false
            }
            Quiet::Failed => {
                self.broken = true;
                false
            }
        }
    }

    /// `host:port` of the server, as used in error texts.
    pub(crate) fn peer(&self) -> &str {
        &self.peer
    }

    fn broken_error(&mut self, reply: Reply) -> RelayError {
        self.broken = true;
        RelayError::transient(reply)
    }

    async fn read_reply(&mut self, stage: Stage) -> Result<Reply, RelayError> {
        loop {
            match parse_reply(&self.buf) {
                Ok((reply, used)) => {
                    self.buf.drain(..used);
                    if reply.code() == 421 {
                        self.broken = true;
                    }
                    return Ok(reply);
                }
                Err(ReplyError::NeedMoreData) => {}
                Err(e) => {
                    let text = format!("Invalid reply from {} to {stage}: {e}", self.peer);
                    return Err(self.broken_error(Reply::new(451, "4.5.0", text)));
                }
            }
            self.buf.reserve(4096);
            match timeout(self.command_timeout, self.stream.read_buf(&mut self.buf)).await {
                Ok(Ok(0)) => {
                    let text = format!(
                        "Connection closed by {} while waiting for {stage} reply",
                        self.peer
                    );
                    return Err(self.broken_error(Reply::new(451, "4.4.2", text)));
                }
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    let text = format!(
                        "Connection to {} failed while waiting for {stage} reply: {e}",
                        self.peer
                    );
                    return Err(self.broken_error(Reply::new(451, "4.4.2", text)));
                }
                Err(_) => {
                    let text = format!("Timed out waiting for {stage} reply from {}", self.peer);
                    return Err(self.broken_error(Reply::new(451, "4.4.2", text)));
                }
            }
        }
    }

    async fn write(&mut self, bytes: &[u8], stage: Stage) -> Result<(), RelayError> {
        match timeout(self.command_timeout, self.stream.write_all(bytes)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => {
                let text = format!(
                    "Connection to {} failed while sending {stage}: {e}",
                    self.peer
                );
                Err(self.broken_error(Reply::new(451, "4.4.2", text)))
            }
            Err(_) => {
                let text = format!("Timed out sending {stage} to {}", self.peer);
                Err(self.broken_error(Reply::new(451, "4.4.2", text)))
            }
        }
    }

    /// Turns a remote failure reply into a [`RelayError`] that names the peer
    /// and the stage.
    fn remote_error(&self, reply: &Reply, stage: Stage) -> RelayError {
        let said = reply.text().replace('\n', " ");
        if reply.is_transient() || reply.is_permanent() {
            let class = u8::try_from(reply.code() / 100).unwrap_or(4);
            let enhanced = reply.enhanced().unwrap_or(EnhancedCode::new(class, 0, 0));
            let text = format!("{} said: {said} (in reply to {stage})", self.peer);
            RelayError::from_reply(Reply::from_parts(reply.code(), Some(enhanced), text))
                .with_remote_mta(remote_host(&self.peer))
        } else {
            let text = format!(
                "{} sent an unexpected reply to {stage}: {} {said}",
                self.peer,
                reply.code()
            );
            RelayError::transient(Reply::new(451, "4.5.0", text))
        }
    }

    /// Runs one mail transaction for `envelope`.
    ///
    /// Errors fail the whole attempt (`before_transaction` when no reply to
    /// MAIL FROM was read yet); otherwise the [`Delivery`] has one result per
    /// recipient, in the envelope's order.
    pub(crate) async fn deliver(&mut self, envelope: &Envelope) -> Result<Delivery, SessionError> {
        let early = |error| SessionError {
            error,
            before_transaction: true,
        };
        let ext = &self.extensions;
        let size = envelope.message.len() as u64;
        if let Some(limit) = ext.size.filter(|&l| l > 0 && size > l) {
            let text = format!(
                "Message size {size} exceeds the limit of {limit} bytes at {}",
                self.peer
            );
            return Err(early(RelayError::permanent(Reply::new(552, "5.3.4", text))));
        }
        let needs_utf8 =
            !envelope.sender.is_ascii() || envelope.recipients.iter().any(|r| !r.is_ascii());
        if envelope.smtputf8 && needs_utf8 && !ext.smtputf8 {
            let text = format!("SMTPUTF8 is required but was not offered by {}", self.peer);
            return Err(early(RelayError::permanent(Reply::new(553, "5.6.7", text))));
        }
        let params = MailFromParams {
            size: ext.size.map(|_| size),
            eightbitmime: envelope.body != BodyType::SevenBit && ext.eightbitmime,
            smtputf8: envelope.smtputf8 && ext.smtputf8,
        };
        let mail = mail_from(&envelope.sender, params).map_err(|e| {
            early(RelayError::permanent(Reply::new(
                501,
                "5.1.7",
                format!("Invalid sender: {e}"),
            )))
        })?;
        // Per recipient: None while its RCPT is outstanding or accepted,
        // Some(error) once refused.
        let mut refused: Vec<Option<RelayError>> = Vec::with_capacity(envelope.recipients.len());
        let mut rcpts: Vec<(usize, Vec<u8>)> = Vec::new();
        for (i, r) in envelope.recipients.iter().enumerate() {
            match rcpt_to(r) {
                Ok(cmd) => {
                    refused.push(None);
                    rcpts.push((i, cmd));
                }
                Err(e) => {
                    let reply = Reply::new(501, "5.1.3", format!("Invalid recipient: {e}"));
                    refused.push(Some(RelayError::permanent(reply)));
                }
            }
        }
        if rcpts.is_empty() {
            let results = refused
                .into_iter()
                .map(|e| Err(e.expect("all refused")))
                .collect();
            return Ok(Delivery::per_recipient(
                Reply::new(501, "5.1.3", "No valid recipient"),
                results,
            ));
        }
        let chunked = self.extensions.chunking;
        let mut data = Vec::new();
        if chunked {
            encode_bdat_last(&envelope.message, &mut data);
        } else {
            encode_data(&envelope.message, &mut data);
        }

        let pipelined = self.extensions.pipelining && rcpts.len() <= PIPELINE_MAX_RCPTS;
        // DATA rides in the pipelined batch; BDAT never does (module docs).
        let data_pipelined = pipelined && !chunked;
        if pipelined {
            let mut batch = mail;
            for (_, cmd) in &rcpts {
                batch.extend_from_slice(cmd);
            }
            if data_pipelined {
                batch.extend_from_slice(b"DATA\r\n");
            }
            self.write(&batch, Stage::Mail).await.map_err(early)?;
        } else {
            self.write(&mail, Stage::Mail).await.map_err(early)?;
        }
        let late = |error| SessionError {
            error,
            before_transaction: false,
        };
        let mail_reply = self.read_reply(Stage::Mail).await.map_err(late)?;
        if !mail_reply.is_positive() {
            let error = self.remote_error(&mail_reply, Stage::Mail);
            if pipelined && !self.broken {
                self.drain_pipeline(rcpts.len(), data_pipelined).await;
            }
            return Err(late(error));
        }

        let mut last_refusal = None;
        for (i, cmd) in &rcpts {
            let reply = if pipelined {
                self.read_reply(Stage::Rcpt).await
            } else {
                match self.write(cmd, Stage::Rcpt).await {
                    Ok(()) => self.read_reply(Stage::Rcpt).await,
                    Err(e) => Err(e),
                }
            };
            match reply {
                Ok(reply) if reply.is_positive() => {}
                Ok(reply) if reply.code() == 421 => {
                    let e = self.remote_error(&reply, Stage::Rcpt);
                    return Ok(finish(&refused, &Err(e)));
                }
                Ok(reply) => {
                    let e = self.remote_error(&reply, Stage::Rcpt);
                    last_refusal = Some(e.reply().clone());
                    refused[*i] = Some(e);
                }
                Err(e) => return Ok(finish(&refused, &Err(e))),
            }
        }

        if refused.iter().all(Option::is_some) {
            if data_pipelined {
                self.end_refused_data().await;
            }
            if !self.broken {
                self.rset().await;
            }
            let reply =
                last_refusal.unwrap_or_else(|| Reply::new(554, "5.5.1", "No valid recipients"));
            return Ok(finish(&refused, &Err(RelayError::from_reply(reply))));
        }

        if self.dialect == Dialect::Lmtp {
            let accepted: Vec<usize> = rcpts
                .iter()
                .map(|&(i, _)| i)
                .filter(|&i| refused[i].is_none())
                .collect();
            return Ok(self
                .lmtp_data_phase(data_pipelined, chunked, &data, refused, &accepted)
                .await);
        }
        let outcome = if chunked {
            self.bdat_phase(&data).await
        } else {
            self.data_phase(data_pipelined, &data).await
        };
        Ok(finish(&refused, &outcome))
    }

    /// LMTP's DATA (or BDAT, when `chunked`: `data` is then the command and
    /// its chunk): after the message, one reply per accepted recipient, in
    /// the order of their RCPT commands (RFC 2033 4.2). A recipient whose
    /// reply never came (timeout, lost connection) gets the transient error.
    async fn lmtp_data_phase(
        &mut self,
        pipelined: bool,
        chunked: bool,
        data: &[u8],
        mut results: Vec<Option<RelayError>>,
        accepted: &[usize],
    ) -> Delivery {
        let mut replies: Vec<Option<Reply>> = vec![None; results.len()];
        let started = async {
            if chunked {
                return self.write(data, Stage::Bdat).await;
            }
            if !pipelined {
                self.write(b"DATA\r\n", Stage::Data).await?;
            }
            let reply = self.read_reply(Stage::Data).await?;
            if reply.code() != 354 {
                return Err(self.remote_error(&reply, Stage::Data));
            }
            self.write(data, Stage::Message).await
        }
        .await;
        let end = if chunked {
            Stage::Bdat
        } else {
            Stage::EndOfData
        };
        let mut last = None;
        match started {
            Err(e) => {
                for &i in accepted {
                    results[i] = Some(e.clone());
                }
                last = Some(e.reply().clone());
            }
            Ok(()) => {
                let mut lost: Option<RelayError> = None;
                for &i in accepted {
                    if let Some(e) = &lost {
                        results[i] = Some(e.clone());
                        continue;
                    }
                    match self.read_reply(end).await {
                        Ok(reply) if reply.is_positive() => {
                            last = Some(reply.clone());
                            replies[i] = Some(reply);
                        }
                        Ok(reply) => {
                            let e = self.remote_error(&reply, end);
                            last = Some(e.reply().clone());
                            results[i] = Some(e);
                        }
                        Err(e) => {
                            last = Some(e.reply().clone());
                            results[i] = Some(e.clone());
                            lost = Some(e);
                        }
                    }
                }
            }
        }
        let results: Vec<Result<Reply, RelayError>> = results
            .into_iter()
            .zip(replies)
            .map(|(error, reply)| match (error, reply) {
                (Some(e), _) => Err(e),
                (None, Some(reply)) => Ok(reply),
                (None, None) => Err(RelayError::transient(Reply::new(
                    451,
                    "4.3.0",
                    "no LMTP reply for this recipient",
                ))),
            })
            .collect();
        let reply = last.unwrap_or_else(|| Reply::new(451, "4.3.0", "no LMTP reply"));
        Delivery::per_recipient(reply, results)
    }

    /// After a pipelined MAIL was refused: reads the RCPT (and DATA, when
    /// it was in the batch) replies so the session stays in step (and ends
    /// a DATA accepted by mistake).
    async fn drain_pipeline(&mut self, rcpts: usize, data: bool) {
        for _ in 0..rcpts {
            if self.read_reply(Stage::Rcpt).await.is_err() {
                return;
            }
        }
        if data {
            self.end_refused_data().await;
        }
    }

    /// Reads the reply to a pipelined DATA that should have been refused.
    /// RFC 2920 3.1: a server that accepts it anyway (354) without valid
    /// recipients gets an empty message, which it must refuse; that reply
    /// does not matter.
    async fn end_refused_data(&mut self) {
        if let Ok(reply) = self.read_reply(Stage::Data).await
            && reply.code() == 354
            && self.write(b".\r\n", Stage::EndOfData).await.is_ok()
        {
            let _ = self.read_reply(Stage::EndOfData).await;
        }
    }

    /// DATA, the message, and the final reply: the outcome of every accepted
    /// recipient.
    async fn data_phase(&mut self, pipelined: bool, data: &[u8]) -> Result<Reply, RelayError> {
        if !pipelined {
            self.write(b"DATA\r\n", Stage::Data).await?;
        }
        let reply = self.read_reply(Stage::Data).await?;
        if reply.code() != 354 {
            return Err(self.remote_error(&reply, Stage::Data));
        }
        self.write(data, Stage::Message).await?;
        let reply = self.read_reply(Stage::EndOfData).await?;
        if reply.is_positive() {
            Ok(reply)
        } else {
            Err(self.remote_error(&reply, Stage::EndOfData))
        }
    }

    /// `BDAT <size> LAST` with the message (both in `chunk`), and the reply:
    /// the outcome of every accepted recipient.
    async fn bdat_phase(&mut self, chunk: &[u8]) -> Result<Reply, RelayError> {
        self.write(chunk, Stage::Bdat).await?;
        let reply = self.read_reply(Stage::Bdat).await?;
        if reply.is_positive() {
            Ok(reply)
        } else {
            Err(self.remote_error(&reply, Stage::Bdat))
        }
    }

    /// RSET, marking the session broken unless it is answered with 2xx.
    pub(crate) async fn rset(&mut self) -> bool {
        if self.write(b"RSET\r\n", Stage::Rset).await.is_err() {
            return false;
        }
        match self.read_reply(Stage::Rset).await {
            Ok(reply) if reply.is_positive() => true,
            _ => {
                self.broken = true;
                false
            }
        }
    }

    /// QUIT and close. The reply is read (briefly) but does not matter: the
    /// transactions are over.
    pub(crate) async fn quit(mut self) {
        self.command_timeout = self.command_timeout.min(QUIT_TIMEOUT);
        if !self.broken && self.write(b"QUIT\r\n", Stage::Quit).await.is_ok() {
            let _ = self.read_reply(Stage::Quit).await;
        }
        let _ = self.stream.shutdown().await;
    }
}

/// The host part of a peer name (`host[ip]:port`, `ip:port`,
/// `[v6]:port`): the DNS name when there is one, else the address.
fn remote_host(peer: &str) -> &str {
    let host = peer.rsplit_once(':').map_or(peer, |(h, _)| h);
    match host.find('[') {
        Some(0) | None => host,
        Some(i) => &host[..i],
    }
}

/// Builds the per-recipient delivery: refused recipients keep their error,
/// the others get `outcome`.
fn finish(refused: &[Option<RelayError>], outcome: &Result<Reply, RelayError>) -> Delivery {
    let results = refused
        .iter()
        .map(|r| match (r, outcome) {
            (Some(e), _) => Err(e.clone()),
            (None, Ok(reply)) => Ok(reply.clone()),
            (None, Err(e)) => Err(e.clone()),
        })
        .collect();
    let reply = match outcome {
        Ok(reply) => reply.clone(),
        Err(e) => e.reply().clone(),
    };
    Delivery::per_recipient(reply, results)
}
