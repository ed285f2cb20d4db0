//! The SMTP edge: listeners, sessions, and the hand-off to the queue.
//!
//! [`SmtpEdge`] is the tokio driver of the sans-IO [`Server`] state machine:
//! it reads bytes, feeds them in, asks the [`Validators`] about each event,
//! hands finished messages to a [`Handoff`] (the queue), and writes replies.
//! All protocol behaviour lives in `smtp::server`; this file only decides
//! about I/O, time and policy.
//!
//! Decisions:
//! - Replies are written when the state machine has consumed every buffered
//!   byte, so a pipelined group of commands is answered with one write
//!   (RFC 2920) and a lockstep client still gets each reply at once.
//! - An idle session holds no read buffer (see `transport`).
//! - The message reply reflects only whether the queue took responsibility
//!   (a 250 is a promise that the message will not be lost): `250 2.6.0 Message queued as ID` once every part is
//!   durable, otherwise the first failed part's reply (see `handoff`).
//! - Shutdown: a session waiting for a command gets `421 4.3.2` and is
//!   closed; a session inside DATA finishes the message first, so nothing a
//!   client finished sending is cut off.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use tokio::sync::watch;

use crate::envelope::{Envelope, Protocol};
use crate::handoff::Handoff;
use crate::reply::Reply;
use crate::smtp::sasl::{AuthAttempt, AuthSecret};
use crate::smtp::{EventKind, Server, ServerConfig, Step, Transaction};

use super::credentials::Credentials;
use super::listener::{self, Accept, ListenerLimits};
use super::proxy::ProxyMode;
use super::transport::Transport;
use super::validators::{AcceptAll, SessionInfo, Validators};

static NEXT_SESSION_ID: AtomicU64 = AtomicU64::new(1);

/// An SMTP edge: accepts sessions and hands messages to a queue.
pub struct SmtpEdge<H, V = AcceptAll> {
    handoff: Arc<H>,
    validators: Arc<V>,
    settings: Settings,
}

/// Everything an edge is configured with besides its handoff and
/// validators: one value, so changing the validators' type (or cloning the
/// edge for a session) carries every setting over without listing them.
#[derive(Clone)]
struct Settings {
    server_config: Arc<ServerConfig>,
    command_timeout: Duration,
    data_timeout: Duration,
    max_connections: usize,
    drain_timeout: Duration,
    proxy: Option<ProxyMode>,
    #[cfg(feature = "tls")]
    tls: Option<super::tls::ReloadableTls>,
    tls_immediately: bool,
    #[cfg(feature = "mx")]
    reverse_dns: Option<Arc<super::reverse_dns::ReverseDns>>,
    credentials: Option<Arc<Credentials>>,
    auth_failure_delay: Duration,
}

impl<H, V> Clone for SmtpEdge<H, V> {
    fn clone(&self) -> Self {
        Self {
            handoff: self.handoff.clone(),
            validators: self.validators.clone(),
            settings: self.settings.clone(),
        }
    }
}

impl<H: Handoff> SmtpEdge<H, AcceptAll> {
    /// An edge handing messages to `handoff`, with [`ServerConfig::new`]
    /// limits for `hostname` and validators that accept everything (set
    /// real ones with [`SmtpEdge::validators`]).
    pub fn new(hostname: impl Into<String>, handoff: H) -> Self {
        Self {
            handoff: Arc::new(handoff),
            validators: Arc::new(AcceptAll),
            settings: Settings {
                server_config: Arc::new(ServerConfig::new(hostname)),
                command_timeout: Duration::from_secs(300),
                data_timeout: Duration::from_secs(600),
                max_connections: 1000,
                drain_timeout: Duration::from_secs(30),
                proxy: None,
                #[cfg(feature = "tls")]
                tls: None,
                tls_immediately: false,
                #[cfg(feature = "mx")]
                reverse_dns: None,
                credentials: None,
                auth_failure_delay: Duration::from_secs(1),
            },
        }
    }
}

impl<H: Handoff, V: Validators> SmtpEdge<H, V> {
    /// Uses `validators` for every session.
    pub fn validators<W: Validators>(self, validators: W) -> SmtpEdge<H, W> {
        SmtpEdge {
            handoff: self.handoff,
            validators: Arc::new(validators),
            settings: self.settings,
        }
    }

    /// The users AUTH checks against (mechanisms and the plaintext rule are
    /// in the [`ServerConfig`]). Without credentials every AUTH fails unless
    /// a validator's `auth` hook accepts it.
    pub fn credentials(mut self, credentials: Credentials) -> Self {
        self.settings.credentials = Some(Arc::new(credentials));
        self
    }

    /// The pause before answering a failed AUTH, multiplied by the number of
    /// failures in the session (at most 5 times). Default 1 s.
    pub fn auth_failure_delay(mut self, delay: Duration) -> Self {
        self.settings.auth_failure_delay = delay;
        self
    }

    /// Looks up the client's forward-confirmed reverse DNS name before the
    /// banner (bounded by the resolver's own timeout). Loopback clients are
    /// `localhost` without a query.
    #[cfg(feature = "mx")]
    pub fn reverse_dns(mut self, resolver: super::reverse_dns::ReverseDns) -> Self {
        self.settings.reverse_dns = Some(Arc::new(resolver));
        self
    }

    /// Expects a PROXY protocol header (v1, v2 or either) before anything
    /// else on every TCP connection; the client address then comes from it.
    /// A malformed header, or none within the command timeout, closes the
    /// connection without a banner.
    pub fn proxy_protocol(mut self, mode: Option<ProxyMode>) -> Self {
        self.settings.proxy = mode;
        self
    }

    /// Certificates for STARTTLS (offered when the state machine's config
    /// says so) and implicit TLS.
    #[cfg(feature = "tls")]
    pub fn tls(mut self, tls: super::tls::ReloadableTls) -> Self {
        self.settings.tls = Some(tls);
        self
    }

    /// TLS on connect (port 465 style) instead of STARTTLS; needs
    /// [`SmtpEdge::tls`].
    pub fn tls_immediately(mut self, on: bool) -> Self {
        self.settings.tls_immediately = on;
        self
    }

    /// Replaces the protocol limits and extensions.
    pub fn server_config(mut self, config: ServerConfig) -> Self {
        self.settings.server_config = Arc::new(config);
        self
    }

    /// Idle time allowed while waiting for a command (RFC 5321 4.5.3.2: at
    /// least 5 minutes).
    pub fn command_timeout(mut self, timeout: Duration) -> Self {
        self.settings.command_timeout = timeout;
        self
    }

    /// Idle time allowed between two reads of message data.
    pub fn data_timeout(mut self, timeout: Duration) -> Self {
        self.settings.data_timeout = timeout;
        self
    }

    /// Sessions served at once; more clients get `421 4.3.2` and are closed.
    pub fn max_connections(mut self, max: usize) -> Self {
        self.settings.max_connections = max.max(1);
        self
    }

    /// How long shutdown waits for running sessions.
    pub fn drain_timeout(mut self, timeout: Duration) -> Self {
        self.settings.drain_timeout = timeout;
        self
    }

    /// Serves `listener` (TCP or unix) until `shutdown` becomes true, then
    /// drains.
    pub async fn serve<L>(&self, listener: L, shutdown: watch::Receiver<bool>)
    where
        L: Accept,
        L::Stream: Into<Transport>,
    {
        let host = &self.settings.server_config.hostname;
        let limits = ListenerLimits {
            max_connections: self.settings.max_connections,
            refusal: Reply::new(
                421,
                "4.3.2",
                format!("{host} Too many connections, try again later"),
            )
            .to_bytes(),
            drain_timeout: self.settings.drain_timeout,
        };
        let edge = self.clone();
        let session_shutdown = shutdown.clone();
        listener::serve(listener, limits, shutdown, move |stream, peer| {
            let edge = edge.clone();
            let shutdown = session_shutdown.clone();
            async move { edge.run_session(stream.into(), peer, shutdown).await }
        })
        .await;
    }

    /// Runs one SMTP session on an accepted connection; `peer` is `None`
    /// for unix sockets.
    pub async fn run_session(
        &self,
        mut stream: Transport,
        peer: Option<SocketAddr>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let mut info = SessionInfo {
            id: NEXT_SESSION_ID.fetch_add(1, Ordering::Relaxed),
            local_addr: stream.local_addr(),
            ..SessionInfo::default()
        };
        if let Some(peer) = peer {
            info.client.ip = Some(peer.ip());
            info.client.port = peer.port();
        }
        let mut peer = peer.map_or_else(|| "unix".to_string(), |p| p.to_string());
        if let Some(mode) = self.settings.proxy {
            match stream
                .take_proxy_header(mode, self.settings.command_timeout)
                .await
            {
                Ok(header) => {
                    if let Some(source) = header.source {
                        info.client.ip = Some(source.ip());
                        info.client.port = source.port();
                        peer = format!("{source} via {peer}");
                    }
                }
                Err(e) => {
                    tracing::info!(session = info.id, client = %peer, error = %e, "PROXY header refused; closed without a banner");
                    return;
                }
            }
        }
        #[cfg(feature = "tls")]
        if self.settings.tls_immediately {
            let Some(tls) = &self.settings.tls else {
                tracing::error!(session = info.id, "tls_immediately without certificates");
                return;
            };
            let acceptor = tls.acceptor();
            let handshake = stream.start_tls(&acceptor);
            match tokio::time::timeout(self.settings.command_timeout, handshake).await {
                Ok(Ok(tls_info)) => info.client.tls = Some(tls_info),
                Ok(Err(e)) => {
                    tracing::info!(session = info.id, client = %peer, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::info!(session = info.id, client = %peer, "TLS handshake timed out");
                    return;
                }
            }
        }
        #[cfg(feature = "mx")]
        if let (Some(resolver), Some(ip)) = (&self.settings.reverse_dns, info.client.ip) {
            info.client.host = if ip.to_canonical().is_loopback() {
                Some("localhost".to_string())
            } else {
                resolver.confirmed_name(ip).await
            };
        }
        tracing::info!(
            session = info.id,
            client = %peer,
            host = info.client.host.as_deref().unwrap_or("unknown"),
            tls = stream.is_tls(),
            "connect"
        );
        let mut session = Session {
            edge: self,
            stream,
            server: Server::new(self.settings.server_config.clone()),
            info,
            messages: 0,
            failed_auths: 0,
        };
        let outcome = session.run(&mut shutdown).await;
        let info = &session.info;
        match outcome {
            Ok(end) => {
                tracing::info!(session = info.id, client = %peer, messages = session.messages, "disconnect ({end})");
            }
            Err(e) => {
                tracing::info!(session = info.id, client = %peer, messages = session.messages, error = %e, "disconnect (i/o error)");
            }
        }
    }
}

struct Session<'a, H, V> {
    edge: &'a SmtpEdge<H, V>,
    stream: Transport,
    server: Server,
    info: SessionInfo,
    messages: u64,
    failed_auths: u32,
}

/// How a finished message is answered: one reply, or (LMTP) one per
/// accepted recipient in RCPT order.
enum Answer {
    One(Reply),
    PerRecipient(Vec<Reply>),
}

impl<H: Handoff, V: Validators> Session<'_, H, V> {
    async fn run(&mut self, shutdown: &mut watch::Receiver<bool>) -> io::Result<&'static str> {
        if self.stream.is_tls() {
            self.server.tls_established();
        }
        let mut banner = self.server.default_banner();
        self.edge.validators.banner(&mut banner, &self.info).await;
        self.server.greet(banner);
        loop {
            match self.server.step() {
                Step::Event(event) => {
                    if let EventKind::Message(transaction) = event.kind {
                        let answer = self.deliver(*transaction, event.reply).await;
                        self.info.sender = None;
                        self.info.recipients.clear();
                        match answer {
                            Answer::One(reply) => self.server.respond(reply),
                            Answer::PerRecipient(replies) => {
                                self.server.respond_per_recipient(replies);
                            }
                        }
                    } else {
                        let reply = self.decide(event.kind, event.reply).await;
                        self.server.respond(reply);
                    }
                    self.info.client.protocol = self.server.protocol();
                }
                Step::NeedInput => {
                    self.flush().await?;
                    let data = self.server.reading_data();
                    let timeout = if data {
                        self.edge.settings.data_timeout
                    } else {
                        self.edge.settings.command_timeout
                    };
                    let read = tokio::select! {
                        read = tokio::time::timeout(timeout, self.stream.read_into(&mut self.server)) => read,
                        () = listener::wait_true(shutdown), if !data => {
                            self.server.shutting_down();
                            self.flush().await?;
                            return Ok("shutdown");
                        }
                    };
                    match read {
                        Ok(Ok(0)) => return Ok("client closed"),
                        Ok(Ok(_)) => {}
                        Ok(Err(e)) => return Err(e),
                        Err(_elapsed) => {
                            self.server.timed_out();
                            self.flush().await?;
                            return Ok("timeout");
                        }
                    }
                }
                Step::Close => {
                    self.flush().await?;
                    let _ = self.stream.shutdown().await;
                    return Ok("closed by server");
                }
                Step::StartTls => {
                    self.flush().await?;
                    if self.start_tls().await {
                        continue;
                    }
                    self.server.tls_failed();
                    // Best effort: after a timeout the stream is gone.
                    let _ = self.flush().await;
                    return Ok("TLS handshake failed");
                }
            }
        }
    }

    async fn flush(&mut self) -> io::Result<()> {
        let out = self.server.output();
        if !out.is_empty() {
            self.stream.write_all(out).await?;
            self.server.clear_output();
        }
        Ok(())
    }

    async fn decide(&mut self, kind: EventKind, mut reply: Reply) -> Reply {
        let validators = &*self.edge.validators;
        match kind {
            EventKind::Helo { domain, extended } => {
                validators.ehlo(&mut reply, &self.info, &domain).await;
                if reply.is_positive() {
                    self.info.client.helo = Some(domain);
                    self.info.client.protocol = if extended {
                        Protocol::Esmtp
                    } else {
                        Protocol::Smtp
                    };
                    self.info.sender = None;
                    self.info.recipients.clear();
                }
            }
            EventKind::Mail { sender, params } => {
                validators
                    .mail(&mut reply, &self.info, &sender, &params)
                    .await;
                if reply.is_positive() {
                    self.info.sender = Some(sender);
                    self.info.recipients.clear();
                }
            }
            EventKind::Rcpt { recipient, params } => {
                validators
                    .rcpt(&mut reply, &self.info, &recipient, &params)
                    .await;
                if reply.is_positive() {
                    self.info.recipients.push(recipient);
                }
            }
            EventKind::Data => validators.data(&mut reply, &self.info).await,
            EventKind::Quit => {}
            EventKind::StartTls => {
                if !self.tls_available() {
                    reply = Reply::new(454, "4.7.0", "TLS not available");
                }
            }
            EventKind::Auth(attempt) => {
                if self.check_credentials(&attempt).await {
                    reply = Reply::new(235, "2.7.0", "Authentication successful");
                }
                validators.auth(&mut reply, &self.info, &attempt).await;
                if reply.is_positive() {
                    tracing::info!(session = self.info.id, user = %attempt.authcid, mechanism = ?attempt.mechanism, "authenticated");
                    self.info.client.auth = Some(attempt.authcid);
                } else {
                    self.failed_auths += 1;
                    tracing::info!(session = self.info.id, user = %attempt.authcid, failures = self.failed_auths, "authentication failed");
                    let factor = self.failed_auths.min(5);
                    tokio::time::sleep(self.edge.settings.auth_failure_delay * factor).await;
                }
            }
            EventKind::Message(_) => unreachable!("messages are delivered by run()"),
        }
        if !reply.is_positive() && !reply.is_intermediate() {
            tracing::debug!(session = self.info.id, %reply, "refused");
        }
        reply
    }

    /// Builds the envelope, lets `have_data` judge it, hands it to the queue
    /// and words the reply.
    async fn deliver(&mut self, transaction: Transaction, mut reply: Reply) -> Answer {
        let Transaction {
            sender,
            mail_params,
            recipients,
            data,
        } = transaction;
        let mut envelope = Envelope::new(sender, recipients, data);
        envelope.client = self.info.client.clone();
        envelope.receive_time = SystemTime::now();
        envelope.client.protocol = self.server.protocol();
        envelope.body = mail_params.body;
        envelope.smtputf8 = mail_params.smtputf8;
        let validators = &*self.edge.validators;
        validators
            .have_data(&mut reply, &self.info, &mut envelope)
            .await;
        if !reply.is_positive() {
            tracing::info!(session = self.info.id, sender = %envelope.sender, %reply, "message refused");
            return Answer::One(reply);
        }
        let lmtp = self.server.config().lmtp;
        let recipients = lmtp.then(|| envelope.recipients.clone());
        let (sender, size, rcpts) = (
            envelope.sender.clone(),
            envelope.message.len(),
            envelope.recipients.len(),
        );
        let results = self.edge.handoff.handoff(envelope).await;
        let mut reply = crate::handoff::queued_reply(&results);
        validators.queued(&mut reply, &self.info, &results).await;
        if reply.is_positive() {
            self.messages += 1;
        }
        tracing::info!(
            session = self.info.id,
            sender = %sender,
            recipients = rcpts,
            size,
            %reply,
            "message"
        );
        match recipients {
            None => Answer::One(reply),
            Some(recipients) => {
                let mut replies = Vec::with_capacity(recipients.len());
                for recipient in &recipients {
                    let part = results.iter().find(|r| r.recipients.contains(recipient));
                    let mut one = match part {
                        Some(part) => crate::handoff::queued_reply(std::slice::from_ref(part)),
                        None => crate::handoff::queued_reply(&[]),
                    };
                    // Name the recipient, so each of the replies that come
                    // in RCPT order says whom it is about.
                    let text = format!("<{recipient}> {}", one.text());
                    one.set_text(text);
                    validators.queued(&mut one, &self.info, &results).await;
                    replies.push(one);
                }
                Answer::PerRecipient(replies)
            }
        }
    }

    fn tls_available(&self) -> bool {
        #[cfg(feature = "tls")]
        return self.edge.settings.tls.is_some();
        #[cfg(not(feature = "tls"))]
        false
    }

    /// Runs the STARTTLS handshake; true when the session is now encrypted.
    async fn start_tls(&mut self) -> bool {
        #[cfg(feature = "tls")]
        if let Some(tls) = &self.edge.settings.tls {
            let acceptor = tls.acceptor();
            let handshake = self.stream.start_tls(&acceptor);
            match tokio::time::timeout(self.edge.settings.command_timeout, handshake).await {
                Ok(Ok(info)) => {
                    tracing::info!(session = self.info.id, protocol = %info.protocol, cipher = %info.cipher, "STARTTLS");
                    self.info.client.tls = Some(info);
                    self.info.client.helo = None;
                    self.info.sender = None;
                    self.info.recipients.clear();
                    self.server.tls_established();
                    return true;
                }
                Ok(Err(e)) => {
                    tracing::info!(session = self.info.id, error = %e, "STARTTLS handshake failed");
                }
                Err(_) => tracing::info!(session = self.info.id, "STARTTLS handshake timed out"),
            }
        }
        false
    }

    /// Checks an AUTH attempt against the edge's credentials. Proxy
    /// authorization (an authzid other than the authcid) is not supported.
    async fn check_credentials(&self, attempt: &AuthAttempt) -> bool {
        let Some(credentials) = &self.edge.settings.credentials else {
            return false;
        };
        if attempt
            .authzid
            .as_ref()
            .is_some_and(|z| *z != attempt.authcid)
        {
            return false;
        }
        match &attempt.secret {
            AuthSecret::Password(password) => {
                credentials.verify_async(&attempt.authcid, password).await
            }
            AuthSecret::CramMd5 {
                challenge,
                digest_hex,
            } => credentials.cram_md5_verify(&attempt.authcid, challenge.as_bytes(), digest_hex),
        }
    }
}
