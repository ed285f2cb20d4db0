//! `EnforceSpf` against SPF records served by a real dnsmasq, through a
//! real SMTP edge where the reply or the stored message matters.

#![cfg(feature = "auth")]

mod check_support;

use std::time::Duration;

use check_support::{Client, start};
use slimta::dns::Resolver;
use slimta::edge::spf::{EnforceSpf, SpfIdentity, SpfResult, SpfStage};
use slimta::reply_template::ReplyTemplate;
use test_peers::Dnsmasq;

/// The client is 127.0.0.1 (the tests connect from it).
fn dns() -> Dnsmasq {
    Dnsmasq::start(&[
        "--txt-record=pass.test,v=spf1 ip4:127.0.0.0/8 -all",
        "--txt-record=fail.test,v=spf1 ip4:192.0.2.1 -all",
        "--txt-record=exp.test,v=spf1 -all exp=why.exp.test",
        "--txt-record=why.exp.test,%{i} is not one of %{d}'s servers",
        "--txt-record=softfail.test,v=spf1 ip4:192.0.2.1 ~all",
        "--txt-record=neutral.test,v=spf1 ?all",
        "--txt-record=perm.test,v=spf1 ip4:not-an-address -all",
        "--txt-record=helo-fail.test,v=spf1 -all",
        "--txt-record=helo-pass.test,v=spf1 ip4:127.0.0.1 -all",
    ])
}

fn template(code: u16, message: &str) -> ReplyTemplate {
    ReplyTemplate::new(code, message).unwrap()
}

/// The brief's rules, plus one for permerror.
fn enforce(resolver: &Resolver) -> EnforceSpf {
    EnforceSpf::new(resolver)
        .set_enforcement(
            SpfResult::Fail,
            template(550, "5.7.1 Access denied: {reason}"),
        )
        .set_enforcement(SpfResult::SoftFail, template(250, "2.0.0 Ok; {reason}"))
        .set_enforcement(
            SpfResult::TempError,
            template(451, "4.7.1 SPF temporary error: {reason}"),
        )
        .set_enforcement(
            SpfResult::PermError,
            template(550, "5.7.24 SPF permanent error: {reason}"),
        )
        .receiver("mx.test")
        .received_spf(true)
}

/// The MAIL FROM reply for `sender` after `HELO helo`.
async fn mail_reply(addr: std::net::SocketAddr, helo: &str, sender: &str) -> String {
    let mut c = Client::connect_from(addr, "127.0.0.1").await;
    c.reply().await;
    c.command(&format!("HELO {helo}")).await;
    c.command(&format!("MAIL FROM:<{sender}>")).await
}

#[tokio::test]
async fn each_record_gives_its_result() {
    let dns = dns();
    let spf = enforce(&Resolver::new(&[dns.addr()]).unwrap());
    let ip = "127.0.0.1".parse().unwrap();
    let cases = [
        ("c.test", "a@pass.test", SpfResult::Pass),
        ("c.test", "a@Fail.Test", SpfResult::Fail),
        ("c.test", "a@softfail.test", SpfResult::SoftFail),
        ("c.test", "a@neutral.test", SpfResult::Neutral),
        ("c.test", "a@none.test", SpfResult::None),
        ("c.test", "a@perm.test", SpfResult::PermError),
        // dnsmasq has no upstream: outside .test it answers REFUSED.
        ("c.test", "a@elsewhere.example", SpfResult::TempError),
        // The null sender is judged by its HELO name (RFC 7208 2.3).
        ("helo-fail.test", "", SpfResult::Fail),
        ("helo-pass.test", "", SpfResult::Pass),
        ("[127.0.0.1]", "", SpfResult::None),
    ];
    for (helo, sender, want) in cases {
        let got = spf.check(ip, helo, sender).await;
        assert_eq!(got.result, want, "{helo} {sender}: {got:?}");
    }
    let helo = spf.check(ip, "helo-fail.test", "").await;
    assert_eq!(helo.identity, SpfIdentity::Helo);
    assert_eq!(helo.envelope_from, "postmaster@helo-fail.test");
}

#[tokio::test]
async fn replies_follow_the_rules_and_fill_the_reason() {
    let dns = dns();
    let edge = start(enforce(&Resolver::new(&[dns.addr()]).unwrap())).await;
    let cases = [
        (
            "c.test",
            "a@pass.test",
            "250 2.1.0 Sender <a@pass.test> ok\r\n",
        ),
        (
            "c.test",
            "a@fail.test",
            "550 5.7.1 Access denied: domain of a@fail.test does not designate 127.0.0.1 as permitted sender\r\n",
        ),
        (
            "c.test",
            "a@exp.test",
            "550 5.7.1 Access denied: 127.0.0.1 is not one of exp.test's servers\r\n",
        ),
        (
            "c.test",
            "a@softfail.test",
            "250 2.0.0 Ok; domain of transitioning a@softfail.test does not designate 127.0.0.1 as permitted sender\r\n",
        ),
        // No rule for neutral and none: accepted as the server would.
        (
            "c.test",
            "a@neutral.test",
            "250 2.1.0 Sender <a@neutral.test> ok\r\n",
        ),
        (
            "c.test",
            "a@none.test",
            "250 2.1.0 Sender <a@none.test> ok\r\n",
        ),
        (
            "c.test",
            "a@perm.test",
            "550 5.7.24 SPF permanent error: the SPF record of perm.test is invalid\r\n",
        ),
        (
            "helo-fail.test",
            "",
            "550 5.7.1 Access denied: domain of postmaster@helo-fail.test does not designate 127.0.0.1 as permitted sender\r\n",
        ),
    ];
    for (helo, sender, want) in cases {
        assert_eq!(mail_reply(edge.addr, helo, sender).await, want, "{sender}");
    }
}

#[tokio::test]
async fn a_nameserver_that_never_answers_is_a_temperror() {
    // A UDP socket that never answers, and no TCP listener on its port.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let resolver = Resolver::new(&[silent.local_addr().unwrap()]).unwrap();
    let edge = start(enforce(&resolver).timeout(Duration::from_millis(300))).await;
    let reply = mail_reply(edge.addr, "c.test", "a@pass.test").await;
    assert_eq!(
        reply,
        "451 4.7.1 SPF temporary error: SPF evaluation for pass.test timed out after 300ms\r\n"
    );
}

#[tokio::test]
async fn accepted_mail_carries_received_spf() {
    let dns = dns();
    let edge = start(enforce(&Resolver::new(&[dns.addr()]).unwrap())).await;
    let mut c = Client::connect_from(edge.addr, "127.0.0.1").await;
    c.reply().await;
    c.command("EHLO c.test").await;
    for (sender, result) in [("a@pass.test", "pass"), ("a@softfail.test", "softfail")] {
        assert!(
            c.command(&format!("MAIL FROM:<{sender}>"))
                .await
                .starts_with("250 ")
        );
        assert!(
            c.command("RCPT TO:<b@example.test>")
                .await
                .starts_with("250 ")
        );
        assert!(c.command("DATA").await.starts_with("354 "));
        assert!(
            c.command("Received-SPF: pass (forged by the client)\r\nSubject: hi\r\n\r\nbody\r\n.")
                .await
                .starts_with("250 ")
        );
        let stored = edge.recorder.0.lock().unwrap().last().unwrap().clone();
        let text = String::from_utf8(stored.message).unwrap();
        let want_start = format!("Received-SPF: {result} (mx.test: domain of ");
        assert!(text.starts_with(&want_start), "{text}");
        let header_end = text
            .find("\r\nReceived-SPF: pass (forged")
            .expect("the client's header stays");
        let ours = &text[..header_end];
        for part in [
            "receiver=mx.test;",
            "client-ip=127.0.0.1;",
            &format!("envelope-from=\"{sender}\";"),
            "helo=c.test;",
            "identity=mailfrom;",
        ] {
            assert!(ours.contains(part), "{part} in {ours}");
        }
        assert!(text.ends_with("Subject: hi\r\n\r\nbody\r\n"), "{text}");
    }
}

#[tokio::test]
async fn at_the_rcpt_stage_mail_from_is_accepted_and_each_recipient_refused() {
    let dns = dns();
    let spf = enforce(&Resolver::new(&[dns.addr()]).unwrap()).stage(SpfStage::Rcpt);
    let edge = start(spf).await;
    let mut c = Client::connect_from(edge.addr, "127.0.0.1").await;
    c.reply().await;
    c.command("EHLO c.test").await;
    assert!(
        c.command("MAIL FROM:<a@fail.test>")
            .await
            .starts_with("250 ")
    );
    for rcpt in ["b@example.test", "c@example.test"] {
        assert_eq!(
            c.command(&format!("RCPT TO:<{rcpt}>")).await,
            "550 5.7.1 Access denied: domain of a@fail.test does not designate 127.0.0.1 as permitted sender\r\n"
        );
    }
    assert!(c.command("RSET").await.starts_with("250 "));
    assert!(
        c.command("MAIL FROM:<a@pass.test>")
            .await
            .starts_with("250 ")
    );
    assert!(
        c.command("RCPT TO:<b@example.test>")
            .await
            .starts_with("250 ")
    );
}
