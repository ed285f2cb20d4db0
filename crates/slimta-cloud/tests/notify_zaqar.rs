//! `ZaqarNotifier` against a real Zaqar 23.0.1 (Redis message store) on
//! loopback: leases, delays, postpone, finish, and takers kept apart.
//!
//! Zaqar's shortest claim is 60 s, so everything that waits for a lease to
//! run out shares one test (`leases_run_out`), which takes about a minute.

use std::collections::{HashMap, HashSet};
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime};

use slimta::Envelope;
use slimta::queue::{AttemptEnd, Dispatch, QueueStorage};
use slimta_cloud::{CloudDispatch, CloudStorage, MemoryObjects, Notice, Notifier, ZaqarNotifier};
use test_peers::Zaqar;

const LEASE: Duration = Duration::from_secs(60);
/// Long enough for any lease of these tests to run out and the notice to
/// be claimed again.
const PATIENCE: Duration = Duration::from_secs(120);

/// A queue of its own for each use.
fn queue() -> String {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    format!(
        "t{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

async fn open(queue: &str) -> ZaqarNotifier {
    let zaqar = Zaqar::shared();
    ZaqarNotifier::builder(zaqar.url(), queue)
        .poll_interval(Duration::from_millis(100))
        .open()
        .await
        .unwrap_or_else(|e| panic!("open zaqar: {e}\n{}", zaqar.log()))
}

fn ids(notices: &[Notice]) -> Vec<&str> {
    let mut ids: Vec<&str> = notices.iter().map(|n| n.id.as_str()).collect();
    ids.sort_unstable();
    ids
}

/// Takes nothing at this moment.
async fn assert_nothing_visible(n: &ZaqarNotifier, what: &str) {
    let got = n.take(10, LEASE, Duration::ZERO).await.unwrap();
    assert!(got.is_empty(), "{what}: took {:?}", ids(&got));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_taken_notice_is_held_until_finished() {
    let q = queue();
    let (a, b) = (open(&q).await, open(&q).await);
    a.announce("m1", Duration::ZERO).await.unwrap();
    a.announce("m2", Duration::ZERO).await.unwrap();
    let taken = a.take(1, LEASE, Duration::from_secs(5)).await.unwrap();
    assert_eq!(ids(&taken), ["m1"]);
    let rest = b.take(10, LEASE, Duration::from_secs(5)).await.unwrap();
    assert_eq!(ids(&rest), ["m2"]);
    // Both held: another taker finds nothing.
    assert_nothing_visible(&b, "both held").await;
    a.finish(&taken[0]).await.unwrap();
    b.finish(&rest[0]).await.unwrap();
    assert_nothing_visible(&a, "both finished").await;
    // Finishing twice is not an error.
    a.finish(&taken[0]).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delayed_notice_is_invisible_until_due() {
    let q = queue();
    let n = open(&q).await;
    n.announce("now", Duration::ZERO).await.unwrap();
    n.announce("soon", Duration::from_secs(5)).await.unwrap();
    n.announce("later", Duration::from_secs(600)).await.unwrap();
    // Zaqar's Redis claim script, asked for several messages, claims every
    // message after the first claimable one ("now"), delayed or not: one
    // claim per notice takes only what is due.
    let taken = n.take(10, LEASE, Duration::ZERO).await.unwrap();
    assert_eq!(ids(&taken), ["now"]);
    let soon = n.take(10, LEASE, Duration::from_secs(30)).await.unwrap();
    assert_eq!(ids(&soon), ["soon"]);
    assert_nothing_visible(&n, "'later' is 10 minutes away").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn take_waits_for_a_notice_announced_meanwhile() {
    let q = queue();
    let (taker, announcer) = (open(&q).await, open(&q).await);
    let empty = taker
        .take(5, LEASE, Duration::from_millis(300))
        .await
        .unwrap();
    assert!(empty.is_empty());
    let waiting = tokio::spawn(async move { taker.take(5, LEASE, Duration::from_secs(30)).await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    announcer.announce("m", Duration::ZERO).await.unwrap();
    let got = waiting.await.unwrap().unwrap();
    assert_eq!(ids(&got), ["m"]);
    assert_eq!(announcer.take(5, LEASE, Duration::ZERO).await.unwrap(), []);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postpone_zero_releases_at_once() {
    let q = queue();
    let (a, b) = (open(&q).await, open(&q).await);
    a.announce("m", Duration::ZERO).await.unwrap();
    let taken = a.take(1, LEASE, Duration::from_secs(5)).await.unwrap();
    assert_nothing_visible(&b, "held").await;
    a.postpone(&taken[0], Duration::ZERO).await.unwrap();
    let again = b.take(1, LEASE, Duration::from_secs(5)).await.unwrap();
    assert_eq!(ids(&again), ["m"]);
    assert_ne!(again[0].receipt, taken[0].receipt);
    b.finish(&again[0]).await.unwrap();
    assert_nothing_visible(&a, "finished").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postpone_under_a_minute_reannounces_with_a_delay() {
    let q = queue();
    let (a, b) = (open(&q).await, open(&q).await);
    a.announce("m", Duration::ZERO).await.unwrap();
    let taken = a.take(1, LEASE, Duration::from_secs(5)).await.unwrap();
    a.postpone(&taken[0], Duration::from_secs(5)).await.unwrap();
    assert_nothing_visible(&b, "postponed by 5 s").await;
    let again = b.take(5, LEASE, Duration::from_secs(30)).await.unwrap();
    assert_eq!(ids(&again), ["m"], "one notice, not the old and a new one");
    b.finish(&again[0]).await.unwrap();
    assert_nothing_visible(&a, "finished").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postpone_for_minutes_keeps_the_notice_held() {
    let q = queue();
    let (a, b) = (open(&q).await, open(&q).await);
    a.announce("m", Duration::ZERO).await.unwrap();
    let taken = a.take(1, LEASE, Duration::from_secs(5)).await.unwrap();
    // A lease extended during a long attempt: the claim itself lasts
    // longer, and its holder still finishes it with the same receipt.
    a.postpone(&taken[0], Duration::from_secs(600))
        .await
        .unwrap();
    assert_nothing_visible(&b, "postponed by 10 minutes").await;
    a.finish(&taken[0]).await.unwrap();
    assert_nothing_visible(&b, "finished").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_takers_never_hold_the_same_notice() {
    let q = queue();
    let announcer = open(&q).await;
    const NOTICES: usize = 40;
    for i in 0..NOTICES {
        announcer
            .announce(&format!("m{i:02}"), Duration::ZERO)
            .await
            .unwrap();
    }
    let mut takers = tokio::task::JoinSet::new();
    for _ in 0..2 {
        let n = open(&q).await;
        takers.spawn(async move {
            let mut held = Vec::new();
            loop {
                let got = n.take(3, LEASE, Duration::ZERO).await.unwrap();
                if got.is_empty() {
                    return held;
                }
                held.extend(got.into_iter().map(|n| n.id));
            }
        });
    }
    let held = takers.join_all().await;
    let all: Vec<&String> = held.iter().flatten().collect();
    let distinct: HashSet<&String> = all.iter().copied().collect();
    assert_eq!(all.len(), distinct.len(), "a notice held twice: {held:?}");
    assert_eq!(distinct.len(), NOTICES);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn leases_run_out() {
    let first = open(&queue()).await;
    let unclaimed = open(&queue()).await;
    let ordered_q = queue();
    let ordered = open(&ordered_q).await;
    let long_holder = open(&ordered_q).await;
    let postponed = open(&queue()).await;

    // A notice held by a taker that never finishes it.
    first.announce("lost", Duration::ZERO).await.unwrap();
    let lost = first.take(1, LEASE, Duration::from_secs(5)).await.unwrap();
    // One whose lease runs out with nobody taking it since.
    unclaimed.announce("late", Duration::ZERO).await.unwrap();
    let late = unclaimed
        .take(1, LEASE, Duration::from_secs(5))
        .await
        .unwrap();
    // An expired claim ahead of a live one: the live one stays held.
    ordered.announce("ahead", Duration::ZERO).await.unwrap();
    ordered.announce("behind", Duration::ZERO).await.unwrap();
    let ahead = ordered
        .take(1, LEASE, Duration::from_secs(5))
        .await
        .unwrap();
    let behind = long_holder
        .take(1, Duration::from_secs(600), Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!((ids(&ahead), ids(&behind)), (vec!["ahead"], vec!["behind"]));
    // A claim updated to 61 s.
    postponed.announce("p", Duration::ZERO).await.unwrap();
    let p = postponed
        .take(1, LEASE, Duration::from_secs(5))
        .await
        .unwrap();
    postponed
        .postpone(&p[0], Duration::from_secs(61))
        .await
        .unwrap();
    assert_nothing_visible(&postponed, "postponed by 61 s").await;

    // The lost notice reappears to another taker once the lease ran out.
    let other = open(first.queue()).await;
    let again = other.take(1, LEASE, PATIENCE).await.unwrap();
    assert_eq!(ids(&again), ["lost"]);
    assert_ne!(again[0].receipt, lost[0].receipt);
    // Its first taker can no longer finish it; the new one can.
    let e = first.finish(&lost[0]).await.unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::PermissionDenied, "{e}");
    other.finish(&again[0]).await.unwrap();
    assert_nothing_visible(&other, "finished by its second taker").await;

    // Its lease ran out, nobody took it: its taker still finishes it.
    unclaimed.finish(&late[0]).await.unwrap();
    assert_nothing_visible(&unclaimed, "finished after its lease").await;

    // Only the expired one comes back; the one behind it is still held.
    let back = ordered.take(10, LEASE, PATIENCE).await.unwrap();
    assert_eq!(ids(&back), ["ahead"]);
    assert_nothing_visible(&ordered, "'behind' is held for 10 minutes").await;
    long_holder.finish(&behind[0]).await.unwrap();

    // The updated claim ran out too.
    let p_again = postponed.take(1, LEASE, PATIENCE).await.unwrap();
    assert_eq!(ids(&p_again), ["p"]);
    // Updating a claim that ran out says so.
    let e = postponed
        .postpone(&p[0], Duration::from_secs(120))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::NotFound, "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_existing_queue_gets_the_metadata_delays_need() {
    let zaqar = Zaqar::shared();
    let q = queue();
    // Made by someone else, without metadata: Zaqar would drop `delay`.
    let made = reqwest::Client::new()
        .put(format!("{}/v2/queues/{q}", zaqar.url()))
        .header("Client-ID", "0c9a4a32-1b4e-4d54-a1a8-2f3c1d51b0aa")
        .header("X-Project-ID", "slimta")
        .send()
        .await
        .unwrap();
    assert_eq!(made.status(), reqwest::StatusCode::CREATED);
    let n = open(&q).await;
    n.announce("m", Duration::from_secs(600)).await.unwrap();
    assert_nothing_visible(&n, "delayed by 10 minutes").await;
}

#[tokio::test]
async fn an_unreachable_zaqar_is_a_connection_error() {
    let port = test_peers::free_port();
    let e = ZaqarNotifier::builder(format!("http://127.0.0.1:{port}"), "q")
        .open()
        .await
        .unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::ConnectionRefused, "{e}");
}

/// Two processes on one store and one Zaqar queue: every message handed
/// out once, by one of them; the notices of done messages are finished.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_cloud_dispatchers_hand_each_message_out_once() {
    let q = queue();
    let objects = MemoryObjects::new();
    // Each process has its own notifier (its own Client-ID) on the queue.
    let writer: Arc<ZaqarNotifier> = Arc::new(open(&q).await);
    let storage =
        CloudStorage::new(objects.clone(), "q/").with_notifier(writer, Duration::from_secs(1));
    let mut dispatchers = Vec::new();
    for _ in 0..2 {
        dispatchers.push(Arc::new(CloudDispatch::new(
            Arc::new(open(&q).await),
            Arc::new(storage.clone()),
            LEASE,
        )));
    }
    const MESSAGES: usize = 30;
    let mut written = Vec::new();
    for i in 0..MESSAGES {
        let envelope = Envelope::new(
            "a@example.test",
            vec![format!("r{i}@example.test")],
            format!("Subject: {i}\r\n\r\nbody\r\n").into_bytes(),
        );
        written.push(storage.write(&envelope, SystemTime::now()).await.unwrap());
    }
    let handed = Arc::new(std::sync::Mutex::new(HashMap::<String, Vec<usize>>::new()));
    let mut workers = Vec::new();
    for (which, d) in dispatchers.iter().enumerate() {
        let (d, handed, storage) = (d.clone(), handed.clone(), storage.clone());
        workers.push(tokio::spawn(async move {
            loop {
                let lease = d.next_due().await;
                handed
                    .lock()
                    .unwrap()
                    .entry(lease.id.clone())
                    .or_default()
                    .push(which);
                storage.remove(&lease.id).await.unwrap();
                d.ended(&lease.id, AttemptEnd::Done).await;
            }
        }));
    }
    let deadline = Instant::now() + PATIENCE;
    while handed.lock().unwrap().len() < MESSAGES && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A second hand-out would follow a notice left behind; give the
    // dispatchers a moment to take one.
    tokio::time::sleep(Duration::from_secs(3)).await;
    for w in &workers {
        w.abort();
    }
    let handed = handed.lock().unwrap().clone();
    let mut got: Vec<&String> = handed.keys().collect();
    got.sort();
    let mut expected: Vec<&String> = written.iter().collect();
    expected.sort();
    assert_eq!(got, expected, "not every message was handed out");
    let twice: Vec<_> = handed.iter().filter(|(_, by)| by.len() > 1).collect();
    assert!(twice.is_empty(), "handed out more than once: {twice:?}");
    assert!(storage.load().await.unwrap().is_empty());
    // Every notice was finished: the queue holds none, free or claimed.
    let stats = reqwest::Client::new()
        .get(format!("{}/v2/queues/{q}/stats", Zaqar::shared().url()))
        .header("Client-ID", "0c9a4a32-1b4e-4d54-a1a8-2f3c1d51b0aa")
        .header("X-Project-ID", "slimta")
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let stats: serde_json::Value = serde_json::from_slice(&stats).unwrap();
    assert_eq!(stats["messages"]["total"], 0, "notices left: {stats}");
}
