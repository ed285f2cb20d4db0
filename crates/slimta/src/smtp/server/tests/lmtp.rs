//! LMTP (RFC 2033): LHLO, and one reply per accepted recipient after the
//! message, in RCPT order, for DATA and for BDAT LAST.

use super::*;

fn lmtp_config() -> ServerConfig {
    ServerConfig {
        lmtp: true,
        ..config()
    }
}

fn lmtp_wire(lines: &[&str]) -> String {
    wire(lines).replacen("ESMTP", "LMTP", 1)
}

/// `no@d` is refused at RCPT.
fn refuse_no(kind: &EventKind, reply: Reply) -> Reply {
    match kind {
        EventKind::Rcpt { recipient, .. } if recipient == "no@d" => {
            Reply::new(550, "5.1.1", "No such user")
        }
        _ => reply,
    }
}

/// Mailbox `full@d` is over quota; the others get the message.
fn deliver(t: &Transaction) -> Vec<Reply> {
    t.recipients
        .iter()
        .map(|r| {
            if r.starts_with("full@") {
                Reply::new(452, "4.2.2", format!("<{r}> Mailbox full"))
            } else {
                Reply::new(250, "2.1.5", format!("<{r}> Delivered"))
            }
        })
        .collect()
}

const RCPTS: &[u8] = b"LHLO c\r\nMAIL FROM:<a@b>\r\nRCPT TO:<1@d>\r\nRCPT TO:<no@d>\r\nRCPT TO:<full@d>\r\nRCPT TO:<3@d>\r\n";
const RCPTS_OUT: &[&str] = &[
    "250 2.1.0 Sender <a@b> ok",
    "250 2.1.5 Recipient <1@d> ok",
    "550 5.1.1 No such user",
    "250 2.1.5 Recipient <full@d> ok",
    "250 2.1.5 Recipient <3@d> ok",
];
const RCPTS_EV: &[&str] = &[
    "LHLO c",
    "MAIL a@b",
    "RCPT 1@d",
    "RCPT no@d",
    "RCPT full@d",
    "RCPT 3@d",
];

fn check_lmtp(
    input: &[u8],
    decide: fn(&EventKind, Reply) -> Reply,
    opts: Opts,
    output: &[&[&'static str]],
    events: &[&[&str]],
) {
    let got = run_phases(&lmtp_config(), &[input], decide, opts);
    assert_eq!(
        got.output,
        lmtp_wire(&lines(output)),
        "{:?}",
        String::from_utf8_lossy(input)
    );
    assert_eq!(
        got.events,
        events.concat(),
        "{:?}",
        String::from_utf8_lossy(input)
    );
}

#[test]
fn lhlo_and_refused_greetings() {
    check_lmtp(
        b"HELO c\r\nEHLO c\r\nMAIL FROM:<a@b>\r\nLHLO\r\nLHLO c\r\nHELP\r\n",
        accept,
        OPTS,
        &[
            &[
                "500 5.5.1 Error: use LHLO",
                "500 5.5.1 Error: use LHLO",
                "503 5.5.1 Error: send LHLO first",
                "501 5.5.4 Syntax: LHLO hostname",
            ],
            EHLO,
            &["214 2.0.0 Commands: LHLO MAIL RCPT DATA BDAT RSET NOOP QUIT VRFY HELP"],
        ],
        &[&["LHLO c"]],
    );
    // Not in LMTP mode, LHLO is unknown.
    let got = run_all_splits(&config(), b"LHLO c\r\n");
    assert_eq!(
        got.output,
        wire(&["500 5.5.2 Error: command not recognized"])
    );
}

#[test]
fn one_reply_per_recipient_after_data() {
    let input = [RCPTS, b"DATA\r\nhi\r\n.\r\nQUIT\r\n"].concat();
    let msg = r#"MSG a@b ["1@d", "full@d", "3@d"] "hi\r\n""#;
    check_lmtp(
        &input,
        refuse_no,
        Opts {
            per_recipient: Some(deliver),
            ..OPTS
        },
        &[
            EHLO,
            RCPTS_OUT,
            &[
                "354 End data with <CR><LF>.<CR><LF>",
                "250 2.1.5 <1@d> Delivered",
                "452 4.2.2 <full@d> Mailbox full",
                "250 2.1.5 <3@d> Delivered",
                "221 2.0.0 Bye",
            ],
        ],
        &[RCPTS_EV, &["DATA", msg, "QUIT"]],
    );
    // respond() with one reply: written once per recipient.
    check_lmtp(
        &input,
        refuse_no,
        OPTS,
        &[
            EHLO,
            RCPTS_OUT,
            &[
                "354 End data with <CR><LF>.<CR><LF>",
                "250 2.6.0 Message accepted",
                "250 2.6.0 Message accepted",
                "250 2.6.0 Message accepted",
                "221 2.0.0 Bye",
            ],
        ],
        &[RCPTS_EV, &["DATA", msg, "QUIT"]],
    );
}

#[test]
fn one_reply_per_recipient_after_bdat_last() {
    let input = [RCPTS, b"BDAT 3\r\nabcBDAT 2 LAST\r\nde"].concat();
    let msg = r#"MSG a@b ["1@d", "full@d", "3@d"] "abcde""#;
    check_lmtp(
        &input,
        refuse_no,
        Opts {
            per_recipient: Some(deliver),
            ..OPTS
        },
        &[
            EHLO,
            RCPTS_OUT,
            &[
                "250 2.0.0 3 octets received",
                "250 2.1.5 <1@d> Delivered",
                "452 4.2.2 <full@d> Mailbox full",
                "250 2.1.5 <3@d> Delivered",
            ],
        ],
        &[RCPTS_EV, &["DATA", msg]],
    );
    // A single BDAT LAST.
    let input = [RCPTS, b"BDAT 2 LAST\r\nde"].concat();
    check_lmtp(
        &input,
        refuse_no,
        Opts {
            per_recipient: Some(deliver),
            ..OPTS
        },
        &[
            EHLO,
            RCPTS_OUT,
            &[
                "250 2.1.5 <1@d> Delivered",
                "452 4.2.2 <full@d> Mailbox full",
                "250 2.1.5 <3@d> Delivered",
            ],
        ],
        &[
            RCPTS_EV,
            &["DATA", r#"MSG a@b ["1@d", "full@d", "3@d"] "de""#],
        ],
    );
}

#[test]
fn machine_refusals_after_the_message_are_per_recipient() {
    let too_big = "552 5.3.4 Message size exceeds fixed maximum message size";
    // DATA over max_size.
    let mut input = RCPTS.to_vec();
    input.extend_from_slice(b"DATA\r\n");
    input.extend_from_slice(&b"x".repeat(1100));
    input.extend_from_slice(b"\r\n.\r\n");
    check_lmtp(
        &input,
        refuse_no,
        OPTS,
        &[
            EHLO,
            RCPTS_OUT,
            &[
                "354 End data with <CR><LF>.<CR><LF>",
                too_big,
                too_big,
                too_big,
            ],
        ],
        &[RCPTS_EV, &["DATA"]],
    );
    // BDAT LAST over max_size: the chunk is read and answered per recipient.
    let mut input = RCPTS.to_vec();
    input.extend_from_slice(b"BDAT 1001 LAST\r\n");
    input.extend_from_slice(&b"x".repeat(1001));
    input.extend_from_slice(b"NOOP\r\n");
    check_lmtp(
        &input,
        refuse_no,
        OPTS,
        &[
            EHLO,
            RCPTS_OUT,
            &[too_big, too_big, too_big, "250 2.0.0 Ok"],
        ],
        &[RCPTS_EV],
    );
    // A non-LAST chunk over max_size gets one reply.
    let mut input = RCPTS.to_vec();
    input.extend_from_slice(b"BDAT 1001\r\n");
    input.extend_from_slice(&b"x".repeat(1001));
    check_lmtp(
        &input,
        refuse_no,
        OPTS,
        &[EHLO, RCPTS_OUT, &[too_big]],
        &[RCPTS_EV],
    );
}

#[test]
fn protocol_names() {
    let mut s = Server::new(Arc::new(lmtp_config()));
    assert_eq!(s.default_banner().to_string(), "220 mx.test LMTP slimta-rs");
    assert_eq!(s.protocol(), Protocol::Lmtp);
    s.tls_established();
    assert_eq!(s.protocol(), Protocol::Lmtps);
    let mut s = Server::new(Arc::new(config()));
    s.receive(b"HELO c\r\n");
    let Step::Event(ev) = s.step() else { panic!() };
    assert_eq!(s.protocol(), Protocol::Smtp);
    s.respond(ev.reply);
    assert_eq!(s.protocol(), Protocol::Smtp);
    s.receive(b"EHLO c\r\n");
    let Step::Event(ev) = s.step() else { panic!() };
    s.respond(ev.reply);
    assert_eq!(s.protocol(), Protocol::Esmtp);
}

fn at_message(config: ServerConfig) -> Server {
    let mut s = Server::new(Arc::new(config));
    let hello = if s.config().lmtp { "LHLO" } else { "EHLO" };
    s.receive(
        format!("{hello} c\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nRCPT TO:<e@f>\r\nDATA\r\n.\r\n")
            .as_bytes(),
    );
    loop {
        let Step::Event(ev) = s.step() else {
            panic!("no message")
        };
        if matches!(ev.kind, EventKind::Message(_)) {
            return s;
        }
        s.respond(ev.reply);
    }
}

#[test]
#[should_panic(expected = "one reply per recipient")]
fn per_recipient_replies_must_match_the_recipients() {
    let mut s = at_message(lmtp_config());
    s.respond_per_recipient(vec![Reply::new(250, "2.0.0", "ok")]);
}

#[test]
#[should_panic(expected = "outside LMTP")]
fn per_recipient_replies_only_in_lmtp() {
    let mut s = at_message(config());
    s.respond_per_recipient(vec![Reply::new(250, "2.0.0", "ok"); 2]);
}

#[test]
fn per_recipient_421_closes() {
    let mut s = at_message(lmtp_config());
    s.clear_output();
    s.respond_per_recipient(vec![
        Reply::new(421, "4.3.0", "going down"),
        Reply::new(250, "2.0.0", "ok"),
    ]);
    assert_eq!(s.output(), b"421 4.3.0 going down\r\n");
    assert!(matches!(s.step(), Step::Close));
}

fn refuse_chunks(kind: &EventKind, reply: Reply) -> Reply {
    match kind {
        EventKind::Data => Reply::new(554, "5.7.1", "No chunks for you"),
        _ => refuse_no(kind, reply),
    }
}

#[test]
fn refused_first_chunk_that_is_last_is_per_recipient() {
    let no = "554 5.7.1 No chunks for you";
    let input = [RCPTS, b"BDAT 2 LAST\r\nxyNOOP\r\n"].concat();
    check_lmtp(
        &input,
        refuse_chunks,
        OPTS,
        &[EHLO, RCPTS_OUT, &[no, no, no, "250 2.0.0 Ok"]],
        &[RCPTS_EV, &["DATA"]],
    );
    // Not the last chunk: one reply, the transaction ends.
    let input = [RCPTS, b"BDAT 2\r\nxyBDAT 1 LAST\r\nz"].concat();
    check_lmtp(
        &input,
        refuse_chunks,
        OPTS,
        &[EHLO, RCPTS_OUT, &[no, "503 5.5.1 Error: need MAIL command"]],
        &[RCPTS_EV, &["DATA"]],
    );
}
