//! The two recipient splits through the binary: a message for three
//! recipients in two domains reaches a real smtp-sink as one transaction
//! per recipient (`recipient_split`) or per domain
//! (`recipient_domain_split`), and no recipient gets it twice.

mod common;
mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use common::config;
use support::{Client, Slimta, SmtpSink};

const RECIPIENTS: [&str; 3] = ["ann@a.test", "bob@b.test", "cat@a.test"];

fn run(split: &str) -> Vec<Vec<String>> {
    let sink = SmtpSink::start(&[], true);
    let text = [
        config::process("mx.example.test", ""),
        config::smtp_edge(r#""a.test", "b.test""#, "reverse_dns = false"),
        config::memory_queue("policies = [\"split\"]"),
        config::static_relay(sink.addr(), ""),
        format!("\n[policy.split]\ntype = \"{split}\"\n"),
    ]
    .concat();
    let slimta = Slimta::start(&text);
    let mut c = Client::connect(slimta.addr());
    c.expect("220");
    c.cmd("EHLO client.test", "250");
    c.cmd("MAIL FROM:<s@x.test>", "250");
    for r in RECIPIENTS {
        c.cmd(&format!("RCPT TO:<{r}>"), "250");
    }
    c.cmd("DATA", "354");
    c.cmd("Subject: split\r\n\r\nbody\r\n.", "250");
    c.cmd("QUIT", "221");
    let want = if split == "recipient_split" { 3 } else { 2 };
    let got = sink.wait_for_messages(want, Duration::from_secs(30));
    // Nothing more arrives: give a duplicate the time a retry would take.
    std::thread::sleep(Duration::from_millis(500));
    let got_now = sink.messages();
    assert_eq!(got_now.len(), got.len(), "{got_now:?}\n{}", slimta.log());
    let mut transactions: Vec<Vec<String>> = got.iter().map(|m| m.rcpt_args.clone()).collect();
    transactions.sort();
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for r in transactions.iter().flatten() {
        *seen.entry(r.clone()).or_default() += 1;
    }
    assert!(
        seen.values().all(|&n| n == 1),
        "a recipient got it twice: {seen:?}"
    );
    assert_eq!(seen.len(), 3, "{seen:?}");
    for m in &got {
        assert!(
            String::from_utf8_lossy(&m.content).contains("Subject: split"),
            "{m:?}"
        );
    }
    transactions
}

#[test]
fn recipient_split_gives_one_transaction_per_recipient() {
    assert_eq!(
        run("recipient_split"),
        [["<ann@a.test>"], ["<bob@b.test>"], ["<cat@a.test>"]]
    );
}

#[test]
fn recipient_domain_split_gives_one_transaction_per_domain() {
    assert_eq!(
        run("recipient_domain_split"),
        [vec!["<ann@a.test>", "<cat@a.test>"], vec!["<bob@b.test>"]]
    );
}
