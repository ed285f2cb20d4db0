//! Source addresses per relay against smtp-sink, whose dumps record the
//! address each connection came from (`X-Client-Addr`).

use std::net::IpAddr;
use std::time::Duration;

use slimta::relay::smtp::{ClientOptions, SourceSelection, StaticSmtpRelay};
use slimta::{Envelope, Relay};
use test_peers::SmtpSink;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

async fn send(relay: &StaticSmtpRelay, n: usize) {
    for i in 0..n {
        let env = Envelope::new(
            "sender@x.test",
            vec!["rcpt@y.test".into()],
            format!("Subject: {i}\r\n\r\nbody\r\n").into_bytes(),
        );
        let d = relay.attempt(&env, 1).await.expect("delivered");
        assert!(d.result_for(0).is_ok(), "{:?}", d.result_for(0));
    }
}

fn options() -> ClientOptions {
    ClientOptions::new()
        .ehlo_as("relay.test")
        .connect_timeout(Duration::from_secs(5))
        .command_timeout(Duration::from_secs(10))
}

fn relay_with(sink: &SmtpSink, options: ClientOptions) -> StaticSmtpRelay {
    StaticSmtpRelay::new(sink.addr().ip().to_string(), sink.addr().port()).options(options)
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

#[tokio::test]
async fn round_robin_over_the_source_addresses() {
    let sink = SmtpSink::start(&[], true);
    // No idle reuse: every message is a new connection, so a new pick.
    let relay = relay_with(
        &sink,
        options().source_addresses([ip("127.0.0.1"), ip("127.0.0.2")]),
    );
    send(&relay, 4).await;
    let addrs = sink.wait_for_messages(4, Duration::from_secs(5));
    assert_eq!(addrs.len(), 4);
    assert_eq!(
        sorted(sink.client_addrs()),
        ["127.0.0.1", "127.0.0.1", "127.0.0.2", "127.0.0.2"]
    );
}

#[tokio::test]
async fn random_picks_stay_in_the_pool_and_other_families_are_skipped() {
    let sink = SmtpSink::start(&[], true);
    let relay = relay_with(
        &sink,
        options()
            .source_addresses([ip("::1"), ip("127.0.0.3"), ip("127.0.0.4")])
            .source_selection(SourceSelection::Random),
    );
    send(&relay, 6).await;
    sink.wait_for_messages(6, Duration::from_secs(5));
    let addrs = sink.client_addrs();
    assert_eq!(addrs.len(), 6);
    assert!(
        addrs.iter().all(|a| a == "127.0.0.3" || a == "127.0.0.4"),
        "{addrs:?}"
    );
}

#[tokio::test]
async fn without_an_address_of_the_family_the_system_chooses() {
    let sink = SmtpSink::start(&[], true);
    let relay = relay_with(&sink, options().source_addresses([ip("::1")]));
    send(&relay, 1).await;
    sink.wait_for_messages(1, Duration::from_secs(5));
    assert_eq!(sink.client_addrs(), ["127.0.0.1"]);
}
