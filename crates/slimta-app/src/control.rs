//! The control socket: how `slimta queue ...` reaches a running daemon.
//!
//! Decision: a running daemon serves a unix socket at
//! `<spool>/control.sock` for each disk queue, and the CLI talks to it.
//! The daemon must be the one that acts, because it owns the in-memory
//! schedule (a "retry now" that only rewrote the spool file would wait for
//! the old due time) and holds the spool's lock (a second process cannot
//! open the spool while it runs). When nothing answers on the socket the
//! CLI opens the spool itself (see `queue_cli.rs`); the spool lock makes
//! that safe against a daemon starting at the same moment.
//!
//! Access: the socket is made mode 0600 right after it is bound, inside the
//! spool directory, so only the spool's owner (and root) can use it. No
//! further authentication: whoever can open it can also edit the spool.
//!
//! The protocol is one request per connection, in lines of UTF-8:
//!
//! ```text
//! request  := verb [SP argument] LF
//! verb     := "LIST" | "SHOW" SP id | "RETRY" SP id | "RETRY-ALL"
//!           | "DELETE" SP id | "STATS"
//! response := status LF text       (then the server closes)
//! status   := "OK" | "NOTFOUND" SP reason | "ERR" SP reason
//! ```
//!
//! The text is what the CLI prints, formatted by the daemon with the same
//! functions the CLI uses when it reads the spool itself, so both paths
//! print the same thing. A request line longer than [`MAX_REQUEST`] bytes
//! is refused.

use std::fmt::Write as _;
use std::io;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use slimta::queue::{Dispatch, Queue, QueueEntry, QueueStats, QueueStorage, StoredEnvelope};
use slimta::relay::Relay;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

/// The socket's file name inside the spool directory.
pub const SOCKET_NAME: &str = "control.sock";

/// The longest request line accepted.
pub const MAX_REQUEST: usize = 1024;

/// The socket path of the spool at `spool`.
pub fn socket_path(spool: &Path) -> PathBuf {
    spool.join(SOCKET_NAME)
}

/// One operator request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    /// Every message, one line each.
    List,
    /// One message's envelope and headers.
    Show(String),
    /// Make one message due now.
    Retry(String),
    /// Make every message due now.
    RetryAll,
    /// Delete one message without delivering or bouncing it.
    Delete(String),
    /// Counts (and the spool's fsync count).
    Stats,
}

impl Request {
    /// The request line, without its LF.
    pub fn to_line(&self) -> String {
        match self {
            Self::List => "LIST".into(),
            Self::Show(id) => format!("SHOW {id}"),
            Self::Retry(id) => format!("RETRY {id}"),
            Self::RetryAll => "RETRY-ALL".into(),
            Self::Delete(id) => format!("DELETE {id}"),
            Self::Stats => "STATS".into(),
        }
    }

    /// Parses a request line (without its LF).
    ///
    /// # Errors
    ///
    /// A message saying what is wrong with the line.
    pub fn parse(line: &str) -> Result<Self, String> {
        let line = line.trim_end_matches(['\r', '\n']);
        let (verb, arg) = match line.split_once(' ') {
            Some((v, a)) => (v, Some(a)),
            None => (line, None),
        };
        let id = |arg: Option<&str>| match arg {
            Some(id) if !id.is_empty() && !id.contains(char::is_whitespace) => Ok(id.to_owned()),
            _ => Err(format!("{verb} needs one message id")),
        };
        match (verb, arg) {
            ("LIST", None) => Ok(Self::List),
            ("STATS", None) => Ok(Self::Stats),
            ("RETRY-ALL", None) => Ok(Self::RetryAll),
            ("SHOW", a) => Ok(Self::Show(id(a)?)),
            ("RETRY", a) => Ok(Self::Retry(id(a)?)),
            ("DELETE", a) => Ok(Self::Delete(id(a)?)),
            _ => Err(format!("unknown request {line:?}")),
        }
    }
}

/// The answer to a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Response {
    /// Done; the text to print.
    Ok(String),
    /// No such message.
    NotFound(String),
    /// Anything else that went wrong.
    Err(String),
}

impl Response {
    fn from_io(e: &io::Error) -> Self {
        if e.kind() == io::ErrorKind::NotFound {
            Self::NotFound(one_line(&e.to_string()))
        } else {
            Self::Err(one_line(&e.to_string()))
        }
    }

    fn to_bytes(&self) -> Vec<u8> {
        match self {
            Self::Ok(text) => format!("OK\n{text}"),
            Self::NotFound(why) => format!("NOTFOUND {why}\n"),
            Self::Err(why) => format!("ERR {why}\n"),
        }
        .into_bytes()
    }

    /// Parses what the daemon sent back.
    ///
    /// # Errors
    ///
    /// A message when the bytes are not a response.
    pub fn parse(bytes: &[u8]) -> Result<Self, String> {
        let text = String::from_utf8_lossy(bytes);
        let (status, rest) = text.split_once('\n').unwrap_or((&text, ""));
        if status == "OK" {
            Ok(Self::Ok(rest.to_owned()))
        } else if let Some(why) = status.strip_prefix("NOTFOUND ") {
            Ok(Self::NotFound(why.to_owned()))
        } else if let Some(why) = status.strip_prefix("ERR ") {
            Ok(Self::Err(why.to_owned()))
        } else {
            Err(format!("unexpected answer from the daemon: {status:?}"))
        }
    }
}

fn one_line(s: &str) -> String {
    s.replace(['\r', '\n'], " ")
}

/// Serves the control socket of `queue` at `path` until the task is
/// aborted. A stale socket file (from a daemon that was killed) is
/// replaced: the caller holds the spool's lock, so no live daemon owns it.
///
/// # Errors
///
/// When the socket cannot be bound or made private.
pub fn bind(path: &Path) -> io::Result<UnixListener> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let listener = UnixListener::bind(path)?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// Answers requests on `listener` for `queue`; `STATS` reports the
/// storage's own figures ([`QueueStorage::counters`]: fsyncs, journal).
pub async fn serve<S: QueueStorage, R: Relay, D: Dispatch>(
    listener: UnixListener,
    queue: Queue<S, R, D>,
) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                tracing::warn!(error = %e, "control socket accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let queue = queue.clone();
        tokio::spawn(async move {
            if let Err(e) = answer(stream, &queue).await {
                tracing::debug!(error = %e, "control connection failed");
            }
        });
    }
}

async fn answer<S: QueueStorage, R: Relay, D: Dispatch>(
    stream: UnixStream,
    queue: &Queue<S, R, D>,
) -> io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    let mut reader = BufReader::new(read.take(MAX_REQUEST as u64 + 1));
    reader.read_line(&mut line).await?;
    let response = if line.len() > MAX_REQUEST || !line.ends_with('\n') {
        Response::Err("request line too long or not terminated".into())
    } else {
        match Request::parse(&line) {
            Ok(request) => {
                tracing::info!(request = %request.to_line(), "control request");
                execute(queue, &request, &queue.storage().counters()).await
            }
            Err(why) => Response::Err(why),
        }
    };
    write.write_all(&response.to_bytes()).await?;
    write.shutdown().await
}

/// Runs one request against a queue.
pub async fn execute<S: QueueStorage, R: Relay, D: Dispatch>(
    queue: &Queue<S, R, D>,
    request: &Request,
    counters: &[(&'static str, u64)],
) -> Response {
    let result = match request {
        Request::List => queue.list().await.map(format_list),
        Request::Show(id) => queue.show(id).await.map(|s| format_show(id, &s)),
        Request::Retry(id) => queue
            .retry_now(id)
            .await
            .map(|()| format!("{id}: due now\n")),
        Request::RetryAll => queue
            .retry_all()
            .await
            .map(|n| format!("{n} messages due now\n")),
        Request::Delete(id) => queue.delete(id).await.map(|()| format!("{id}: deleted\n")),
        Request::Stats => queue
            .stats()
            .await
            .map(|stats| format_stats(&stats, counters)),
    };
    match result {
        Ok(text) => Response::Ok(text),
        Err(e) => Response::from_io(&e),
    }
}

fn time(t: Option<SystemTime>) -> String {
    t.map_or_else(
        || "-".to_owned(),
        |t| humantime::format_rfc3339_seconds(t).to_string(),
    )
}

fn sender(s: &str) -> String {
    format!("<{s}>")
}

/// `slimta queue list`: a header, then one tab-separated line per message
/// (id, sender, pending recipients, attempts, next attempt, last error),
/// oldest first.
pub fn format_list(mut entries: Vec<QueueEntry>) -> String {
    entries.sort_by(|a, b| (a.received, &a.id).cmp(&(b.received, &b.id)));
    let mut out = String::from("ID\tSENDER\tRECIPIENTS\tATTEMPTS\tNEXT_ATTEMPT\tLAST_ERROR\n");
    for e in &entries {
        let pending: Vec<String> = e
            .recipients
            .iter()
            .enumerate()
            .filter(|(i, _)| e.meta.delivered.binary_search(i).is_err())
            .map(|(_, r)| format!("<{r}>"))
            .collect();
        let _ = writeln!(
            out,
            "{}\t{}\t{}\t{}\t{}\t{}",
            e.id,
            sender(&e.sender),
            pending.join(","),
            e.meta.attempts,
            time(e.meta.timestamp),
            e.meta.last_error.as_deref().map_or("-".into(), one_line),
        );
    }
    out
}

/// `slimta queue show ID`: the envelope, the queue's facts, then the
/// header section of the message.
pub fn format_show(id: &str, stored: &StoredEnvelope) -> String {
    let e = &stored.envelope;
    let m = &stored.meta;
    let mut out = String::new();
    let _ = writeln!(out, "id: {id}");
    let _ = writeln!(out, "sender: {}", sender(&e.sender));
    for (i, r) in e.recipients.iter().enumerate() {
        let state = if m.delivered.binary_search(&i).is_ok() {
            "done"
        } else {
            "pending"
        };
        let _ = writeln!(out, "recipient: <{r}> {state}");
    }
    let _ = writeln!(out, "received: {}", time(Some(e.receive_time)));
    if let Some(ip) = e.client.ip {
        let _ = writeln!(
            out,
            "client: {ip} helo={}",
            e.client.helo.as_deref().unwrap_or("-")
        );
    }
    let _ = writeln!(out, "size: {}", e.message.len());
    let _ = writeln!(out, "attempts: {}", m.attempts);
    let _ = writeln!(out, "next attempt: {}", time(m.timestamp));
    let _ = writeln!(
        out,
        "last error: {}",
        m.last_error.as_deref().map_or("-".into(), one_line)
    );
    out.push('\n');
    let headers = &e.message[..e.header_len()];
    out.push_str(&String::from_utf8_lossy(headers).replace("\r\n", "\n"));
    out
}

/// `STATS`: one `key: value` line each.
pub fn format_stats(stats: &QueueStats, counters: &[(&'static str, u64)]) -> String {
    let mut out = format!(
        "messages: {}\nwaiting: {}\noldest_age_secs: {}\n",
        stats.messages,
        stats.waiting,
        stats
            .oldest
            .map_or(0, |_| stats.oldest_age(SystemTime::now()).as_secs()),
    );
    for (name, value) in counters {
        let _ = writeln!(out, "{name}: {value}");
    }
    let _ = writeln!(out, "dead_destinations: {}", stats.dead.len());
    for dead in &stats.dead {
        let _ = writeln!(
            out,
            "dead: {} failures={} probe_in_secs={} last_error={}",
            dead.destination,
            dead.failures,
            dead.probe_in.as_secs(),
            dead.last_error.replace('\n', " ")
        );
    }
    out
}

/// Sends one request to the daemon at `path`. `Ok(None)` when no daemon
/// answers there (no socket, or a stale one nobody listens on).
///
/// # Errors
///
/// When a daemon answered but the exchange failed.
pub async fn request(path: &Path, request: &Request) -> Result<Option<Response>, String> {
    let mut stream = match UnixStream::connect(path).await {
        Ok(s) => s,
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
            ) =>
        {
            return Ok(None);
        }
        Err(e) => return Err(format!("cannot reach {}: {e}", path.display())),
    };
    let talk = async {
        stream
            .write_all(format!("{}\n", request.to_line()).as_bytes())
            .await?;
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).await?;
        Ok::<_, io::Error>(answer)
    };
    let answer = tokio::time::timeout(std::time::Duration::from_secs(60), talk)
        .await
        .map_err(|_| format!("no answer from the daemon on {}", path.display()))?
        .map_err(|e| format!("control socket {}: {e}", path.display()))?;
    Response::parse(&answer).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip_and_bad_ones_are_refused() {
        for r in [
            Request::List,
            Request::Stats,
            Request::RetryAll,
            Request::Show("abc".into()),
            Request::Retry("abc".into()),
            Request::Delete("abc".into()),
        ] {
            assert_eq!(Request::parse(&format!("{}\n", r.to_line())), Ok(r));
        }
        for bad in ["SHOW", "SHOW ", "DELETE a b", "LIST x", "FLUSH", ""] {
            assert!(Request::parse(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            Response::parse(b"OK\nline\n"),
            Ok(Response::Ok("line\n".into()))
        );
        assert_eq!(
            Response::parse(b"NOTFOUND no queued message x\n"),
            Ok(Response::NotFound("no queued message x".into()))
        );
        assert!(Response::parse(b"HELLO\n").is_err());
    }
}
