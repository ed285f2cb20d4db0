//! SqsNotifier and CloudDispatch against a real SQS API (moto on
//! loopback, started once for this binary, a queue per test).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use slimta::Envelope;
use slimta::queue::{AttemptEnd, Dispatch, QueueStorage};
use slimta_cloud::credentials::{AwsKeys, Secret};
use slimta_cloud::{
    CloudDispatch, CloudStorage, MemoryObjects, Notice, Notifier, SqsNotifier, SqsSettings,
};
use test_peers::moto::Moto;

async fn queue() -> SqsNotifier {
    let moto = Moto::shared();
    let mut settings = SqsSettings {
        queue_url: String::new(),
        endpoint: Some(moto.endpoint()),
        region: "us-east-1".into(),
        keys: AwsKeys {
            access_key_id: "test".into(),
            secret_access_key: Secret::new("test"),
            session_token: None,
        },
        timeout: Duration::from_secs(10),
    };
    let name = format!("t-{}", uuid::Uuid::new_v4().simple());
    settings.queue_url = SqsNotifier::create_queue(&settings, &name).await.unwrap();
    SqsNotifier::new(&settings)
}

/// Takes until something comes, for up to `within`.
async fn take_within(n: &SqsNotifier, lease: Duration, within: Duration) -> Vec<Notice> {
    let deadline = Instant::now() + within;
    loop {
        let got = n.take(10, lease, Duration::from_secs(1)).await.unwrap();
        if !got.is_empty() || Instant::now() > deadline {
            return got;
        }
    }
}

#[tokio::test]
async fn a_taken_notice_is_leased_and_reappears_after_the_lease() {
    let n = queue().await;
    n.announce("m1", Duration::ZERO).await.unwrap();
    let first = take_within(&n, Duration::from_secs(30), Duration::from_secs(10)).await;
    assert_eq!(
        first.iter().map(|x| x.id.as_str()).collect::<Vec<_>>(),
        ["m1"]
    );
    // While leased (30 s), nobody else gets it.
    let during = n
        .take(10, Duration::from_secs(30), Duration::ZERO)
        .await
        .unwrap();
    assert!(
        during.is_empty(),
        "a leased notice was handed out: {during:?}"
    );

    n.announce("m1b", Duration::ZERO).await.unwrap();
    let short = take_within(&n, Duration::from_secs(1), Duration::from_secs(10)).await;
    assert_eq!(short.len(), 1);
    assert_eq!(short[0].id, "m1b");
    // Nobody finishes it (its taker "died"): it is back after its lease.
    let again = take_within(&n, Duration::from_secs(30), Duration::from_secs(30)).await;
    assert_eq!(
        again.iter().map(|x| x.id.as_str()).collect::<Vec<_>>(),
        ["m1b"]
    );
    assert_ne!(again[0].receipt, short[0].receipt);
}

#[tokio::test]
async fn postpone_hides_it_and_finish_removes_it() {
    let n = queue().await;
    n.announce("m2", Duration::ZERO).await.unwrap();
    let got = take_within(&n, Duration::from_secs(30), Duration::from_secs(10)).await;
    assert_eq!(got.len(), 1);
    n.postpone(&got[0], Duration::from_secs(2)).await.unwrap();
    assert!(
        n.take(10, Duration::from_secs(30), Duration::ZERO)
            .await
            .unwrap()
            .is_empty()
    );
    let back = take_within(&n, Duration::from_secs(1), Duration::from_secs(20)).await;
    assert_eq!(back.len(), 1, "a postponed notice did not come back");
    n.finish(&back[0]).await.unwrap();
    // Its lease (1 s) is long over after these polls: finished for good.
    for _ in 0..3 {
        let none = n
            .take(10, Duration::from_secs(30), Duration::from_secs(1))
            .await
            .unwrap();
        assert!(none.is_empty(), "a finished notice came back: {none:?}");
    }
}

#[tokio::test]
async fn an_announced_delay_hides_the_notice_until_then() {
    let n = queue().await;
    n.announce("m3", Duration::from_secs(2)).await.unwrap();
    assert!(
        n.take(10, Duration::from_secs(30), Duration::ZERO)
            .await
            .unwrap()
            .is_empty()
    );
    let got = take_within(&n, Duration::from_secs(30), Duration::from_secs(20)).await;
    assert_eq!(got.len(), 1);
}

fn envelope(i: usize) -> Envelope {
    Envelope::new(
        "a@example.test",
        vec![format!("r{i}@example.test")],
        format!("Subject: {i}\r\n\r\nbody\r\n").into_bytes(),
    )
}

/// Two processes on one store and one queue: every message handed out
/// once, by one of them, and notices of done messages are finished.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_dispatchers_hand_each_message_out_once() {
    let sqs = Arc::new(queue().await);
    let objects = MemoryObjects::new();
    // Notices become visible 1 s after the write (the "first lease"):
    // nobody attempts first here (no Dispatch::add), so the dispatchers
    // take them all from SQS.
    let storage =
        CloudStorage::new(objects.clone(), "q/").with_notifier(sqs.clone(), Duration::from_secs(1));
    let lease = Duration::from_secs(60);
    let a = Arc::new(CloudDispatch::new(
        sqs.clone(),
        Arc::new(storage.clone()),
        lease,
    ));
    let b = Arc::new(CloudDispatch::new(
        sqs.clone(),
        Arc::new(storage.clone()),
        lease,
    ));
    const N: usize = 40;
    let mut ids = Vec::new();
    for i in 0..N {
        ids.push(
            storage
                .write(&envelope(i), SystemTime::now())
                .await
                .unwrap(),
        );
    }
    let handed = Arc::new(std::sync::Mutex::new(HashMap::<String, Vec<char>>::new()));
    let mut workers = Vec::new();
    for (name, d) in [('a', a.clone()), ('b', b.clone())] {
        let (handed, storage) = (handed.clone(), storage.clone());
        workers.push(tokio::spawn(async move {
            loop {
                let lease = d.next_due().await;
                assert!(lease.expires.is_some());
                handed
                    .lock()
                    .unwrap()
                    .entry(lease.id.clone())
                    .or_default()
                    .push(name);
                storage.remove(&lease.id).await.unwrap();
                d.ended(&lease.id, AttemptEnd::Done).await;
            }
        }));
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while handed.lock().unwrap().len() < N && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Any second hand-out would come within the lease; none is expected
    // at all (notices finished, messages gone).
    tokio::time::sleep(Duration::from_secs(3)).await;
    for w in &workers {
        w.abort();
    }
    let handed = handed.lock().unwrap().clone();
    assert_eq!(handed.len(), N, "not every message was handed out");
    let twice: Vec<_> = handed.iter().filter(|(_, by)| by.len() > 1).collect();
    assert!(twice.is_empty(), "handed out more than once: {twice:?}");
    for id in &ids {
        assert!(handed.contains_key(id));
    }
    assert!(storage.load().await.unwrap().is_empty());
    let by_a = handed.values().filter(|by| by[0] == 'a').count();
    eprintln!("handed out by a: {by_a}, by b: {}", N - by_a);
}

/// A retry postpones the notice to the retry time; a message not due
/// yet is not handed out before its time; a first attempt made by the
/// writing process is not handed out again by anyone.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn retries_wait_for_their_time_and_first_attempts_stay_local() {
    let sqs = Arc::new(queue().await);
    let objects = MemoryObjects::new();
    let storage =
        CloudStorage::new(objects.clone(), "q/").with_notifier(sqs.clone(), Duration::from_secs(1));
    let d = CloudDispatch::new(
        sqs.clone(),
        Arc::new(storage.clone()),
        Duration::from_secs(60),
    );
    // Due in 3 s: its notice shows after 1 s and is postponed until then.
    let due = SystemTime::now() + Duration::from_secs(3);
    let later = storage.write(&envelope(1), due).await.unwrap();
    let lease = tokio::time::timeout(Duration::from_secs(30), d.next_due())
        .await
        .unwrap();
    assert_eq!(lease.id, later);
    assert!(
        SystemTime::now() + Duration::from_millis(500) >= due,
        "handed out early"
    );
    // It fails; retry in 2 s.
    let retry_at = SystemTime::now() + Duration::from_secs(2);
    storage
        .record(
            &later,
            &slimta::queue::AttemptOutcome {
                attempts: 1,
                next_attempt: Some(retry_at),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    d.ended(&later, AttemptEnd::RetryAt(retry_at)).await;
    let lease = tokio::time::timeout(Duration::from_secs(30), d.next_due())
        .await
        .unwrap();
    assert_eq!(lease.id, later);
    assert!(
        SystemTime::now() + Duration::from_millis(500) >= retry_at,
        "retried early"
    );
    storage.remove(&later).await.unwrap();
    d.ended(&later, AttemptEnd::Done).await;

    // A first attempt in the writing process: handed out at once from
    // the local add, its notice (visible after 1 s) finds it gone.
    let local = storage
        .write(&envelope(2), SystemTime::now())
        .await
        .unwrap();
    let destination = slimta::relay::Destination::new("example.test");
    assert!(
        d.add(local.clone(), SystemTime::now(), Some(destination))
            .await
    );
    let lease = tokio::time::timeout(Duration::from_secs(5), d.next_due())
        .await
        .unwrap();
    assert_eq!(lease.id, local);
    storage.remove(&local).await.unwrap();
    d.ended(&local, AttemptEnd::Done).await;
    let again = tokio::time::timeout(Duration::from_secs(4), d.next_due()).await;
    assert!(
        again.is_err(),
        "a done message was handed out again: {again:?}"
    );
}

/// An operator's "retry now" from another process (`slimta queue retry`
/// sets the due time in the store) reaches whoever holds the message's
/// notice: the storage announces a new one.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_retry_now_from_another_process_takes_effect() {
    let sqs = Arc::new(queue().await);
    let objects = MemoryObjects::new();
    let daemon =
        CloudStorage::new(objects.clone(), "q/").with_notifier(sqs.clone(), Duration::from_secs(1));
    let d = CloudDispatch::new(
        sqs.clone(),
        Arc::new(daemon.clone()),
        Duration::from_secs(60),
    );
    let id = daemon
        .write(&envelope(1), SystemTime::now() + Duration::from_secs(3600))
        .await
        .unwrap();
    // Its notice shows after 1 s and is postponed for the hour.
    let early = tokio::time::timeout(Duration::from_secs(4), d.next_due()).await;
    assert!(early.is_err(), "handed out an hour early: {early:?}");
    let operator =
        CloudStorage::new(objects.clone(), "q/").with_notifier(sqs.clone(), Duration::from_secs(1));
    operator
        .set_timestamp(&id, SystemTime::now())
        .await
        .unwrap();
    let lease = tokio::time::timeout(Duration::from_secs(30), d.next_due())
        .await
        .expect("the retry did not reach the dispatcher");
    assert_eq!(lease.id, id);
}
