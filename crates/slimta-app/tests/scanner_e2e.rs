//! The `slimta` binary with the spam scanner policies of its TOML file,
//! against a real spamd and a real rspamd: spam refused at the end of DATA
//! (SMTP edge) or in the HTTP reply (HTTP edge), clean mail relayed to
//! Postfix's smtp-sink with the verdict header; and two milters in a row
//! (clamav-milter, then OpenDKIM): EICAR refused with clamav-milter's reply,
//! clean mail relayed scanned and signed; rspamd's milter through the HTTP
//! edge.

mod common;
mod support;

use std::process::Command;
use std::time::Duration;

use support::{Client, Slimta, SmtpSink, relay_config};
use test_peers::{Rspamd, Spamd};

const WAIT: Duration = Duration::from_secs(20);
const GTUBE: &str = "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X";

/// The relay config with `policy` (a `[policy.scan]` body) listed in the
/// queue's policies.
fn config(sink: std::net::SocketAddr, policy: &str) -> String {
    relay_config(sink, "").replace("[queue.main]\n", "[queue.main]\npolicies = [\"scan\"]\n")
        + &format!("\n[policy.scan]\n{policy}\n")
}

/// Sends `body` over SMTP; the reply to the end of DATA.
fn send(slimta: &Slimta, body: &str) -> String {
    let mut c = Client::connect(slimta.addr());
    c.expect("220 ");
    c.cmd("EHLO client.test", "250");
    c.cmd("MAIL FROM:<a@x.test>", "250");
    c.cmd("RCPT TO:<b@example.test>", "250");
    c.cmd("DATA", "354");
    c.send(format!("{body}.\r\n").as_bytes());
    c.reply()
}

#[test]
fn spamassassin_from_the_config_refuses_spam_and_marks_clean_mail() {
    let spamd = Spamd::start();
    let sink = SmtpSink::start(&[], true);
    let slimta = Slimta::start(&config(
        sink.addr(),
        &format!(
            "type = \"spamassassin\"\naddress = \"{}\"\ntimeout = \"20s\"\nreject = true\non_error = \"tempfail\"",
            spamd.addr()
        ),
    ));
    let reply = send(&slimta, &format!("Subject: spam\r\n\r\n{GTUBE}\r\n"));
    assert_eq!(
        reply,
        "554 5.7.1 Message refused as spam\r\n",
        "{}",
        slimta.log()
    );
    let reply = send(
        &slimta,
        "X-Spam-Status: NO, forged\r\nSubject: lunch\r\nFrom: a@x.test\r\n\r\nNoon?\r\n",
    );
    assert!(reply.starts_with("250 "), "{reply}{}", slimta.log());
    let got = sink.wait_for_messages(1, WAIT);
    assert_eq!(got.len(), 1);
    let content = String::from_utf8_lossy(&got[0].content).into_owned();
    assert!(content.contains("X-Spam-Status: NO, score="), "{content}");
    assert!(!content.contains("forged"), "{content}");

    // spamd gone: tempfail, as configured.
    drop(spamd);
    let reply = send(&slimta, "Subject: later\r\n\r\nx\r\n");
    assert!(reply.starts_with("451 4.7.1 "), "{reply}");
}

fn curl_post(url: &str, body: &std::path::Path) -> String {
    let sender = format!("X-Envelope-Sender: {}", b64("a@x.test"));
    let rcpt = format!("X-Envelope-Recipient: {}", b64("b@example.test"));
    let out = Command::new(support::program("curl", "curl"))
        .args(["-s", "-S", "-i", "--max-time", "30", "-X", "POST"])
        .args([
            "-H",
            "Content-Type: message/rfc822",
            "-H",
            &sender,
            "-H",
            &rcpt,
        ])
        .arg("--data-binary")
        .arg(format!("@{}", body.display()))
        .arg(url)
        .output()
        .expect("curl");
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

fn b64(s: &str) -> String {
    support::python(
        "import base64,sys; print(base64.b64encode(sys.argv[1].encode()).decode())",
        &[s],
    )
    .trim()
    .to_string()
}

#[test]
fn rspamd_from_the_config_refuses_spam_through_the_http_edge() {
    let rspamd = Rspamd::shared();
    let sink = SmtpSink::start(&[], true);
    let text = config(
        sink.addr(),
        &format!(
            "type = \"rspamd\"\nurl = \"{}\"\ntimeout = \"20s\"",
            rspamd.url()
        ),
    )
    .replace("type = \"smtp\"\nlisten", "type = \"http\"\nlisten");
    let slimta = Slimta::start(&text);
    let url = format!("http://{}/messages", slimta.addr());
    let spam = slimta.path().join("spam.eml");
    std::fs::write(&spam, format!("Subject: spam\r\n\r\n{GTUBE}\r\n")).unwrap();
    let response = curl_post(&url, &spam);
    assert!(
        response.contains("x-smtp-reply: 554; message=\"5.7.1 Gtube pattern\""),
        "{response}\n{}",
        slimta.log()
    );
    let clean = slimta.path().join("clean.eml");
    std::fs::write(
        &clean,
        "Subject: lunch\r\nFrom: a@x.test\r\nTo: b@example.test\r\n\
         Date: Fri, 04 Dec 2026 12:00:00 +0000\r\nMessage-Id: <l@x.test>\r\n\r\nNoon?\r\n",
    )
    .unwrap();
    let response = curl_post(&url, &clean);
    assert!(response.contains("x-smtp-reply: 250;"), "{response}");
    let got = sink.wait_for_messages(1, WAIT);
    assert_eq!(got.len(), 1);
    let content = String::from_utf8_lossy(&got[0].content).into_owned();
    assert!(content.contains("X-Spam-Status: NO, score="), "{content}");
}

#[test]
fn milters_from_the_config_refuse_a_virus_and_scan_and_sign_clean_mail() {
    let clam = test_peers::ClamAv::start();
    let dkim = test_peers::OpenDkim::start();
    let sink = SmtpSink::start(&[], true);
    let text = relay_config(sink.addr(), "").replace(
        "[queue.main]\n",
        "[queue.main]\npolicies = [\"clam\", \"dkim\"]\n",
    ) + &format!(
        "\n[policy.clam]\ntype = \"milter\"\naddress = \"{}\"\ntimeout = \"20s\"\n\
         \n[policy.dkim]\ntype = \"milter\"\naddress = \"{}\"\non_error = \"accept\"\n",
        clam.milter_addr(),
        dkim.milter_addr()
    );
    let slimta = Slimta::start(&text);
    let eicar = "From: a@example.test\r\nSubject: virus\r\nMIME-Version: 1.0\r\n\
        Content-Type: multipart/mixed; boundary=\"b1\"\r\n\r\n--b1\r\n\
        Content-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\n\
        WDVPIVAlQEFQWzRcUFpYNTQoUF4pN0NDKTd9JEVJQ0FSLVNUQU5EQVJELUFOVElWSVJVUy1URVNULUZJTEUhJEgrSCo=\r\n\
        --b1--\r\n";
    let reply = send(&slimta, eicar);
    assert_eq!(
        reply,
        "550 5.7.1 Virus found: Eicar-Test-Signature.UNOFFICIAL\r\n",
        "{}\n{}",
        slimta.log(),
        clam.log()
    );
    let reply = send(
        &slimta,
        "From: a@example.test\r\nTo: b@example.test\r\nSubject: lunch\r\n\r\nNoon?\r\n",
    );
    assert!(reply.starts_with("250 "), "{reply}{}", slimta.log());
    let got = sink.wait_for_messages(1, WAIT);
    assert_eq!(got.len(), 1);
    let content = String::from_utf8_lossy(&got[0].content).into_owned();
    assert!(content.contains("X-Virus-Status: Clean"), "{content}");
    assert!(content.contains("DKIM-Signature: v=1;"), "{content}");
    assert!(content.contains("d=example.test"), "{content}");
}

#[test]
fn a_milter_from_the_config_refuses_spam_through_the_http_edge() {
    // The milter policy replays the SMTP stages from the envelope, so it
    // serves the HTTP edge too: rspamd's milter proxy refuses GTUBE.
    let rspamd = Rspamd::shared();
    let sink = SmtpSink::start(&[], true);
    let text = config(
        sink.addr(),
        &format!(
            "type = \"milter\"\naddress = \"{}\"\ntimeout = \"20s\"",
            rspamd.milter_addr()
        ),
    )
    .replace("type = \"smtp\"\nlisten", "type = \"http\"\nlisten");
    let slimta = Slimta::start(&text);
    let url = format!("http://{}/messages", slimta.addr());
    let spam = slimta.path().join("spam.eml");
    std::fs::write(&spam, format!("Subject: spam\r\n\r\n{GTUBE}\r\n")).unwrap();
    let response = curl_post(&url, &spam);
    assert!(
        response.contains("x-smtp-reply: 554; message=\"5.7.1 Gtube pattern\""),
        "{response}\n{}",
        slimta.log()
    );
    assert!(
        sink.wait_for_messages(1, Duration::from_millis(300))
            .is_empty()
    );
}
