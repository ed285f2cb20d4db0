//! Applies a filter's end-of-message modifications to an [`Envelope`].
//!
//! The header rules follow libmilter's documentation (`smfi_addheader`,
//! `smfi_insheader`, `smfi_chgheader`), which is what filters are written
//! against:
//! - add appends a field at the end of the header section;
//! - insert puts it at a position among all fields, 0 being the top, past
//!   the end meaning the end;
//! - change addresses the n-th (from 1; 0 is taken as 1) field of that name,
//!   compared without case; an empty value deletes it, and an index past
//!   the last such field adds a new one (deleting one that is not there does
//!   nothing).
//!
//! Decisions:
//! - Values are written as `Name: value` unless the filter negotiated
//!   `SMFIP_HDR_LEADSPC` (then it sends its own leading space: `Name:value`).
//!   Line breaks in a value (libmilter filters fold with a bare `\n`, as
//!   OpenDKIM does) become CRLF, and a continuation line that does not start
//!   with white space gets a tab, so a filter can fold but never start a new
//!   field or end the header section. NULs and bare CRs are dropped.
//! - A replaced body gets CRLF line ends (a bare LF becomes CRLF), like the
//!   rest of the stored message.
//! - Recipients and senders may come in angle brackets or without; they are
//!   stored without. Deleting compares without ASCII case; adding one that
//!   is already there does nothing, so a recipient is never delivered twice.
//! - Quarantine has no hold queue to go to here: the message is kept and
//!   delivered with `X-Quarantine: <reason>` on top, and the policy logs it
//!   at `warn`, so an operator's filter can divert it.

use crate::envelope::Envelope;

use super::protocol::Modification;

/// The header field added to a quarantined message.
pub const QUARANTINE_HEADER: &str = "X-Quarantine";

/// One header field: its name and the whole field, line end included.
struct Field {
    name: Vec<u8>,
    raw: Vec<u8>,
}

/// Splits `message` into its header fields and the rest (the blank line and
/// the body, or nothing when the message has no blank line).
fn split_header(message: &[u8]) -> (Vec<Field>, &[u8]) {
    let mut fields: Vec<Field> = Vec::new();
    let mut at = 0;
    while at < message.len() {
        let line_end = memchr::memchr(b'\n', &message[at..]).map_or(message.len(), |i| at + i + 1);
        let line = &message[at..line_end];
        if line == b"\r\n" || line == b"\n" {
            return (fields, &message[at..]);
        }
        match (line[0], fields.last_mut()) {
            (b' ' | b'\t', Some(last)) => last.raw.extend_from_slice(line),
            _ => {
                let name_end = memchr::memchr(b':', line).unwrap_or(0);
                fields.push(Field {
                    name: line[..name_end].trim_ascii_end().to_vec(),
                    raw: line.to_vec(),
                });
            }
        }
        at = line_end;
    }
    (fields, &message[message.len()..])
}

/// `text` with bare LFs made CRLF and lone CRs and NULs dropped.
fn crlf(text: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len() + text.len() / 32);
    for (i, &b) in text.iter().enumerate() {
        match b {
            b'\n' => out.extend_from_slice(b"\r\n"),
            b'\r' if text.get(i + 1) == Some(&b'\n') => {}
            b'\r' | 0 => {}
            _ => out.push(b),
        }
    }
    out
}

/// A whole field `name: value` (see the module docs).
fn field(name: &str, value: &[u8], leading_space: bool) -> Field {
    let name: Vec<u8> = name
        .bytes()
        .filter(|b| b.is_ascii_graphic() && *b != b':')
        .collect();
    let mut raw = name.clone();
    raw.push(b':');
    if !leading_space {
        raw.push(b' ');
    }
    let value = crlf(value);
    let mut lines = value.split(|&b| b == b'\n').peekable();
    let mut first = true;
    while let Some(line) = lines.next() {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() && lines.peek().is_none() && !first {
            break;
        }
        if !first {
            raw.extend_from_slice(b"\r\n");
            if !line.starts_with(b" ") && !line.starts_with(b"\t") {
                raw.push(b'\t');
            }
        }
        raw.extend_from_slice(line);
        first = false;
    }
    raw.extend_from_slice(b"\r\n");
    Field { name, raw }
}

/// An address without its angle brackets.
fn bare_address(address: &str) -> &str {
    let a = address.trim();
    a.strip_prefix('<')
        .and_then(|a| a.strip_suffix('>'))
        .unwrap_or(a)
}

/// What [`apply`] did that the policy should log.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Applied {
    /// The quarantine reasons, if the filter asked for quarantine.
    pub quarantined: Vec<String>,
}

/// Applies `modifications`, in the order the filter sent them, to
/// `envelope`. `leading_space`: the filter negotiated `SMFIP_HDR_LEADSPC`.
pub fn apply(
    envelope: &mut Envelope,
    modifications: &[Modification],
    leading_space: bool,
) -> Applied {
    let mut applied = Applied::default();
    let (mut fields, rest) = split_header(&envelope.message);
    let rest = rest.to_vec();
    let mut new_body: Option<Vec<u8>> = None;
    for modification in modifications {
        match modification {
            Modification::AddHeader { name, value } => {
                fields.push(field(name, value, leading_space));
            }
            Modification::InsertHeader { index, name, value } => {
                let at = (*index as usize).min(fields.len());
                fields.insert(at, field(name, value, leading_space));
            }
            Modification::ChangeHeader { index, name, value } => {
                let wanted = (*index).max(1) as usize;
                let found = fields
                    .iter()
                    .enumerate()
                    .filter(|(_, f)| f.name.eq_ignore_ascii_case(name.as_bytes()))
                    .nth(wanted - 1)
                    .map(|(i, _)| i);
                match (found, value.is_empty()) {
                    (Some(i), true) => {
                        fields.remove(i);
                    }
                    (Some(i), false) => fields[i] = field(name, value, leading_space),
                    (None, true) => {}
                    (None, false) => fields.push(field(name, value, leading_space)),
                }
            }
            Modification::ChangeSender(sender) => {
                bare_address(sender).clone_into(&mut envelope.sender);
            }
            Modification::AddRecipient(recipient) => {
                let recipient = bare_address(recipient);
                if !envelope
                    .recipients
                    .iter()
                    .any(|r| r.eq_ignore_ascii_case(recipient))
                {
                    envelope.recipients.push(recipient.to_owned());
                }
            }
            Modification::DeleteRecipient(recipient) => {
                let recipient = bare_address(recipient);
                envelope
                    .recipients
                    .retain(|r| !r.eq_ignore_ascii_case(recipient));
            }
            Modification::ReplaceBody(chunk) => {
                new_body
                    .get_or_insert_with(Vec::new)
                    .extend_from_slice(chunk);
            }
            Modification::Quarantine(reason) => applied.quarantined.push(reason.clone()),
        }
    }
    if let Some(reason) = applied.quarantined.first() {
        fields.insert(0, field(QUARANTINE_HEADER, reason.as_bytes(), false));
    }
    let mut message = Vec::with_capacity(envelope.message.len() + 256);
    for f in &fields {
        message.extend_from_slice(&f.raw);
    }
    match new_body {
        Some(body) => {
            message.extend_from_slice(b"\r\n");
            message.extend_from_slice(&crlf(&body));
        }
        None => message.extend_from_slice(&rest),
    }
    envelope.message = message;
    applied
}

/// The header fields of `message` as the filter is sent them: name and
/// value, the value without the one space after the colon (unless
/// `leading_space`) and without its final line end, folds as bare `\n`
/// (libmilter's MTAs send them so).
pub fn header_fields(message: &[u8], leading_space: bool) -> Vec<(Vec<u8>, Vec<u8>)> {
    let (fields, _) = split_header(message);
    fields
        .into_iter()
        .map(|f| {
            let raw = f.raw.strip_suffix(b"\n").unwrap_or(&f.raw);
            let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
            let colon = memchr::memchr(b':', raw).map_or(raw.len(), |i| i + 1);
            let mut value = &raw[colon.min(raw.len())..];
            if !leading_space {
                value = value.strip_prefix(b" ").unwrap_or(value);
            }
            let value = value
                .split(|&b| b == b'\n')
                .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
                .collect::<Vec<_>>()
                .join(&b'\n');
            (f.name, value)
        })
        .collect()
}

/// Where the body starts in `message` (after the blank line), or its end.
pub fn body_start(message: &[u8]) -> usize {
    let (_, rest) = split_header(message);
    let blank = if rest.starts_with(b"\r\n") {
        2
    } else {
        rest.len().min(1)
    };
    message.len() - rest.len() + blank
}

#[cfg(test)]
mod tests {
    use super::*;

    fn add(name: &str, value: &str) -> Modification {
        Modification::AddHeader {
            name: name.into(),
            value: value.as_bytes().to_vec(),
        }
    }

    fn change(index: u32, name: &str, value: &str) -> Modification {
        Modification::ChangeHeader {
            index,
            name: name.into(),
            value: value.as_bytes().to_vec(),
        }
    }

    fn insert(index: u32, name: &str, value: &str) -> Modification {
        Modification::InsertHeader {
            index,
            name: name.into(),
            value: value.as_bytes().to_vec(),
        }
    }

    const MESSAGE: &str = "A: 1\r\nX: first\r\n\tfolded\r\nB: 2\r\nx: second\r\n\r\nbody\r\n";

    #[test]
    fn header_changes_follow_the_libmilter_rules() {
        let cases: Vec<(Vec<Modification>, &str)> = vec![
            (
                vec![add("New", "v")],
                "A: 1\r\nX: first\r\n\tfolded\r\nB: 2\r\nx: second\r\nNew: v\r\n\r\nbody\r\n",
            ),
            (
                vec![
                    insert(0, "Top", "t"),
                    insert(2, "Mid", "m"),
                    insert(99, "End", "e"),
                ],
                "Top: t\r\nA: 1\r\nMid: m\r\nX: first\r\n\tfolded\r\nB: 2\r\nx: second\r\nEnd: e\r\n\r\nbody\r\n",
            ),
            (
                vec![change(2, "X", "changed")],
                "A: 1\r\nX: first\r\n\tfolded\r\nB: 2\r\nX: changed\r\n\r\nbody\r\n",
            ),
            (
                vec![change(1, "x", "")],
                "A: 1\r\nB: 2\r\nx: second\r\n\r\nbody\r\n",
            ),
            (
                vec![change(0, "B", "zero is one")],
                "A: 1\r\nX: first\r\n\tfolded\r\nB: zero is one\r\nx: second\r\n\r\nbody\r\n",
            ),
            (
                vec![change(3, "X", "third"), change(5, "Nope", "")],
                "A: 1\r\nX: first\r\n\tfolded\r\nB: 2\r\nx: second\r\nX: third\r\n\r\nbody\r\n",
            ),
            (
                // Folds with bare LF become CRLF; an unindented line is
                // folded, never a new field; NUL and lone CR dropped.
                vec![add("S", "a=1;\n\tb=2;\nEvil: 1\r\n\r\nx\0y\rz")],
                "A: 1\r\nX: first\r\n\tfolded\r\nB: 2\r\nx: second\r\nS: a=1;\r\n\tb=2;\r\n\tEvil: 1\r\n\t\r\n\txyz\r\n\r\nbody\r\n",
            ),
            (
                vec![
                    Modification::ReplaceBody(b"new\nbody".to_vec()),
                    Modification::ReplaceBody(b"\r\n".to_vec()),
                ],
                "A: 1\r\nX: first\r\n\tfolded\r\nB: 2\r\nx: second\r\n\r\nnew\r\nbody\r\n",
            ),
        ];
        for (modifications, expected) in cases {
            let mut envelope = Envelope::new("a@x", vec!["b@y".into()], MESSAGE.into());
            apply(&mut envelope, &modifications, false);
            assert_eq!(
                String::from_utf8_lossy(&envelope.message),
                expected,
                "{modifications:?}"
            );
        }
    }

    #[test]
    fn leading_space_is_the_filters_own() {
        let mut envelope = Envelope::new("a@x", vec![], b"A: 1\r\n\r\nb".to_vec());
        apply(&mut envelope, &[add("N", " v"), add("M", "w")], true);
        assert_eq!(envelope.message, b"A: 1\r\nN: v\r\nM:w\r\n\r\nb");
    }

    #[test]
    fn envelope_changes_and_quarantine() {
        let mut envelope = Envelope::new(
            "a@x",
            vec!["b@y".into(), "c@y".into()],
            b"A: 1\r\n\r\nb".to_vec(),
        );
        let applied = apply(
            &mut envelope,
            &[
                Modification::ChangeSender("<new@x>".into()),
                Modification::AddRecipient("<d@y>".into()),
                Modification::AddRecipient("B@y".into()),
                Modification::DeleteRecipient("<C@Y>".into()),
                Modification::Quarantine("virus\r\nX-Evil: 1".into()),
            ],
            false,
        );
        assert_eq!(envelope.sender, "new@x");
        assert_eq!(envelope.recipients, ["b@y", "d@y"]);
        assert_eq!(applied.quarantined, ["virus\r\nX-Evil: 1"]);
        assert_eq!(
            envelope.message,
            b"X-Quarantine: virus\r\n\tX-Evil: 1\r\nA: 1\r\n\r\nb"
        );
    }

    #[test]
    fn fields_are_sent_without_the_space_and_with_lf_folds() {
        assert_eq!(
            header_fields(MESSAGE.as_bytes(), false),
            [
                (b"A".to_vec(), b"1".to_vec()),
                (b"X".to_vec(), b"first\n\tfolded".to_vec()),
                (b"B".to_vec(), b"2".to_vec()),
                (b"x".to_vec(), b"second".to_vec()),
            ]
        );
        assert_eq!(
            header_fields(b"A:  1\r\n\r\n", true),
            [(b"A".to_vec(), b"  1".to_vec())]
        );
        assert_eq!(body_start(MESSAGE.as_bytes()), MESSAGE.len() - 6);
        assert_eq!(body_start(b"A: 1\r\n"), 6);
        assert_eq!(body_start(b"\r\nb"), 2);
    }
}
