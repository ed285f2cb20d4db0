//! [`SpamAssassin`]: a queue policy that asks spamd for a verdict on the
//! whole message before it is stored, writes it into the message and,
//! when asked to, refuses spam.
//!
//! No crate speaks spamd's protocol, so it is here: [`protocol`] is the
//! sans-IO part (request head, answer parser with a size cap); this file is
//! the tokio driver: connect, send the head and the message, half-close, read
//! until the parser has a verdict, all under one time limit.
//!
//! Decisions:
//! - One connection per message (spamd closes after each answer anyway).
//! - The sender's `X-Spam*` fields are removed before the scan and the
//!   verdict written as `X-Spam-Status` / `X-Spam-Symbols` (see
//!   [`spam_headers`](super::spam_headers) for the exact values).
//! - Spam with `reject(true)` is refused with `554 5.7.1`, at the end of
//!   DATA through the edge that received it; nothing is stored.
//! - spamd down, slow or answering nonsense is an error handled by
//!   [`OnError`]: `Accept` stores the message marked `X-Spam-Status:
//!   Unknown, spamd unavailable` (the default: a scanner outage must not stop
//!   mail), `Tempfail` refuses it with `451 4.7.1` so the client retries.
//!   Either way the error is logged at `warn`; the message is never lost and
//!   the session goes on.
//! - Messages larger than [`DEFAULT_MAX_SIZE`] (500 KiB, spamc's own
//!   default) are not sent to spamd: they are stored marked `X-Spam-Status:
//!   Unknown, not scanned (larger than N bytes)`. Spam is small, and spamd
//!   would spend seconds and hundreds of MiB on a 50 MB attachment;
//!   [`SpamAssassin::max_size`] changes the limit (0: scan everything).

pub mod protocol;

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::envelope::Envelope;
use crate::reply::Reply;

use super::QueuePolicy;
use super::spam_headers::{self, OnError};
use protocol::{MAX_RESPONSE, SpamdResponse, parse_response, request_head};

/// The default time limit of one scan, connection included.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// Larger messages are not scanned by default (spamc's default).
pub const DEFAULT_MAX_SIZE: usize = 500 * 1024;

/// Asks spamd (SpamAssassin's daemon) about every message; see the module
/// docs.
#[derive(Clone, Debug)]
pub struct SpamAssassin {
    addr: SocketAddr,
    timeout: Duration,
    reject: bool,
    on_error: OnError,
    max_size: usize,
}

impl SpamAssassin {
    /// A policy asking spamd at `addr` (usually `127.0.0.1:783`), with a
    /// 10 s time limit, marking spam without refusing it and accepting
    /// mail when spamd cannot be asked.
    pub fn new(addr: SocketAddr) -> Self {
        Self {
            addr,
            timeout: DEFAULT_TIMEOUT,
            reject: false,
            on_error: OnError::Accept,
            max_size: DEFAULT_MAX_SIZE,
        }
    }

    /// Messages larger than `bytes` are stored unscanned, marked so
    /// (default [`DEFAULT_MAX_SIZE`]; 0 scans every message).
    pub fn max_size(mut self, bytes: usize) -> Self {
        self.max_size = bytes;
        self
    }

    /// The time limit of one scan: connecting, sending and the answer.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// `true`: refuse spam (`554 5.7.1`) instead of marking it.
    pub fn reject(mut self, reject: bool) -> Self {
        self.reject = reject;
        self
    }

    /// What to do when spamd cannot be asked.
    pub fn on_error(mut self, on_error: OnError) -> Self {
        self.on_error = on_error;
        self
    }

    /// spamd's verdict on `message`.
    ///
    /// # Errors
    ///
    /// A description of what failed: connecting, sending, the time limit,
    /// or an answer that is not a verdict.
    pub async fn scan(&self, message: &[u8]) -> Result<SpamdResponse, String> {
        tokio::time::timeout(self.timeout, self.exchange(message))
            .await
            .unwrap_or_else(|_| Err(format!("no answer within {:?}", self.timeout)))
    }

    async fn exchange(&self, message: &[u8]) -> Result<SpamdResponse, String> {
        let mut stream = TcpStream::connect(self.addr)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let sent = async {
            stream.write_all(&request_head(message.len())).await?;
            stream.write_all(message).await?;
            stream.shutdown().await
        };
        sent.await.map_err(|e| format!("send: {e}"))?;
        let mut buf = Vec::with_capacity(4096);
        loop {
            // Never more than one byte past the cap, which the parser refuses.
            let room = (MAX_RESPONSE + 1 - buf.len()).min(16 * 1024);
            let n = (&mut stream)
                .take(room as u64)
                .read_buf(&mut buf)
                .await
                .map_err(|e| format!("read: {e}"))?;
            if let Some(response) = parse_response(&buf, n == 0).map_err(|e| e.to_string())? {
                return Ok(response);
            }
        }
    }
}

impl QueuePolicy for SpamAssassin {
    async fn apply(&self, mut envelope: Envelope) -> Result<Vec<Envelope>, Reply> {
        spam_headers::remove_spam_fields(&mut envelope.message);
        if self.max_size > 0 && envelope.message.len() > self.max_size {
            tracing::info!(spamd = %self.addr, size = envelope.message.len(), max_size = self.max_size, "message too large to scan");
            let status = format!("Unknown, not scanned (larger than {} bytes)", self.max_size);
            spam_headers::stamp(&mut envelope, &status, &[]);
            return Ok(vec![envelope]);
        }
        match self.scan(&envelope.message).await {
            Ok(verdict) => {
                tracing::info!(
                    spamd = %self.addr,
                    spam = verdict.spam,
                    score = verdict.score,
                    required = verdict.required,
                    symbols = %verdict.symbols.join(","),
                    "spamd verdict"
                );
                if verdict.spam && self.reject {
                    return Err(Reply::new(554, "5.7.1", "Message refused as spam"));
                }
                let status =
                    spam_headers::status_value(verdict.spam, verdict.score, verdict.required);
                spam_headers::stamp(&mut envelope, &status, &verdict.symbols);
            }
            Err(why) => {
                tracing::warn!(spamd = %self.addr, error = %why, "spamd scan failed");
                if self.on_error == OnError::Tempfail {
                    return Err(Reply::new(
                        451,
                        "4.7.1",
                        "Message could not be scanned for spam, try again later",
                    ));
                }
                spam_headers::stamp(&mut envelope, &spam_headers::unknown_value("spamd"), &[]);
            }
        }
        Ok(vec![envelope])
    }
}
