//! The Redis queue end to end: real `slimta` processes, a real
//! redis-server (appendonly, appendfsync always) on loopback, Python's
//! smtplib as the client and Postfix's `smtp-sink -d` as the relay target.
//!
//! - kill -9 of slimta under load: every message answered `250` is
//!   delivered after the restart (its leased messages once their lease
//!   ends);
//! - redis-server killed and restarted in the middle of a load: what was
//!   acknowledged survives, new mail gets `451 4.3.0` while Redis is away,
//!   intake resumes after;
//! - two slimta processes on one Redis, 2,000 messages into both edges,
//!   one killed with -9 mid-run: every message delivered, the killed
//!   one's leased messages by the other after the lease;
//! - `slimta queue list/show/retry/delete/stats` on the store itself, with
//!   the daemon running (its dispatcher sees a retry) and stopped.
//!
//! Duplicates are allowed (at-least-once: a message relayed but not yet
//! recorded when a process died is sent again by whoever takes it next)
//! and are counted and printed, not failed. The tests run one at a time.

mod common;
mod queue_common;

use common::config;

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use queue_common::{Daemon, SmtpSink, load_client, message_id};
use test_peers::RedisServer;

/// One test at a time: each runs several processes on two shared cores.
static SERIAL: Mutex<()> = Mutex::new(());

fn redis_queue(url: &str, prefix: &str) -> String {
    format!(
        "\n[queue.main]\ntype = \"redis\"\nurl = \"{url}\"\nprefix = \"{prefix}\"\n\
         lease = \"3s\"\ntimeout = \"2s\"\nrelay = \"out\"\n"
    )
}

fn daemon_config(url: &str, prefix: &str, sink: &SmtpSink) -> String {
    [
        config::process("mx.example.test", "log_level = \"info\""),
        config::smtp_edge("\"example.test\"", ""),
        redis_queue(url, prefix),
        config::retry("1s", Some("2s")),
        // One connection to the sink per process, so delivery lags the
        // clients and a kill finds messages queued and leased.
        config::static_relay(sink.addr(), "pool_size = 1"),
    ]
    .concat()
}

fn client(ports: &[u16], threads: usize, per_thread: usize, max_failures: usize) -> Child {
    load_client(ports, threads, per_thread, max_failures, "redis")
}

/// What the client said, read line by line with `on_ack(acked so far)`
/// called after each acknowledgement.
#[derive(Default)]
struct Heard {
    acked: HashSet<String>,
    errors: Vec<String>,
}

fn listen(child: &mut Child, mut on_ack: impl FnMut(usize, &Heard)) -> Heard {
    let lines = BufReader::new(child.stdout.take().expect("stdout"));
    let mut heard = Heard::default();
    for line in lines.lines() {
        let line = line.expect("client output");
        if let Some(id) = line.strip_prefix("ACK ") {
            assert!(heard.acked.insert(id.to_string()), "client reused {id}");
            on_ack(heard.acked.len(), &heard);
        } else if let Some(e) = line.strip_prefix("ERR ") {
            heard.errors.push(e.to_owned());
        } else if line == "DONE" {
            break;
        }
    }
    let _ = child.wait();
    heard
}

/// Message-Id -> how many times the sink got it, once every acknowledged
/// one arrived (or the deadline passed).
fn wait_delivered(
    sink: &SmtpSink,
    acked: &HashSet<String>,
    within: Duration,
) -> HashMap<String, usize> {
    let deadline = Instant::now() + within;
    loop {
        let mut counts: HashMap<String, usize> = HashMap::new();
        for m in sink.messages() {
            if let Some(id) = message_id(&m.content) {
                *counts.entry(id).or_default() += 1;
            }
        }
        let missing = acked.iter().filter(|id| !counts.contains_key(*id)).count();
        if missing == 0 || Instant::now() >= deadline {
            return counts;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// Fails the test, with the logs, if an acknowledged message is missing;
/// returns (duplicates, delivered without an acknowledgement).
fn assert_none_missing(
    what: &str,
    acked: &HashSet<String>,
    counts: &HashMap<String, usize>,
    daemons: &[&Daemon],
) -> (usize, usize) {
    let missing: Vec<&String> = acked
        .iter()
        .filter(|id| !counts.contains_key(*id))
        .collect();
    let duplicates = counts.values().filter(|&&n| n > 1).count();
    let unacked = counts.keys().filter(|id| !acked.contains(*id)).count();
    let logs: Vec<String> = daemons.iter().map(|d| d.log_tail(40)).collect();
    assert!(
        missing.is_empty(),
        "{what}: {} of {} acknowledged messages never arrived, e.g. {:?}\nlogs:\n{}",
        missing.len(),
        acked.len(),
        missing.iter().take(5).collect::<Vec<_>>(),
        logs.join("\n==== next process ====\n")
    );
    (duplicates, unacked)
}

/// `owner:expiry` of every message hash holding a lease under `prefix`.
fn leases(server: &RedisServer, prefix: &str) -> Vec<String> {
    const SCRIPT: &str = "local out, cursor = {}, '0' \
        repeat local r = redis.call('SCAN', cursor, 'MATCH', ARGV[1] .. 'msg:*', 'COUNT', 1000) \
        cursor = r[1] for _, k in ipairs(r[2]) do local l = redis.call('HGET', k, 'lease') \
        if l then table.insert(out, l) end end until cursor == '0' return out";
    let cli = test_peers::require("redis-cli", "redis-tools");
    let out = Command::new(cli)
        .args([
            "-p",
            &server.addr().port().to_string(),
            "EVAL",
            SCRIPT,
            "0",
            prefix,
        ])
        .output()
        .expect("redis-cli");
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains(':'))
        .map(str::to_owned)
        .collect()
}

/// The dispatcher owner a daemon's log names.
fn owner_of(daemon: &Daemon) -> String {
    assert!(
        daemon.wait_log("redis dispatch opened", Duration::from_secs(10)),
        "{}",
        daemon.log_tail(20)
    );
    let log = daemon.log();
    let line = log
        .lines()
        .rev()
        .find(|l| l.contains("redis dispatch opened"))
        .unwrap();
    let owner = line.split("owner=").nth(1).expect("owner= in the log line");
    owner.split_whitespace().next().unwrap().to_owned()
}

#[test]
fn every_acknowledged_message_survives_kill_9_with_redis() {
    let _serial = SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let server = RedisServer::start();
    let sink = SmtpSink::start(&[], true);
    let mut daemon = Daemon::new(&daemon_config(&server.url(), "kill9:", &sink));
    daemon.start();
    let owner = owner_of(&daemon);

    let mut child = client(&[daemon.port], 6, 150, 3);
    let kill_after = 400;
    let mut killed = None;
    let heard = listen(&mut child, |acked, _| {
        if killed.is_none() && acked >= kill_after {
            daemon.kill9();
            killed = Some((acked, leases(&server, "kill9:")));
        }
    });
    let (killed_at, held) = killed.unwrap_or_else(|| {
        panic!(
            "the client finished ({} acknowledged) before the kill; log:\n{}",
            heard.acked.len(),
            daemon.log_tail(40)
        )
    });
    let held_by_killed = held.iter().filter(|l| l.starts_with(&owner)).count();
    let before_restart = sink.messages().len();

    daemon.start();
    let counts = wait_delivered(&sink, &heard.acked, Duration::from_secs(90));
    let (duplicates, unacked) = assert_none_missing("kill -9", &heard.acked, &counts, &[&daemon]);
    println!(
        "redis kill -9: {} acknowledged ({killed_at} before the kill, {} client errors after it), \
         {held_by_killed} messages leased by the killed process, {before_restart} at the sink \
         before the restart, {} distinct after, {duplicates} delivered twice or more (relayed \
         but not yet recorded when killed), {unacked} delivered without an acknowledgement, 0 missing",
        heard.acked.len(),
        heard.errors.len(),
        counts.len(),
    );
    daemon.stop();
}

#[test]
fn a_redis_restart_mid_load_loses_nothing_acknowledged() {
    let _serial = SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let mut server = RedisServer::start();
    let sink = SmtpSink::start(&[], true);
    let mut daemon = Daemon::new(&daemon_config(&server.url(), "restart:", &sink));
    daemon.start();

    // Threads retry for a long while: they must outlive the outage.
    let mut child = client(&[daemon.port], 4, 150, 200);
    let mut phase = 0;
    let mut acked_before_restart = 0;
    let heard = listen(&mut child, |acked, _| {
        if phase == 0 && acked >= 200 {
            server.kill();
            phase = 1;
            // Let the clients meet the outage.
            let began = Instant::now();
            while began.elapsed() < Duration::from_secs(2) {
                std::thread::sleep(Duration::from_millis(100));
            }
            acked_before_restart = acked;
            server.restart();
        }
    });
    assert_eq!(phase, 1, "the client finished before the outage");
    let temp_failures = heard
        .errors
        .iter()
        .filter(|e| e.contains("451") && e.contains("4.3.0"))
        .count();
    assert!(
        temp_failures > 0,
        "no 451 4.3.0 while Redis was down; client errors: {:?}\nlog:\n{}",
        heard.errors.iter().take(5).collect::<Vec<_>>(),
        daemon.log_tail(40)
    );
    assert_eq!(
        heard.acked.len(),
        600,
        "intake did not resume after the restart: {} errors, e.g. {:?}",
        heard.errors.len(),
        heard.errors.last()
    );
    let counts = wait_delivered(&sink, &heard.acked, Duration::from_secs(90));
    let (duplicates, unacked) =
        assert_none_missing("redis restart", &heard.acked, &counts, &[&daemon]);
    println!(
        "redis restart: {} acknowledged (about {acked_before_restart} before the outage), \
         {temp_failures} answered 451 4.3.0 while Redis was down ({} client errors in all), \
         {} distinct at the sink, {duplicates} delivered twice or more, {unacked} delivered without \
         an acknowledgement, 0 missing",
        heard.acked.len(),
        heard.errors.len(),
        counts.len(),
    );
    daemon.stop();
}

#[test]
fn two_processes_share_one_redis_and_survive_a_kill_9() {
    let _serial = SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let server = RedisServer::start();
    let sink = SmtpSink::start(&[], true);
    let config = daemon_config(&server.url(), "pair:", &sink);
    let (mut a, mut b) = (Daemon::new(&config), Daemon::new(&config));
    a.start();
    b.start();
    let (owner_a, owner_b) = (owner_of(&a), owner_of(&b));

    // 2,000 messages, half the threads starting on each edge; a thread
    // whose edge is gone moves to the other.
    let mut child = client(&[a.port, b.port], 8, 250, 5);
    let mut killed = None;
    let heard = listen(&mut child, |acked, _| {
        if killed.is_none() && acked >= 800 {
            a.kill9();
            killed = Some((acked, leases(&server, "pair:")));
        }
    });
    let (killed_at, held) = killed.expect("the client finished before the kill");
    assert_eq!(
        heard.acked.len(),
        2000,
        "not every message was accepted by one edge or the other: {:?}",
        heard.errors.last()
    );
    let held_by_a = held.iter().filter(|l| l.starts_with(&owner_a)).count();
    let held_by_b = held.iter().filter(|l| l.starts_with(&owner_b)).count();
    let counts = wait_delivered(&sink, &heard.acked, Duration::from_secs(90));
    let (duplicates, unacked) =
        assert_none_missing("two processes", &heard.acked, &counts, &[&a, &b]);
    println!(
        "redis pair: {} acknowledged by two processes ({killed_at} before process A's kill -9, {} \
         client errors), at the kill A held {held_by_a} leases and B {held_by_b}; {} distinct at \
         the sink, {duplicates} delivered twice or more (relayed by A but not yet recorded when it \
         was killed, or an attempt that outlasted its 3 s lease), {unacked} delivered without an \
         acknowledgement, 0 missing",
        heard.acked.len(),
        heard.errors.len(),
        counts.len(),
    );
    assert!(
        held_by_a > 0,
        "process A held no lease when killed (the test proves nothing about leases then)"
    );
    b.stop();
}

fn cli_ok(out: &std::process::Output) -> String {
    assert!(
        out.status.success(),
        "exit {}: {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn queue_commands_operate_on_redis_without_a_control_socket() {
    let _serial = SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let server = RedisServer::start();
    // Nothing listens on the relay's port: every attempt is deferred.
    let closed = queue_common::free_port();
    let mut daemon = Daemon::new(
        &[
            config::process("mx.example.test", ""),
            config::smtp_edge("\"example.test\"", ""),
            redis_queue(&server.url(), "cli:"),
            config::retry("1h", None),
            config::static_relay(
                format!("127.0.0.1:{closed}").parse().unwrap(),
                "connect_timeout = \"5s\"",
            ),
        ]
        .concat(),
    );
    daemon.start();
    for n in 1..=2 {
        let reply = queue_common::send(
            daemon.addr(),
            "s@x.test",
            &[&format!("r{n}@example.test")],
            &format!("Subject: deferred {n}\r\n\r\nbody {n}\r\n"),
        );
        assert!(reply.starts_with("250 "), "{reply}");
    }
    // list (the running daemon is not asked: the store is), once both
    // first attempts are recorded.
    let deadline = Instant::now() + Duration::from_secs(30);
    let list = loop {
        let list = cli_ok(&daemon.queue_cmd(&["list", "--queue", "main"]));
        let recorded = list.lines().filter(|l| l.contains("451 4.4.1")).count();
        if recorded == 2 || Instant::now() > deadline {
            break list;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let lines: Vec<&str> = list.lines().collect();
    assert_eq!(lines.len(), 3, "{list}\n{}", daemon.log_tail(20));
    let ids: Vec<String> = lines[1..]
        .iter()
        .map(|l| l.split('\t').next().unwrap().to_owned())
        .collect();
    for (n, line) in lines[1..].iter().enumerate() {
        let fields: Vec<&str> = line.split('\t').collect();
        assert_eq!(fields[2], format!("<r{}@example.test>", n + 1), "{line}");
        assert_eq!(fields[3], "1", "{line}");
    }
    let show = cli_ok(&daemon.queue_cmd(&["show", &ids[0], "--queue", "main"]));
    assert!(
        show.contains("recipient: <r1@example.test> pending\n"),
        "{show}"
    );
    assert!(show.contains("Subject: deferred 1\n"), "{show}");
    // retry through the store: the running daemon's dispatcher sees it
    // (an attempt now, not in an hour).
    assert_eq!(
        cli_ok(&daemon.queue_cmd(&["retry", &ids[0], "--queue", "main"])),
        format!("{}: due now\n", ids[0])
    );
    assert!(
        daemon.wait_log(&format!("id={} attempt=2", ids[0]), Duration::from_secs(30)),
        "{}",
        daemon.log_tail(20)
    );
    let stats = cli_ok(&daemon.queue_cmd(&["stats", "--queue", "main"]));
    assert!(stats.starts_with("messages: 2\n"), "{stats}");
    // With the daemon stopped too.
    daemon.stop();
    assert_eq!(
        cli_ok(&daemon.queue_cmd(&["delete", &ids[1], "--queue", "main"])),
        format!("{}: deleted\n", ids[1])
    );
    let list = cli_ok(&daemon.queue_cmd(&["list", "--queue", "main"]));
    assert_eq!(list.lines().count(), 2, "{list}");
    assert!(list.contains(&ids[0]) && !list.contains(&ids[1]), "{list}");
    let out = daemon.queue_cmd(&["show", &ids[1], "--queue", "main"]);
    assert!(!out.status.success(), "a deleted message is shown");
    let stats = cli_ok(&daemon.queue_cmd(&["stats", "--queue", "main"]));
    assert!(stats.starts_with("messages: 1\n"), "{stats}");
}
