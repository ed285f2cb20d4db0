//! The seed's MDA tutorial from one TOML file (`contrib/config/mda.toml`),
//! run by the real binary: an SMTP edge that refuses unknown recipients,
//! header policies, the forward policy, the SpamAssassin policy against a
//! real spamd, and delivery into a real Dovecot's Maildirs by dovecot-lda.
//! Only ports and paths of the shipped file are replaced.

mod common;
mod support;

use std::time::{Duration, Instant};

use support::{Client, Slimta};
use test_peers::{Dovecot, Spamd};

const GTUBE: &str = "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X";

fn mda_config(spamd: &Spamd, dovecot: &Dovecot) -> String {
    let shipped = include_str!("../../../contrib/config/mda.toml");
    let replaced = [
        ("\"0.0.0.0:25\"", "\"127.0.0.1:{port}\"".to_owned()),
        ("/var/spool/slimta", "{dir}/spool".to_owned()),
        ("127.0.0.1:783", spamd.addr().to_string()),
        (
            "/etc/dovecot/dovecot.conf",
            dovecot.config().display().to_string(),
        ),
    ];
    let mut config = shipped.to_owned();
    for (from, to) in replaced {
        assert!(config.contains(from), "contrib/config/mda.toml lost {from}");
        config = config.replace(from, &to);
    }
    config
}

fn send(slimta: &Slimta, to: &str, subject: &str, body: &str) {
    let mut c = Client::connect(slimta.addr());
    c.expect("220");
    c.cmd("EHLO client.example.net", "250");
    c.cmd("MAIL FROM:<sender@example.net>", "250");
    c.cmd(&format!("RCPT TO:<{to}>"), "250");
    c.cmd("DATA", "354");
    c.send(
        format!(
            "From: sender@example.net\r\nTo: {to}\r\nSubject: {subject}\r\n\r\n{body}\r\n.\r\n"
        )
        .as_bytes(),
    );
    c.expect("250");
    c.cmd("QUIT", "221");
}

fn wait_for_messages(dovecot: &Dovecot, user: &str, count: usize, slimta: &Slimta) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let got = dovecot.messages(user);
        if got.len() >= count || Instant::now() > deadline {
            assert_eq!(
                got.len(),
                count,
                "{user}'s Maildir\n--- slimta log:\n{}\n--- dovecot log:\n{}",
                slimta.log(),
                dovecot.log()
            );
            return got
                .iter()
                .map(|m| String::from_utf8_lossy(m).into_owned())
                .collect();
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn header<'a>(message: &'a str, name: &str) -> Option<&'a str> {
    let head = message.split("\n\n").next().unwrap_or_default();
    head.lines()
        .find(|l| {
            l.len() > name.len()
                && l[..name.len()].eq_ignore_ascii_case(name)
                && l[name.len()..].starts_with(':')
        })
        .map(|l| l[name.len() + 1..].trim())
}

#[test]
fn the_mda_tutorial_files_spam_and_ham_with_their_spam_status() {
    let dovecot = Dovecot::start(&[("alice", None), ("bob", None)]);
    let spamd = Spamd::start();
    let slimta = Slimta::start(&mda_config(&spamd, &dovecot));

    // An unknown user is refused at RCPT with the configured reply.
    let mut c = Client::connect(slimta.addr());
    c.expect("220");
    c.cmd("EHLO client.example.net", "250");
    c.cmd("MAIL FROM:<sender@example.net>", "250");
    let refused = c.cmd("RCPT TO:<mallory@example.test>", "550");
    assert!(
        refused.contains("5.1.1 <mallory@example.test>: Recipient address rejected: User unknown"),
        "{refused}"
    );
    c.cmd("QUIT", "221");

    send(&slimta, "bob@example.test", "cheap pills", GTUBE);
    send(&slimta, "alice@example.test", "lunch", "See you at noon.");
    send(
        &slimta,
        "postmaster@example.test",
        "a report",
        "Your server is fine.",
    );

    let bob = wait_for_messages(&dovecot, "bob", 1, &slimta);
    let status = header(&bob[0], "X-Spam-Status")
        .unwrap_or_else(|| panic!("no X-Spam-Status in {}", bob[0]));
    assert!(status.starts_with("YES"), "{status}");
    assert!(
        header(&bob[0], "X-Spam-Symbols").is_some_and(|s| s.contains("GTUBE")),
        "{}",
        bob[0]
    );

    // alice gets her own message and postmaster's (forwarded to her).
    let alice = wait_for_messages(&dovecot, "alice", 2, &slimta);
    let mut subjects = Vec::new();
    for message in &alice {
        let status = header(message, "X-Spam-Status")
            .unwrap_or_else(|| panic!("no X-Spam-Status in {message}"));
        assert!(status.starts_with("NO"), "{status}");
        for name in ["Received", "Date", "Message-Id"] {
            assert!(header(message, name).is_some(), "no {name} in {message}");
        }
        subjects.push(header(message, "Subject").unwrap_or_default().to_owned());
    }
    subjects.sort();
    assert_eq!(subjects, ["a report", "lunch"]);
}

#[test]
fn the_shipped_mda_file_passes_check_config() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_slimta"))
        .arg("--check-config")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../contrib/config/mda.toml"
        ))
        .output()
        .expect("run slimta");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
