//! The SpamAssassin queue policy against a real spamd (`--local`), behind a
//! real SMTP edge: verdict headers, rejection at the end of DATA with
//! nothing queued, the sender's forged verdict removed, and what happens
//! when spamd is down, absent or silent.

mod scanner_support;

use std::time::Duration;

use scanner_support::{Mta, closed_port, gtube_message, header, plain_message, silent_listener};
use slimta::policy::spam_headers::OnError;
use slimta::policy::spamassassin::SpamAssassin;
use test_peers::Spamd;

#[tokio::test]
async fn gtube_is_marked_spam_with_its_symbols() {
    let spamd = Spamd::start();
    let mta = Mta::start(SpamAssassin::new(spamd.addr())).await;
    let reply = mta.send(&gtube_message()).await;
    assert!(reply.starts_with("250 "), "{reply}\n{}", spamd.log());
    let queued = mta.queued().await;
    assert_eq!(queued.len(), 1);
    let status = header(&queued[0], "X-Spam-Status").unwrap();
    assert!(status.starts_with("YES, score="), "{status}");
    assert!(status.ends_with(" required=5.0"), "{status}");
    let symbols = header(&queued[0], "X-Spam-Symbols").unwrap();
    assert!(symbols.split(',').any(|s| s == "GTUBE"), "{symbols}");
}

#[tokio::test]
async fn a_message_over_max_size_is_stored_unscanned_and_marked_so() {
    let spamd = Spamd::start();
    let policy = SpamAssassin::new(spamd.addr()).reject(true).max_size(4096);
    let mta = Mta::start(policy).await;
    let mut big = gtube_message();
    let padding = format!("{}\r\n", "x".repeat(70)).repeat(100);
    big.push_str(&padding);
    // Spam, but too large to be sent to spamd: stored, marked unknown.
    let reply = mta.send(&big).await;
    assert!(reply.starts_with("250 "), "{reply}");
    let queued = mta.queued().await;
    assert_eq!(queued.len(), 1);
    let status = header(&queued[0], "X-Spam-Status").unwrap();
    assert_eq!(status, "Unknown, not scanned (larger than 4096 bytes)");
    // Under the limit the same policy still asks spamd.
    let reply = mta.send(&gtube_message()).await;
    assert_eq!(reply, "554 5.7.1 Message refused as spam");
}

#[tokio::test]
async fn gtube_is_refused_at_the_end_of_data_and_not_queued_with_reject() {
    let spamd = Spamd::start();
    let mta = Mta::start(SpamAssassin::new(spamd.addr()).reject(true)).await;
    let reply = mta.send(&gtube_message()).await;
    assert_eq!(reply, "554 5.7.1 Message refused as spam");
    assert!(mta.queued().await.is_empty());
    // A clean message still goes through the same policy.
    let reply = mta.send(&plain_message()).await;
    assert!(reply.starts_with("250 "), "{reply}");
    assert_eq!(mta.queued().await.len(), 1);
}

#[tokio::test]
async fn a_plain_message_is_marked_no_and_the_senders_verdict_is_dropped() {
    let spamd = Spamd::start();
    let mta = Mta::start(SpamAssassin::new(spamd.addr()).reject(true)).await;
    let reply = mta.send(&plain_message()).await;
    assert!(reply.starts_with("250 "), "{reply}\n{}", spamd.log());
    let queued = mta.queued().await;
    let message = &queued[0];
    let status = header(message, "X-Spam-Status").unwrap();
    assert!(status.starts_with("NO, score="), "{status}");
    assert!(
        !status.contains("-100.0"),
        "the forged verdict was kept: {message}"
    );
    assert_eq!(message.matches("X-Spam-Status:").count(), 1, "{message}");
    assert!(header(message, "X-Spam-Flag").is_none(), "{message}");
    assert!(message.contains("Shall we have lunch"), "{message}");
}

#[tokio::test]
async fn stopped_spamd_is_accepted_marked_unknown_or_tempfailed() {
    let mut spamd = Spamd::start();
    let addr = spamd.addr();
    spamd.stop();
    let accept = Mta::start(SpamAssassin::new(addr)).await;
    let reply = accept.send(&plain_message()).await;
    assert!(reply.starts_with("250 "), "{reply}");
    let queued = accept.queued().await;
    assert_eq!(
        header(&queued[0], "X-Spam-Status").as_deref(),
        Some("Unknown, spamd unavailable")
    );
    assert!(header(&queued[0], "X-Spam-Symbols").is_none());

    let tempfail = Mta::start(SpamAssassin::new(addr).on_error(OnError::Tempfail)).await;
    let reply = tempfail.send(&plain_message()).await;
    assert_eq!(
        reply,
        "451 4.7.1 Message could not be scanned for spam, try again later"
    );
    assert!(tempfail.queued().await.is_empty());
}

#[tokio::test]
async fn nothing_listening_and_a_silent_peer_get_the_on_error_behaviour() {
    let silent = silent_listener();
    for addr in [closed_port(), silent.local_addr().unwrap()] {
        let policy = SpamAssassin::new(addr).timeout(Duration::from_secs(1));
        let accept = Mta::start(policy.clone()).await;
        let reply = accept.send(&gtube_message()).await;
        assert!(reply.starts_with("250 "), "{addr}: {reply}");
        let queued = accept.queued().await;
        assert_eq!(
            header(&queued[0], "X-Spam-Status").as_deref(),
            Some("Unknown, spamd unavailable"),
            "{addr}"
        );

        let tempfail = Mta::start(policy.on_error(OnError::Tempfail)).await;
        let reply = tempfail.send(&gtube_message()).await;
        assert!(reply.starts_with("451 4.7.1 "), "{addr}: {reply}");
        assert!(tempfail.queued().await.is_empty());
    }
}

#[tokio::test]
async fn scan_reports_spamds_verdict() {
    let spamd = Spamd::start();
    let policy = SpamAssassin::new(spamd.addr());
    let verdict = policy.scan(gtube_message().as_bytes()).await.unwrap();
    assert!(verdict.spam);
    assert!(verdict.score >= 1000.0, "{verdict:?}");
    assert!(verdict.symbols.iter().any(|s| s == "GTUBE"), "{verdict:?}");
    let verdict = policy.scan(plain_message().as_bytes()).await.unwrap();
    assert!(!verdict.spam, "{verdict:?}");
}
