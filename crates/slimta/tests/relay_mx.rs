//! MxSmtpRelay against real peers: a dnsmasq started by the test answers
//! every DNS query (the system resolver is never asked), and Postfix's
//! smtp-sink listens on 127.0.0.2 / 127.0.0.3 as the mail exchangers.
#![cfg(feature = "mx")]

use std::net::SocketAddr;
use std::time::Duration;

use slimta::dns::{MxAnswer, MxHost, Resolver};
use slimta::relay::smtp::{ClientOptions, MxSmtpRelay};
use slimta::{Envelope, Relay};
use test_peers::{Dnsmasq, SmtpSink, crlf_to_lf};

const MESSAGE: &[u8] = b"Subject: mx\r\n\r\nvia MX\r\n";

fn dns() -> Dnsmasq {
    Dnsmasq::start(&[
        "--mx-host=example.test,mx1.example.test,10",
        "--mx-host=example.test,mx2.example.test,20",
        "--host-record=mx1.example.test,127.0.0.2",
        "--host-record=mx2.example.test,127.0.0.3",
        "--mx-host=nullmx.test,.,0",
        "--host-record=plain.test,127.0.0.3",
        "--mx-host=dangling.test,nowhere.test,10",
        "--mx-host=equal.test,mx2.example.test,10",
        "--mx-host=equal.test,mx1.example.test,10",
    ])
}

fn relay(dns: &Dnsmasq, port: u16) -> MxSmtpRelay {
    let resolver = Resolver::new(&[dns.addr()]).expect("resolver");
    MxSmtpRelay::new(resolver).port(port).options(
        ClientOptions::new()
            .ehlo_as("relay.test")
            .connect_timeout(Duration::from_secs(5))
            .command_timeout(Duration::from_secs(10)),
    )
}

/// A port for the exchangers on 127.0.0.2/127.0.0.3, held on 127.0.0.1 while
/// the returned listener lives, so that no test running in parallel picks
/// the same port for its own exchangers.
fn mx_port() -> (std::net::TcpListener, u16) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().unwrap().port();
    (listener, port)
}

fn sink(ip: [u8; 4], port: u16) -> SmtpSink {
    SmtpSink::start_at(SocketAddr::from((ip, port)), &[], true)
}

fn envelope(recipients: &[&str]) -> Envelope {
    Envelope::new(
        "sender@x.test",
        recipients.iter().map(|r| (*r).to_string()).collect(),
        MESSAGE.to_vec(),
    )
}

#[tokio::test]
async fn resolver_reads_mx_records_from_the_local_server() {
    let dns = dns();
    let resolver = Resolver::new(&[dns.addr()]).unwrap();
    assert_eq!(
        resolver.mx("example.test").await.unwrap(),
        MxAnswer::Hosts(vec![
            MxHost {
                preference: 10,
                host: "mx1.example.test".into()
            },
            MxHost {
                preference: 20,
                host: "mx2.example.test".into()
            },
        ])
    );
    assert_eq!(resolver.mx("nullmx.test").await.unwrap(), MxAnswer::NullMx);
    assert_eq!(resolver.mx("plain.test").await.unwrap(), MxAnswer::NoMx);
    assert!(resolver.mx("nope.test").await.unwrap_err().is_not_found());
    assert_eq!(
        resolver.ips("plain.test").await.unwrap(),
        vec!["127.0.0.3".parse::<std::net::IpAddr>().unwrap()]
    );
    assert!(resolver.ips("nope.test").await.unwrap_err().is_not_found());
}

#[tokio::test]
async fn most_preferred_mx_gets_the_mail() {
    let dns = dns();
    let (_reserved, port) = mx_port();
    let (mx1, mx2) = (sink([127, 0, 0, 2], port), sink([127, 0, 0, 3], port));
    let delivery = relay(&dns, port)
        .attempt(&envelope(&["a@example.test"]), 1)
        .await
        .expect("delivered");
    assert!(delivery.result_for(0).is_ok());
    let got = mx1.wait_for_messages(1, Duration::from_secs(5));
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].content, crlf_to_lf(MESSAGE));
    assert!(mx2.messages().is_empty());
}

#[tokio::test]
async fn next_mx_when_the_first_is_down() {
    let dns = dns();
    let (_reserved, port) = mx_port();
    let mx2 = sink([127, 0, 0, 3], port);
    let delivery = relay(&dns, port)
        .attempt(&envelope(&["a@example.test"]), 1)
        .await
        .expect("delivered");
    assert!(delivery.result_for(0).is_ok());
    assert_eq!(mx2.wait_for_messages(1, Duration::from_secs(5)).len(), 1);
}

#[tokio::test]
async fn next_mx_when_the_first_refuses_the_session() {
    let dns = dns();
    let (_reserved, port) = mx_port();
    let _mx1 = SmtpSink::start_at(
        SocketAddr::from(([127, 0, 0, 2], port)),
        &["-Q", "EHLO"],
        true,
    );
    let mx2 = sink([127, 0, 0, 3], port);
    let delivery = relay(&dns, port)
        .attempt(&envelope(&["a@example.test"]), 1)
        .await
        .expect("delivered");
    assert!(delivery.result_for(0).is_ok());
    assert_eq!(mx2.wait_for_messages(1, Duration::from_secs(5)).len(), 1);
}

#[tokio::test]
async fn no_further_mx_once_the_transaction_was_judged() {
    let dns = dns();
    let (_reserved, port) = mx_port();
    let _mx1 = SmtpSink::start_at(
        SocketAddr::from(([127, 0, 0, 2], port)),
        &["-r", "MAIL"],
        true,
    );
    let mx2 = sink([127, 0, 0, 3], port);
    let err = relay(&dns, port)
        .attempt(&envelope(&["a@example.test"]), 1)
        .await
        .unwrap_err();
    assert!(err.is_transient());
    assert!(
        err.reply()
            .text()
            .contains(&format!("mx1.example.test[127.0.0.2]:{port} said:")),
        "{err}"
    );
    assert!(mx2.messages().is_empty());
}

#[tokio::test]
async fn all_mx_down_is_transient() {
    let dns = dns();
    let (_reserved, port) = mx_port();
    let err = relay(&dns, port)
        .attempt(&envelope(&["a@example.test"]), 1)
        .await
        .unwrap_err();
    assert!(err.is_transient());
    assert_eq!(err.reply().code(), 451);
    assert!(
        err.reply().text().contains("mx2.example.test"),
        "the last MX tried: {err}"
    );
}

#[tokio::test]
async fn domain_without_mx_uses_its_address() {
    let dns = dns();
    let (_reserved, port) = mx_port();
    let target = sink([127, 0, 0, 3], port);
    let delivery = relay(&dns, port)
        .attempt(&envelope(&["b@plain.test"]), 1)
        .await
        .expect("delivered");
    assert!(delivery.result_for(0).is_ok());
    let got = target.wait_for_messages(1, Duration::from_secs(5));
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].rcpt_args, vec!["<b@plain.test>"]);
}

#[tokio::test]
async fn null_mx_and_nxdomain_are_permanent() {
    let dns = dns();
    let (_reserved, port) = mx_port();
    let relay = relay(&dns, port);
    let err = relay
        .attempt(&envelope(&["c@nullmx.test"]), 1)
        .await
        .unwrap_err();
    assert!(err.is_permanent());
    assert_eq!(
        err.reply().to_string(),
        "556 5.1.10 Domain nullmx.test does not accept mail (null MX)"
    );
    let err = relay
        .attempt(&envelope(&["d@nope.test"]), 1)
        .await
        .unwrap_err();
    assert!(err.is_permanent());
    assert_eq!(
        err.reply().to_string(),
        "550 5.1.2 Domain nope.test does not exist"
    );
}

#[tokio::test]
async fn other_dns_failures_are_transient() {
    // dnsmasq refuses names outside .test (it has no upstream).
    let dns = dns();
    let err = relay(&dns, mx_port().1)
        .attempt(&envelope(&["e@example.org"]), 1)
        .await
        .unwrap_err();
    assert!(err.is_transient(), "{err}");
    assert_eq!(err.reply().enhanced().unwrap().to_string(), "4.4.3");
    // An MX whose host does not resolve: transient, like Postfix.
    let err = relay(&dns, mx_port().1)
        .attempt(&envelope(&["f@dangling.test"]), 1)
        .await
        .unwrap_err();
    assert!(err.is_transient(), "{err}");
}

#[tokio::test]
async fn recipients_grouped_by_domain_and_merged_in_order() {
    let dns = dns();
    let (_reserved, port) = mx_port();
    let (mx1, plain) = (sink([127, 0, 0, 2], port), sink([127, 0, 0, 3], port));
    let rcpts = [
        "a1@example.test",
        "c@nullmx.test",
        "b@PLAIN.test",
        "d@nope.test",
        "a2@Example.Test",
        "local",
    ];
    let delivery = relay(&dns, port)
        .attempt(&envelope(&rcpts), 1)
        .await
        .expect("per recipient");
    assert!(delivery.result_for(0).is_ok());
    assert_eq!(delivery.result_for(1).unwrap_err().reply().code(), 556);
    assert!(delivery.result_for(2).is_ok());
    assert_eq!(delivery.result_for(3).unwrap_err().reply().code(), 550);
    assert!(delivery.result_for(4).is_ok());
    let local = delivery.result_for(5).unwrap_err();
    assert!(local.is_permanent());
    let got = mx1.wait_for_messages(1, Duration::from_secs(5));
    assert_eq!(got.len(), 1);
    assert_eq!(
        got[0].rcpt_args,
        vec!["<a1@example.test>", "<a2@Example.Test>"]
    );
    let got = plain.wait_for_messages(1, Duration::from_secs(5));
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].rcpt_args, vec!["<b@PLAIN.test>"]);
}

#[tokio::test]
async fn forced_mx_skips_the_lookup() {
    let dns = dns();
    let (_reserved, port) = mx_port();
    let target = sink([127, 0, 0, 3], port);
    // forced.test has no records at all; mx2's name resolves via dnsmasq.
    let relay = relay(&dns, port).force_mx("Forced.test", "mx2.example.test");
    let delivery = relay
        .attempt(&envelope(&["z@forced.test"]), 1)
        .await
        .expect("delivered");
    assert!(delivery.result_for(0).is_ok());
    assert_eq!(target.wait_for_messages(1, Duration::from_secs(5)).len(), 1);
}

#[tokio::test]
async fn retries_rotate_among_equal_preferences() {
    let dns = dns();
    let (_reserved, port) = mx_port();
    let (mx1, mx2) = (sink([127, 0, 0, 2], port), sink([127, 0, 0, 3], port));
    let relay = relay(&dns, port);
    for attempt in 1..=2 {
        let delivery = relay
            .attempt(&envelope(&["q@equal.test"]), attempt)
            .await
            .expect("delivered");
        assert!(delivery.result_for(0).is_ok());
    }
    assert_eq!(
        mx1.wait_for_messages(1, Duration::from_secs(5)).len(),
        1,
        "attempt 1: mx1 (first by name)"
    );
    assert_eq!(
        mx2.wait_for_messages(1, Duration::from_secs(5)).len(),
        1,
        "attempt 2: mx2"
    );
}

#[tokio::test]
async fn address_literals_skip_the_dns() {
    let dns = dns();
    let (_reserved, port) = mx_port();
    let target = sink([127, 0, 0, 3], port);
    let rcpts = ["lit@[127.0.0.3]", "bad@[not-an-ip]"];
    let delivery = relay(&dns, port)
        .attempt(&envelope(&rcpts), 1)
        .await
        .expect("per recipient");
    assert!(delivery.result_for(0).is_ok());
    let bad = delivery.result_for(1).unwrap_err();
    assert!(bad.is_permanent());
    assert_eq!(bad.reply().code(), 553);
    let got = target.wait_for_messages(1, Duration::from_secs(5));
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].rcpt_args, vec!["<lit@[127.0.0.3]>"]);
}

/// Answers are served from the resolver's cache for their TTL (300 s from
/// this dnsmasq): with the name server gone the second lookup still
/// answers, while a name never asked before does not.
#[tokio::test]
async fn mx_answers_are_cached_for_their_ttl() {
    let dns = Dnsmasq::start(&[
        "--mx-host=cached.test,mx.cached.test,10",
        "--host-record=mx.cached.test,127.0.0.9",
        "--mx-host=other.test,mx.cached.test,10",
    ]);
    let resolver = Resolver::new(&[dns.addr()]).unwrap();
    let first = resolver.mx("cached.test").await.unwrap();
    assert!(
        matches!(&first, MxAnswer::Hosts(h) if h[0].host.trim_end_matches('.') == "mx.cached.test"),
        "{first:?}"
    );
    drop(dns);
    let again = resolver
        .mx("cached.test")
        .await
        .expect("served from the cache");
    assert_eq!(first, again);
    assert!(
        resolver.mx("other.test").await.is_err(),
        "an uncached name answered without a name server"
    );
}
