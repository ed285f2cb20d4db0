//! What the spam scanner policies ([`SpamAssassin`](super::spamassassin) and
//! `Rspamd`, behind the feature `rspamd`) write into a message, and the sender's copies
//! of those fields they take out first.
//!
//! Decisions (an operator's filters match these, so they are fixed here
//! once for both scanners):
//! - The verdict is `X-Spam-Status: YES, score=S required=R` or `NO, ...`
//!   (one decimal, as SpamAssassin writes it), and the rules that fired go in
//!   `X-Spam-Symbols: A,B,C`, folded at commas.
//! - A scanner that could not be asked, with `on_error = accept`, gives
//!   `X-Spam-Status: Unknown, <scanner> unavailable`. A filter matching
//!   `^X-Spam-Status: YES` or `^X-Spam-Status: NO` matches neither, so an
//!   unscanned message is never taken for clean mail (nor for spam).
//! - Every header field whose name starts with `X-Spam` (`X-Spam-Status`,
//!   `X-Spam-Flag`, `X-Spam`, `X-Spamd-Result`, ...) that came with the
//!   message is removed before the scan, whatever the verdict: a sender must
//!   not be able to forge `X-Spam-Status: NO` and have it pass a filter.
//! - Text a scanner sends (symbol names, header values, reply messages) is
//!   cut to one line of printable characters before it reaches a header or
//!   an SMTP reply, so a scanner cannot inject header lines or replies.

use crate::envelope::Envelope;

/// What a scanner policy does when the scanner cannot be asked (not
/// listening, too slow, a bad answer). The milter policy
/// ([`Milter`](super::milter::Milter)) shares it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum OnError {
    /// Store the message, marked `X-Spam-Status: Unknown, ...` by the spam
    /// scanners and unchanged by a milter (the scanners' default: a scanner
    /// outage never stops mail).
    #[default]
    Accept,
    /// Refuse it for now (`451 4.7.1`); the client retries later.
    Tempfail,
}

/// The longest symbol list kept in `X-Spam-Symbols`; more are dropped.
const MAX_SYMBOLS: usize = 200;

/// One header field: the byte range of the whole field (its line end
/// included) and of its name.
#[derive(Clone, Copy, Debug)]
struct Field {
    start: usize,
    end: usize,
    name_end: usize,
}

/// The fields of the header section, in order.
fn header_fields(message: &[u8]) -> Vec<Field> {
    let mut fields: Vec<Field> = Vec::new();
    let mut at = 0;
    while at < message.len() {
        let line_end = memchr::memchr(b'\n', &message[at..]).map_or(message.len(), |i| at + i + 1);
        let line = &message[at..line_end];
        if line == b"\r\n" || line == b"\n" {
            break;
        }
        match (line[0], fields.last_mut()) {
            (b' ' | b'\t', Some(last)) => last.end = line_end,
            _ => {
                // A line without a colon is no field: its name is empty,
                // which no name matches, so it is always kept.
                let name_end = memchr::memchr(b':', line).map_or(at, |i| at + i);
                fields.push(Field {
                    start: at,
                    end: line_end,
                    name_end,
                });
            }
        }
        at = line_end;
    }
    fields
}

/// Removes header fields: `select` gets every field's name (trailing
/// white space trimmed), in order, and answers which to remove.
pub(crate) fn remove_fields(message: &mut Vec<u8>, select: impl FnOnce(&[&[u8]]) -> Vec<bool>) {
    let fields = header_fields(message);
    let names: Vec<&[u8]> = fields
        .iter()
        .map(|f| message[f.start..f.name_end].trim_ascii_end())
        .collect();
    let remove = select(&names);
    if !remove.iter().any(|&r| r) {
        return;
    }
    let mut out = Vec::with_capacity(message.len());
    let mut copied = 0;
    for (field, _) in fields.iter().zip(&remove).filter(|(_, r)| **r) {
        out.extend_from_slice(&message[copied..field.start]);
        copied = field.end;
    }
    out.extend_from_slice(&message[copied..]);
    *message = out;
}

/// Removes every `X-Spam*` field the message came with.
pub fn remove_spam_fields(message: &mut Vec<u8>) {
    remove_fields(message, |names| {
        names
            .iter()
            .map(|n| n.len() >= 6 && n[..6].eq_ignore_ascii_case(b"X-Spam"))
            .collect()
    });
}

/// `text` as one line of printable characters (control characters become
/// spaces), at most `max` characters long.
pub(crate) fn one_line(text: &str, max: usize) -> String {
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(max)
        .collect::<String>()
        .trim()
        .to_owned()
}

/// The `X-Spam-Status` value of a verdict.
pub fn status_value(spam: bool, score: f64, required: f64) -> String {
    format!(
        "{}, score={score:.1} required={required:.1}",
        if spam { "YES" } else { "NO" }
    )
}

/// The `X-Spam-Status` value when `scanner` could not be asked.
pub fn unknown_value(scanner: &str) -> String {
    format!("Unknown, {scanner} unavailable")
}

/// `symbols` joined by commas and folded before a line grows past 78
/// characters; names are reduced to the characters rule names use.
pub fn symbols_value(symbols: &[String]) -> String {
    let mut value = String::new();
    // "X-Spam-Symbols: " is on the first line.
    let mut line = 16;
    for symbol in symbols.iter().take(MAX_SYMBOLS) {
        let symbol: String = symbol
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
            .take(100)
            .collect();
        if symbol.is_empty() {
            continue;
        }
        if !value.is_empty() {
            value.push(',');
            line += 1;
            if line + symbol.len() > 78 {
                value.push_str("\r\n\t");
                line = 1;
            }
        }
        line += symbol.len();
        value.push_str(&symbol);
    }
    value
}

/// Prepends `X-Spam-Status: status` and, when there are any,
/// `X-Spam-Symbols` (status on top).
pub fn stamp(envelope: &mut Envelope, status: &str, symbols: &[String]) {
    let symbols = symbols_value(symbols);
    if !symbols.is_empty() {
        envelope.prepend_header("X-Spam-Symbols", &symbols);
    }
    envelope.prepend_header("X-Spam-Status", status);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn removes_the_senders_spam_fields_with_their_continuations() {
        let cases: &[(&[u8], &[u8])] = &[
            (
                b"X-Spam-Status: NO\r\nSubject: x\r\n\r\nX-Spam-Status: body\r\n",
                b"Subject: x\r\n\r\nX-Spam-Status: body\r\n",
            ),
            (
                b"Subject: x\r\nx-spam-flag : YES\r\n\tfolded\r\nX-Spamd-Result: 1\r\nTo: y\r\n\r\nb",
                b"Subject: x\r\nTo: y\r\n\r\nb",
            ),
            (b"X-Spam: yes\r\n", b""),
            (b"X-Spa: kept\r\n\r\n", b"X-Spa: kept\r\n\r\n"),
            (b"\r\nX-Spam: body only\r\n", b"\r\nX-Spam: body only\r\n"),
            (
                b"no colon line\r\nX-Spam-Level: ***\r\n\r\n",
                b"no colon line\r\n\r\n",
            ),
        ];
        for (input, expected) in cases {
            let mut m = input.to_vec();
            remove_spam_fields(&mut m);
            assert_eq!(
                String::from_utf8_lossy(&m),
                String::from_utf8_lossy(expected),
                "input {:?}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn values_are_single_lines_and_folded() {
        assert_eq!(
            status_value(true, 1005.2, 5.0),
            "YES, score=1005.2 required=5.0"
        );
        assert_eq!(
            status_value(false, -0.04, 5.0),
            "NO, score=-0.0 required=5.0"
        );
        assert_eq!(unknown_value("spamd"), "Unknown, spamd unavailable");
        assert_eq!(one_line("a\r\nX-Evil: 1", 100), "a  X-Evil: 1");
        assert_eq!(
            symbols_value(&["A".into(), "B\r\nX: y".into(), String::new()]),
            "A,BXy"
        );
        let many: Vec<String> = (0..20).map(|i| format!("SYMBOL_NUMBER_{i}")).collect();
        let folded = symbols_value(&many);
        let first = folded.split("\r\n").next().unwrap();
        assert!(16 + first.len() <= 78, "{first}");
        assert!(folded.split("\r\n").all(|l| l.len() <= 78), "{folded}");
        assert_eq!(folded.replace("\r\n\t", ""), many.join(","));
    }
}
