//! Partial delivery end to end: the destination refuses one recipient of
//! three temporarily (451 the first time, 250 after). The other two are
//! delivered once, at the first attempt; the refused one arrives later, on
//! its own, and nobody gets the message twice.
//!
//! smtp-sink's fault injection (`-r RCPT`) refuses every recipient, so the
//! destination is a small scripted SMTP server on loopback in this test.

mod common;
mod queue_common;

use common::config;

use std::time::{Duration, Instant};

use queue_common::{Daemon, ScriptedServer, send};

#[test]
fn the_refused_recipient_is_retried_alone() {
    let server = ScriptedServer::start(|rcpt, offered| {
        if rcpt == "b@example.test" && offered == 0 {
            "451 4.2.1 b is busy, try again later".into()
        } else {
            "250 2.1.5 Ok".into()
        }
    });
    let mut daemon = Daemon::new(
        &[
            config::process("mx.example.test", ""),
            config::smtp_edge("\"example.test\"", ""),
            config::disk_queue("{dir}/spool", ""),
            config::retry("1s", Some("1s")),
            config::static_relay(server.addr, ""),
        ]
        .concat(),
    );
    daemon.start();
    let reply = send(
        daemon.addr(),
        "s@x.test",
        &["a@example.test", "b@example.test", "c@example.test"],
        "Subject: partial\r\nMessage-Id: <partial@x.test>\r\n\r\nbody\r\n",
    );
    assert!(reply.starts_with("250 "), "{reply}");

    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline
        && !server
            .transactions()
            .iter()
            .any(|t| t.recipients.iter().any(|r| r == "b@example.test"))
    {
        std::thread::sleep(Duration::from_millis(100));
    }
    // More retries would come at 1 s intervals: give a duplicate the time
    // to show up before counting.
    std::thread::sleep(Duration::from_secs(3));
    let transactions = server.transactions();
    let rcpts: Vec<Vec<String>> = transactions.iter().map(|t| t.recipients.clone()).collect();
    assert_eq!(
        rcpts,
        vec![
            vec!["a@example.test".to_string(), "c@example.test".to_string()],
            vec!["b@example.test".to_string()],
        ],
        "log:\n{}",
        daemon.log_tail(30)
    );
    for t in &transactions {
        assert_eq!(t.sender, "s@x.test");
        assert!(t.data.contains("Message-Id: <partial@x.test>"));
    }
    let log = daemon.log();
    assert!(
        log.contains("<b@example.test> transient: 451 4.2.1"),
        "{}",
        daemon.log_tail(30)
    );
    daemon.stop();
}
