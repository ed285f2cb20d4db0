//! SIGHUP through the binary: the configuration file is read again;
//! `accept_domains` and AUTH users change for new sessions, other changes
//! are reported as needing a restart, and a broken file changes nothing.

mod common;
mod support;

use common::config;

use std::fs;
use std::time::{Duration, Instant};

use support::{Client, Slimta};

/// `alice`'s PLAIN credentials (`\0alice\0<password>`) in base64.
const ALICE_OLD: &str = "AGFsaWNlAG9sZA=="; // "old"
const ALICE_NEW: &str = "AGFsaWNlAG5ldw=="; // "new"

fn config(domains: &str, alice: &str, max_concurrency: u32) -> String {
    [
        config::process("mx.example.test", "log_level = \"info\""),
        config::smtp_edge(domains, "reverse_dns = false"),
        format!(
            "[edge.in.auth]\nallow_plaintext = true\nusers = {{ alice = \"{{PLAIN}}{alice}\" }}\n"
        ),
        config::memory_queue(&format!("max_concurrency = {max_concurrency}")),
        config::blackhole_relay(),
    ]
    .concat()
}

fn rewrite(slimta: &Slimta, text: &str) {
    let text = text.replace("{port}", &slimta.addr().port().to_string());
    fs::write(slimta.path().join("slimta.toml"), text).unwrap();
}

/// Sends SIGHUP and waits until the log has `what` once more than before.
fn hup_and_wait(slimta: &Slimta, what: &str) {
    let before = slimta.log().matches(what).count();
    let status = std::process::Command::new("kill")
        .args(["-HUP", &slimta.peer.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(20);
    while slimta.log().matches(what).count() <= before {
        assert!(
            Instant::now() < deadline,
            "no {what:?} in:\n{}",
            slimta.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// RCPT's reply code for `rcpt` in a new session, after AUTH with `auth`
/// (its reply code too) when given.
fn session(slimta: &Slimta, auth: Option<&str>, rcpt: &str) -> (Option<String>, String) {
    let mut c = Client::connect(slimta.addr());
    c.expect("220");
    c.cmd("EHLO client.test", "250");
    let auth_reply = auth.map(|b64| c.cmd(&format!("AUTH PLAIN {b64}"), ""));
    c.cmd("MAIL FROM:<s@x.test>", "250");
    let reply = c.cmd(&format!("RCPT TO:<{rcpt}>"), "");
    c.cmd("QUIT", "221");
    (auth_reply.map(|r| r[..3].to_owned()), reply[..3].to_owned())
}

#[test]
fn sighup_applies_domains_and_users_and_reports_the_rest() {
    let slimta = Slimta::start(&config(r#""example.test""#, "old", 10));
    assert_eq!(session(&slimta, None, "r@other.test").1, "550");
    assert_eq!(
        session(&slimta, Some(ALICE_NEW), "r@example.test")
            .0
            .as_deref(),
        Some("535")
    );
    // An open session, started before the reload.
    let mut open = Client::connect(slimta.addr());
    open.expect("220");
    open.cmd("EHLO client.test", "250");

    rewrite(
        &slimta,
        &config(r#""example.test", "other.test""#, "new", 20),
    );
    hup_and_wait(&slimta, "configuration reloaded");
    let log = slimta.log();
    assert!(log.contains("edge.in.accept_domains"), "{log}");
    assert!(log.contains("edge.in.auth.users"), "{log}");
    assert!(
        log.contains("need a restart") && log.contains("queue.main"),
        "{log}"
    );

    assert_eq!(session(&slimta, None, "r@other.test").1, "250");
    assert_eq!(
        session(&slimta, Some(ALICE_NEW), "r@example.test")
            .0
            .as_deref(),
        Some("235")
    );
    assert_eq!(
        session(&slimta, Some(ALICE_OLD), "r@example.test")
            .0
            .as_deref(),
        Some("535")
    );
    // The open session sees the new domains at its next RCPT.
    open.cmd("MAIL FROM:<s@x.test>", "250");
    open.cmd("RCPT TO:<r@other.test>", "250");
    open.cmd("QUIT", "221");

    // A broken file changes nothing and is reported.
    rewrite(&slimta, "[edge.in]\ntype = \"smtp\"\nlisten = [\n");
    hup_and_wait(&slimta, "configuration not reloaded");
    assert_eq!(session(&slimta, None, "r@other.test").1, "250");
    // So does a malformed secret: all or nothing.
    rewrite(
        &slimta,
        &config(r#""example.test""#, "x\" , bob = \"{NOPE}y", 20),
    );
    hup_and_wait(&slimta, "configuration not reloaded");
    assert_eq!(session(&slimta, None, "r@other.test").1, "250");
}
