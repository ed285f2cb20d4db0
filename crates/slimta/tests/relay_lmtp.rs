//! StaticLmtpRelay against a real Dovecot LMTP server, over TCP and over its
//! unix socket: mail lands in the Maildir, and recipients refused at RCPT
//! (unknown user) or after the data (over quota) get their own results.
//! Dovecot offers CHUNKING: over TCP the message goes with BDAT (a wiretap
//! shows it), over the socket with DATA (`chunking(false)`), and the
//! per-recipient replies after the data are the same either way.

use std::time::Duration;

use slimta::relay::lmtp::StaticLmtpRelay;
use slimta::relay::smtp::ClientOptions;
use slimta::{Envelope, Relay};
use test_peers::{Dovecot, Wiretap};

fn envelope(recipients: &[&str], message: &[u8]) -> Envelope {
    Envelope::new(
        "sender@x.test",
        recipients.iter().map(|r| (*r).to_string()).collect(),
        message.to_vec(),
    )
}

fn big_message() -> Vec<u8> {
    let mut m = b"From: sender@x.test\r\nSubject: big\r\nMessage-Id: <big@x.test>\r\n\r\n".to_vec();
    for _ in 0..100 {
        m.extend_from_slice(&[b'a'; 70]);
        m.extend_from_slice(b"\r\n");
    }
    m
}

fn options() -> ClientOptions {
    ClientOptions::new()
        .ehlo_as("relay.test")
        .connect_timeout(Duration::from_secs(5))
        .command_timeout(Duration::from_secs(20))
}

fn tuned_with(relay: StaticLmtpRelay, options: ClientOptions) -> StaticLmtpRelay {
    relay.options(options)
}

fn tuned(relay: StaticLmtpRelay) -> StaticLmtpRelay {
    tuned_with(relay, options())
}

/// `data_stage` is how the over-quota error names the step it answered.
async fn per_recipient_outcomes(relay: StaticLmtpRelay, dovecot: &Dovecot, data_stage: &str) {
    let env = envelope(
        &[
            "alice@example.test",
            "ghost@example.test",
            "small@example.test",
            "bob@example.test",
        ],
        &big_message(),
    );
    let delivery = relay.attempt(&env, 1).await.expect("session worked");
    let alice = delivery.result_for(0).expect("alice delivered");
    assert_eq!(alice.code(), 250, "{alice:?}");
    let ghost = delivery.result_for(1).expect_err("ghost refused");
    assert!(ghost.is_permanent(), "{ghost}");
    assert_eq!(ghost.reply().code(), 550, "{ghost}");
    assert!(ghost.reply().text().contains("RCPT TO"), "{ghost}");
    let small = delivery.result_for(2).expect_err("small is over quota");
    assert!(small.is_permanent(), "{small}");
    assert_eq!(small.reply().code(), 552, "{small}");
    assert_eq!(
        small.reply().enhanced().map(|e| e.to_string()).as_deref(),
        Some("5.2.2")
    );
    assert!(
        small
            .reply()
            .text()
            .contains(&format!("in reply to {data_stage}")),
        "{small}"
    );
    let bob = delivery.result_for(3).expect("bob delivered");
    assert_eq!(bob.code(), 250, "{bob:?}");

    for user in ["alice", "bob"] {
        let got = dovecot.messages(user);
        assert_eq!(got.len(), 1, "{user}: {}", dovecot.log());
        let text = String::from_utf8_lossy(&got[0]);
        assert!(text.contains("Message-Id: <big@x.test>"), "{text}");
        assert!(text.contains(&"a".repeat(70)), "{text}");
    }
    assert!(dovecot.messages("small").is_empty());
    assert!(dovecot.messages("ghost").is_empty());
}

const USERS: &[(&str, Option<&str>)] = &[("alice", None), ("bob", None), ("small", Some("1K"))];

#[tokio::test]
async fn delivers_over_tcp_with_per_recipient_results() {
    let dovecot = Dovecot::start(USERS);
    let tap = Wiretap::start(dovecot.lmtp_addr());
    let addr = tap.addr();
    let relay = tuned(StaticLmtpRelay::new(addr.ip().to_string(), addr.port()));
    per_recipient_outcomes(relay, &dovecot, "BDAT").await;
    let sent = String::from_utf8_lossy(&tap.sent()[0]).into_owned();
    let size = big_message().len();
    assert!(sent.contains(&format!("BDAT {size} LAST\r\n")), "{sent}");
    assert!(!sent.contains("DATA\r\n"), "{sent}");
}

#[tokio::test]
async fn delivers_over_a_unix_socket_with_per_recipient_results() {
    let dovecot = Dovecot::start(USERS);
    let relay = tuned_with(
        StaticLmtpRelay::unix(dovecot.lmtp_socket()),
        options().chunking(false),
    );
    per_recipient_outcomes(relay, &dovecot, "end of data").await;
}

#[tokio::test]
async fn reuses_a_pooled_session_for_the_next_message() {
    let dovecot = Dovecot::start(USERS);
    let relay = tuned_with(
        StaticLmtpRelay::unix(dovecot.lmtp_socket()),
        options().pool_size(1).idle_timeout(Duration::from_secs(30)),
    );
    for i in 0..3 {
        let msg = format!("Subject: m{i}\r\n\r\nbody {i}\r\n");
        let d = relay
            .attempt(&envelope(&["alice@example.test"], msg.as_bytes()), 1)
            .await
            .expect("delivered");
        assert!(d.result_for(0).is_ok(), "{:?}", d.result_for(0));
    }
    assert_eq!(dovecot.messages("alice").len(), 3);
    // The TCP probe of the start-up check is "from 127.0.0.1"; the relay uses the socket.
    let connects = dovecot.log().matches("Connect from local").count();
    assert_eq!(
        connects,
        1,
        "one pooled session expected:\n{}",
        dovecot.log()
    );
}

#[tokio::test]
async fn a_missing_socket_is_a_transient_failure() {
    let dir = tempfile::tempdir().unwrap();
    let relay = tuned(StaticLmtpRelay::unix(dir.path().join("nothing-here")));
    let err = relay
        .attempt(
            &envelope(&["alice@example.test"], b"Subject: x\r\n\r\nx\r\n"),
            1,
        )
        .await
        .expect_err("no server");
    assert!(err.is_transient(), "{err}");
    assert!(err.reply().text().contains("nothing-here"), "{err}");
}
