//! The Forward policy through a real queue and relay: what Postfix's
//! smtp-sink receives is the rewritten recipient list, with a one-to-many
//! alias expanded and nobody twice; an alias loop refuses the message
//! before anything is stored, and a reloaded alias file applies to the next
//! message.

use std::time::Duration;

use regex::Regex;
use slimta::policy::forward::{AliasTable, Forward};
use slimta::queue::{MemoryStorage, Queue};
use slimta::relay::smtp::{ClientOptions, StaticSmtpRelay};
use slimta::{Envelope, Handoff};
use test_peers::SmtpSink;

const MESSAGE: &[u8] = b"Subject: forward\r\n\r\nbody\r\n";

fn relay_to(sink: &SmtpSink) -> StaticSmtpRelay {
    let addr = sink.addr();
    StaticSmtpRelay::new(addr.ip().to_string(), addr.port()).options(
        ClientOptions::new()
            .ehlo_as("relay.test")
            .connect_timeout(Duration::from_secs(5))
            .command_timeout(Duration::from_secs(10)),
    )
}

fn envelope(recipients: &[&str]) -> Envelope {
    Envelope::new(
        "sender@old.test",
        recipients.iter().map(|r| (*r).to_string()).collect(),
        MESSAGE.to_vec(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sink_receives_the_rewritten_recipients() {
    let dir = tempfile::tempdir().unwrap();
    let aliases = dir.path().join("aliases");
    std::fs::write(
        &aliases,
        "# the team list\nteam@example.test: ann@example.test, bob@old.test,\n  \
         carl@example.test\n",
    )
    .unwrap();
    let table = AliasTable::load(&aliases).unwrap();
    let forward = Forward::new()
        .add_mapping(Regex::new(r"^(.+)@old\.test$").unwrap(), "$1@new.test")
        .add_mapping(
            Regex::new(r"^postmaster@.*$").unwrap(),
            "admin@example.test",
        )
        .add_aliases(table.clone());
    let sink = SmtpSink::start(&[], true);
    let queue = Queue::new(MemoryStorage::new(), relay_to(&sink)).add_policy(forward);
    queue.start().await.unwrap();

    let results = queue
        .handoff(envelope(&[
            "team@example.test",
            "ann@example.test",
            "bob@new.test",
            "postmaster@other.test",
        ]))
        .await;
    assert_eq!(results.len(), 1);
    assert!(results[0].result.is_ok(), "{results:?}");
    let got = sink.wait_for_messages(1, Duration::from_secs(20));
    assert_eq!(got.len(), 1, "one message delivered");
    assert_eq!(got[0].mail_args, "<sender@old.test>", "sender untouched");
    assert_eq!(
        got[0].rcpt_args,
        [
            "<ann@example.test>",
            "<bob@new.test>",
            "<carl@example.test>",
            "<admin@example.test>"
        ]
    );

    // A loop refuses the message: nothing stored, nothing delivered.
    std::fs::write(
        &aliases,
        "loop@example.test: x@old.test\nx@new.test: loop@example.test\n",
    )
    .unwrap();
    table.reload().unwrap();
    let results = queue.handoff(envelope(&["loop@example.test"])).await;
    let reply = results[0].result.clone().unwrap_err();
    assert_eq!(reply.code(), 554, "{reply:?}");
    assert_eq!(reply.enhanced().unwrap().to_string(), "5.4.6");

    // The reloaded table applies to the next message.
    std::fs::write(&aliases, "team@example.test: dora@example.test\n").unwrap();
    table.reload().unwrap();
    let results = queue.handoff(envelope(&["team@example.test"])).await;
    assert!(results[0].result.is_ok(), "{results:?}");
    let got = sink.wait_for_messages(2, Duration::from_secs(20));
    assert_eq!(got.len(), 2, "the refused message was never delivered");
    // smtp-sink's dumps come in no particular order.
    assert!(
        got.iter().any(|m| m.rcpt_args == ["<dora@example.test>"]),
        "{got:?}"
    );
}
