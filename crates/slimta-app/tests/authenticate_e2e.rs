//! The `slimta` binary with `[policy.verify] type = "authenticate"` and
//! `[dns]` pointed at a real dnsmasq: a DMARC p=reject failure is refused
//! at the end of DATA (SMTP edge) and in the HTTP reply (HTTP edge, the
//! same queue policy), a p=quarantine failure is relayed to Postfix's
//! smtp-sink with the verdict in its Authentication-Results field.

mod common;
mod support;

use std::process::Command;
use std::time::Duration;

use support::{Client, Slimta, SmtpSink, relay_config};
use test_peers::Dnsmasq;

const WAIT: Duration = Duration::from_secs(20);

fn dns() -> Dnsmasq {
    Dnsmasq::start(&[
        "--txt-record=example.test,v=spf1 ip4:192.0.2.1 -all",
        "--txt-record=_dmarc.example.test,v=DMARC1; p=reject",
        "--txt-record=_dmarc.q.test,v=DMARC1; p=quarantine",
    ])
}

fn config(sink: std::net::SocketAddr, dns: &Dnsmasq) -> String {
    relay_config(sink, "").replace("[queue.main]\n", "[queue.main]\npolicies = [\"verify\"]\n")
        + &format!(
            "\n[dns]\nnameservers = [\"{}\"]\n\n[policy.verify]\ntype = \"authenticate\"\n\
             authserv_id = \"mx.example.test\"\ndmarc_reject = true\ntimeout = \"5s\"\n",
            dns.addr()
        )
}

fn message(from: &str) -> String {
    format!(
        "From: {from}\r\nTo: b@example.test\r\nSubject: lunch\r\n\
         Date: Fri, 04 Dec 2026 12:00:00 +0000\r\nMessage-Id: <l@x.test>\r\n\r\nNoon?\r\n"
    )
}

fn send(slimta: &Slimta, body: &str) -> String {
    let mut c = Client::connect(slimta.addr());
    c.expect("220 ");
    c.cmd("EHLO client.test", "250");
    c.cmd("MAIL FROM:<a@example.test>", "250");
    c.cmd("RCPT TO:<b@example.test>", "250");
    c.cmd("DATA", "354");
    c.send(format!("{body}.\r\n").as_bytes());
    c.reply()
}

#[test]
fn dmarc_reject_is_refused_and_quarantine_relayed_marked() {
    let dns = dns();
    let sink = SmtpSink::start(&[], true);
    let slimta = Slimta::start(&config(sink.addr(), &dns));
    // From 127.0.0.1, which example.test's SPF does not allow; no DKIM.
    let reply = send(&slimta, &message("alice@example.test"));
    assert_eq!(
        reply,
        "550 5.7.1 Message refused: DMARC policy of example.test (p=reject) failed\r\n",
        "{}",
        slimta.log()
    );
    let reply = send(
        &slimta,
        &format!(
            "Authentication-Results: mx.example.test; dmarc=pass\r\n{}",
            message("alice@q.test")
        ),
    );
    assert!(reply.starts_with("250 "), "{reply}{}", slimta.log());
    let got = sink.wait_for_messages(1, WAIT);
    assert_eq!(got.len(), 1);
    // smtp-sink's dump has LF line ends.
    let content = String::from_utf8_lossy(&got[0].content).replace("\r\n", "\n");
    assert!(
        content.starts_with(
            "Authentication-Results: mx.example.test;\n\tspf=fail smtp.mailfrom=a@example.test;\n\t\
             dkim=none;\n\tdmarc=fail (p=quarantine dis=quarantine) header.from=q.test;\n\tarc=none\n\
             From: alice@q.test\n"
        ),
        "{content}"
    );
    assert!(!content.contains("dmarc=pass"), "{content}");
}

#[test]
fn http_edge_mail_meets_the_same_policy() {
    let dns = dns();
    let sink = SmtpSink::start(&[], true);
    let text =
        config(sink.addr(), &dns).replace("type = \"smtp\"\nlisten", "type = \"http\"\nlisten");
    let slimta = Slimta::start(&text);
    let url = format!("http://{}/messages", slimta.addr());
    let file = slimta.path().join("reject.eml");
    std::fs::write(&file, message("alice@example.test")).unwrap();
    let out = Command::new(support::program("curl", "curl"))
        .args(["-s", "-S", "-i", "--max-time", "30", "-X", "POST"])
        .args(["-H", "Content-Type: message/rfc822"])
        // base64 of a@example.test and b@example.test
        .args(["-H", "X-Envelope-Sender: YUBleGFtcGxlLnRlc3Q="])
        .args(["-H", "X-Envelope-Recipient: YkBleGFtcGxlLnRlc3Q="])
        .arg("--data-binary")
        .arg(format!("@{}", file.display()))
        .arg(&url)
        .output()
        .expect("curl");
    let response = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        response.contains("x-smtp-reply: 550; message=\"5.7.1 Message refused: DMARC policy of example.test (p=reject) failed\""),
        "{response}\n{}",
        slimta.log()
    );
}
