//! `DnsBlocklists` on a real SMTP edge, asking a real dnsmasq: the client
//! connects from 127.0.0.N and the lists answer for N.

#![cfg(feature = "mx")]

mod check_support;

use check_support::{Client, start};
use slimta::dns::Resolver;
use slimta::edge::dnsbl::{DnsBlocklists, DnsblStage};
use slimta::edge::ip_range::IpRange;
use test_peers::Dnsmasq;

/// Who is listed where (the client address reversed under the zone):
/// - 127.0.0.2: zen.test (127.0.0.2), the usual spam source;
/// - 127.0.0.3: zen.test with an answer the filter does not count;
/// - 127.0.0.4: zen.test with 127.0.0.11, inside 127.0.0.10/31;
/// - 127.0.0.5: zen.test and the allow-list list.dnswl.test;
/// - 127.0.0.6: a.test and b.test; 127.0.0.7: a.test alone;
/// - 127.0.0.1: nowhere.
fn dns() -> Dnsmasq {
    Dnsmasq::start(&[
        "--host-record=2.0.0.127.zen.test,127.0.0.2",
        "--txt-record=2.0.0.127.zen.test,listed for testing",
        "--host-record=3.0.0.127.zen.test,127.0.0.3",
        "--host-record=4.0.0.127.zen.test,127.0.0.11",
        "--host-record=5.0.0.127.zen.test,127.0.0.2",
        "--host-record=5.0.0.127.list.dnswl.test,127.0.10.0",
        "--host-record=6.0.0.127.a.test,127.0.0.2",
        "--host-record=6.0.0.127.b.test,127.0.0.2",
        "--host-record=7.0.0.127.a.test,127.0.0.2",
    ])
}

fn range(s: &str) -> IpRange {
    s.parse().unwrap()
}

fn zen_and_dnswl(dns: &Dnsmasq) -> DnsBlocklists {
    DnsBlocklists::new(Resolver::new(&[dns.addr()]).unwrap())
        .list("zen.test", 8, [range("127.0.0.2"), range("127.0.0.10/31")])
        .list("list.dnswl.test", -5, [])
        .threshold(8)
}

/// The RCPT reply a client at `from` gets.
async fn rcpt_reply(addr: std::net::SocketAddr, from: &str) -> String {
    let mut c = Client::connect_from(addr, from).await;
    assert!(c.reply().await.starts_with("220 "));
    c.command("EHLO c.test").await;
    assert!(c.command("MAIL FROM:<a@x.test>").await.starts_with("250 "));
    let reply = c.command("RCPT TO:<b@example.test>").await;
    // The verdict is kept for the session: a second recipient gets the same.
    assert_eq!(c.command("RCPT TO:<c@example.test>").await[..4], reply[..4]);
    reply
}

#[tokio::test]
async fn listed_clients_are_refused_at_rcpt_with_the_address_and_the_lists() {
    let dns = dns();
    let edge = start(zen_and_dnswl(&dns)).await;
    assert_eq!(
        rcpt_reply(edge.addr, "127.0.0.2").await,
        "550 5.7.1 Service unavailable; client [127.0.0.2] listed by zen.test\r\n"
    );
}

#[tokio::test]
async fn an_allow_list_cancels_and_unlisted_clients_pass() {
    let dns = dns();
    let edge = start(zen_and_dnswl(&dns)).await;
    for from in ["127.0.0.5", "127.0.0.1"] {
        assert_eq!(
            rcpt_reply(edge.addr, from).await,
            "250 2.1.5 Recipient <b@example.test> ok\r\n",
            "{from}"
        );
    }
}

#[tokio::test]
async fn only_the_configured_responses_count() {
    let dns = dns();
    let edge = start(zen_and_dnswl(&dns)).await;
    assert!(
        rcpt_reply(edge.addr, "127.0.0.3").await.starts_with("250 "),
        "127.0.0.3 is not one of the responses"
    );
    assert!(
        rcpt_reply(edge.addr, "127.0.0.4")
            .await
            .starts_with("550 5.7.1 Service unavailable; client [127.0.0.4]"),
        "127.0.0.11 is in 127.0.0.10/31"
    );
    // Without a filter, any 127/8 answer counts.
    let any = DnsBlocklists::new(Resolver::new(&[dns.addr()]).unwrap())
        .list("zen.test", 1, [])
        .threshold(1);
    assert!(any.check("127.0.0.3".parse().unwrap()).await.refused);
}

#[tokio::test]
async fn scores_of_two_lists_add_up_to_the_threshold() {
    let dns = dns();
    let lists = DnsBlocklists::new(Resolver::new(&[dns.addr()]).unwrap())
        .list("a.test", 4, [])
        .list("b.test", 4, [])
        .threshold(8);
    let edge = start(lists).await;
    assert_eq!(
        rcpt_reply(edge.addr, "127.0.0.6").await,
        "550 5.7.1 Service unavailable; client [127.0.0.6] listed by a.test, b.test\r\n"
    );
    assert!(rcpt_reply(edge.addr, "127.0.0.7").await.starts_with("250 "));
}

#[tokio::test]
async fn at_the_banner_a_listed_client_gets_554_and_only_quit() {
    let dns = dns();
    let edge = start(zen_and_dnswl(&dns).stage(DnsblStage::Banner)).await;
    let mut c = Client::connect_from(edge.addr, "127.0.0.2").await;
    assert_eq!(
        c.reply().await,
        "554 5.7.1 Service unavailable; client [127.0.0.2] listed by zen.test\r\n"
    );
    assert!(c.command("EHLO c.test").await.starts_with("503 "));
    assert!(c.command("QUIT").await.starts_with("221 "));

    let mut c = Client::connect_from(edge.addr, "127.0.0.1").await;
    assert_eq!(c.reply().await, "220 mx.test ESMTP slimta-rs\r\n");
}

#[tokio::test]
async fn a_list_that_does_not_answer_counts_nothing() {
    // A UDP socket that never answers, and no TCP listener on its port.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let dns = dns();
    let lists = DnsBlocklists::new(Resolver::new(&[silent.local_addr().unwrap()]).unwrap())
        .list("zen.test", 8, [])
        .timeout(std::time::Duration::from_millis(300));
    let v = lists.check("127.0.0.2".parse().unwrap()).await;
    assert_eq!((v.score, v.refused), (0, false));
    // The same list through the real server does list it.
    let lists = DnsBlocklists::new(Resolver::new(&[dns.addr()]).unwrap()).list("zen.test", 8, []);
    assert!(lists.check("127.0.0.2".parse().unwrap()).await.refused);
}
