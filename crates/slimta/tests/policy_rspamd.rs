//! The rspamd queue policy against a real rspamd 3.4 (one instance for the
//! whole binary: it takes about 9 s to start), behind a real SMTP edge:
//! GTUBE refused with rspamd's own message and not queued, a plain message
//! accepted and marked NO with the sender's forged verdict dropped, and
//! rspamd unreachable handled by `on_error`.

mod scanner_support;

use std::time::Duration;

use scanner_support::{Mta, closed_port, gtube_message, header, plain_message, silent_listener};
use slimta::Envelope;
use slimta::policy::rspamd::Rspamd;
use slimta::policy::rspamd::protocol::Action;
use slimta::policy::spam_headers::OnError;

fn rspamd() -> Rspamd {
    Rspamd::new(&test_peers::Rspamd::shared().url()).unwrap()
}

#[tokio::test]
async fn gtube_is_refused_with_rspamds_message_and_not_queued() {
    let mta = Mta::start(rspamd()).await;
    let reply = mta.send(&gtube_message()).await;
    assert_eq!(
        reply,
        "554 5.7.1 Gtube pattern",
        "{}",
        test_peers::Rspamd::shared().log()
    );
    assert!(mta.queued().await.is_empty());
}

#[tokio::test]
async fn a_plain_message_is_accepted_marked_no_and_the_senders_verdict_is_dropped() {
    let mta = Mta::start(rspamd()).await;
    let reply = mta.send(&plain_message()).await;
    assert!(reply.starts_with("250 "), "{reply}");
    let queued = mta.queued().await;
    assert_eq!(queued.len(), 1);
    let message = &queued[0];
    let status = header(message, "X-Spam-Status").unwrap();
    assert!(status.starts_with("NO, score="), "{message}");
    assert!(status.ends_with(" required=15.0"), "{message}");
    assert!(
        !status.contains("-100.0"),
        "the forged verdict was kept: {message}"
    );
    assert_eq!(message.matches("X-Spam-Status:").count(), 1, "{message}");
    assert!(header(message, "X-Spam-Flag").is_none(), "{message}");
    assert!(header(message, "X-Spam-Symbols").is_some(), "{message}");
    assert!(message.contains("Shall we have lunch"), "{message}");
}

#[tokio::test]
async fn add_header_is_accepted_marked_yes_with_rspamds_milter_headers() {
    // The test rspamd adds headers from score 3; missing Date and
    // Message-Id score 3.4.
    let mta = Mta::start(rspamd()).await;
    let message =
        "X-Spam: No\r\nFrom: a@x.test\r\nTo: b@example.test\r\nSubject: hi\r\n\r\nHello\r\n";
    let reply = mta.send(message).await;
    assert!(reply.starts_with("250 "), "{reply}");
    let queued = mta.queued().await;
    let message = &queued[0];
    let status = header(message, "X-Spam-Status").unwrap();
    assert!(status.starts_with("YES, score=3."), "{message}");
    assert!(
        header(message, "X-Spam-Symbols")
            .unwrap()
            .contains("MISSING_MID"),
        "{message}"
    );
    // rspamd's milter_headers module (X-Spamd-Bar, X-Spam-Status in the
    // test rspamd) gives header changes: its bar is added, its status is
    // not (ours is the one), and the sender's X-Spam is gone.
    assert_eq!(
        header(message, "X-Spamd-Bar").as_deref(),
        Some("+++"),
        "{message}"
    );
    assert_eq!(message.matches("X-Spam-Status:").count(), 1, "{message}");
    assert!(header(message, "X-Spam").is_none(), "{message}");
}

#[tokio::test]
async fn scan_sends_the_envelope_and_reads_the_verdict() {
    let policy = rspamd();
    let mut envelope = Envelope::new(
        "a@x.test",
        vec!["b@example.test".into(), "c@example.test".into()],
        gtube_message().into_bytes(),
    );
    envelope.client.ip = Some("127.0.0.1".parse().unwrap());
    envelope.client.helo = Some("client.test".into());
    envelope.client.auth = Some("alice".into());
    let verdict = policy.scan(&envelope).await.unwrap();
    assert_eq!(verdict.action, Action::Reject);
    assert_eq!(verdict.smtp_message.as_deref(), Some("Gtube pattern"));
    assert!(verdict.symbols.iter().any(|s| s == "GTUBE"), "{verdict:?}");

    envelope.message = plain_message().into_bytes();
    let verdict = policy.scan(&envelope).await.unwrap();
    assert_eq!(verdict.action, Action::NoAction, "{verdict:?}");
    // These compare the message's From and To with the envelope, so they
    // show that the From and Rcpt headers reached rspamd.
    let has = |v: &slimta::policy::rspamd::protocol::RspamdResponse, s: &str| {
        v.symbols.iter().any(|x| x == s)
    };
    assert!(has(&verdict, "FROM_EQ_ENVFROM"), "{verdict:?}");
    assert!(has(&verdict, "TO_MATCH_ENVRCPT_ALL"), "{verdict:?}");
    envelope.sender = "other@x.test".into();
    envelope.recipients = vec!["z@example.test".into()];
    let verdict = policy.scan(&envelope).await.unwrap();
    assert!(!has(&verdict, "FROM_EQ_ENVFROM"), "{verdict:?}");
    assert!(!has(&verdict, "TO_MATCH_ENVRCPT_ALL"), "{verdict:?}");
}

#[tokio::test]
async fn rspamd_unreachable_gets_the_on_error_behaviour() {
    let silent = silent_listener();
    for addr in [closed_port(), silent.local_addr().unwrap()] {
        let url = format!("http://{addr}");
        let policy = Rspamd::new(&url).unwrap().timeout(Duration::from_secs(1));
        let accept = Mta::start(policy.clone()).await;
        let reply = accept.send(&gtube_message()).await;
        assert!(reply.starts_with("250 "), "{addr}: {reply}");
        let queued = accept.queued().await;
        assert_eq!(
            header(&queued[0], "X-Spam-Status").as_deref(),
            Some("Unknown, rspamd unavailable"),
            "{addr}"
        );

        let tempfail = Mta::start(policy.on_error(OnError::Tempfail)).await;
        let reply = tempfail.send(&gtube_message()).await;
        assert_eq!(
            reply, "451 4.7.1 Message could not be scanned for spam, try again later",
            "{addr}"
        );
        assert!(tempfail.queued().await.is_empty());
    }
}

#[tokio::test]
async fn a_non_rspamd_http_answer_is_an_error_not_a_verdict() {
    // rspamd's controller answers /checkv2 with an error status (it wants
    // its password or a different path); the policy must not take that for
    // a verdict.
    let peer = test_peers::Rspamd::shared();
    let url = format!("{}/nonexistent", peer.url());
    let policy = Rspamd::new(&url).unwrap().on_error(OnError::Tempfail);
    let mta = Mta::start(policy).await;
    let reply = mta.send(&plain_message()).await;
    assert!(reply.starts_with("451 4.7.1 "), "{reply}");
}
