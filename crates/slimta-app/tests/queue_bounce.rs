//! Bounces end to end: the binary relays to an `smtp-sink -f RCPT` that
//! refuses every recipient for good, and delivers the bounce through the
//! same MX relay to a second smtp-sink that dumps it. Python's `email`
//! package (a real MIME parser, not ours) then takes the report apart and
//! the test checks it field by field against RFC 3464 / RFC 6522.
//!
//! Routing: one `type = "mx"` relay whose `force_mx` sends example.test
//! (the recipients) to 127.0.0.2 and x.test (the sender, who gets the
//! bounce) to 127.0.0.3, both on one port, so no DNS is involved.

mod common;
mod queue_common;

use common::config;

use std::time::Duration;

use queue_common::{Daemon, SmtpSink, free_port, send};

const PARSE: &str = r#"
import email, json, sys
msg = email.message_from_bytes(open(sys.argv[1], "rb").read())
out = {}
out["content_type"] = msg.get_content_type()
out["report_type"] = msg.get_param("report-type")
out["from"] = msg["From"]
out["to"] = msg["To"]
out["auto_submitted"] = msg["Auto-Submitted"]
parts = msg.get_payload()
out["parts"] = [p.get_content_type() for p in parts]
out["human"] = parts[0].get_payload(decode=True).decode("utf-8")
blocks = parts[1].get_payload()
out["per_message"] = {k: v for k, v in blocks[0].items()}
out["per_recipient"] = [{k: v for k, v in b.items()} for b in blocks[1:]]
returned = parts[2].get_payload()
inner = returned[0] if isinstance(returned, list) else None
out["returned_subject"] = inner["Subject"] if inner is not None else None
out["returned_message_id"] = inner["Message-Id"] if inner is not None else None
out["returned_body"] = inner.get_payload() if inner is not None else None
print(json.dumps(out))
"#;

#[test]
fn a_bounce_parses_as_rfc3464_field_by_field() {
    let port = free_port();
    let refusing = SmtpSink::start_at(
        format!("127.0.0.2:{port}").parse().unwrap(),
        &["-f", "RCPT"],
        false,
    );
    let bounces = SmtpSink::start_at(format!("127.0.0.3:{port}").parse().unwrap(), &[], true);
    let mut daemon = Daemon::new(
        &[
            config::process("mx.example.test", ""),
            config::smtp_edge("\"example.test\"", ""),
            config::disk_queue("{dir}/spool", ""),
            config::forced_mx_relay(port),
        ]
        .concat(),
    );
    daemon.start();
    let reply = send(
        daemon.addr(),
        "sender@x.test",
        &["one@example.test", "two@example.test"],
        "Subject: doomed\r\nMessage-Id: <doomed.1@x.test>\r\n\r\nThe body that comes back.\r\n",
    );
    assert!(reply.starts_with("250 2.6.0"), "{reply}");

    let got = bounces.wait_for_messages(1, Duration::from_secs(30));
    assert_eq!(
        got.len(),
        1,
        "no bounce arrived; log:\n{}",
        daemon.log_tail(30)
    );
    let bounce = &got[0];
    assert_eq!(bounce.mail_args.split(' ').next(), Some("<>"));
    assert_eq!(bounce.rcpt_args, ["<sender@x.test>"]);
    let file = daemon.dir.path().join("bounce.eml");
    std::fs::write(&file, &bounce.content).unwrap();
    let python = test_peers::require("python3", "python3");
    let out = std::process::Command::new(python)
        .arg("-c")
        .arg(PARSE)
        .arg(&file)
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "python: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&bounce.content)
    );
    let json = String::from_utf8_lossy(&out.stdout).into_owned();
    println!("parsed bounce: {json}");
    let report = String::from_utf8_lossy(&bounce.content).into_owned();
    let has = |needle: &str| {
        assert!(
            json.contains(needle),
            "missing {needle}\nparsed: {json}\nreport:\n{report}"
        );
    };
    has(r#""content_type": "multipart/report""#);
    has(r#""report_type": "delivery-status""#);
    has(r#""from": "Mail Delivery System <MAILER-DAEMON@mx.example.test>""#);
    has(r#""to": "<sender@x.test>""#);
    has(r#""auto_submitted": "auto-replied""#);
    has(r#""parts": ["text/plain", "message/delivery-status", "message/rfc822"]"#);
    has(r#""Reporting-MTA": "dns; mx.example.test""#);
    has(r#""Arrival-Date": "#);
    for rcpt in ["one@example.test", "two@example.test"] {
        has(&format!(r#""Final-Recipient": "rfc822; {rcpt}""#));
        assert!(
            json.contains(&format!("<{rcpt}>: 5")),
            "human part names {rcpt}: {json}"
        );
    }
    // Both recipient blocks: failed, a 5.x.y status, the sink as Remote-MTA
    // and its reply as the diagnostic.
    assert_eq!(json.matches(r#""Action": "failed""#).count(), 2, "{json}");
    assert_eq!(json.matches(r#""Status": "5."#).count(), 2, "{json}");
    assert_eq!(
        json.matches(r#""Remote-MTA": "dns; 127.0.0.2""#).count(),
        2,
        "{json}"
    );
    assert_eq!(
        json.matches(r#""Diagnostic-Code": "smtp; 5"#).count(),
        2,
        "{json}"
    );
    has(r#""returned_subject": "doomed""#);
    has(r#""returned_message_id": "<doomed.1@x.test>""#);
    has("The body that comes back.");
    drop(refusing);
    daemon.stop();
}

/// The config of the two tests below: example.test to 127.0.0.2 and
/// x.test to 127.0.0.3, both on `port`; `extra` goes into `[queue.main]`.
fn routed_config(port: u16, extra: &str) -> String {
    [
        config::process("mx.example.test", ""),
        config::smtp_edge("\"example.test\"", ""),
        config::disk_queue("{dir}/spool", extra),
        config::retry("1s", Some("1s")),
        config::forced_mx_relay(port),
    ]
    .concat()
}

#[test]
fn one_delay_warning_reaches_the_sender() {
    let port = free_port();
    // Nothing listens on 127.0.0.2:port: the recipient is deferred forever.
    let sender_side = SmtpSink::start_at(format!("127.0.0.3:{port}").parse().unwrap(), &[], true);
    let mut daemon = Daemon::new(&routed_config(port, r#"delay_warning = "2s""#));
    daemon.start();
    let reply = send(
        daemon.addr(),
        "sender@x.test",
        &["slow@example.test"],
        "Subject: slow\r\nMessage-Id: <slow.1@x.test>\r\n\r\nstill coming\r\n",
    );
    assert!(reply.starts_with("250 "), "{reply}");
    let got = sender_side.wait_for_messages(1, Duration::from_secs(30));
    assert_eq!(got.len(), 1, "no warning; log:\n{}", daemon.log_tail(30));
    // Retries go on every second; a second warning would show up by now.
    std::thread::sleep(Duration::from_secs(4));
    let got = sender_side.messages();
    assert_eq!(got.len(), 1, "exactly one warning");
    assert_eq!(got[0].mail_args.split(' ').next(), Some("<>"));
    assert_eq!(got[0].rcpt_args, ["<sender@x.test>"]);
    let file = daemon.dir.path().join("warning.eml");
    std::fs::write(&file, &got[0].content).unwrap();
    let out = std::process::Command::new(test_peers::require("python3", "python3"))
        .arg("-c")
        .arg(PARSE)
        .arg(&file)
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json = String::from_utf8_lossy(&out.stdout).into_owned();
    for needle in [
        r#""report_type": "delivery-status""#,
        r#""parts": ["text/plain", "message/delivery-status", "text/rfc822-headers"]"#,
        r#""Final-Recipient": "rfc822; slow@example.test""#,
        r#""Action": "delayed""#,
        r#""Status": "4."#,
        r#""Diagnostic-Code": "smtp; 4"#,
    ] {
        assert!(json.contains(needle), "missing {needle} in {json}");
    }
    // The message itself is still queued.
    assert!(daemon.log().contains("delay warning queued"));
    daemon.stop();
}

#[test]
fn a_bounce_that_fails_goes_to_the_postmaster() {
    let port = free_port();
    let refusing = SmtpSink::start_at(
        format!("127.0.0.2:{port}").parse().unwrap(),
        &["-f", "RCPT"],
        false,
    );
    let postmaster = SmtpSink::start_at(format!("127.0.0.3:{port}").parse().unwrap(), &[], true);
    let mut daemon = Daemon::new(&routed_config(port, r#"postmaster = "postmaster@x.test""#));
    daemon.start();
    // The sender is in example.test too, so its bounce is refused as well.
    let reply = send(
        daemon.addr(),
        "gone@example.test",
        &["rcpt@example.test"],
        "Subject: twice doomed\r\n\r\nbody\r\n",
    );
    assert!(reply.starts_with("250 "), "{reply}");
    let got = postmaster.wait_for_messages(1, Duration::from_secs(30));
    assert_eq!(got.len(), 1, "no notice; log:\n{}", daemon.log_tail(30));
    assert_eq!(got[0].mail_args.split(' ').next(), Some("<>"));
    assert_eq!(got[0].rcpt_args, ["<postmaster@x.test>"]);
    let report = String::from_utf8_lossy(&got[0].content);
    assert!(
        report.contains("Final-Recipient: rfc822; gone@example.test"),
        "{report}"
    );
    // The failed bounce comes back whole, with its own report inside.
    assert!(report.contains("Content-Type: message/rfc822"), "{report}");
    assert!(
        report.contains("Final-Recipient: rfc822; rcpt@example.test"),
        "{report}"
    );
    // Nothing more: the notice was delivered, and nothing goes to <>.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(postmaster.messages().len(), 1);
    drop(refusing);
    daemon.stop();
}
