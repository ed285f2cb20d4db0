//! The cloud queue on OpenStack end to end: the real `slimta` binary with
//! `store = "swift"` (a real Swift 2.30) and `notify = { type = "zaqar" }`
//! (a real Zaqar 23), all on loopback.
//!
//! Two processes share one container and one Zaqar queue. Process a
//! cannot deliver (its relay points at a closed port) and is killed with
//! -9 right after it acknowledged its messages; process b must deliver
//! everything, a's messages once their notices come due (the lease, 60 s:
//! Zaqar's shortest claim). Duplicates are counted and printed, never
//! failed (at least once is the contract); a missing message fails.

mod common;
mod queue_common;

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::thread;
use std::time::{Duration, Instant};

use common::config;
use queue_common::{Daemon, SmtpSink, free_port, message_id, send};
use test_peers::{Swift, Zaqar};

fn write_swift_keys(daemon: &Daemon) {
    let path = daemon.dir.path().join("cloud.toml");
    std::fs::write(
        &path,
        format!(
            "swift_user = \"{}\"\nswift_key = \"{}\"\n",
            Swift::USER,
            Swift::KEY
        ),
    )
    .expect("write credentials");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
}

fn openstack_queue(container: &str, zaqar_queue: &str) -> String {
    format!(
        "\n[queue.main]\ntype = \"cloud\"\nstore = \"swift\"\nbucket = \"{container}\"\n\
         prefix = \"q/\"\nendpoint = \"{auth}\"\ncredentials_file = \"{{dir}}/cloud.toml\"\n\
         timeout = \"10s\"\nlease = \"60s\"\nrelay = \"out\"\n\
         notify = {{ type = \"zaqar\", url = \"{zaqar}\", queue = \"{zaqar_queue}\" }}\n",
        auth = Swift::shared().auth_url(),
        zaqar = Zaqar::shared().url(),
    )
}

#[test]
fn two_processes_share_swift_and_zaqar_and_the_survivor_takes_over() {
    let name = format!("e2e-{}-{}", std::process::id(), free_port());
    let sink = SmtpSink::start(&[], true);
    let closed: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let common = [
        config::process("mx.example.test", "log_level = \"info\""),
        config::smtp_edge("\"example.test\"", ""),
        openstack_queue(&name, &name),
        config::retry("1s", Some("2s")),
    ]
    .concat();
    let mut a = Daemon::new(&[common.as_str(), &config::static_relay(closed, "")].concat());
    let mut b = Daemon::new(&[common.as_str(), &config::static_relay(sink.addr(), "")].concat());
    write_swift_keys(&a);
    write_swift_keys(&b);
    a.start();
    b.start();
    let mut sent = Vec::new();
    for (daemon, tag) in [(&a, "a"), (&b, "b")] {
        for i in 0..10 {
            let id = format!("<{tag}{i}.{name}@cloud.test>");
            let reply = send(
                daemon.addr(),
                "a@x.test",
                &["b@example.test"],
                &format!(
                    "From: a@x.test\nTo: b@example.test\nSubject: {tag} {i}\nMessage-Id: {id}\n\nbody\n"
                ),
            );
            assert!(reply.starts_with("250"), "{reply}");
            sent.push(id);
        }
    }
    a.kill9();
    let killed = Instant::now();
    let deadline = killed + Duration::from_secs(240);
    let counts = loop {
        let mut counts: HashMap<String, usize> = HashMap::new();
        for m in sink.messages() {
            if let Some(id) = message_id(&m.content) {
                *counts.entry(id).or_default() += 1;
            }
        }
        if sent.iter().all(|id| counts.contains_key(id)) || Instant::now() >= deadline {
            break counts;
        }
        thread::sleep(Duration::from_millis(500));
    };
    let missing: Vec<&String> = sent.iter().filter(|id| !counts.contains_key(*id)).collect();
    let duplicates = counts.values().filter(|&&n| n > 1).count();
    println!(
        "cloud on OpenStack (Swift + Zaqar, lease 60s): 10 acknowledged by a (killed -9 at once, \
         its relay closed), 10 by b; all at the sink {:?} after the kill; {duplicates} delivered \
         twice or more; {} missing",
        killed.elapsed(),
        missing.len()
    );
    assert!(
        missing.is_empty(),
        "{} acknowledged messages never arrived (e.g. {:?})\nb's log:\n{}",
        missing.len(),
        missing.iter().take(5).collect::<Vec<_>>(),
        b.log_tail(60)
    );
    b.stop();
}
