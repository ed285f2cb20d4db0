//! [`HttpRelay`] (feature `http-relay`): delivery by HTTP `POST`, the relay
//! twin of the HTTP edge (`edge/http.rs`) and of python-slimta's
//! `HttpRelay`.
//!
//! The request body is the message (`Content-Type: message/rfc822`, CRLF
//! line ends as stored); the envelope travels in headers:
//! `X-Envelope-Sender` (base64 of the reverse path, empty for `<>`), one
//! `X-Envelope-Recipient` per recipient (base64), and `X-Ehlo` (this relay's
//! name). These are exactly what our HTTP edge reads.
//!
//! Design decisions:
//! - The answer is the response's `X-Smtp-Reply` when present
//!   (`250; message="2.6.0 Message queued as ID"`): its code decides, 2xx
//!   delivered, 4xx transient, 5xx permanent, like an SMTP reply. HTTP has
//!   one answer per request, so every recipient gets the same result.
//! - Without that header the status decides, by python-slimta's rule (its
//!   relay documentation): 2xx delivered, **4xx permanent** (the request
//!   itself is wrong and sending it again will not help), anything else
//!   (5xx, 3xx) transient.
//! - Connection failures and timeouts are transient; the timeout (default
//!   60 s) bounds the whole request, response included. A response that
//!   never came may mean the message was delivered anyway: a retry may then
//!   duplicate it, which is the lesser evil (as after a lost SMTP `250`).
//! - reqwest with rustls on aws-lc-rs (the project's one provider) and the
//!   platform's certificate verifier; no native-tls. Proxies from the
//!   environment are not used: a relay's destination is configured, not
//!   inherited from `HTTP_PROXY`. Redirects are not followed (a `POST` that
//!   is redirected is a configuration error to see, not to chase); a 3xx is
//!   transient.
//! - HTTP Basic credentials are optional (our edge requires them when it has
//!   credentials configured).

use std::time::Duration;

use crate::envelope::Envelope;
use crate::relay::{Delivery, Relay, RelayError};
use crate::reply::{EnhancedCode, Reply};
use crate::smtp::client::sasl_base64;

/// The request timeout when none is configured.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// A URL or client configuration that cannot be used.
#[derive(Debug)]
pub struct HttpRelayError(String);

impl std::fmt::Display for HttpRelayError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for HttpRelayError {}

/// Delivers every envelope by `POST` to one URL.
#[derive(Clone, Debug)]
pub struct HttpRelay {
    url: reqwest::Url,
    client: reqwest::Client,
    ehlo_as: String,
    timeout: Duration,
    basic_auth: Option<(String, String)>,
}

impl HttpRelay {
    /// A relay posting to `url` (`http://` or `https://`), announcing this
    /// machine's host name in `X-Ehlo`, with a 60 s timeout.
    ///
    /// # Errors
    ///
    /// [`HttpRelayError`] when `url` is not an absolute http(s) URL, or the
    /// HTTP client cannot be built (no TLS roots).
    pub fn new(url: &str) -> Result<Self, HttpRelayError> {
        let url = reqwest::Url::parse(url).map_err(|e| HttpRelayError(format!("{url}: {e}")))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(HttpRelayError(format!("{url}: not an http(s) URL")));
        }
        let client = reqwest::Client::builder()
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| HttpRelayError(format!("HTTP client: {e}")))?;
        let ehlo_as = gethostname::gethostname().to_string_lossy().into_owned();
        Ok(Self {
            url,
            client,
            ehlo_as: if ehlo_as.is_empty() {
                "localhost".into()
            } else {
                ehlo_as
            },
            timeout: DEFAULT_TIMEOUT,
            basic_auth: None,
        })
    }

    /// The name sent in `X-Ehlo` (default: this machine's host name).
    pub fn ehlo_as(mut self, name: impl Into<String>) -> Self {
        self.ehlo_as = name.into();
        self
    }

    /// The time limit of one request, response included (default 60 s).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Authenticate every request with HTTP Basic.
    pub fn basic_auth(mut self, username: impl Into<String>, password: impl Into<String>) -> Self {
        self.basic_auth = Some((username.into(), password.into()));
        self
    }
}

impl Relay for HttpRelay {
    async fn attempt(&self, envelope: &Envelope, _attempt: u32) -> Result<Delivery, RelayError> {
        let mut request = self
            .client
            .post(self.url.clone())
            .timeout(self.timeout)
            .header("Content-Type", "message/rfc822")
            .header("X-Envelope-Sender", sasl_base64(envelope.sender.as_bytes()))
            .header("X-Ehlo", self.ehlo_as.as_str())
            .body(envelope.message.clone());
        for recipient in &envelope.recipients {
            request = request.header("X-Envelope-Recipient", sasl_base64(recipient.as_bytes()));
        }
        if let Some((user, pass)) = &self.basic_auth {
            request = request.basic_auth(user, Some(pass));
        }
        let response = request.send().await.map_err(|e| self.failed(&e))?;
        let status = response.status();
        let header = response
            .headers()
            .get("x-smtp-reply")
            .and_then(|v| v.to_str().ok())
            .and_then(parse_smtp_reply_header);
        // The body does not matter; it is dropped unread with the response.
        drop(response);
        let reply = match header {
            Some(reply) => reply,
            None => {
                let text = format!("{} answered HTTP {status}", self.url);
                if status.is_success() {
                    Reply::new(250, "2.0.0", text)
                } else if status.is_client_error() {
                    Reply::new(550, "5.0.0", text)
                } else {
                    Reply::new(451, "4.0.0", text)
                }
            }
        };
        if reply.is_positive() {
            Ok(Delivery::all(reply))
        } else {
            Err(RelayError::from_reply(reply))
        }
    }
}

impl HttpRelay {
    fn failed(&self, e: &reqwest::Error) -> RelayError {
        let mut why = e.to_string();
        let mut source = std::error::Error::source(e);
        while let Some(s) = source {
            why.push_str(": ");
            why.push_str(&s.to_string());
            source = s.source();
        }
        let (enhanced, what) = if e.is_timeout() {
            ("4.4.2", "timed out")
        } else if e.is_connect() {
            ("4.4.1", "connection failed")
        } else {
            ("4.4.0", "failed")
        };
        RelayError::transient(Reply::new(
            451,
            enhanced,
            format!("POST to {} {what}: {why}", self.url),
        ))
    }
}

/// Parses `250; message="2.6.0 Message queued"` (the quoted text with
/// `\"` and `\\` escapes; an enhanced code at its start is taken when its
/// class matches the code). `None` for anything else.
fn parse_smtp_reply_header(value: &str) -> Option<Reply> {
    let (code, rest) = value.split_once(';').unwrap_or((value, ""));
    let code: u16 = code
        .trim()
        .parse()
        .ok()
        .filter(|c| (200..600).contains(c))?;
    let mut text = String::new();
    if let Some(start) = rest.find("message=\"") {
        let mut chars = rest[start + 9..].chars();
        while let Some(c) = chars.next() {
            match c {
                '\\' => text.extend(chars.next()),
                '"' => break,
                c => text.push(c),
            }
        }
    }
    let (first, after) = text.split_once(' ').unwrap_or((&text, ""));
    match first.parse::<EnhancedCode>() {
        Ok(e) if u16::from(e.class) == code / 100 => {
            Some(Reply::from_parts(code, Some(e), after.to_string()))
        }
        _ => Some(Reply::from_parts(code, None, text)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Code, enhanced code, text.
    type Parsed<'a> = (u16, Option<&'a str>, &'a str);

    #[test]
    fn parses_the_reply_header() {
        let cases: &[(&str, Option<Parsed<'_>>)] = &[
            (
                r#"250; message="2.6.0 Message queued as 1a""#,
                Some((250, Some("2.6.0"), "Message queued as 1a")),
            ),
            (
                r#"451; message="4.3.0 say \"later\" \\ ok""#,
                Some((451, Some("4.3.0"), r#"say "later" \ ok"#)),
            ),
            (r#"550; message="5.0.0""#, Some((550, Some("5.0.0"), ""))),
            (
                r#"550; message="2.0.0 mismatch""#,
                Some((550, None, "2.0.0 mismatch")),
            ),
            ("250", Some((250, None, ""))),
            ("abc; message=\"x\"", None),
            ("999; message=\"x\"", None),
        ];
        for (input, want) in cases {
            let got = parse_smtp_reply_header(input);
            let got = got.as_ref().map(|r| {
                (
                    r.code(),
                    r.enhanced().map(|e| e.to_string()),
                    r.text().to_string(),
                )
            });
            let want = want.map(|(c, e, t)| (c, e.map(String::from), t.to_string()));
            assert_eq!(got, want, "{input}");
        }
    }
}
