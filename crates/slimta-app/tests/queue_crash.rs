//! The queue's promise under SIGKILL: every message answered `250` reaches
//! the destination at least once, even when the daemon is killed with
//! `kill -9` in the middle of a load and restarted on the same spool.
//!
//! The client is Python's smtplib from several threads; it prints the
//! unique Message-Id of every message the daemon acknowledged. The sink is
//! Postfix's `smtp-sink -d`, which dumps every message it receives.
//! Duplicates are allowed (at-least-once is the contract: a message
//! relayed but not yet recorded as delivered when the kill came is sent
//! again after the restart) and are counted and printed, not failed.

mod common;
mod queue_common;

use common::config;

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader};
use std::time::{Duration, Instant};

use queue_common::{Daemon, SmtpSink, load_client, message_id};

#[test]
fn every_acknowledged_message_survives_kill_9() {
    let sink = SmtpSink::start(&[], true);
    let mut daemon = Daemon::new(
        &[
            config::process("mx.example.test", "log_level = \"info\""),
            config::smtp_edge("\"example.test\"", ""),
            config::disk_queue("{dir}/spool", ""),
            config::retry("1s", Some("2s")),
            // One connection to the sink, so delivery lags the eight
            // clients and the kill finds a backlog in the spool.
            config::static_relay(sink.addr(), "pool_size = 1"),
        ]
        .concat(),
    );
    daemon.start();

    let mut client = load_client(&[daemon.port], 8, 400, 3, "crash");
    let lines = BufReader::new(client.stdout.take().expect("stdout"));
    let kill_after = 600;
    let mut acked = HashSet::new();
    let mut errors = 0usize;
    let mut killed_at = None;
    for line in lines.lines() {
        let line = line.expect("client output");
        if let Some(id) = line.strip_prefix("ACK ") {
            assert!(acked.insert(id.to_string()), "client reused {id}");
        } else if line.starts_with("ERR ") {
            errors += 1;
        } else if line == "DONE" {
            break;
        }
        if killed_at.is_none() && acked.len() >= kill_after {
            daemon.kill9();
            killed_at = Some(acked.len());
        }
    }
    let _ = client.wait();
    let killed_at = killed_at.unwrap_or_else(|| {
        panic!(
            "the client finished ({} acknowledged) before the kill; log:\n{}",
            acked.len(),
            daemon.log_tail(40)
        )
    });
    let delivered_before_restart = sink.messages().len();

    daemon.start();
    let deadline = Instant::now() + Duration::from_secs(180);
    let counts = loop {
        let mut counts: HashMap<String, usize> = HashMap::new();
        for m in sink.messages() {
            if let Some(id) = message_id(&m.content) {
                *counts.entry(id).or_default() += 1;
            }
        }
        let missing = acked.iter().filter(|id| !counts.contains_key(*id)).count();
        if missing == 0 || Instant::now() >= deadline {
            break counts;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    let missing: Vec<&String> = acked
        .iter()
        .filter(|id| !counts.contains_key(*id))
        .collect();
    let duplicates = counts.values().filter(|&&n| n > 1).count();
    let unacked_delivered = counts.keys().filter(|id| !acked.contains(*id)).count();
    println!(
        "crash test: {} acknowledged ({killed_at} before kill -9, {errors} client errors after it), \
         {delivered_before_restart} at the sink before the restart, {} distinct at the sink after, \
         {duplicates} delivered twice or more, {unacked_delivered} delivered without an acknowledgement, \
         {} missing",
        acked.len(),
        counts.len(),
        missing.len()
    );
    assert!(
        missing.is_empty(),
        "{} acknowledged messages never arrived, e.g. {:?}\nlog tail:\n{}",
        missing.len(),
        missing.iter().take(5).collect::<Vec<_>>(),
        daemon.log_tail(60)
    );
    let log = daemon.log();
    let restart = log.split("---- restart ----").nth(1).unwrap_or_default();
    let reloaded = restart
        .lines()
        .find(|l| l.contains("disk spool opened"))
        .unwrap_or_else(|| panic!("no spool reload logged:\n{}", daemon.log_tail(40)));
    println!("crash test: restart: {reloaded}");
    daemon.stop();
}
