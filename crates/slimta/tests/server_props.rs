//! Property tests of the SMTP server state machine through its public API:
//! arbitrary input never panics, never produces malformed output, does not
//! depend on how it is split into reads, and DATA content round-trips
//! through dot-stuffing.

use std::sync::Arc;

use proptest::prelude::*;
use slimta::Reply;
use slimta::smtp::{EventKind, Server, ServerConfig, Step};

/// Pieces that make interesting streams: line-end fragments, dots, NULs,
/// valid and invalid commands, BDAT in all its forms, high bytes.
const TOKENS: &[&[u8]] = &[
    b"\r",
    b"\n",
    b"\r\n",
    b".",
    b"\r\n.\r\n",
    b"\0",
    b" ",
    b"x",
    b"\xff",
    b"\xc3\xbc",
    b"<",
    b">",
    b"@",
    b":",
    b"EHLO c.test\r\n",
    b"HELO c\r\n",
    b"ehlo",
    b"MAIL FROM:<a@b>\r\n",
    b"MAIL FROM:<>",
    b" SIZE=5",
    b" SIZE=99999",
    b" BODY=8BITMIME",
    b" SMTPUTF8",
    b" AUTH=a+2B",
    b"RCPT TO:<c@d>\r\n",
    b"RCPT TO:<postmaster>",
    b"DATA\r\n",
    b"DATA",
    b"BDAT 3\r\n",
    b"BDAT 2 LAST\r\n",
    b"BDAT 0 LAST\r\n",
    b"BDAT ",
    b"BDAT x\r\n",
    b"RSET\r\n",
    b"NOOP\r\n",
    b"QUIT\r\n",
    b"VRFY x\r\n",
    b"EXPN x\r\n",
    b"HELP\r\n",
    b"MAIL",
    b"RCPT",
    b"FROM:",
    b"TO:",
];

fn config() -> ServerConfig {
    ServerConfig {
        max_size: 200,
        max_recipients: 3,
        max_bad_commands: 50,
        ..ServerConfig::new("mx.test")
    }
}

fn cut(input: &[u8], cuts: &[usize]) -> Vec<Vec<u8>> {
    let mut points: Vec<usize> = cuts.iter().map(|c| c % (input.len() + 1)).collect();
    points.sort_unstable();
    let mut out = Vec::new();
    let mut start = 0;
    for p in points {
        out.push(input[start..p].to_vec());
        start = p;
    }
    out.push(input[start..].to_vec());
    out
}

/// Drives a session; `refuse` decides which events get a 550 instead of
/// the proposed reply. Returns (output, events).
fn drive(config: ServerConfig, reads: &[Vec<u8>], refuse: &[bool]) -> (Vec<u8>, Vec<String>) {
    let mut server = Server::new(Arc::new(config));
    server.greet(server.default_banner());
    let mut output = Vec::new();
    let mut events = Vec::new();
    let mut reads = reads.iter();
    loop {
        match server.step() {
            Step::Event(ev) => {
                let n = events.len();
                events.push(format!("{:?}", ev.kind));
                let reply = if refuse.get(n).copied().unwrap_or(false) {
                    Reply::new(550, "5.7.1", "refused")
                } else {
                    ev.reply
                };
                server.respond(reply);
            }
            Step::NeedInput => {
                output.extend_from_slice(server.output());
                server.clear_output();
                match reads.next() {
                    Some(r) => server.receive(r),
                    None => break,
                }
            }
            Step::StartTls => server.tls_established(),
            Step::Close => break,
        }
    }
    output.extend_from_slice(server.output());
    (output, events)
}

/// Every line is `ddd SP|- text CRLF` with a 2xx-5xx code, continuation
/// lines share the final line's code, and no CR or LF appears elsewhere.
fn assert_well_formed(output: &[u8]) {
    assert!(output.is_empty() || output.ends_with(b"\r\n"), "{output:?}");
    let mut continued: Option<&[u8]> = None;
    for line in output.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
        let line = line
            .strip_suffix(b"\r")
            .unwrap_or_else(|| panic!("line without CRLF: {line:?}"));
        assert!(!line.contains(&b'\r'), "bare CR in {line:?}");
        assert!(line.len() >= 4, "short line {line:?}");
        let code = &line[..3];
        assert!(
            code.iter().all(u8::is_ascii_digit) && (b'2'..=b'5').contains(&code[0]),
            "{line:?}"
        );
        if let Some(prev) = continued {
            assert_eq!(prev, code, "continuation with another code");
        }
        match line[3] {
            b'-' => continued = Some(code),
            b' ' => continued = None,
            _ => panic!("bad separator in {line:?}"),
        }
        assert!(
            std::str::from_utf8(line).is_ok(),
            "reply not UTF-8: {line:?}"
        );
    }
    assert!(continued.is_none(), "unfinished multi-line reply");
}

/// Reference dot-unstuffing, byte by byte: drop a `.` at the start of a
/// line (data start or after CRLF).
fn unstuff(text: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len());
    let mut at_start = true;
    let mut i = 0;
    while i < text.len() {
        if at_start && text[i] == b'.' {
            at_start = false;
        } else if text[i..].starts_with(b"\r\n") {
            out.extend_from_slice(b"\r\n");
            at_start = true;
            i += 1;
        } else {
            out.push(text[i]);
            at_start = false;
        }
        i += 1;
    }
    out
}

/// Turns dots into `x` until `CRLF content CRLF . CRLF` contains the end
/// sequence only at its end.
fn without_terminator(mut content: Vec<u8>) -> Vec<u8> {
    loop {
        let full = [b"\r\n", &content[..], b"\r\n.\r\n"].concat();
        let first = memchr::memmem::find(&full, b"\r\n.\r\n").unwrap();
        if first == full.len() - 5 {
            return content;
        }
        // `full[first + 2]` is the dot, at `content[first]`.
        content[first] = b'x';
    }
}

fn stream() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(prop::sample::select(TOKENS), 0..120).prop_map(|t| t.concat())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn any_stream_gives_well_formed_replies_whatever_the_split(
        input in stream(),
        cuts in prop::collection::vec(any::<usize>(), 0..16),
        refuse in prop::collection::vec(prop::bool::weighted(0.2), 0..32),
    ) {
        let whole = drive(config(), std::slice::from_ref(&input), &refuse);
        assert_well_formed(&whole.0);
        let split = drive(config(), &cut(&input, &cuts), &refuse);
        prop_assert_eq!(&whole, &split);
    }

    #[test]
    fn raw_bytes_never_panic(input in prop::collection::vec(any::<u8>(), 0..2000), cuts in prop::collection::vec(any::<usize>(), 0..8)) {
        let (output, _) = drive(config(), &cut(&input, &cuts), &[]);
        assert_well_formed(&output);
    }

    #[test]
    fn one_data_section_yields_one_unstuffed_message(
        content in prop::collection::vec(prop::sample::select(&b"\r\n.\0aM"[..]), 0..400),
        cuts in prop::collection::vec(any::<usize>(), 0..12),
    ) {
        let content = without_terminator(content);
        let input = [
            &b"EHLO c\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\n"[..],
            &content,
            b"\r\n.\r\n",
        ]
        .concat();
        let cfg = ServerConfig { max_text_line: 0, ..ServerConfig::new("mx.test") };
        let mut server = Server::new(Arc::new(cfg));
        server.greet(server.default_banner());
        let mut messages = Vec::new();
        let mut reads = cut(&input, &cuts).into_iter();
        loop {
            match server.step() {
                Step::Event(ev) => {
                    if let EventKind::Message(t) = &ev.kind {
                        messages.push(t.data.clone());
                    }
                    server.respond(ev.reply);
                }
                Step::NeedInput => match reads.next() {
                    Some(r) => server.receive(&r),
                    None => break,
                },
                Step::StartTls => server.tls_established(),
                Step::Close => break,
            }
        }
        let expected = unstuff(&[&content[..], b"\r\n"].concat());
        prop_assert_eq!(messages, vec![expected]);
        prop_assert!(!server.reading_data());
        prop_assert!(!server.in_transaction());
    }
}

#[test]
fn reference_unstuffing() {
    assert_eq!(unstuff(b".a\r\n..\r\nb.\r\n.\n"), b"a\r\n.\r\nb.\r\n\n");
    assert_eq!(without_terminator(b"a\r\n.\r\nb".to_vec()), b"a\r\nx\r\nb");
    assert_eq!(without_terminator(b".\r\n".to_vec()), b"x\r\n");
    assert_eq!(without_terminator(b"a\r\n.".to_vec()), b"a\r\nx");
}
