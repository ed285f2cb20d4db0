//! AUTH (RFC 4954) in the session: every mechanism's success and failure
//! paths, the exchange's errors, sequence, plaintext policy, long lines,
//! error counting and `auth_required`.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;

use super::*;

fn auth_config() -> ServerConfig {
    ServerConfig {
        auth_mechanisms: Mechanism::ALL.to_vec(),
        auth_plaintext: true,
        ..config()
    }
}

const AUTH_ALL: &str = "250-AUTH PLAIN LOGIN CRAM-MD5";
const OK: &str = "235 2.7.0 Authentication successful";
const INVALID: &str = "535 5.7.8 Authentication credentials invalid";
const GOOD_DIGEST: &str = "0123456789abcdef0123456789abcdef";

/// alice/wonderland, or any CRAM-MD5 response with [`GOOD_DIGEST`] (the
/// digest itself is checked by the edge's credentials, not here).
fn verify(kind: &EventKind, reply: Reply) -> Reply {
    let good = match kind {
        EventKind::Auth(a) => match &a.secret {
            AuthSecret::Password(p) => a.authcid == "alice" && p == "wonderland",
            AuthSecret::CramMd5 { digest_hex, .. } => digest_hex == GOOD_DIGEST,
        },
        _ => return reply,
    };
    if good {
        Reply::new(235, "2.7.0", "Authentication successful")
    } else {
        reply
    }
}

fn b64(s: &str) -> String {
    B64.encode(s)
}

struct AuthCase {
    name: &'static str,
    input: String,
    output: Vec<&'static str>,
    events: Vec<String>,
}

fn ac(name: &'static str, input: &str, output: &[&[&'static str]], events: &[&str]) -> AuthCase {
    AuthCase {
        name,
        input: input.to_owned(),
        output: lines(output),
        events: events.iter().map(|e| (*e).to_owned()).collect(),
    }
}

fn check_auth(config: &ServerConfig, cases: Vec<AuthCase>) {
    for c in cases {
        let got = run_phases(config, &[c.input.as_bytes()], verify, OPTS);
        assert_eq!(got.output, wire(&c.output), "{}", c.name);
        assert_eq!(got.events, c.events, "{}", c.name);
    }
}

#[test]
fn mechanisms_succeed_and_fail() {
    let ehlo = ehlo_ext(&[AUTH_ALL]);
    let plain = b64("\0alice\0wonderland");
    let plain_as = b64("admin\0alice\0wonderland");
    let wrong = b64("\0alice\0rabbit");
    let (alice, pass, bad_pass) = (b64("alice"), b64("wonderland"), b64("rabbit"));
    let cram_ok = b64(&format!("alice {GOOD_DIGEST}"));
    let cram_bad = b64("alice ffffffffffffffffffffffffffffffff");
    let ev_plain = r#"AUTH PLAIN alice password "wonderland""#;
    let ev_login = r#"AUTH LOGIN alice password "wonderland""#;
    let cases = vec![
        ac(
            "PLAIN with initial response, then a transaction",
            &format!("EHLO c\r\nAUTH PLAIN {plain}\r\nMAIL FROM:<a@b>\r\n"),
            &[&ehlo, &[OK, "250 2.1.0 Sender <a@b> ok"]],
            &["EHLO c", ev_plain, "MAIL a@b"],
        ),
        ac(
            "PLAIN with authzid, lower case",
            &format!("EHLO c\r\nauth plain {plain_as}\r\n"),
            &[&ehlo, &[OK]],
            &[
                "EHLO c",
                r#"AUTH PLAIN alice as admin password "wonderland""#,
            ],
        ),
        ac(
            "PLAIN wrong password, then right",
            &format!("EHLO c\r\nAUTH PLAIN {wrong}\r\nAUTH PLAIN {plain}\r\n"),
            &[&ehlo, &[INVALID, OK]],
            &["EHLO c", r#"AUTH PLAIN alice password "rabbit""#, ev_plain],
        ),
        ac(
            "PLAIN by continuation",
            &format!("EHLO c\r\nAUTH PLAIN\r\n{plain}\r\n"),
            &[&ehlo, &["334 ", OK]],
            &["EHLO c", ev_plain],
        ),
        ac(
            "PLAIN empty initial response",
            "EHLO c\r\nAUTH PLAIN =\r\nAUTH PLAIN\r\n\r\n",
            &[
                &ehlo,
                &[
                    "501 5.5.4 Malformed authentication response",
                    "334 ",
                    "501 5.5.4 Malformed authentication response",
                ],
            ],
            &["EHLO c"],
        ),
        ac(
            "LOGIN",
            &format!("EHLO c\r\nAUTH LOGIN\r\n{alice}\r\n{pass}\r\n"),
            &[&ehlo, &["334 VXNlcm5hbWU6", "334 UGFzc3dvcmQ6", OK]],
            &["EHLO c", ev_login],
        ),
        ac(
            "LOGIN with initial response",
            &format!("EHLO c\r\nAUTH LOGIN {alice}\r\n{pass}\r\n"),
            &[&ehlo, &["334 UGFzc3dvcmQ6", OK]],
            &["EHLO c", ev_login],
        ),
        ac(
            "LOGIN wrong password",
            &format!("EHLO c\r\nAUTH LOGIN\r\n{alice}\r\n{bad_pass}\r\n"),
            &[&ehlo, &["334 VXNlcm5hbWU6", "334 UGFzc3dvcmQ6", INVALID]],
            &["EHLO c", r#"AUTH LOGIN alice password "rabbit""#],
        ),
        ac(
            "CRAM-MD5",
            &format!("EHLO c\r\nAUTH CRAM-MD5\r\n{cram_ok}\r\n"),
            &[&ehlo, &["334 <challenge>", OK]],
            &[
                "EHLO c",
                &format!("AUTH CRAM-MD5 alice digest {GOOD_DIGEST}"),
            ],
        ),
        ac(
            "CRAM-MD5 wrong digest",
            &format!("EHLO c\r\nAUTH CRAM-MD5\r\n{cram_bad}\r\n"),
            &[&ehlo, &["334 <challenge>", INVALID]],
            &[
                "EHLO c",
                "AUTH CRAM-MD5 alice digest ffffffffffffffffffffffffffffffff",
            ],
        ),
        ac(
            "CRAM-MD5 malformed response and initial response",
            &format!("EHLO c\r\nAUTH CRAM-MD5\r\n{alice}\r\nAUTH CRAM-MD5 {cram_ok}\r\n"),
            &[
                &ehlo,
                &[
                    "334 <challenge>",
                    "501 5.5.4 Malformed authentication response",
                    "501 5.5.4 CRAM-MD5 does not take an initial response",
                ],
            ],
            &["EHLO c"],
        ),
    ];
    check_auth(&auth_config(), cases);
}

#[test]
fn exchange_errors_and_sequence() {
    let ehlo = ehlo_ext(&[AUTH_ALL]);
    let plain = b64("\0alice\0wonderland");
    let alice = b64("alice");
    let cases = vec![
        ac(
            "cancel at each step",
            &format!(
                "EHLO c\r\nAUTH PLAIN\r\n*\r\nAUTH LOGIN\r\n*\r\nAUTH LOGIN\r\n{alice}\r\n*\r\nAUTH CRAM-MD5\r\n*\r\nNOOP\r\n"
            ),
            &[
                &ehlo,
                &[
                    "334 ",
                    "501 5.7.0 Authentication cancelled",
                    "334 VXNlcm5hbWU6",
                    "501 5.7.0 Authentication cancelled",
                    "334 VXNlcm5hbWU6",
                    "334 UGFzc3dvcmQ6",
                    "501 5.7.0 Authentication cancelled",
                    "334 <challenge>",
                    "501 5.7.0 Authentication cancelled",
                    "250 2.0.0 Ok",
                ],
            ],
            &["EHLO c"],
        ),
        ac(
            "bad base64",
            "EHLO c\r\nAUTH PLAIN !!!!\r\nAUTH LOGIN\r\nYWxp Y2U=\r\nAUTH PLAIN\r\nNOOP\r\nAUTH PLAIN AGEAYg==x\r\n",
            &[
                &ehlo,
                &[
                    "501 5.5.2 Invalid base64 data",
                    "334 VXNlcm5hbWU6",
                    "501 5.5.2 Invalid base64 data",
                    "334 ",
                    // A pipelined command is read as the response.
                    "501 5.5.4 Malformed authentication response",
                    "501 5.5.2 Invalid base64 data",
                ],
            ],
            &["EHLO c"],
        ),
        ac(
            "bare LF in a response",
            "EHLO c\r\nAUTH PLAIN\r\nAGEAYg==\nx\r\n",
            &[&ehlo, &["334 ", "501 5.5.2 Invalid base64 data"]],
            &["EHLO c"],
        ),
        ac(
            "unknown mechanism and syntax",
            "EHLO c\r\nAUTH GSSAPI\r\nAUTH\r\nAUTH  PLAIN\r\n",
            &[
                &ehlo,
                &[
                    "504 5.5.4 Unrecognized authentication type",
                    "501 5.5.4 Syntax: AUTH mechanism [initial-response]",
                    "501 5.5.4 Syntax: AUTH mechanism [initial-response]",
                ],
            ],
            &["EHLO c"],
        ),
        ac(
            "twice",
            &format!(
                "EHLO c\r\nAUTH PLAIN {plain}\r\nAUTH PLAIN {plain}\r\nAUTH LOGIN\r\nEHLO c\r\nAUTH LOGIN\r\n"
            ),
            &[
                &ehlo,
                &[
                    OK,
                    "503 5.5.1 Already authenticated",
                    "503 5.5.1 Already authenticated",
                ],
                &ehlo,
                &["503 5.5.1 Already authenticated"],
            ],
            &[
                "EHLO c",
                r#"AUTH PLAIN alice password "wonderland""#,
                "EHLO c",
            ],
        ),
        ac(
            "inside a transaction",
            &format!(
                "EHLO c\r\nMAIL FROM:<a@b>\r\nAUTH PLAIN {plain}\r\nRSET\r\nAUTH PLAIN {plain}\r\n"
            ),
            &[
                &ehlo,
                &[
                    "250 2.1.0 Sender <a@b> ok",
                    "503 5.5.1 AUTH not permitted during a mail transaction",
                    "250 2.0.0 Ok",
                    OK,
                ],
            ],
            &[
                "EHLO c",
                "MAIL a@b",
                r#"AUTH PLAIN alice password "wonderland""#,
            ],
        ),
        ac(
            "before EHLO, after HELO",
            &format!("AUTH PLAIN {plain}\r\nHELO c\r\nAUTH PLAIN {plain}\r\nHELP\r\n"),
            &[&[
                "503 5.5.1 Error: send EHLO first",
                "250 mx.test",
                "503 5.5.1 Error: send EHLO first",
                "214 2.0.0 Commands: HELO EHLO AUTH MAIL RCPT DATA BDAT RSET NOOP QUIT VRFY HELP",
            ]],
            &["HELO c"],
        ),
    ];
    check_auth(&auth_config(), cases);

    // Not configured: unknown command, not offered, normal line limit.
    let got = run_all_splits(
        &config(),
        format!("EHLO c\r\nAUTH PLAIN {plain}\r\n").as_bytes(),
    );
    assert_eq!(
        got.output,
        wire(&with_ehlo(&["500 5.5.2 Error: command not recognized"]))
    );
    // Only the configured mechanisms.
    let only_cram = ServerConfig {
        auth_mechanisms: vec![Mechanism::CramMd5],
        ..auth_config()
    };
    check_auth(
        &only_cram,
        vec![ac(
            "PLAIN not configured",
            &format!("EHLO c\r\nAUTH PLAIN {plain}\r\n"),
            &[
                &ehlo_ext(&["250-AUTH CRAM-MD5"]),
                &["504 5.5.4 Unrecognized authentication type"],
            ],
            &["EHLO c"],
        )],
    );
}

#[test]
fn plaintext_policy() {
    let plain = b64("\0alice\0wonderland");
    let tls_only = ServerConfig {
        starttls: true,
        auth_plaintext: false,
        ..auth_config()
    };
    let refused = "538 5.7.11 Encryption required for requested authentication mechanism";
    let input = format!("EHLO c\r\nAUTH PLAIN {plain}\r\nAUTH LOGIN\r\nSTARTTLS\r\n");
    let after = format!("EHLO c\r\nAUTH PLAIN {plain}\r\nMAIL FROM:<a@b>\r\n");
    let got = run_phases(
        &tls_only,
        &[input.as_bytes(), after.as_bytes()],
        verify,
        OPTS,
    );
    assert_eq!(
        got.output,
        wire(&lines(&[
            &ehlo_ext(&["250-STARTTLS", "250-AUTH CRAM-MD5"]),
            &[refused, refused, "220 2.0.0 Ready to start TLS", TLS_MARK],
            &ehlo_ext(&[AUTH_ALL]),
            &[OK, "250 2.1.0 Sender <a@b> ok"],
        ]))
    );
    assert_eq!(
        got.events,
        [
            "EHLO c",
            "STARTTLS",
            "EHLO c",
            r#"AUTH PLAIN alice password "wonderland""#,
            "MAIL a@b"
        ]
    );
    // Only PLAIN configured, no TLS yet: no AUTH line at all.
    let plain_only = ServerConfig {
        auth_mechanisms: vec![Mechanism::Plain],
        ..tls_only
    };
    let got = run_all_splits(&plain_only, b"EHLO c\r\nAUTH PLAIN =\r\n");
    assert_eq!(
        got.output,
        wire(&lines(&[&ehlo_ext(&["250-STARTTLS"]), &[refused]]))
    );
}

#[test]
fn auth_required() {
    let c = ServerConfig {
        auth_required: true,
        ..auth_config()
    };
    let plain = b64("\0alice\0wonderland");
    check_auth(
        &c,
        vec![ac(
            "MAIL refused until AUTH",
            &format!("EHLO c\r\nMAIL FROM:<a@b>\r\nAUTH PLAIN {plain}\r\nMAIL FROM:<a@b>\r\n"),
            &[
                &ehlo_ext(&[AUTH_ALL]),
                &[
                    "530 5.7.0 Authentication required",
                    OK,
                    "250 2.1.0 Sender <a@b> ok",
                ],
            ],
            &[
                "EHLO c",
                r#"AUTH PLAIN alice password "wonderland""#,
                "MAIL a@b",
            ],
        )],
    );
}

#[test]
fn failures_count_as_bad_commands() {
    let c = ServerConfig {
        max_bad_commands: 4,
        ..auth_config()
    };
    let wrong = b64("\0alice\0rabbit");
    // 535 (driver), 501 (cancel), 504, 538-free config so 530 is the 4th.
    let c2 = ServerConfig {
        auth_required: true,
        ..c.clone()
    };
    let input = format!(
        "EHLO c\r\nAUTH PLAIN {wrong}\r\nAUTH LOGIN\r\n*\r\nAUTH X\r\nMAIL FROM:<a@b>\r\nNOOP\r\n"
    );
    let got = run_phases(&c2, &[input.as_bytes()], verify, OPTS);
    assert_eq!(
        got.output,
        wire(&lines(&[
            &ehlo_ext(&[AUTH_ALL]),
            &[
                INVALID,
                "334 VXNlcm5hbWU6",
                "501 5.7.0 Authentication cancelled",
                "504 5.5.4 Unrecognized authentication type",
                "530 5.7.0 Authentication required",
                "421 4.7.0 mx.test Error: too many errors",
            ]
        ]))
    );
    assert!(got.closed);
    // A success does not count.
    let plain = b64("\0alice\0wonderland");
    let mut s = Server::new(Arc::new(c));
    s.receive(format!("EHLO c\r\nAUTH PLAIN {plain}\r\n").as_bytes());
    while let Step::Event(ev) = s.step() {
        let reply = verify(&ev.kind, ev.reply);
        s.respond(reply);
    }
    assert_eq!((s.error_count(), s.authenticated()), (0, Some("alice")));
    assert_eq!(s.protocol(), Protocol::Esmtpa);
}

/// A PLAIN message whose base64 is exactly `len` octets (a multiple of 4).
fn plain_of_b64_len(len: usize) -> String {
    let raw = len / 4 * 3;
    let msg = format!("\0alice\0{}", "p".repeat(raw - 7));
    let s = b64(&msg);
    assert_eq!(s.len(), len);
    s
}

#[test]
fn long_responses() {
    let ehlo = ehlo_ext(&[AUTH_ALL]);
    let at_limit = plain_of_b64_len(sasl::MAX_RESPONSE);
    let over = plain_of_b64_len(sasl::MAX_RESPONSE + 4);
    let too_long = "500 5.5.6 Authentication Exchange line is too long";
    let c = auth_config();
    for input in [
        format!("EHLO c\r\nAUTH PLAIN {at_limit}\r\n"),
        format!("EHLO c\r\nAUTH PLAIN\r\n{at_limit}\r\n"),
    ] {
        let got = run_phases(&c, &[input.as_bytes()], verify, OPTS);
        assert!(
            got.output.ends_with(&format!("{INVALID}\r\n")),
            "{}",
            &got.output[got.output.len() - 100..]
        );
        assert_eq!(got.events.len(), 2);
        assert_eq!(
            got.events[1].len(),
            12_288 / 4 * 3 - 7 + 28,
            "{}",
            &got.events[1][..40]
        );
    }
    // One response over the limit (in the command or as a continuation):
    // refused, the exchange ends, the next command is read as usual.
    let mut huge = String::from("EHLO c\r\nAUTH PLAIN ");
    huge.push_str(&"A".repeat(100_000));
    huge.push_str("\r\nNOOP\r\n");
    for input in [
        format!("EHLO c\r\nAUTH PLAIN {over}\r\nNOOP\r\n"),
        format!("EHLO c\r\nAUTH PLAIN\r\n{over}\r\nNOOP\r\n"),
        format!("EHLO c\r\nAUTH LOGIN\r\n{}\r\nNOOP\r\n", "A".repeat(50_000)),
        huge,
    ] {
        let got = run_phases(&c, &[input.as_bytes()], verify, OPTS);
        let expected = if input.contains("AUTH PLAIN\r\n") {
            lines(&[&ehlo, &["334 ", too_long, "250 2.0.0 Ok"]])
        } else if input.contains("AUTH LOGIN") {
            lines(&[&ehlo, &["334 VXNlcm5hbWU6", too_long, "250 2.0.0 Ok"]])
        } else {
            lines(&[&ehlo, &[too_long, "250 2.0.0 Ok"]])
        };
        assert_eq!(got.output, wire(&expected));
        assert_eq!(got.events, ["EHLO c"]);
    }
    // Other commands keep the normal limit.
    let got = run_all_splits(&c, format!("NOOP {}\r\n", "a".repeat(600)).as_bytes());
    assert_eq!(got.output, wire(&["500 5.5.2 Error: line too long"]));
}

#[test]
fn endless_auth_lines_stay_bounded() {
    let c = Arc::new(ServerConfig {
        max_bad_commands: 0,
        ..auth_config()
    });
    let mut s = Server::new(c.clone());
    feed_endless(&mut s, b"EHLO c\r\nAUTH PLAIN\r\n", b"A", 4 << 20);
    assert!(matches!(s.mode, Mode::DiscardLine { auth: true, .. }));
    let mut s = Server::new(c.clone());
    feed_endless(&mut s, b"EHLO c\r\nAUTH PLAIN ", b"A", 4 << 20);
    assert!(matches!(s.mode, Mode::DiscardLine { auth: true, .. }));
    // Endless pipelined AUTH attempts.
    let mut s = Server::new(c);
    let out = feed_endless(&mut s, b"EHLO c\r\n", b"AUTH PLAIN AGEAYg==\r\n", 4 << 20);
    assert!(out < 64 * 1024 * 3, "output {out}");
}

#[test]
fn cram_challenge_is_the_one_sent() {
    let mut s = Server::new(Arc::new(auth_config()));
    s.receive(b"EHLO c\r\nAUTH CRAM-MD5\r\n");
    let Step::Event(ev) = s.step() else { panic!() };
    s.respond(ev.reply);
    s.clear_output();
    assert!(matches!(s.step(), Step::NeedInput));
    let out = String::from_utf8(s.output().to_vec()).unwrap();
    let sent = out.strip_prefix("334 ").unwrap().trim_end();
    let sent = String::from_utf8(B64.decode(sent).unwrap()).unwrap();
    // <random.timestamp@hostname>
    let inner = sent
        .strip_prefix('<')
        .unwrap()
        .strip_suffix("@mx.test>")
        .unwrap();
    let (random, time) = inner.split_once('.').unwrap();
    assert!(
        random.bytes().all(|b| b.is_ascii_digit()) && !random.is_empty(),
        "{sent}"
    );
    assert!(time.parse::<u64>().unwrap() > 1_700_000_000, "{sent}");
    s.receive(
        format!(
            "{}\r\n",
            b64(&format!("alice {}", GOOD_DIGEST.to_uppercase()))
        )
        .as_bytes(),
    );
    let Step::Event(ev) = s.step() else { panic!() };
    let EventKind::Auth(attempt) = &ev.kind else {
        panic!()
    };
    assert_eq!(
        attempt.secret,
        AuthSecret::CramMd5 {
            challenge: sent.clone(),
            digest_hex: GOOD_DIGEST.into()
        }
    );
    assert_eq!(attempt.mechanism, Mechanism::CramMd5);
    // Another exchange gets another challenge.
    let mut s2 = Server::new(Arc::new(auth_config()));
    s2.receive(b"EHLO c\r\nAUTH CRAM-MD5\r\n");
    let Step::Event(ev) = s2.step() else { panic!() };
    s2.respond(ev.reply);
    s2.clear_output();
    let _ = s2.step();
    assert_ne!(s2.output(), out.as_bytes());
}

#[test]
fn credentials_are_wiped_from_the_input_buffer() {
    let plain = b64("\0alice\0wonderland");
    let mut s = Server::new(Arc::new(auth_config()));
    s.receive(format!("EHLO c\r\nAUTH PLAIN {plain}\r\nAUTH LOGIN\r\n").as_bytes());
    let Step::Event(ev) = s.step() else { panic!() };
    s.respond(ev.reply);
    let Step::Event(ev) = s.step() else { panic!() };
    assert!(matches!(ev.kind, EventKind::Auth(_)));
    assert!(memmem::find(&s.input, plain.as_bytes()).is_none());
    s.respond(ev.reply);
    assert!(matches!(s.step(), Step::NeedInput));
    s.receive(format!("{}\r\n", b64("alice")).as_bytes());
    assert!(matches!(s.step(), Step::NeedInput));
    s.receive(format!("{}\r\n", b64("wonderland")).as_bytes());
    let Step::Event(_) = s.step() else { panic!() };
    assert!(memmem::find(&s.input, b64("wonderland").as_bytes()).is_none());
}

#[test]
fn mail_auth_parameter_is_trusted_only_after_auth() {
    let plain = b64("\0alice\0wonderland");
    let input = format!(
        "EHLO c\r\nMAIL FROM:<a@b> AUTH=e+2Bve@x\r\nRSET\r\nAUTH PLAIN {plain}\r\nMAIL FROM:<a@b> AUTH=alice@x\r\n"
    );
    let got = run_phases(&auth_config(), &[input.as_bytes()], verify, OPTS);
    let params = |auth: &str| {
        format!(
            "MAIL a@b MailParams {{ size: None, body: SevenBit, smtputf8: false, auth: Some({auth:?}) }}"
        )
    };
    assert_eq!(
        got.events,
        [
            "EHLO c".to_owned(),
            params(""),
            r#"AUTH PLAIN alice password "wonderland""#.to_owned(),
            params("alice@x"),
        ]
    );
}
