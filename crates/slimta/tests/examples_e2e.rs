//! The examples run end to end: each is started as its own program on a
//! free port, pointed at a real peer, and sent mail with swaks.
//!
//! `cargo test` builds the examples before it runs this; the test still
//! asks cargo for the one it runs (with its own features, so that is a
//! no-op then), which makes `--test examples_e2e` alone work too.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use test_peers::{Dovecot, Peer, free_port, swaks};

/// The example `name`, built (a no-op when it is fresh) with this test's
/// features and profile, so the run never uses a stale binary.
fn example(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target dir");
    let features: Vec<&str> = [
        ("mx", cfg!(feature = "mx")),
        ("tls", cfg!(feature = "tls")),
        ("http", cfg!(feature = "http")),
        ("http-relay", cfg!(feature = "http-relay")),
    ]
    .into_iter()
    .filter_map(|(feature, on)| on.then_some(feature))
    .collect();
    let mut build = Command::new(env!("CARGO"));
    build
        .args([
            "build",
            "-p",
            "slimta",
            "--example",
            name,
            "--no-default-features",
        ])
        .arg(format!("--features={}", features.join(",")));
    if dir.ends_with("release") {
        build.arg("--release");
    }
    let status = build.status().expect("run cargo build --example");
    assert!(status.success(), "cargo build --example {name} failed");
    dir.join("examples").join(name)
}

#[test]
fn mda_example_delivers_into_dovecot_and_refuses_unknown_users() {
    let dovecot = Dovecot::start(&[("alice", None)]);
    let addr: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let mut command = Command::new(example("mda"));
    command
        .arg(addr.to_string())
        .arg(dovecot.config())
        .arg("alice");
    let _mda = Peer::spawn(command, addr, "the mda example");

    let unknown = swaks(addr, &["--from", "s@x.test", "--to", "ghost@example.test"]);
    assert!(!unknown.status.success());
    let transcript = String::from_utf8_lossy(&unknown.stdout);
    assert!(transcript.contains("550 5.1.1"), "{transcript}");

    let sent = swaks(
        addr,
        &[
            "--from",
            "s@x.test",
            "--to",
            "alice@example.test",
            "--header",
            "Subject: via the example",
            "--body",
            "hello mda",
        ],
    );
    assert!(
        sent.status.success(),
        "{}",
        String::from_utf8_lossy(&sent.stdout)
    );

    let deadline = Instant::now() + Duration::from_secs(30);
    let mut got = dovecot.messages("alice");
    while got.is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
        got = dovecot.messages("alice");
    }
    assert_eq!(got.len(), 1, "{}", dovecot.log());
    let message = String::from_utf8_lossy(&got[0]);
    for needle in [
        "Subject: via the example",
        "hello mda",
        "Received: ",
        "Message-Id: ",
        "Date: ",
    ] {
        assert!(message.contains(needle), "no {needle:?} in {message}");
    }
}
