//! The SMTP server state machine (RFC 5321 and extensions), sans-IO.
//!
//! CONTRACT (the edge driver relies on exactly this; see `edge/smtp.rs`):
//!
//! ```text
//! let mut server = Server::new(config);
//! if implicit_tls { handshake()?; server.tls_established(); }   // port 465: before the banner
//! let mut banner = server.default_banner();   // "220 host ESMTP slimta-rs" ("LMTP" in LMTP mode)
//! validators.banner(&mut banner).await;
//! server.greet(banner);                       // written to output; 421/221/5xx handling inside
//! loop {
//!     match server.step() {
//!         Step::Event(mut ev) => {             // a decision is needed
//!             validators.X(&mut ev.reply, ..).await;
//!             server.respond(ev.reply);        // MUST answer before the next step()
//!             // LMTP Message: respond(r) writes r once per recipient, or
//!             // server.respond_per_recipient(vec![r1, r2, ..]) (RCPT order)
//!         }
//!         Step::NeedInput => {                 // flush output, then read more
//!             write_all(server.output()); server.clear_output();
//!             let timeout = if server.reading_data() { data_timeout } else { command_timeout };
//!             match read(timeout) { Ok(0) => break, Ok(n) => server.receive(&buf[..n]),
//!                                   Err(timeout) => { server.timed_out(); flush; break } }
//!         }
//!         Step::StartTls => {                  // after a 220 to EventKind::StartTls
//!             write_all(server.output()); server.clear_output();   // the 220, in plaintext
//!             // drop anything the driver itself buffered; read nothing in plaintext
//!             match handshake(timeout) { Ok(tls) => { stream = tls; server.tls_established() }
//!                                        Err(_) => server.tls_failed() }   // 421 4.7.0, Close next
//!         }
//!         Step::Close => { flush output; break }
//!     }
//! }
//! ```
//!
//! Events and their default replies (the driver may replace any):
//!
//! | event | default reply | the machine applies |
//! |---|---|---|
//! | `Helo { domain, extended }` | 250 + extensions | 2xx: HELO/EHLO/LHLO done, transaction reset |
//! | `Mail { sender, params }` | `250 2.1.0` | 2xx: transaction starts |
//! | `Rcpt { recipient, params }` | `250 2.1.5` | 2xx: recipient added |
//! | `Data` | 354 (DATA) / `250 2.0.0` (first BDAT) | 354: data mode; BDAT non-2xx ends the transaction |
//! | `Message(txn)` | `250 2.6.0 Message accepted` | transaction ended; LMTP: one reply per recipient |
//! | `Quit` | `221 2.0.0 Bye` | closes |
//! | `StartTls` | `220 2.0.0 Ready to start TLS` | 220: buffered input discarded, next step is `Step::StartTls`; else plaintext goes on |
//! | `Auth(attempt)` | `535 5.7.8 Authentication credentials invalid` | 2xx: `authenticated()` is the authcid; else a bad command |
//!
//! In LMTP mode a `Helo` event is always LHLO (`extended == true`; the
//! driver knows it from [`ServerConfig::lmtp`], and [`Server::protocol`]
//! says `LMTP*` once accepted). The driver records
//! [`Server::protocol`] in the envelope when the Message event comes.
//!
//! Commands the machine answers by itself (never surfaced as events): NOOP,
//! RSET, VRFY (252), EXPN (502), HELP (214), syntax errors, sequence errors
//! (503), unknown commands (500), unknown parameters (555), line too long,
//! size declared too large (552), too many recipients (452 4.5.3), too many
//! errors (421 and close), and the AUTH exchange up to complete credentials
//! (334 continuations, 501 cancel/bad base64/malformed, 504 unknown
//! mechanism, 538 encryption required, 500 5.5.6 line too long). Events are
//! surfaced only where a validator or the queue must decide: HELO/EHLO/LHLO,
//! MAIL, RCPT, DATA (before 354 or before the first BDAT chunk is
//! accepted), the complete message, QUIT, STARTTLS and complete AUTH
//! credentials.
//!
//! Each event carries the reply the machine would send by default; the driver
//! may change it. The machine then applies the *final* reply: a 2xx to MAIL
//! starts the transaction, a 2xx to RCPT adds the recipient, a 354 to DATA
//! enters data mode (anything else does not), a reply to Message ends the
//! transaction whatever its code, and 221/421 to anything closes the session
//! after the reply is written.
//!
//! Memory stays bounded: the machine keeps at most one read buffer of
//! unprocessed input, a command line up to the command-line limit (longer
//! lines are discarded up to their CRLF and answered `500 5.5.2`), an AUTH
//! line up to 12,288 octets of response (see below), and message data up to
//! `max_size` (beyond it data is counted and discarded and the message is
//! answered `552 5.3.4`).
//!
//! How the work is split: [`command`] parses verbs,
//! arguments and parameters, [`address`](super::address) validates paths,
//! [`data`](super::data) reads DATA content, [`sasl`] runs the AUTH
//! exchange; this file owns the session (sequence, limits, events, output).
//!
//! Decisions (beyond RFC 5321 and the contract above):
//! - Command lines end only at CRLF. The sequence of a command is checked
//!   before its arguments (`MAIL FROM:junk` before EHLO gets 503, as in
//!   Postfix); BDAT is the exception, its size is parsed first because the
//!   octets that follow must be consumed whatever the answer.
//! - A BDAT line that cannot be trusted (size does not parse, bare CR/LF in
//!   the line, or a line over the command-line limit that starts with
//!   `BDAT `) gets `421 4.5.4` and the session closes: resynchronising would
//!   read the chunk as commands.
//! - BDAT: the first chunk of a transaction raises [`EventKind::Data`]; a
//!   2xx answer to it is sent after the chunk was read (for a LAST chunk the
//!   Message reply answers it instead); a non-2xx answer is sent after the
//!   chunk was read and discarded, and ends the transaction. A chunk that
//!   would take the message over `max_size` is read and discarded, answered
//!   `552 5.3.4` and ends the transaction. Out-of-sequence chunks (no
//!   EHLO, CHUNKING off, no MAIL or RCPT) are read and discarded, then
//!   answered `503 5.5.1`.
//! - HELO/EHLO reset the transaction only when answered 2xx (RFC 5321
//!   4.1.4: "if the EHLO command is acceptable"); a refused EHLO leaves the
//!   session as it was.
//! - A DATA answered with anything but 354 keeps the transaction (the client
//!   may RSET or retry); the bytes that follow are commands.
//! - The transaction ends when the Message event is raised, so
//!   [`Server::in_transaction`] is false while the driver decides on it.
//! - Protocol errors counted towards `max_bad_commands`: 500-504 and 555 the
//!   machine sends itself (unknown, bare CR/LF, invalid UTF-8, line too
//!   long, syntax, sequence, EXPN, not offered parameters), 530 and 538,
//!   and a failed AUTH whoever answered it (see above). Policy answers
//!   (452, 552, 553, 554) and the driver's other replies do not count. When the
//!   count reaches the limit, `421 4.7.0` follows the reply that reached it
//!   and the session closes. `max_bad_commands == 0` means no limit.
//! - Any banner that is not 2xx and does not close the session (221/421) is
//!   treated like 554: only QUIT is served; everything else, BDAT chunks
//!   included (read and discarded), gets `503 5.5.1 Error: no SMTP service
//!   here, only QUIT`.
//! - `RSET`, `QUIT`, `DATA` and `STARTTLS` take no argument (501); `NOOP`
//!   and `HELP` ignore theirs; HELO/EHLO/LHLO need exactly one token.
//! - STARTTLS, AUTH and LHLO are unknown commands (500) unless configured
//!   ([`ServerConfig::starttls`], [`ServerConfig::auth_mechanisms`],
//!   [`ServerConfig::lmtp`]); everything below assumes they are.
//! - STARTTLS (RFC 3207): offered in the EHLO reply only before TLS. Before
//!   EHLO (or after HELO) and during a transaction it gets `503 5.5.1`;
//!   once TLS is active it gets `503 5.5.1 Error: TLS already active` (a
//!   sequence error, counted, rather than 500: the client may simply have
//!   lost track). Answered 220, every buffered byte after the STARTTLS line
//!   is discarded, and [`Server::receive`] drops input until the handshake
//!   is over (CVE-2011-0411). [`Server::tls_established`] starts the
//!   session over: no EHLO, no transaction, no authentication (RFC 3207
//!   4.2); the error count is kept (the limit is per connection).
//! - AUTH (RFC 4954) needs EHLO/LHLO first (503), is refused once
//!   authenticated (`503 5.5.1 Already authenticated`) and inside a
//!   transaction (`503 5.5.1 AUTH not permitted during a mail
//!   transaction`); the sequence is checked before the mechanism. A
//!   mechanism not configured is `504 5.5.4 Unrecognized authentication
//!   type`. PLAIN and LOGIN are neither offered nor accepted before TLS
//!   (`538 5.7.11`) unless [`ServerConfig::auth_plaintext`]; CRAM-MD5 is
//!   offered in plaintext. If no configured mechanism is usable yet, the
//!   EHLO reply has no AUTH line.
//! - AUTH lines may be long: a line that starts with `AUTH ` (when AUTH is
//!   configured) may have up to `AUTH CRAM-MD5 ` plus 12,288 octets, and a
//!   continuation line 12,288 octets; a longer response is answered
//!   `500 5.5.6 Authentication Exchange line is too long` (the rest of the
//!   line is discarded, never stored) and ends the exchange. Whether a line
//!   gets the long limit is decided from its first five octets, so it does
//!   not depend on how the line was split into reads.
//! - Every failed AUTH counts as a bad command: the machine's own 500, 501,
//!   503, 504 and 538, and any non-2xx answer of the driver to
//!   [`EventKind::Auth`] (535, 454). After a 2xx the identity is the authcid
//!   (the authzid, if any, is for the driver to allow or refuse). The line
//!   bytes holding credentials are overwritten in the input buffer once
//!   parsed; the machine keeps no secret after raising the event.
//! - `AUTH=` on MAIL (RFC 4954 section 5): with AUTH configured, the value
//!   of a client that has not authenticated is replaced by `<>` (empty);
//!   without AUTH configured it is passed on as parsed (as before).
//! - [`ServerConfig::auth_required`]: MAIL before a successful AUTH gets
//!   `530 5.7.0 Authentication required`, counted as a bad command (it is a
//!   sequence error in all but code).
//! - LMTP (RFC 2033): HELO and EHLO get `500 5.5.1 Error: use LHLO`
//!   (counted). After the final dot and after `BDAT ... LAST`, every reply
//!   that ends the message is written once per accepted recipient: the
//!   driver's ([`Server::respond`] repeats one reply,
//!   [`Server::respond_per_recipient`] gives each its own) and the
//!   machine's own (552 too big, 554 long line, and a non-2xx answer to a
//!   first chunk that is also the LAST). A 421 is written once and closes.
//! - [`Server::protocol`]: HELO gives SMTP, EHLO ESMTP, LHLO LMTP, with `S`
//!   after TLS and `A` after AUTH (RFC 3848).
//! - Non-ASCII in a command is allowed only as valid UTF-8
//!   (`500 5.5.2 Error: invalid UTF-8 in command` otherwise); whether an
//!   address may use it is decided by SMTPUTF8 (`553 5.6.7`).
//! - After a 221/421 the rest of the input is never looked at.

use std::sync::Arc;

use memchr::memmem;

use crate::envelope::Protocol;
use crate::reply::Reply;
use crate::smtp::command::{self, BdatArgs, Offered, Verb};
pub use crate::smtp::command::{MailParams, RcptParams};
use crate::smtp::data::{Body, DataReader};
use crate::smtp::sasl::{self, AuthAttempt, Mechanism};

/// Longest AUTH command line including CRLF: `AUTH CRAM-MD5 ` (the longest
/// mechanism name) and a [`sasl::MAX_RESPONSE`] initial response.
const AUTH_LINE_MAX: usize = 5 + 8 + 1 + sasl::MAX_RESPONSE + 2;

/// Limits and offered extensions of a server.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Our name in the banner and EHLO reply.
    pub hostname: String,
    /// Maximum message size in octets, advertised in SIZE and enforced for
    /// HELO and EHLO clients alike.
    pub max_size: usize,
    /// Recipients per transaction; more get `452 4.5.3`.
    pub max_recipients: usize,
    /// Bad commands (500/501/503/504/555 class errors) before `421 4.7.0`
    /// and close.
    pub max_bad_commands: u32,
    /// Longest command line including CRLF (RFC 5321 4.5.3.1.4: 512).
    pub max_command_line: usize,
    /// Longest text line inside DATA including CRLF (RFC 5321 4.5.3.1.6:
    /// 1000); 0 disables the check.
    pub max_text_line: usize,
    /// Offer PIPELINING (RFC 2920).
    pub pipelining: bool,
    /// Offer 8BITMIME (RFC 6152).
    pub eightbitmime: bool,
    /// Offer SMTPUTF8 (RFC 6531).
    pub smtputf8: bool,
    /// Offer CHUNKING / BDAT (RFC 3030).
    pub chunking: bool,
    /// Offer STARTTLS (RFC 3207) while the session is not encrypted. The
    /// driver must then answer [`Step::StartTls`] with a handshake.
    pub starttls: bool,
    /// SASL mechanisms offered with AUTH (RFC 4954), in this order. Empty:
    /// AUTH is neither offered nor recognised (500).
    pub auth_mechanisms: Vec<Mechanism>,
    /// Offer and accept PLAIN and LOGIN before TLS. Off: they are left out
    /// of the EHLO reply and refused with `538 5.7.11` until STARTTLS.
    pub auth_plaintext: bool,
    /// Refuse MAIL with `530 5.7.0 Authentication required` until AUTH
    /// succeeded.
    pub auth_required: bool,
    /// Speak LMTP (RFC 2033): LHLO instead of HELO/EHLO, and one reply per
    /// accepted recipient after the message.
    pub lmtp: bool,
}

impl ServerConfig {
    /// Defaults of an operator-friendly server named `hostname`: 10 MiB,
    /// 100 recipients, 20 errors, 512/1000 line limits, every extension on
    /// except the ones the driver must back up (STARTTLS, AUTH) and LMTP.
    pub fn new(hostname: impl Into<String>) -> Self {
        Self {
            hostname: hostname.into(),
            max_size: 10 * 1024 * 1024,
            max_recipients: 100,
            max_bad_commands: 20,
            max_command_line: 512,
            max_text_line: 1000,
            pipelining: true,
            eightbitmime: true,
            smtputf8: true,
            chunking: true,
            starttls: false,
            auth_mechanisms: Vec::new(),
            auth_plaintext: false,
            auth_required: false,
            lmtp: false,
        }
    }
}

/// A completed mail transaction.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Transaction {
    /// The reverse path (empty for `<>`).
    pub sender: String,
    /// Accepted MAIL parameters.
    pub mail_params: MailParams,
    /// Accepted forward paths, in order.
    pub recipients: Vec<String>,
    /// The message bytes (dot-unstuffed for DATA; verbatim for BDAT).
    pub data: Vec<u8>,
}

/// What the machine needs a decision on.
#[derive(Debug)]
pub enum EventKind {
    /// HELO (`extended == false`) or EHLO; in LMTP mode
    /// ([`ServerConfig::lmtp`]) always LHLO, with `extended == true`. The
    /// default reply of EHLO and LHLO lists the extensions.
    Helo {
        /// The argument.
        domain: String,
        /// EHLO rather than HELO.
        extended: bool,
    },
    /// MAIL FROM, syntactically valid and in sequence.
    Mail {
        /// The reverse path; empty for `<>`.
        sender: String,
        /// Parsed parameters.
        params: MailParams,
    },
    /// RCPT TO, syntactically valid, in sequence and within the limit.
    Rcpt {
        /// The forward path (source routes dropped; `postmaster` kept as is).
        recipient: String,
        /// Parsed parameters.
        params: RcptParams,
    },
    /// DATA (default reply 354) or the first BDAT of a transaction (default
    /// reply 250 for that chunk; a non-2xx reply fails the transaction).
    Data,
    /// The message is complete (final dot or BDAT LAST). Default reply:
    /// `250 2.6.0 Message accepted`; the driver normally replaces it with
    /// the queue's answer.
    Message(Box<Transaction>),
    /// QUIT (default reply `221 2.0.0 Bye`).
    Quit,
    /// STARTTLS, in sequence and offered (default reply
    /// `220 2.0.0 Ready to start TLS`). Answered 220, the machine discards
    /// all buffered input and the next [`Server::step`] is
    /// [`Step::StartTls`]; any other answer (`454 4.7.0 TLS not
    /// available`) keeps the session in plaintext.
    StartTls,
    /// AUTH credentials are complete (default reply `535 5.7.8
    /// Authentication credentials invalid`). The driver verifies them and
    /// answers `235 2.7.0 Authentication successful` on success; a 2xx
    /// records [`AuthAttempt::authcid`] as [`Server::authenticated`], any
    /// other answer counts as a bad command.
    Auth(AuthAttempt),
}

/// An event with the reply the machine proposes.
#[derive(Debug)]
pub struct Event {
    /// What happened.
    pub kind: EventKind,
    /// The reply that will be sent unless the driver changes it.
    pub reply: Reply,
}

/// What the driver should do next.
#[derive(Debug)]
pub enum Step {
    /// Decide, then call [`Server::respond`].
    Event(Event),
    /// Flush [`Server::output`], then feed more bytes with [`Server::receive`].
    NeedInput,
    /// Flush [`Server::output`] and close the connection.
    Close,
    /// STARTTLS was accepted: flush [`Server::output`], do the TLS
    /// handshake, then call [`Server::tls_established`] or
    /// [`Server::tls_failed`]. Until then every `step()` returns this.
    StartTls,
}

/// One SMTP server session.
#[derive(Debug)]
pub struct Server {
    config: Arc<ServerConfig>,
    /// Received, unprocessed input starts at `pos`.
    input: Vec<u8>,
    pos: usize,
    output: Vec<u8>,
    mode: Mode,
    pending: Option<Pending>,
    hello: Hello,
    /// A non-220 banner: only QUIT is served.
    rejected: bool,
    txn: Option<Txn>,
    errors: u32,
    /// TLS is active (after STARTTLS or implicit TLS).
    tls: bool,
    /// The authentication identity after a successful AUTH.
    authenticated: Option<String>,
}

/// What the input is currently read as.
#[derive(Debug)]
enum Mode {
    Command,
    /// An over-long command line is skipped up to its CRLF.
    DiscardLine {
        after_cr: bool,
        /// The line is part of an AUTH exchange (`500 5.5.6`).
        auth: bool,
    },
    Data(DataReader),
    Chunk(Chunk),
    /// An AUTH exchange waits for the client's next line.
    Auth(sasl::Exchange),
    /// STARTTLS was accepted; the driver does the handshake.
    StartTls,
    Closed,
}

/// A BDAT chunk being read.
#[derive(Debug)]
struct Chunk {
    remaining: u64,
    /// Keep the octets (false: count and drop them).
    store: bool,
    after: AfterChunk,
}

/// What answers a chunk once all its octets were read.
#[derive(Debug)]
enum AfterChunk {
    /// `250 2.0.0 {n} octets received`.
    Ack(u64),
    /// The LAST chunk: the Message event.
    Message,
    /// A reply decided before the chunk was read.
    Reply {
        reply: Reply,
        /// Counts as a protocol error.
        error: bool,
        /// Ends the transaction.
        reset: bool,
        /// How many times it is written (LMTP answers a LAST chunk once
        /// per recipient; 1 otherwise).
        copies: usize,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Hello {
    None,
    Helo,
    Ehlo,
}

/// The transaction after an accepted MAIL.
#[derive(Debug)]
struct Txn {
    sender: String,
    params: MailParams,
    recipients: Vec<String>,
    body: Body,
    /// A BDAT chunk was accepted (DATA is no longer allowed).
    bdat: bool,
}

/// The event awaiting [`Server::respond`].
#[derive(Debug)]
enum Pending {
    Helo {
        extended: bool,
    },
    Mail {
        sender: String,
        params: MailParams,
    },
    Rcpt {
        recipient: String,
    },
    Data,
    Bdat {
        size: u64,
        last: bool,
    },
    /// `recipients` replies are due in LMTP mode.
    Message {
        recipients: usize,
    },
    Quit,
    StartTls,
    Auth {
        identity: String,
    },
}

/// Result of one unit of work inside [`Server::step`].
enum Progress {
    Continue,
    NeedInput,
    Event(Event),
}

impl Server {
    /// A new session, before the banner.
    pub fn new(config: Arc<ServerConfig>) -> Self {
        Self {
            config,
            input: Vec::new(),
            pos: 0,
            output: Vec::new(),
            mode: Mode::Command,
            pending: None,
            hello: Hello::None,
            rejected: false,
            txn: None,
            errors: 0,
            tls: false,
            authenticated: None,
        }
    }

    /// The configuration.
    pub fn config(&self) -> &ServerConfig {
        &self.config
    }

    /// `220 <hostname> ESMTP slimta-rs` (`LMTP` in LMTP mode).
    pub fn default_banner(&self) -> Reply {
        let protocol = if self.config.lmtp { "LMTP" } else { "ESMTP" };
        Reply::new(
            220,
            "",
            format!("{} {protocol} slimta-rs", self.config.hostname),
        )
    }

    /// Writes the banner. 221/421 close the session; a 554 banner keeps it
    /// open but answers every command but QUIT with `503 5.5.1` (RFC 5321
    /// 3.1). Any other non-2xx banner is treated like 554.
    #[allow(
        clippy::needless_pass_by_value,
        reason = "signature fixed by the driver contract"
    )]
    pub fn greet(&mut self, banner: Reply) {
        if !banner.is_positive() {
            self.rejected = true;
        }
        self.write(&banner);
    }

    /// Appends received bytes. Call only after [`Step::NeedInput`]. Bytes
    /// received while a STARTTLS handshake is due are discarded.
    pub fn receive(&mut self, input: &[u8]) {
        if matches!(self.mode, Mode::Closed | Mode::StartTls) {
            return;
        }
        // Only a partial command line (< max_command_line) can be left over,
        // so this move is small and the buffer stays one read long.
        self.input.drain(..self.pos);
        self.pos = 0;
        self.input.extend_from_slice(input);
    }

    /// Processes buffered input up to the next decision.
    ///
    /// # Panics
    ///
    /// If the last [`Step::Event`] was not answered with
    /// [`Server::respond`].
    pub fn step(&mut self) -> Step {
        assert!(
            self.pending.is_none(),
            "Server::step before respond() answered the last event"
        );
        loop {
            let progress = match self.mode {
                Mode::Closed => return Step::Close,
                Mode::StartTls => return Step::StartTls,
                Mode::Command => self.step_command(),
                Mode::Auth(_) => self.step_auth(),
                Mode::DiscardLine { .. } => self.step_discard(),
                Mode::Data(_) => self.step_data(),
                Mode::Chunk(_) => self.step_chunk(),
            };
            match progress {
                Progress::Continue => {}
                Progress::NeedInput => return Step::NeedInput,
                Progress::Event(event) => return Step::Event(event),
            }
        }
    }

    /// Answers the last [`Step::Event`]. In LMTP mode a reply to
    /// [`EventKind::Message`] is written once per accepted recipient (see
    /// [`Server::respond_per_recipient`] for different replies).
    ///
    /// # Panics
    ///
    /// If there is no unanswered event.
    pub fn respond(&mut self, reply: Reply) {
        let pending = self
            .pending
            .take()
            .expect("Server::respond without an event to answer");
        if reply.closes_session() {
            if matches!(pending, Pending::Message { .. }) {
                self.txn = None;
            }
            self.write(&reply);
            return;
        }
        match pending {
            Pending::Helo { extended } => {
                if reply.is_positive() {
                    self.hello = if extended { Hello::Ehlo } else { Hello::Helo };
                    self.txn = None;
                }
                self.write(&reply);
            }
            Pending::Mail { sender, params } => {
                if reply.is_positive() {
                    self.txn = Some(Txn {
                        sender,
                        params,
                        recipients: Vec::new(),
                        body: Body::new(self.config.max_size),
                        bdat: false,
                    });
                }
                self.write(&reply);
            }
            Pending::Rcpt { recipient } => {
                if reply.is_positive()
                    && let Some(txn) = self.txn.as_mut()
                {
                    txn.recipients.push(recipient);
                }
                self.write(&reply);
            }
            Pending::Data => {
                if reply.code() == 354 {
                    self.mode = Mode::Data(DataReader::new(self.config.max_text_line));
                }
                self.write(&reply);
            }
            Pending::Bdat { size, last } => {
                let accepted = reply.is_positive();
                if accepted && let Some(txn) = self.txn.as_mut() {
                    txn.bdat = true;
                }
                let copies = if last { self.final_reply_copies() } else { 1 };
                let after = match (accepted, last) {
                    (true, true) => AfterChunk::Message,
                    (true, false) => AfterChunk::Reply {
                        reply,
                        error: false,
                        reset: false,
                        copies: 1,
                    },
                    (false, _) => AfterChunk::Reply {
                        reply,
                        error: false,
                        reset: true,
                        copies,
                    },
                };
                self.mode = Mode::Chunk(Chunk {
                    remaining: size,
                    store: accepted,
                    after,
                });
            }
            Pending::Message { recipients } => {
                self.txn = None;
                let copies = if self.config.lmtp { recipients } else { 1 };
                for _ in 0..copies {
                    self.write(&reply);
                }
            }
            Pending::Quit => self.write(&reply),
            Pending::StartTls => {
                self.write(&reply);
                if reply.code() == 220 {
                    // CVE-2011-0411: nothing sent in plaintext after the
                    // command may be answered inside TLS.
                    self.input = Vec::new();
                    self.pos = 0;
                    self.mode = Mode::StartTls;
                }
            }
            Pending::Auth { identity } => {
                if reply.is_positive() {
                    self.authenticated = Some(identity);
                    self.write(&reply);
                } else {
                    self.error(&reply);
                }
            }
        }
    }

    /// Answers a Message event in LMTP mode with one reply per accepted
    /// recipient, in RCPT order (RFC 2033 section 4.2).
    ///
    /// # Panics
    ///
    /// If the unanswered event is not [`EventKind::Message`], if the session
    /// is not in LMTP mode, or if `replies` does not have one reply per
    /// recipient of the transaction.
    pub fn respond_per_recipient(&mut self, replies: Vec<Reply>) {
        let Some(Pending::Message { recipients }) = self.pending else {
            panic!("Server::respond_per_recipient without a Message event to answer");
        };
        assert!(
            self.config.lmtp,
            "Server::respond_per_recipient outside LMTP mode"
        );
        assert_eq!(
            replies.len(),
            recipients,
            "Server::respond_per_recipient needs one reply per recipient"
        );
        self.pending = None;
        self.txn = None;
        for reply in replies {
            self.write(&reply);
        }
    }

    /// The TLS handshake after [`Step::StartTls`] succeeded: the session
    /// starts over as after the banner (RFC 3207 section 4.2: no HELO/EHLO,
    /// no transaction, no authentication; the error count is kept), with
    /// STARTTLS no longer offered. For implicit TLS (port 465), call it
    /// before [`Server::greet`].
    pub fn tls_established(&mut self) {
        if self.is_closed() {
            return;
        }
        self.tls = true;
        self.hello = Hello::None;
        self.txn = None;
        self.authenticated = None;
        self.pending = None;
        self.input = Vec::new();
        self.pos = 0;
        self.mode = Mode::Command;
    }

    /// The TLS handshake after [`Step::StartTls`] failed: writes
    /// `421 4.7.0 <host> Error: TLS handshake failed` and closes.
    pub fn tls_failed(&mut self) {
        let text = format!("{} Error: TLS handshake failed", self.config.hostname);
        if matches!(self.mode, Mode::StartTls) {
            self.mode = Mode::Command;
        }
        self.close_with(&Reply::new(421, "4.7.0", text));
    }

    /// Whether the session is encrypted ([`Server::tls_established`] was
    /// called).
    pub fn is_tls(&self) -> bool {
        self.tls
    }

    /// The authentication identity (the authcid) after a successful AUTH.
    pub fn authenticated(&self) -> Option<&str> {
        self.authenticated.as_deref()
    }

    /// The protocol as written in `Received: ... with` (RFC 3848): LMTP in
    /// LMTP mode, SMTP until an EHLO was accepted, ESMTP after it, with `S`
    /// for TLS and `A` for AUTH.
    pub fn protocol(&self) -> Protocol {
        let (tls, auth) = (self.tls, self.authenticated.is_some());
        if self.config.lmtp {
            match (tls, auth) {
                (false, false) => Protocol::Lmtp,
                (true, false) => Protocol::Lmtps,
                (false, true) => Protocol::Lmtpa,
                (true, true) => Protocol::Lmtpsa,
            }
        } else if self.hello == Hello::Ehlo {
            match (tls, auth) {
                (false, false) => Protocol::Esmtp,
                (true, false) => Protocol::Esmtps,
                (false, true) => Protocol::Esmtpa,
                (true, true) => Protocol::Esmtpsa,
            }
        } else {
            Protocol::Smtp
        }
    }

    /// Bytes to send to the client.
    pub fn output(&self) -> &[u8] {
        &self.output
    }

    /// Forgets the output after it was sent.
    pub fn clear_output(&mut self) {
        self.output.clear();
    }

    /// Whether the next input is message data (DATA or a BDAT chunk), so the
    /// driver applies the data timeout instead of the command timeout.
    pub fn reading_data(&self) -> bool {
        matches!(self.mode, Mode::Data(_) | Mode::Chunk(_))
    }

    /// The driver's read timed out: writes `421 4.4.2 <host> Error: timeout
    /// exceeded` and closes.
    pub fn timed_out(&mut self) {
        let text = format!("{} Error: timeout exceeded", self.config.hostname);
        self.close_with(&Reply::new(421, "4.4.2", text));
    }

    /// The server is stopping: writes `421 4.3.2 <host> Service shutting
    /// down` and closes (call only while waiting for a command).
    pub fn shutting_down(&mut self) {
        let text = format!("{} Service shutting down", self.config.hostname);
        self.close_with(&Reply::new(421, "4.3.2", text));
    }

    /// Whether a transaction (MAIL accepted) is under way. It ends when the
    /// Message event is raised, before the driver answers it.
    pub fn in_transaction(&self) -> bool {
        self.txn.is_some()
    }

    /// Whether the session is over ([`Step::Close`] is all that is left).
    pub fn is_closed(&self) -> bool {
        matches!(self.mode, Mode::Closed)
    }

    /// Protocol errors counted so far (see [`ServerConfig::max_bad_commands`]).
    pub fn error_count(&self) -> u32 {
        self.errors
    }

    // ----- output -----

    fn write(&mut self, reply: &Reply) {
        if matches!(self.mode, Mode::Closed) {
            return;
        }
        reply.render_into(&mut self.output);
        if reply.closes_session() {
            self.mode = Mode::Closed;
            self.pending = None;
            // Whatever else the client sent is never looked at.
            self.input = Vec::new();
            self.pos = 0;
        }
    }

    fn close_with(&mut self, reply: &Reply) {
        debug_assert!(reply.closes_session());
        self.write(reply);
    }

    /// Writes a protocol-error reply and enforces the error limit.
    fn error(&mut self, reply: &Reply) -> Progress {
        self.write(reply);
        self.errors = self.errors.saturating_add(1);
        let max = self.config.max_bad_commands;
        if max != 0 && self.errors >= max {
            let text = format!("{} Error: too many errors", self.config.hostname);
            self.close_with(&Reply::new(421, "4.7.0", text));
        }
        Progress::Continue
    }

    fn sequence(&mut self, what: &str) -> Progress {
        self.error(&Reply::new(503, "5.5.1", format!("Error: {what}")))
    }

    fn event(&mut self, kind: EventKind, reply: Reply, pending: Pending) -> Progress {
        self.pending = Some(pending);
        Progress::Event(Event { kind, reply })
    }

    // ----- input modes -----

    fn step_command(&mut self) -> Progress {
        let avail = &self.input[self.pos..];
        if avail.is_empty() {
            self.input.clear();
            self.pos = 0;
            return Progress::NeedInput;
        }
        let prefix = &avail[..5.min(avail.len())];
        // Decided from the line's first octets only, so the answer does not
        // depend on how the line was split into reads.
        let auth_line = !self.config.auth_mechanisms.is_empty() && command::looks_like_auth(prefix);
        let mut max = self.config.max_command_line.max(3);
        if auth_line {
            max = max.max(AUTH_LINE_MAX);
        }
        let window = &avail[..avail.len().min(max)];
        if let Some(i) = memmem::find(window, b"\r\n") {
            let start = self.pos;
            self.pos += i + 2;
            // The line is borrowed from `input` while `self` changes; the
            // handlers never touch `input`.
            let mut input = std::mem::take(&mut self.input);
            let progress = self.handle_line(&input[start..start + i]);
            if auth_line {
                // An initial response holds credentials: keep them no longer.
                input[start..start + i].fill(0);
            }
            if !matches!(self.mode, Mode::Closed) {
                self.input = input;
            }
            return progress;
        }
        if avail.len() < max {
            return Progress::NeedInput;
        }
        if command::looks_like_bdat(prefix) {
            return self.bad_bdat();
        }
        // Keep the last octet of the window: it may be the CR of the CRLF.
        self.pos += max - 1;
        self.mode = Mode::DiscardLine {
            after_cr: false,
            auth: auth_line,
        };
        Progress::Continue
    }

    /// A line of an AUTH exchange: a response, or `*`.
    fn step_auth(&mut self) -> Progress {
        let avail = &self.input[self.pos..];
        if avail.is_empty() {
            self.input.clear();
            self.pos = 0;
            return Progress::NeedInput;
        }
        let max = sasl::MAX_RESPONSE + 2;
        let window = &avail[..avail.len().min(max)];
        if let Some(i) = memmem::find(window, b"\r\n") {
            let start = self.pos;
            self.pos += i + 2;
            let Mode::Auth(exchange) = std::mem::replace(&mut self.mode, Mode::Command) else {
                unreachable!()
            };
            let line = &mut self.input[start..start + i];
            let outcome = sasl::respond(exchange, line);
            line.fill(0);
            return self.auth_outcome(outcome);
        }
        if avail.len() < max {
            return Progress::NeedInput;
        }
        // Too long: the exchange ends; the rest of the line is skipped.
        self.pos += max - 1;
        self.mode = Mode::DiscardLine {
            after_cr: false,
            auth: true,
        };
        Progress::Continue
    }

    fn step_discard(&mut self) -> Progress {
        let Mode::DiscardLine { after_cr, auth } = &mut self.mode else {
            unreachable!()
        };
        let avail = &self.input[self.pos..];
        let end = if *after_cr && avail.first() == Some(&b'\n') {
            Some(1)
        } else {
            memmem::find(avail, b"\r\n").map(|i| i + 2)
        };
        match end {
            Some(n) => {
                self.pos += n;
                let auth = *auth;
                self.mode = Mode::Command;
                if auth {
                    self.error(&auth_line_too_long())
                } else {
                    self.error(&Reply::new(500, "5.5.2", "Error: line too long"))
                }
            }
            None => {
                if !avail.is_empty() {
                    *after_cr = avail.last() == Some(&b'\r');
                }
                self.input.clear();
                self.pos = 0;
                Progress::NeedInput
            }
        }
    }

    fn step_data(&mut self) -> Progress {
        let (Mode::Data(reader), Some(txn)) = (&mut self.mode, self.txn.as_mut()) else {
            self.mode = Mode::Command;
            return Progress::Continue;
        };
        match reader.feed(&self.input[self.pos..], &mut txn.body) {
            None => {
                self.input.clear();
                self.pos = 0;
                Progress::NeedInput
            }
            Some(n) => {
                self.pos += n;
                let long_line = reader.long_line();
                self.mode = Mode::Command;
                self.finish_message(long_line)
            }
        }
    }

    fn step_chunk(&mut self) -> Progress {
        let Mode::Chunk(chunk) = &mut self.mode else {
            unreachable!()
        };
        if chunk.remaining > 0 {
            let avail = &self.input[self.pos..];
            if avail.is_empty() {
                self.input.clear();
                self.pos = 0;
                return Progress::NeedInput;
            }
            let n = usize::try_from(chunk.remaining).map_or(avail.len(), |r| r.min(avail.len()));
            if chunk.store
                && let Some(txn) = self.txn.as_mut()
            {
                txn.body.push(&avail[..n]);
            }
            self.pos += n;
            chunk.remaining -= n as u64;
            return Progress::Continue;
        }
        let Mode::Chunk(chunk) = std::mem::replace(&mut self.mode, Mode::Command) else {
            unreachable!()
        };
        match chunk.after {
            AfterChunk::Ack(n) => {
                self.write(&Reply::new(250, "2.0.0", format!("{n} octets received")));
                Progress::Continue
            }
            AfterChunk::Message => self.finish_message(false),
            AfterChunk::Reply {
                reply,
                error,
                reset,
                copies,
            } => {
                if reset {
                    self.txn = None;
                }
                if error {
                    self.error(&reply)
                } else {
                    for _ in 0..copies {
                        self.write(&reply);
                    }
                    Progress::Continue
                }
            }
        }
    }

    /// The end of DATA or the LAST chunk: refuse, or raise Message.
    fn finish_message(&mut self, long_line: bool) -> Progress {
        let copies = self.final_reply_copies();
        let Some(mut txn) = self.txn.take() else {
            return Progress::Continue;
        };
        let refusal = if txn.body.exceeded() {
            Some(too_big())
        } else if long_line {
            let text = format!(
                "Message contains a line longer than {} octets",
                self.config.max_text_line
            );
            Some(Reply::new(554, "5.6.0", text))
        } else {
            None
        };
        if let Some(reply) = refusal {
            for _ in 0..copies {
                self.write(&reply);
            }
            return Progress::Continue;
        }
        let recipients = txn.recipients.len();
        let transaction = Transaction {
            data: txn.body.take(),
            sender: txn.sender,
            mail_params: txn.params,
            recipients: txn.recipients,
        };
        let reply = Reply::new(250, "2.6.0", "Message accepted");
        self.event(
            EventKind::Message(Box::new(transaction)),
            reply,
            Pending::Message { recipients },
        )
    }

    /// Replies owed for the end of the message: one per accepted recipient
    /// in LMTP mode (RFC 2033 section 4.2), one otherwise.
    fn final_reply_copies(&self) -> usize {
        match &self.txn {
            Some(txn) if self.config.lmtp => txn.recipients.len().max(1),
            _ => 1,
        }
    }

    /// Continues, completes or fails an AUTH exchange.
    fn auth_outcome(&mut self, outcome: sasl::Outcome) -> Progress {
        match outcome {
            sasl::Outcome::Continue(exchange, reply) => {
                self.write(&reply);
                self.mode = Mode::Auth(exchange);
                Progress::Continue
            }
            sasl::Outcome::Done(attempt) => {
                let identity = attempt.authcid.clone();
                let reply = Reply::new(535, "5.7.8", "Authentication credentials invalid");
                self.event(EventKind::Auth(attempt), reply, Pending::Auth { identity })
            }
            sasl::Outcome::Failed(reply) => self.error(&reply),
        }
    }

    /// A BDAT line we cannot trust: its chunk would be read as commands.
    fn bad_bdat(&mut self) -> Progress {
        let text = format!(
            "{} Error: bad BDAT syntax, closing connection",
            self.config.hostname
        );
        self.close_with(&Reply::new(421, "4.5.4", text));
        Progress::Continue
    }

    // ----- commands -----

    fn handle_line(&mut self, line: &[u8]) -> Progress {
        let (verb, arg) = command::split_line(line);
        let bare = memchr::memchr2(b'\r', b'\n', line).is_some();
        if verb == Verb::Bdat {
            return match command::parse_bdat(arg) {
                Some(args) if !bare => self.bdat(args),
                _ => self.bad_bdat(),
            };
        }
        if bare {
            return self.error(&Reply::new(
                500,
                "5.5.2",
                "Error: bare <CR> or <LF> in command",
            ));
        }
        if std::str::from_utf8(line).is_err() {
            return self.error(&Reply::new(500, "5.5.2", "Error: invalid UTF-8 in command"));
        }
        // The whole line is UTF-8 and was split at an ASCII space.
        let arg = arg.map(|a| std::str::from_utf8(a).unwrap_or_default());
        if self.rejected && verb != Verb::Quit {
            return self.sequence("no SMTP service here, only QUIT");
        }
        match verb {
            Verb::Helo | Verb::Ehlo if self.config.lmtp => {
                self.error(&Reply::new(500, "5.5.1", "Error: use LHLO"))
            }
            Verb::Helo | Verb::Ehlo => self.helo(verb, arg),
            Verb::Lhlo if self.config.lmtp => self.helo(verb, arg),
            Verb::Starttls if self.config.starttls => self.starttls(arg),
            Verb::Auth if !self.config.auth_mechanisms.is_empty() => self.auth(arg),
            Verb::Mail => self.mail(arg),
            Verb::Rcpt => self.rcpt(arg),
            Verb::Data => self.data(arg),
            Verb::Rset => {
                if has_arg(arg) {
                    return self.error(&usage("RSET"));
                }
                self.txn = None;
                self.write(&ok());
                Progress::Continue
            }
            Verb::Noop => {
                self.write(&ok());
                Progress::Continue
            }
            Verb::Quit => {
                if has_arg(arg) {
                    return self.error(&usage("QUIT"));
                }
                self.event(
                    EventKind::Quit,
                    Reply::new(221, "2.0.0", "Bye"),
                    Pending::Quit,
                )
            }
            Verb::Vrfy => {
                if !has_arg(arg) {
                    return self.error(&usage("VRFY address"));
                }
                let text = "Cannot VRFY user, but will accept message and attempt delivery";
                self.write(&Reply::new(252, "2.5.0", text));
                Progress::Continue
            }
            Verb::Expn => self.error(&Reply::new(502, "5.5.1", "EXPN not supported")),
            Verb::Help => {
                let c = &self.config;
                let hello = if c.lmtp { "LHLO" } else { "HELO EHLO" };
                let starttls = if c.starttls { " STARTTLS" } else { "" };
                let auth = if c.auth_mechanisms.is_empty() {
                    ""
                } else {
                    " AUTH"
                };
                let bdat = if c.chunking { " BDAT" } else { "" };
                let text = format!(
                    "Commands: {hello}{starttls}{auth} MAIL RCPT DATA{bdat} RSET NOOP QUIT VRFY HELP"
                );
                self.write(&Reply::new(214, "2.0.0", text));
                Progress::Continue
            }
            Verb::Unknown | Verb::Bdat | Verb::Lhlo | Verb::Starttls | Verb::Auth => {
                self.error(&Reply::new(500, "5.5.2", "Error: command not recognized"))
            }
        }
    }

    fn helo(&mut self, verb: Verb, arg: Option<&str>) -> Progress {
        let extended = verb != Verb::Helo;
        let Some(domain) = command::parse_helo_arg(arg) else {
            return self.error(&usage(match verb {
                Verb::Helo => "HELO hostname",
                Verb::Lhlo => "LHLO hostname",
                _ => "EHLO hostname",
            }));
        };
        let c = &self.config;
        let reply = if extended {
            let mut text = c.hostname.clone();
            if c.pipelining {
                text.push_str("\nPIPELINING");
            }
            text.push_str(&format!("\nSIZE {}", c.max_size));
            if c.eightbitmime {
                text.push_str("\n8BITMIME");
            }
            if c.smtputf8 {
                text.push_str("\nSMTPUTF8");
            }
            if c.chunking {
                text.push_str("\nCHUNKING");
            }
            if c.starttls && !self.tls {
                text.push_str("\nSTARTTLS");
            }
            let mut auth = String::new();
            for m in &c.auth_mechanisms {
                if self.mechanism_allowed(*m) {
                    auth.push(' ');
                    auth.push_str(m.name());
                }
            }
            if !auth.is_empty() {
                text.push_str("\nAUTH");
                text.push_str(&auth);
            }
            text.push_str("\nENHANCEDSTATUSCODES");
            Reply::new(250, "", text)
        } else {
            Reply::new(250, "", c.hostname.clone())
        };
        let kind = EventKind::Helo {
            domain: domain.to_owned(),
            extended,
        };
        self.event(kind, reply, Pending::Helo { extended })
    }

    fn mail(&mut self, arg: Option<&str>) -> Progress {
        if self.hello == Hello::None {
            return self.sequence(self.hello_first());
        }
        if self.config.auth_required && self.authenticated.is_none() {
            return self.error(&Reply::new(530, "5.7.0", "Authentication required"));
        }
        if self.txn.is_some() {
            return self.sequence("nested MAIL command");
        }
        let offered = Offered {
            extended: self.hello == Hello::Ehlo,
            max_size: self.config.max_size,
            eightbitmime: self.config.eightbitmime,
            smtputf8: self.config.smtputf8,
        };
        match command::parse_mail(arg, offered) {
            Ok((sender, mut params)) => {
                if !self.config.auth_mechanisms.is_empty()
                    && self.authenticated.is_none()
                    && params.auth.is_some()
                {
                    // RFC 4954 section 5: an unauthenticated client's
                    // AUTH= is not trusted and is kept as `AUTH=<>`.
                    params.auth = Some(String::new());
                }
                let reply = Reply::new(250, "2.1.0", format!("Sender <{sender}> ok"));
                let kind = EventKind::Mail {
                    sender: sender.clone(),
                    params: params.clone(),
                };
                self.event(kind, reply, Pending::Mail { sender, params })
            }
            Err(reply) => self.refuse(&reply),
        }
    }

    fn rcpt(&mut self, arg: Option<&str>) -> Progress {
        if self.hello == Hello::None {
            return self.sequence(self.hello_first());
        }
        let Some(txn) = self.txn.as_ref() else {
            return self.sequence("need MAIL command");
        };
        let full = txn.recipients.len() >= self.config.max_recipients;
        match command::parse_rcpt(arg, txn.params.smtputf8) {
            Ok(_) if full => {
                self.write(&Reply::new(452, "4.5.3", "Error: too many recipients"));
                Progress::Continue
            }
            Ok((recipient, params)) => {
                let reply = Reply::new(250, "2.1.5", format!("Recipient <{recipient}> ok"));
                let kind = EventKind::Rcpt {
                    recipient: recipient.clone(),
                    params,
                };
                self.event(kind, reply, Pending::Rcpt { recipient })
            }
            Err(reply) => self.refuse(&reply),
        }
    }

    fn data(&mut self, arg: Option<&str>) -> Progress {
        if self.hello == Hello::None {
            return self.sequence(self.hello_first());
        }
        match &self.txn {
            None => return self.sequence("need MAIL command"),
            Some(t) if t.recipients.is_empty() => return self.sequence("need RCPT command"),
            Some(t) if t.bdat => return self.sequence("DATA not allowed during BDAT transaction"),
            Some(_) => {}
        }
        if has_arg(arg) {
            return self.error(&usage("DATA"));
        }
        let reply = Reply::new(354, "", "End data with <CR><LF>.<CR><LF>");
        self.event(EventKind::Data, reply, Pending::Data)
    }

    fn bdat(&mut self, args: BdatArgs) -> Progress {
        let BdatArgs { size, last } = args;
        let refusal = if self.rejected {
            Some("no SMTP service here, only QUIT")
        } else if !self.config.chunking || self.hello == Hello::Helo {
            Some("CHUNKING not offered")
        } else if self.hello == Hello::None {
            Some(self.hello_first())
        } else {
            match &self.txn {
                None => Some("need MAIL command"),
                Some(t) if t.recipients.is_empty() => Some("need RCPT command"),
                Some(_) => None,
            }
        };
        if let Some(what) = refusal {
            // Read the chunk anyway so it is never taken for commands.
            self.mode = Mode::Chunk(Chunk {
                remaining: size,
                store: false,
                after: AfterChunk::Reply {
                    reply: Reply::new(503, "5.5.1", format!("Error: {what}")),
                    error: true,
                    reset: false,
                    copies: 1,
                },
            });
            return Progress::Continue;
        }
        let Some(txn) = self.txn.as_ref() else {
            unreachable!("checked above")
        };
        if txn.body.size().saturating_add(size) > self.config.max_size as u64 {
            let copies = if last { self.final_reply_copies() } else { 1 };
            self.mode = Mode::Chunk(Chunk {
                remaining: size,
                store: false,
                after: AfterChunk::Reply {
                    reply: too_big(),
                    error: false,
                    reset: true,
                    copies,
                },
            });
            return Progress::Continue;
        }
        if !txn.bdat {
            let reply = Reply::new(250, "2.0.0", format!("{size} octets received"));
            return self.event(EventKind::Data, reply, Pending::Bdat { size, last });
        }
        self.mode = Mode::Chunk(Chunk {
            remaining: size,
            store: true,
            after: if last {
                AfterChunk::Message
            } else {
                AfterChunk::Ack(size)
            },
        });
        Progress::Continue
    }

    fn starttls(&mut self, arg: Option<&str>) -> Progress {
        if self.tls {
            return self.sequence("TLS already active");
        }
        if self.hello != Hello::Ehlo {
            return self.sequence(self.ehlo_first());
        }
        if self.txn.is_some() {
            return self.sequence("STARTTLS not permitted during a mail transaction");
        }
        if has_arg(arg) {
            return self.error(&usage("STARTTLS"));
        }
        let reply = Reply::new(220, "2.0.0", "Ready to start TLS");
        self.event(EventKind::StartTls, reply, Pending::StartTls)
    }

    fn auth(&mut self, arg: Option<&str>) -> Progress {
        if self.hello != Hello::Ehlo {
            return self.sequence(self.ehlo_first());
        }
        if self.authenticated.is_some() {
            return self.error(&Reply::new(503, "5.5.1", "Already authenticated"));
        }
        if self.txn.is_some() {
            return self.error(&Reply::new(
                503,
                "5.5.1",
                "AUTH not permitted during a mail transaction",
            ));
        }
        let Some((name, initial)) = command::parse_auth(arg) else {
            return self.error(&usage("AUTH mechanism [initial-response]"));
        };
        let mechanism =
            Mechanism::from_name(name).filter(|m| self.config.auth_mechanisms.contains(m));
        let Some(mechanism) = mechanism else {
            return self.error(&Reply::new(
                504,
                "5.5.4",
                "Unrecognized authentication type",
            ));
        };
        if !self.mechanism_allowed(mechanism) {
            return self.error(&Reply::new(
                538,
                "5.7.11",
                "Encryption required for requested authentication mechanism",
            ));
        }
        if initial.is_some_and(|ir| ir.len() > sasl::MAX_RESPONSE) {
            return self.error(&auth_line_too_long());
        }
        let host = &self.config.hostname;
        let outcome = sasl::start(mechanism, initial.map(str::as_bytes), || {
            sasl::cram_challenge(host)
        });
        self.auth_outcome(outcome)
    }

    /// Whether `mechanism` may be used now: PLAIN and LOGIN need TLS unless
    /// [`ServerConfig::auth_plaintext`].
    fn mechanism_allowed(&self, mechanism: Mechanism) -> bool {
        self.tls || self.config.auth_plaintext || !mechanism.sends_password()
    }

    fn hello_first(&self) -> &'static str {
        if self.config.lmtp {
            "send LHLO first"
        } else {
            "send HELO/EHLO first"
        }
    }

    fn ehlo_first(&self) -> &'static str {
        if self.config.lmtp {
            "send LHLO first"
        } else {
            "send EHLO first"
        }
    }

    /// Writes a refusal from the parser, counting it if it is a protocol
    /// error (500-504, 555) rather than a policy answer (552, 553).
    fn refuse(&mut self, reply: &Reply) -> Progress {
        if matches!(reply.code(), 500..=504 | 555) {
            self.error(reply)
        } else {
            self.write(reply);
            Progress::Continue
        }
    }
}

fn ok() -> Reply {
    Reply::new(250, "2.0.0", "Ok")
}

fn usage(usage: &str) -> Reply {
    Reply::new(501, "5.5.4", format!("Syntax: {usage}"))
}

fn too_big() -> Reply {
    Reply::new(
        552,
        "5.3.4",
        "Message size exceeds fixed maximum message size",
    )
}

/// RFC 4954 section 6: an AUTH line (command or response) over the limit.
fn auth_line_too_long() -> Reply {
    Reply::new(500, "5.5.6", "Authentication Exchange line is too long")
}

fn has_arg(arg: Option<&str>) -> bool {
    arg.is_some_and(|a| !a.trim_matches(' ').is_empty())
}

#[cfg(test)]
mod tests;
