//! Reverse- and forward-path parsing (RFC 5321 4.1.2, RFC 6531 3.3).
//!
//! The server hands validators and the queue the mailbox exactly as the
//! client wrote it between `<` and `>` (see `envelope.rs`), so this parser
//! only *validates* and cuts; it never rewrites except for dropping a source
//! route, which RFC 5321 4.1.1.3 says servers should ignore.
//!
//! Decisions:
//! - Grammar is RFC 5321 `Path`: `"<" [ A-d-l ":" ] Mailbox ">"`, with a
//!   dot-string or quoted-string local part (a quoted local part is kept
//!   with its quotes and backslashes, byte for byte) and a domain or address
//!   literal (`[1.2.3.4]`, `[IPv6:...]` checked with std's `Ipv6Addr`, or a
//!   general literal `[tag:content]`).
//! - RFC 6531 is applied unconditionally here: non-ASCII UTF-8 is allowed in
//!   atoms, quoted strings and domain labels. Whether the client *may* use it
//!   (it declared `SMTPUTF8`) is the server's decision, not the parser's.
//! - Limits (RFC 5321 4.5.3.1): local part <= 64 octets, domain <= 255
//!   octets, the whole path including the angle brackets and any source
//!   route <= 256 octets.
//! - `<>` is a valid reverse path only; `<postmaster>` (any case, no domain)
//!   a valid forward path only.
//! - Angle brackets are required: `MAIL FROM:a@b` is refused, as RFC 5321
//!   demands, even though some servers accept it.

use std::fmt;
use std::net::Ipv6Addr;

/// Longest local part (RFC 5321 4.5.3.1.1).
pub const MAX_LOCAL_PART: usize = 64;
/// Longest domain (RFC 5321 4.5.3.1.2).
pub const MAX_DOMAIN: usize = 255;
/// Longest path including `<`, `>` and any source route (RFC 5321 4.5.3.1.3).
pub const MAX_PATH: usize = 256;

/// A path that does not follow RFC 5321 4.1.2 (or exceeds its limits).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AddressError;

impl fmt::Display for AddressError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("bad address syntax")
    }
}

impl std::error::Error for AddressError {}

/// Parses a reverse path (`MAIL FROM:` argument) at the start of `input`.
///
/// Returns the mailbox (empty for `<>`) and the text after the closing `>`.
///
/// # Errors
///
/// If `input` does not start with a valid `Reverse-path`.
pub fn parse_reverse_path(input: &str) -> Result<(String, &str), AddressError> {
    if let Some(rest) = input.strip_prefix("<>") {
        return Ok((String::new(), rest));
    }
    parse_path(input)
}

/// Parses a forward path (`RCPT TO:` argument) at the start of `input`.
///
/// Returns the mailbox (source route dropped; `postmaster` as written) and
/// the text after the closing `>`.
///
/// # Errors
///
/// If `input` does not start with a valid `Forward-path` or `<postmaster>`.
pub fn parse_forward_path(input: &str) -> Result<(String, &str), AddressError> {
    if let Some(word) = input.get(1..11)
        && input.starts_with('<')
        && word.eq_ignore_ascii_case("postmaster")
        && input.as_bytes().get(11) == Some(&b'>')
    {
        return Ok((word.to_owned(), &input[12..]));
    }
    parse_path(input)
}

/// `Path` without the special forms.
fn parse_path(input: &str) -> Result<(String, &str), AddressError> {
    let b = input.as_bytes();
    if b.first() != Some(&b'<') {
        return Err(AddressError);
    }
    let mut i = 1;
    if b.get(i) == Some(&b'@') {
        // A-d-l = At-domain *( "," At-domain ) ":"
        loop {
            if b.get(i) != Some(&b'@') {
                return Err(AddressError);
            }
            i = domain_end(b, i + 1).ok_or(AddressError)?;
            match b.get(i) {
                Some(b',') => i += 1,
                Some(b':') => {
                    i += 1;
                    break;
                }
                _ => return Err(AddressError),
            }
        }
    }
    let local_start = i;
    let local_end = if b.get(i) == Some(&b'"') {
        quoted_string_end(b, i)
    } else {
        dot_string_end(b, i)
    }
    .ok_or(AddressError)?;
    if local_end - local_start > MAX_LOCAL_PART || b.get(local_end) != Some(&b'@') {
        return Err(AddressError);
    }
    let domain_start = local_end + 1;
    let domain_end = if b.get(domain_start) == Some(&b'[') {
        address_literal_end(input, domain_start)
    } else {
        domain_end(b, domain_start)
    }
    .ok_or(AddressError)?;
    if domain_end - domain_start > MAX_DOMAIN || b.get(domain_end) != Some(&b'>') {
        return Err(AddressError);
    }
    if domain_end + 1 > MAX_PATH {
        return Err(AddressError);
    }
    Ok((
        input[local_start..domain_end].to_owned(),
        &input[domain_end + 1..],
    ))
}

/// RFC 5322 atext, plus any non-ASCII byte (RFC 6531 `UTF8-non-ascii`;
/// the input is a `str`, so such bytes belong to valid UTF-8).
fn is_atext(c: u8) -> bool {
    c.is_ascii_alphanumeric() || b"!#$%&'*+-/=?^_`{|}~".contains(&c) || c >= 0x80
}

/// Letter, digit or (RFC 6531 U-label) non-ASCII.
fn is_let_dig(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c >= 0x80
}

/// End of `Dot-string` starting at `i`.
fn dot_string_end(b: &[u8], mut i: usize) -> Option<usize> {
    loop {
        let start = i;
        while b.get(i).is_some_and(|&c| is_atext(c)) {
            i += 1;
        }
        if i == start {
            return None;
        }
        if b.get(i) == Some(&b'.') {
            i += 1;
        } else {
            return Some(i);
        }
    }
}

/// End (one past the closing quote) of `Quoted-string` starting at `i`.
fn quoted_string_end(b: &[u8], mut i: usize) -> Option<usize> {
    i += 1;
    loop {
        match *b.get(i)? {
            b'"' => return Some(i + 1),
            b'\\' => {
                // quoted-pairSMTP = %d92 %d32-126
                let next = *b.get(i + 1)?;
                if !(32..=126).contains(&next) {
                    return None;
                }
                i += 2;
            }
            // qtextSMTP = %d32-33 / %d35-91 / %d93-126 / UTF8-non-ascii
            c if (32..=126).contains(&c) || c >= 0x80 => i += 1,
            _ => return None,
        }
    }
}

/// End of `Domain` (dot-separated `sub-domain`s) starting at `i`.
fn domain_end(b: &[u8], mut i: usize) -> Option<usize> {
    loop {
        // sub-domain = Let-dig [Ldh-str]; Ldh-str ends in Let-dig.
        if !b.get(i).is_some_and(|&c| is_let_dig(c)) {
            return None;
        }
        i += 1;
        while b.get(i).is_some_and(|&c| is_let_dig(c) || c == b'-') {
            i += 1;
        }
        if b[i - 1] == b'-' {
            return None;
        }
        if b.get(i) == Some(&b'.') {
            i += 1;
        } else {
            return Some(i);
        }
    }
}

/// End (one past `]`) of `address-literal` starting at `i` (the `[`).
fn address_literal_end(s: &str, i: usize) -> Option<usize> {
    let b = s.as_bytes();
    let close = i + b[i..].iter().position(|&c| c == b']')?;
    let inner = &s[i + 1..close];
    let ok = match inner.split_once(':') {
        None => is_ipv4_literal(inner),
        Some((tag, addr)) if tag.eq_ignore_ascii_case("IPv6") => addr.parse::<Ipv6Addr>().is_ok(),
        Some((tag, content)) => {
            // General-address-literal = Standardized-tag ":" 1*dcontent
            let tb = tag.as_bytes();
            !tb.is_empty()
                && tb.iter().all(|&c| c.is_ascii_alphanumeric() || c == b'-')
                && tb[tb.len() - 1] != b'-'
                && !content.is_empty()
                && content.bytes().all(|c| matches!(c, 33..=90 | 94..=126))
        }
    };
    ok.then_some(close + 1)
}

/// `Snum 3("." Snum)`, each Snum 1-3 digits and at most 255.
fn is_ipv4_literal(s: &str) -> bool {
    let mut parts = 0;
    for part in s.split('.') {
        parts += 1;
        if part.is_empty() || part.len() > 3 || !part.bytes().all(|c| c.is_ascii_digit()) {
            return false;
        }
        if part.parse::<u16>().map_or(true, |n| n > 255) {
            return false;
        }
    }
    parts == 4
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_paths() {
        let cases: &[(&str, bool, &str, &str)] = &[
            // (input, forward, mailbox, rest)
            ("<a@b>", true, "a@b", ""),
            ("<a@b> SIZE=1", false, "a@b", " SIZE=1"),
            ("<>", false, "", ""),
            ("<> X", false, "", " X"),
            (
                "<first.last@sub.example.test>",
                true,
                "first.last@sub.example.test",
                "",
            ),
            ("<a+tag@x-y.test>", true, "a+tag@x-y.test", ""),
            ("<\"a b\"@c>", true, "\"a b\"@c", ""),
            ("<\"a\\\"b\"@c>", true, "\"a\\\"b\"@c", ""),
            ("<\"\"@c>", true, "\"\"@c", ""),
            ("<@r1,@r2.test:u@d>", true, "u@d", ""),
            ("<@r1:u@d>x", false, "u@d", "x"),
            ("<u@[1.2.3.4]>", true, "u@[1.2.3.4]", ""),
            ("<u@[255.0.0.0]>", true, "u@[255.0.0.0]", ""),
            ("<u@[IPv6:::1]>", true, "u@[IPv6:::1]", ""),
            ("<u@[ipv6:2001:db8::1]>", true, "u@[ipv6:2001:db8::1]", ""),
            ("<u@[x-tag:content]>", true, "u@[x-tag:content]", ""),
            ("<postmaster>", true, "postmaster", ""),
            ("<PostMaster> X=1", true, "PostMaster", " X=1"),
            ("<postmaster@x>", true, "postmaster@x", ""),
            ("<ü@bücher.test>", true, "ü@bücher.test", ""),
            ("<\"ü\"@x>", true, "\"ü\"@x", ""),
            ("<1@2>", true, "1@2", ""),
        ];
        for &(input, forward, mailbox, rest) in cases {
            let got = if forward {
                parse_forward_path(input)
            } else {
                parse_reverse_path(input)
            };
            assert_eq!(got, Ok((mailbox.to_owned(), rest)), "{input}");
        }
    }

    #[test]
    fn invalid_paths() {
        let long_local = format!("<{}@x>", "a".repeat(65));
        let long_domain = format!("<a@{}>", vec!["b".repeat(63); 5].join("."));
        let long_path = format!(
            "<{}@{}.{}>",
            "a".repeat(64),
            "b".repeat(63),
            vec!["c".repeat(63); 3].join(".")
        );
        let cases: &[(&str, bool)] = &[
            ("a@b", true),
            ("<a@b", true),
            ("a@b>", true),
            ("<>", true),
            ("<postmaster>", false),
            ("<a>", true),
            ("<@b>", true),
            ("<a@>", true),
            ("<a.@b>", true),
            ("<.a@b>", true),
            ("<a..b@c>", true),
            ("<a@b.>", true),
            ("<a@.b>", true),
            ("<a@-b>", true),
            ("<a@b->", true),
            ("<a@b_c>", true),
            ("<a b@c>", true),
            ("<\"a@c>", true),
            ("<\"a\x01\"@c>", true),
            ("<\"a\\\x01\"@c>", true),
            ("<a@[1.2.3]>", true),
            ("<a@[1.2.3.256]>", true),
            ("<a@[1.2.3.4.5]>", true),
            ("<a@[1.2.3.0004]>", true),
            ("<a@[IPv6:1.2.3.4]>", true),
            ("<a@[IPv6:::g]>", true),
            ("<a@[IPv6:fe80::1%eth0]>", true),
            ("<a@[tag-:x]>", true),
            ("<a@[:x]>", true),
            ("<a@[tag:]>", true),
            ("<a@[tag:a[b]>", true),
            ("<a@[1.2.3.4>", true),
            ("<@r1u@d>", true),
            ("<@r1,u@d>", true),
            ("<@:u@d>", true),
            ("<postmaster >", true),
            ("<a@b@c>", true),
            ("", true),
            ("<", true),
            (&long_local, true),
            (&long_domain, true),
            (&long_path, true),
        ];
        for &(input, forward) in cases {
            let got = if forward {
                parse_forward_path(input)
            } else {
                parse_reverse_path(input)
            };
            assert_eq!(got, Err(AddressError), "{input:?}");
        }
    }

    #[test]
    fn limits_are_inclusive() {
        let local = format!("<{}@x>", "a".repeat(64));
        assert!(parse_forward_path(&local).is_ok());
        // 4 labels of 63 + 3 dots = 255.
        let domain = format!("<a@{}>", vec!["b".repeat(63); 4].join("."));
        assert!(parse_forward_path(&domain).is_err(), "path is 259 octets");
        // path of exactly 256: "<" + 64 + "@" + domain + ">" => domain 189.
        let d = format!("{}.{}.{}", "c".repeat(63), "c".repeat(63), "c".repeat(61));
        let p = format!("<{}@{}>", "a".repeat(64), d);
        assert_eq!(p.len(), 256);
        assert!(parse_forward_path(&p).is_ok());
        let p = format!("<{}@{}c>", "a".repeat(64), d);
        assert!(parse_forward_path(&p).is_err());
    }
}
