//! Black-box relay tests between two `slimta` processes: A relays with
//! STARTTLS (verified against a test CA) and AUTH into B's SMTP edge, and
//! A's HTTP relay posts into B's HTTP edge. B relays on to smtp-sink.

mod common;
mod support;

use common::config;

use std::time::Duration;

use support::{Client, Slimta, SmtpSink, make_pki, relay_config};

const WAIT: Duration = Duration::from_secs(30);

fn add_received(config: &str) -> String {
    config.replace(
        "relay = \"out\"\n",
        "relay = \"out\"\npolicies = [\"add_received_header\"]\n",
    )
}

fn send(slimta: &Slimta, rcpt: &str, subject: &str) {
    let mut c = Client::connect(slimta.addr());
    c.expect("220 ");
    c.cmd("EHLO client.test", "250");
    c.cmd("MAIL FROM:<s@x.test>", "250");
    c.cmd(&format!("RCPT TO:<{rcpt}>"), "250");
    c.cmd("DATA", "354");
    c.send(format!("Subject: {subject}\r\n\r\nbody\r\n.\r\n").as_bytes());
    c.expect("250 2.6.0");
    c.cmd("QUIT", "221");
}

/// A front MTA with a config of its own: an SMTP edge for `accepts` relaying
/// to `relay` (a `[relay.out]` body).
fn front(accepts: &str, relay: &str) -> Slimta {
    Slimta::start(
        &[
            config::process("a.example.test", ""),
            config::smtp_edge(&format!("\"{accepts}\""), "reverse_dns = false"),
            config::memory_queue(""),
            config::retry("1s", None),
            format!("\n[relay.out]\n{relay}\n"),
        ]
        .concat(),
    )
}

#[test]
fn starttls_and_auth_into_a_second_slimta() {
    let sink = SmtpSink::start(&[], true);
    let pki = tempfile::tempdir().unwrap();
    let ca = make_pki(pki.path(), "Relay test CA");
    let d = pki.path().display();
    // B: STARTTLS + AUTH; far.test is not its domain, so A must authenticate.
    let b = Slimta::start(&add_received(&relay_config(
        sink.addr(),
        &format!(
            "tls = {{ cert = \"{d}/cert.pem\", key = \"{d}/key.pem\" }}\n[edge.in.auth]\nusers = {{ alice = \"{{PLAIN}}wonderland\" }}\n"
        ),
    )));
    let a = front(
        "far.test",
        &format!(
            "type = \"static\"\nhost = \"127.0.0.1\"\nport = {}\ntls = \"required\"\ntls_ca_file = \"{}\"\ncredentials = {{ username = \"alice\", password = \"wonderland\" }}\n",
            b.addr().port(),
            ca.display()
        ),
    );
    send(&a, "r@far.test", "through two slimtas");
    let got = sink.wait_for_messages(1, WAIT);
    assert_eq!(got.len(), 1, "A:\n{}\nB:\n{}", a.log(), b.log());
    let text = String::from_utf8_lossy(&got[0].content);
    assert!(
        text.contains("by mx.example.test (slimta-rs) with ESMTPSA"),
        "{text}"
    );
    assert!(text.contains("from a.example.test"), "{text}");

    // Without the right CA A refuses to send (required TLS, verified).
    let other = tempfile::tempdir().unwrap();
    let wrong_ca = make_pki(other.path(), "Some other CA");
    let untrusting = front(
        "far.test",
        &format!(
            "type = \"static\"\nhost = \"127.0.0.1\"\nport = {}\ntls = \"required\"\ntls_ca_file = \"{}\"\ncredentials = {{ username = \"alice\", password = \"wonderland\" }}\n",
            b.addr().port(),
            wrong_ca.display()
        ),
    );
    send(&untrusting, "r@far.test", "must not pass");
    let deadline = std::time::Instant::now() + WAIT;
    while !untrusting.log().contains("transient") && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        untrusting.log().contains("transient"),
        "{}",
        untrusting.log()
    );
    assert_eq!(
        sink.messages().len(),
        1,
        "a message went through an unverified TLS session"
    );
}

#[test]
fn http_relay_into_a_second_slimtas_http_edge() {
    let sink = SmtpSink::start(&[], true);
    let b = Slimta::start(
        &relay_config(sink.addr(), "")
            .replace("type = \"smtp\"\nlisten", "type = \"http\"\nlisten"),
    );
    let a = front(
        "example.test",
        &format!("type = \"http\"\nurl = \"http://{}/messages\"\n", b.addr()),
    );
    send(&a, "r@example.test", "over http");
    let got = sink.wait_for_messages(1, WAIT);
    assert_eq!(got.len(), 1, "A:\n{}\nB:\n{}", a.log(), b.log());
    assert!(got[0].mail_args.starts_with("<s@x.test>"), "{:?}", got[0]);
    assert_eq!(got[0].rcpt_args, vec!["<r@example.test>"]);
    support::assert_delivered_as_sent(&got[0].content, b"Subject: over http\r\n\r\nbody\r\n");
}
