//! Table-driven tests of the server state machine: byte for byte, whole,
//! one byte at a time and in random splits.

use super::*;
use crate::smtp::sasl::AuthSecret;

const BANNER: &str = "220 mx.test ESMTP slimta-rs\r\n";
const EHLO: &[&str] = &[
    "250-mx.test",
    "250-PIPELINING",
    "250-SIZE 1000",
    "250-8BITMIME",
    "250-SMTPUTF8",
    "250-CHUNKING",
    "250 ENHANCEDSTATUSCODES",
];
const SMUGGLE: &[u8] = b"MAIL FROM:<evil@attacker.test>\r\nRCPT TO:<victim@example.test>\r\nDATA\r\nSubject: smuggled\r\n\r\nhidden\r\n.\r\n";

fn config() -> ServerConfig {
    ServerConfig {
        max_size: 1000,
        ..ServerConfig::new("mx.test")
    }
}

/// What a session produced: everything written after the banner, and
/// the events in order, each as a short string.
#[derive(Debug, PartialEq, Eq)]
struct Outcome {
    output: String,
    events: Vec<String>,
    closed: bool,
}

fn describe(kind: &EventKind) -> String {
    match kind {
        EventKind::Helo { domain, extended } => {
            format!("{} {domain}", if *extended { "EHLO" } else { "HELO" })
        }
        EventKind::Mail { sender, params } => {
            let mut s = format!("MAIL {sender}");
            if *params != MailParams::default() {
                s.push_str(&format!(" {params:?}"));
            }
            s
        }
        EventKind::Rcpt { recipient, .. } => format!("RCPT {recipient}"),
        EventKind::Data => "DATA".into(),
        EventKind::Message(t) => format!(
            "MSG {} {:?} {:?}",
            t.sender,
            t.recipients,
            String::from_utf8_lossy(&t.data)
        ),
        EventKind::Quit => "QUIT".into(),
        EventKind::StartTls => "STARTTLS".into(),
        EventKind::Auth(a) => {
            let secret = match &a.secret {
                AuthSecret::Password(p) => format!("password {p:?}"),
                AuthSecret::CramMd5 { digest_hex, .. } => format!("digest {digest_hex}"),
            };
            let authzid = a
                .authzid
                .as_deref()
                .map(|z| format!(" as {z}"))
                .unwrap_or_default();
            format!("AUTH {} {}{authzid} {secret}", a.mechanism, a.authcid)
        }
    }
}

/// Written into the output where the driver did the TLS handshake.
const TLS_MARK: &str = "--- TLS ---";

/// Drives a session like the edge does, feeding `chunks` one per
/// NeedInput; `decide` may replace the proposed reply.
fn drive(
    config: ServerConfig,
    banner: Option<Reply>,
    chunks: &[&[u8]],
    decide: &mut dyn FnMut(&EventKind, Reply) -> Reply,
) -> Outcome {
    drive_phases(config, banner, &[chunks.to_vec()], decide, OPTS)
}

/// How the test driver handles what is not an ordinary event.
#[derive(Clone, Copy)]
struct Opts {
    /// The TLS handshake succeeds.
    tls_ok: bool,
    /// Answers Message events with [`Server::respond_per_recipient`].
    per_recipient: Option<fn(&Transaction) -> Vec<Reply>>,
}

const OPTS: Opts = Opts {
    tls_ok: true,
    per_recipient: None,
};

/// Like [`drive`], with the input in phases: the first is sent in
/// plaintext, each [`Step::StartTls`] ends the current phase (whatever of
/// it was not read yet is plaintext the TLS layer swallows) and the next
/// phase is read after the handshake, which succeeds if `opts.tls_ok`. The
/// output shows the handshake as a [`TLS_MARK`] line, and CRAM-MD5
/// challenges (random) as `334 <challenge>`.
fn drive_phases(
    config: ServerConfig,
    banner: Option<Reply>,
    phases: &[Vec<&[u8]>],
    decide: &mut dyn FnMut(&EventKind, Reply) -> Reply,
    opts: Opts,
) -> Outcome {
    let lmtp = config.lmtp;
    let mut server = Server::new(Arc::new(config));
    let banner = banner.unwrap_or_else(|| server.default_banner());
    server.greet(banner);
    let mut output = std::mem::take(&mut server.output);
    let mut events = Vec::new();
    let mut phases = phases.iter();
    let mut chunks = phases.next().map(|p| p.iter()).unwrap_or_default();
    let closed = loop {
        match server.step() {
            Step::Event(ev) => {
                let mut event = describe(&ev.kind);
                if lmtp && let Some(rest) = event.strip_prefix("EHLO ") {
                    event = format!("LHLO {rest}");
                }
                events.push(event);
                match (&ev.kind, opts.per_recipient) {
                    (EventKind::Message(t), Some(per_recipient)) => {
                        server.respond_per_recipient(per_recipient(t));
                    }
                    _ => {
                        let reply = decide(&ev.kind, ev.reply);
                        server.respond(reply);
                    }
                }
            }
            Step::NeedInput => {
                output.extend_from_slice(server.output());
                server.clear_output();
                match chunks.next() {
                    Some(c) => server.receive(c),
                    None => break false,
                }
            }
            Step::StartTls => {
                output.extend_from_slice(server.output());
                server.clear_output();
                output.extend_from_slice(TLS_MARK.as_bytes());
                output.extend_from_slice(b"\r\n");
                if opts.tls_ok {
                    server.tls_established();
                } else {
                    server.tls_failed();
                }
                chunks = phases.next().map(|p| p.iter()).unwrap_or_default();
            }
            Step::Close => break true,
        }
    };
    output.extend_from_slice(server.output());
    let output = String::from_utf8(output).unwrap();
    Outcome {
        output: hide_cram_challenges(&output),
        events,
        closed,
    }
}

/// Replaces each `334 base64(<...@mx.test>)` line by `334 <challenge>`.
fn hide_cram_challenges(output: &str) -> String {
    use base64::Engine as _;
    let mut out = String::with_capacity(output.len());
    for line in output.split_inclusive("\r\n") {
        let challenge = line
            .strip_prefix("334 ")
            .and_then(|b| {
                base64::engine::general_purpose::STANDARD
                    .decode(b.trim_end())
                    .ok()
            })
            .and_then(|c| String::from_utf8(c).ok())
            .filter(|c| c.starts_with('<') && c.ends_with("@mx.test>"));
        if challenge.is_some() {
            out.push_str("334 <challenge>\r\n");
        } else {
            out.push_str(line);
        }
    }
    out
}

/// Runs the phases whole, byte by byte and in random splits (each phase
/// split on its own, the phase boundaries kept); all must agree.
fn run_phases(
    config: &ServerConfig,
    phases: &[&[u8]],
    decide: fn(&EventKind, Reply) -> Reply,
    opts: Opts,
) -> Outcome {
    let run = |split: &dyn Fn(&[u8]) -> Vec<&[u8]>| {
        let pieces: Vec<Vec<&[u8]>> = phases.iter().map(|p| split(p)).collect();
        drive_phases(config.clone(), None, &pieces, &mut { decide }, opts)
    };
    let whole = run(&|p| vec![p]);
    let bytewise = run(&|p| p.chunks(1).collect());
    assert_eq!(whole, bytewise, "byte by byte: {phases:?}");
    for seed in 1..6 {
        let split = run(&|p| split_at(p, &cuts(p.len(), seed)));
        assert_eq!(whole, split, "seed {seed}: {phases:?}");
    }
    whole
}

fn accept(_: &EventKind, reply: Reply) -> Reply {
    reply
}

fn run(config: ServerConfig, input: &[u8]) -> Outcome {
    drive(config, None, &[input], &mut accept)
}

fn wire(lines: &[&str]) -> String {
    let mut s = String::from(BANNER);
    for l in lines {
        s.push_str(l);
        s.push_str("\r\n");
    }
    s
}

fn with_ehlo(rest: &[&str]) -> Vec<&'static str> {
    let mut v: Vec<&str> = EHLO.to_vec();
    v.extend_from_slice(rest);
    // The test strings live for the whole test; leak-free via 'static data.
    v.into_iter()
        .map(|s| -> &'static str { Box::leak(s.to_owned().into_boxed_str()) })
        .collect()
}

/// Pseudo-random cut points (xorshift), deterministic per seed.
fn cuts(len: usize, seed: u64) -> Vec<usize> {
    let mut x = seed | 1;
    let mut out = Vec::new();
    let mut pos = 0;
    loop {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        pos += 1 + (x % 23) as usize;
        if pos >= len {
            return out;
        }
        out.push(pos);
    }
}

fn split_at<'a>(input: &'a [u8], points: &[usize]) -> Vec<&'a [u8]> {
    let mut out = Vec::new();
    let mut start = 0;
    for &p in points {
        out.push(&input[start..p]);
        start = p;
    }
    out.push(&input[start..]);
    out
}

/// Runs `input` whole, byte by byte and in random splits; all must agree.
fn run_all_splits(config: &ServerConfig, input: &[u8]) -> Outcome {
    let whole = run(config.clone(), input);
    let bytes: Vec<&[u8]> = input.chunks(1).collect();
    let bytewise = drive(config.clone(), None, &bytes, &mut accept);
    assert_eq!(
        whole,
        bytewise,
        "byte by byte: {:?}",
        String::from_utf8_lossy(input)
    );
    for seed in 1..6 {
        let pieces = split_at(input, &cuts(input.len(), seed));
        let split = drive(config.clone(), None, &pieces, &mut accept);
        assert_eq!(
            whole,
            split,
            "seed {seed}: {:?}",
            String::from_utf8_lossy(input)
        );
    }
    whole
}

struct Case {
    name: &'static str,
    config: ServerConfig,
    input: Vec<u8>,
    output: Vec<&'static str>,
    events: Vec<&'static str>,
    closed: bool,
}

fn case(
    name: &'static str,
    input: &[u8],
    output: Vec<&'static str>,
    events: &[&'static str],
) -> Case {
    Case {
        name,
        config: config(),
        input: input.to_vec(),
        output,
        events: events.to_vec(),
        closed: false,
    }
}

fn check(cases: Vec<Case>) {
    for c in cases {
        let got = run_all_splits(&c.config, &c.input);
        assert_eq!(got.output, wire(&c.output), "{}", c.name);
        assert_eq!(got.events, c.events, "{}", c.name);
        assert_eq!(got.closed, c.closed, "{}", c.name);
    }
}

const TXN: &[u8] = b"EHLO c.test\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\n";
const TXN_OUT: &[&str] = &["250 2.1.0 Sender <a@b> ok", "250 2.1.5 Recipient <c@d> ok"];
const TXN_EV: [&str; 3] = ["EHLO c.test", "MAIL a@b", "RCPT c@d"];

fn txn(rest: &[u8]) -> Vec<u8> {
    [TXN, rest].concat()
}

fn txn_out(rest: &[&str]) -> Vec<&'static str> {
    let mut v = TXN_OUT.to_vec();
    v.extend_from_slice(rest);
    with_ehlo(&v)
}

fn txn_ev<'a>(rest: &[&'a str]) -> Vec<&'a str> {
    let mut v = TXN_EV.to_vec();
    v.extend_from_slice(rest);
    v
}

#[test]
fn a_complete_session_byte_for_byte() {
    let input = txn(b"DATA\r\nhello\r\n..dot\r\n.\r\nQUIT\r\n");
    let got = run_all_splits(&config(), &input);
    let expected = "220 mx.test ESMTP slimta-rs\r\n\
        250-mx.test\r\n250-PIPELINING\r\n250-SIZE 1000\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n\
        250-CHUNKING\r\n250 ENHANCEDSTATUSCODES\r\n\
        250 2.1.0 Sender <a@b> ok\r\n250 2.1.5 Recipient <c@d> ok\r\n\
        354 End data with <CR><LF>.<CR><LF>\r\n250 2.6.0 Message accepted\r\n221 2.0.0 Bye\r\n";
    assert_eq!(got.output, expected);
    let msg = r#"MSG a@b ["c@d"] "hello\r\n.dot\r\n""#;
    assert_eq!(got.events, txn_ev(&["DATA", msg, "QUIT"]));
    assert!(got.closed);
}

#[test]
fn commands_and_sequence() {
    let ok = "250 2.0.0 Ok";
    let mut cases = vec![
        case(
            "helo",
            b"HELO c.test\r\n",
            vec!["250 mx.test"],
            &["HELO c.test"],
        ),
        case(
            "helo without argument",
            b"HELO\r\n",
            vec!["501 5.5.4 Syntax: HELO hostname"],
            &[],
        ),
        case(
            "ehlo blank",
            b"EHLO \r\n",
            vec!["501 5.5.4 Syntax: EHLO hostname"],
            &[],
        ),
        case(
            "lower case verbs",
            b"ehlo c\r\nmail from:<a@b>\r\nrcpt to:<c@d>\r\nrset\r\nnoop\r\n",
            with_ehlo(&[
                "250 2.1.0 Sender <a@b> ok",
                "250 2.1.5 Recipient <c@d> ok",
                ok,
                ok,
            ]),
            &["EHLO c", "MAIL a@b", "RCPT c@d"],
        ),
        case(
            "space after colon",
            b"EHLO c\r\nMAIL FROM: <a@b>\r\nRCPT TO: <c@d>\r\n",
            with_ehlo(&["250 2.1.0 Sender <a@b> ok", "250 2.1.5 Recipient <c@d> ok"]),
            &["EHLO c", "MAIL a@b", "RCPT c@d"],
        ),
        case(
            "mail before helo",
            b"MAIL FROM:<a@b>\r\n",
            vec!["503 5.5.1 Error: send HELO/EHLO first"],
            &[],
        ),
        case(
            "rcpt before helo",
            b"RCPT TO:<a@b>\r\n",
            vec!["503 5.5.1 Error: send HELO/EHLO first"],
            &[],
        ),
        case(
            "data before helo",
            b"DATA\r\n",
            vec!["503 5.5.1 Error: send HELO/EHLO first"],
            &[],
        ),
        case(
            "rcpt before mail",
            b"EHLO c\r\nRCPT TO:<a@b>\r\n",
            with_ehlo(&["503 5.5.1 Error: need MAIL command"]),
            &["EHLO c"],
        ),
        case(
            "data before mail",
            b"EHLO c\r\nDATA\r\n",
            with_ehlo(&["503 5.5.1 Error: need MAIL command"]),
            &["EHLO c"],
        ),
        case(
            "data before rcpt",
            b"EHLO c\r\nMAIL FROM:<a@b>\r\nDATA\r\n",
            with_ehlo(&[
                "250 2.1.0 Sender <a@b> ok",
                "503 5.5.1 Error: need RCPT command",
            ]),
            &["EHLO c", "MAIL a@b"],
        ),
        case(
            "nested mail",
            b"EHLO c\r\nMAIL FROM:<a@b>\r\nMAIL FROM:<a@b>\r\n",
            with_ehlo(&[
                "250 2.1.0 Sender <a@b> ok",
                "503 5.5.1 Error: nested MAIL command",
            ]),
            &["EHLO c", "MAIL a@b"],
        ),
        case(
            "rset ends the transaction",
            &txn(b"RSET\r\nRCPT TO:<c@d>\r\n"),
            txn_out(&[ok, "503 5.5.1 Error: need MAIL command"]),
            &TXN_EV,
        ),
        case(
            "ehlo ends the transaction",
            &txn(b"EHLO c.test\r\nRCPT TO:<c@d>\r\n"),
            txn_out(&[&EHLO.join("\r\n"), "503 5.5.1 Error: need MAIL command"]),
            &txn_ev(&["EHLO c.test"]),
        ),
        case(
            "rset with argument",
            b"RSET x\r\n",
            vec!["501 5.5.4 Syntax: RSET"],
            &[],
        ),
        case("noop with argument", b"NOOP x y\r\n", vec![ok], &[]),
        case(
            "vrfy",
            b"VRFY root\r\nVRFY\r\n",
            vec![
                "252 2.5.0 Cannot VRFY user, but will accept message and attempt delivery",
                "501 5.5.4 Syntax: VRFY address",
            ],
            &[],
        ),
        case(
            "expn",
            b"EXPN staff\r\n",
            vec!["502 5.5.1 EXPN not supported"],
            &[],
        ),
        case(
            "help",
            b"HELP\r\nhelp mail\r\n",
            vec![
                "214 2.0.0 Commands: HELO EHLO MAIL RCPT DATA BDAT RSET NOOP QUIT VRFY HELP",
                "214 2.0.0 Commands: HELO EHLO MAIL RCPT DATA BDAT RSET NOOP QUIT VRFY HELP",
            ],
            &[],
        ),
        case(
            "unknown and empty",
            b"FOO\r\n\r\nMAILFROM:<a@b>\r\nSTARTTLS\r\n",
            vec!["500 5.5.2 Error: command not recognized"; 4],
            &[],
        ),
        case(
            "bare LF and CR in commands",
            b"NOOP\nNOOP\r\nNO\rOP\r\nNOOP\r\r\n",
            vec!["500 5.5.2 Error: bare <CR> or <LF> in command"; 3],
            &[],
        ),
        case(
            "invalid utf-8",
            b"NOOP \xff\xfe\r\n",
            vec!["500 5.5.2 Error: invalid UTF-8 in command"],
            &[],
        ),
        case(
            "quit ends the session; pipelined rest ignored",
            b"QUIT\r\nNOOP\r\n",
            vec!["221 2.0.0 Bye"],
            &["QUIT"],
        ),
        case(
            "quit with argument",
            b"QUIT now\r\n",
            vec!["501 5.5.4 Syntax: QUIT"],
            &[],
        ),
        case(
            "data with argument",
            &txn(b"DATA x\r\n"),
            txn_out(&["501 5.5.4 Syntax: DATA"]),
            &TXN_EV,
        ),
    ];
    let n = cases.len();
    cases[n - 3].closed = true;
    check(cases);
}

#[test]
fn mail_and_rcpt_arguments() {
    let cases = vec![
        case(
            "parameters after EHLO",
            b"EHLO c\r\nMAIL FROM:<a@b> SIZE=100 BODY=8BITMIME SMTPUTF8 AUTH=u+2Bv\r\n",
            with_ehlo(&["250 2.1.0 Sender <a@b> ok"]),
            &[
                "EHLO c",
                "MAIL a@b MailParams { size: Some(100), body: EightBitMime, smtputf8: true, auth: Some(\"u+v\") }",
            ],
        ),
        case(
            "null sender",
            b"EHLO c\r\nMAIL FROM:<>\r\n",
            with_ehlo(&["250 2.1.0 Sender <> ok"]),
            &["EHLO c", "MAIL "],
        ),
        case(
            "parameters after HELO",
            b"HELO c\r\nMAIL FROM:<a@b> SIZE=10\r\nMAIL FROM:<a@b> BODY=8BITMIME\r\n",
            vec![
                "250 mx.test",
                "555 5.5.4 Unsupported parameter: SIZE",
                "555 5.5.4 Unsupported parameter: BODY",
            ],
            &["HELO c"],
        ),
        case(
            "declared size too large",
            b"EHLO c\r\nMAIL FROM:<a@b> SIZE=1001\r\n",
            with_ehlo(&["552 5.3.4 Message size exceeds fixed maximum message size"]),
            &["EHLO c"],
        ),
        case(
            "binarymime not offered",
            b"EHLO c\r\nMAIL FROM:<a@b> BODY=BINARYMIME\r\n",
            with_ehlo(&["555 5.5.4 Unsupported parameter: BODY=BINARYMIME"]),
            &["EHLO c"],
        ),
        case(
            "unknown parameters",
            b"EHLO c\r\nMAIL FROM:<a@b> RET=FULL\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d> NOTIFY=NEVER\r\n",
            with_ehlo(&[
                "555 5.5.4 Unsupported parameter: RET",
                "250 2.1.0 Sender <a@b> ok",
                "555 5.5.4 Unsupported parameter: NOTIFY",
            ]),
            &["EHLO c", "MAIL a@b"],
        ),
        case(
            "bad paths",
            b"EHLO c\r\nMAIL FROM:a@b\r\nMAIL FROM:<a@b>\r\nRCPT TO:<>\r\nRCPT TO:<a@b\r\nRCPT TO:<Postmaster>\r\n",
            with_ehlo(&[
                "501 5.1.7 Bad sender address syntax",
                "250 2.1.0 Sender <a@b> ok",
                "501 5.1.3 Bad recipient address syntax",
                "501 5.1.3 Bad recipient address syntax",
                "250 2.1.5 Recipient <Postmaster> ok",
            ]),
            &["EHLO c", "MAIL a@b", "RCPT Postmaster"],
        ),
        case(
            "bad verbs arguments",
            b"EHLO c\r\nMAIL TO:<a@b>\r\nMAIL\r\nMAIL FROM:<a@b>\r\nRCPT FROM:<c@d>\r\n",
            with_ehlo(&[
                "501 5.5.4 Syntax: MAIL FROM:<address>",
                "501 5.5.4 Syntax: MAIL FROM:<address>",
                "250 2.1.0 Sender <a@b> ok",
                "501 5.5.4 Syntax: RCPT TO:<address>",
            ]),
            &["EHLO c", "MAIL a@b"],
        ),
        case(
            "unicode needs SMTPUTF8",
            "EHLO c\r\nMAIL FROM:<ü@b>\r\nMAIL FROM:<a@b>\r\nRCPT TO:<ü@d>\r\nRSET\r\n\
             MAIL FROM:<a@b> SMTPUTF8\r\nRCPT TO:<ü@d>\r\n"
                .as_bytes(),
            with_ehlo(&[
                "553 5.6.7 Must declare SMTPUTF8 to send unicode address",
                "250 2.1.0 Sender <a@b> ok",
                "553 5.6.7 Must declare SMTPUTF8 to send unicode address",
                "250 2.0.0 Ok",
                "250 2.1.0 Sender <a@b> ok",
                "250 2.1.5 Recipient <ü@d> ok",
            ]),
            &[
                "EHLO c",
                "MAIL a@b",
                "MAIL a@b MailParams { size: None, body: SevenBit, smtputf8: true, auth: None }",
                "RCPT ü@d",
            ],
        ),
        case(
            "source route dropped",
            b"EHLO c\r\nMAIL FROM:<@x,@y:a@b>\r\n",
            with_ehlo(&["250 2.1.0 Sender <a@b> ok"]),
            &["EHLO c", "MAIL a@b"],
        ),
    ];
    check(cases);
}

#[test]
fn extensions_follow_the_config() {
    let c = ServerConfig {
        pipelining: false,
        eightbitmime: false,
        smtputf8: false,
        chunking: false,
        ..config()
    };
    let got = run_all_splits(
        &c,
        b"EHLO c\r\nHELP\r\nMAIL FROM:<a@b> SMTPUTF8\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nBDAT 6 LAST\r\nQUIT\r\nNOOP\r\n",
    );
    assert_eq!(
        got.output,
        wire(&[
            "250-mx.test",
            "250-SIZE 1000",
            "250 ENHANCEDSTATUSCODES",
            "214 2.0.0 Commands: HELO EHLO MAIL RCPT DATA RSET NOOP QUIT VRFY HELP",
            "555 5.5.4 Unsupported parameter: SMTPUTF8",
            "250 2.1.0 Sender <a@b> ok",
            "250 2.1.5 Recipient <c@d> ok",
            "503 5.5.1 Error: CHUNKING not offered",
            "250 2.0.0 Ok",
        ])
    );
    assert!(!got.closed);
}

#[test]
fn data_outcomes() {
    let mut long = txn(b"DATA\r\n");
    long.extend_from_slice(&[b'x'; 99]);
    long.extend_from_slice(b"\r\n.\r\nMAIL FROM:<a@b>\r\n");
    let mut big = txn(b"DATA\r\n");
    big.extend_from_slice(&b"0123456789abcdefghijklmnopqrstuvwxyz\r\n".repeat(30));
    big.extend_from_slice(b".\r\nMAIL FROM:<a@b>\r\n");
    let mut fits = txn(b"DATA\r\n");
    fits.extend_from_slice(&[b'y'; 998]);
    fits.extend_from_slice(b"\r\n.\r\n");
    let fits_msg: &'static str = Box::leak(
        format!("MSG a@b [\"c@d\"] {:?}", format!("{}\r\n", "y".repeat(998))).into_boxed_str(),
    );
    let cases = vec![
        case(
            "empty message",
            &txn(b"DATA\r\n.\r\n"),
            txn_out(&[
                "354 End data with <CR><LF>.<CR><LF>",
                "250 2.6.0 Message accepted",
            ]),
            &txn_ev(&["DATA", r#"MSG a@b ["c@d"] """#]),
        ),
        case(
            "two messages in one session",
            &txn(b"DATA\r\n1\r\n.\r\nMAIL FROM:<e@f>\r\nRCPT TO:<g@h>\r\nDATA\r\n2\r\n.\r\n"),
            txn_out(&[
                "354 End data with <CR><LF>.<CR><LF>",
                "250 2.6.0 Message accepted",
                "250 2.1.0 Sender <e@f> ok",
                "250 2.1.5 Recipient <g@h> ok",
                "354 End data with <CR><LF>.<CR><LF>",
                "250 2.6.0 Message accepted",
            ]),
            &txn_ev(&[
                "DATA",
                r#"MSG a@b ["c@d"] "1\r\n""#,
                "MAIL e@f",
                "RCPT g@h",
                "DATA",
                r#"MSG e@f ["g@h"] "2\r\n""#,
            ]),
        ),
        Case {
            config: ServerConfig {
                max_text_line: 100,
                ..config()
            },
            ..case(
                "line over max_text_line",
                &long,
                txn_out(&[
                    "354 End data with <CR><LF>.<CR><LF>",
                    "554 5.6.0 Message contains a line longer than 100 octets",
                    "250 2.1.0 Sender <a@b> ok",
                ]),
                &txn_ev(&["DATA", "MAIL a@b"]),
            )
        },
        case(
            "line of exactly 1000 octets",
            &fits,
            txn_out(&[
                "354 End data with <CR><LF>.<CR><LF>",
                "250 2.6.0 Message accepted",
            ]),
            &txn_ev(&["DATA", fits_msg]),
        ),
        case(
            "message over max_size",
            &big,
            txn_out(&[
                "354 End data with <CR><LF>.<CR><LF>",
                "552 5.3.4 Message size exceeds fixed maximum message size",
                "250 2.1.0 Sender <a@b> ok",
            ]),
            &txn_ev(&["DATA", "MAIL a@b"]),
        ),
    ];
    check(cases);
}

#[test]
fn default_text_line_limit_is_1000() {
    let mut input = b"EHLO c\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\n".to_vec();
    input.extend_from_slice(&[b'x'; 999]);
    input.extend_from_slice(b"\r\n.\r\n");
    let got = run_all_splits(&ServerConfig::new("mx.test"), &input);
    assert!(
        got.output
            .ends_with("\r\n554 5.6.0 Message contains a line longer than 1000 octets\r\n")
    );
    assert_eq!(got.events.len(), 4, "no Message event");
}

#[test]
fn message_over_max_size_without_size_parameter_for_helo_clients() {
    let mut input = b"HELO c\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\n".to_vec();
    input.extend_from_slice(&b"z".repeat(1001));
    input.extend_from_slice(b"\r\n.\r\n");
    let got = run_all_splits(&config(), &input);
    assert!(
        got.output
            .ends_with("552 5.3.4 Message size exceeds fixed maximum message size\r\n")
    );
    assert_eq!(got.events, ["HELO c", "MAIL a@b", "RCPT c@d", "DATA"]);
}

#[test]
fn smuggling_sequences_yield_one_message() {
    let sequences: &[(&[u8], &[u8])] = &[
        // (S, what S becomes in the data)
        (b"\n.\n", b"\n.\n"),
        (b"\n.\r", b"\n.\r"),
        (b"\r.\n", b"\r.\n"),
        (b"\r.\r", b"\r.\r"),
        (b"\n.\r\n", b"\n.\r\n"),
        (b"\r.\r\n", b"\r.\r\n"),
        (b"\r\n.\n", b"\r\n\n"),
        (b"\r\n.\r", b"\r\n\r"),
        (b"\r\n\0.\r\n", b"\r\n\0.\r\n"),
        (b"\r\n.\0\r\n", b"\r\n\0\r\n"),
    ];
    for &(s, kept) in sequences {
        let content = [b"x", s, SMUGGLE].concat();
        let input = txn(&[b"DATA\r\n", &content[..], b"QUIT\r\n"].concat());
        let got = run_all_splits(&config(), &input);
        let data = [b"x", kept, &SMUGGLE[..SMUGGLE.len() - 3]].concat();
        let msg = format!("MSG a@b [\"c@d\"] {:?}", String::from_utf8_lossy(&data));
        assert_eq!(got.events, txn_ev(&["DATA", &msg, "QUIT"]), "{s:?}");
        assert_eq!(
            got.output,
            wire(&txn_out(&[
                "354 End data with <CR><LF>.<CR><LF>",
                "250 2.6.0 Message accepted",
                "221 2.0.0 Bye"
            ])),
            "{s:?}"
        );
        assert!(
            !got.events.iter().any(|e| e.starts_with("MAIL evil")),
            "{s:?}"
        );
    }
}

#[test]
fn bdat() {
    let ack = |n: u32| -> &'static str {
        Box::leak(format!("250 2.0.0 {n} octets received").into_boxed_str())
    };
    let mut over = txn(b"BDAT 1001 LAST\r\n");
    over.extend_from_slice(&[b'\n'; 1001]);
    over.extend_from_slice(b"RCPT TO:<c@d>\r\n");
    let mut over2 = txn(b"BDAT 600\r\n");
    over2.extend_from_slice(&[b'a'; 600]);
    over2.extend_from_slice(b"BDAT 401 LAST\r\n");
    over2.extend_from_slice(&[b'b'; 401]);
    over2.extend_from_slice(b"NOOP\r\n");
    let mut cases = vec![
        case(
            "two chunks",
            &txn(b"BDAT 5\r\nhelloBDAT 3 LAST\r\nabcNOOP\r\n"),
            txn_out(&[ack(5), "250 2.6.0 Message accepted", "250 2.0.0 Ok"]),
            &txn_ev(&["DATA", r#"MSG a@b ["c@d"] "helloabc""#]),
        ),
        case(
            "empty last chunk first",
            &txn(b"bdat 0 last\r\n"),
            txn_out(&["250 2.6.0 Message accepted"]),
            &txn_ev(&["DATA", r#"MSG a@b ["c@d"] """#]),
        ),
        case(
            "chunk content is verbatim",
            &txn(&[
                &b"BDAT 40 LAST\r\n"[..],
                b"\r\n.\r\nMAIL FROM:<evil@attacker.test>\r\n..\r",
            ]
            .concat()),
            txn_out(&["250 2.6.0 Message accepted"]),
            &txn_ev(&[
                "DATA",
                r#"MSG a@b ["c@d"] "\r\n.\r\nMAIL FROM:<evil@attacker.test>\r\n..\r""#,
            ]),
        ),
        case(
            "out of sequence chunk is consumed",
            b"EHLO c\r\nBDAT 6\r\nQUIT\r\nNOOP\r\n",
            with_ehlo(&["503 5.5.1 Error: need MAIL command", "250 2.0.0 Ok"]),
            &["EHLO c"],
        ),
        case(
            "chunk without rcpt",
            b"EHLO c\r\nMAIL FROM:<a@b>\r\nBDAT 6 LAST\r\nQUIT\r\nNOOP\r\n",
            with_ehlo(&[
                "250 2.1.0 Sender <a@b> ok",
                "503 5.5.1 Error: need RCPT command",
                "250 2.0.0 Ok",
            ]),
            &["EHLO c", "MAIL a@b"],
        ),
        case(
            "chunk after HELO",
            b"HELO c\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nBDAT 6 LAST\r\nQUIT\r\nNOOP\r\n",
            vec![
                "250 mx.test",
                "250 2.1.0 Sender <a@b> ok",
                "250 2.1.5 Recipient <c@d> ok",
                "503 5.5.1 Error: CHUNKING not offered",
                "250 2.0.0 Ok",
            ],
            &["HELO c", "MAIL a@b", "RCPT c@d"],
        ),
        case(
            "chunk before helo",
            b"BDAT 6\r\nQUIT\r\nNOOP\r\n",
            vec!["503 5.5.1 Error: send HELO/EHLO first", "250 2.0.0 Ok"],
            &[],
        ),
        case(
            "data during bdat",
            &txn(b"BDAT 1\r\nxDATA\r\nBDAT 1 LAST\r\ny"),
            txn_out(&[
                ack(1),
                "503 5.5.1 Error: DATA not allowed during BDAT transaction",
                "250 2.6.0 Message accepted",
            ]),
            &txn_ev(&["DATA", r#"MSG a@b ["c@d"] "xy""#]),
        ),
        case(
            "chunk over max_size",
            &over,
            txn_out(&[
                "552 5.3.4 Message size exceeds fixed maximum message size",
                "503 5.5.1 Error: need MAIL command",
            ]),
            &TXN_EV,
        ),
        case(
            "chunks over max_size together",
            &over2,
            txn_out(&[
                ack(600),
                "552 5.3.4 Message size exceeds fixed maximum message size",
                "250 2.0.0 Ok",
            ]),
            &txn_ev(&["DATA"]),
        ),
        case(
            "bad size closes",
            &txn(b"BDAT x\r\nMAIL FROM:<evil@attacker.test>\r\n"),
            txn_out(&["421 4.5.4 mx.test Error: bad BDAT syntax, closing connection"]),
            &TXN_EV,
        ),
        case(
            "missing size closes",
            b"BDAT\r\nNOOP\r\n",
            vec!["421 4.5.4 mx.test Error: bad BDAT syntax, closing connection"],
            &[],
        ),
        case(
            "bare LF in BDAT line closes",
            b"BDAT 5\nLAST\r\nNOOP\r\n",
            vec!["421 4.5.4 mx.test Error: bad BDAT syntax, closing connection"],
            &[],
        ),
    ];
    let n = cases.len();
    for c in &mut cases[n - 3..] {
        c.closed = true;
    }
    check(cases);
}

#[test]
fn line_limits() {
    let line = |len: usize| {
        let mut l = b"NOOP ".to_vec();
        l.resize(len - 2, b'a');
        l.extend_from_slice(b"\r\n");
        l
    };
    let mut input = line(512);
    input.extend_from_slice(&line(513));
    input.extend_from_slice(&line(514));
    input.extend_from_slice(&line(5000));
    input.extend_from_slice(b"NOOP\r\n");
    let got = run_all_splits(&config(), &input);
    assert_eq!(
        got.output,
        wire(&[
            "250 2.0.0 Ok",
            "500 5.5.2 Error: line too long",
            "500 5.5.2 Error: line too long",
            "500 5.5.2 Error: line too long",
            "250 2.0.0 Ok",
        ])
    );
    let mut bdat = b"BDAT 1 LAST ".to_vec();
    bdat.resize(600, b' ');
    bdat.extend_from_slice(b"\r\nNOOP\r\n");
    let got = run_all_splits(&config(), &bdat);
    assert_eq!(
        got.output,
        wire(&["421 4.5.4 mx.test Error: bad BDAT syntax, closing connection"])
    );
    assert!(got.closed);
}

#[test]
fn limits() {
    let c = ServerConfig {
        max_recipients: 2,
        ..config()
    };
    let got = run_all_splits(
        &c,
        b"EHLO c\r\nMAIL FROM:<a@b>\r\nRCPT TO:<1@d>\r\nRCPT TO:<2@d>\r\nRCPT TO:<3@d>\r\nDATA\r\n.\r\n",
    );
    assert_eq!(
        got.output,
        wire(&with_ehlo(&[
            "250 2.1.0 Sender <a@b> ok",
            "250 2.1.5 Recipient <1@d> ok",
            "250 2.1.5 Recipient <2@d> ok",
            "452 4.5.3 Error: too many recipients",
            "354 End data with <CR><LF>.<CR><LF>",
            "250 2.6.0 Message accepted",
        ]))
    );
    assert_eq!(got.events.last().unwrap(), r#"MSG a@b ["1@d", "2@d"] """#);

    let c = ServerConfig {
        max_bad_commands: 3,
        ..config()
    };
    // 552/553/452 do not count; 500, 501, 503, 555 do.
    let got = run_all_splits(
        &c,
        b"EHLO c\r\nMAIL FROM:<a@b> SIZE=5000\r\nFOO\r\nMAIL FROM:<a@b> X=1\r\nRCPT TO:<a@b>\r\nNOOP\r\n",
    );
    assert_eq!(
        got.output,
        wire(&with_ehlo(&[
            "552 5.3.4 Message size exceeds fixed maximum message size",
            "500 5.5.2 Error: command not recognized",
            "555 5.5.4 Unsupported parameter: X",
            "503 5.5.1 Error: need MAIL command",
            "421 4.7.0 mx.test Error: too many errors",
        ]))
    );
    assert!(got.closed);
}

#[test]
fn banners() {
    let out = drive(
        config(),
        Some(Reply::new(554, "5.7.1", "go away")),
        &[b"EHLO c\r\nMAIL FROM:<a@b>\r\nBDAT 4\r\nQUITQUIT\r\n"],
        &mut accept,
    );
    assert_eq!(
        out.output,
        "554 5.7.1 go away\r\n\
         503 5.5.1 Error: no SMTP service here, only QUIT\r\n\
         503 5.5.1 Error: no SMTP service here, only QUIT\r\n\
         503 5.5.1 Error: no SMTP service here, only QUIT\r\n\
         221 2.0.0 Bye\r\n"
    );
    assert_eq!(out.events, ["QUIT"]);
    assert!(out.closed);
    let out = drive(
        config(),
        Some(Reply::new(421, "4.3.2", "busy")),
        &[b"EHLO c\r\n"],
        &mut accept,
    );
    assert_eq!(out.output, "421 4.3.2 busy\r\n");
    assert!(out.closed && out.events.is_empty());
}

#[test]
fn driver_decisions_apply() {
    // Refuse one recipient, refuse DATA once, fail the message.
    let mut data_refused = false;
    let mut decide = |kind: &EventKind, reply: Reply| match kind {
        EventKind::Rcpt { recipient, .. } if recipient == "no@d" => {
            Reply::new(550, "5.1.1", "No such user")
        }
        EventKind::Data if !data_refused => {
            data_refused = true;
            Reply::new(451, "4.3.0", "Try later")
        }
        EventKind::Message(_) => Reply::new(451, "4.3.0", "Queue full"),
        _ => reply,
    };
    let out = drive(
        config(),
        None,
        &[b"EHLO c\r\nMAIL FROM:<a@b>\r\nRCPT TO:<no@d>\r\nDATA\r\nRCPT TO:<c@d>\r\nDATA\r\nhello\r\nDATA\r\nx\r\n.\r\nRCPT TO:<c@d>\r\n"],
        &mut decide,
    );
    assert_eq!(
        out.output,
        wire(&with_ehlo(&[
            "250 2.1.0 Sender <a@b> ok",
            "550 5.1.1 No such user",
            "503 5.5.1 Error: need RCPT command",
            "250 2.1.5 Recipient <c@d> ok",
            "451 4.3.0 Try later",
            "500 5.5.2 Error: command not recognized",
            "354 End data with <CR><LF>.<CR><LF>",
            "451 4.3.0 Queue full",
            "503 5.5.1 Error: need MAIL command",
        ]))
    );
    // EHLO refused: still no HELO; 421 to MAIL closes.
    let mut decide = |kind: &EventKind, reply: Reply| match kind {
        EventKind::Helo { domain, .. } if domain == "bad" => Reply::new(550, "5.7.1", "No"),
        EventKind::Mail { .. } => Reply::new(421, "4.7.0", "bye"),
        _ => reply,
    };
    let out = drive(
        config(),
        None,
        &[b"EHLO bad\r\nMAIL FROM:<a@b>\r\nHELO good\r\nMAIL FROM:<a@b>\r\nNOOP\r\n"],
        &mut decide,
    );
    assert_eq!(
        out.output,
        wire(&[
            "550 5.7.1 No",
            "503 5.5.1 Error: send HELO/EHLO first",
            "250 mx.test",
            "421 4.7.0 bye"
        ])
    );
    assert!(out.closed);
    // The first BDAT refused: the chunk is consumed, the transaction fails.
    let mut decide = |kind: &EventKind, reply: Reply| match kind {
        EventKind::Data => Reply::new(554, "5.7.1", "No chunks for you"),
        _ => reply,
    };
    let out = drive(
        config(),
        None,
        &[&txn(b"BDAT 4\r\nNOOPBDAT 1 LAST\r\nxNOOP\r\n")],
        &mut decide,
    );
    assert_eq!(
        out.output,
        wire(&txn_out(&[
            "554 5.7.1 No chunks for you",
            "503 5.5.1 Error: need MAIL command",
            "250 2.0.0 Ok"
        ]))
    );
    assert_eq!(out.events, txn_ev(&["DATA"]));
    // The first BDAT accepted with the driver's own text: sent after the chunk.
    let mut decide = |kind: &EventKind, reply: Reply| match kind {
        EventKind::Data => Reply::new(250, "2.0.0", "chunk ok"),
        _ => reply,
    };
    let out = drive(
        config(),
        None,
        &[&txn(b"BDAT 4\r\nNOOPBDAT 1 LAST\r\nx")],
        &mut decide,
    );
    assert_eq!(
        out.output,
        wire(&txn_out(&[
            "250 2.0.0 chunk ok",
            "250 2.6.0 Message accepted"
        ]))
    );
    assert_eq!(out.events, txn_ev(&["DATA", r#"MSG a@b ["c@d"] "NOOPx""#]));
}

#[test]
fn timeouts_shutdown_and_data_mode() {
    let mut s = Server::new(Arc::new(config()));
    s.greet(s.default_banner());
    assert!(matches!(s.step(), Step::NeedInput));
    assert!(!s.reading_data());
    s.receive(&txn(b"DATA\r\n"));
    let mut events = 0;
    loop {
        match s.step() {
            Step::Event(ev) => {
                events += 1;
                s.respond(ev.reply);
            }
            Step::NeedInput => break,
            Step::Close | Step::StartTls => unreachable!(),
        }
    }
    assert_eq!(events, 4);
    assert!(s.reading_data() && s.in_transaction());
    s.clear_output();
    s.timed_out();
    assert_eq!(s.output(), b"421 4.4.2 mx.test Error: timeout exceeded\r\n");
    assert!(matches!(s.step(), Step::Close));
    assert!(s.is_closed());

    let mut s = Server::new(Arc::new(config()));
    s.greet(s.default_banner());
    s.receive(b"BDAT 10");
    assert!(matches!(s.step(), Step::NeedInput));
    assert!(!s.reading_data());
    s.receive(b"\r\n");
    assert!(matches!(s.step(), Step::NeedInput));
    assert!(
        s.reading_data(),
        "an out-of-sequence chunk is read as data too"
    );
    s.clear_output();
    s.shutting_down();
    assert_eq!(s.output(), b"421 4.3.2 mx.test Service shutting down\r\n");
    assert!(matches!(s.step(), Step::Close));
}

mod auth;
mod lmtp;
mod starttls;

#[test]
#[should_panic(expected = "respond")]
fn step_before_respond_panics() {
    let mut s = Server::new(Arc::new(config()));
    s.receive(b"QUIT\r\n");
    let _ = s.step();
    let _ = s.step();
}

/// Feeds `total` bytes of `pattern` in 64 KiB reads and checks that no
/// buffer grows past what one read plus the limits explain.
fn feed_endless(server: &mut Server, prefix: &[u8], pattern: &[u8], total: usize) -> usize {
    let chunk: Vec<u8> = pattern.iter().copied().cycle().take(64 * 1024).collect();
    server.receive(prefix);
    let mut fed = 0;
    let mut max_out = 0;
    while fed < total {
        match server.step() {
            Step::Event(ev) => server.respond(ev.reply),
            Step::NeedInput => {
                max_out = max_out.max(server.output.len());
                server.clear_output();
                server.receive(&chunk);
                fed += chunk.len();
                let line_limit = if server.config.auth_mechanisms.is_empty() {
                    server.config.max_command_line
                } else {
                    server.config.max_command_line.max(AUTH_LINE_MAX)
                };
                assert!(server.input.len() <= chunk.len() + line_limit);
                let kept = server.txn.as_ref().map_or(0, |t| t.body.data().len());
                assert!(kept <= server.config.max_size, "kept {kept}");
            }
            Step::StartTls => server.tls_established(),
            Step::Close => break,
        }
    }
    max_out
}

#[test]
fn memory_stays_bounded() {
    let c = Arc::new(ServerConfig {
        max_bad_commands: 0,
        ..config()
    });
    // A 4 MiB line without CRLF.
    let mut s = Server::new(c.clone());
    feed_endless(&mut s, b"", b"a", 4 << 20);
    assert!(matches!(s.mode, Mode::DiscardLine { .. }));
    // Endless DATA (with and without line ends).
    for pattern in [&b"0123456789\r\n"[..], b"x", b"\r\n..\r\n\r"] {
        let mut s = Server::new(c.clone());
        feed_endless(&mut s, &txn(b"DATA\r\n"), pattern, 4 << 20);
        assert!(s.reading_data());
        assert!(s.txn.as_ref().unwrap().body.exceeded());
    }
    // Endless pipelined junk: output per read stays proportional to it.
    let mut s = Server::new(c.clone());
    let out = feed_endless(&mut s, b"", b"JUNK\r\n", 4 << 20);
    assert!(out <= (64 * 1024 / 6 + 1) * 41, "output {out}");
    assert!(s.error_count() > 100_000);
    // An endless BDAT chunk.
    let mut s = Server::new(c);
    feed_endless(
        &mut s,
        &txn(b"BDAT 18446744073709551615\r\n"),
        b"z",
        4 << 20,
    );
    assert!(s.reading_data());
}

/// The EHLO reply of [`config`] with `extra` capability lines (`250-X`)
/// before ENHANCEDSTATUSCODES.
fn ehlo_ext(extra: &[&'static str]) -> Vec<&'static str> {
    let mut v = EHLO[..EHLO.len() - 1].to_vec();
    v.extend_from_slice(extra);
    v.push(EHLO[EHLO.len() - 1]);
    v
}

/// Concatenates groups of expected lines.
fn lines(groups: &[&[&'static str]]) -> Vec<&'static str> {
    groups.concat()
}
