//! The spamd protocol (SPAMC/1.5), sans-IO: the request head to send before
//! the message, and the parser of spamd's answer.
//!
//! Only `SYMBOLS` is sent: its answer carries the verdict (`Spam: True ;
//! 1005.2 / 5.0`) and the rules that fired (the body, `GTUBE,NO_RELAYS`),
//! which is all the policy writes. The parser tells "need more bytes"
//! (`Ok(None)`) from "bad input" (`Err`), and refuses an answer longer than
//! [`MAX_RESPONSE`] so a broken or hostile spamd cannot make us buffer
//! without end. An answer without `Content-length` (what `CHECK` gives) ends
//! at its blank line.

use std::fmt;

/// The longest answer read from spamd (head and symbol list).
pub const MAX_RESPONSE: usize = 64 * 1024;

/// The request head for a message of `message_len` bytes; the message
/// follows it, then the client half-closes.
pub fn request_head(message_len: usize) -> Vec<u8> {
    format!("SYMBOLS SPAMC/1.5\r\nContent-length: {message_len}\r\n\r\n").into_bytes()
}

/// spamd's verdict on one message.
#[derive(Clone, Debug, PartialEq)]
pub struct SpamdResponse {
    /// `Spam: True`.
    pub spam: bool,
    /// The message's score.
    pub score: f64,
    /// The score at which a message is spam.
    pub required: f64,
    /// The rules that fired, in spamd's order.
    pub symbols: Vec<String>,
}

/// An answer that is not a spamd verdict.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BadResponse(pub String);

impl fmt::Display for BadResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for BadResponse {}

fn bad(why: impl Into<String>) -> BadResponse {
    BadResponse(why.into())
}

/// Parses spamd's answer from the bytes read so far; `eof` tells that
/// spamd closed the connection (nothing more will come).
///
/// # Errors
///
/// [`BadResponse`] for an answer that is not a verdict: spamd's own error
/// (`SPAMD/1.0 76 Bad header line`), a missing or malformed `Spam:` header,
/// an answer cut short by the close, or one longer than [`MAX_RESPONSE`].
pub fn parse_response(buf: &[u8], eof: bool) -> Result<Option<SpamdResponse>, BadResponse> {
    if buf.len() > MAX_RESPONSE {
        return Err(bad(format!("answer longer than {MAX_RESPONSE} bytes")));
    }
    let Some(status_end) = memchr::memmem::find(buf, b"\r\n") else {
        return if eof {
            Err(bad(format!(
                "connection closed after {} bytes, before a status line",
                buf.len()
            )))
        } else {
            Ok(None)
        };
    };
    check_status(&buf[..status_end])?;
    let Some(head_end) = memchr::memmem::find(buf, b"\r\n\r\n") else {
        return if eof {
            Err(bad("connection closed before the end of the answer's head"))
        } else {
            Ok(None)
        };
    };
    let mut verdict = None;
    let mut length = None;
    // A head of only the status line has its blank line right after it.
    let fields = buf.get(status_end + 2..head_end).unwrap_or_default();
    for line in fields.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
        let line = std::str::from_utf8(line.trim_ascii())
            .map_err(|_| bad("answer header is not UTF-8"))?;
        let Some((name, value)) = line.split_once(':') else {
            return Err(bad(format!("bad answer header {line:?}")));
        };
        let value = value.trim();
        if name.trim().eq_ignore_ascii_case("Spam") {
            verdict = Some(parse_spam_header(value)?);
        } else if name.trim().eq_ignore_ascii_case("Content-length") {
            let n: usize = value
                .parse()
                .map_err(|_| bad(format!("bad Content-length {value:?}")))?;
            if n > MAX_RESPONSE {
                return Err(bad(format!("answer longer than {MAX_RESPONSE} bytes")));
            }
            length = Some(n);
        }
    }
    let (spam, score, required) = verdict.ok_or_else(|| bad("answer has no Spam header"))?;
    let body_start = head_end + 4;
    let body = match length {
        Some(n) if buf.len() - body_start < n => {
            return if eof {
                Err(bad(format!(
                    "connection closed after {} of {n} body bytes",
                    buf.len() - body_start
                )))
            } else {
                Ok(None)
            };
        }
        Some(n) => &buf[body_start..body_start + n],
        None => &[][..],
    };
    let symbols = String::from_utf8_lossy(body)
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect();
    Ok(Some(SpamdResponse {
        spam,
        score,
        required,
        symbols,
    }))
}

/// `SPAMD/1.1 0 EX_OK`; any other code is spamd refusing the request.
fn check_status(line: &[u8]) -> Result<(), BadResponse> {
    let line = String::from_utf8_lossy(line);
    let mut parts = line.splitn(3, ' ');
    let (Some(version), Some(code)) = (parts.next(), parts.next()) else {
        return Err(bad(format!("bad status line {line:?}")));
    };
    if !version.starts_with("SPAMD/") {
        return Err(bad(format!("bad status line {line:?}")));
    }
    match code.parse::<u32>() {
        Ok(0) => Ok(()),
        Ok(_) => Err(bad(format!("spamd refused the request: {line}"))),
        Err(_) => Err(bad(format!("bad status line {line:?}"))),
    }
}

/// `True ; 1005.2 / 5.0`.
fn parse_spam_header(value: &str) -> Result<(bool, f64, f64), BadResponse> {
    let malformed = || bad(format!("bad Spam header {value:?}"));
    let (flag, scores) = value.split_once(';').ok_or_else(malformed)?;
    let (score, required) = scores.split_once('/').ok_or_else(malformed)?;
    let spam = match flag.trim() {
        f if f.eq_ignore_ascii_case("true") || f.eq_ignore_ascii_case("yes") => true,
        f if f.eq_ignore_ascii_case("false") || f.eq_ignore_ascii_case("no") => false,
        _ => return Err(malformed()),
    };
    let score: f64 = score.trim().parse().map_err(|_| malformed())?;
    let required: f64 = required.trim().parse().map_err(|_| malformed())?;
    if !score.is_finite() || !required.is_finite() {
        return Err(malformed());
    }
    Ok((spam, score, required))
}

#[cfg(test)]
mod tests {
    use super::*;

    const GTUBE: &[u8] = b"SPAMD/1.1 0 EX_OK\r\nContent-length: 27\r\nSpam: True ; 1005.2 / 5.0\r\n\r\nGTUBE,NO_RECEIVED,NO_RELAYS";

    fn verdict(spam: bool, score: f64, required: f64, symbols: &[&str]) -> SpamdResponse {
        SpamdResponse {
            spam,
            score,
            required,
            symbols: symbols.iter().map(|s| (*s).to_owned()).collect(),
        }
    }

    #[test]
    fn request_head_announces_the_length() {
        assert_eq!(
            request_head(84),
            b"SYMBOLS SPAMC/1.5\r\nContent-length: 84\r\n\r\n"
        );
    }

    #[test]
    fn complete_answers() {
        let cases: &[(&[u8], SpamdResponse)] = &[
            (
                GTUBE,
                verdict(true, 1005.2, 5.0, &["GTUBE", "NO_RECEIVED", "NO_RELAYS"]),
            ),
            (
                b"SPAMD/1.1 0 EX_OK\r\nContent-length: 0\r\nSpam: False ; -0.0 / 5.0\r\n\r\n",
                verdict(false, 0.0, 5.0, &[]),
            ),
            // CHECK's answer: no Content-length, nothing after the head.
            (
                b"SPAMD/1.1 0 EX_OK\r\nSpam: False ; 1.5 / 5.0\r\n\r\n",
                verdict(false, 1.5, 5.0, &[]),
            ),
            (
                b"SPAMD/1.5 0 EX_OK\r\nspam: yes ; 6 / 5\r\ncontent-length: 3\r\n\r\nA,B\r\n",
                verdict(true, 6.0, 5.0, &["A", "B"]),
            ),
        ];
        for (input, expected) in cases {
            assert_eq!(
                parse_response(input, false).as_ref(),
                Ok(&Some(expected.clone())),
                "{}",
                String::from_utf8_lossy(input)
            );
            assert_eq!(parse_response(input, true), Ok(Some(expected.clone())));
        }
    }

    #[test]
    fn every_prefix_of_an_answer_needs_more_bytes_and_is_bad_at_eof() {
        for n in 0..GTUBE.len() {
            assert_eq!(parse_response(&GTUBE[..n], false), Ok(None), "prefix {n}");
            assert!(parse_response(&GTUBE[..n], true).is_err(), "prefix {n}");
        }
    }

    #[test]
    fn bad_answers() {
        let cases: &[(&[u8], &str)] = &[
            (
                b"SPAMD/1.0 76 Bad header line: (Content-length mismatch)\r\n",
                "spamd refused the request: SPAMD/1.0 76 Bad header line: (Content-length mismatch)",
            ),
            (
                b"HTTP/1.1 200 OK\r\n\r\n",
                "bad status line \"HTTP/1.1 200 OK\"",
            ),
            (
                b"SPAMD/1.1 x EX_OK\r\n",
                "bad status line \"SPAMD/1.1 x EX_OK\"",
            ),
            (b"SPAMD/1.1 0 EX_OK\r\n\r\n", "answer has no Spam header"),
            (
                b"SPAMD/1.1 0 EX_OK\r\nSpam: Maybe ; 1 / 5\r\n\r\n",
                "bad Spam header \"Maybe ; 1 / 5\"",
            ),
            (
                b"SPAMD/1.1 0 EX_OK\r\nSpam: True ; NaN / 5\r\n\r\n",
                "bad Spam header \"True ; NaN / 5\"",
            ),
            (
                b"SPAMD/1.1 0 EX_OK\r\nSpam: True 1 / 5\r\n\r\n",
                "bad Spam header \"True 1 / 5\"",
            ),
            (
                b"SPAMD/1.1 0 EX_OK\r\nContent-length: x\r\nSpam: True ; 1 / 5\r\n\r\n",
                "bad Content-length \"x\"",
            ),
            (
                b"SPAMD/1.1 0 EX_OK\r\nContent-length: 9999999\r\nSpam: True ; 1 / 5\r\n\r\n",
                "answer longer than 65536 bytes",
            ),
            (
                b"SPAMD/1.1 0 EX_OK\r\nno colon\r\n\r\n",
                "bad answer header \"no colon\"",
            ),
        ];
        for (input, why) in cases {
            assert_eq!(
                parse_response(input, false),
                Err(BadResponse((*why).to_owned())),
                "{}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn an_endless_answer_is_refused_at_the_cap() {
        let mut endless = b"SPAMD/1.1 0 EX_OK\r\nX: ".to_vec();
        endless.resize(MAX_RESPONSE, b'a');
        assert_eq!(parse_response(&endless, false), Ok(None));
        endless.push(b'a');
        assert!(parse_response(&endless, false).is_err());
    }
}
