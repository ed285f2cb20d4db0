//! Black-box tests of the `slimta` binary: independent clients (swaks,
//! Python's smtplib, raw sockets, Postfix's smtp-source) talk to it, and
//! Postfix's smtp-sink receives what it relays.

mod common;
mod support;

use std::process::Command;
use std::time::Duration;

use support::{Client, Slimta, SmtpSink, assert_delivered_as_sent, python, relay_config};

const WAIT: Duration = Duration::from_secs(20);

fn session(slimta: &Slimta) -> Client {
    let mut c = Client::connect(slimta.addr());
    c.expect("220 mx.example.test ESMTP");
    c
}

#[test]
fn swaks_message_is_relayed_byte_for_byte() {
    let sink = SmtpSink::start(&[], true);
    let slimta = Slimta::start(&relay_config(sink.addr(), ""));
    // Dot-leading lines, 8-bit header and body bytes, a long-ish line.
    let mut message = b"Subject: swaks test\r\nX-Eight: caf\xc3\xa9\r\n\r\nline one\r\n.dot line\r\n..two dots\r\n\xe2\x82\xac 8bit\r\n".to_vec();
    message.extend_from_slice(&[b'x'; 900]);
    message.extend_from_slice(b"\r\nend\r\n");
    let file = slimta.path().join("message.eml");
    std::fs::write(&file, &message).unwrap();
    let out = Command::new(support::program("swaks", "swaks"))
        .args([
            "--server",
            &slimta.addr().to_string(),
            "-f",
            "sender@x.test",
        ])
        .args(["-t", "a@example.test,b@example.test"])
        .arg("--data")
        .arg(format!("@{}", file.display()))
        .output()
        .expect("swaks");
    let transcript = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "swaks failed:\n{transcript}");
    assert!(
        transcript.contains("<-  250 2.6.0 Message queued as"),
        "{transcript}"
    );
    let got = sink.wait_for_messages(1, WAIT);
    assert_eq!(got.len(), 1, "slimta log:\n{}", slimta.log());
    assert!(
        got[0].mail_args.starts_with("<sender@x.test>"),
        "{:?}",
        got[0].mail_args
    );
    assert_eq!(got[0].rcpt_args.len(), 2);
    // swaks ends the data with its own CRLF before the final dot.
    message.extend_from_slice(b"\r\n");
    assert_delivered_as_sent(&got[0].content, &message);
}

#[test]
fn smtplib_sees_the_extensions_and_relay_control() {
    let sink = SmtpSink::start(&[], true);
    let slimta = Slimta::start(&relay_config(sink.addr(), "max_size = 123456"));
    let script = r#"
import smtplib, sys, json
host, port = sys.argv[1], int(sys.argv[2])
out = {}
s = smtplib.SMTP(host, port, timeout=20)
code, _ = s.ehlo("client.test")
out["ehlo"] = code
out["ext"] = sorted(s.esmtp_features.keys())
out["size"] = s.esmtp_features.get("size")
refused = s.sendmail("from@x.test", ["to@example.test", "other@elsewhere.test"],
                     b"Subject: smtplib\r\n\r\nhello\r\n")
out["refused"] = {k: [v[0], v[1].decode()] for k, v in refused.items()}
try:
    s.sendmail("from@x.test", ["only@elsewhere.test"], b"Subject: x\r\n\r\nx\r\n")
    out["relay"] = "accepted"
except smtplib.SMTPRecipientsRefused as e:
    out["relay"] = [e.recipients["only@elsewhere.test"][0], e.recipients["only@elsewhere.test"][1].decode()]
refused = s.sendmail("from@x.test", ["j\u00f6rg@example.test"], "Subject: utf8\r\n\r\nh\u00e9\r\n".encode(),
                     mail_options=["SMTPUTF8", "BODY=8BITMIME"])
out["utf8"] = len(refused)
code, msg = s.noop()
out["noop"] = [code, msg.decode()]
code, msg = s.verify("someone@example.test")
out["vrfy"] = code
out["quit"] = s.quit()[0]
print(json.dumps(out))
"#;
    let out = python(script, &["127.0.0.1", &slimta.addr().port().to_string()]);
    for needle in [
        r#""ehlo": 250"#,
        r#""8bitmime""#,
        r#""chunking""#,
        r#""enhancedstatuscodes""#,
        r#""pipelining""#,
        r#""smtputf8""#,
        r#""size": "123456""#,
        r#""refused": {"other@elsewhere.test": [550, "5.7.1 <other@elsewhere.test>: Relaying denied"]}"#,
        r#""relay": [550, "5.7.1 <only@elsewhere.test>: Relaying denied"]"#,
        r#""utf8": 0"#,
        r#""noop": [250, "2.0.0 Ok"]"#,
        r#""vrfy": 252"#,
        r#""quit": 221"#,
    ] {
        assert!(out.contains(needle), "missing {needle} in {out}");
    }
    // smtp-sink does not offer SMTPUTF8, so the UTF-8 message (accepted by
    // our edge above) must be refused by the relay, never sent mangled; the
    // sender gets a bounce (from <>) saying why.
    let got = sink.wait_for_messages(2, WAIT);
    assert_eq!(got.len(), 2, "slimta log:\n{}", slimta.log());
    let plain = got
        .iter()
        .find(|m| m.mail_args.starts_with("<from@x.test>"))
        .expect("the plain message");
    assert_eq!(plain.rcpt_args, vec!["<to@example.test>"]);
    let bounce = got
        .iter()
        .find(|m| m.mail_args.starts_with("<>"))
        .expect("a bounce from <>");
    assert_eq!(bounce.rcpt_args, vec!["<from@x.test>"]);
    let report = String::from_utf8_lossy(&bounce.content);
    assert!(report.contains("delivery-status"), "{report}");
    assert!(report.contains("MAILER-DAEMON@mx.example.test"), "{report}");
    assert!(report.contains("Status: 5.6.7"), "{report}");
    assert!(
        !got.iter()
            .any(|m| m.rcpt_args.iter().any(|r| r.contains("rg@example.test"))),
        "the UTF-8 message reached a server without SMTPUTF8"
    );
}

#[test]
fn pipelined_commands_are_answered_in_order() {
    let sink = SmtpSink::start(&[], true);
    let slimta = Slimta::start(&relay_config(sink.addr(), ""));
    let mut c = session(&slimta);
    c.send(b"EHLO pipe.test\r\nMAIL FROM:<p@x.test>\r\nRCPT TO:<a@example.test>\r\nRCPT TO:<b@other.test>\r\nRCPT TO:<c@example.test>\r\nDATA\r\n");
    let ehlo = c.expect("250-mx.example.test");
    assert!(ehlo.contains("250-PIPELINING\r\n"), "{ehlo}");
    c.expect("250 2.1.0 Sender <p@x.test> ok");
    c.expect("250 2.1.5 Recipient <a@example.test> ok");
    c.expect("550 5.7.1 <b@other.test>: Relaying denied");
    c.expect("250 2.1.5 Recipient <c@example.test> ok");
    c.expect("354 ");
    c.send(b"Subject: pipelined\r\n\r\nbody\r\n.\r\nNOOP\r\nQUIT\r\n");
    c.expect("250 2.6.0 Message queued as ");
    c.expect("250 2.0.0 Ok");
    c.expect("221 2.0.0 Bye");
    assert!(c.closed());
    let got = sink.wait_for_messages(1, WAIT);
    assert_eq!(got.len(), 1);
    assert_eq!(
        got[0].rcpt_args,
        vec!["<a@example.test>", "<c@example.test>"]
    );
}

#[test]
fn a_session_sent_byte_by_byte_works() {
    let sink = SmtpSink::start(&[], true);
    let slimta = Slimta::start(&relay_config(sink.addr(), ""));
    let mut c = session(&slimta);
    let steps: [(&[u8], &str); 6] = [
        (b"HELO slow.test\r\n", "250 mx.example.test"),
        (b"MAIL FROM:<s@x.test>\r\n", "250 2.1.0"),
        (b"RCPT TO:<r@example.test>\r\n", "250 2.1.5"),
        (b"DATA\r\n", "354 "),
        (
            b"Subject: slow\r\n\r\n..leading dot\r\nx\r\n.\r\n",
            "250 2.6.0",
        ),
        (b"QUIT\r\n", "221 "),
    ];
    for (bytes, want) in steps {
        for b in bytes {
            c.send(std::slice::from_ref(b));
        }
        c.expect(want);
    }
    let got = sink.wait_for_messages(1, WAIT);
    assert_eq!(got.len(), 1);
    assert_delivered_as_sent(
        &got[0].content,
        b"Subject: slow\r\n\r\n.leading dot\r\nx\r\n",
    );
}

/// Every SMTP smuggling end-of-data variant (bare LF or CR around the dot,
/// a NUL beside it; CVE-2023-51764/5/6): one reply to the whole DATA, and
/// no envelope from the attacker ever reaches the sink.
#[test]
fn smuggling_sequences_never_make_a_second_message() {
    let sink = SmtpSink::start(&[], true);
    let slimta = Slimta::start(&relay_config(sink.addr(), ""));
    let sequences: [&[u8]; 10] = [
        b"\n.\n",
        b"\n.\r",
        b"\r.\n",
        b"\r.\r",
        b"\n.\r\n",
        b"\r.\r\n",
        b"\r\n.\n",
        b"\r\n.\r",
        b"\r\n\0.\r\n",
        b"\r\n.\0\r\n",
    ];
    for seq in sequences {
        let mut c = session(&slimta);
        c.cmd("EHLO good.test", "250");
        c.cmd("MAIL FROM:<good@x.test>", "250");
        c.cmd("RCPT TO:<victim@example.test>", "250");
        c.cmd("DATA", "354");
        let mut data = b"Subject: smuggle test\r\n\r\nx".to_vec();
        data.extend_from_slice(seq);
        data.extend_from_slice(
            b"MAIL FROM:<evil@attacker.test>\r\nRCPT TO:<victim@example.test>\r\nDATA\r\nSubject: smuggled\r\n\r\nhidden\r\n.\r\n",
        );
        c.send(&data);
        let reply = c.reply();
        assert!(
            reply.starts_with("250 2.6.0") || reply.starts_with('5'),
            "{seq:?}: {reply}"
        );
        // Exactly one reply: the next thing the server says answers our NOOP.
        c.cmd("NOOP", "250 2.0.0 Ok");
        c.cmd("QUIT", "221");
    }
    let got = sink.wait_for_messages(sequences.len(), WAIT);
    assert_eq!(got.len(), sequences.len(), "slimta log:\n{}", slimta.log());
    for m in &got {
        assert!(
            m.mail_args.starts_with("<good@x.test>"),
            "smuggled envelope: {m:?}"
        );
        // The relay never emits a bare CR or LF downstream either: the sink
        // saw one message per session, the hidden text stayed content.
        assert!(
            String::from_utf8_lossy(&m.content).contains("hidden"),
            "{m:?}"
        );
    }
}

#[test]
fn smtp_source_load_is_all_delivered() {
    let sink = SmtpSink::start(&[], true);
    let slimta = Slimta::start(&relay_config(sink.addr(), ""));
    let n = 400;
    let out = Command::new(support::program("smtp-source", "postfix"))
        .args(["-s", "10", "-m", &n.to_string(), "-l", "4096"])
        .args(["-f", "load@x.test", "-t", "sink@example.test"])
        .arg(slimta.addr().to_string())
        .output()
        .expect("smtp-source");
    assert!(
        out.status.success(),
        "smtp-source: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got = sink.wait_for_messages(n, Duration::from_secs(60));
    assert_eq!(got.len(), n, "slimta log tail:\n{}", tail(&slimta.log()));
}

#[test]
fn recipient_limit_answers_452() {
    let sink = SmtpSink::start(&[], false);
    let slimta = Slimta::start(&relay_config(sink.addr(), "max_recipients = 100"));
    let mut c = session(&slimta);
    c.cmd("EHLO many.test", "250");
    c.cmd("MAIL FROM:<m@x.test>", "250");
    for i in 0..100 {
        c.cmd(&format!("RCPT TO:<r{i}@example.test>"), "250 2.1.5");
    }
    c.cmd("RCPT TO:<r100@example.test>", "452 4.5.3");
    c.cmd("DATA", "354");
    c.send(b"Subject: many\r\n\r\n.\r\n");
    c.expect("250 2.6.0");
}

#[test]
fn connection_limit_refuses_only_new_clients() {
    let sink = SmtpSink::start(&[], false);
    let slimta = Slimta::start(&relay_config(sink.addr(), "max_connections = 2"));
    // The start-up probe (a connect and close) is a session too: wait until
    // it has ended so it does not hold one of the two slots.
    let deadline = std::time::Instant::now() + WAIT;
    while !slimta.log().contains("disconnect") && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut first = session(&slimta);
    let mut second = session(&slimta);
    let mut third = Client::connect(slimta.addr());
    third.expect("421 4.3.2");
    assert!(third.closed());
    first.cmd("NOOP", "250 2.0.0 Ok");
    second.cmd("NOOP", "250 2.0.0 Ok");
    first.cmd("QUIT", "221");
    assert!(first.closed());
    // A slot is free again (the server notices the close asynchronously).
    let mut again = None;
    for _ in 0..100 {
        let mut c = Client::connect(slimta.addr());
        let reply = c.reply();
        if reply.starts_with("220") {
            again = Some(c);
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    again.expect("a freed slot is reused").cmd("QUIT", "221");
}

#[test]
fn too_many_bad_commands_close_the_session() {
    let sink = SmtpSink::start(&[], false);
    let slimta = Slimta::start(&relay_config(sink.addr(), ""));
    let mut c = session(&slimta);
    let mut closed_after = None;
    for i in 1..=30 {
        c.send(b"BOGUS\r\n");
        let reply = c.reply();
        if reply.starts_with("421") {
            assert!(reply.starts_with("421 4.7.0"), "{reply}");
            closed_after = Some(i);
            break;
        }
        assert!(reply.starts_with("500 5.5.2"), "{reply}");
    }
    let n = closed_after.expect("never closed");
    assert!((19..=21).contains(&n), "closed after {n} bad commands");
    assert!(c.closed());
}

#[test]
fn command_timeout_answers_421() {
    let sink = SmtpSink::start(&[], false);
    let slimta = Slimta::start(&relay_config(sink.addr(), r#"command_timeout = "1s""#));
    let mut c = session(&slimta);
    c.cmd("EHLO idle.test", "250");
    // No timing assertion: the read waits up to 20 s for the 421.
    c.expect("421 4.4.2");
    assert!(c.closed());
}

#[test]
fn long_lines_and_big_messages_are_refused_with_bounded_memory() {
    let sink = SmtpSink::start(&[], true);
    let slimta = Slimta::start(&relay_config(sink.addr(), "max_size = 1048576"));
    let mut c = session(&slimta);
    c.cmd("EHLO big.test", "250");
    // A 1 MiB command line without CRLF, then its CRLF.
    let line = vec![b'A'; 1024 * 1024];
    c.send(&line);
    c.send(b"\r\n");
    c.expect("500 5.5.2");
    c.cmd("NOOP", "250");
    c.cmd("MAIL FROM:<big@x.test> SIZE=2000000", "552 5.3.4");
    // Undeclared: 100 MB of data is read and discarded, then refused.
    c.cmd("MAIL FROM:<big@x.test>", "250");
    c.cmd("RCPT TO:<r@example.test>", "250");
    c.cmd("DATA", "354");
    let block = vec![b'z'; 998]
        .into_iter()
        .chain(*b"\r\n")
        .collect::<Vec<u8>>();
    let mut peak = 0;
    for i in 0..100_000 {
        c.send(&block);
        if i % 10_000 == 0 {
            peak = peak.max(slimta.rss_kib());
        }
    }
    c.send(b".\r\n");
    c.expect("552 5.3.4");
    peak = peak.max(slimta.rss_kib());
    assert!(
        peak < 64 * 1024,
        "RSS grew to {peak} KiB while discarding a 100 MB message"
    );
    // A line over 1000 octets inside DATA.
    c.cmd("MAIL FROM:<long@x.test>", "250");
    c.cmd("RCPT TO:<r@example.test>", "250");
    c.cmd("DATA", "354");
    let mut data = b"Subject: long\r\n\r\n".to_vec();
    data.extend_from_slice(&[b'y'; 1200]);
    data.extend_from_slice(b"\r\n.\r\n");
    c.send(&data);
    c.expect("554 5.6.0");
    c.cmd("QUIT", "221");
    std::thread::sleep(Duration::from_millis(300));
    assert!(sink.messages().is_empty(), "a refused message was relayed");
}

#[test]
fn sigterm_finishes_the_message_in_flight_then_exits_0() {
    let sink = SmtpSink::start(&[], true);
    let mut slimta = Slimta::start(&relay_config(sink.addr(), ""));
    let mut c = session(&slimta);
    c.cmd("EHLO term.test", "250");
    c.cmd("MAIL FROM:<t@x.test>", "250");
    c.cmd("RCPT TO:<r@example.test>", "250");
    c.cmd("DATA", "354");
    c.send(b"Subject: in flight\r\n\r\nfirst half\r\n");
    let mut idle = session(&slimta);
    slimta.peer.signal("TERM");
    // The idle session is told the server is going away.
    idle.expect("421 4.3.2");
    c.send(b"second half\r\n.\r\n");
    c.expect("250 2.6.0");
    // The session is then closed at its next command wait.
    c.send(b"NOOP\r\n");
    let after = c.reply();
    assert!(
        after.starts_with("421 4.3.2") || after.starts_with("250"),
        "{after}"
    );
    let status = slimta
        .peer
        .wait_exit(Duration::from_secs(30))
        .expect("slimta did not exit");
    assert!(
        status.success(),
        "exit status {status}; log:\n{}",
        slimta.log()
    );
    let got = sink.wait_for_messages(1, WAIT);
    assert_eq!(
        got.len(),
        1,
        "the in-flight message was not delivered before exit"
    );
}

fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

#[test]
fn data_timeout_answers_421() {
    let sink = SmtpSink::start(&[], true);
    let slimta = Slimta::start(&relay_config(sink.addr(), r#"data_timeout = "1s""#));
    let mut c = session(&slimta);
    c.cmd("EHLO slow.test", "250");
    c.cmd("MAIL FROM:<s@x.test>", "250");
    c.cmd("RCPT TO:<r@example.test>", "250");
    c.cmd("DATA", "354");
    c.send(b"Subject: never finished\r\n\r\nhalf");
    // No timing assertion: the read waits up to 20 s for the 421.
    c.expect("421 4.4.2");
    assert!(c.closed());
    std::thread::sleep(Duration::from_millis(300));
    assert!(sink.messages().is_empty(), "a half message was relayed");
}

/// Memory stays bounded with many idle clients: 10,000 connections that
/// got their banner and then say nothing.
#[test]
fn ten_thousand_idle_connections_stay_small() {
    let sink = SmtpSink::start(&[], false);
    let slimta = Slimta::start(&relay_config(sink.addr(), "max_connections = 12000"));
    let before = slimta.rss_kib();
    let mut idle = Vec::with_capacity(10_000);
    for i in 0..10_000 {
        let mut c = Client::connect(slimta.addr());
        if i % 1000 == 0 {
            c.expect("220 ");
        }
        idle.push(c);
    }
    // Every session is up once the last one was greeted.
    idle.last_mut().expect("connections").expect("220 ");
    let during = slimta.rss_kib();
    assert!(
        during < 150 * 1024,
        "RSS with 10,000 idle connections is {during} KiB (before: {before} KiB)"
    );
    // And they still work (the first one's banner was read above).
    idle[0].cmd("NOOP", "250");
    eprintln!("RSS: {before} KiB before, {during} KiB with 10,000 idle connections");
}

/// `[check.NAME]` sections listed in `edge.E.checks` run after relay
/// control: an unknown local user is refused at RCPT with 5.1.1, a
/// recipient elsewhere still gets relay control's 5.7.1 (the first refusal
/// wins), and only the listed user's copy is relayed.
#[test]
fn a_recipient_list_check_refuses_unknown_users_after_relay_control() {
    let sink = SmtpSink::start(&[], true);
    let config = format!(
        "{}\n[check.users]\ntype = \"recipient_list\"\naddresses = [\"Alice@example.test\"]\n",
        relay_config(sink.addr(), "checks = [\"users\"]")
    );
    let slimta = Slimta::start(&config);
    let mut c = session(&slimta);
    c.send(b"EHLO check.test\r\nMAIL FROM:<p@x.test>\r\nRCPT TO:<alice@EXAMPLE.test>\r\nRCPT TO:<bob@example.test>\r\nRCPT TO:<c@other.test>\r\nRCPT TO:<postmaster>\r\nDATA\r\n");
    c.expect("250-mx.example.test");
    c.expect("250 2.1.0 Sender <p@x.test> ok");
    c.expect("250 2.1.5 Recipient <alice@EXAMPLE.test> ok");
    c.expect("550 5.1.1 <bob@example.test>: User unknown");
    c.expect("550 5.7.1 <c@other.test>: Relaying denied");
    c.expect("250 2.1.5 Recipient <postmaster> ok");
    c.expect("354 ");
    c.send(b"Subject: checked\r\n\r\nbody\r\n.\r\nQUIT\r\n");
    c.expect("250 2.6.0 Message queued as ");
    c.expect("221 2.0.0 Bye");
    let got = sink.wait_for_messages(1, WAIT);
    assert_eq!(got.len(), 1, "slimta log:\n{}", slimta.log());
    assert_eq!(
        got[0].rcpt_args,
        vec!["<alice@EXAMPLE.test>", "<postmaster>"]
    );
}
