//! The HTTP edge: messages submitted by `POST`, as python-slimta's
//! `WsgiEdge` takes them.
//!
//! A request is one message: the body is the message (`Content-Type:
//! message/rfc822`), the envelope travels in headers - `X-Envelope-Sender`
//! (base64 of the reverse path, empty for `<>`), `X-Envelope-Recipient`
//! (base64, the header repeated or values separated by commas) and `X-Ehlo`
//! (plain text) - and the queue's answer comes back as
//! `X-Smtp-Reply: 250; message="2.6.0 Message queued as ID"`.
//!
//! | outcome | status |
//! | --- | --- |
//! | queued (2xx reply) | 204 No Content |
//! | transient (4xx reply) | 503 Service Unavailable |
//! | permanent (5xx reply, including relaying denied) | 500 |
//! | method other than POST | 405 (`Allow: POST`) |
//! | credentials configured, no or wrong Basic auth | 401 (`WWW-Authenticate: Basic realm="slimta"`) |
//! | other content type | 415 |
//! | body over `max_size` | 413 |
//! | missing or bad envelope headers | 400, with an `X-Smtp-Reply` saying why |
//!
//! Decisions:
//! - The path is ignored (any path is a submission endpoint), as in
//!   python-slimta.
//! - Checks are the SMTP edge's: a [`ValidatorChain`] whose first link is
//!   relay control ([`AcceptDomains`]: a recipient outside
//!   `accept_domains` is refused `550 5.7.1` unless the request
//!   authenticated), followed by the links given to
//!   [`HttpEdge::validators`]. The chain's `mail` hook judges the sender,
//!   its `rcpt` hook each recipient (before the body is read, so a refused
//!   request costs no upload), `have_data` the whole message before it is
//!   queued, and `queued` may reword the answer. Without `accept_domains`
//!   nobody unauthenticated may send anywhere, so a bare `HttpEdge::new` is
//!   never an open relay. One refused recipient refuses the request: unlike
//!   SMTP there is no way to say "some recipients accepted". The hooks
//!   that have no HTTP counterpart (`banner`, `ehlo`, `auth`, `data`) are
//!   not called.
//! - When credentials are set, every request must authenticate with HTTP
//!   Basic. Hashes are checked off the runtime threads
//!   ([`Credentials::verify_async`]) and a failure is answered after
//!   `auth_failure_delay` (1 s by default), the HTTP twin of the SMTP
//!   edge's failed-login delay. Basic auth over plain HTTP is allowed: the
//!   operator chooses TLS for the listener (python-slimta calls HTTP submission a
//!   controlled-environment protocol).
//! - The body is read frame by frame and refused with 413 as soon as it
//!   passes `max_size` (or at once if `Content-Length` says so): memory per
//!   request is bounded by `max_size`.
//! - Line ends in the stored message are CRLF, like every envelope: a bare
//!   LF or CR in the body becomes CRLF (`curl --data-binary @file` with a
//!   Unix file is the common case). Relays can then never send a bare LF
//!   that a receiver might read as a line end (SMTP smuggling).
//! - HTTPS: our own accept loop (the shared `listener::serve`, so the
//!   connection limit and drain are the SMTP edge's), a rustls handshake
//!   from [`ReloadableTls`] (a SIGHUP reload applies to new connections),
//!   then hyper's HTTP/1.1 connection with the axum router as its service.
//!   `axum::serve` cannot take TLS streams and axum-server would bring a
//!   second accept loop with its own limits, so neither is used. HTTP/1.1
//!   only: a submission API gains nothing from HTTP/2.
//! - The reply's text goes into a quoted-string header value: `"` and `\`
//!   are escaped, line breaks become spaces, anything outside visible ASCII
//!   becomes `?` (header values must be ASCII).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use axum::Router;
use axum::body::Body;
use axum::extract::{Extension, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use http_body_util::BodyExt;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::envelope::{Envelope, Protocol, TlsInfo};
use crate::handoff::Handoff;
use crate::reply::Reply;
use crate::smtp::address::{parse_forward_path, parse_reverse_path};

use super::accept_domains::AcceptDomains;
use super::chain::ValidatorChain;
use super::credentials::Credentials;
use super::listener::{self, ListenerLimits};
use super::tls::{self, ReloadableTls};
use super::validators::{SessionInfo, Validators};

static NEXT_REQUEST_ID: AtomicU64 = AtomicU64::new(1);

/// An HTTP edge: accepts messages by `POST` and hands them to a queue.
pub struct HttpEdge<H> {
    shared: Shared<H>,
    accept_domains: AcceptDomains,
    validators: ValidatorChain,
    tls: Option<ReloadableTls>,
    max_connections: usize,
    drain_timeout: Duration,
}

impl<H> Clone for HttpEdge<H> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
            accept_domains: self.accept_domains.clone(),
            validators: self.validators.clone(),
            tls: self.tls.clone(),
            max_connections: self.max_connections,
            drain_timeout: self.drain_timeout,
        }
    }
}

/// The per-request settings; `serve` puts one copy behind an `Arc`.
struct Shared<H> {
    hostname: String,
    handoff: Arc<H>,
    /// Relay control, then the configured validators (built by `router`).
    checks: ValidatorChain,
    credentials: Option<Credentials>,
    max_size: usize,
    max_recipients: usize,
    timeout: Duration,
    auth_failure_delay: Duration,
}

impl<H> Clone for Shared<H> {
    fn clone(&self) -> Self {
        Self {
            hostname: self.hostname.clone(),
            handoff: self.handoff.clone(),
            checks: self.checks.clone(),
            credentials: self.credentials.clone(),
            max_size: self.max_size,
            max_recipients: self.max_recipients,
            timeout: self.timeout,
            auth_failure_delay: self.auth_failure_delay,
        }
    }
}

/// What the handler knows about the connection a request came on.
#[derive(Clone, Debug)]
struct Connection {
    peer: SocketAddr,
    tls: Option<TlsInfo>,
}

impl<H: Handoff> HttpEdge<H> {
    /// An edge handing messages to `handoff`, named `hostname` in logs. It
    /// accepts no recipient until [`HttpEdge::accept_domains`] or
    /// [`HttpEdge::credentials`] is set; limits: 10 MiB messages, 100
    /// recipients, 60 s to send the headers and again the body.
    pub fn new(hostname: impl Into<String>, handoff: H) -> Self {
        Self {
            shared: Shared {
                hostname: hostname.into(),
                handoff: Arc::new(handoff),
                checks: ValidatorChain::new(),
                credentials: None,
                max_size: 10 * 1024 * 1024,
                max_recipients: 100,
                timeout: Duration::from_secs(60),
                auth_failure_delay: Duration::from_secs(1),
            },
            accept_domains: AcceptDomains::new(Vec::<String>::new()),
            validators: ValidatorChain::new(),
            tls: None,
            max_connections: 1000,
            drain_timeout: Duration::from_secs(30),
        }
    }

    /// Recipients in these domains are accepted without authentication.
    pub fn accept_domains(mut self, domains: AcceptDomains) -> Self {
        self.accept_domains = domains;
        self
    }

    /// Checks run after relay control, as on the SMTP edge (see the module
    /// docs for which hooks run).
    pub fn validators(mut self, validators: ValidatorChain) -> Self {
        self.validators = validators;
        self
    }

    /// Requires HTTP Basic authentication against `credentials`; an
    /// authenticated request may send to any domain.
    pub fn credentials(mut self, credentials: Credentials) -> Self {
        self.shared.credentials = Some(credentials);
        self
    }

    /// The largest message (body) accepted; larger ones get 413.
    pub fn max_size(mut self, bytes: usize) -> Self {
        self.shared.max_size = bytes;
        self
    }

    /// The most recipients one request may name.
    pub fn max_recipients(mut self, max: usize) -> Self {
        self.shared.max_recipients = max.max(1);
        self
    }

    /// Time allowed for the request headers, and again for the body (and
    /// for the TLS handshake).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.shared.timeout = timeout;
        self
    }

    /// How long a request with wrong credentials waits for its 401.
    pub fn auth_failure_delay(mut self, delay: Duration) -> Self {
        self.shared.auth_failure_delay = delay;
        self
    }

    /// Serves HTTPS with this certificate (reloadable) instead of HTTP.
    pub fn tls(mut self, tls: ReloadableTls) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Connections served at once; more are closed at once.
    pub fn max_connections(mut self, max: usize) -> Self {
        self.max_connections = max.max(1);
        self
    }

    /// How long shutdown waits for running requests.
    pub fn drain_timeout(mut self, timeout: Duration) -> Self {
        self.drain_timeout = timeout;
        self
    }

    /// Every request needs a `Connection` extension (added per connection
    /// in `run_http`).
    fn router(&self) -> Router {
        Router::new()
            .fallback(handle::<H>)
            .with_state(Arc::new(Shared {
                // Once per served edge, not per request.
                checks: ValidatorChain::new()
                    .then(self.accept_domains.clone())
                    .followed_by(&self.validators),
                ..self.shared.clone()
            }))
    }

    /// Serves `listener` until `shutdown` becomes true; then stops accepting,
    /// lets running requests finish (closing idle keep-alive connections)
    /// and waits at most the drain timeout.
    pub async fn serve(&self, listener: TcpListener, shutdown: watch::Receiver<bool>) {
        let limits = ListenerLimits {
            max_connections: self.max_connections,
            refusal: b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\nContent-Length: 0\r\n\r\n".to_vec(),
            drain_timeout: self.drain_timeout,
        };
        let router = self.router();
        let tls = self.tls.clone();
        let timeout = self.shared.timeout;
        let session_shutdown = shutdown.clone();
        listener::serve(listener, limits, shutdown, move |stream, peer| {
            let router = router.clone();
            let tls = tls.clone();
            let shutdown = session_shutdown.clone();
            async move {
                // A TCP listener always knows its peer.
                let peer = peer.unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)));
                serve_connection(stream, peer, router, tls, timeout, shutdown).await;
            }
        })
        .await;
    }
}

async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    router: Router,
    tls: Option<ReloadableTls>,
    timeout: Duration,
    shutdown: watch::Receiver<bool>,
) {
    match tls {
        None => {
            let conn = Connection { peer, tls: None };
            run_http(stream, conn, router, timeout, shutdown).await;
        }
        Some(tls) => {
            let acceptor = tls.acceptor();
            match tokio::time::timeout(timeout, tls::accept(&acceptor, stream)).await {
                Ok(Ok((stream, info))) => {
                    let conn = Connection {
                        peer,
                        tls: Some(info),
                    };
                    run_http(stream, conn, router, timeout, shutdown).await;
                }
                Ok(Err(e)) => tracing::info!(client = %peer, error = %e, "TLS handshake failed"),
                Err(_) => tracing::info!(client = %peer, "TLS handshake timed out"),
            }
        }
    }
}

async fn run_http<S>(
    stream: S,
    conn: Connection,
    router: Router,
    timeout: Duration,
    mut shutdown: watch::Receiver<bool>,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let peer = conn.peer;
    let service = TowerToHyperService::new(router.layer(Extension(conn)));
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(timeout);
    let connection = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(connection);
    let result = tokio::select! {
        result = connection.as_mut() => result,
        () = listener::wait_true(&mut shutdown) => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(e) = result {
        tracing::debug!(client = %peer, error = %e, "HTTP connection ended with an error");
    }
}

/// The response for an SMTP-style outcome: status from the reply's class,
/// the reply in `X-Smtp-Reply`.
fn reply_response(status: StatusCode, reply: &Reply) -> Response {
    let mut response = status.into_response();
    if let Ok(value) = HeaderValue::from_str(&smtp_reply_header(reply)) {
        response.headers_mut().insert("x-smtp-reply", value);
    }
    response
}

fn status_for(reply: &Reply) -> StatusCode {
    if reply.is_positive() {
        StatusCode::NO_CONTENT
    } else if reply.is_transient() {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::INTERNAL_SERVER_ERROR
    }
}

/// `250; message="2.6.0 Message queued as ID"`.
fn smtp_reply_header(reply: &Reply) -> String {
    let mut text = match reply.enhanced() {
        Some(e) => format!("{e} "),
        None => String::new(),
    };
    let lines: Vec<&str> = reply
        .text()
        .split('\n')
        .map(|l| l.trim_end_matches('\r'))
        .collect();
    text.push_str(&lines.join(" "));
    let mut out = format!("{}; message=\"", reply.code());
    for c in text.trim_end().chars() {
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            ' ' | '!'..='~' => out.push(c),
            '\t' | '\r' | '\n' => out.push(' '),
            _ => out.push('?'),
        }
    }
    out.push('"');
    out
}

/// A request refused with an SMTP-style explanation.
type Refusal = (StatusCode, Reply);

/// A 400 for a request whose envelope headers are wrong.
fn bad_request(code: u16, enhanced: &str, text: &str) -> Refusal {
    (StatusCode::BAD_REQUEST, Reply::new(code, enhanced, text))
}

async fn handle<H: Handoff>(
    State(shared): State<Arc<Shared<H>>>,
    Extension(conn): Extension<Connection>,
    method: Method,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, Infallible> {
    let id = NEXT_REQUEST_ID.fetch_add(1, Ordering::Relaxed);
    let response = shared.submit(id, &conn, &method, &headers, body).await;
    tracing::info!(
        edge = %shared.hostname,
        request = id,
        client = %conn.peer,
        status = response.status().as_u16(),
        reply = response
            .headers()
            .get("x-smtp-reply")
            .and_then(|v| v.to_str().ok())
            .unwrap_or(""),
        "http submission"
    );
    Ok(response)
}

impl<H: Handoff> Shared<H> {
    async fn submit(
        &self,
        id: u64,
        conn: &Connection,
        method: &Method,
        headers: &HeaderMap,
        body: Body,
    ) -> Response {
        if method != Method::POST {
            let mut response = StatusCode::METHOD_NOT_ALLOWED.into_response();
            response
                .headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("POST"));
            return response;
        }
        let user = match &self.credentials {
            None => None,
            Some(credentials) => match self.authenticate(credentials, headers).await {
                Some(user) => Some(user),
                None => {
                    tracing::info!(request = id, client = %conn.peer, "HTTP authentication failed");
                    tokio::time::sleep(self.auth_failure_delay).await;
                    let mut response = StatusCode::UNAUTHORIZED.into_response();
                    response.headers_mut().insert(
                        header::WWW_AUTHENTICATE,
                        HeaderValue::from_static("Basic realm=\"slimta\""),
                    );
                    return response;
                }
            },
        };
        if !is_rfc822(headers) {
            return StatusCode::UNSUPPORTED_MEDIA_TYPE.into_response();
        }
        let envelope = match self.envelope_headers(headers) {
            Ok(envelope) => envelope,
            Err((status, reply)) => return reply_response(status, &reply),
        };
        let mut session = SessionInfo {
            id,
            ..SessionInfo::default()
        };
        session.client.ip = Some(conn.peer.ip());
        session.client.port = conn.peer.port();
        session.client.helo = envelope.helo.clone();
        session.client.protocol = Protocol::Http;
        session.client.auth = user.clone();
        session.client.tls = conn.tls.clone();
        let checks = &self.checks;
        if let Err(reply) = check_envelope(checks, &mut session, &envelope).await {
            return reply_response(status_for(&reply), &reply);
        }
        let declared = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > self.max_size as u64) {
            return self.too_large();
        }
        let message = match tokio::time::timeout(self.timeout, read_body(body, self.max_size)).await
        {
            Ok(Ok(message)) => message,
            Ok(Err(BodyError::TooLarge)) => return self.too_large(),
            Ok(Err(BodyError::Read)) => return StatusCode::BAD_REQUEST.into_response(),
            Err(_) => return StatusCode::REQUEST_TIMEOUT.into_response(),
        };
        let HeaderEnvelope {
            sender,
            recipients,
            helo,
            smtputf8,
        } = envelope;
        let mut envelope = Envelope::new(sender, recipients, normalize_line_ends(&message));
        envelope.client.ip = Some(conn.peer.ip());
        envelope.client.port = conn.peer.port();
        envelope.client.helo = helo;
        envelope.client.protocol = Protocol::Http;
        envelope.client.auth = user;
        envelope.client.tls = conn.tls.clone();
        envelope.smtputf8 = smtputf8;
        envelope.receive_time = SystemTime::now();
        let mut verdict = Reply::new(250, "2.0.0", "Ok");
        checks
            .have_data(&mut verdict, &session, &mut envelope)
            .await;
        if !verdict.is_positive() {
            return reply_response(status_for(&verdict), &verdict);
        }
        let results = self.handoff.handoff(envelope).await;
        let mut reply = crate::handoff::queued_reply(&results);
        let queued = reply.is_positive();
        checks.queued(&mut reply, &session, &results).await;
        if reply.is_positive() != queued {
            // Rewording only: the message is queued, or not, already.
            reply = crate::handoff::queued_reply(&results);
        }
        reply_response(status_for(&reply), &reply)
    }

    fn too_large(&self) -> Response {
        reply_response(
            StatusCode::PAYLOAD_TOO_LARGE,
            &Reply::new(
                552,
                "5.3.4",
                format!("Message exceeds the size limit of {} bytes", self.max_size),
            ),
        )
    }

    /// The authenticated user, or `None` for no or wrong credentials.
    async fn authenticate(&self, credentials: &Credentials, headers: &HeaderMap) -> Option<String> {
        let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
        let (scheme, token) = value.trim().split_once(' ')?;
        if !scheme.eq_ignore_ascii_case("basic") {
            return None;
        }
        let decoded = BASE64.decode(token.trim()).ok()?;
        let decoded = String::from_utf8(decoded).ok()?;
        let (user, password) = decoded.split_once(':')?;
        credentials
            .verify_async(user, password)
            .await
            .then(|| user.to_string())
    }

    /// Sender, recipients and EHLO name from the headers (syntax and
    /// limits; the checks come after).
    fn envelope_headers(&self, headers: &HeaderMap) -> Result<HeaderEnvelope, Refusal> {
        let sender_header = headers
            .get("x-envelope-sender")
            .ok_or_else(|| bad_request(501, "5.5.4", "X-Envelope-Sender header missing"))?;
        let sender = decode_b64_header(sender_header.as_bytes()).ok_or_else(|| {
            bad_request(
                501,
                "5.5.4",
                "X-Envelope-Sender is not base64 of UTF-8 text",
            )
        })?;
        let Ok((sender, "")) = parse_reverse_path(&format!("<{sender}>")) else {
            return Err(bad_request(
                553,
                "5.1.7",
                "X-Envelope-Sender: bad sender address syntax",
            ));
        };
        let mut recipients = Vec::new();
        for value in headers.get_all("x-envelope-recipient") {
            for part in value.as_bytes().split(|&b| b == b',') {
                if recipients.len() >= self.max_recipients {
                    return Err(bad_request(452, "4.5.3", "Too many recipients"));
                }
                let rcpt = decode_b64_header(part).ok_or_else(|| {
                    bad_request(
                        501,
                        "5.5.4",
                        "X-Envelope-Recipient is not base64 of UTF-8 text",
                    )
                })?;
                let Ok((rcpt, "")) = parse_forward_path(&format!("<{rcpt}>")) else {
                    return Err(bad_request(
                        553,
                        "5.1.3",
                        "X-Envelope-Recipient: bad recipient address syntax",
                    ));
                };
                recipients.push(rcpt);
            }
        }
        if recipients.is_empty() {
            return Err(bad_request(
                501,
                "5.5.4",
                "X-Envelope-Recipient header missing",
            ));
        }
        let helo = match headers.get("x-ehlo") {
            None => None,
            Some(v) => {
                let v = v.to_str().ok().map(str::trim).unwrap_or("");
                if v.is_empty() || v.len() > 255 || !v.bytes().all(|b| b.is_ascii_graphic()) {
                    return Err(bad_request(501, "5.5.4", "X-Ehlo: bad name"));
                }
                Some(v.to_string())
            }
        };
        let smtputf8 = !sender.is_ascii() || recipients.iter().any(|r| !r.is_ascii());
        Ok(HeaderEnvelope {
            sender,
            recipients,
            helo,
            smtputf8,
        })
    }
}

/// Runs the chain's `mail` hook on the sender and its `rcpt` hook on each
/// recipient, as an SMTP session would; the first refusal refuses the
/// request.
async fn check_envelope(
    checks: &ValidatorChain,
    session: &mut SessionInfo,
    envelope: &HeaderEnvelope,
) -> Result<(), Reply> {
    let mail_params = crate::smtp::MailParams::default();
    let mut reply = Reply::new(250, "2.1.0", "Sender ok");
    checks
        .mail(&mut reply, session, &envelope.sender, &mail_params)
        .await;
    if !reply.is_positive() {
        return Err(reply);
    }
    session.sender = Some(envelope.sender.clone());
    let rcpt_params = crate::smtp::RcptParams::default();
    for recipient in &envelope.recipients {
        let mut reply = Reply::new(250, "2.1.5", "Recipient ok");
        checks
            .rcpt(&mut reply, session, recipient, &rcpt_params)
            .await;
        if !reply.is_positive() {
            return Err(reply);
        }
        session.recipients.push(recipient.clone());
    }
    Ok(())
}

struct HeaderEnvelope {
    sender: String,
    recipients: Vec<String>,
    helo: Option<String>,
    smtputf8: bool,
}

/// Base64 (surrounding whitespace ignored) of UTF-8 text.
fn decode_b64_header(value: &[u8]) -> Option<String> {
    let value = value.trim_ascii();
    let bytes = BASE64.decode(value).ok()?;
    String::from_utf8(bytes).ok()
}

fn is_rfc822(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|t| t.trim().eq_ignore_ascii_case("message/rfc822"))
}

enum BodyError {
    TooLarge,
    Read,
}

/// Reads the whole body, failing as soon as it exceeds `max`.
async fn read_body(mut body: Body, max: usize) -> Result<Vec<u8>, BodyError> {
    let mut out = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|_| BodyError::Read)?;
        if let Ok(data) = frame.into_data() {
            if out.len() + data.len() > max {
                return Err(BodyError::TooLarge);
            }
            out.extend_from_slice(&data);
        }
    }
    Ok(out)
}

/// CRLF line ends: a bare LF or a bare CR becomes CRLF.
fn normalize_line_ends(message: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(message.len() + message.len() / 32);
    let mut i = 0;
    while i < message.len() {
        match message[i] {
            b'\r' => {
                out.extend_from_slice(b"\r\n");
                if message.get(i + 1) == Some(&b'\n') {
                    i += 1;
                }
            }
            b'\n' => out.extend_from_slice(b"\r\n"),
            b => out.push(b),
        }
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reply_header_is_quoted_and_ascii() {
        let cases = [
            (
                Reply::new(250, "2.6.0", "Message queued as ABC"),
                r#"250; message="2.6.0 Message queued as ABC""#,
            ),
            (
                Reply::new(451, "", "two\nlines"),
                r#"451; message="two lines""#,
            ),
            (
                Reply::new(550, "5.7.1", "say \"no\" \\ é"),
                r#"550; message="5.7.1 say \"no\" \\ ?""#,
            ),
        ];
        for (reply, want) in cases {
            assert_eq!(smtp_reply_header(&reply), want);
            assert!(HeaderValue::from_str(want).is_ok());
        }
    }

    #[test]
    fn statuses_follow_the_reply_class() {
        assert_eq!(
            status_for(&Reply::new(250, "2.6.0", "ok")),
            StatusCode::NO_CONTENT
        );
        assert_eq!(
            status_for(&Reply::new(452, "4.3.1", "full")),
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(
            status_for(&Reply::new(554, "5.6.0", "no")),
            StatusCode::INTERNAL_SERVER_ERROR
        );
    }

    #[test]
    fn line_ends_become_crlf() {
        let cases: &[(&[u8], &[u8])] = &[
            (b"a\r\nb\r\n", b"a\r\nb\r\n"),
            (b"a\nb\n", b"a\r\nb\r\n"),
            (b"a\rb\r", b"a\r\nb\r\n"),
            (b"a\r\r\nb\n\r", b"a\r\n\r\nb\r\n\r\n"),
            (b"", b""),
        ];
        for (input, want) in cases {
            assert_eq!(normalize_line_ends(input), *want, "{input:?}");
        }
    }
}
