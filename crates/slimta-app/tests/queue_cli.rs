//! `slimta queue list|show|retry|delete|stats` against a running daemon
//! (through its control socket) and against a stopped one (the spool
//! itself), with messages deferred by a relay whose destination port is
//! closed.

mod common;
mod queue_common;

use common::config;

use std::os::unix::fs::PermissionsExt;
use std::process::Output;
use std::time::Duration;

use queue_common::{Daemon, free_port, send};

fn text(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "exit {}: {}{}",
        out.status,
        text(out),
        String::from_utf8_lossy(&out.stderr)
    );
    text(out)
}

fn ids(list: &str) -> Vec<String> {
    list.lines()
        .skip(1)
        .map(|l| l.split('\t').next().unwrap().to_string())
        .collect()
}

#[test]
fn queue_commands_work_with_and_without_the_daemon() {
    // Nothing listens on the relay's port: every attempt is deferred.
    let closed = free_port();
    let mut daemon = Daemon::new(
        &[
            config::process("mx.example.test", ""),
            config::smtp_edge("\"example.test\"", ""),
            config::disk_queue("{dir}/spool", "stats_interval = \"1s\""),
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
        let reply = send(
            daemon.addr(),
            "s@x.test",
            &[&format!("r{n}@example.test")],
            &format!("Subject: deferred {n}\r\n\r\nbody {n}\r\n"),
        );
        assert!(reply.starts_with("250 "), "{reply}");
    }
    let attempted = |d: &Daemon| d.log().matches("delivery attempt").count();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while attempted(&daemon) < 2 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(attempted(&daemon) >= 2, "{}", daemon.log_tail(20));

    // The socket is there and private.
    let socket = daemon.dir.path().join("spool/control.sock");
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);

    // list: a header and one line per message, after its first attempt
    // (recorded just after the attempt is logged: poll for it).
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let list = loop {
        let list = ok(&daemon.queue_cmd(&["list"]));
        let recorded = list
            .lines()
            .skip(1)
            .filter(|l| l.contains("451 4.4.1"))
            .count();
        if recorded == 2 || std::time::Instant::now() > deadline {
            break list;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let lines: Vec<&str> = list.lines().collect();
    assert_eq!(
        lines[0],
        "ID\tSENDER\tRECIPIENTS\tATTEMPTS\tNEXT_ATTEMPT\tLAST_ERROR"
    );
    assert_eq!(lines.len(), 3, "{list}");
    for (n, line) in lines[1..].iter().enumerate() {
        let fields: Vec<&str> = line.split('\t').collect();
        assert_eq!(fields.len(), 6, "{line}");
        assert_eq!(fields[0].len(), 32, "{line}");
        assert_eq!(fields[1], "<s@x.test>");
        assert_eq!(fields[2], format!("<r{}@example.test>", n + 1));
        assert_eq!(fields[3], "1");
        assert!(fields[4].ends_with('Z'), "{line}");
        assert!(fields[5].contains("451 4.4.1"), "{line}");
    }
    let ids = ids(&list);

    // show: envelope, queue facts and headers.
    let show = ok(&daemon.queue_cmd(&["show", &ids[0]]));
    assert!(show.contains(&format!("id: {}\n", ids[0])), "{show}");
    assert!(show.contains("sender: <s@x.test>\n"), "{show}");
    assert!(
        show.contains("recipient: <r1@example.test> pending\n"),
        "{show}"
    );
    assert!(show.contains("attempts: 1\n"), "{show}");
    assert!(show.contains("Subject: deferred 1\n"), "{show}");
    assert!(!show.contains("body 1"), "show prints headers only: {show}");

    // retry ID: attempted again at once, not in an hour.
    assert_eq!(
        ok(&daemon.queue_cmd(&["retry", &ids[0]])),
        format!("{}: due now\n", ids[0])
    );
    assert!(
        daemon.wait_log(&format!("id={} attempt=2", ids[0]), Duration::from_secs(30)),
        "{}",
        daemon.log_tail(20)
    );
    // retry --all: both.
    assert_eq!(
        ok(&daemon.queue_cmd(&["retry", "--all"])),
        "2 messages due now\n"
    );
    // ids[0] may still be in its second attempt when "retry --all" comes:
    // the request then makes its third attempt follow at once.
    for expected in [
        format!("id={} attempt=2", ids[1]),
        format!("id={} attempt=3", ids[0]),
    ] {
        assert!(
            daemon.wait_log(&expected, Duration::from_secs(30)),
            "{expected}: {}",
            daemon.log_tail(20)
        );
    }

    // delete ID: gone from the list and the spool; a second delete fails.
    assert_eq!(
        ok(&daemon.queue_cmd(&["delete", &ids[1]])),
        format!("{}: deleted\n", ids[1])
    );
    let again = daemon.queue_cmd(&["delete", &ids[1]]);
    assert_eq!(again.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&again.stderr).contains("no queued message"));
    let list = ok(&daemon.queue_cmd(&["list"]));
    assert_eq!(self::ids(&list), [ids[0].clone()], "{list}");
    assert!(!daemon.dir.path().join("spool/msg").join(&ids[1]).exists());

    // The periodic statistics line in the log.
    assert!(
        daemon.wait_log(
            "queue stats messages=1 waiting=1 oldest_age_secs=",
            Duration::from_secs(30)
        ),
        "{}",
        daemon.log_tail(20)
    );
    let stats = ok(&daemon.queue_cmd(&["stats"]));
    assert!(stats.starts_with("messages: 1\n"), "{stats}");
    assert!(stats.contains("\nfsyncs: "), "{stats}");
    // The message left was deferred, by META records in the head segment
    // (it moves to a file of its own once that segment closes): its only
    // copy is in the journal. The attempts' durable outcomes are counted.
    assert!(stats.contains("\njournal_segments: 1\n"), "{stats}");
    assert!(stats.contains("\njournal_messages: 1\n"), "{stats}");
    assert!(
        stats.contains("\noutcomes: ") && !stats.contains("\noutcomes: 0\n"),
        "{stats}"
    );

    // A stopped daemon: the CLI opens the spool itself.
    daemon.stop();
    assert!(!socket.exists(), "the socket is removed at shutdown");
    assert!(
        daemon
            .log()
            .contains("disk queue stopped queue=\"main\" fsyncs="),
        "{}",
        daemon.log_tail(5)
    );
    let list = ok(&daemon.queue_cmd(&["list"]));
    assert_eq!(self::ids(&list), [ids[0].clone()], "{list}");
    let stats = ok(&daemon.queue_cmd(&["stats"]));
    // The daemon's head segment is closed now, so each open of the spool
    // by the CLI may move the deferred message to its own file in the
    // background (the spill thread): it is in the journal or in its file,
    // never lost and never twice.
    assert!(
        stats.starts_with("messages: 1\n")
            && (stats.contains("\njournal_messages: 1\n")
                || stats.contains("\njournal_messages: 0\n")),
        "{stats}"
    );
    // First attempt, "retry ID", "retry --all".
    assert!(list.contains("\t3\t"), "three attempts recorded: {list}");
    let show = ok(&daemon.queue_cmd(&["show", &ids[0]]));
    assert!(show.contains("attempts: 3\n"), "{show}");
    assert!(ok(&daemon.queue_cmd(&["retry", &ids[0]])).contains("at the next start"));

    // The daemon picks the offline retry up at its start: attempt 4 at once.
    daemon.start();
    assert!(
        daemon.wait_log(&format!("id={} attempt=4", ids[0]), Duration::from_secs(30)),
        "{}",
        daemon.log_tail(20)
    );
    // After kill -9 the socket file is stale: the CLI falls back to the spool.
    daemon.kill9();
    assert!(socket.exists());
    assert_eq!(
        ok(&daemon.queue_cmd(&["delete", &ids[0]])),
        format!("{}: deleted\n", ids[0])
    );
    let list = ok(&daemon.queue_cmd(&["list"]));
    assert_eq!(list.lines().count(), 1, "{list}");

    // Usage and configuration errors exit 2.
    let bad = daemon.queue_cmd(&["--queue", "nope", "list"]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("no queue named \"nope\""));
}

#[test]
fn stats_show_dead_destinations_and_retry_revives_them() {
    // Nothing listens on the relay's port: every connection is refused,
    // and two refusals in a row make the destination dead.
    let closed = free_port();
    let mut daemon = Daemon::new(
        &[
            config::process("mx.example.test", ""),
            config::smtp_edge("\"example.test\"", ""),
            config::disk_queue("{dir}/spool", ""),
            config::retry("1h", None),
            config::static_relay(
                format!("127.0.0.1:{closed}").parse().unwrap(),
                "connect_timeout = \"5s\"\ndead_after = 2\ndead_for = \"1h\"",
            ),
        ]
        .concat(),
    );
    daemon.start();
    for n in 1..=4 {
        let reply = send(
            daemon.addr(),
            "s@x.test",
            &[&format!("r{n}@example.test")],
            &format!("Subject: deferred {n}\r\n\r\nbody {n}\r\n"),
        );
        assert!(reply.starts_with("250 "), "{reply}");
    }
    assert!(
        daemon.wait_log("destination marked dead", Duration::from_secs(30)),
        "{}",
        daemon.log_tail(20)
    );
    let stats = ok(&daemon.queue_cmd(&["stats"]));
    assert!(stats.contains("\ndead_destinations: 1\n"), "{stats}");
    let destination = format!("dead: 127.0.0.1:{closed} failures=2 probe_in_secs=");
    assert!(stats.contains(&destination), "{stats}");
    assert!(stats.contains("last_error=451 4.4.1 "), "{stats}");
    // Messages due while it is dead are deferred without a connection.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let list = loop {
        let list = ok(&daemon.queue_cmd(&["list"]));
        let suspended = list.matches("Delivery suspended").count();
        if suspended >= 2 || std::time::Instant::now() > deadline {
            break list;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(list.matches("Delivery suspended").count() >= 2, "{list}");

    assert_eq!(
        ok(&daemon.queue_cmd(&["retry", "--all"])),
        "4 messages due now\n"
    );
    assert!(
        daemon.wait_log(
            "dead destinations revived by the operator destinations=1",
            Duration::from_secs(30)
        ),
        "{}",
        daemon.log_tail(20)
    );
    daemon.stop();
}
