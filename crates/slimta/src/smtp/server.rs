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

use std::sync::Arc;

use crate::envelope::BodyType;
use crate::reply::Reply;

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
}

impl Server {
    /// A new session, before the banner.
    pub fn new(config: Arc<ServerConfig>) -> Self {
        Self { config }
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
    /// 3.1).
    pub fn greet(&mut self, _banner: Reply) {
        todo!()
    }

    /// Appends received bytes. Call only after [`Step::NeedInput`].
    pub fn receive(&mut self, _input: &[u8]) {
        todo!()
    }

    /// Processes buffered input up to the next decision.
    pub fn step(&mut self) -> Step {
        todo!()
    }

    /// Answers the last [`Step::Event`].
    ///
    /// # Panics
    ///
    /// If there is no unanswered event.
    pub fn respond(&mut self, _reply: Reply) {
        todo!()
    }

    /// Bytes to send to the client.
    pub fn output(&self) -> &[u8] {
        todo!()
    }

    /// Forgets the output after it was sent.
    pub fn clear_output(&mut self) {
        todo!()
    }

    /// Whether the next input is message data (DATA or a BDAT chunk), so the
    /// driver applies the data timeout instead of the command timeout.
    pub fn reading_data(&self) -> bool {
        todo!()
    }

    /// The driver's read timed out: writes `421 4.4.2 <host> Error: timeout
    /// exceeded` and closes.
    pub fn timed_out(&mut self) {
        todo!()
    }

    /// The server is stopping: writes `421 4.3.2 <host> Service shutting
    /// down` and closes (call only while waiting for a command).
    pub fn shutting_down(&mut self) {
        todo!()
    }

    /// Whether a transaction (MAIL accepted) is under way.
    pub fn in_transaction(&self) -> bool {
        todo!()
    }
}
