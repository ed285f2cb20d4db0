//! Property tests of the SMTP server state machine through its public API:
//! arbitrary input never panics, never produces malformed output, does not
//! depend on how it is split into reads, and DATA content round-trips
//! through dot-stuffing. Streams include STARTTLS, AUTH exchanges and LHLO,
//! under an SMTP, a STARTTLS+AUTH and an LMTP+AUTH configuration; no
//! plaintext after an accepted STARTTLS is ever answered.

use std::sync::Arc;

use proptest::prelude::*;
use slimta::Reply;
use slimta::smtp::{EventKind, Mechanism, Server, ServerConfig, Step};

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
    b"STARTTLS\r\n",
    b"STARTTLS",
    b"LHLO c\r\n",
    b"AUTH PLAIN AGEAYg==\r\n",
    b"AUTH PLAIN =\r\n",
    b"AUTH PLAIN\r\n",
    b"AUTH LOGIN\r\n",
    b"AUTH LOGIN YWxpY2U=\r\n",
    b"AUTH CRAM-MD5\r\n",
    b"AUTH X\r\n",
    b"AUTH ",
    b"AGEAYg==",
    b"YWxpY2UgMDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=\r\n",
    b"*\r\n",
    b"=",
];

/// What follows an accepted STARTTLS: the client starts over inside TLS.
const AFTER_TLS: &[u8] =
    b"EHLO c\r\nAUTH PLAIN AGEAYg==\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\nx\r\n.\r\nQUIT\r\n";

fn config() -> ServerConfig {
    ServerConfig {
        max_size: 200,
        max_recipients: 3,
        max_bad_commands: 50,
        ..ServerConfig::new("mx.test")
    }
}

/// 0: plain SMTP; 1: STARTTLS and AUTH (TLS-only PLAIN/LOGIN, required);
/// 2: LMTP with AUTH allowed in plaintext.
fn config_variant(variant: u8) -> ServerConfig {
    match variant % 3 {
        0 => config(),
        1 => ServerConfig {
            starttls: true,
            auth_mechanisms: Mechanism::ALL.to_vec(),
            auth_required: true,
            ..config()
        },
        _ => ServerConfig {
            lmtp: true,
            auth_mechanisms: Mechanism::ALL.to_vec(),
            auth_plaintext: true,
            ..config()
        },
    }
}

/// An event as a string, without the random CRAM-MD5 challenge.
fn describe(kind: &EventKind) -> String {
    match kind {
        EventKind::Auth(a) => format!("Auth({} {})", a.mechanism, a.authcid),
        other => format!("{other:?}"),
    }
}

/// Output with CRAM-MD5 challenges (random) replaced by a fixed line.
fn hide_challenges(output: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(output.len());
    for line in output.split_inclusive(|&b| b == b'\n') {
        // A base64 `<...@mx.test>` starts with "PD" and is long.
        if line.starts_with(b"334 PD") && line.len() > 30 {
            out.extend_from_slice(b"334 <challenge>\r\n");
        } else {
            out.extend_from_slice(line);
        }
    }
    out
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

/// Drives a session; `refuse` decides which events get a 550 (a 535 for
/// AUTH) instead of the proposed reply (a 235 for AUTH). After an accepted
/// STARTTLS the reads not yet given are dropped (plaintext the TLS layer
/// swallows) and [`AFTER_TLS`] is read instead. In LMTP mode a refused
/// message gets per-recipient replies. Returns (output, events).
fn drive(config: ServerConfig, reads: &[Vec<u8>], refuse: &[bool]) -> (Vec<u8>, Vec<String>) {
    let mut server = Server::new(Arc::new(config));
    server.greet(server.default_banner());
    let mut output = Vec::new();
    let mut events = Vec::new();
    let after_tls = [AFTER_TLS.to_vec()];
    let mut reads = reads.iter();
    loop {
        match server.step() {
            Step::Event(ev) => {
                let n = events.len();
                events.push(describe(&ev.kind));
                let refused = refuse.get(n).copied().unwrap_or(false);
                match (&ev.kind, refused) {
                    (EventKind::Auth(_), true) => server.respond(ev.reply),
                    (EventKind::Auth(_), false) => {
                        server.respond(Reply::new(235, "2.7.0", "Authentication successful"));
                    }
                    (EventKind::Message(t), true) if server.config().lmtp => {
                        let replies = (0..t.recipients.len())
                            .map(|i| Reply::new(if i % 2 == 0 { 250 } else { 452 }, "", "r"))
                            .collect();
                        server.respond_per_recipient(replies);
                    }
                    (_, true) => server.respond(Reply::new(550, "5.7.1", "refused")),
                    (_, false) => server.respond(ev.reply),
                }
            }
            Step::NeedInput => {
                output.extend_from_slice(server.output());
                server.clear_output();
                match reads.next() {
                    Some(r) => server.receive(r),
                    None => break,
                }
            }
            Step::StartTls => {
                server.tls_established();
                reads = after_tls.iter();
            }
            Step::Close => break,
        }
    }
    output.extend_from_slice(server.output());
    (hide_challenges(&output), events)
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
        variant in 0u8..3,
        input in stream(),
        cuts in prop::collection::vec(any::<usize>(), 0..16),
        refuse in prop::collection::vec(prop::bool::weighted(0.2), 0..32),
    ) {
        let whole = drive(config_variant(variant), std::slice::from_ref(&input), &refuse);
        assert_well_formed(&whole.0);
        let split = drive(config_variant(variant), &cut(&input, &cuts), &refuse);
        prop_assert_eq!(&whole, &split);
    }

    #[test]
    fn raw_bytes_never_panic(
        variant in 0u8..3,
        input in prop::collection::vec(any::<u8>(), 0..2000),
        cuts in prop::collection::vec(any::<usize>(), 0..8),
    ) {
        let (output, _) = drive(config_variant(variant), &cut(&input, &cuts), &[]);
        assert_well_formed(&output);
    }

    /// CVE-2011-0411: whatever precedes and follows STARTTLS in the same
    /// read, once the 220 is written nothing more is, until the handshake.
    #[test]
    fn nothing_after_an_accepted_starttls_is_answered(
        before in stream(),
        after in stream(),
    ) {
        let input = [&b"EHLO c\r\n"[..], &before, b"\r\nSTARTTLS\r\n", &after].concat();
        let mut server = Server::new(Arc::new(config_variant(1)));
        server.greet(server.default_banner());
        server.receive(&input);
        let mut accepted = false;
        loop {
            match server.step() {
                Step::Event(ev) => {
                    prop_assert!(!accepted, "event after STARTTLS: {:?}", ev.kind);
                    accepted = matches!(ev.kind, EventKind::StartTls);
                    server.respond(ev.reply);
                }
                Step::StartTls => {
                    prop_assert!(server.output().ends_with(b"220 2.0.0 Ready to start TLS\r\n"));
                    server.clear_output();
                    server.receive(&after);
                    prop_assert!(matches!(server.step(), Step::StartTls));
                    server.tls_established();
                    prop_assert!(matches!(server.step(), Step::NeedInput));
                    prop_assert_eq!(server.output(), b"");
                    prop_assert!(!server.in_transaction());
                    break;
                }
                Step::NeedInput | Step::Close => {
                    prop_assert!(!accepted);
                    break;
                }
            }
        }
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

/// The AUTH exchange end to end with the edge's credential store: the
/// client computes the CRAM-MD5 digest (RFC 2195) over the challenge it
/// was sent, and the driver verifies what the machine hands it.
#[test]
fn auth_exchanges_verify_against_credentials() {
    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD as B64;
    use hmac::{Hmac, Mac};
    use slimta::edge::credentials::Credentials;
    use slimta::smtp::AuthSecret;

    let users = [("alice".to_owned(), "{PLAIN}wonderland".to_owned())];
    let creds = Credentials::from_map(users.into_iter().collect()).unwrap();
    let cfg = ServerConfig {
        auth_mechanisms: Mechanism::ALL.to_vec(),
        auth_plaintext: true,
        ..ServerConfig::new("mx.test")
    };
    // Runs one exchange; `client` answers each 334 text (decoded).
    let login = |client: &dyn Fn(&str) -> String, command: &str| -> (String, Option<String>) {
        let mut server = Server::new(Arc::new(cfg.clone()));
        server.receive(format!("EHLO c\r\n{command}\r\n").as_bytes());
        loop {
            match server.step() {
                Step::Event(ev) => {
                    let reply = match &ev.kind {
                        EventKind::Auth(a) => {
                            let ok = match &a.secret {
                                AuthSecret::Password(p) => creds.verify(&a.authcid, p),
                                AuthSecret::CramMd5 {
                                    challenge,
                                    digest_hex,
                                } => creds.cram_md5_verify(
                                    &a.authcid,
                                    challenge.as_bytes(),
                                    digest_hex,
                                ),
                            };
                            if ok {
                                Reply::new(235, "2.7.0", "Authentication successful")
                            } else {
                                ev.reply
                            }
                        }
                        _ => ev.reply,
                    };
                    server.respond(reply);
                }
                Step::NeedInput => {
                    let out = String::from_utf8(server.output().to_vec()).unwrap();
                    server.clear_output();
                    let last = out.lines().last().unwrap_or_default().to_owned();
                    let Some(prompt) = last.strip_prefix("334 ") else {
                        return (last, server.authenticated().map(str::to_owned));
                    };
                    let prompt = String::from_utf8(B64.decode(prompt).unwrap()).unwrap();
                    server.receive(format!("{}\r\n", B64.encode(client(&prompt))).as_bytes());
                }
                Step::StartTls | Step::Close => unreachable!(),
            }
        }
    };
    let cram = |secret: &'static str| {
        move |challenge: &str| {
            let mut mac = Hmac::<md5::Md5>::new_from_slice(secret.as_bytes()).unwrap();
            mac.update(challenge.as_bytes());
            let digest: String = mac
                .finalize()
                .into_bytes()
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            format!("alice {digest}")
        }
    };
    let ok = "235 2.7.0 Authentication successful".to_owned();
    let bad = "535 5.7.8 Authentication credentials invalid".to_owned();
    let alice = Some("alice".to_owned());
    assert_eq!(
        login(&cram("wonderland"), "AUTH CRAM-MD5"),
        (ok.clone(), alice.clone())
    );
    assert_eq!(login(&cram("rabbit"), "AUTH CRAM-MD5"), (bad.clone(), None));
    let login_answers = |pw: &'static str| {
        move |p: &str| {
            if p == "Username:" {
                "alice".to_owned()
            } else {
                pw.to_owned()
            }
        }
    };
    assert_eq!(
        login(&login_answers("wonderland"), "AUTH LOGIN"),
        (ok.clone(), alice.clone())
    );
    assert_eq!(
        login(&login_answers("rabbit"), "AUTH LOGIN"),
        (bad.clone(), None)
    );
    let plain = |pw: &str| format!("AUTH PLAIN {}", B64.encode(format!("\0alice\0{pw}")));
    let unused = |_: &str| String::new();
    assert_eq!(login(&unused, &plain("wonderland")), (ok, alice));
    assert_eq!(login(&unused, &plain("rabbit")), (bad, None));
}
