//! The SMTP server state machine (RFC 5321 and extensions), sans-IO.
//!
//! CONTRACT (the edge driver relies on exactly this; see `edge/smtp.rs`):
//!
//! ```text
//! let mut server = Server::new(config);
//! let mut banner = server.default_banner();   // "220 host ESMTP slimta-rs"
//! validators.banner(&mut banner).await;
//! server.greet(banner);                       // written to output; 421/221/5xx handling inside
//! loop {
//!     match server.step() {
//!         Step::Event(mut ev) => {             // a decision is needed
//!             validators.X(&mut ev.reply, ..).await;
//!             server.respond(ev.reply);        // MUST answer before the next step()
//!         }
//!         Step::NeedInput => {                 // flush output, then read more
//!             write_all(server.output()); server.clear_output();
//!             let timeout = if server.reading_data() { data_timeout } else { command_timeout };
//!             match read(timeout) { Ok(0) => break, Ok(n) => server.receive(&buf[..n]),
//!                                   Err(timeout) => { server.timed_out(); flush; break } }
//!         }
//!         Step::Close => { flush output; break }
//!     }
//! }
//! ```
//!
//! Commands the machine answers by itself (never surfaced as events): NOOP,
//! RSET, VRFY (252), EXPN (502), HELP (214), syntax errors, sequence errors
//! (503), unknown commands (500), unknown parameters (555), line too long,
//! size declared too large (552), too many recipients (452 4.5.3), too many
//! errors (421 and close). Events are surfaced only where a validator or the
//! queue must decide: HELO/EHLO, MAIL, RCPT, DATA (before 354 or before the
//! first BDAT chunk is accepted), the complete message, and QUIT.
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
//! lines are discarded up to their CRLF and answered `500 5.5.2`), and
//! message data up to `max_size` (beyond it data is counted and discarded and
//! the message is answered `552 5.3.4`).
//!
//! How the work is split: [`command`] parses verbs,
//! arguments and parameters, [`address`](super::address) validates paths,
//! [`data`](super::data) reads DATA content; this file owns the session
//! (sequence, limits, events, output).
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
//!   long, syntax, sequence, EXPN, not offered parameters). Policy answers
//!   (452, 552, 553, 554) and the driver's replies do not count. When the
//!   count reaches the limit, `421 4.7.0` follows the reply that reached it
//!   and the session closes. `max_bad_commands == 0` means no limit.
//! - Any banner that is not 2xx and does not close the session (221/421) is
//!   treated like 554: only QUIT is served; everything else, BDAT chunks
//!   included (read and discarded), gets `503 5.5.1 Error: no SMTP service
//!   here, only QUIT`.
//! - `RSET`, `QUIT` and `DATA` take no argument (501); `NOOP` and `HELP`
//!   ignore theirs; HELO/EHLO need exactly one token. STARTTLS and AUTH are
//!   not offered by this machine and are unknown commands (500).
//! - Non-ASCII in a command is allowed only as valid UTF-8
//!   (`500 5.5.2 Error: invalid UTF-8 in command` otherwise); whether an
//!   address may use it is decided by SMTPUTF8 (`553 5.6.7`).
//! - After a 221/421 the rest of the input is never looked at.

use std::sync::Arc;

use memchr::memmem;

use crate::envelope::BodyType;
use crate::reply::Reply;
use crate::smtp::command::{self, BdatArgs, Offered, Verb};
use crate::smtp::data::{Body, DataReader};

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
}

impl ServerConfig {
    /// Defaults of an operator-friendly server named `hostname`: 10 MiB,
    /// 100 recipients, 20 errors, 512/1000 line limits, every extension on.
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
        }
    }
}

/// MAIL FROM parameters that were accepted.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MailParams {
    /// `SIZE=` (RFC 1870).
    pub size: Option<u64>,
    /// `BODY=` (RFC 6152 / 3030).
    pub body: BodyType,
    /// `SMTPUTF8` (RFC 6531).
    pub smtputf8: bool,
    /// `AUTH=` (RFC 4954), xtext-decoded; `Some("")` for `AUTH=<>`.
    pub auth: Option<String>,
}

/// RCPT TO parameters that were accepted (none yet; DSN comes later).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RcptParams {}

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
    /// HELO (`extended == false`) or EHLO. The default reply of EHLO lists
    /// the extensions.
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
}

/// What the input is currently read as.
#[derive(Debug)]
enum Mode {
    Command,
    /// An over-long command line is skipped up to its CRLF.
    DiscardLine {
        after_cr: bool,
    },
    Data(DataReader),
    Chunk(Chunk),
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
    Helo { extended: bool },
    Mail { sender: String, params: MailParams },
    Rcpt { recipient: String },
    Data,
    Bdat { size: u64, last: bool },
    Message,
    Quit,
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
        }
    }

    /// The configuration.
    pub fn config(&self) -> &ServerConfig {
        &self.config
    }

    /// `220 <hostname> ESMTP slimta-rs`.
    pub fn default_banner(&self) -> Reply {
        Reply::new(220, "", format!("{} ESMTP slimta-rs", self.config.hostname))
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

    /// Appends received bytes. Call only after [`Step::NeedInput`].
    pub fn receive(&mut self, input: &[u8]) {
        if matches!(self.mode, Mode::Closed) {
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
                Mode::Command => self.step_command(),
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

    /// Answers the last [`Step::Event`].
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
            if matches!(pending, Pending::Message) {
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
                let after = match (accepted, last) {
                    (true, true) => AfterChunk::Message,
                    (true, false) => AfterChunk::Reply {
                        reply,
                        error: false,
                        reset: false,
                    },
                    (false, _) => AfterChunk::Reply {
                        reply,
                        error: false,
                        reset: true,
                    },
                };
                self.mode = Mode::Chunk(Chunk {
                    remaining: size,
                    store: accepted,
                    after,
                });
            }
            Pending::Message => {
                self.txn = None;
                self.write(&reply);
            }
            Pending::Quit => self.write(&reply),
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
        let max = self.config.max_command_line.max(3);
        let window = &avail[..avail.len().min(max)];
        if let Some(i) = memmem::find(window, b"\r\n") {
            let start = self.pos;
            self.pos += i + 2;
            // The line is borrowed from `input` while `self` changes; the
            // handlers never touch `input`.
            let input = std::mem::take(&mut self.input);
            let progress = self.handle_line(&input[start..start + i]);
            if !matches!(self.mode, Mode::Closed) {
                self.input = input;
            }
            return progress;
        }
        if avail.len() < max {
            return Progress::NeedInput;
        }
        if command::looks_like_bdat(&avail[..5.min(avail.len())]) {
            return self.bad_bdat();
        }
        // Keep the last octet of the window: it may be the CR of the CRLF.
        self.pos += max - 1;
        self.mode = Mode::DiscardLine { after_cr: false };
        Progress::Continue
    }

    fn step_discard(&mut self) -> Progress {
        let Mode::DiscardLine { after_cr } = &mut self.mode else {
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
                self.mode = Mode::Command;
                self.error(&Reply::new(500, "5.5.2", "Error: line too long"))
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
            } => {
                if reset {
                    self.txn = None;
                }
                if error {
                    self.error(&reply)
                } else {
                    self.write(&reply);
                    Progress::Continue
                }
            }
        }
    }

    /// The end of DATA or the LAST chunk: refuse, or raise Message.
    fn finish_message(&mut self, long_line: bool) -> Progress {
        let Some(mut txn) = self.txn.take() else {
            return Progress::Continue;
        };
        if txn.body.exceeded() {
            self.write(&too_big());
            return Progress::Continue;
        }
        if long_line {
            let text = format!(
                "Message contains a line longer than {} octets",
                self.config.max_text_line
            );
            self.write(&Reply::new(554, "5.6.0", text));
            return Progress::Continue;
        }
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
            Pending::Message,
        )
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
            Verb::Helo | Verb::Ehlo => self.helo(verb == Verb::Ehlo, arg),
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
                let bdat = if self.config.chunking { " BDAT" } else { "" };
                let text =
                    format!("Commands: HELO EHLO MAIL RCPT DATA{bdat} RSET NOOP QUIT VRFY HELP");
                self.write(&Reply::new(214, "2.0.0", text));
                Progress::Continue
            }
            Verb::Unknown | Verb::Bdat => {
                self.error(&Reply::new(500, "5.5.2", "Error: command not recognized"))
            }
        }
    }

    fn helo(&mut self, extended: bool, arg: Option<&str>) -> Progress {
        let Some(domain) = command::parse_helo_arg(arg) else {
            return self.error(&usage(if extended {
                "EHLO hostname"
            } else {
                "HELO hostname"
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
            return self.sequence("send HELO/EHLO first");
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
            Ok((sender, params)) => {
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
            return self.sequence("send HELO/EHLO first");
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
            return self.sequence("send HELO/EHLO first");
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
            Some("send HELO/EHLO first")
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
                },
            });
            return Progress::Continue;
        }
        let Some(txn) = self.txn.as_ref() else {
            unreachable!("checked above")
        };
        if txn.body.size().saturating_add(size) > self.config.max_size as u64 {
            self.mode = Mode::Chunk(Chunk {
                remaining: size,
                store: false,
                after: AfterChunk::Reply {
                    reply: too_big(),
                    error: false,
                    reset: true,
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

fn has_arg(arg: Option<&str>) -> bool {
    arg.is_some_and(|a| !a.trim_matches(' ').is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    const BANNER: &str = "220 mx.test ESMTP slimta-rs\r\n";
    const EHLO: &[&str] = &[
        "250-mx.test",
        "250-PIPELINING",
        "250-SIZE 1000",
        "250-8BITMIME",
        "250-SMTPUTF8",
        "250-CHUNKING",
        "250 ENHANCEDSTATUSCODES",
    ];
    const SMUGGLE: &[u8] = b"MAIL FROM:<evil@attacker.test>\r\nRCPT TO:<victim@example.test>\r\nDATA\r\nSubject: smuggled\r\n\r\nhidden\r\n.\r\n";

    fn config() -> ServerConfig {
        ServerConfig {
            max_size: 1000,
            ..ServerConfig::new("mx.test")
        }
    }

    /// What a session produced: everything written after the banner, and
    /// the events in order, each as a short string.
    #[derive(Debug, PartialEq, Eq)]
    struct Outcome {
        output: String,
        events: Vec<String>,
        closed: bool,
    }

    fn describe(kind: &EventKind) -> String {
        match kind {
            EventKind::Helo { domain, extended } => {
                format!("{} {domain}", if *extended { "EHLO" } else { "HELO" })
            }
            EventKind::Mail { sender, params } => {
                let mut s = format!("MAIL {sender}");
                if *params != MailParams::default() {
                    s.push_str(&format!(" {params:?}"));
                }
                s
            }
            EventKind::Rcpt { recipient, .. } => format!("RCPT {recipient}"),
            EventKind::Data => "DATA".into(),
            EventKind::Message(t) => format!(
                "MSG {} {:?} {:?}",
                t.sender,
                t.recipients,
                String::from_utf8_lossy(&t.data)
            ),
            EventKind::Quit => "QUIT".into(),
        }
    }

    /// Drives a session like the edge does, feeding `chunks` one per
    /// NeedInput; `decide` may replace the proposed reply.
    fn drive(
        config: ServerConfig,
        banner: Option<Reply>,
        chunks: &[&[u8]],
        decide: &mut dyn FnMut(&EventKind, Reply) -> Reply,
    ) -> Outcome {
        let mut server = Server::new(Arc::new(config));
        let banner = banner.unwrap_or_else(|| server.default_banner());
        server.greet(banner);
        let mut output = std::mem::take(&mut server.output);
        let mut events = Vec::new();
        let mut chunks = chunks.iter();
        let closed = loop {
            match server.step() {
                Step::Event(ev) => {
                    events.push(describe(&ev.kind));
                    let reply = decide(&ev.kind, ev.reply);
                    server.respond(reply);
                }
                Step::NeedInput => {
                    output.extend_from_slice(server.output());
                    server.clear_output();
                    match chunks.next() {
                        Some(c) => server.receive(c),
                        None => break false,
                    }
                }
                Step::Close => break true,
            }
        };
        output.extend_from_slice(server.output());
        Outcome {
            output: String::from_utf8(output).unwrap(),
            events,
            closed,
        }
    }

    fn accept(_: &EventKind, reply: Reply) -> Reply {
        reply
    }

    fn run(config: ServerConfig, input: &[u8]) -> Outcome {
        drive(config, None, &[input], &mut accept)
    }

    fn wire(lines: &[&str]) -> String {
        let mut s = String::from(BANNER);
        for l in lines {
            s.push_str(l);
            s.push_str("\r\n");
        }
        s
    }

    fn with_ehlo(rest: &[&str]) -> Vec<&'static str> {
        let mut v: Vec<&str> = EHLO.to_vec();
        v.extend_from_slice(rest);
        // The test strings live for the whole test; leak-free via 'static data.
        v.into_iter()
            .map(|s| -> &'static str { Box::leak(s.to_owned().into_boxed_str()) })
            .collect()
    }

    /// Pseudo-random cut points (xorshift), deterministic per seed.
    fn cuts(len: usize, seed: u64) -> Vec<usize> {
        let mut x = seed | 1;
        let mut out = Vec::new();
        let mut pos = 0;
        loop {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            pos += 1 + (x % 23) as usize;
            if pos >= len {
                return out;
            }
            out.push(pos);
        }
    }

    fn split_at<'a>(input: &'a [u8], points: &[usize]) -> Vec<&'a [u8]> {
        let mut out = Vec::new();
        let mut start = 0;
        for &p in points {
            out.push(&input[start..p]);
            start = p;
        }
        out.push(&input[start..]);
        out
    }

    /// Runs `input` whole, byte by byte and in random splits; all must agree.
    fn run_all_splits(config: &ServerConfig, input: &[u8]) -> Outcome {
        let whole = run(config.clone(), input);
        let bytes: Vec<&[u8]> = input.chunks(1).collect();
        let bytewise = drive(config.clone(), None, &bytes, &mut accept);
        assert_eq!(
            whole,
            bytewise,
            "byte by byte: {:?}",
            String::from_utf8_lossy(input)
        );
        for seed in 1..6 {
            let pieces = split_at(input, &cuts(input.len(), seed));
            let split = drive(config.clone(), None, &pieces, &mut accept);
            assert_eq!(
                whole,
                split,
                "seed {seed}: {:?}",
                String::from_utf8_lossy(input)
            );
        }
        whole
    }

    struct Case {
        name: &'static str,
        config: ServerConfig,
        input: Vec<u8>,
        output: Vec<&'static str>,
        events: Vec<&'static str>,
        closed: bool,
    }

    fn case(
        name: &'static str,
        input: &[u8],
        output: Vec<&'static str>,
        events: &[&'static str],
    ) -> Case {
        Case {
            name,
            config: config(),
            input: input.to_vec(),
            output,
            events: events.to_vec(),
            closed: false,
        }
    }

    fn check(cases: Vec<Case>) {
        for c in cases {
            let got = run_all_splits(&c.config, &c.input);
            assert_eq!(got.output, wire(&c.output), "{}", c.name);
            assert_eq!(got.events, c.events, "{}", c.name);
            assert_eq!(got.closed, c.closed, "{}", c.name);
        }
    }

    const TXN: &[u8] = b"EHLO c.test\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\n";
    const TXN_OUT: &[&str] = &["250 2.1.0 Sender <a@b> ok", "250 2.1.5 Recipient <c@d> ok"];
    const TXN_EV: [&str; 3] = ["EHLO c.test", "MAIL a@b", "RCPT c@d"];

    fn txn(rest: &[u8]) -> Vec<u8> {
        [TXN, rest].concat()
    }

    fn txn_out(rest: &[&str]) -> Vec<&'static str> {
        let mut v = TXN_OUT.to_vec();
        v.extend_from_slice(rest);
        with_ehlo(&v)
    }

    fn txn_ev<'a>(rest: &[&'a str]) -> Vec<&'a str> {
        let mut v = TXN_EV.to_vec();
        v.extend_from_slice(rest);
        v
    }

    #[test]
    fn a_complete_session_byte_for_byte() {
        let input = txn(b"DATA\r\nhello\r\n..dot\r\n.\r\nQUIT\r\n");
        let got = run_all_splits(&config(), &input);
        let expected = "220 mx.test ESMTP slimta-rs\r\n\
            250-mx.test\r\n250-PIPELINING\r\n250-SIZE 1000\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n\
            250-CHUNKING\r\n250 ENHANCEDSTATUSCODES\r\n\
            250 2.1.0 Sender <a@b> ok\r\n250 2.1.5 Recipient <c@d> ok\r\n\
            354 End data with <CR><LF>.<CR><LF>\r\n250 2.6.0 Message accepted\r\n221 2.0.0 Bye\r\n";
        assert_eq!(got.output, expected);
        let msg = r#"MSG a@b ["c@d"] "hello\r\n.dot\r\n""#;
        assert_eq!(got.events, txn_ev(&["DATA", msg, "QUIT"]));
        assert!(got.closed);
    }

    #[test]
    fn commands_and_sequence() {
        let ok = "250 2.0.0 Ok";
        let mut cases = vec![
            case(
                "helo",
                b"HELO c.test\r\n",
                vec!["250 mx.test"],
                &["HELO c.test"],
            ),
            case(
                "helo without argument",
                b"HELO\r\n",
                vec!["501 5.5.4 Syntax: HELO hostname"],
                &[],
            ),
            case(
                "ehlo blank",
                b"EHLO \r\n",
                vec!["501 5.5.4 Syntax: EHLO hostname"],
                &[],
            ),
            case(
                "lower case verbs",
                b"ehlo c\r\nmail from:<a@b>\r\nrcpt to:<c@d>\r\nrset\r\nnoop\r\n",
                with_ehlo(&[
                    "250 2.1.0 Sender <a@b> ok",
                    "250 2.1.5 Recipient <c@d> ok",
                    ok,
                    ok,
                ]),
                &["EHLO c", "MAIL a@b", "RCPT c@d"],
            ),
            case(
                "space after colon",
                b"EHLO c\r\nMAIL FROM: <a@b>\r\nRCPT TO: <c@d>\r\n",
                with_ehlo(&["250 2.1.0 Sender <a@b> ok", "250 2.1.5 Recipient <c@d> ok"]),
                &["EHLO c", "MAIL a@b", "RCPT c@d"],
            ),
            case(
                "mail before helo",
                b"MAIL FROM:<a@b>\r\n",
                vec!["503 5.5.1 Error: send HELO/EHLO first"],
                &[],
            ),
            case(
                "rcpt before helo",
                b"RCPT TO:<a@b>\r\n",
                vec!["503 5.5.1 Error: send HELO/EHLO first"],
                &[],
            ),
            case(
                "data before helo",
                b"DATA\r\n",
                vec!["503 5.5.1 Error: send HELO/EHLO first"],
                &[],
            ),
            case(
                "rcpt before mail",
                b"EHLO c\r\nRCPT TO:<a@b>\r\n",
                with_ehlo(&["503 5.5.1 Error: need MAIL command"]),
                &["EHLO c"],
            ),
            case(
                "data before mail",
                b"EHLO c\r\nDATA\r\n",
                with_ehlo(&["503 5.5.1 Error: need MAIL command"]),
                &["EHLO c"],
            ),
            case(
                "data before rcpt",
                b"EHLO c\r\nMAIL FROM:<a@b>\r\nDATA\r\n",
                with_ehlo(&[
                    "250 2.1.0 Sender <a@b> ok",
                    "503 5.5.1 Error: need RCPT command",
                ]),
                &["EHLO c", "MAIL a@b"],
            ),
            case(
                "nested mail",
                b"EHLO c\r\nMAIL FROM:<a@b>\r\nMAIL FROM:<a@b>\r\n",
                with_ehlo(&[
                    "250 2.1.0 Sender <a@b> ok",
                    "503 5.5.1 Error: nested MAIL command",
                ]),
                &["EHLO c", "MAIL a@b"],
            ),
            case(
                "rset ends the transaction",
                &txn(b"RSET\r\nRCPT TO:<c@d>\r\n"),
                txn_out(&[ok, "503 5.5.1 Error: need MAIL command"]),
                &TXN_EV,
            ),
            case(
                "ehlo ends the transaction",
                &txn(b"EHLO c.test\r\nRCPT TO:<c@d>\r\n"),
                txn_out(&[&EHLO.join("\r\n"), "503 5.5.1 Error: need MAIL command"]),
                &txn_ev(&["EHLO c.test"]),
            ),
            case(
                "rset with argument",
                b"RSET x\r\n",
                vec!["501 5.5.4 Syntax: RSET"],
                &[],
            ),
            case("noop with argument", b"NOOP x y\r\n", vec![ok], &[]),
            case(
                "vrfy",
                b"VRFY root\r\nVRFY\r\n",
                vec![
                    "252 2.5.0 Cannot VRFY user, but will accept message and attempt delivery",
                    "501 5.5.4 Syntax: VRFY address",
                ],
                &[],
            ),
            case(
                "expn",
                b"EXPN staff\r\n",
                vec!["502 5.5.1 EXPN not supported"],
                &[],
            ),
            case(
                "help",
                b"HELP\r\nhelp mail\r\n",
                vec![
                    "214 2.0.0 Commands: HELO EHLO MAIL RCPT DATA BDAT RSET NOOP QUIT VRFY HELP",
                    "214 2.0.0 Commands: HELO EHLO MAIL RCPT DATA BDAT RSET NOOP QUIT VRFY HELP",
                ],
                &[],
            ),
            case(
                "unknown and empty",
                b"FOO\r\n\r\nMAILFROM:<a@b>\r\nSTARTTLS\r\n",
                vec!["500 5.5.2 Error: command not recognized"; 4],
                &[],
            ),
            case(
                "bare LF and CR in commands",
                b"NOOP\nNOOP\r\nNO\rOP\r\nNOOP\r\r\n",
                vec!["500 5.5.2 Error: bare <CR> or <LF> in command"; 3],
                &[],
            ),
            case(
                "invalid utf-8",
                b"NOOP \xff\xfe\r\n",
                vec!["500 5.5.2 Error: invalid UTF-8 in command"],
                &[],
            ),
            case(
                "quit ends the session; pipelined rest ignored",
                b"QUIT\r\nNOOP\r\n",
                vec!["221 2.0.0 Bye"],
                &["QUIT"],
            ),
            case(
                "quit with argument",
                b"QUIT now\r\n",
                vec!["501 5.5.4 Syntax: QUIT"],
                &[],
            ),
            case(
                "data with argument",
                &txn(b"DATA x\r\n"),
                txn_out(&["501 5.5.4 Syntax: DATA"]),
                &TXN_EV,
            ),
        ];
        let n = cases.len();
        cases[n - 3].closed = true;
        check(cases);
    }

    #[test]
    fn mail_and_rcpt_arguments() {
        let cases = vec![
            case(
                "parameters after EHLO",
                b"EHLO c\r\nMAIL FROM:<a@b> SIZE=100 BODY=8BITMIME SMTPUTF8 AUTH=u+2Bv\r\n",
                with_ehlo(&["250 2.1.0 Sender <a@b> ok"]),
                &[
                    "EHLO c",
                    "MAIL a@b MailParams { size: Some(100), body: EightBitMime, smtputf8: true, auth: Some(\"u+v\") }",
                ],
            ),
            case(
                "null sender",
                b"EHLO c\r\nMAIL FROM:<>\r\n",
                with_ehlo(&["250 2.1.0 Sender <> ok"]),
                &["EHLO c", "MAIL "],
            ),
            case(
                "parameters after HELO",
                b"HELO c\r\nMAIL FROM:<a@b> SIZE=10\r\nMAIL FROM:<a@b> BODY=8BITMIME\r\n",
                vec![
                    "250 mx.test",
                    "555 5.5.4 Unsupported parameter: SIZE",
                    "555 5.5.4 Unsupported parameter: BODY",
                ],
                &["HELO c"],
            ),
            case(
                "declared size too large",
                b"EHLO c\r\nMAIL FROM:<a@b> SIZE=1001\r\n",
                with_ehlo(&["552 5.3.4 Message size exceeds fixed maximum message size"]),
                &["EHLO c"],
            ),
            case(
                "binarymime not offered",
                b"EHLO c\r\nMAIL FROM:<a@b> BODY=BINARYMIME\r\n",
                with_ehlo(&["555 5.5.4 Unsupported parameter: BODY=BINARYMIME"]),
                &["EHLO c"],
            ),
            case(
                "unknown parameters",
                b"EHLO c\r\nMAIL FROM:<a@b> RET=FULL\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d> NOTIFY=NEVER\r\n",
                with_ehlo(&[
                    "555 5.5.4 Unsupported parameter: RET",
                    "250 2.1.0 Sender <a@b> ok",
                    "555 5.5.4 Unsupported parameter: NOTIFY",
                ]),
                &["EHLO c", "MAIL a@b"],
            ),
            case(
                "bad paths",
                b"EHLO c\r\nMAIL FROM:a@b\r\nMAIL FROM:<a@b>\r\nRCPT TO:<>\r\nRCPT TO:<a@b\r\nRCPT TO:<Postmaster>\r\n",
                with_ehlo(&[
                    "501 5.1.7 Bad sender address syntax",
                    "250 2.1.0 Sender <a@b> ok",
                    "501 5.1.3 Bad recipient address syntax",
                    "501 5.1.3 Bad recipient address syntax",
                    "250 2.1.5 Recipient <Postmaster> ok",
                ]),
                &["EHLO c", "MAIL a@b", "RCPT Postmaster"],
            ),
            case(
                "bad verbs arguments",
                b"EHLO c\r\nMAIL TO:<a@b>\r\nMAIL\r\nMAIL FROM:<a@b>\r\nRCPT FROM:<c@d>\r\n",
                with_ehlo(&[
                    "501 5.5.4 Syntax: MAIL FROM:<address>",
                    "501 5.5.4 Syntax: MAIL FROM:<address>",
                    "250 2.1.0 Sender <a@b> ok",
                    "501 5.5.4 Syntax: RCPT TO:<address>",
                ]),
                &["EHLO c", "MAIL a@b"],
            ),
            case(
                "unicode needs SMTPUTF8",
                "EHLO c\r\nMAIL FROM:<ü@b>\r\nMAIL FROM:<a@b>\r\nRCPT TO:<ü@d>\r\nRSET\r\n\
                 MAIL FROM:<a@b> SMTPUTF8\r\nRCPT TO:<ü@d>\r\n"
                    .as_bytes(),
                with_ehlo(&[
                    "553 5.6.7 Must declare SMTPUTF8 to send unicode address",
                    "250 2.1.0 Sender <a@b> ok",
                    "553 5.6.7 Must declare SMTPUTF8 to send unicode address",
                    "250 2.0.0 Ok",
                    "250 2.1.0 Sender <a@b> ok",
                    "250 2.1.5 Recipient <ü@d> ok",
                ]),
                &[
                    "EHLO c",
                    "MAIL a@b",
                    "MAIL a@b MailParams { size: None, body: SevenBit, smtputf8: true, auth: None }",
                    "RCPT ü@d",
                ],
            ),
            case(
                "source route dropped",
                b"EHLO c\r\nMAIL FROM:<@x,@y:a@b>\r\n",
                with_ehlo(&["250 2.1.0 Sender <a@b> ok"]),
                &["EHLO c", "MAIL a@b"],
            ),
        ];
        check(cases);
    }

    #[test]
    fn extensions_follow_the_config() {
        let c = ServerConfig {
            pipelining: false,
            eightbitmime: false,
            smtputf8: false,
            chunking: false,
            ..config()
        };
        let got = run_all_splits(
            &c,
            b"EHLO c\r\nHELP\r\nMAIL FROM:<a@b> SMTPUTF8\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nBDAT 6 LAST\r\nQUIT\r\nNOOP\r\n",
        );
        assert_eq!(
            got.output,
            wire(&[
                "250-mx.test",
                "250-SIZE 1000",
                "250 ENHANCEDSTATUSCODES",
                "214 2.0.0 Commands: HELO EHLO MAIL RCPT DATA RSET NOOP QUIT VRFY HELP",
                "555 5.5.4 Unsupported parameter: SMTPUTF8",
                "250 2.1.0 Sender <a@b> ok",
                "250 2.1.5 Recipient <c@d> ok",
                "503 5.5.1 Error: CHUNKING not offered",
                "250 2.0.0 Ok",
            ])
        );
        assert!(!got.closed);
    }

    #[test]
    fn data_outcomes() {
        let mut long = txn(b"DATA\r\n");
        long.extend_from_slice(&[b'x'; 99]);
        long.extend_from_slice(b"\r\n.\r\nMAIL FROM:<a@b>\r\n");
        let mut big = txn(b"DATA\r\n");
        big.extend_from_slice(&b"0123456789abcdefghijklmnopqrstuvwxyz\r\n".repeat(30));
        big.extend_from_slice(b".\r\nMAIL FROM:<a@b>\r\n");
        let mut fits = txn(b"DATA\r\n");
        fits.extend_from_slice(&[b'y'; 998]);
        fits.extend_from_slice(b"\r\n.\r\n");
        let fits_msg: &'static str = Box::leak(
            format!("MSG a@b [\"c@d\"] {:?}", format!("{}\r\n", "y".repeat(998))).into_boxed_str(),
        );
        let cases = vec![
            case(
                "empty message",
                &txn(b"DATA\r\n.\r\n"),
                txn_out(&[
                    "354 End data with <CR><LF>.<CR><LF>",
                    "250 2.6.0 Message accepted",
                ]),
                &txn_ev(&["DATA", r#"MSG a@b ["c@d"] """#]),
            ),
            case(
                "two messages in one session",
                &txn(b"DATA\r\n1\r\n.\r\nMAIL FROM:<e@f>\r\nRCPT TO:<g@h>\r\nDATA\r\n2\r\n.\r\n"),
                txn_out(&[
                    "354 End data with <CR><LF>.<CR><LF>",
                    "250 2.6.0 Message accepted",
                    "250 2.1.0 Sender <e@f> ok",
                    "250 2.1.5 Recipient <g@h> ok",
                    "354 End data with <CR><LF>.<CR><LF>",
                    "250 2.6.0 Message accepted",
                ]),
                &txn_ev(&[
                    "DATA",
                    r#"MSG a@b ["c@d"] "1\r\n""#,
                    "MAIL e@f",
                    "RCPT g@h",
                    "DATA",
                    r#"MSG e@f ["g@h"] "2\r\n""#,
                ]),
            ),
            Case {
                config: ServerConfig {
                    max_text_line: 100,
                    ..config()
                },
                ..case(
                    "line over max_text_line",
                    &long,
                    txn_out(&[
                        "354 End data with <CR><LF>.<CR><LF>",
                        "554 5.6.0 Message contains a line longer than 100 octets",
                        "250 2.1.0 Sender <a@b> ok",
                    ]),
                    &txn_ev(&["DATA", "MAIL a@b"]),
                )
            },
            case(
                "line of exactly 1000 octets",
                &fits,
                txn_out(&[
                    "354 End data with <CR><LF>.<CR><LF>",
                    "250 2.6.0 Message accepted",
                ]),
                &txn_ev(&["DATA", fits_msg]),
            ),
            case(
                "message over max_size",
                &big,
                txn_out(&[
                    "354 End data with <CR><LF>.<CR><LF>",
                    "552 5.3.4 Message size exceeds fixed maximum message size",
                    "250 2.1.0 Sender <a@b> ok",
                ]),
                &txn_ev(&["DATA", "MAIL a@b"]),
            ),
        ];
        check(cases);
    }

    #[test]
    fn default_text_line_limit_is_1000() {
        let mut input = b"EHLO c\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\n".to_vec();
        input.extend_from_slice(&[b'x'; 999]);
        input.extend_from_slice(b"\r\n.\r\n");
        let got = run_all_splits(&ServerConfig::new("mx.test"), &input);
        assert!(
            got.output
                .ends_with("\r\n554 5.6.0 Message contains a line longer than 1000 octets\r\n")
        );
        assert_eq!(got.events.len(), 4, "no Message event");
    }

    #[test]
    fn message_over_max_size_without_size_parameter_for_helo_clients() {
        let mut input = b"HELO c\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\n".to_vec();
        input.extend_from_slice(&b"z".repeat(1001));
        input.extend_from_slice(b"\r\n.\r\n");
        let got = run_all_splits(&config(), &input);
        assert!(
            got.output
                .ends_with("552 5.3.4 Message size exceeds fixed maximum message size\r\n")
        );
        assert_eq!(got.events, ["HELO c", "MAIL a@b", "RCPT c@d", "DATA"]);
    }

    #[test]
    fn smuggling_sequences_yield_one_message() {
        let sequences: &[(&[u8], &[u8])] = &[
            // (S, what S becomes in the data)
            (b"\n.\n", b"\n.\n"),
            (b"\n.\r", b"\n.\r"),
            (b"\r.\n", b"\r.\n"),
            (b"\r.\r", b"\r.\r"),
            (b"\n.\r\n", b"\n.\r\n"),
            (b"\r.\r\n", b"\r.\r\n"),
            (b"\r\n.\n", b"\r\n\n"),
            (b"\r\n.\r", b"\r\n\r"),
            (b"\r\n\0.\r\n", b"\r\n\0.\r\n"),
            (b"\r\n.\0\r\n", b"\r\n\0\r\n"),
        ];
        for &(s, kept) in sequences {
            let content = [b"x", s, SMUGGLE].concat();
            let input = txn(&[b"DATA\r\n", &content[..], b"QUIT\r\n"].concat());
            let got = run_all_splits(&config(), &input);
            let data = [b"x", kept, &SMUGGLE[..SMUGGLE.len() - 3]].concat();
            let msg = format!("MSG a@b [\"c@d\"] {:?}", String::from_utf8_lossy(&data));
            assert_eq!(got.events, txn_ev(&["DATA", &msg, "QUIT"]), "{s:?}");
            assert_eq!(
                got.output,
                wire(&txn_out(&[
                    "354 End data with <CR><LF>.<CR><LF>",
                    "250 2.6.0 Message accepted",
                    "221 2.0.0 Bye"
                ])),
                "{s:?}"
            );
            assert!(
                !got.events.iter().any(|e| e.starts_with("MAIL evil")),
                "{s:?}"
            );
        }
    }

    #[test]
    fn bdat() {
        let ack = |n: u32| -> &'static str {
            Box::leak(format!("250 2.0.0 {n} octets received").into_boxed_str())
        };
        let mut over = txn(b"BDAT 1001 LAST\r\n");
        over.extend_from_slice(&[b'\n'; 1001]);
        over.extend_from_slice(b"RCPT TO:<c@d>\r\n");
        let mut over2 = txn(b"BDAT 600\r\n");
        over2.extend_from_slice(&[b'a'; 600]);
        over2.extend_from_slice(b"BDAT 401 LAST\r\n");
        over2.extend_from_slice(&[b'b'; 401]);
        over2.extend_from_slice(b"NOOP\r\n");
        let mut cases = vec![
            case(
                "two chunks",
                &txn(b"BDAT 5\r\nhelloBDAT 3 LAST\r\nabcNOOP\r\n"),
                txn_out(&[ack(5), "250 2.6.0 Message accepted", "250 2.0.0 Ok"]),
                &txn_ev(&["DATA", r#"MSG a@b ["c@d"] "helloabc""#]),
            ),
            case(
                "empty last chunk first",
                &txn(b"bdat 0 last\r\n"),
                txn_out(&["250 2.6.0 Message accepted"]),
                &txn_ev(&["DATA", r#"MSG a@b ["c@d"] """#]),
            ),
            case(
                "chunk content is verbatim",
                &txn(&[
                    &b"BDAT 40 LAST\r\n"[..],
                    b"\r\n.\r\nMAIL FROM:<evil@attacker.test>\r\n..\r",
                ]
                .concat()),
                txn_out(&["250 2.6.0 Message accepted"]),
                &txn_ev(&[
                    "DATA",
                    r#"MSG a@b ["c@d"] "\r\n.\r\nMAIL FROM:<evil@attacker.test>\r\n..\r""#,
                ]),
            ),
            case(
                "out of sequence chunk is consumed",
                b"EHLO c\r\nBDAT 6\r\nQUIT\r\nNOOP\r\n",
                with_ehlo(&["503 5.5.1 Error: need MAIL command", "250 2.0.0 Ok"]),
                &["EHLO c"],
            ),
            case(
                "chunk without rcpt",
                b"EHLO c\r\nMAIL FROM:<a@b>\r\nBDAT 6 LAST\r\nQUIT\r\nNOOP\r\n",
                with_ehlo(&[
                    "250 2.1.0 Sender <a@b> ok",
                    "503 5.5.1 Error: need RCPT command",
                    "250 2.0.0 Ok",
                ]),
                &["EHLO c", "MAIL a@b"],
            ),
            case(
                "chunk after HELO",
                b"HELO c\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nBDAT 6 LAST\r\nQUIT\r\nNOOP\r\n",
                vec![
                    "250 mx.test",
                    "250 2.1.0 Sender <a@b> ok",
                    "250 2.1.5 Recipient <c@d> ok",
                    "503 5.5.1 Error: CHUNKING not offered",
                    "250 2.0.0 Ok",
                ],
                &["HELO c", "MAIL a@b", "RCPT c@d"],
            ),
            case(
                "chunk before helo",
                b"BDAT 6\r\nQUIT\r\nNOOP\r\n",
                vec!["503 5.5.1 Error: send HELO/EHLO first", "250 2.0.0 Ok"],
                &[],
            ),
            case(
                "data during bdat",
                &txn(b"BDAT 1\r\nxDATA\r\nBDAT 1 LAST\r\ny"),
                txn_out(&[
                    ack(1),
                    "503 5.5.1 Error: DATA not allowed during BDAT transaction",
                    "250 2.6.0 Message accepted",
                ]),
                &txn_ev(&["DATA", r#"MSG a@b ["c@d"] "xy""#]),
            ),
            case(
                "chunk over max_size",
                &over,
                txn_out(&[
                    "552 5.3.4 Message size exceeds fixed maximum message size",
                    "503 5.5.1 Error: need MAIL command",
                ]),
                &TXN_EV,
            ),
            case(
                "chunks over max_size together",
                &over2,
                txn_out(&[
                    ack(600),
                    "552 5.3.4 Message size exceeds fixed maximum message size",
                    "250 2.0.0 Ok",
                ]),
                &txn_ev(&["DATA"]),
            ),
            case(
                "bad size closes",
                &txn(b"BDAT x\r\nMAIL FROM:<evil@attacker.test>\r\n"),
                txn_out(&["421 4.5.4 mx.test Error: bad BDAT syntax, closing connection"]),
                &TXN_EV,
            ),
            case(
                "missing size closes",
                b"BDAT\r\nNOOP\r\n",
                vec!["421 4.5.4 mx.test Error: bad BDAT syntax, closing connection"],
                &[],
            ),
            case(
                "bare LF in BDAT line closes",
                b"BDAT 5\nLAST\r\nNOOP\r\n",
                vec!["421 4.5.4 mx.test Error: bad BDAT syntax, closing connection"],
                &[],
            ),
        ];
        let n = cases.len();
        for c in &mut cases[n - 3..] {
            c.closed = true;
        }
        check(cases);
    }

    #[test]
    fn line_limits() {
        let line = |len: usize| {
            let mut l = b"NOOP ".to_vec();
            l.resize(len - 2, b'a');
            l.extend_from_slice(b"\r\n");
            l
        };
        let mut input = line(512);
        input.extend_from_slice(&line(513));
        input.extend_from_slice(&line(514));
        input.extend_from_slice(&line(5000));
        input.extend_from_slice(b"NOOP\r\n");
        let got = run_all_splits(&config(), &input);
        assert_eq!(
            got.output,
            wire(&[
                "250 2.0.0 Ok",
                "500 5.5.2 Error: line too long",
                "500 5.5.2 Error: line too long",
                "500 5.5.2 Error: line too long",
                "250 2.0.0 Ok",
            ])
        );
        let mut bdat = b"BDAT 1 LAST ".to_vec();
        bdat.resize(600, b' ');
        bdat.extend_from_slice(b"\r\nNOOP\r\n");
        let got = run_all_splits(&config(), &bdat);
        assert_eq!(
            got.output,
            wire(&["421 4.5.4 mx.test Error: bad BDAT syntax, closing connection"])
        );
        assert!(got.closed);
    }

    #[test]
    fn limits() {
        let c = ServerConfig {
            max_recipients: 2,
            ..config()
        };
        let got = run_all_splits(
            &c,
            b"EHLO c\r\nMAIL FROM:<a@b>\r\nRCPT TO:<1@d>\r\nRCPT TO:<2@d>\r\nRCPT TO:<3@d>\r\nDATA\r\n.\r\n",
        );
        assert_eq!(
            got.output,
            wire(&with_ehlo(&[
                "250 2.1.0 Sender <a@b> ok",
                "250 2.1.5 Recipient <1@d> ok",
                "250 2.1.5 Recipient <2@d> ok",
                "452 4.5.3 Error: too many recipients",
                "354 End data with <CR><LF>.<CR><LF>",
                "250 2.6.0 Message accepted",
            ]))
        );
        assert_eq!(got.events.last().unwrap(), r#"MSG a@b ["1@d", "2@d"] """#);

        let c = ServerConfig {
            max_bad_commands: 3,
            ..config()
        };
        // 552/553/452 do not count; 500, 501, 503, 555 do.
        let got = run_all_splits(
            &c,
            b"EHLO c\r\nMAIL FROM:<a@b> SIZE=5000\r\nFOO\r\nMAIL FROM:<a@b> X=1\r\nRCPT TO:<a@b>\r\nNOOP\r\n",
        );
        assert_eq!(
            got.output,
            wire(&with_ehlo(&[
                "552 5.3.4 Message size exceeds fixed maximum message size",
                "500 5.5.2 Error: command not recognized",
                "555 5.5.4 Unsupported parameter: X",
                "503 5.5.1 Error: need MAIL command",
                "421 4.7.0 mx.test Error: too many errors",
            ]))
        );
        assert!(got.closed);
    }

    #[test]
    fn banners() {
        let out = drive(
            config(),
            Some(Reply::new(554, "5.7.1", "go away")),
            &[b"EHLO c\r\nMAIL FROM:<a@b>\r\nBDAT 4\r\nQUITQUIT\r\n"],
            &mut accept,
        );
        assert_eq!(
            out.output,
            "554 5.7.1 go away\r\n\
             503 5.5.1 Error: no SMTP service here, only QUIT\r\n\
             503 5.5.1 Error: no SMTP service here, only QUIT\r\n\
             503 5.5.1 Error: no SMTP service here, only QUIT\r\n\
             221 2.0.0 Bye\r\n"
        );
        assert_eq!(out.events, ["QUIT"]);
        assert!(out.closed);
        let out = drive(
            config(),
            Some(Reply::new(421, "4.3.2", "busy")),
            &[b"EHLO c\r\n"],
            &mut accept,
        );
        assert_eq!(out.output, "421 4.3.2 busy\r\n");
        assert!(out.closed && out.events.is_empty());
    }

    #[test]
    fn driver_decisions_apply() {
        // Refuse one recipient, refuse DATA once, fail the message.
        let mut data_refused = false;
        let mut decide = |kind: &EventKind, reply: Reply| match kind {
            EventKind::Rcpt { recipient, .. } if recipient == "no@d" => {
                Reply::new(550, "5.1.1", "No such user")
            }
            EventKind::Data if !data_refused => {
                data_refused = true;
                Reply::new(451, "4.3.0", "Try later")
            }
            EventKind::Message(_) => Reply::new(451, "4.3.0", "Queue full"),
            _ => reply,
        };
        let out = drive(
            config(),
            None,
            &[b"EHLO c\r\nMAIL FROM:<a@b>\r\nRCPT TO:<no@d>\r\nDATA\r\nRCPT TO:<c@d>\r\nDATA\r\nhello\r\nDATA\r\nx\r\n.\r\nRCPT TO:<c@d>\r\n"],
            &mut decide,
        );
        assert_eq!(
            out.output,
            wire(&with_ehlo(&[
                "250 2.1.0 Sender <a@b> ok",
                "550 5.1.1 No such user",
                "503 5.5.1 Error: need RCPT command",
                "250 2.1.5 Recipient <c@d> ok",
                "451 4.3.0 Try later",
                "500 5.5.2 Error: command not recognized",
                "354 End data with <CR><LF>.<CR><LF>",
                "451 4.3.0 Queue full",
                "503 5.5.1 Error: need MAIL command",
            ]))
        );
        // EHLO refused: still no HELO; 421 to MAIL closes.
        let mut decide = |kind: &EventKind, reply: Reply| match kind {
            EventKind::Helo { domain, .. } if domain == "bad" => Reply::new(550, "5.7.1", "No"),
            EventKind::Mail { .. } => Reply::new(421, "4.7.0", "bye"),
            _ => reply,
        };
        let out = drive(
            config(),
            None,
            &[b"EHLO bad\r\nMAIL FROM:<a@b>\r\nHELO good\r\nMAIL FROM:<a@b>\r\nNOOP\r\n"],
            &mut decide,
        );
        assert_eq!(
            out.output,
            wire(&[
                "550 5.7.1 No",
                "503 5.5.1 Error: send HELO/EHLO first",
                "250 mx.test",
                "421 4.7.0 bye"
            ])
        );
        assert!(out.closed);
        // The first BDAT refused: the chunk is consumed, the transaction fails.
        let mut decide = |kind: &EventKind, reply: Reply| match kind {
            EventKind::Data => Reply::new(554, "5.7.1", "No chunks for you"),
            _ => reply,
        };
        let out = drive(
            config(),
            None,
            &[&txn(b"BDAT 4\r\nNOOPBDAT 1 LAST\r\nxNOOP\r\n")],
            &mut decide,
        );
        assert_eq!(
            out.output,
            wire(&txn_out(&[
                "554 5.7.1 No chunks for you",
                "503 5.5.1 Error: need MAIL command",
                "250 2.0.0 Ok"
            ]))
        );
        assert_eq!(out.events, txn_ev(&["DATA"]));
        // The first BDAT accepted with the driver's own text: sent after the chunk.
        let mut decide = |kind: &EventKind, reply: Reply| match kind {
            EventKind::Data => Reply::new(250, "2.0.0", "chunk ok"),
            _ => reply,
        };
        let out = drive(
            config(),
            None,
            &[&txn(b"BDAT 4\r\nNOOPBDAT 1 LAST\r\nx")],
            &mut decide,
        );
        assert_eq!(
            out.output,
            wire(&txn_out(&[
                "250 2.0.0 chunk ok",
                "250 2.6.0 Message accepted"
            ]))
        );
        assert_eq!(out.events, txn_ev(&["DATA", r#"MSG a@b ["c@d"] "NOOPx""#]));
    }

    #[test]
    fn timeouts_shutdown_and_data_mode() {
        let mut s = Server::new(Arc::new(config()));
        s.greet(s.default_banner());
        assert!(matches!(s.step(), Step::NeedInput));
        assert!(!s.reading_data());
        s.receive(&txn(b"DATA\r\n"));
        let mut events = 0;
        loop {
            match s.step() {
                Step::Event(ev) => {
                    events += 1;
                    s.respond(ev.reply);
                }
                Step::NeedInput => break,
                Step::Close => unreachable!(),
            }
        }
        assert_eq!(events, 4);
        assert!(s.reading_data() && s.in_transaction());
        s.clear_output();
        s.timed_out();
        assert_eq!(s.output(), b"421 4.4.2 mx.test Error: timeout exceeded\r\n");
        assert!(matches!(s.step(), Step::Close));
        assert!(s.is_closed());

        let mut s = Server::new(Arc::new(config()));
        s.greet(s.default_banner());
        s.receive(b"BDAT 10");
        assert!(matches!(s.step(), Step::NeedInput));
        assert!(!s.reading_data());
        s.receive(b"\r\n");
        assert!(matches!(s.step(), Step::NeedInput));
        assert!(
            s.reading_data(),
            "an out-of-sequence chunk is read as data too"
        );
        s.clear_output();
        s.shutting_down();
        assert_eq!(s.output(), b"421 4.3.2 mx.test Service shutting down\r\n");
        assert!(matches!(s.step(), Step::Close));
    }

    #[test]
    #[should_panic(expected = "respond")]
    fn step_before_respond_panics() {
        let mut s = Server::new(Arc::new(config()));
        s.receive(b"QUIT\r\n");
        let _ = s.step();
        let _ = s.step();
    }

    /// Feeds `total` bytes of `pattern` in 64 KiB reads and checks that no
    /// buffer grows past what one read plus the limits explain.
    fn feed_endless(server: &mut Server, prefix: &[u8], pattern: &[u8], total: usize) -> usize {
        let chunk: Vec<u8> = pattern.iter().copied().cycle().take(64 * 1024).collect();
        server.receive(prefix);
        let mut fed = 0;
        let mut max_out = 0;
        while fed < total {
            match server.step() {
                Step::Event(ev) => server.respond(ev.reply),
                Step::NeedInput => {
                    max_out = max_out.max(server.output.len());
                    server.clear_output();
                    server.receive(&chunk);
                    fed += chunk.len();
                    assert!(server.input.len() <= chunk.len() + server.config.max_command_line);
                    let kept = server.txn.as_ref().map_or(0, |t| t.body.data().len());
                    assert!(kept <= server.config.max_size, "kept {kept}");
                }
                Step::Close => break,
            }
        }
        max_out
    }

    #[test]
    fn memory_stays_bounded() {
        let c = Arc::new(ServerConfig {
            max_bad_commands: 0,
            ..config()
        });
        // A 4 MiB line without CRLF.
        let mut s = Server::new(c.clone());
        feed_endless(&mut s, b"", b"a", 4 << 20);
        assert!(matches!(s.mode, Mode::DiscardLine { .. }));
        // Endless DATA (with and without line ends).
        for pattern in [&b"0123456789\r\n"[..], b"x", b"\r\n..\r\n\r"] {
            let mut s = Server::new(c.clone());
            feed_endless(&mut s, &txn(b"DATA\r\n"), pattern, 4 << 20);
            assert!(s.reading_data());
            assert!(s.txn.as_ref().unwrap().body.exceeded());
        }
        // Endless pipelined junk: output per read stays proportional to it.
        let mut s = Server::new(c.clone());
        let out = feed_endless(&mut s, b"", b"JUNK\r\n", 4 << 20);
        assert!(out <= (64 * 1024 / 6 + 1) * 41, "output {out}");
        assert!(s.error_count() > 100_000);
        // An endless BDAT chunk.
        let mut s = Server::new(c);
        feed_endless(
            &mut s,
            &txn(b"BDAT 18446744073709551615\r\n"),
            b"z",
            4 << 20,
        );
        assert!(s.reading_data());
    }
}
