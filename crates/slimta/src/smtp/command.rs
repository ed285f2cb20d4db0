//! Command-line parsing: verbs, arguments and ESMTP parameters.
//!
//! The server cuts a command line at CRLF and hands it here without the
//! CRLF; this module turns it into a [`Verb`] and arguments, or into the
//! reply that refuses it. Sequence rules (MAIL before HELO, ...) are the
//! server's business, not this module's, because they depend on the session.
//!
//! Decision: hand-written, not the `smtp-proto` crate. `smtp-proto` 0.2.5
//! (stalwartlabs) was evaluated: it is a solid parser, but its receiver
//! ends command lines at a bare LF, it tolerates LF-only line ends, answers
//! over-long lines differently from the project's policy (discard to the
//! next CRLF, then `500 5.5.2`), and its errors do not carry the reply texts
//! other parts of slimta match on. Wrapping it would mean re-checking every
//! line for bare CR/LF and re-deriving every reply, so the part we would
//! reuse is small compared to what we would have to work around; the
//! grammar itself (RFC 5321 4.1) is short. We own and test the behaviour.
//!
//! Decisions on the grammar:
//! - Verbs are matched case-insensitively and must be followed by exactly
//!   one SP or the end of the line (`MAILX` is unknown, `NOOP\tx` too).
//! - `MAIL FROM:` / `RCPT TO:` tolerate one space after the colon (many
//!   clients send `MAIL FROM: <a@b>`); angle brackets are required.
//! - ESMTP parameters are separated by one or more spaces; a trailing space
//!   is tolerated. Keywords are compared case-insensitively and echoed in
//!   upper case in `555 5.5.4 Unsupported parameter: KEYWORD`.
//! - `BODY=` values other than `7BIT` and `8BITMIME` (including the not
//!   offered `BINARYMIME`) get 555 naming the value; a `SIZE=` value that
//!   is all digits but does not fit 64 bits is "too large" (552), any other
//!   bad value is a syntax error (501). A repeated parameter is a syntax
//!   error.
//! - BDAT arguments are parsed from raw bytes (before any UTF-8 check):
//!   `BDAT SP 1*DIGIT [SP "LAST"]`, nothing else. Anything else is
//!   unrecoverable (the chunk would be read as commands), see the server.
//! - The accepted MAIL and RCPT parameters ([`MailParams`], [`RcptParams`])
//!   are defined here, where they are parsed, and the server re-exports
//!   them: the server uses the parser, never the other way round.

use crate::envelope::BodyType;
use crate::reply::Reply;
use crate::smtp::address::{parse_forward_path, parse_reverse_path};

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

/// The command word of a line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verb {
    /// `HELO`.
    Helo,
    /// `EHLO`.
    Ehlo,
    /// `MAIL`.
    Mail,
    /// `RCPT`.
    Rcpt,
    /// `DATA`.
    Data,
    /// `BDAT` (RFC 3030).
    Bdat,
    /// `RSET`.
    Rset,
    /// `NOOP`.
    Noop,
    /// `QUIT`.
    Quit,
    /// `VRFY`.
    Vrfy,
    /// `EXPN`.
    Expn,
    /// `HELP`.
    Help,
    /// `STARTTLS` (RFC 3207).
    Starttls,
    /// `AUTH` (RFC 4954).
    Auth,
    /// `LHLO` (RFC 2033, LMTP only).
    Lhlo,
    /// Anything else.
    Unknown,
}

impl Verb {
    /// Recognises a command word (ASCII case-insensitive).
    pub fn parse(word: &[u8]) -> Verb {
        const VERBS: [(&[u8], Verb); 15] = [
            (b"HELO", Verb::Helo),
            (b"EHLO", Verb::Ehlo),
            (b"MAIL", Verb::Mail),
            (b"RCPT", Verb::Rcpt),
            (b"DATA", Verb::Data),
            (b"BDAT", Verb::Bdat),
            (b"RSET", Verb::Rset),
            (b"NOOP", Verb::Noop),
            (b"QUIT", Verb::Quit),
            (b"VRFY", Verb::Vrfy),
            (b"EXPN", Verb::Expn),
            (b"HELP", Verb::Help),
            (b"STARTTLS", Verb::Starttls),
            (b"AUTH", Verb::Auth),
            (b"LHLO", Verb::Lhlo),
        ];
        VERBS
            .iter()
            .find(|(w, _)| w.eq_ignore_ascii_case(word))
            .map_or(Verb::Unknown, |&(_, v)| v)
    }
}

/// Splits a command line (without CRLF) at its first space: the verb and
/// the argument after that space (`None` if the line has no space).
pub fn split_line(line: &[u8]) -> (Verb, Option<&[u8]>) {
    match line.iter().position(|&c| c == b' ') {
        Some(i) => (Verb::parse(&line[..i]), Some(&line[i + 1..])),
        None => (Verb::parse(line), None),
    }
}

/// Whether `prefix` (the start of a line, possibly cut short) is a BDAT
/// command: `BDAT` followed by a space, or a prefix too short to tell.
pub fn looks_like_bdat(prefix: &[u8]) -> bool {
    let n = prefix.len().min(5);
    b"BDAT "
        .get(..n)
        .is_some_and(|w| w.eq_ignore_ascii_case(&prefix[..n]))
        && n >= 4
}

/// Whether `prefix` (the start of a line, possibly cut short) may be an
/// AUTH command: a prefix of `AUTH ` as far as it goes. Such a line may be
/// longer than the command-line limit (RFC 4954 section 4).
pub fn looks_like_auth(prefix: &[u8]) -> bool {
    let n = prefix.len().min(5);
    b"AUTH "[..n].eq_ignore_ascii_case(&prefix[..n])
}

/// Splits the argument of AUTH into the mechanism name and the initial
/// response (`mechanism [SP initial-response]`, RFC 4954 section 4);
/// trailing spaces are ignored. `None` without a mechanism name.
pub fn parse_auth(arg: Option<&str>) -> Option<(&str, Option<&str>)> {
    let arg = arg?.trim_end_matches(' ');
    let (name, initial) = match arg.split_once(' ') {
        Some((name, initial)) => (name, Some(initial)),
        None => (arg, None),
    };
    (!name.is_empty()).then_some((name, initial))
}

/// Arguments of `BDAT`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BdatArgs {
    /// Octets in the chunk.
    pub size: u64,
    /// `LAST` was given.
    pub last: bool,
}

/// Parses `chunk-size [SP "LAST"]` (RFC 3030); `None` if anything is off.
pub fn parse_bdat(arg: Option<&[u8]>) -> Option<BdatArgs> {
    let arg = arg?;
    let (size, last) = match arg.iter().position(|&c| c == b' ') {
        Some(i) if arg[i + 1..].eq_ignore_ascii_case(b"LAST") => (&arg[..i], true),
        Some(_) => return None,
        None => (arg, false),
    };
    if size.is_empty() || !size.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let size = std::str::from_utf8(size).ok()?.parse().ok()?;
    Some(BdatArgs { size, last })
}

/// The HELO/EHLO argument: one token of visible characters (non-ASCII
/// allowed for U-labels), surrounding spaces ignored.
pub fn parse_helo_arg(arg: Option<&str>) -> Option<&str> {
    let arg = arg?.trim_matches(' ');
    let ok = !arg.is_empty() && arg.chars().all(|c| !c.is_control() && c != ' ');
    ok.then_some(arg)
}

fn syntax(usage: &str) -> Reply {
    Reply::new(501, "5.5.4", format!("Syntax: {usage}"))
}

fn unsupported(keyword: &str) -> Reply {
    Reply::new(
        555,
        "5.5.4",
        format!("Unsupported parameter: {}", keyword.to_ascii_uppercase()),
    )
}

/// What the session offers, for parameter checks.
#[derive(Clone, Copy, Debug)]
pub struct Offered {
    /// The client said EHLO (parameters are allowed at all).
    pub extended: bool,
    /// The SIZE limit.
    pub max_size: usize,
    /// 8BITMIME is offered (`BODY=`).
    pub eightbitmime: bool,
    /// SMTPUTF8 is offered.
    pub smtputf8: bool,
}

/// One `keyword[=value]` parameter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Param<'a> {
    /// The keyword as sent.
    pub keyword: &'a str,
    /// The value, if there was a `=`.
    pub value: Option<&'a str>,
}

/// Iterates the space-separated ESMTP parameters of `s` (RFC 5321 4.1.2
/// `esmtp-param`; RFC 6531 allows non-ASCII UTF-8 in values). An item is
/// `Err(())` when it is malformed.
pub fn params(s: &str) -> impl Iterator<Item = Result<Param<'_>, ()>> {
    s.split(' ').filter(|p| !p.is_empty()).map(|p| {
        let (keyword, value) = match p.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (p, None),
        };
        let kb = keyword.as_bytes();
        let keyword_ok = kb.first().is_some_and(u8::is_ascii_alphanumeric)
            && kb.iter().all(|&c| c.is_ascii_alphanumeric() || c == b'-');
        let value_ok = value.is_none_or(|v| {
            !v.is_empty()
                && v.bytes()
                    .all(|c| matches!(c, 33..=60 | 62..=126) || c >= 0x80)
        });
        if keyword_ok && value_ok {
            Ok(Param { keyword, value })
        } else {
            Err(())
        }
    })
}

/// Decodes RFC 3461 xtext (`+XX` hex escapes). `None` if malformed or if
/// the result is not UTF-8.
pub fn decode_xtext(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => {
                let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
                if !hex.bytes().all(|c| c.is_ascii_hexdigit()) {
                    return None;
                }
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            c @ 33..=126 if c != b'=' => {
                out.push(c);
                i += 1;
            }
            _ => return None,
        }
    }
    String::from_utf8(out).ok()
}

/// Parses the argument of MAIL (`FROM:<path> [params]`).
///
/// # Errors
///
/// The reply that refuses the command: `501 5.5.4` (no `FROM:`, malformed
/// parameters), `501 5.1.7` (bad path), `555 5.5.4` (parameter not
/// offered), `552 5.3.4` (declared size too large).
pub fn parse_mail(arg: Option<&str>, offered: Offered) -> Result<(String, MailParams), Reply> {
    const USAGE: &str = "MAIL FROM:<address>";
    let rest = arg
        .and_then(|a| strip_prefix_ignore_case(a, "FROM:"))
        .ok_or_else(|| syntax(USAGE))?;
    let rest = rest.strip_prefix(' ').unwrap_or(rest);
    let bad = || Reply::new(501, "5.1.7", "Bad sender address syntax");
    let (sender, rest) = parse_reverse_path(rest).map_err(|_| bad())?;
    if !rest.is_empty() && !rest.starts_with(' ') {
        return Err(bad());
    }
    let mut mp = MailParams::default();
    let mut seen = [false; 4];
    for param in params(rest) {
        let Param { keyword, value } = param.map_err(|()| syntax(USAGE))?;
        if !offered.extended {
            return Err(unsupported(keyword));
        }
        let slot = ["SIZE", "BODY", "SMTPUTF8", "AUTH"]
            .iter()
            .position(|k| k.eq_ignore_ascii_case(keyword));
        let Some(slot) = slot else {
            return Err(unsupported(keyword));
        };
        if std::mem::replace(&mut seen[slot], true) {
            return Err(Reply::new(
                501,
                "5.5.4",
                format!("Duplicate parameter: {}", keyword.to_ascii_uppercase()),
            ));
        }
        match slot {
            0 => {
                let v = value.ok_or_else(|| syntax("SIZE=<octets>"))?;
                if !v.bytes().all(|c| c.is_ascii_digit()) {
                    return Err(syntax("SIZE=<octets>"));
                }
                let size = v.parse::<u64>().unwrap_or(u64::MAX);
                if size > offered.max_size as u64 {
                    return Err(Reply::new(
                        552,
                        "5.3.4",
                        "Message size exceeds fixed maximum message size",
                    ));
                }
                mp.size = Some(size);
            }
            1 => {
                if !offered.eightbitmime {
                    return Err(unsupported(keyword));
                }
                let v = value.ok_or_else(|| syntax("BODY=7BIT|8BITMIME"))?;
                mp.body = if v.eq_ignore_ascii_case("7BIT") {
                    BodyType::SevenBit
                } else if v.eq_ignore_ascii_case("8BITMIME") {
                    BodyType::EightBitMime
                } else {
                    return Err(unsupported(&format!("BODY={v}")));
                };
            }
            2 => {
                if !offered.smtputf8 {
                    return Err(unsupported(keyword));
                }
                if value.is_some() {
                    return Err(syntax("SMTPUTF8"));
                }
                mp.smtputf8 = true;
            }
            _ => {
                let v = value.ok_or_else(|| syntax("AUTH=<xtext>"))?;
                mp.auth = Some(if v == "<>" {
                    String::new()
                } else {
                    decode_xtext(v).ok_or_else(|| syntax("AUTH=<xtext>"))?
                });
            }
        }
    }
    if !sender.is_ascii() && !mp.smtputf8 {
        return Err(need_smtputf8());
    }
    Ok((sender, mp))
}

/// `553 5.6.7`: a non-ASCII address without `SMTPUTF8` (RFC 6531 3.5).
fn need_smtputf8() -> Reply {
    Reply::new(
        553,
        "5.6.7",
        "Must declare SMTPUTF8 to send unicode address",
    )
}

/// Parses the argument of RCPT (`TO:<path> [params]`); `smtputf8` is
/// whether the transaction declared SMTPUTF8.
///
/// # Errors
///
/// The reply that refuses the command: `501 5.5.4` (no `TO:`, malformed
/// parameters), `501 5.1.3` (bad path), `555 5.5.4` (any parameter: none is
/// offered yet), `553 5.6.7` (non-ASCII address without SMTPUTF8).
pub fn parse_rcpt(arg: Option<&str>, smtputf8: bool) -> Result<(String, RcptParams), Reply> {
    const USAGE: &str = "RCPT TO:<address>";
    let rest = arg
        .and_then(|a| strip_prefix_ignore_case(a, "TO:"))
        .ok_or_else(|| syntax(USAGE))?;
    let rest = rest.strip_prefix(' ').unwrap_or(rest);
    let bad = || Reply::new(501, "5.1.3", "Bad recipient address syntax");
    let (recipient, rest) = parse_forward_path(rest).map_err(|_| bad())?;
    if !rest.is_empty() && !rest.starts_with(' ') {
        return Err(bad());
    }
    if let Some(param) = params(rest).next() {
        let Param { keyword, .. } = param.map_err(|()| syntax(USAGE))?;
        return Err(unsupported(keyword));
    }
    if !recipient.is_ascii() && !smtputf8 {
        return Err(need_smtputf8());
    }
    Ok((recipient, RcptParams {}))
}

fn strip_prefix_ignore_case<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &s[prefix.len()..])
}

#[cfg(test)]
mod tests {
    use super::*;

    const EHLO: Offered = Offered {
        extended: true,
        max_size: 1000,
        eightbitmime: true,
        smtputf8: true,
    };

    fn wire(r: &Reply) -> String {
        r.to_string()
    }

    #[test]
    fn verbs_and_split() {
        assert_eq!(
            split_line(b"mail FROM:<a@b>"),
            (Verb::Mail, Some(&b"FROM:<a@b>"[..]))
        );
        assert_eq!(split_line(b"QuIt"), (Verb::Quit, None));
        assert_eq!(split_line(b"NOOP "), (Verb::Noop, Some(&b""[..])));
        assert_eq!(split_line(b"MAILX"), (Verb::Unknown, None));
        assert_eq!(split_line(b"NOOP\tx"), (Verb::Unknown, None));
        assert_eq!(split_line(b""), (Verb::Unknown, None));
        assert_eq!(split_line(b" NOOP"), (Verb::Unknown, Some(&b"NOOP"[..])));
        assert!(looks_like_bdat(b"bdat 1"));
        assert!(looks_like_bdat(b"BDAT"));
        assert!(!looks_like_bdat(b"BDATA"));
        assert!(!looks_like_bdat(b"BDA"));
        assert_eq!(split_line(b"starttls"), (Verb::Starttls, None));
        assert_eq!(split_line(b"LHLO x"), (Verb::Lhlo, Some(&b"x"[..])));
        assert_eq!(split_line(b"Auth PLAIN"), (Verb::Auth, Some(&b"PLAIN"[..])));
        assert!(looks_like_auth(b"auth PLAIN x"));
        assert!(looks_like_auth(b"AU"));
        assert!(!looks_like_auth(b"AUTHX"));
        assert!(!looks_like_auth(b"AX"));
    }

    #[test]
    fn auth_arguments() {
        assert_eq!(parse_auth(Some("PLAIN")), Some(("PLAIN", None)));
        assert_eq!(parse_auth(Some("PLAIN  ")), Some(("PLAIN", None)));
        assert_eq!(parse_auth(Some("PLAIN =")), Some(("PLAIN", Some("="))));
        assert_eq!(
            parse_auth(Some("login dXNlcg==")),
            Some(("login", Some("dXNlcg==")))
        );
        assert_eq!(parse_auth(Some("PLAIN a b")), Some(("PLAIN", Some("a b"))));
        assert_eq!(parse_auth(Some("")), None);
        assert_eq!(parse_auth(Some(" PLAIN")), None);
        assert_eq!(parse_auth(None), None);
    }

    #[test]
    fn bdat_arguments() {
        let ok: &[(&[u8], u64, bool)] = &[
            (b"0", 0, false),
            (b"10", 10, false),
            (b"10 LAST", 10, true),
            (b"10 last", 10, true),
            (b"007 LAST", 7, true),
            (b"18446744073709551615", u64::MAX, false),
        ];
        for &(arg, size, last) in ok {
            assert_eq!(
                parse_bdat(Some(arg)),
                Some(BdatArgs { size, last }),
                "{arg:?}"
            );
        }
        let bad: &[&[u8]] = &[
            b"",
            b" 10",
            b"10 ",
            b"10  LAST",
            b"-1",
            b"+1",
            b"1x",
            b"10 LASTX",
            b"10 LAST ",
            b"x",
            b"18446744073709551616",
            b"\xff",
        ];
        for &arg in bad {
            assert_eq!(parse_bdat(Some(arg)), None, "{arg:?}");
        }
        assert_eq!(parse_bdat(None), None);
    }

    #[test]
    fn mail_arguments() {
        let ok: &[(&str, &str, MailParams)] = &[
            ("FROM:<a@b>", "a@b", MailParams::default()),
            ("from: <a@b>", "a@b", MailParams::default()),
            ("FROM:<>", "", MailParams::default()),
            ("FROM:<a@b> ", "a@b", MailParams::default()),
            (
                "FROM:<a@b> size=1000",
                "a@b",
                MailParams {
                    size: Some(1000),
                    ..Default::default()
                },
            ),
            (
                "FROM:<a@b>  BODY=8bitmime  SMTPUTF8",
                "a@b",
                MailParams {
                    body: BodyType::EightBitMime,
                    smtputf8: true,
                    ..Default::default()
                },
            ),
            ("FROM:<a@b> BODY=7BIT", "a@b", MailParams::default()),
            (
                "FROM:<a@b> AUTH=<>",
                "a@b",
                MailParams {
                    auth: Some(String::new()),
                    ..Default::default()
                },
            ),
            (
                "FROM:<a@b> AUTH=u+2Bx+3Dy@z",
                "a@b",
                MailParams {
                    auth: Some("u+x=y@z".into()),
                    ..Default::default()
                },
            ),
            (
                "FROM:<ü@b> SMTPUTF8",
                "ü@b",
                MailParams {
                    smtputf8: true,
                    ..Default::default()
                },
            ),
        ];
        for (arg, sender, params) in ok {
            assert_eq!(
                parse_mail(Some(arg), EHLO),
                Ok(((*sender).to_owned(), params.clone())),
                "{arg}"
            );
        }
        let helo = Offered {
            extended: false,
            ..EHLO
        };
        let no_ext = Offered {
            eightbitmime: false,
            smtputf8: false,
            ..EHLO
        };
        let bad: &[(Option<&str>, Offered, &str)] = &[
            (None, EHLO, "501 5.5.4 Syntax: MAIL FROM:<address>"),
            (
                Some("TO:<a@b>"),
                EHLO,
                "501 5.5.4 Syntax: MAIL FROM:<address>",
            ),
            (
                Some("FROM<a@b>"),
                EHLO,
                "501 5.5.4 Syntax: MAIL FROM:<address>",
            ),
            (
                Some("FROM:a@b"),
                EHLO,
                "501 5.1.7 Bad sender address syntax",
            ),
            (
                Some("FROM:  <a@b>"),
                EHLO,
                "501 5.1.7 Bad sender address syntax",
            ),
            (
                Some("FROM:<a@b>SIZE=1"),
                EHLO,
                "501 5.1.7 Bad sender address syntax",
            ),
            (
                Some("FROM:<postmaster>"),
                EHLO,
                "501 5.1.7 Bad sender address syntax",
            ),
            (
                Some("FROM:<a@b> SIZE=1001"),
                EHLO,
                "552 5.3.4 Message size exceeds fixed maximum message size",
            ),
            (
                Some("FROM:<a@b> SIZE=99999999999999999999999"),
                EHLO,
                "552 5.3.4 Message size exceeds fixed maximum message size",
            ),
            (
                Some("FROM:<a@b> SIZE=1x"),
                EHLO,
                "501 5.5.4 Syntax: SIZE=<octets>",
            ),
            (
                Some("FROM:<a@b> SIZE"),
                EHLO,
                "501 5.5.4 Syntax: SIZE=<octets>",
            ),
            (
                Some("FROM:<a@b> SIZE="),
                EHLO,
                "501 5.5.4 Syntax: MAIL FROM:<address>",
            ),
            (
                Some("FROM:<a@b> =1"),
                EHLO,
                "501 5.5.4 Syntax: MAIL FROM:<address>",
            ),
            (
                Some("FROM:<a@b> -X"),
                EHLO,
                "501 5.5.4 Syntax: MAIL FROM:<address>",
            ),
            (
                Some("FROM:<a@b> X=a=b"),
                EHLO,
                "501 5.5.4 Syntax: MAIL FROM:<address>",
            ),
            (
                Some("FROM:<a@b> SIZE=1 size=2"),
                EHLO,
                "501 5.5.4 Duplicate parameter: SIZE",
            ),
            (
                Some("FROM:<a@b> BODY=BINARYMIME"),
                EHLO,
                "555 5.5.4 Unsupported parameter: BODY=BINARYMIME",
            ),
            (
                Some("FROM:<a@b> BODY=8BITMIME"),
                no_ext,
                "555 5.5.4 Unsupported parameter: BODY",
            ),
            (
                Some("FROM:<a@b> smtputf8"),
                no_ext,
                "555 5.5.4 Unsupported parameter: SMTPUTF8",
            ),
            (
                Some("FROM:<a@b> SMTPUTF8=yes"),
                EHLO,
                "501 5.5.4 Syntax: SMTPUTF8",
            ),
            (
                Some("FROM:<a@b> RET=HDRS"),
                EHLO,
                "555 5.5.4 Unsupported parameter: RET",
            ),
            (
                Some("FROM:<a@b> x-foo"),
                EHLO,
                "555 5.5.4 Unsupported parameter: X-FOO",
            ),
            (
                Some("FROM:<a@b> SIZE=10"),
                helo,
                "555 5.5.4 Unsupported parameter: SIZE",
            ),
            (
                Some("FROM:<a@b> AUTH=a+zz"),
                EHLO,
                "501 5.5.4 Syntax: AUTH=<xtext>",
            ),
            (
                Some("FROM:<a@b> AUTH=a+2"),
                EHLO,
                "501 5.5.4 Syntax: AUTH=<xtext>",
            ),
            (
                Some("FROM:<a@b> AUTH=+FF"),
                EHLO,
                "501 5.5.4 Syntax: AUTH=<xtext>",
            ),
            (
                Some("FROM:<ü@b>"),
                EHLO,
                "553 5.6.7 Must declare SMTPUTF8 to send unicode address",
            ),
        ];
        for &(arg, offered, reply) in bad {
            assert_eq!(
                parse_mail(arg, offered).map_err(|r| wire(&r)),
                Err(reply.to_owned()),
                "{arg:?}"
            );
        }
    }

    #[test]
    fn rcpt_arguments() {
        assert_eq!(
            parse_rcpt(Some("TO:<a@b>"), false),
            Ok(("a@b".into(), RcptParams {}))
        );
        assert_eq!(
            parse_rcpt(Some("to: <@x:a@b> "), false),
            Ok(("a@b".into(), RcptParams {}))
        );
        assert_eq!(
            parse_rcpt(Some("TO:<Postmaster>"), false),
            Ok(("Postmaster".into(), RcptParams {}))
        );
        assert_eq!(
            parse_rcpt(Some("TO:<ü@b>"), true),
            Ok(("ü@b".into(), RcptParams {}))
        );
        let bad: &[(Option<&str>, &str)] = &[
            (None, "501 5.5.4 Syntax: RCPT TO:<address>"),
            (Some("FROM:<a@b>"), "501 5.5.4 Syntax: RCPT TO:<address>"),
            (Some("TO:<>"), "501 5.1.3 Bad recipient address syntax"),
            (Some("TO:a@b"), "501 5.1.3 Bad recipient address syntax"),
            (Some("TO:<a@b>x"), "501 5.1.3 Bad recipient address syntax"),
            (
                Some("TO:<a@b> NOTIFY=NEVER"),
                "555 5.5.4 Unsupported parameter: NOTIFY",
            ),
            (Some("TO:<a@b> ="), "501 5.5.4 Syntax: RCPT TO:<address>"),
            (
                Some("TO:<ü@b>"),
                "553 5.6.7 Must declare SMTPUTF8 to send unicode address",
            ),
        ];
        for &(arg, reply) in bad {
            assert_eq!(
                parse_rcpt(arg, false).map_err(|r| wire(&r)),
                Err(reply.to_owned()),
                "{arg:?}"
            );
        }
    }

    #[test]
    fn helo_arguments() {
        assert_eq!(parse_helo_arg(Some("mx.test")), Some("mx.test"));
        assert_eq!(parse_helo_arg(Some(" [1.2.3.4] ")), Some("[1.2.3.4]"));
        assert_eq!(parse_helo_arg(Some("")), None);
        assert_eq!(parse_helo_arg(None), None);
        assert_eq!(parse_helo_arg(Some("a b")), None);
        assert_eq!(parse_helo_arg(Some("a\0")), None);
    }

    #[test]
    fn xtext() {
        assert_eq!(decode_xtext("abc"), Some("abc".into()));
        assert_eq!(decode_xtext("a+20b"), Some("a b".into()));
        assert_eq!(decode_xtext("a=b"), None);
        assert_eq!(decode_xtext("a b"), None);
        assert_eq!(decode_xtext("+C3+BC"), Some("ü".into()));
    }
}
