//! Delivery to a local program: [`PipeRelay`] and its presets
//! [`MaildropRelay`] and [`DovecotLdaRelay`], modelled on Postfix's `pipe`
//! daemon.
//!
//! The message goes to the program's standard input; the exit status says
//! what happened, in the `sysexits.h` convention every local delivery agent
//! follows.
//!
//! Design decisions:
//! - **No shell.** The command is a program and a list of arguments; each
//!   argument is a template in which `{sender}`, `{recipient}`,
//!   `{message_id}`, `{client_ip}`, `{client_host}` and `{helo}` are
//!   replaced. Values never pass through a shell, so an address cannot
//!   inject a command. An address that starts with `-` (it could be read as
//!   an option) or holds a control character is refused permanently
//!   (`553 5.1.3`/`5.1.7`) without running anything.
//! - `{sender}` of the null sender `<>` is `MAILER-DAEMON` (Postfix's
//!   default; a program given an empty argument often misreads it), unless
//!   [`PipeRelay::null_sender`] says otherwise. `{message_id}` is the value
//!   of the message's first `Message-Id` header, trimmed, or empty;
//!   `{client_ip}`, `{client_host}` and `{helo}` are empty when unknown.
//! - **Recipients.** With [`PipeRelay::per_recipient`] (the presets' mode)
//!   the program runs once per recipient, one after the other, and each gets
//!   its own result. Otherwise it runs once for the whole envelope and its
//!   result is every recipient's; an argument holding `{recipient}` is then
//!   repeated once per recipient (`["-d", "{recipient}"]` becomes
//!   `-d a@x b@y`), as Postfix's `${recipient}` does.
//! - **Line ends.** Local delivery agents and Maildir files use LF, so the
//!   message is written with CRLF turned into LF, unless
//!   [`PipeRelay::keep_crlf`] is set.
//! - **No deadlock.** Standard input is written while standard output and
//!   standard error are read, concurrently: a program that writes a lot
//!   before reading, or that reads slowly, cannot block the relay. Output is
//!   kept up to [`MAX_OUTPUT`] bytes per stream and the rest discarded; a
//!   program that exits without reading all its input is judged by its exit
//!   status alone (the broken pipe is not an error).
//! - **Exit status.** 0 is delivered (`250 2.0.0`); 75 (`EX_TEMPFAIL`) is
//!   transient (`451 4.3.0`); any other exit code is permanent (`550`, with
//!   an enhanced code from the sysexits value: 67 `EX_NOUSER` is `5.1.1`,
//!   77 `EX_NOPERM` `5.7.1`, 73 `EX_CANTCREAT` `5.2.0`, others `5.3.0`).
//!   The program's output (standard error, else standard output), made one
//!   line, trimmed and cut to [`MAX_REPLY_TEXT`] bytes, is the reply text. A
//!   program killed by a signal, or one that cannot be started (a
//!   configuration error that an operator fixes), is transient.
//! - **Timeout.** Each run has a time limit (default 10 minutes, Postfix's
//!   `command_time_limit` is 1000 s); past it the attempt is transient
//!   (`451 4.4.2`) and the program is killed with its whole process group:
//!   it runs in a group of its own so that children it started (a shell's
//!   `sleep`) die with it instead of keeping the pipes open. If the relay's
//!   future is dropped mid-run, `kill_on_drop` kills the program itself (not
//!   its group: there is no async drop to do more).
//! - Environment variables are inherited unchanged; the templates carry the
//!   envelope.

use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;

use crate::envelope::Envelope;
use crate::relay::{Delivery, Relay, RelayError};
use crate::reply::Reply;

/// The most bytes kept from each of the program's output streams.
pub const MAX_OUTPUT: usize = 4096;

/// The most bytes of program output used as reply text.
pub const MAX_REPLY_TEXT: usize = 400;

/// The exit status `EX_TEMPFAIL` of `sysexits.h`: try again later.
pub const EX_TEMPFAIL: i32 = 75;

const DEFAULT_TIMEOUT: Duration = Duration::from_secs(600);

/// Delivers by running a program with the message on its standard input.
#[derive(Clone, Debug)]
pub struct PipeRelay {
    program: String,
    args: Vec<String>,
    per_recipient: bool,
    timeout: Duration,
    null_sender: String,
    keep_crlf: bool,
}

/// The values the argument templates are filled with for one run.
struct Values<'a> {
    sender: &'a str,
    recipients: &'a [String],
    message_id: String,
    client_ip: String,
    client_host: &'a str,
    helo: &'a str,
}

impl PipeRelay {
    /// A relay running `command`: the program, then argument templates.
    /// Runs once for all recipients with a 10-minute limit until configured
    /// otherwise.
    pub fn new<I, S>(command: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let mut parts = command.into_iter().map(Into::into);
        let program = parts.next().unwrap_or_default();
        Self {
            program,
            args: parts.collect(),
            per_recipient: false,
            timeout: DEFAULT_TIMEOUT,
            null_sender: "MAILER-DAEMON".into(),
            keep_crlf: false,
        }
    }

    /// Run the program once per recipient, each with its own result
    /// (default: once for the envelope).
    pub fn per_recipient(mut self, yes: bool) -> Self {
        self.per_recipient = yes;
        self
    }

    /// The time limit of one run (default 10 minutes).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// What `{sender}` becomes for the null sender (default
    /// `MAILER-DAEMON`).
    pub fn null_sender(mut self, value: impl Into<String>) -> Self {
        self.null_sender = value.into();
        self
    }

    /// Write the message with its CRLF line ends (default: LF, as local
    /// delivery agents expect).
    pub fn keep_crlf(mut self, yes: bool) -> Self {
        self.keep_crlf = yes;
        self
    }

    /// The program and argument templates.
    pub fn command(&self) -> impl Iterator<Item = &str> {
        std::iter::once(self.program.as_str()).chain(self.args.iter().map(String::as_str))
    }

    /// Replaces the program and its argument templates, keeping every other
    /// setting (the presets below rebuild their command this way).
    fn set_command(&mut self, command: Vec<String>) {
        let mut parts = command.into_iter();
        self.program = parts.next().unwrap_or_default();
        self.args = parts.collect();
    }

    fn expand(&self, values: &Values<'_>) -> Vec<String> {
        let sender = if values.sender.is_empty() {
            self.null_sender.as_str()
        } else {
            values.sender
        };
        let fill = |template: &str, recipient: &str| {
            template
                .replace("{sender}", sender)
                .replace("{message_id}", &values.message_id)
                .replace("{client_ip}", &values.client_ip)
                .replace("{client_host}", values.client_host)
                .replace("{helo}", values.helo)
                .replace("{recipient}", recipient)
        };
        let mut out = Vec::with_capacity(self.args.len());
        for template in &self.args {
            if template.contains("{recipient}") {
                out.extend(values.recipients.iter().map(|r| fill(template, r)));
            } else {
                out.push(fill(template, ""));
            }
        }
        out
    }

    /// Runs the program once for `recipients`.
    async fn run(
        &self,
        envelope: &Envelope,
        recipients: &[String],
        input: &[u8],
    ) -> Result<Reply, RelayError> {
        let values = Values {
            sender: &envelope.sender,
            recipients,
            message_id: message_id(&envelope.message),
            client_ip: envelope
                .client
                .ip
                .map(|ip| ip.to_string())
                .unwrap_or_default(),
            client_host: envelope.client.host.as_deref().unwrap_or(""),
            helo: envelope.client.helo.as_deref().unwrap_or(""),
        };
        let args = self.expand(&values);
        let mut command = Command::new(&self.program);
        command
            .args(&args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .process_group(0);
        let mut child = command.spawn().map_err(|e| {
            RelayError::transient(Reply::new(
                451,
                "4.3.5",
                format!("Cannot run {}: {e}", self.program),
            ))
        })?;
        let pid = child.id();
        let mut stdin = child.stdin.take();
        let stdout = child.stdout.take();
        let stderr = child.stderr.take();
        let feed = async {
            if let Some(stdin) = stdin.as_mut() {
                // A program may exit without reading everything; its exit
                // status decides, not the broken pipe.
                let _ = stdin.write_all(input).await;
                let _ = stdin.shutdown().await;
            }
            drop(stdin);
        };
        let work = async {
            let ((), out, err, status) = tokio::join!(
                feed,
                read_bounded(stdout),
                read_bounded(stderr),
                child.wait()
            );
            (out, err, status)
        };
        let outcome = tokio::time::timeout(self.timeout, work).await;
        let Ok((out, err, status)) = outcome else {
            if let Some(pid) = pid.and_then(|p| i32::try_from(p).ok()) {
                let _ = nix::sys::signal::killpg(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            let _ = child.kill().await;
            return Err(RelayError::transient(Reply::new(
                451,
                "4.4.2",
                format!(
                    "{} timed out after {:?} and was killed",
                    self.program, self.timeout
                ),
            )));
        };
        let status = status.map_err(|e| {
            RelayError::transient(Reply::new(
                451,
                "4.3.0",
                format!("Lost {}: {e}", self.program),
            ))
        })?;
        judge(&self.program, status, &out, &err)
    }
}

/// Reads a whole stream, keeping the first [`MAX_OUTPUT`] bytes.
async fn read_bounded(stream: Option<impl AsyncRead + Unpin>) -> Vec<u8> {
    let mut kept = Vec::new();
    let Some(mut stream) = stream else {
        return kept;
    };
    let mut chunk = vec![0u8; 8192];
    loop {
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return kept,
            Ok(n) => {
                let room = MAX_OUTPUT.saturating_sub(kept.len());
                kept.extend_from_slice(&chunk[..n.min(room)]);
            }
        }
    }
}

/// Turns the exit status into a reply or an error.
fn judge(program: &str, status: ExitStatus, out: &[u8], err: &[u8]) -> Result<Reply, RelayError> {
    let said = reply_text(if err.iter().any(|b| !b.is_ascii_whitespace()) {
        err
    } else {
        out
    });
    let with = |what: String| {
        if said.is_empty() {
            what
        } else {
            format!("{what}: {said}")
        }
    };
    let Some(code) = status.code() else {
        return Err(RelayError::transient(Reply::new(
            451,
            "4.3.0",
            with(format!("{program} was killed ({status})")),
        )));
    };
    match code {
        0 => Ok(Reply::new(
            250,
            "2.0.0",
            with(format!("Delivered by {program}")),
        )),
        EX_TEMPFAIL => Err(RelayError::transient(Reply::new(
            451,
            "4.3.0",
            with(format!("{program} exited with {code} (temporary failure)")),
        ))),
        _ => {
            let enhanced = match code {
                67 => "5.1.1",
                73 => "5.2.0",
                77 => "5.7.1",
                _ => "5.3.0",
            };
            Err(RelayError::permanent(Reply::new(
                550,
                enhanced,
                with(format!("{program} exited with {code}")),
            )))
        }
    }
}

/// One line of printable text from program output, at most
/// [`MAX_REPLY_TEXT`] bytes.
fn reply_text(output: &[u8]) -> String {
    let text = String::from_utf8_lossy(output);
    let mut line = String::new();
    for word in text.split(|c: char| c.is_whitespace() || c.is_control()) {
        if word.is_empty() {
            continue;
        }
        let room = MAX_REPLY_TEXT.saturating_sub(line.len() + usize::from(!line.is_empty()));
        let mut take = word.len().min(room);
        while !word.is_char_boundary(take) {
            take -= 1;
        }
        if take == 0 {
            break;
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(&word[..take]);
        if take < word.len() {
            break;
        }
    }
    line
}

/// The value of the first `Message-Id` header field (unfolded, trimmed), or
/// an empty string.
fn message_id(message: &[u8]) -> String {
    let header_end = memchr::memmem::find(message, b"\r\n\r\n")
        .or_else(|| memchr::memmem::find(message, b"\n\n"))
        .unwrap_or(message.len());
    let header = String::from_utf8_lossy(&message[..header_end]);
    let mut lines = header.split('\n').map(|l| l.trim_end_matches('\r'));
    while let Some(line) = lines.next() {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        if !name.eq_ignore_ascii_case("message-id") {
            continue;
        }
        let mut value = value.trim().to_string();
        for cont in lines.by_ref() {
            if cont.starts_with([' ', '\t']) {
                value.push_str(cont.trim());
            } else {
                break;
            }
        }
        return value
            .chars()
            .filter(|c| !c.is_control())
            .collect::<String>();
    }
    String::new()
}

/// Why an address cannot be given to a program.
fn check_argument(address: &str, enhanced: &str) -> Result<(), RelayError> {
    if address.starts_with('-') || address.chars().any(char::is_control) {
        return Err(RelayError::permanent(Reply::new(
            553,
            enhanced,
            format!("Address {address:?} cannot be passed to a program"),
        )));
    }
    Ok(())
}

/// The message as the program reads it.
fn program_input(message: &[u8], keep_crlf: bool) -> std::borrow::Cow<'_, [u8]> {
    if keep_crlf || memchr::memchr(b'\r', message).is_none() {
        return std::borrow::Cow::Borrowed(message);
    }
    let mut out = Vec::with_capacity(message.len());
    let mut rest = message;
    while let Some(i) = memchr::memmem::find(rest, b"\r\n") {
        out.extend_from_slice(&rest[..i]);
        out.push(b'\n');
        rest = &rest[i + 2..];
    }
    out.extend_from_slice(rest);
    std::borrow::Cow::Owned(out)
}

impl Relay for PipeRelay {
    async fn attempt(&self, envelope: &Envelope, _attempt: u32) -> Result<Delivery, RelayError> {
        check_argument(&envelope.sender, "5.1.7")?;
        let input = program_input(&envelope.message, self.keep_crlf);
        if self.per_recipient {
            let mut results = Vec::with_capacity(envelope.recipients.len());
            let mut last = None;
            for recipient in &envelope.recipients {
                let result = match check_argument(recipient, "5.1.3") {
                    Ok(()) => {
                        self.run(envelope, std::slice::from_ref(recipient), &input)
                            .await
                    }
                    Err(e) => Err(e),
                };
                last = Some(match &result {
                    Ok(reply) => reply.clone(),
                    Err(e) => e.reply().clone(),
                });
                results.push(result);
            }
            let reply = last.unwrap_or_else(|| Reply::new(554, "5.5.1", "No recipients"));
            return Ok(Delivery::per_recipient(reply, results));
        }
        for recipient in &envelope.recipients {
            check_argument(recipient, "5.1.3")?;
        }
        let reply = self.run(envelope, &envelope.recipients, &input).await?;
        Ok(Delivery::all(reply))
    }
}

/// Local delivery with courier-maildrop, once per recipient.
///
/// By default runs `maildrop -f {sender} -d {recipient}` (delivery mode:
/// maildrop looks the recipient up as a local user and runs their
/// filter). With [`MaildropRelay::mailfilter`] it runs `maildrop -f
/// {sender} FILE {recipient}` instead: the given filter file decides, and
/// sees the recipient as `$1`.
#[derive(Clone, Debug)]
pub struct MaildropRelay {
    path: String,
    mailfilter: Option<PathBuf>,
    pipe: PipeRelay,
}

impl MaildropRelay {
    /// `maildrop` from PATH in delivery mode, with a 10-minute limit.
    pub fn new() -> Self {
        let mut relay = Self {
            path: "maildrop".into(),
            mailfilter: None,
            pipe: PipeRelay::new(["maildrop"]).per_recipient(true),
        };
        relay.rebuild();
        relay
    }

    fn rebuild(&mut self) {
        let mut command = vec![self.path.clone(), "-f".into(), "{sender}".into()];
        match &self.mailfilter {
            Some(file) => command.push(file.display().to_string()),
            None => command.push("-d".into()),
        }
        command.push("{recipient}".into());
        self.pipe.set_command(command);
    }

    /// The maildrop program (default `maildrop` from PATH).
    pub fn path(mut self, path: impl Into<String>) -> Self {
        self.path = path.into();
        self.rebuild();
        self
    }

    /// Use this filter file instead of the recipient's own (see the type's
    /// docs).
    pub fn mailfilter(mut self, file: impl Into<PathBuf>) -> Self {
        self.mailfilter = Some(file.into());
        self.rebuild();
        self
    }

    /// The time limit of one run (default 10 minutes).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.pipe = self.pipe.timeout(timeout);
        self
    }

    /// The underlying pipe relay.
    pub fn as_pipe(&self) -> &PipeRelay {
        &self.pipe
    }
}

impl Default for MaildropRelay {
    fn default() -> Self {
        Self::new()
    }
}

impl Relay for MaildropRelay {
    async fn attempt(&self, envelope: &Envelope, attempt: u32) -> Result<Delivery, RelayError> {
        self.pipe.attempt(envelope, attempt).await
    }
}

/// Local delivery with Dovecot's LDA, once per recipient:
/// `dovecot-lda [-c CONF] -f {sender} -d {recipient}`.
///
/// dovecot-lda looks the recipient up through the running Dovecot's auth
/// service and exits with `EX_TEMPFAIL` (transient) when it cannot, for
/// example while Dovecot is down; an unknown user is `EX_NOUSER` (permanent
/// `5.1.1`).
#[derive(Clone, Debug)]
pub struct DovecotLdaRelay {
    path: String,
    config: Option<PathBuf>,
    pipe: PipeRelay,
}

/// Where Debian installs dovecot-lda.
pub const DOVECOT_LDA_PATH: &str = "/usr/lib/dovecot/dovecot-lda";

impl DovecotLdaRelay {
    /// dovecot-lda at [`DOVECOT_LDA_PATH`] with Dovecot's default
    /// configuration and a 10-minute limit.
    pub fn new() -> Self {
        let mut relay = Self {
            path: DOVECOT_LDA_PATH.into(),
            config: None,
            pipe: PipeRelay::new([DOVECOT_LDA_PATH]).per_recipient(true),
        };
        relay.rebuild();
        relay
    }

    fn rebuild(&mut self) {
        let mut command = vec![self.path.clone()];
        if let Some(conf) = &self.config {
            command.push("-c".into());
            command.push(conf.display().to_string());
        }
        command.extend(["-f", "{sender}", "-d", "{recipient}"].map(String::from));
        self.pipe.set_command(command);
    }

    /// The dovecot-lda program.
    pub fn path(mut self, path: impl Into<String>) -> Self {
        self.path = path.into();
        self.rebuild();
        self
    }

    /// The Dovecot configuration file to pass with `-c`.
    pub fn config(mut self, file: impl Into<PathBuf>) -> Self {
        self.config = Some(file.into());
        self.rebuild();
        self
    }

    /// The time limit of one run (default 10 minutes).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.pipe = self.pipe.timeout(timeout);
        self
    }

    /// The underlying pipe relay.
    pub fn as_pipe(&self) -> &PipeRelay {
        &self.pipe
    }
}

impl Default for DovecotLdaRelay {
    fn default() -> Self {
        Self::new()
    }
}

impl Relay for DovecotLdaRelay {
    async fn attempt(&self, envelope: &Envelope, attempt: u32) -> Result<Delivery, RelayError> {
        self.pipe.attempt(envelope, attempt).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values<'a>(recipients: &'a [String]) -> Values<'a> {
        Values {
            sender: "",
            recipients,
            message_id: "<id@x.test>".into(),
            client_ip: "127.0.0.9".into(),
            client_host: "",
            helo: "client.test",
        }
    }

    #[test]
    fn templates_expand_and_repeat_recipients() {
        let relay = PipeRelay::new([
            "prog",
            "-f",
            "{sender}",
            "--to={recipient}",
            "{message_id}",
            "{client_ip}/{helo}/{client_host}",
        ]);
        let rcpts = vec!["a@x.test".to_string(), "b@y.test".to_string()];
        assert_eq!(
            relay.expand(&values(&rcpts)),
            [
                "-f",
                "MAILER-DAEMON",
                "--to=a@x.test",
                "--to=b@y.test",
                "<id@x.test>",
                "127.0.0.9/client.test/"
            ]
        );
    }

    #[test]
    fn finds_the_message_id() {
        let cases: &[(&[u8], &str)] = &[
            (b"Subject: x\r\nMessage-ID: <a@b>\r\n\r\nbody", "<a@b>"),
            (b"message-id:\r\n  <folded@b>\r\nX: y\r\n\r\n", "<folded@b>"),
            (b"Subject: x\r\n\r\nMessage-Id: <in-body@b>\r\n", ""),
            (b"Subject: x\n\nbody", ""),
        ];
        for (message, want) in cases {
            assert_eq!(message_id(message), *want, "{message:?}");
        }
    }

    #[test]
    fn output_becomes_one_bounded_line() {
        assert_eq!(
            reply_text(b"  no such\r\n user \x07 here\n\n"),
            "no such user here"
        );
        assert_eq!(reply_text(&[b'x'; 10_000]).len(), MAX_REPLY_TEXT);
        let words = "word ".repeat(1000);
        assert!(reply_text(words.as_bytes()).len() <= MAX_REPLY_TEXT);
    }

    #[test]
    fn crlf_becomes_lf() {
        assert_eq!(&*program_input(b"a\r\nb\rc\n", false), b"a\nb\rc\n");
        assert_eq!(&*program_input(b"a\r\n", true), b"a\r\n");
    }
}
