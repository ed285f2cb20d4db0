//! STARTTLS (RFC 3207): offer, sequence, the handshake steps, and the
//! command injection of CVE-2011-0411.

use super::*;

fn tls_config() -> ServerConfig {
    ServerConfig {
        starttls: true,
        ..config()
    }
}

const READY: &str = "220 2.0.0 Ready to start TLS";

fn refuse_tls(kind: &EventKind, reply: Reply) -> Reply {
    match kind {
        EventKind::StartTls => Reply::new(454, "4.7.0", "TLS not available"),
        _ => reply,
    }
}

struct TlsCase {
    name: &'static str,
    phases: &'static [&'static [u8]],
    output: Vec<&'static str>,
    events: &'static [&'static str],
    closed: bool,
}

fn check_tls(
    cases: Vec<TlsCase>,
    config: &ServerConfig,
    decide: fn(&EventKind, Reply) -> Reply,
    opts: Opts,
) {
    for c in cases {
        let got = run_phases(config, c.phases, decide, opts);
        assert_eq!(got.output, wire(&c.output), "{}", c.name);
        assert_eq!(got.events, c.events, "{}", c.name);
        assert_eq!(got.closed, c.closed, "{}", c.name);
    }
}

#[test]
fn starttls_sessions() {
    let plain_ehlo = ehlo_ext(&["250-STARTTLS"]);
    let tls_ehlo = EHLO.to_vec();
    let cases = vec![
        TlsCase {
            name: "offered, taken, session starts over",
            phases: &[b"EHLO c\r\nSTARTTLS\r\n", b"MAIL FROM:<a@b>\r\nEHLO c\r\nMAIL FROM:<a@b>\r\n"],
            output: lines(&[
                &plain_ehlo,
                &[READY, TLS_MARK, "503 5.5.1 Error: send HELO/EHLO first"],
                &tls_ehlo,
                &["250 2.1.0 Sender <a@b> ok"],
            ]),
            events: &["EHLO c", "STARTTLS", "EHLO c", "MAIL a@b"],
            closed: false,
        },
        TlsCase {
            name: "plaintext pipelined after STARTTLS is never answered",
            phases: &[
                b"EHLO c\r\nSTARTTLS\r\nMAIL FROM:<evil@x>\r\nRCPT TO:<victim@y>\r\n",
                b"EHLO c\r\nMAIL FROM:<a@b>\r\n",
            ],
            output: lines(&[
                &plain_ehlo,
                &[READY, TLS_MARK],
                &tls_ehlo,
                &["250 2.1.0 Sender <a@b> ok"],
            ]),
            events: &["EHLO c", "STARTTLS", "EHLO c", "MAIL a@b"],
            closed: false,
        },
        TlsCase {
            name: "the injection alone: nothing after the 220",
            phases: &[b"EHLO c\r\nSTARTTLS\r\nMAIL FROM:<evil@x>\r\n", b""],
            output: lines(&[&plain_ehlo, &[READY, TLS_MARK]]),
            events: &["EHLO c", "STARTTLS"],
            closed: false,
        },
        TlsCase {
            name: "STARTTLS after TLS",
            phases: &[b"EHLO c\r\nSTARTTLS\r\n", b"STARTTLS\r\nEHLO c\r\nSTARTTLS\r\n"],
            output: lines(&[
                &plain_ehlo,
                &[READY, TLS_MARK, "503 5.5.1 Error: TLS already active"],
                &tls_ehlo,
                &["503 5.5.1 Error: TLS already active"],
            ]),
            events: &["EHLO c", "STARTTLS", "EHLO c"],
            closed: false,
        },
        TlsCase {
            name: "sequence and syntax",
            phases: &[
                b"STARTTLS\r\nHELO c\r\nSTARTTLS\r\nEHLO c\r\nSTARTTLS now\r\nMAIL FROM:<a@b>\r\nSTARTTLS\r\nRSET\r\nHELP\r\n",
            ],
            output: lines(&[
                &[
                    "503 5.5.1 Error: send EHLO first",
                    "250 mx.test",
                    "503 5.5.1 Error: send EHLO first",
                ],
                &plain_ehlo,
                &[
                    "501 5.5.4 Syntax: STARTTLS",
                    "250 2.1.0 Sender <a@b> ok",
                    "503 5.5.1 Error: STARTTLS not permitted during a mail transaction",
                    "250 2.0.0 Ok",
                    "214 2.0.0 Commands: HELO EHLO STARTTLS MAIL RCPT DATA BDAT RSET NOOP QUIT VRFY HELP",
                ],
            ]),
            events: &["HELO c", "EHLO c", "MAIL a@b"],
            closed: false,
        },
    ];
    check_tls(cases, &tls_config(), accept, OPTS);

    // The driver cannot do TLS: plaintext goes on, pipelined commands too.
    let cases = vec![TlsCase {
        name: "refused with 454",
        phases: &[b"EHLO c\r\nSTARTTLS\r\nNOOP\r\nEHLO c\r\n"],
        output: lines(&[
            &plain_ehlo,
            &["454 4.7.0 TLS not available", "250 2.0.0 Ok"],
            &plain_ehlo,
        ]),
        events: &["EHLO c", "STARTTLS", "EHLO c"],
        closed: false,
    }];
    check_tls(cases, &tls_config(), refuse_tls, OPTS);

    // The handshake fails: 421 and close; nothing else is read.
    let cases = vec![TlsCase {
        name: "handshake failed",
        phases: &[b"EHLO c\r\nSTARTTLS\r\nNOOP\r\n", b"NOOP\r\n"],
        output: lines(&[
            &plain_ehlo,
            &[
                READY,
                TLS_MARK,
                "421 4.7.0 mx.test Error: TLS handshake failed",
            ],
        ]),
        events: &["EHLO c", "STARTTLS"],
        closed: true,
    }];
    let failing = Opts {
        tls_ok: false,
        ..OPTS
    };
    check_tls(cases, &tls_config(), accept, failing);

    // Not configured: an unknown command, not offered.
    let got = run_all_splits(&config(), b"EHLO c\r\nSTARTTLS\r\n");
    assert_eq!(
        got.output,
        wire(&with_ehlo(&["500 5.5.2 Error: command not recognized"]))
    );
}

/// Answers every event with its proposed reply; returns the events.
fn answer_all(s: &mut Server) -> Vec<String> {
    let mut events = Vec::new();
    loop {
        match s.step() {
            Step::Event(ev) => {
                events.push(describe(&ev.kind));
                s.respond(ev.reply);
            }
            _ => return events,
        }
    }
}

#[test]
fn bytes_during_the_handshake_are_dropped() {
    let mut s = Server::new(Arc::new(tls_config()));
    s.greet(s.default_banner());
    s.receive(b"EHLO c\r\nSTARTTLS\r\nNOOP\r\n");
    assert_eq!(answer_all(&mut s), ["EHLO c", "STARTTLS"]);
    assert!(matches!(s.step(), Step::StartTls));
    assert!(s.output().ends_with(b"220 2.0.0 Ready to start TLS\r\n"));
    s.clear_output();
    // A driver that keeps reading in plaintext by mistake.
    s.receive(b"MAIL FROM:<evil@x>\r\n");
    assert!(matches!(s.step(), Step::StartTls), "still waiting");
    assert!(!s.is_tls());
    s.tls_established();
    assert!(s.is_tls());
    assert!(matches!(s.step(), Step::NeedInput));
    assert_eq!(s.output(), b"");
    assert_eq!(s.protocol(), Protocol::Smtp, "no EHLO yet");
    s.receive(b"EHLO c\r\nNOOP\r\n");
    assert_eq!(answer_all(&mut s), ["EHLO c"]);
    assert!(!String::from_utf8_lossy(s.output()).contains("STARTTLS"));
    assert!(s.output().ends_with(b"250 2.0.0 Ok\r\n"));
    assert_eq!(s.protocol(), Protocol::Esmtps);
}

#[test]
fn implicit_tls() {
    let c = ServerConfig {
        auth_mechanisms: vec![Mechanism::Plain],
        ..tls_config()
    };
    let mut s = Server::new(Arc::new(c));
    s.tls_established();
    s.greet(s.default_banner());
    s.receive(b"EHLO c\r\nSTARTTLS\r\n");
    answer_all(&mut s);
    let out = String::from_utf8(s.output().to_vec()).unwrap();
    assert!(out.contains("250-AUTH PLAIN\r\n"), "{out}");
    assert!(!out.contains("STARTTLS\r\n250"), "{out}");
    assert!(
        out.ends_with("503 5.5.1 Error: TLS already active\r\n"),
        "{out}"
    );
    assert_eq!(s.protocol(), Protocol::Esmtps);
}
