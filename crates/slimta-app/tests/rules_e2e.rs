//! Address rules and recipient rewriting through the binary: a
//! `[check.rcpt]` of type `recipients` reading a file refuses an unlisted
//! recipient with the configured reply, and accepts it once the file lists
//! it and SIGHUP re-read it; a broken edit keeps the list. A
//! `[policy.fwd]` rewrites recipients before the relay sees them, its alias
//! file re-read on SIGHUP, and `--check-config` names a loop through its
//! rules.

mod common;
mod support;

use common::config;

use std::fs;
use std::time::{Duration, Instant};

use support::{Client, Slimta, SmtpSink};

/// Sends SIGHUP and waits until the log has `what` once more than before.
fn hup_and_wait(slimta: &Slimta, what: &str) {
    let before = slimta.log().matches(what).count();
    let status = std::process::Command::new("kill")
        .args(["-HUP", &slimta.peer.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(30);
    while slimta.log().matches(what).count() <= before {
        assert!(
            Instant::now() < deadline,
            "no {what:?} in:\n{}",
            slimta.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// RCPT's whole reply for `rcpt` in a new session.
fn rcpt_reply(slimta: &Slimta, rcpt: &str) -> String {
    let mut c = Client::connect(slimta.addr());
    c.expect("220");
    c.cmd("EHLO client.test", "250");
    c.cmd("MAIL FROM:<s@x.test>", "250");
    let reply = c.cmd(&format!("RCPT TO:<{rcpt}>"), "");
    c.cmd("QUIT", "221");
    reply
}

/// Polls `rcpt_reply` until it starts with `code`, within a generous
/// deadline (the reload is logged before it is visible to sessions only by
/// a hair, but nothing here depends on timing).
fn wait_for_rcpt(slimta: &Slimta, rcpt: &str, code: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let reply = rcpt_reply(slimta, rcpt);
        if reply.starts_with(code) || Instant::now() >= deadline {
            return reply;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// One message to `recipients`, which must all be accepted.
fn send(slimta: &Slimta, recipients: &[&str]) {
    let mut c = Client::connect(slimta.addr());
    c.expect("220");
    c.cmd("EHLO client.test", "250");
    c.cmd("MAIL FROM:<s@x.test>", "250");
    for r in recipients {
        c.cmd(&format!("RCPT TO:<{r}>"), "250");
    }
    c.cmd("DATA", "354");
    c.cmd("Subject: fwd\r\n\r\nbody\r\n.", "250");
    c.cmd("QUIT", "221");
}

#[test]
fn a_recipient_file_is_reread_on_sighup() {
    let dir = tempfile::tempdir().unwrap();
    let list = dir.path().join("recipients");
    fs::write(&list, "# users\nann@example.test\n").unwrap();
    let text = [
        config::process("mx.example.test", "log_level = \"info\""),
        config::smtp_edge(
            r#""example.test""#,
            "reverse_dns = false\nchecks = [\"rcpt\"]",
        ),
        format!(
            "\n[check.rcpt]\ntype = \"recipients\"\nallow = [\"fixed@example.test\"]\n\
             file = \"{}\"\n\
             reply = {{ code = 550, message = \"5.1.1 <{{address}}>: Recipient address rejected\" }}\n",
            list.display()
        ),
        config::memory_queue(""),
        config::blackhole_relay(),
    ]
    .concat();
    let slimta = Slimta::start(&text);

    assert!(rcpt_reply(&slimta, "ann@example.test").starts_with("250"));
    assert!(rcpt_reply(&slimta, "Fixed@Example.test").starts_with("250"));
    assert_eq!(
        rcpt_reply(&slimta, "bob@example.test").trim_end(),
        "550 5.1.1 <bob@example.test>: Recipient address rejected"
    );

    fs::write(&list, "ann@example.test\nbob@example.test\n").unwrap();
    hup_and_wait(&slimta, "file reloaded");
    let reply = wait_for_rcpt(&slimta, "bob@example.test", "250");
    assert!(reply.starts_with("250"), "{reply}\n{}", slimta.log());

    // A file that went missing keeps what was loaded, and says so.
    fs::remove_file(&list).unwrap();
    hup_and_wait(&slimta, "file not reloaded");
    assert!(rcpt_reply(&slimta, "bob@example.test").starts_with("250"));
    assert!(slimta.log().contains("check.rcpt.file"), "{}", slimta.log());
}

#[test]
fn forward_rewrites_before_the_relay_and_check_config_finds_loops() {
    let sink = SmtpSink::start(&[], true);
    let dir = tempfile::tempdir().unwrap();
    let aliases = dir.path().join("aliases");
    fs::write(
        &aliases,
        "team@example.test: ann@example.test, bob@old.test\n",
    )
    .unwrap();
    let policy = format!(
        "\n[policy.fwd]\ntype = \"forward\"\n\
         rules = [ {{ match = '^(.+)@old\\.test$', replace = '$1@new.test' }},\n\
                   {{ file = \"{}\" }} ]\n",
        aliases.display()
    );
    let text = [
        config::process("mx.example.test", "log_level = \"info\""),
        config::smtp_edge(r#""example.test""#, "reverse_dns = false"),
        config::memory_queue("policies = [\"fwd\"]"),
        config::static_relay(sink.addr(), ""),
        policy,
    ]
    .concat();
    let slimta = Slimta::start(&text);
    send(&slimta, &["team@example.test", "ann@example.test"]);
    let got = sink.wait_for_messages(1, Duration::from_secs(30));
    assert_eq!(got.len(), 1, "{}", slimta.log());
    assert_eq!(got[0].rcpt_args, ["<ann@example.test>", "<bob@new.test>"]);

    // SIGHUP re-reads the alias file for the next message.
    fs::write(&aliases, "team@example.test: carl@example.test\n").unwrap();
    hup_and_wait(&slimta, "file reloaded");
    send(&slimta, &["team@example.test"]);
    let got = sink.wait_for_messages(2, Duration::from_secs(30));
    assert!(
        got.iter().any(|m| m.rcpt_args == ["<carl@example.test>"]),
        "{got:?}\n{}",
        slimta.log()
    );

    // The same file with a loop through the regex rule: --check-config
    // refuses it and names the chain.
    fs::write(
        &aliases,
        "team@example.test: bob@old.test\nbob@new.test: team@example.test\n",
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_slimta"))
        .arg("--check-config")
        .arg(slimta.path().join("slimta.toml"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains(
            "policy.fwd.rules: Routing loop detected: bob@new.test -> team@example.test -> bob@old.test -> bob@new.test"
        ),
        "{stderr}"
    );
}
