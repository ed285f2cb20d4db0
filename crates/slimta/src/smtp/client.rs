//! The SMTP client side, sans-IO: reply parsing, EHLO capabilities, command
//! formatting and the outbound DATA and BDAT encoders.
//!
//! The tokio driver in `relay/smtp/` owns the socket and the timers; this
//! module only turns bytes into [`Reply`] values and messages into bytes, so
//! every rule here is tested byte for byte without a network.
//!
//! Design decisions:
//! - [`parse_reply`] returns [`ReplyError::NeedMoreData`] separately from a
//!   malformed reply, and is bounded: a reply longer than
//!   [`MAX_REPLY_BYTES`] or with more than [`MAX_REPLY_LINES`] lines is
//!   invalid even while incomplete, so a hostile server cannot make the
//!   client buffer without limit.
//! - Reply lines normally end in CRLF; a bare LF is accepted too (being lenient
//!   with what a server says costs nothing here, unlike on the server side,
//!   where bare LF is a smuggling vector).
//! - The enhanced status code (RFC 2034) is taken from the first line only
//!   when its class matches the reply code (`250 2.1.0`, never `250 5.1.0`);
//!   it is stripped from every line that repeats it.
//! - [`encode_data`] normalises every bare CR and bare LF to CRLF before
//!   dot-stuffing. A message that arrived by BDAT, by HTTP or with bare line
//!   ends could otherwise carry a sequence such as `\n.\n` that a downstream
//!   server reads as the end of data (SMTP smuggling, CVE-2023-51764); after
//!   encoding, the only `CRLF . CRLF` is the terminator. This is Postfix's
//!   `cleanup_replace_stray_cr_lf` behaviour applied on the way out.
//! - [`encode_bdat_last`] (for servers offering CHUNKING) normalises the
//!   line ends the same way but does not dot-stuff: the chunk's size, not a
//!   terminator, ends it.
//! - Addresses are written back byte for byte, but one holding a control
//!   character (CR, LF, NUL, ...) is refused by [`mail_from`] / [`rcpt_to`]:
//!   it would inject a command into the session.

use std::fmt;

use crate::reply::{EnhancedCode, Reply};

/// The longest reply [`parse_reply`] accepts, in bytes, all lines included.
pub const MAX_REPLY_BYTES: usize = 64 * 1024;

/// The most lines one reply may have.
pub const MAX_REPLY_LINES: usize = 100;

/// Why [`parse_reply`] returned no reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ReplyError {
    /// The buffer holds the start of a reply; read more and try again.
    NeedMoreData,
    /// A line does not start with a three-digit code from 200 to 599.
    BadCode,
    /// The code is followed by something other than `-`, space or line end.
    BadSeparator,
    /// The lines of one multi-line reply carry different codes.
    MixedCodes,
    /// The reply exceeds [`MAX_REPLY_BYTES`].
    TooLong,
    /// The reply exceeds [`MAX_REPLY_LINES`].
    TooManyLines,
}

impl ReplyError {
    /// Whether more input could complete the reply (as opposed to a reply
    /// that is already invalid).
    pub fn is_incomplete(self) -> bool {
        self == ReplyError::NeedMoreData
    }
}

impl fmt::Display for ReplyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ReplyError::NeedMoreData => "incomplete reply",
            ReplyError::BadCode => "reply line without a valid three-digit code",
            ReplyError::BadSeparator => "reply code followed by an invalid separator",
            ReplyError::MixedCodes => "multi-line reply with different codes",
            ReplyError::TooLong => "reply too long",
            ReplyError::TooManyLines => "reply has too many lines",
        })
    }
}

impl std::error::Error for ReplyError {}

/// Parses one complete reply from the start of `buf`.
///
/// Returns the reply and the number of bytes it used; the caller drops those
/// bytes and keeps the rest (a pipelining server may have sent more).
///
/// # Errors
///
/// [`ReplyError::NeedMoreData`] when `buf` holds only part of a reply (and is
/// still within the bounds); any other variant when the bytes cannot be a
/// valid reply, whatever follows.
pub fn parse_reply(buf: &[u8]) -> Result<(Reply, usize), ReplyError> {
    let mut pos = 0;
    let mut code: Option<u16> = None;
    let mut texts: Vec<&[u8]> = Vec::new();
    loop {
        if texts.len() >= MAX_REPLY_LINES {
            return Err(ReplyError::TooManyLines);
        }
        let Some(nl) = memchr::memchr(b'\n', &buf[pos..]).map(|i| pos + i) else {
            // Validate what is there already, so garbage is reported at once
            // instead of after the buffer filled up.
            check_partial_line(&buf[pos..], code)?;
            if buf.len() > MAX_REPLY_BYTES {
                return Err(ReplyError::TooLong);
            }
            return Err(ReplyError::NeedMoreData);
        };
        if nl + 1 > MAX_REPLY_BYTES {
            return Err(ReplyError::TooLong);
        }
        let line = &buf[pos..nl];
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let (line_code, last, text) = split_line(line)?;
        if code.is_some_and(|c| c != line_code) {
            return Err(ReplyError::MixedCodes);
        }
        code = Some(line_code);
        texts.push(text);
        pos = nl + 1;
        if last {
            return Ok((build_reply(line_code, &texts), pos));
        }
    }
}

fn parse_code(bytes: &[u8]) -> Option<u16> {
    match bytes {
        [a @ b'2'..=b'5', b @ b'0'..=b'9', c @ b'0'..=b'9'] => {
            Some(u16::from(a - b'0') * 100 + u16::from(b - b'0') * 10 + u16::from(c - b'0'))
        }
        _ => None,
    }
}

/// Splits a line (without its line end) into code, "is last line" and text.
fn split_line(line: &[u8]) -> Result<(u16, bool, &[u8]), ReplyError> {
    let code = line
        .get(..3)
        .and_then(parse_code)
        .ok_or(ReplyError::BadCode)?;
    match line.get(3) {
        None => Ok((code, true, &[])),
        Some(b' ') => Ok((code, true, &line[4..])),
        Some(b'-') => Ok((code, false, &line[4..])),
        Some(_) => Err(ReplyError::BadSeparator),
    }
}

/// Rejects a partial line that can no longer become valid.
fn check_partial_line(partial: &[u8], code: Option<u16>) -> Result<(), ReplyError> {
    let head = &partial[..partial.len().min(3)];
    let prefix_ok = head.iter().enumerate().all(|(i, b)| match i {
        0 => (b'2'..=b'5').contains(b),
        _ => b.is_ascii_digit(),
    });
    if !prefix_ok {
        return Err(ReplyError::BadCode);
    }
    if partial.len() >= 3 {
        let line_code = parse_code(&partial[..3]).ok_or(ReplyError::BadCode)?;
        if code.is_some_and(|c| c != line_code) {
            return Err(ReplyError::MixedCodes);
        }
    }
    match partial.get(3) {
        None | Some(b' ' | b'-' | b'\r') => Ok(()),
        Some(_) => Err(ReplyError::BadSeparator),
    }
}

fn build_reply(code: u16, texts: &[&[u8]]) -> Reply {
    let first = String::from_utf8_lossy(texts[0]);
    let token = first.split(' ').next().unwrap_or("");
    let enhanced = token
        .parse::<EnhancedCode>()
        .ok()
        .filter(|e| u16::from(e.class) == code / 100);
    let mut text = String::new();
    for (i, raw) in texts.iter().enumerate() {
        if i > 0 {
            text.push('\n');
        }
        let line = String::from_utf8_lossy(raw);
        let line = match enhanced {
            Some(_) => strip_code(&line, token),
            None => &line,
        };
        text.push_str(line);
    }
    Reply::from_parts(code, enhanced, text)
}

fn strip_code<'a>(line: &'a str, token: &str) -> &'a str {
    match line.strip_prefix(token) {
        Some("") => "",
        Some(rest) if rest.starts_with(' ') => &rest[1..],
        _ => line,
    }
}

/// What a server offered in its EHLO reply (only the extensions the relay
/// uses; others are ignored).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Extensions {
    /// PIPELINING (RFC 2920).
    pub pipelining: bool,
    /// SIZE (RFC 1870): `Some(limit)`, where `Some(0)` means offered without
    /// a fixed limit; `None` when not offered.
    pub size: Option<u64>,
    /// 8BITMIME (RFC 6152).
    pub eightbitmime: bool,
    /// SMTPUTF8 (RFC 6531).
    pub smtputf8: bool,
    /// STARTTLS (RFC 3207).
    pub starttls: bool,
    /// AUTH (RFC 4954) mechanisms, upper-cased, in the server's order.
    pub auth: Vec<String>,
    /// CHUNKING / BDAT (RFC 3030).
    pub chunking: bool,
    /// ENHANCEDSTATUSCODES (RFC 2034).
    pub enhanced_status_codes: bool,
}

impl Extensions {
    /// Reads the capabilities from a positive EHLO reply: every line after
    /// the first (which is the server's name) is a keyword with parameters.
    /// Keywords are case-insensitive; a malformed SIZE value counts as "SIZE
    /// without a limit"; unknown keywords are ignored.
    pub fn from_ehlo(reply: &Reply) -> Self {
        let mut ext = Extensions::default();
        for line in reply.text().split('\n').skip(1) {
            let mut words = line.split_ascii_whitespace();
            let Some(keyword) = words.next() else {
                continue;
            };
            match keyword.to_ascii_uppercase().as_str() {
                "PIPELINING" => ext.pipelining = true,
                "SIZE" => ext.size = Some(words.next().and_then(|n| n.parse().ok()).unwrap_or(0)),
                "8BITMIME" => ext.eightbitmime = true,
                "SMTPUTF8" => ext.smtputf8 = true,
                "STARTTLS" => ext.starttls = true,
                "CHUNKING" => ext.chunking = true,
                "ENHANCEDSTATUSCODES" => ext.enhanced_status_codes = true,
                "AUTH" => {
                    for mech in words {
                        let mech = mech.to_ascii_uppercase();
                        if !ext.auth.contains(&mech) {
                            ext.auth.push(mech);
                        }
                    }
                }
                _ => {}
            }
        }
        ext
    }
}

/// Parameters of a MAIL FROM command.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MailFromParams {
    /// `SIZE=n` (only when the server offered SIZE).
    pub size: Option<u64>,
    /// `BODY=8BITMIME` (only when the server offered 8BITMIME).
    pub eightbitmime: bool,
    /// `SMTPUTF8` (only when the server offered SMTPUTF8).
    pub smtputf8: bool,
}

/// An address that cannot be written into a command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BadAddress(pub String);

impl fmt::Display for BadAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "address {:?} contains a control character", self.0)
    }
}

impl std::error::Error for BadAddress {}

fn check_address(address: &str) -> Result<(), BadAddress> {
    if address.bytes().any(|b| b.is_ascii_control()) {
        return Err(BadAddress(address.to_string()));
    }
    Ok(())
}

/// `MAIL FROM:<sender> [params]\r\n`.
///
/// # Errors
///
/// [`BadAddress`] when `sender` contains a control character.
pub fn mail_from(sender: &str, params: MailFromParams) -> Result<Vec<u8>, BadAddress> {
    check_address(sender)?;
    let mut cmd = format!("MAIL FROM:<{sender}>");
    if let Some(size) = params.size {
        cmd.push_str(&format!(" SIZE={size}"));
    }
    if params.eightbitmime {
        cmd.push_str(" BODY=8BITMIME");
    }
    if params.smtputf8 {
        cmd.push_str(" SMTPUTF8");
    }
    cmd.push_str("\r\n");
    Ok(cmd.into_bytes())
}

/// `RCPT TO:<recipient>\r\n`.
///
/// # Errors
///
/// [`BadAddress`] when `recipient` contains a control character.
pub fn rcpt_to(recipient: &str) -> Result<Vec<u8>, BadAddress> {
    check_address(recipient)?;
    Ok(format!("RCPT TO:<{recipient}>\r\n").into_bytes())
}

/// Appends `message` to `out` as DATA content: every bare CR and bare LF
/// becomes CRLF, lines starting with `.` get another `.`, a final CRLF is
/// added when missing, then the `.\r\n` terminator.
///
/// An empty message is just the terminator.
pub fn encode_data(message: &[u8], out: &mut Vec<u8>) {
    out.reserve(message.len() + message.len() / 64 + 5);
    encode_lines(message, true, out);
    out.extend_from_slice(b".\r\n");
}

/// Appends `BDAT <size> LAST\r\n` and `message` as its one chunk (RFC
/// 3030): every bare CR and bare LF becomes CRLF and a final CRLF is added
/// when missing, as for DATA, but nothing is dot-stuffed (a chunk has no
/// terminator to protect). The size counts the chunk as written.
///
/// The line ends are normalised although BDAT could carry them as they are:
/// without BINARYMIME the content must still be CRLF lines (RFC 3030 3),
/// and the next hop may forward it with DATA (see the module docs).
pub fn encode_bdat_last(message: &[u8], out: &mut Vec<u8>) {
    let size = normalised_len(message);
    out.reserve(size + 32);
    out.extend_from_slice(format!("BDAT {size} LAST\r\n").as_bytes());
    let start = out.len();
    encode_lines(message, false, out);
    debug_assert_eq!(out.len() - start, size);
}

/// The length of `message` once [`encode_lines`] has made its line ends
/// CRLF (without dot-stuffing).
fn normalised_len(message: &[u8]) -> usize {
    let mut len = message.len();
    let mut rest = message;
    while let Some(i) = memchr::memchr2(b'\r', b'\n', rest) {
        if rest[i] == b'\r' && rest.get(i + 1) == Some(&b'\n') {
            rest = &rest[i + 2..];
        } else {
            // A bare CR or LF becomes two bytes.
            len += 1;
            rest = &rest[i + 1..];
        }
    }
    if !rest.is_empty() {
        len += 2;
    }
    len
}

/// Appends `message` with every bare CR and bare LF made CRLF and a final
/// CRLF when the last line has none; with `stuff_dots`, every line starting
/// with `.` gets another `.`.
fn encode_lines(message: &[u8], stuff_dots: bool, out: &mut Vec<u8>) {
    let mut rest = message;
    let mut line_start = true;
    while !rest.is_empty() {
        if stuff_dots && line_start && rest[0] == b'.' {
            out.push(b'.');
        }
        match memchr::memchr2(b'\r', b'\n', rest) {
            None => {
                out.extend_from_slice(rest);
                line_start = false;
                break;
            }
            Some(i) => {
                out.extend_from_slice(&rest[..i]);
                out.extend_from_slice(b"\r\n");
                let end_len = if rest[i] == b'\r' && rest.get(i + 1) == Some(&b'\n') {
                    2
                } else {
                    1
                };
                rest = &rest[i + end_len..];
                line_start = true;
            }
        }
    }
    if !line_start {
        out.extend_from_slice(b"\r\n");
    }
}

/// A SASL mechanism of the client's AUTH (RFC 4954).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum AuthMechanism {
    /// CRAM-MD5 (RFC 2195): the password never crosses the wire.
    CramMd5,
    /// PLAIN (RFC 4616): the password in base64.
    Plain,
    /// LOGIN (a draft, widely deployed): user name and password in base64.
    Login,
}

impl AuthMechanism {
    /// The name in the AUTH command.
    pub fn name(self) -> &'static str {
        match self {
            AuthMechanism::CramMd5 => "CRAM-MD5",
            AuthMechanism::Plain => "PLAIN",
            AuthMechanism::Login => "LOGIN",
        }
    }

    /// Whether the mechanism reveals the password to an eavesdropper.
    pub fn sends_password(self) -> bool {
        self != AuthMechanism::CramMd5
    }
}

/// The strongest of the `offered` mechanisms (upper-cased, as in
/// [`Extensions::auth`]) the client supports: CRAM-MD5, then PLAIN, then
/// LOGIN. PLAIN and LOGIN only when `password_may_be_sent` (the session is
/// encrypted, or the operator allowed plaintext AUTH).
pub fn choose_auth_mechanism(
    offered: &[String],
    password_may_be_sent: bool,
) -> Option<AuthMechanism> {
    [
        AuthMechanism::CramMd5,
        AuthMechanism::Plain,
        AuthMechanism::Login,
    ]
    .into_iter()
    .filter(|m| password_may_be_sent || !m.sends_password())
    .find(|m| offered.iter().any(|o| o == m.name()))
}

/// Base64 (standard alphabet, padded) of `bytes`, as SASL exchanges use.
pub fn sasl_base64(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// The PLAIN initial response: base64 of `\0username\0password`.
pub fn auth_plain_response(username: &str, password: &str) -> String {
    sasl_base64(format!("\0{username}\0{password}").as_bytes())
}

/// A server challenge that is not valid base64.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BadChallenge(pub String);

impl fmt::Display for BadChallenge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid SASL challenge {:?}", self.0)
    }
}

impl std::error::Error for BadChallenge {}

/// The CRAM-MD5 response to `challenge` (the base64 text of the server's
/// `334` reply): base64 of `username SP hex(HMAC-MD5(password, challenge))`.
///
/// # Errors
///
/// [`BadChallenge`] when `challenge` is not base64.
pub fn cram_md5_response(
    username: &str,
    password: &str,
    challenge: &str,
) -> Result<String, BadChallenge> {
    use base64::Engine as _;
    use hmac::{Hmac, Mac};
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(challenge.trim())
        .map_err(|_| BadChallenge(challenge.to_string()))?;
    let mut mac = Hmac::<md5::Md5>::new_from_slice(password.as_bytes())
        .expect("HMAC accepts keys of any length");
    mac.update(&decoded);
    let digest = mac.finalize().into_bytes();
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    Ok(sasl_base64(format!("{username} {hex}").as_bytes()))
}

#[cfg(test)]
mod auth_tests {
    use super::*;

    #[test]
    fn chooses_the_strongest_allowed_mechanism() {
        let offered = |s: &str| s.split(' ').map(String::from).collect::<Vec<_>>();
        let cases = [
            ("PLAIN LOGIN CRAM-MD5", true, Some(AuthMechanism::CramMd5)),
            ("PLAIN LOGIN", true, Some(AuthMechanism::Plain)),
            ("LOGIN", true, Some(AuthMechanism::Login)),
            ("PLAIN LOGIN", false, None),
            ("LOGIN CRAM-MD5", false, Some(AuthMechanism::CramMd5)),
            ("XOAUTH2", true, None),
        ];
        for (o, allowed, want) in cases {
            assert_eq!(choose_auth_mechanism(&offered(o), allowed), want, "{o}");
        }
    }

    #[test]
    fn sasl_responses_match_the_rfc_examples() {
        // RFC 4616 section 4 (without authzid).
        assert_eq!(
            auth_plain_response("tim", "tanstaaftanstaaf"),
            "AHRpbQB0YW5zdGFhZnRhbnN0YWFm"
        );
        // RFC 2195 section 2.
        let challenge = sasl_base64(b"<1896.697170952@postoffice.reston.mci.net>");
        let response = cram_md5_response("tim", "tanstaaftanstaaf", &challenge).unwrap();
        assert_eq!(
            response,
            sasl_base64(b"tim b913a602c7eda7a495b4e6e7334d3890")
        );
        assert!(cram_md5_response("tim", "x", "not base64!").is_err());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_ok(input: &[u8]) -> (Reply, usize) {
        parse_reply(input).unwrap_or_else(|e| panic!("{:?}: {e}", String::from_utf8_lossy(input)))
    }

    /// Input, code, enhanced code, text, bytes used.
    type ReplyCase<'a> = (&'a [u8], u16, Option<EnhancedCode>, &'a str, usize);

    #[test]
    fn parses_replies() {
        let e = |c, s, d| Some(EnhancedCode::new(c, s, d));
        let cases: &[ReplyCase<'_>] = &[
            (b"220 mx.test ESMTP\r\n", 220, None, "mx.test ESMTP", 19),
            (b"250 2.1.0 Ok\r\n", 250, e(2, 1, 0), "Ok", 14),
            (
                b"250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n",
                250,
                e(2, 1, 0),
                "Ok",
                14,
            ),
            (b"250\r\n", 250, None, "", 5),
            (b"250 \r\n", 250, None, "", 6),
            (b"354 End data\n", 354, None, "End data", 13),
            (b"550 5.1.1\r\n", 550, e(5, 1, 1), "", 11),
            (
                b"250 5.1.0 class mismatch\r\n",
                250,
                None,
                "5.1.0 class mismatch",
                26,
            ),
            (b"250 2.1.0x\r\n", 250, None, "2.1.0x", 12),
            (
                b"250-mx.test\r\n250-PIPELINING\r\n250 SIZE 1000\r\n",
                250,
                None,
                "mx.test\nPIPELINING\nSIZE 1000",
                44,
            ),
            (
                b"550-5.7.1 first\r\n550-5.7.1 second\r\n550 5.7.1 third\r\n",
                550,
                e(5, 7, 1),
                "first\nsecond\nthird",
                52,
            ),
            (
                b"421-4.3.2 a\r\n421 other\r\n",
                421,
                e(4, 3, 2),
                "a\nother",
                24,
            ),
            (
                b"250 caf\xc3\xa9 \xff\r\n",
                250,
                None,
                "caf\u{e9} \u{fffd}",
                13,
            ),
        ];
        for &(input, code, enhanced, text, used) in cases {
            let (reply, n) = parse_ok(input);
            assert_eq!(reply.code(), code, "{input:?}");
            assert_eq!(reply.enhanced(), enhanced, "{input:?}");
            assert_eq!(reply.text(), text, "{input:?}");
            assert_eq!(n, used, "{input:?}");
        }
    }

    #[test]
    fn incomplete_is_not_invalid() {
        for input in [
            &b""[..],
            b"2",
            b"25",
            b"250",
            b"250-",
            b"250 Ok",
            b"250 Ok\r",
            b"250-a\r\n",
            b"250-a\r\n25",
            b"250-a\r\n250-b\r\n250 c",
        ] {
            assert_eq!(
                parse_reply(input),
                Err(ReplyError::NeedMoreData),
                "{input:?}"
            );
            assert!(parse_reply(input).unwrap_err().is_incomplete());
        }
    }

    #[test]
    fn rejects_invalid_replies() {
        let cases: &[(&[u8], ReplyError)] = &[
            (b"hello\r\n", ReplyError::BadCode),
            (b"h", ReplyError::BadCode),
            (b"2x0 Ok\r\n", ReplyError::BadCode),
            (b"150 Ok\r\n", ReplyError::BadCode),
            (b"650 Ok\r\n", ReplyError::BadCode),
            (b"25\r\n", ReplyError::BadCode),
            (b"250Ok\r\n", ReplyError::BadSeparator),
            (b"250Ok", ReplyError::BadSeparator),
            (b"250_", ReplyError::BadSeparator),
            (b"250-a\r\n550 b\r\n", ReplyError::MixedCodes),
            (b"250-a\r\n550", ReplyError::MixedCodes),
            (b"250-a\r\nxyz", ReplyError::BadCode),
        ];
        for (input, err) in cases {
            assert_eq!(parse_reply(input).map(|_| ()), Err(*err), "{input:?}");
        }
    }

    #[test]
    fn replies_are_bounded() {
        let mut many = Vec::new();
        for _ in 0..MAX_REPLY_LINES {
            many.extend_from_slice(b"250-x\r\n");
        }
        assert_eq!(
            parse_reply(&many).map(|_| ()),
            Err(ReplyError::TooManyLines)
        );
        let mut ok = b"250-x\r\n".repeat(MAX_REPLY_LINES - 1);
        ok.extend_from_slice(b"250 y\r\n");
        assert_eq!(parse_ok(&ok).0.text().lines().count(), MAX_REPLY_LINES);

        let mut long = b"250 ".to_vec();
        long.resize(MAX_REPLY_BYTES + 1, b'a');
        assert_eq!(parse_reply(&long).map(|_| ()), Err(ReplyError::TooLong));
        long.extend_from_slice(b"\r\n");
        assert_eq!(parse_reply(&long).map(|_| ()), Err(ReplyError::TooLong));
        let mut fits = b"250 ".to_vec();
        fits.resize(MAX_REPLY_BYTES - 2, b'a');
        fits.extend_from_slice(b"\r\n");
        assert_eq!(parse_ok(&fits).1, MAX_REPLY_BYTES);
    }

    #[test]
    fn parses_any_split_of_a_multi_line_reply() {
        let wire = b"250-mx.test says hi\r\n250-PIPELINING\r\n250-SIZE 1000\r\n250 8BITMIME\r\n";
        let (whole, n) = parse_ok(wire);
        assert_eq!(n, wire.len());
        for cut in 0..wire.len() {
            assert_eq!(
                parse_reply(&wire[..cut]),
                Err(ReplyError::NeedMoreData),
                "cut {cut}"
            );
        }
        assert_eq!(
            whole.text(),
            "mx.test says hi\nPIPELINING\nSIZE 1000\n8BITMIME"
        );
    }

    #[test]
    fn reply_parser_never_panics_and_round_trips() {
        use proptest::prelude::*;
        proptest!(|(input in prop::collection::vec(any::<u8>(), 0..300))| {
            if let Ok((_, used)) = parse_reply(&input) {
                prop_assert!(used > 0 && used <= input.len());
            }
        });
        let line = "[ -~]{0,40}";
        proptest!(|(code in 200u16..600, lines in prop::collection::vec(line, 1..5), rest in prop::collection::vec(any::<u8>(), 0..20))| {
            let reply = Reply::new(code, "", lines.join("\n"));
            let mut wire = reply.to_bytes();
            let len = wire.len();
            wire.extend_from_slice(&rest);
            let (parsed, used) = parse_reply(&wire).unwrap();
            prop_assert_eq!(used, len);
            prop_assert_eq!(parsed.code(), code);
            prop_assert_eq!(parsed.to_bytes(), reply.to_bytes());
        });
    }

    #[test]
    fn reads_ehlo_extensions() {
        let (reply, _) = parse_ok(
            b"250-mx.test\r\n250-pipelining\r\n250-SIZE 10240000\r\n250-8BITMIME\r\n\
              250-SMTPUTF8\r\n250-STARTTLS\r\n250-AUTH PLAIN login PLAIN\r\n\
              250-AUTH=LOGIN\r\n250-CHUNKING\r\n250-X-UNKNOWN a b\r\n250 ENHANCEDSTATUSCODES\r\n",
        );
        let ext = Extensions::from_ehlo(&reply);
        assert_eq!(
            ext,
            Extensions {
                pipelining: true,
                size: Some(10_240_000),
                eightbitmime: true,
                smtputf8: true,
                starttls: true,
                auth: vec!["PLAIN".into(), "LOGIN".into()],
                chunking: true,
                enhanced_status_codes: true,
            }
        );
        let (bare, _) = parse_ok(b"250-mx.test\r\n250 SIZE\r\n");
        assert_eq!(Extensions::from_ehlo(&bare).size, Some(0));
        // The greeting line is the server's name, never a keyword.
        let (name_only, _) = parse_ok(b"250 PIPELINING\r\n");
        assert_eq!(Extensions::from_ehlo(&name_only), Extensions::default());
    }

    #[test]
    fn formats_commands() {
        assert_eq!(
            mail_from("a@x.test", MailFromParams::default()).unwrap(),
            b"MAIL FROM:<a@x.test>\r\n"
        );
        let all = MailFromParams {
            size: Some(1234),
            eightbitmime: true,
            smtputf8: true,
        };
        assert_eq!(
            mail_from("", all).unwrap(),
            b"MAIL FROM:<> SIZE=1234 BODY=8BITMIME SMTPUTF8\r\n"
        );
        assert_eq!(rcpt_to("b@y.test").unwrap(), b"RCPT TO:<b@y.test>\r\n");
        for evil in ["a@x\r\nRCPT TO:<c@d>", "a\n", "a\0b", "a\rb"] {
            assert!(mail_from(evil, MailFromParams::default()).is_err());
            assert!(rcpt_to(evil).is_err());
        }
    }

    fn encode(message: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        encode_data(message, &mut out);
        out
    }

    #[test]
    fn encodes_data() {
        let cases: &[(&[u8], &[u8])] = &[
            (b"", b".\r\n"),
            (b"a\r\n", b"a\r\n.\r\n"),
            (b"a", b"a\r\n.\r\n"),
            (b"a\r\nb", b"a\r\nb\r\n.\r\n"),
            (b".", b"..\r\n.\r\n"),
            (b".\r\n", b"..\r\n.\r\n"),
            (b".a\r\n..b\r\nc.\r\n.", b"..a\r\n...b\r\nc.\r\n..\r\n.\r\n"),
            (b"a\nb\n", b"a\r\nb\r\n.\r\n"),
            (b"a\rb\r", b"a\r\nb\r\n.\r\n"),
            (b"a\r\rb", b"a\r\n\r\nb\r\n.\r\n"),
            (b"a\n\rb", b"a\r\n\r\nb\r\n.\r\n"),
            (b"\r\n", b"\r\n.\r\n"),
            (b"\n", b"\r\n.\r\n"),
            (b"\r", b"\r\n.\r\n"),
            (b"x\n.\n", b"x\r\n..\r\n.\r\n"),
            (b"x\r.\r", b"x\r\n..\r\n.\r\n"),
            (b"\x80\xff\x00\r\n", b"\x80\xff\x00\r\n.\r\n"),
        ];
        for (input, want) in cases {
            assert_eq!(
                String::from_utf8_lossy(&encode(input)),
                String::from_utf8_lossy(want),
                "{:?}",
                String::from_utf8_lossy(input)
            );
        }
    }

    fn encode_bdat(message: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        encode_bdat_last(message, &mut out);
        out
    }

    #[test]
    fn encodes_bdat() {
        let cases: &[(&[u8], &[u8])] = &[
            (b"", b"BDAT 0 LAST\r\n"),
            (b"a\r\n", b"BDAT 3 LAST\r\na\r\n"),
            (b"a", b"BDAT 3 LAST\r\na\r\n"),
            (b".\r\n", b"BDAT 3 LAST\r\n.\r\n"),
            (b"x\n.\n", b"BDAT 6 LAST\r\nx\r\n.\r\n"),
            (b"a\r\rb", b"BDAT 8 LAST\r\na\r\n\r\nb\r\n"),
            (b"\x80\x00\r\n", b"BDAT 4 LAST\r\n\x80\x00\r\n"),
        ];
        for (input, want) in cases {
            assert_eq!(
                String::from_utf8_lossy(&encode_bdat(input)),
                String::from_utf8_lossy(want),
                "{:?}",
                String::from_utf8_lossy(input)
            );
        }
    }

    /// Every string of up to 7 bytes over `a . CR LF`: the chunk is the DATA
    /// encoding without its dot-stuffing and terminator, and the size in
    /// the command is the chunk's length.
    #[test]
    fn bdat_chunk_is_data_without_stuffing() {
        let alphabet = [b'a', b'.', b'\r', b'\n'];
        for len in 0..=7u32 {
            for n in 0..4usize.pow(len) {
                let input: Vec<u8> = (0..len)
                    .map(|k| alphabet[(n / 4usize.pow(k)) % 4])
                    .collect();
                let out = encode_bdat(&input);
                let header_end = memchr::memmem::find(&out, b"\r\n").unwrap() + 2;
                let header = std::str::from_utf8(&out[..header_end]).unwrap();
                let chunk = &out[header_end..];
                assert_eq!(header, format!("BDAT {} LAST\r\n", chunk.len()));
                let data = encode(&input);
                let mut unstuffed = Vec::new();
                for line in data[..data.len() - 3].split_inclusive(|&b| b == b'\n') {
                    unstuffed.extend_from_slice(line.strip_prefix(b".").unwrap_or(line));
                }
                assert_eq!(chunk, unstuffed, "{input:?}");
            }
        }
    }

    /// The only CR and LF in the output are CRLF pairs, and the only
    /// `CRLF . CRLF` is the terminator.
    fn assert_safe(input: &[u8]) {
        let out = encode(input);
        let dot = memchr::memmem::find_iter(&out, b"\r\n.\r\n").collect::<Vec<_>>();
        if out == b".\r\n" {
            assert!(dot.is_empty());
        } else {
            assert_eq!(
                dot,
                vec![out.len() - 5],
                "{:?} -> {:?}",
                String::from_utf8_lossy(input),
                String::from_utf8_lossy(&out)
            );
        }
        for (i, &b) in out.iter().enumerate() {
            match b {
                b'\r' => assert_eq!(out.get(i + 1), Some(&b'\n'), "bare CR in {out:?}"),
                b'\n' => assert!(i > 0 && out[i - 1] == b'\r', "bare LF in {out:?}"),
                _ => {}
            }
        }
    }

    #[test]
    fn smuggling_sequences_cannot_end_the_data() {
        let tail = b"MAIL FROM:<evil@attacker.test>\r\nRCPT TO:<victim@example.test>\r\nDATA\r\nSubject: smuggled\r\n\r\nhidden\r\n.\r\n";
        let seqs: &[&[u8]] = &[
            b"\n.\n",
            b"\n.\r",
            b"\r.\n",
            b"\r.\r",
            b"\n.\r\n",
            b"\r.\r\n",
            b"\r\n.\n",
            b"\r\n.\r",
            b"\r\n\0.\r\n",
            b"\r\n.\0\r\n",
        ];
        for seq in seqs {
            let mut message = b"x".to_vec();
            message.extend_from_slice(seq);
            message.extend_from_slice(tail);
            assert_safe(&message);
            // The smuggled "end of data" and the hidden one both got stuffed.
            let out = encode(&message);
            assert!(memchr::memmem::find(&out, b"hidden\r\n..\r\n.\r\n").is_some());
        }
    }

    #[test]
    fn encoder_is_safe_for_arbitrary_input() {
        use proptest::prelude::*;
        let alphabet = prop::sample::select(vec![b'\r', b'\n', b'.', b'a', b'\0']);
        proptest!(|(input in prop::collection::vec(alphabet, 0..64))| {
            assert_safe(&input);
            // Unstuffing the output gives the input with normalised line ends.
            let out = encode(&input);
            let body = &out[..out.len() - 3];
            let mut unstuffed = Vec::new();
            for line in body.split_inclusive(|&b| b == b'\n') {
                unstuffed.extend_from_slice(line.strip_prefix(b".").unwrap_or(line));
            }
            let mut normalised = Vec::new();
            let mut i = 0;
            while i < input.len() {
                match input[i] {
                    b'\r' if input.get(i + 1) == Some(&b'\n') => { normalised.extend_from_slice(b"\r\n"); i += 1; }
                    b'\r' | b'\n' => normalised.extend_from_slice(b"\r\n"),
                    b => normalised.push(b),
                }
                i += 1;
            }
            if !normalised.is_empty() && !normalised.ends_with(b"\r\n") {
                normalised.extend_from_slice(b"\r\n");
            }
            prop_assert_eq!(unstuffed, normalised);
        });
    }
}
