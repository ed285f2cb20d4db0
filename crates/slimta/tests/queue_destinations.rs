//! The queue's destination-aware scheduling against real peers: an MX relay
//! whose DNS comes from a dnsmasq started by the test, Postfix's smtp-sink
//! as the healthy exchangers, and, for the destinations that misbehave, a
//! TCP listener that accepts and never greets (a tarpit) or accepts and
//! hangs up at once (a host that turns every connection away). The
//! listeners count connections exactly; sessions at a sink are counted
//! from the kernel's table of established TCP connections.
#![cfg(feature = "mx")]

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use slimta::dns::Resolver;
use slimta::queue::backoff::ExponentialBackoff;
use slimta::queue::{
    DestinationSettings, DiskStorage, LocalDispatch, MemoryStorage, Queue, QueueStorage,
};
use slimta::relay::smtp::{ClientOptions, MxSmtpRelay};
use slimta::{Envelope, Handoff};
use test_peers::{Dnsmasq, SmtpSink};

const MESSAGE: &[u8] = b"Subject: fair\r\n\r\nbody\r\n";

/// `tarpit.test` on 127.0.0.2, `healthy.test` and `other.test` on
/// 127.0.0.3, `second.test` on 127.0.0.5, `down.test` on 127.0.0.4.
fn dns() -> Dnsmasq {
    Dnsmasq::start(&[
        "--mx-host=tarpit.test,mx.tarpit.test,10",
        "--host-record=mx.tarpit.test,127.0.0.2",
        "--mx-host=healthy.test,mx.healthy.test,10",
        "--mx-host=other.test,mx.healthy.test,10",
        "--host-record=mx.healthy.test,127.0.0.3",
        "--mx-host=down.test,mx.down.test,10",
        "--host-record=mx.down.test,127.0.0.4",
        "--mx-host=second.test,mx.second.test,10",
        "--host-record=mx.second.test,127.0.0.5",
    ])
}

/// A port for the exchangers, held on 127.0.0.1 while the listener lives so
/// no test running in parallel picks it.
fn mx_port() -> (TcpListener, u16) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().unwrap().port();
    (listener, port)
}

fn relay(dns: &Dnsmasq, port: u16, command_timeout: Duration) -> MxSmtpRelay {
    let resolver = Resolver::new(&[dns.addr()]).expect("resolver");
    MxSmtpRelay::new(resolver).port(port).options(
        ClientOptions::new()
            .ehlo_as("relay.test")
            .connect_timeout(Duration::from_secs(5))
            .command_timeout(command_timeout)
            .pool_size(50)
            // No session reuse: one connection per attempt, so counting
            // connections counts attempts.
            .idle_timeout(Duration::ZERO),
    )
}

fn backoff(delay: Duration) -> ExponentialBackoff {
    ExponentialBackoff {
        initial_delay: delay,
        factor: 1.0,
        max_delay: delay,
        ..ExponentialBackoff::default()
    }
}

fn envelope(recipients: &[&str]) -> Envelope {
    Envelope::new(
        "sender@x.test",
        recipients.iter().map(|r| (*r).to_string()).collect(),
        MESSAGE.to_vec(),
    )
}

/// A listener that accepts TCP connections and counts them; `greet: false`
/// never says anything (a tarpit), and holds every connection until it is
/// dropped; `hang_up: true` closes each at once.
struct Listener {
    accepted: Arc<AtomicUsize>,
    open: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

impl Listener {
    fn start(addr: SocketAddr, hang_up: bool) -> Self {
        let listener = TcpListener::bind(addr).expect("bind the listener");
        listener.set_nonblocking(true).unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let open = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (a, o, s) = (accepted.clone(), open.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut held: Vec<TcpStream> = Vec::new();
            while !s.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        a.fetch_add(1, Ordering::SeqCst);
                        if hang_up {
                            drop(stream);
                        } else {
                            held.push(stream);
                            o.store(held.len(), Ordering::SeqCst);
                        }
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Self {
            accepted,
            open,
            stop,
        }
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // The accept loop polls; give it time to let go of the port.
        std::thread::sleep(Duration::from_millis(30));
    }
}

/// Established TCP connections whose local end is `addr` (the server side
/// of sessions at a sink), from /proc/net/tcp.
fn established_at(addr: SocketAddr) -> usize {
    let SocketAddr::V4(v4) = addr else {
        return 0;
    };
    let ip = u32::from_le_bytes(v4.ip().octets());
    let local = format!("{ip:08X}:{:04X}", v4.port());
    std::fs::read_to_string("/proc/net/tcp")
        .unwrap_or_default()
        .lines()
        .skip(1)
        .filter(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            fields.len() > 3 && fields[1] == local && fields[3] == "01"
        })
        .count()
}

/// Per address: (sessions, messages delivered) at each sample.
type Samples = Vec<Vec<(usize, usize)>>;

/// Samples the sessions at each address every few milliseconds until
/// stopped; keeps the samples (with `delivered()` at that moment).
struct Sampler {
    stop: Arc<AtomicBool>,
    samples: Arc<Mutex<Samples>>,
    /// Joined by `stop`: the thread holds the sinks (through `delivered`),
    /// which must be dropped (their processes killed) before the test ends.
    thread: std::thread::JoinHandle<()>,
}

impl Sampler {
    fn start(addrs: Vec<SocketAddr>, delivered: Vec<Arc<dyn Fn() -> usize + Send + Sync>>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let samples = Arc::new(Mutex::new(vec![Vec::new(); addrs.len()]));
        let (s, out) = (stop.clone(), samples.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                for (k, addr) in addrs.iter().enumerate() {
                    let sessions = established_at(*addr);
                    let done = delivered[k]();
                    out.lock().unwrap()[k].push((sessions, done));
                }
                std::thread::sleep(Duration::from_millis(3));
            }
        });
        Self {
            stop,
            samples,
            thread,
        }
    }

    fn stop(self) -> Samples {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().expect("the sampler thread");
        self.samples.lock().unwrap().clone()
    }
}

fn max_sessions(samples: &[(usize, usize)]) -> usize {
    samples.iter().map(|s| s.0).max().unwrap_or(0)
}

/// Counts of each recipient over every message a sink received.
fn rcpt_counts(sinks: &[&SmtpSink]) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for sink in sinks {
        for m in sink.messages() {
            for r in m.rcpt_args {
                let address = r
                    .split_whitespace()
                    .next()
                    .unwrap_or_default()
                    .trim_start_matches('<')
                    .trim_end_matches('>')
                    .to_string();
                *counts.entry(address).or_insert(0) += 1;
            }
        }
    }
    counts
}

async fn wait_until(what: &str, limit: Duration, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + limit;
    while !check() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "gave up waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tarpitting_destination_does_not_starve_a_healthy_one() {
    let dns = dns();
    let (_hold, port) = mx_port();
    let tarpit = Listener::start(SocketAddr::from(([127, 0, 0, 2], port)), false);
    let healthy = SmtpSink::start_at(SocketAddr::from(([127, 0, 0, 3], port)), &[], true);
    // Without per-destination limits the 300 tarpit attempts would hold
    // every one of the 100 attempt slots for the whole banner timeout.
    let queue = Queue::new(
        MemoryStorage::new(),
        relay(&dns, port, Duration::from_secs(600)),
    )
    .with_backoff(backoff(Duration::from_secs(600)));
    queue.start().await.unwrap();
    for i in 0..300 {
        let r = format!("t{i}@tarpit.test");
        assert!(queue.handoff(envelope(&[&r])).await[0].result.is_ok());
    }
    for i in 0..50 {
        let r = format!("h{i}@healthy.test");
        assert!(queue.handoff(envelope(&[&r])).await[0].result.is_ok());
    }
    let got = healthy.wait_for_messages(50, Duration::from_secs(120));
    assert_eq!(got.len(), 50, "every healthy message is delivered");
    // Slow start: no attempt to the tarpit ever ended, so its window never
    // grew past the initial five.
    assert_eq!(tarpit.accepted(), 5);
    assert_eq!(tarpit.open.load(Ordering::SeqCst), 5);
    let counts = rcpt_counts(&[&healthy]);
    assert!(counts.values().all(|&n| n == 1), "{counts:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_destination_limits_hold_and_slow_start_grows_the_window() {
    let dns = dns();
    let (_hold, port) = mx_port();
    let a_addr = SocketAddr::from(([127, 0, 0, 3], port));
    let b_addr = SocketAddr::from(([127, 0, 0, 5], port));
    // A second's wait on every DATA: sessions overlap.
    let a = Arc::new(SmtpSink::start_at(a_addr, &["-w", "1"], true));
    let b = Arc::new(SmtpSink::start_at(b_addr, &["-w", "1"], true));
    let mut settings = DestinationSettings {
        concurrency: 8,
        initial_concurrency: 3,
        ..DestinationSettings::default()
    };
    settings.overrides.insert("second.test".into(), 2);
    let queue = Queue::with_dispatch(
        MemoryStorage::new(),
        relay(&dns, port, Duration::from_secs(30)),
        LocalDispatch::new(settings),
    );
    queue.start().await.unwrap();
    let (a2, b2) = (a.clone(), b.clone());
    let sampler = Sampler::start(
        vec![a_addr, b_addr],
        vec![
            Arc::new(move || a2.messages().len()),
            Arc::new(move || b2.messages().len()),
        ],
    );
    for i in 0..60 {
        let r = format!("h{i}@healthy.test");
        queue.handoff(envelope(&[&r])).await;
    }
    for i in 0..12 {
        let r = format!("s{i}@second.test");
        queue.handoff(envelope(&[&r])).await;
    }
    assert_eq!(a.wait_for_messages(60, Duration::from_secs(120)).len(), 60);
    assert_eq!(b.wait_for_messages(12, Duration::from_secs(120)).len(), 12);
    let samples = sampler.stop();
    let (at_a, at_b) = (&samples[0], &samples[1]);
    assert!(
        max_sessions(at_a) <= 8,
        "limit 8 at healthy.test: {}",
        max_sessions(at_a)
    );
    assert!(
        max_sessions(at_b) <= 2,
        "override 2 at second.test: {}",
        max_sessions(at_b)
    );
    assert_eq!(max_sessions(at_b), 2, "the sampler sees sessions overlap");
    // Slow start: three at once until attempts succeed, more afterwards.
    let before_success = at_a.iter().filter(|s| s.1 == 0).map(|s| s.0).max();
    assert!(before_success.unwrap_or(0) <= 3, "{before_success:?}");
    assert!(
        max_sessions(at_a) > 3,
        "the window grew: {}",
        max_sessions(at_a)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_destination_is_left_alone_until_its_probe_revives_it() {
    let dns = dns();
    let (_hold, port) = mx_port();
    let down_addr = SocketAddr::from(([127, 0, 0, 4], port));
    let healthy = SmtpSink::start_at(SocketAddr::from(([127, 0, 0, 3], port)), &[], true);
    let settings = DestinationSettings {
        dead_after: 3,
        dead_for: Duration::from_secs(2),
        dead_for_max: Duration::from_secs(2),
        ..DestinationSettings::default()
    };
    let queue = Queue::with_dispatch(
        MemoryStorage::new(),
        relay(&dns, port, Duration::from_secs(30)),
        LocalDispatch::new(settings),
    )
    .with_backoff(backoff(Duration::from_secs(1)));
    let turned_away = Listener::start(down_addr, true);
    queue.start().await.unwrap();
    for i in 0..100 {
        let r = format!("d{i}@down.test");
        queue.handoff(envelope(&[&r])).await;
    }
    for i in 0..20 {
        let r = format!("h{i}@healthy.test");
        queue.handoff(envelope(&[&r])).await;
    }
    assert_eq!(
        healthy.wait_for_messages(20, Duration::from_secs(60)).len(),
        20
    );
    // Every down.test message has been attempted once...
    let storage = queue.storage().clone();
    let mut attempted = 0;
    for _ in 0..500 {
        let list = storage.list().await.unwrap();
        attempted = list.iter().filter(|e| e.meta.attempts >= 1).count();
        if attempted == 100 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(attempted, 100);
    // ...with a handful of connections: the initial window, then dead.
    let connections = turned_away.accepted();
    assert!(
        (3..=6).contains(&connections),
        "{connections} connections for 100 messages"
    );
    let stats = queue.stats().await.unwrap();
    assert_eq!(stats.dead.len(), 1, "{stats:?}");
    assert_eq!(stats.dead[0].destination, "down.test");
    let mut suspended = 0;
    for entry in storage.list().await.unwrap() {
        let stored = storage.get(&entry.id).await.unwrap();
        let error = stored.meta.last_error.unwrap_or_default();
        assert!(error.contains("4.4.2"), "{error}");
        suspended += usize::from(error.contains("Delivery suspended"));
    }
    assert!(
        suspended >= 90,
        "{suspended} of 100 deferred without connecting"
    );

    // The destination comes back; the probe finds it and everything goes.
    drop(turned_away);
    let back = SmtpSink::start_at(down_addr, &[], true);
    let got = back.wait_for_messages(100, Duration::from_secs(90));
    assert_eq!(got.len(), 100);
    let counts = rcpt_counts(&[&back]);
    assert!(counts.values().all(|&n| n == 1), "{counts:?}");
    wait_until("an empty queue", Duration::from_secs(30), || {
        storage.is_empty()
    })
    .await;
    assert!(queue.stats().await.unwrap().dead.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_multi_domain_envelope_is_split_and_no_recipient_gets_it_twice() {
    let dns = dns();
    let (_hold, port) = mx_port();
    let healthy = SmtpSink::start_at(SocketAddr::from(([127, 0, 0, 3], port)), &[], true);
    let second_addr = SocketAddr::from(([127, 0, 0, 5], port));
    let turned_away = Listener::start(second_addr, true);
    let queue = Queue::new(
        MemoryStorage::new(),
        relay(&dns, port, Duration::from_secs(30)),
    )
    .with_backoff(backoff(Duration::from_secs(1)));
    queue.start().await.unwrap();
    let results = queue
        .handoff(envelope(&[
            "a@healthy.test",
            "x@second.test",
            "b@other.test",
            "c@healthy.test",
        ]))
        .await;
    let parts: Vec<Vec<String>> = results.iter().map(|r| r.recipients.clone()).collect();
    assert_eq!(
        parts,
        [
            vec!["a@healthy.test".to_string(), "c@healthy.test".to_string()],
            vec!["x@second.test".to_string()],
            vec!["b@other.test".to_string()],
        ],
        "one stored message per destination, recipients in order"
    );
    assert!(results.iter().all(|r| r.result.is_ok()));
    assert_eq!(
        healthy.wait_for_messages(2, Duration::from_secs(30)).len(),
        2
    );
    // second.test turns connections away; once it is back, only x gets
    // the message, and nobody twice.
    wait_until(
        "a failed attempt at second.test",
        Duration::from_secs(30),
        || turned_away.accepted() >= 1,
    )
    .await;
    drop(turned_away);
    let second = SmtpSink::start_at(second_addr, &[], true);
    assert_eq!(
        second.wait_for_messages(1, Duration::from_secs(60)).len(),
        1
    );
    wait_until("an empty queue", Duration::from_secs(30), || {
        queue.storage().is_empty()
    })
    .await;
    let counts = rcpt_counts(&[&healthy, &second]);
    assert_eq!(
        counts,
        BTreeMap::from([
            ("a@healthy.test".to_string(), 1),
            ("b@other.test".to_string(), 1),
            ("c@healthy.test".to_string(), 1),
            ("x@second.test".to_string(), 1),
        ])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_with_a_backlog_delivers_everything_once() {
    let dns = dns();
    let (_hold, port) = mx_port();
    let spool = tempfile::tempdir().unwrap();
    let healthy_addr = SocketAddr::from(([127, 0, 0, 3], port));
    let second_addr = SocketAddr::from(([127, 0, 0, 5], port));
    {
        // Both destinations turn connections away: everything is deferred.
        let a = Listener::start(healthy_addr, true);
        let b = Listener::start(second_addr, true);
        let storage = DiskStorage::open(spool.path()).unwrap();
        let queue = Queue::new(storage, relay(&dns, port, Duration::from_secs(30)))
            .with_backoff(backoff(Duration::from_secs(3600)));
        queue.start().await.unwrap();
        for i in 0..40 {
            let h = format!("h{i}@healthy.test");
            let s = format!("s{i}@second.test");
            queue.handoff(envelope(&[&h, &s])).await;
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let list = queue.storage().list().await.unwrap();
            if list.len() == 80 && list.iter().all(|e| e.meta.attempts >= 1) {
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "attempts: {list:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        queue.shutdown(Duration::from_secs(5)).await;
        drop((a, b));
    }
    // A new queue over the same spool: the destinations are learnt from
    // the stored messages, and are up now.
    let a = SmtpSink::start_at(healthy_addr, &[], true);
    let b = SmtpSink::start_at(second_addr, &[], true);
    let storage = DiskStorage::open(spool.path()).unwrap();
    let queue = Queue::with_dispatch(
        storage,
        relay(&dns, port, Duration::from_secs(30)),
        LocalDispatch::new(DestinationSettings {
            initial_concurrency: 2,
            concurrency: 2,
            ..DestinationSettings::default()
        }),
    );
    queue.start().await.unwrap();
    for id in queue
        .storage()
        .load()
        .await
        .unwrap()
        .into_iter()
        .map(|(id, _)| id)
    {
        queue.retry_now(&id).await.unwrap();
    }
    assert_eq!(a.wait_for_messages(40, Duration::from_secs(90)).len(), 40);
    assert_eq!(b.wait_for_messages(40, Duration::from_secs(90)).len(), 40);
    let counts = rcpt_counts(&[&a, &b]);
    assert_eq!(counts.len(), 80);
    assert!(counts.values().all(|&n| n == 1), "{counts:?}");
}
