//! RedisDispatch against a real redis-server: many dispatchers on one
//! Redis hand each message out once; an expired lease is handed out again
//! and the late owner cannot move the new lease; operator requests; the end
//! of an attempt; a Redis restart survived.

mod common;

use std::collections::HashSet;
use std::io;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use slimta::Envelope;
use slimta::queue::{AttemptEnd, Dispatch, Placement, QueueStorage, clock};
use slimta_redis::{RedisDispatch, RedisOptions, RedisStorage};
use test_peers::RedisServer;

fn envelope(i: usize) -> Envelope {
    Envelope::new(
        "s@x.test",
        vec![format!("r{i}@y.test")],
        format!("Subject: {i}\r\n\r\nbody\r\n").into_bytes(),
    )
}

/// A plain client on the same Redis, to look at the due set itself.
async fn score(url: &str, options: &RedisOptions, id: &str) -> Option<u64> {
    let client = redis::Client::open(url).unwrap();
    let mut con = client.get_multiplexed_async_connection().await.unwrap();
    let key = format!("{}due", options.key_prefix());
    redis::cmd("ZSCORE")
        .arg(key)
        .arg(id)
        .query_async(&mut con)
        .await
        .unwrap()
}

fn ms(t: SystemTime) -> u64 {
    u64::try_from(
        t.duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_millis(),
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn many_dispatchers_hand_each_message_out_once() {
    const MESSAGES: usize = 300;
    let server = common::server();
    let options = common::options(&server.url());
    let storage = RedisStorage::open(&options).unwrap();
    let mut written = HashSet::new();
    for i in 0..MESSAGES {
        written.insert(storage.write(&envelope(i), clock::now()).await.unwrap());
    }
    let dispatchers: Vec<Arc<RedisDispatch>> = (0..3)
        .map(|_| RedisDispatch::open(&options).unwrap())
        .collect();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let mut tasks = Vec::new();
    for (n, d) in dispatchers.iter().enumerate() {
        let (d, tx) = (d.clone(), tx.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let lease = d.next_due().await;
                assert!(lease.expires.is_some(), "a shared lease has an end");
                if tx.send((n, lease.id)).is_err() {
                    return;
                }
            }
        }));
    }
    let mut handed = Vec::new();
    while handed.len() < MESSAGES {
        let got = tokio::time::timeout(Duration::from_secs(30), rx.recv())
            .await
            .expect("every message is handed out within 30 s")
            .unwrap();
        handed.push(got);
    }
    drop(rx);
    for task in tasks {
        task.abort();
    }
    let ids: HashSet<&String> = handed.iter().map(|(_, id)| id).collect();
    assert_eq!(ids.len(), MESSAGES, "a message was handed out twice");
    assert_eq!(ids, written.iter().collect::<HashSet<_>>());
    let per: Vec<usize> = (0..3)
        .map(|n| handed.iter().filter(|(d, _)| *d == n).count())
        .collect();
    eprintln!("handed out per dispatcher: {per:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_expired_lease_is_handed_out_again_and_the_late_owner_yields() {
    let server = common::server();
    let options = common::options(&server.url()).lease(Duration::from_secs(1));
    let storage = RedisStorage::open(&options).unwrap();
    let id = storage.write(&envelope(0), clock::now()).await.unwrap();
    let (first, second) = (
        RedisDispatch::open(&options).unwrap(),
        RedisDispatch::open(&options).unwrap(),
    );
    let lease = first.next_due().await;
    assert_eq!(lease.id, id);
    // `first` dies or stalls; `second` takes the message after the lease.
    let again = tokio::time::timeout(Duration::from_secs(20), second.next_due())
        .await
        .expect("taken again after the lease");
    assert_eq!(again.id, id);
    let second_end = again.expires.unwrap();
    assert!(second_end > lease.expires.unwrap());
    assert_eq!(
        score(&server.url(), &options, &id).await,
        Some(ms(second_end))
    );
    // The late first owner's end does not move the second one's lease.
    first.ended(&id, AttemptEnd::RetryAt(clock::now())).await;
    assert_eq!(
        score(&server.url(), &options, &id).await,
        Some(ms(second_end))
    );
    // The second owner's end does.
    let later = clock::now() + Duration::from_secs(3600);
    second.ended(&id, AttemptEnd::RetryAt(later)).await;
    assert_eq!(score(&server.url(), &options, &id).await, Some(ms(later)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn operator_retry_and_delete() {
    let server = common::server();
    let options = common::options(&server.url());
    let storage = RedisStorage::open(&options).unwrap();
    let dispatch = RedisDispatch::open(&options).unwrap();
    let later = clock::now() + Duration::from_secs(3600);
    let id = storage.write(&envelope(0), later).await.unwrap();
    assert_eq!(dispatch.retry_now("unknown-id").await, Placement::Unknown);
    assert_eq!(dispatch.retry_now(&id).await, Placement::Waiting);
    let lease = tokio::time::timeout(Duration::from_secs(10), dispatch.next_due())
        .await
        .expect("due at once after retry now");
    assert_eq!(lease.id, id);
    // In flight: the request is remembered for the attempt, once.
    assert!(!dispatch.take_retry_request(&id).await);
    assert_eq!(dispatch.retry_now(&id).await, Placement::InFlight);
    assert!(dispatch.take_retry_request(&id).await);
    assert!(!dispatch.take_retry_request(&id).await);
    // `slimta queue retry` sets the time on the store: the same for a
    // message in flight, and the score is left to the lease holder.
    storage.set_timestamp(&id, clock::now()).await.unwrap();
    assert!(dispatch.take_retry_request(&id).await);
    assert_eq!(
        score(&server.url(), &options, &id).await,
        Some(ms(lease.expires.unwrap()))
    );
    assert_eq!(dispatch.delete(&id).await, Placement::InFlight);
    dispatch.ended(&id, AttemptEnd::RetryAt(later)).await;
    assert_eq!(score(&server.url(), &options, &id).await, Some(ms(later)));
    // Waiting: a set_timestamp moves the score, delete drops it.
    let soon = clock::now() + Duration::from_secs(60);
    storage.set_timestamp(&id, soon).await.unwrap();
    assert_eq!(score(&server.url(), &options, &id).await, Some(ms(soon)));
    assert_eq!(dispatch.delete(&id).await, Placement::Waiting);
    assert_eq!(score(&server.url(), &options, &id).await, None);
    assert_eq!(dispatch.delete(&id).await, Placement::Unknown);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn add_and_the_end_of_attempts() {
    let server = common::server();
    let options = common::options(&server.url());
    let storage = RedisStorage::open(&options).unwrap();
    let dispatch = RedisDispatch::open(&options).unwrap();
    let id = storage.write(&envelope(0), clock::now()).await.unwrap();
    // The write scheduled it: add changes nothing.
    assert!(!dispatch.add(id.clone(), clock::now(), None).await);
    assert!(!dispatch.add("not-stored".into(), clock::now(), None).await);
    assert_eq!(dispatch.next_due().await.id, id);
    // A record during the attempt keeps the lease's score.
    let lease_end = score(&server.url(), &options, &id).await.unwrap();
    let retry = clock::now() + Duration::from_secs(600);
    let outcome = slimta::queue::AttemptOutcome {
        attempts: 1,
        next_attempt: Some(retry),
        ..Default::default()
    };
    storage.record(&id, &outcome).await.unwrap();
    assert_eq!(score(&server.url(), &options, &id).await, Some(lease_end));
    dispatch.ended(&id, AttemptEnd::RetryAt(retry)).await;
    assert_eq!(score(&server.url(), &options, &id).await, Some(ms(retry)));
    // Out of the lease, a record moves the score itself.
    let sooner = clock::now() + Duration::from_secs(300);
    let outcome = slimta::queue::AttemptOutcome {
        attempts: 2,
        next_attempt: Some(sooner),
        ..Default::default()
    };
    storage.record(&id, &outcome).await.unwrap();
    assert_eq!(score(&server.url(), &options, &id).await, Some(ms(sooner)));
    // Done: removed from storage (and the due set with it).
    storage.remove(&id).await.unwrap();
    dispatch.ended(&id, AttemptEnd::Done).await;
    assert_eq!(score(&server.url(), &options, &id).await, None);
    // A stored message missing from the due set is added back.
    let other = storage.write(&envelope(1), clock::now()).await.unwrap();
    let client = redis::Client::open(server.url()).unwrap();
    let mut con = client.get_multiplexed_async_connection().await.unwrap();
    let _: i64 = redis::cmd("ZREM")
        .arg(format!("{}due", options.key_prefix()))
        .arg(&other)
        .query_async(&mut con)
        .await
        .unwrap();
    assert!(dispatch.add(other.clone(), clock::now(), None).await);
    assert_eq!(dispatch.next_due().await.id, other);
    // Gone: deleted by an operator during the attempt.
    storage.remove(&other).await.unwrap();
    dispatch.ended(&other, AttemptEnd::Gone).await;
    assert_eq!(score(&server.url(), &options, &other).await, None);
}

fn is_connection_kind(e: &io::Error) -> bool {
    use io::ErrorKind as K;
    matches!(
        e.kind(),
        K::ConnectionRefused
            | K::ConnectionReset
            | K::ConnectionAborted
            | K::NotConnected
            | K::BrokenPipe
            | K::TimedOut
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_redis_restart_is_survived() {
    // A server of its own: the others' tests must not see it go.
    let mut server = RedisServer::start();
    let options = common::options(&server.url()).timeout(Duration::from_secs(2));
    let storage = RedisStorage::open(&options).unwrap();
    let dispatch = RedisDispatch::open(&options).unwrap();
    let mut acknowledged = Vec::new();
    for i in 0..50 {
        acknowledged.push(storage.write(&envelope(i), clock::now()).await.unwrap());
    }
    let lease = dispatch.next_due().await;

    server.kill();
    let e = storage
        .write(&envelope(99), clock::now())
        .await
        .expect_err("a write with Redis down");
    assert!(is_connection_kind(&e), "{e:?}");
    for _ in 0..3 {
        let e = storage.get(&acknowledged[0]).await.unwrap_err();
        assert!(is_connection_kind(&e), "{e:?}");
        let e = storage.load().await.unwrap_err();
        assert!(is_connection_kind(&e), "{e:?}");
    }
    // The dispatcher waits (it neither panics nor hands anything out).
    assert!(
        tokio::time::timeout(Duration::from_secs(1), dispatch.next_due())
            .await
            .is_err()
    );
    dispatch
        .ended(&lease.id, AttemptEnd::RetryAt(clock::now()))
        .await;

    server.restart();
    // The manager reconnects in the background: the first calls may still
    // fail, with a connection kind.
    let mut tries = 0;
    let id = loop {
        match storage.write(&envelope(100), clock::now()).await {
            Ok(id) => break id,
            Err(e) => {
                assert!(is_connection_kind(&e), "{e:?}");
                tries += 1;
                assert!(tries < 100, "no write works after the restart: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    eprintln!("{tries} failed writes after the restart before one worked");
    let mut loaded: Vec<String> = storage
        .load()
        .await
        .unwrap()
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    loaded.sort();
    let mut expected = acknowledged.clone();
    expected.push(id.clone());
    expected.sort();
    assert_eq!(loaded, expected, "an acknowledged message was lost");
    for (i, id) in acknowledged.iter().enumerate() {
        assert_eq!(
            storage.get(id).await.unwrap().envelope.recipients,
            [format!("r{i}@y.test")]
        );
    }
    // Every message is handed out after the restart, the leased one once
    // its lease ends (5 min) -- not waited for here.
    let mut handed = HashSet::new();
    while handed.len() < expected.len() - 1 {
        let l = tokio::time::timeout(Duration::from_secs(20), dispatch.next_due())
            .await
            .expect("handed out after the restart");
        handed.insert(l.id);
    }
    assert!(!handed.contains(&lease.id));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_never_answers_times_out() {
    // Accepts connections and reads, never answers (a hung Redis).
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming().flatten() {
            held.push(stream);
        }
    });
    let options =
        RedisOptions::new(format!("redis://{addr}/0")).timeout(Duration::from_millis(500));
    let storage = RedisStorage::open(&options).unwrap();
    for _ in 0..2 {
        let e = storage
            .write(&envelope(0), clock::now())
            .await
            .expect_err("no answer");
        assert_eq!(e.kind(), io::ErrorKind::TimedOut, "{e:?}");
    }
    let e = storage.get("x").await.unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::TimedOut, "{e:?}");
    // Nothing listens: refused.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let storage =
        RedisStorage::open(&RedisOptions::new(format!("redis://127.0.0.1:{port}/0"))).unwrap();
    let e = storage.write(&envelope(0), clock::now()).await.unwrap_err();
    assert!(is_connection_kind(&e), "{e:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rediss_with_a_private_ca() {
    let server = RedisServer::start_tls();
    assert!(server.url().starts_with("rediss://"));
    let options = common::options(&server.url()).tls_ca(server.ca_pem());
    let storage = RedisStorage::open(&options).unwrap();
    let id = storage.write(&envelope(7), clock::now()).await.unwrap();
    assert_eq!(
        storage.get(&id).await.unwrap().envelope.recipients,
        ["r7@y.test"]
    );
    let dispatch = RedisDispatch::open(&options).unwrap();
    assert_eq!(dispatch.next_due().await.id, id);
    // Without the CA, the server's certificate is not trusted: an error,
    // not a connection in the clear.
    let untrusted = RedisStorage::open(&common::options(&server.url())).unwrap();
    assert!(untrusted.write(&envelope(8), clock::now()).await.is_err());
}
