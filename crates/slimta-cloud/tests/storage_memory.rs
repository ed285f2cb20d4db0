//! CloudStorage's logic over the in-memory object backend: the shared
//! conformance suite, and what only this storage does (versions, races,
//! removal order, half-removed messages, an unreachable store).

use std::io;
use std::time::{Duration, SystemTime};

use slimta::Envelope;
use slimta::queue::{AttemptOutcome, QueueStorage};
use slimta_cloud::{CloudStorage, MemoryObjects, ObjectBackend as _};
use slimta_storage_suite::{Fixture, storage_conformance};

fn fixture() -> Fixture<CloudStorage<MemoryObjects>> {
    let objects = MemoryObjects::new();
    Fixture {
        storage: CloudStorage::new(objects, "q/"),
        reopen: Some(Box::new(move |old: CloudStorage<MemoryObjects>| {
            let objects = old.objects().clone();
            drop(old);
            CloudStorage::new(objects, "q/")
        })),
        guard: Box::new(()),
    }
}

storage_conformance!(fixture());

fn envelope(recipients: usize) -> Envelope {
    Envelope::new(
        "sender@example.test",
        (0..recipients)
            .map(|i| format!("r{i}@example.test"))
            .collect(),
        b"Subject: hi\r\n\r\nhello\r\n".to_vec(),
    )
}

fn t(secs: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
}

#[tokio::test]
async fn a_record_is_a_new_version_and_the_old_one_goes() {
    let objects = MemoryObjects::new();
    let s = CloudStorage::new(objects.clone(), "q/");
    let id = s.write(&envelope(2), t(100)).await.unwrap();
    let outcome = AttemptOutcome {
        attempts: 1,
        finished: vec![1],
        next_attempt: Some(t(200)),
        ..AttemptOutcome::default()
    };
    s.record(&id, &outcome).await.unwrap();
    let keys = objects.keys();
    assert_eq!(
        keys,
        vec![
            format!("q/env/{id}"),
            format!("q/meta/{id}/0000000001-{:020}", 200u128 * 1_000_000_000),
        ]
    );
    assert_eq!(s.load().await.unwrap(), vec![(id, t(200))]);
}

#[tokio::test]
async fn two_processes_recording_at_once_both_count() {
    // Two handles on one store are two processes: each applies its outcome
    // on top of the other's, none is overwritten.
    let objects = MemoryObjects::new();
    let a = CloudStorage::new(objects.clone(), "q/");
    let b = CloudStorage::new(objects.clone(), "q/");
    let id = a.write(&envelope(40), t(1)).await.unwrap();
    let mut tasks = Vec::new();
    for i in 0..40usize {
        let s = if i % 2 == 0 { a.clone() } else { b.clone() };
        let id = id.clone();
        tasks.push(tokio::spawn(async move {
            let outcome = AttemptOutcome {
                attempts: 1,
                finished: vec![i],
                ..AttemptOutcome::default()
            };
            s.record(&id, &outcome).await
        }));
    }
    let mut lost = 0;
    for task in tasks {
        if task.await.unwrap().is_err() {
            lost += 1;
        }
    }
    let meta = a.get(&id).await.unwrap().meta;
    // A record that gave up after its bounded retries reported an error
    // (the queue retries it); every one that returned Ok is in the result.
    assert_eq!(meta.delivered.len(), 40 - lost, "lost {lost}");
    assert_eq!(lost, 0, "records gave up under contention");
}

#[tokio::test]
async fn metadata_without_an_envelope_is_not_a_message_and_is_cleaned() {
    let objects = MemoryObjects::new();
    let s = CloudStorage::new(objects.clone(), "q/");
    let id = s.write(&envelope(1), t(1)).await.unwrap();
    s.record(
        &id,
        &AttemptOutcome {
            attempts: 1,
            next_attempt: Some(t(2)),
            ..AttemptOutcome::default()
        },
    )
    .await
    .unwrap();
    // A crash in the middle of remove: the envelope went first.
    objects.delete(&format!("q/env/{id}")).await.unwrap();
    assert_eq!(
        s.get(&id).await.unwrap_err().kind(),
        io::ErrorKind::NotFound
    );
    assert!(s.load().await.unwrap().is_empty());
    assert!(objects.keys().is_empty(), "left: {:?}", objects.keys());
}

#[tokio::test]
async fn a_fresh_first_version_without_envelope_is_left_alone() {
    // Another process may be writing that message right now.
    let objects = MemoryObjects::new();
    let s = CloudStorage::new(objects.clone(), "q/");
    let id = s.write(&envelope(1), SystemTime::now()).await.unwrap();
    objects.delete(&format!("q/env/{id}")).await.unwrap();
    assert!(s.load().await.unwrap().is_empty());
    assert_eq!(objects.keys().len(), 1);
}

#[tokio::test]
async fn an_envelope_without_metadata_is_due_now() {
    let objects = MemoryObjects::new();
    let s = CloudStorage::new(objects.clone(), "q/");
    let id = s.write(&envelope(1), t(5)).await.unwrap();
    for key in objects.keys() {
        if key.contains("/meta/") {
            objects.delete(&key).await.unwrap();
        }
    }
    let before = SystemTime::now();
    let loaded = s.load().await.unwrap();
    assert_eq!(loaded.len(), 1);
    assert!(loaded[0].1 >= before);
    let stored = s.get(&id).await.unwrap();
    assert_eq!(stored.meta.attempts, 0);
}

#[tokio::test]
async fn an_unreachable_store_fails_with_a_connection_kind() {
    let objects = MemoryObjects::new();
    let s = CloudStorage::new(objects.clone(), "q/");
    let id = s.write(&envelope(1), t(5)).await.unwrap();
    objects.set_unreachable(true);
    let e = s.write(&envelope(1), t(5)).await.unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::ConnectionRefused);
    let e = s.record(&id, &AttemptOutcome::default()).await.unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::ConnectionRefused);
    objects.set_unreachable(false);
    assert_eq!(s.load().await.unwrap().len(), 1);
}

#[tokio::test]
async fn statistics_come_from_two_listings() {
    let objects = MemoryObjects::new();
    let s = CloudStorage::new(objects.clone(), "q/");
    for secs in [300, 100, 200] {
        let mut e = envelope(1);
        e.receive_time = t(secs) + Duration::from_nanos(7);
        s.write(&e, t(1)).await.unwrap();
    }
    let before = objects.calls();
    let summary = s.summary().await.unwrap();
    assert_eq!(objects.calls() - before, 2, "a GET per message");
    assert_eq!(summary.messages, 3);
    assert_eq!(
        summary.oldest_received,
        Some(t(100) + Duration::from_nanos(7))
    );
}

#[tokio::test]
async fn start_up_waits_for_a_store_that_is_down() {
    let objects = MemoryObjects::new();
    let s = CloudStorage::new(objects.clone(), "q/");
    let id = s.write(&envelope(1), t(5)).await.unwrap();
    objects.set_unreachable(true);
    let (batches, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let loading = tokio::spawn({
        let s = s.clone();
        async move { s.load_into(batches).await }
    });
    // It asks again (two listings per try) and hands nothing over yet.
    let calls = objects.calls();
    while objects.calls() < calls + 4 {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(rx.try_recv().is_err());
    objects.set_unreachable(false);
    assert_eq!(loading.await.unwrap().unwrap(), 1);
    assert_eq!(rx.recv().await.unwrap(), vec![(id, t(5))]);
}
