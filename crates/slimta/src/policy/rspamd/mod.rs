//! [`Rspamd`]: a queue policy that asks rspamd (`POST /checkv2`, its HTTP
//! protocol) about the whole message before it is stored, and does what
//! rspamd's action says.
//!
//! The request carries the envelope as rspamd's headers (`IP`, `Helo`,
//! `Hostname`, `From`, one `Rcpt` per recipient, `Queue-Id`, and `User` for
//! an authenticated client); the body is the message. [`protocol`] reads the
//! JSON answer; this file is the reqwest driver and the policy.
//!
//! Decisions:
//! - rspamd decides, as it does behind Postfix's milter: `reject` is
//!   `554 5.7.1` with rspamd's `smtp_message` (`554 5.7.1 Gtube pattern`),
//!   `soft reject` is `451 4.7.1` (its message, else "Try again later"),
//!   `add header` and `rewrite subject` store the message marked
//!   `X-Spam-Status: YES`, `no action` marks it `NO`. `greylist` is stored
//!   and marked `NO`, as rspamd's own milter accepts it: when rspamd's
//!   greylist module does greylist a message it answers `soft reject`; a
//!   bare `greylist` means the score passed that threshold and nobody
//!   greylisted (it is below `add header`). The score shown as `required` is rspamd's
//!   `required_score` (its reject threshold).
//! - The milter header changes rspamd sends (`milter.remove_headers`, then
//!   `milter.add_headers`) are applied to stored mail, except that an
//!   `X-Spam-Status` or `X-Spam-Symbols` from rspamd's `milter_headers`
//!   module is left out: ours carry the verdict, one of each. The subject is not
//!   rewritten (rspamd's `subject` field is not read): the `YES` mark is
//!   what filters match.
//! - As for spamd, the sender's `X-Spam*` fields are removed before the scan
//!   (see [`spam_headers`](super::spam_headers)), and an rspamd that is
//!   down, slow, answers non-200 or non-JSON is handled by [`OnError`]
//!   (`X-Spam-Status: Unknown, rspamd unavailable`, or `451 4.7.1`).
//! - The answer is read chunk by chunk up to [`protocol::MAX_RESPONSE`]; a
//!   longer one is an error, not an allocation.

pub mod protocol;

use std::fmt;
use std::time::Duration;

use reqwest::header::{HeaderName, HeaderValue};

use crate::envelope::Envelope;
use crate::reply::Reply;

use super::QueuePolicy;
use super::spam_headers::{self, OnError, one_line};
use protocol::{Action, MAX_RESPONSE, RemoveHeader, RspamdResponse, parse_response};

/// The default time limit of one scan.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// A URL [`Rspamd::new`] cannot use.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RspamdError(String);

impl fmt::Display for RspamdError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for RspamdError {}

/// Asks rspamd about every message; see the module docs.
#[derive(Clone, Debug)]
pub struct Rspamd {
    url: reqwest::Url,
    client: reqwest::Client,
    timeout: Duration,
    on_error: OnError,
}

impl Rspamd {
    /// A policy asking the rspamd worker at `url` (e.g.
    /// `http://127.0.0.1:11333`; `/checkv2` is appended), with a 10 s
    /// time limit, accepting mail when rspamd cannot be asked.
    ///
    /// # Errors
    ///
    /// [`RspamdError`] when `url` is not an absolute http(s) URL or the HTTP
    /// client cannot be built.
    pub fn new(url: &str) -> Result<Self, RspamdError> {
        let base = reqwest::Url::parse(url).map_err(|e| RspamdError(format!("{url}: {e}")))?;
        if !matches!(base.scheme(), "http" | "https") {
            return Err(RspamdError(format!("{url}: not an http(s) URL")));
        }
        let mut url = base;
        let path = format!("{}/checkv2", url.path().trim_end_matches('/'));
        url.set_path(&path);
        let client = reqwest::Client::builder()
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| RspamdError(format!("HTTP client: {e}")))?;
        Ok(Self {
            url,
            client,
            timeout: DEFAULT_TIMEOUT,
            on_error: OnError::Accept,
        })
    }

    /// The time limit of one scan, answer included.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// What to do when rspamd cannot be asked.
    pub fn on_error(mut self, on_error: OnError) -> Self {
        self.on_error = on_error;
        self
    }

    /// rspamd's verdict on `envelope`.
    ///
    /// # Errors
    ///
    /// A description of what failed: the request, the time limit, a
    /// non-200 status, an answer too long or not a verdict.
    pub async fn scan(&self, envelope: &Envelope) -> Result<RspamdResponse, String> {
        let queue_id = uuid::Uuid::new_v4().simple().to_string();
        let client = &envelope.client;
        // rspamd reads these names case-insensitively, as HTTP says.
        let mut headers: Vec<(&'static str, &str)> = vec![("queue-id", &queue_id)];
        let ip = client.ip.map(|ip| ip.to_string());
        headers.extend(ip.as_deref().map(|ip| ("ip", ip)));
        headers.extend(client.helo.as_deref().map(|h| ("helo", h)));
        headers.extend(client.host.as_deref().map(|h| ("hostname", h)));
        headers.extend(client.auth.as_deref().map(|u| ("user", u)));
        if !envelope.sender.is_empty() {
            headers.push(("from", &envelope.sender));
        }
        headers.extend(envelope.recipients.iter().map(|r| ("rcpt", r.as_str())));
        let mut request = self
            .client
            .post(self.url.clone())
            .timeout(self.timeout)
            .body(envelope.message.clone());
        for (name, value) in headers {
            // A value no HTTP header can carry (a control character in a
            // HELO) is left out rather than failing the scan.
            if let Ok(value) = HeaderValue::from_bytes(value.as_bytes()) {
                request = request.header(HeaderName::from_static(name), value);
            }
        }
        let read = async {
            let mut response = request.send().await.map_err(|e| describe(&e))?;
            let status = response.status();
            if status != reqwest::StatusCode::OK {
                return Err(format!("HTTP {status}"));
            }
            let mut body = Vec::new();
            while let Some(chunk) = response.chunk().await.map_err(|e| describe(&e))? {
                if body.len() + chunk.len() > MAX_RESPONSE {
                    return Err(format!("answer longer than {MAX_RESPONSE} bytes"));
                }
                body.extend_from_slice(&chunk);
            }
            parse_response(&body)
        };
        // reqwest's timeout covers the body too; this one is a backstop.
        tokio::time::timeout(self.timeout, read)
            .await
            .unwrap_or_else(|_| Err(format!("no answer within {:?}", self.timeout)))
    }
}

/// A reqwest error with its causes (the cause says "connection refused").
fn describe(e: &reqwest::Error) -> String {
    let mut why = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        why.push_str(": ");
        why.push_str(&s.to_string());
        source = s.source();
    }
    why
}

/// Applies `milter.remove_headers`.
fn remove_headers(message: &mut Vec<u8>, remove: &[RemoveHeader]) {
    if remove.is_empty() {
        return;
    }
    spam_headers::remove_fields(message, |names| {
        let mut out = vec![false; names.len()];
        for r in remove {
            let at: Vec<usize> = (0..names.len())
                .filter(|&i| names[i].eq_ignore_ascii_case(r.name.as_bytes()))
                .collect();
            let chosen = match r.index {
                0 => at,
                n if n > 0 => usize::try_from(n - 1)
                    .ok()
                    .and_then(|i| at.get(i).copied())
                    .into_iter()
                    .collect(),
                n => usize::try_from(n.unsigned_abs())
                    .ok()
                    .and_then(|back| at.len().checked_sub(back))
                    .and_then(|i| at.get(i).copied())
                    .into_iter()
                    .collect(),
            };
            for i in chosen {
                out[i] = true;
            }
        }
        out
    });
}

/// Whether `name` is one of the fields this policy writes itself.
fn is_ours(name: &str) -> bool {
    name.eq_ignore_ascii_case("X-Spam-Status") || name.eq_ignore_ascii_case("X-Spam-Symbols")
}

/// Whether `name` can be a header field name (RFC 5322 ftext).
fn field_name_ok(name: &str) -> bool {
    !name.is_empty() && name.len() <= 76 && name.bytes().all(|b| b.is_ascii_graphic() && b != b':')
}

impl QueuePolicy for Rspamd {
    async fn apply(&self, mut envelope: Envelope) -> Result<Vec<Envelope>, Reply> {
        spam_headers::remove_spam_fields(&mut envelope.message);
        let verdict = match self.scan(&envelope).await {
            Ok(verdict) => verdict,
            Err(why) => {
                tracing::warn!(rspamd = %self.url, error = %why, "rspamd scan failed");
                if self.on_error == OnError::Tempfail {
                    return Err(Reply::new(
                        451,
                        "4.7.1",
                        "Message could not be scanned for spam, try again later",
                    ));
                }
                spam_headers::stamp(&mut envelope, &spam_headers::unknown_value("rspamd"), &[]);
                return Ok(vec![envelope]);
            }
        };
        tracing::info!(
            rspamd = %self.url,
            action = ?verdict.action,
            score = verdict.score,
            required = verdict.required,
            symbols = %verdict.symbols.join(","),
            "rspamd verdict"
        );
        let message = |default: &str| {
            verdict
                .smtp_message
                .as_deref()
                .map(|m| one_line(m, 200))
                .filter(|m| !m.is_empty())
                .unwrap_or_else(|| default.to_owned())
        };
        let spam = match verdict.action {
            Action::Reject => {
                return Err(Reply::new(554, "5.7.1", message("Spam message rejected")));
            }
            Action::SoftReject => {
                return Err(Reply::new(451, "4.7.1", message("Try again later")));
            }
            Action::AddHeader | Action::RewriteSubject => true,
            Action::NoAction | Action::Greylist => false,
        };
        remove_headers(&mut envelope.message, &verdict.remove_headers);
        // Prepended in reverse so they keep rspamd's order on top.
        for (name, value) in verdict.add_headers.iter().rev() {
            if field_name_ok(name) && !is_ours(name) {
                envelope.prepend_header(name, &one_line(value, 900));
            }
        }
        let status = spam_headers::status_value(spam, verdict.score, verdict.required);
        spam_headers::stamp(&mut envelope, &status, &verdict.symbols);
        Ok(vec![envelope])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_check_path_is_appended() {
        for (base, url) in [
            ("http://127.0.0.1:11333", "http://127.0.0.1:11333/checkv2"),
            ("http://127.0.0.1:11333/", "http://127.0.0.1:11333/checkv2"),
            (
                "https://scan.test/rspamd/",
                "https://scan.test/rspamd/checkv2",
            ),
        ] {
            assert_eq!(Rspamd::new(base).unwrap().url.as_str(), url);
        }
        assert!(Rspamd::new("ftp://x").is_err());
        assert!(Rspamd::new("127.0.0.1:11333").is_err());
    }

    #[test]
    fn milter_removals_pick_occurrences() {
        let message = b"A: 1\r\nB: x\r\nA: 2\r\nA: 3\r\n\r\nA: body\r\n";
        let cases: &[(i64, &[u8])] = &[
            (0, b"B: x\r\n\r\nA: body\r\n"),
            (1, b"B: x\r\nA: 2\r\nA: 3\r\n\r\nA: body\r\n"),
            (3, b"A: 1\r\nB: x\r\nA: 2\r\n\r\nA: body\r\n"),
            (-1, b"A: 1\r\nB: x\r\nA: 2\r\n\r\nA: body\r\n"),
            (-3, b"B: x\r\nA: 2\r\nA: 3\r\n\r\nA: body\r\n"),
            (4, message),
            (-4, message),
        ];
        for (index, expected) in cases {
            let mut m = message.to_vec();
            remove_headers(
                &mut m,
                &[RemoveHeader {
                    name: "a".into(),
                    index: *index,
                }],
            );
            assert_eq!(
                String::from_utf8_lossy(&m),
                String::from_utf8_lossy(expected),
                "index {index}"
            );
        }
    }

    #[test]
    fn field_names_from_rspamd_are_checked() {
        assert!(field_name_ok("X-Spamd-Bar"));
        assert!(!field_name_ok("X-Bad: injected"));
        assert!(!field_name_ok("X-Bad\r\nX-Evil"));
        assert!(!field_name_ok(""));
    }
}
