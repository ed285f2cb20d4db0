//! DiskStorage's own files beyond the conformance suite: the crash model,
//! the spool lock, format versions, group commit, and a queue restarted
//! over a spool. (The journal has its own tests in `storage_journal.rs`.)
//!
//! These tests use [`DiskOptions::files_only`], where every message gets
//! its own file at once; with the default options that is the path of big
//! messages and of every message that stays in the queue (deferred in the
//! journal first, then moved to its own file by a background spill).
//!
//! The crash model is simulated the way the write protocol can be cut
//! short: a new message is written to `tmp/` and renamed into `msg/` only
//! after its fsync, and metadata is appended to the message's file. So an
//! interrupted run leaves (a) any prefix of a new file in `tmp/`, or
//! (b) any prefix of one appended record at the end of a file in `msg/`.
//! Every such state must reopen to "nothing" or "the whole message".

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime};

mod spool_support;

use slimta::queue::{
    AttemptOutcome, DiskOptions, DiskStorage, Queue, QueueMeta, QueueStorage, clock,
};
use slimta::{Delivery, Envelope, Handoff, Relay, RelayError, Reply};
use spool_support::{DeliverAll, files_in, reopen, spool, wait_until};

fn envelope() -> Envelope {
    let mut e = Envelope::new(
        "s@x.test",
        vec!["a@y.test".into(), "b@y.test".into()],
        b"Subject: crash\r\n\r\n\x00\xff\xfe 8-bit\r\n.\r\n".to_vec(),
    );
    e.receive_time = SystemTime::UNIX_EPOCH + Duration::new(1_700_000_000, 7);
    e
}

/// A storage that gives every message its own file.
fn files_only(path: &Path) -> DiskStorage {
    DiskStorage::open_with(path, DiskOptions::files_only()).unwrap()
}

/// An attempt's outcome touching every field: a@ delivered, retry at
/// 12345 s, an error, the warning sent.
fn outcome() -> AttemptOutcome {
    AttemptOutcome {
        attempts: 1,
        finished: vec![0],
        next_attempt: Some(SystemTime::UNIX_EPOCH + Duration::from_secs(12345)),
        last_error: Some("451 4.4.1 later".into()),
        delay_warned: true,
    }
}

/// The bytes of one stored message, and of the same message after one
/// attempt's outcome record.
async fn reference_files() -> (String, Vec<u8>, Vec<u8>) {
    let (_dir, path) = spool();
    let s = files_only(&path);
    let id = s
        .write(
            &envelope(),
            SystemTime::UNIX_EPOCH + Duration::from_secs(99),
        )
        .await
        .unwrap();
    let before = fs::read(path.join("msg").join(&id)).unwrap();
    s.record(&id, &outcome()).await.unwrap();
    let after = fs::read(path.join("msg").join(&id)).unwrap();
    assert!(after.starts_with(&before) && after.len() > before.len());
    (id, before, after)
}

#[tokio::test]
async fn an_interrupted_new_write_leaves_nothing() {
    let (id, file, _) = reference_files().await;
    for cut in 0..=file.len() {
        let (_dir, path) = spool();
        fs::create_dir_all(path.join("tmp")).unwrap();
        fs::write(path.join("tmp").join(&id), &file[..cut]).unwrap();
        let s = DiskStorage::open(&path).unwrap();
        assert!(
            s.load().await.unwrap().is_empty(),
            "cut at {cut}: a message appeared"
        );
        assert!(
            files_in(&path.join("tmp")).is_empty(),
            "cut at {cut}: leftovers stay"
        );
        assert_eq!(
            s.get(&id).await.unwrap_err().kind(),
            std::io::ErrorKind::NotFound
        );
    }
}

#[tokio::test]
async fn a_truncated_message_file_is_all_or_nothing() {
    let (id, file, _) = reference_files().await;
    let whole = envelope();
    let (mut nothing, mut everything) = (0, 0);
    for cut in 0..=file.len() {
        let (_dir, path) = spool();
        fs::create_dir_all(path.join("msg")).unwrap();
        fs::write(path.join("msg").join(&id), &file[..cut]).unwrap();
        let s = DiskStorage::open(&path).unwrap();
        let loaded = s.load().await.unwrap();
        if loaded.is_empty() {
            nothing += 1;
            // Not deleted: kept aside for a human.
            assert_eq!(
                files_in(&path.join("corrupt")),
                std::slice::from_ref(&id),
                "cut at {cut}"
            );
        } else {
            everything += 1;
            assert_eq!(
                *s.get(&id).await.unwrap().envelope,
                whole,
                "cut at {cut}: a partial message"
            );
        }
    }
    assert!(nothing > 0 && everything > 0, "{nothing} / {everything}");
}

#[tokio::test]
async fn an_interrupted_append_keeps_the_message_and_its_earlier_state() {
    let (id, before, after) = reference_files().await;
    for cut in before.len()..after.len() {
        let (_dir, path) = spool();
        fs::create_dir_all(path.join("msg")).unwrap();
        let file = path.join("msg").join(&id);
        fs::write(&file, &after[..cut]).unwrap();
        let s = DiskStorage::open(&path).unwrap();
        let got = s.get(&id).await.unwrap();
        assert_eq!(*got.envelope, envelope(), "cut at {cut}");
        // The previous state whole: no field of the torn outcome applied.
        assert_eq!(
            got.meta,
            QueueMeta {
                timestamp: Some(SystemTime::UNIX_EPOCH + Duration::from_secs(99)),
                ..QueueMeta::default()
            },
            "cut at {cut}: a torn record was applied"
        );
        assert_eq!(
            fs::read(&file).unwrap(),
            before,
            "cut at {cut}: the torn tail was not cut off"
        );
        // Later appends are readable (they do not sit behind garbage).
        let later = AttemptOutcome {
            attempts: 2,
            finished: vec![1],
            ..AttemptOutcome::default()
        };
        s.record(&id, &later).await.unwrap();
        drop(s);
        let s = DiskStorage::open(&path).unwrap();
        assert_eq!(
            s.get(&id).await.unwrap().meta.delivered,
            [1],
            "cut at {cut}"
        );
    }
    // And the complete append is applied.
    let (_dir, path) = spool();
    fs::create_dir_all(path.join("msg")).unwrap();
    fs::write(path.join("msg").join(&id), &after).unwrap();
    let s = DiskStorage::open(&path).unwrap();
    let got = s.get(&id).await.unwrap().meta;
    let o = outcome();
    assert_eq!(
        got,
        QueueMeta {
            timestamp: o.next_attempt,
            attempts: 1,
            delivered: vec![0],
            last_error: o.last_error,
            delay_warned: true,
        }
    );
}

#[tokio::test]
async fn one_spool_one_storage() {
    let (_dir, path) = spool();
    let first = DiskStorage::open(&path).unwrap();
    let err = DiskStorage::open(&path).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::WouldBlock, "{err}");
    drop(first);
    DiskStorage::open(&path).unwrap();
}

/// A message file from a newer version is found by the background scan
/// (the open does not read the files): the storage then refuses every
/// request, new messages included, and leaves the file alone.
#[tokio::test]
async fn a_newer_format_stops_the_spool_and_is_left_alone() {
    let (id, mut file, _) = reference_files().await;
    file[8] = 99; // the version field
    let (_dir, path) = spool();
    fs::create_dir_all(path.join("msg")).unwrap();
    fs::write(path.join("msg").join(&id), &file).unwrap();
    let s = DiskStorage::open(&path).unwrap();
    let err = s.load().await.unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidData, "{err}");
    assert_eq!(
        s.loaded().await.unwrap_err().kind(),
        std::io::ErrorKind::InvalidData
    );
    let err = s.write(&envelope(), SystemTime::now()).await.unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidData, "{err}");
    let err = s.get(&id).await.unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidData, "{err}");
    assert_eq!(fs::read(path.join("msg").join(&id)).unwrap(), file);
    assert_eq!(files_in(&path.join("msg")), [id]);
}

#[tokio::test]
async fn stray_files_are_set_aside() {
    let (_dir, path) = spool();
    fs::create_dir_all(path.join("msg")).unwrap();
    fs::write(path.join("msg").join("README"), "not mail").unwrap();
    let s = DiskStorage::open(&path).unwrap();
    assert!(s.load().await.unwrap().is_empty());
    assert_eq!(files_in(&path.join("corrupt")), ["README"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 8)]
async fn concurrent_writes_share_directory_fsyncs() {
    const WRITERS: u64 = 200;
    let (_dir, path) = spool();
    let s = files_only(&path);
    let before = s.fsync_count();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..WRITERS {
        let s = s.clone();
        tasks.spawn(async move { s.write(&envelope(), SystemTime::now()).await.unwrap() });
    }
    tasks.join_all().await;
    let fsyncs = s.fsync_count() - before;
    println!(
        "{WRITERS} concurrent writes: {fsyncs} fsyncs, {:.2} per message",
        fsyncs as f64 / WRITERS as f64
    );
    // One per file plus at most one directory fsync per message; how many
    // renames share a directory fsync depends on the disk's speed (on tmpfs
    // an fsync is instant and batches stay small), so this is not asserted.
    // The committer's unit test proves that a waiting batch shares one.
    assert!((WRITERS + 1..=2 * WRITERS).contains(&fsyncs), "{fsyncs}");
    assert_eq!(files_in(&path.join("msg")).len() as u64, WRITERS);
}

/// Measures write throughput and fsyncs per message at several
/// concurrencies: `cargo test -p slimta --release --test storage_disk -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "a benchmark; run by hand on the disk you care about"]
async fn group_commit_benchmark() {
    let dir = std::env::var_os("SLIMTA_BENCH_DIR").map_or_else(std::env::temp_dir, PathBuf::from);
    for (mode, concurrency) in [
        ("files", 1usize),
        ("files", 10),
        ("files", 100),
        ("journal", 1),
        ("journal", 10),
        ("journal", 100),
    ] {
        let tmp = tempfile::tempdir_in(&dir).unwrap();
        let options = if mode == "files" {
            DiskOptions::files_only()
        } else {
            DiskOptions::default()
        };
        let s = DiskStorage::open_with(tmp.path(), options).unwrap();
        let total = 2000usize;
        let next = Arc::new(AtomicUsize::new(0));
        let before = s.fsync_count();
        let start = Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..concurrency {
            let (s, next) = (s.clone(), next.clone());
            tasks.spawn(async move {
                let mut e = envelope();
                e.message = vec![b'x'; 4096];
                while next.fetch_add(1, Ordering::Relaxed) < total {
                    s.write(&e, SystemTime::now()).await.unwrap();
                }
            });
        }
        tasks.join_all().await;
        let secs = start.elapsed().as_secs_f64();
        let fsyncs = s.fsync_count() - before;
        println!(
            "{mode:>7}, concurrency {concurrency:>3}: {:>8.0} msg/s, {:.2} fsyncs/msg",
            total as f64 / secs,
            fsyncs as f64 / total as f64
        );
    }
}

/// Delivers to a@ at once, defers b@ for as long as `defer_b` is set.
#[derive(Clone)]
struct DeferB {
    defer_b: bool,
    calls: Arc<std::sync::Mutex<Vec<Vec<String>>>>,
}

impl Relay for DeferB {
    async fn attempt(&self, envelope: &Envelope, _attempt: u32) -> Result<Delivery, RelayError> {
        self.calls.lock().unwrap().push(envelope.recipients.clone());
        let results = envelope
            .recipients
            .iter()
            .map(|r| {
                if r.starts_with("b@") && self.defer_b {
                    Err(RelayError::transient(Reply::new(451, "4.4.1", "later")))
                } else {
                    Ok(Reply::new(250, "2.0.0", "ok"))
                }
            })
            .collect();
        Ok(Delivery::per_recipient(
            Reply::new(250, "2.0.0", "ok"),
            results,
        ))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_restarted_over_the_spool_delivers_only_what_was_pending() {
    let (_dir, path) = spool();
    let first = DeferB {
        defer_b: true,
        calls: Arc::default(),
    };
    let storage = DiskStorage::open(&path).unwrap();
    let queue = Queue::new(storage.clone(), first.clone())
        .with_backoff(|_: &Envelope, _| Some(Duration::from_secs(3600)));
    queue.start().await.unwrap();
    let mut e = envelope();
    e.receive_time = clock::now();
    let id = queue.handoff(e).await[0].result.clone().unwrap();
    wait_until("the first attempt is recorded", async || {
        !first.calls.lock().unwrap().is_empty()
    })
    .await;
    wait_until("the attempt is counted in storage", async || {
        storage.get(&id).await.unwrap().meta.attempts == 1
    })
    .await;
    queue.stop();
    drop((queue, storage));

    // The stopped queue's task may hold the spool for a moment longer.
    let storage = reopen(&path).await;
    let stored = storage.get(&id).await.unwrap();
    assert_eq!(stored.pending_recipients(), [(1, "b@y.test")]);
    // Make it due now rather than in an hour.
    storage.set_timestamp(&id, clock::now()).await.unwrap();
    let second = DeferB {
        defer_b: false,
        calls: Arc::default(),
    };
    let queue = Queue::new(storage.clone(), second.clone());
    queue.start().await.unwrap();
    wait_until("the pending recipient is delivered", async || {
        !second.calls.lock().unwrap().is_empty() && files_in(&path.join("msg")).is_empty()
    })
    .await;
    assert_eq!(
        *second.calls.lock().unwrap(),
        [vec!["b@y.test".to_string()]]
    );
    assert_eq!(
        *first.calls.lock().unwrap(),
        [vec!["a@y.test".to_string(), "b@y.test".to_string()]]
    );
}

/// `remove` is durable: it returns after a directory fsync (through the
/// committer, so concurrent removals and new messages share it), where it
/// used to unlink without one and count on a `DELIVERED` record instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remove_returns_after_a_directory_fsync() {
    let (_dir, path) = spool();
    let storage = files_only(&path);
    let id = storage.write(&envelope(), SystemTime::now()).await.unwrap();
    let before = storage.fsync_count();
    storage.remove(&id).await.unwrap();
    assert_eq!(storage.fsync_count() - before, 1);
    assert!(files_in(&path.join("msg")).is_empty());
    // Removing it again (an answer lost, an operator racing an attempt) is
    // fine, and still durable.
    storage.remove(&id).await.unwrap();
    assert!(storage.load().await.unwrap().is_empty());
}

/// A fully successful attempt through a queue costs, for one message on
/// its own: the file's fsync and a directory fsync for the write, one
/// directory fsync for the removal (shared with other writes and removals
/// under load), and no `fdatasync` of a `DELIVERED` record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivered_message_costs_three_fsyncs_on_its_own() {
    let (_dir, path) = spool();
    let storage = files_only(&path);
    let before = storage.fsync_count();
    let relay = DeliverAll::new(&path);
    let queue = Queue::new(storage.clone(), relay.clone());
    queue.start().await.unwrap();
    let mut e = envelope();
    e.receive_time = clock::now();
    queue.handoff(e).await[0].result.clone().unwrap();
    // The removal's answer (after its fsync) and the index update follow
    // the unlink.
    wait_until(
        "the message is delivered, removed and forgotten",
        async || {
            !relay.calls().is_empty()
                && files_in(&path.join("msg")).is_empty()
                && storage.load().await.unwrap().is_empty()
        },
    )
    .await;
    assert_eq!(storage.fsync_count() - before, 3);
    let calls = relay.calls();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].0, ["a@y.test", "b@y.test"]);
    assert_eq!(
        calls[0].1.len(),
        1,
        "the file was in msg/ during the attempt"
    );
}

/// The crash model of a removal after a fully successful attempt: the
/// attempt appended nothing, so a crash before the unlink is durable
/// leaves the file exactly as it was written (then the next start delivers
/// it again, to every recipient: the window between the relay's 250 and
/// the first durable record, as before), and a crash after it leaves
/// nothing (nothing is delivered again). There is no third state: a file
/// with some recipients recorded can only come from a partial delivery.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_removal_leaves_the_file_or_nothing() {
    // What a successful attempt leaves on disk until its unlink is durable.
    let (_dir, path) = spool();
    let relay = DeliverAll::new(&path);
    let storage = files_only(&path);
    let queue = Queue::new(storage.clone(), relay.clone());
    queue.start().await.unwrap();
    let mut e = envelope();
    e.receive_time = clock::now();
    let id = queue.handoff(e.clone()).await[0].result.clone().unwrap();
    wait_until("the message is removed", async || {
        !relay.calls().is_empty() && files_in(&path.join("msg")).is_empty()
    })
    .await;
    let written = relay.calls()[0].1[0].clone();
    queue.stop();
    drop((queue, storage));

    // Crash before the unlink was durable: the file comes back as written.
    let (_dir, path) = spool();
    fs::create_dir_all(path.join("msg")).unwrap();
    fs::write(path.join("msg").join(&id), &written).unwrap();
    let storage = DiskStorage::open(&path).unwrap();
    let stored = storage.get(&id).await.unwrap();
    assert_eq!(*stored.envelope, e);
    assert!(
        stored.meta.delivered.is_empty() && stored.meta.attempts == 0,
        "the successful attempt recorded something: {:?}",
        stored.meta
    );
    let again = DeliverAll::new(&path);
    let queue = Queue::new(storage.clone(), again.clone());
    queue.start().await.unwrap();
    wait_until("it is delivered again and removed", async || {
        !again.calls().is_empty() && files_in(&path.join("msg")).is_empty()
    })
    .await;
    assert_eq!(again.calls().len(), 1);
    assert_eq!(again.calls()[0].0, ["a@y.test", "b@y.test"]);
    queue.stop();
    drop((queue, storage));

    // Crash after it: nothing comes back, nothing is delivered.
    let (_dir, path) = spool();
    fs::create_dir_all(path.join("msg")).unwrap();
    let storage = DiskStorage::open(&path).unwrap();
    assert!(storage.load().await.unwrap().is_empty());
    assert_eq!(
        storage.get(&id).await.unwrap_err().kind(),
        std::io::ErrorKind::NotFound
    );
}

/// Defers every attempt (451 for the whole message) and notes the spool's
/// fsync count as each attempt starts.
#[derive(Clone)]
struct DeferAll {
    storage: DiskStorage,
    seen: Arc<std::sync::Mutex<Vec<u64>>>,
}

impl Relay for DeferAll {
    async fn attempt(&self, _: &Envelope, _: u32) -> Result<Delivery, RelayError> {
        self.seen.lock().unwrap().push(self.storage.fsync_count());
        Err(RelayError::transient(Reply::new(451, "4.4.1", "later")))
    }
}

/// A deferred attempt is one record and one `fdatasync`, with or without the
/// journal. A message still in the journal is deferred by a `META` record
/// that shares the journal's group commit; it moves to its own file later,
/// in a background spill batch, so the deferral never pays for the move.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deferred_attempt_costs_one_fsync() {
    for options in [DiskOptions::files_only(), DiskOptions::default()] {
        let (_dir, path) = spool();
        let storage = DiskStorage::open_with(&path, options.clone()).unwrap();
        let relay = DeferAll {
            storage: storage.clone(),
            seen: Arc::default(),
        };
        let queue = Queue::new(storage.clone(), relay.clone())
            .with_backoff(|_: &Envelope, _| Some(Duration::from_millis(20)));
        queue.start().await.unwrap();
        let mut e = envelope();
        e.receive_time = clock::now();
        let id = queue.handoff(e).await[0].result.clone().unwrap();
        wait_until("five attempts", async || {
            relay.seen.lock().unwrap().len() >= 5
        })
        .await;
        queue.stop();
        let seen = relay.seen.lock().unwrap().clone();
        let costs: Vec<u64> = seen.windows(2).map(|w| w[1] - w[0]).collect();
        println!(
            "journal_max_message {}: fsyncs per deferred attempt {costs:?}",
            options.journal_max_message
        );
        assert_eq!(costs[..4], [1, 1, 1, 1], "{options:?}");
        let meta = storage.get(&id).await.unwrap().meta;
        assert!(meta.attempts >= 4, "{meta:?}");
        let error = meta.last_error.unwrap_or_default();
        assert!(error.ends_with("451 4.4.1 later"), "{error}");
    }
}

/// A spool of `count` deferred copies of the reference message (the
/// outcome of [`outcome`] recorded), named `0..count` as ids.
async fn deferred_spool(path: &Path, count: u32) -> Vec<String> {
    let (_, _, deferred) = reference_files().await;
    let msg = path.join("msg");
    fs::create_dir_all(&msg).unwrap();
    let ids: Vec<String> = (0..count).map(|i| format!("{i:032x}")).collect();
    for id in &ids {
        fs::write(msg.join(id), &deferred).unwrap();
    }
    ids
}

/// The open does not wait for the spool to be indexed; dropping the
/// storage while the background scan runs stops it, and the next open
/// finds everything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reopen_during_the_background_load_loses_nothing() {
    let (_dir, path) = spool();
    let ids = deferred_spool(&path, 20_000).await;
    let mut interrupted = 0;
    for _ in 0..3 {
        let s = DiskStorage::open(&path).unwrap();
        interrupted += usize::from(s.is_loading());
        drop(s);
    }
    println!("{interrupted} of 3 opens dropped while still indexing");
    let s = DiskStorage::open(&path).unwrap();
    let due = SystemTime::UNIX_EPOCH + Duration::from_secs(12345);
    let mut loaded: Vec<String> = s
        .load()
        .await
        .unwrap()
        .into_iter()
        .map(|(id, at)| {
            assert_eq!(at, due, "{id}");
            id
        })
        .collect();
    loaded.sort();
    assert_eq!(loaded, ids);
    assert_eq!(s.summary().await.unwrap().messages, ids.len());
    assert_eq!(s.get(&ids[7]).await.unwrap().meta.delivered, [0]);
}

/// While the background scan runs, new messages are stored, old ones are
/// removed and recorded (each waits for the scan if it has not reached its
/// id), and a listener hears of every old message at most once; after a
/// reopen, exactly the acknowledged state is there.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_background_load_races_writes_removes_and_records() {
    let (_dir, path) = spool();
    let old = deferred_spool(&path, 5_000).await;
    let s = DiskStorage::open(&path).unwrap();
    let (listener, mut heard) = tokio::sync::mpsc::unbounded_channel();
    let listening = tokio::spawn({
        let s = s.clone();
        async move { s.load_into(listener).await }
    });
    let mut tasks = tokio::task::JoinSet::new();
    for n in 0..50 {
        let s = s.clone();
        tasks.spawn(async move {
            let id = s.write(&envelope(), SystemTime::now()).await.unwrap();
            (n, id)
        });
    }
    // Removed from the end (likely not indexed yet) and from the start.
    let removed: Vec<String> = old[..50].iter().chain(&old[4_950..]).cloned().collect();
    for id in removed.clone() {
        let s = s.clone();
        tasks.spawn(async move {
            s.remove(&id).await.unwrap();
            (usize::MAX, id)
        });
    }
    let recorded: Vec<String> = old[2_000..2_050].to_vec();
    for id in recorded.clone() {
        let s = s.clone();
        tasks.spawn(async move {
            let outcome = AttemptOutcome {
                attempts: 2,
                finished: vec![1],
                ..AttemptOutcome::default()
            };
            s.record(&id, &outcome).await.unwrap();
            (usize::MAX - 1, id)
        });
    }
    let written: Vec<String> = tasks
        .join_all()
        .await
        .into_iter()
        .filter(|(n, _)| *n < 50)
        .map(|(_, id)| id)
        .collect();
    listening.await.unwrap().unwrap();
    let mut heard_ids = Vec::new();
    while let Ok(batch) = heard.try_recv() {
        heard_ids.extend(batch.into_iter().map(|(id, _)| id));
    }
    let count = heard_ids.len();
    heard_ids.sort();
    heard_ids.dedup();
    assert_eq!(heard_ids.len(), count, "an id was heard twice");
    let mut expected: Vec<String> = old
        .iter()
        .filter(|id| !removed.contains(id))
        .chain(&written)
        .cloned()
        .collect();
    expected.sort();
    for id in expected.iter().filter(|id| !written.contains(id)) {
        assert!(heard_ids.binary_search(id).is_ok(), "{id} was never heard");
    }
    for id in &heard_ids {
        assert!(
            old.contains(id) || written.contains(id),
            "{id} is no message"
        );
    }
    let check = async |s: &DiskStorage| {
        let mut loaded: Vec<String> = s
            .load()
            .await
            .unwrap()
            .into_iter()
            .map(|(id, _)| id)
            .collect();
        loaded.sort();
        assert_eq!(loaded, expected);
        for id in &recorded {
            let meta = s.get(id).await.unwrap().meta;
            assert_eq!((meta.attempts, meta.delivered), (2, vec![0, 1]), "{id}");
        }
        for id in &removed {
            assert_eq!(
                s.get(id).await.unwrap_err().kind(),
                std::io::ErrorKind::NotFound
            );
        }
    };
    check(&s).await;
    drop(s);
    let s = reopen(&path).await;
    check(&s).await;
    assert_eq!(
        files_in(&path.join("msg")).len(),
        expected.len() - written.len()
    );
}

/// A torn last record found by the background scan is cut away before
/// anything is appended to the file: a record made while the scan runs
/// (it waits for the scan) follows the last good record, and a reopen
/// reads both good outcomes and not the torn one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_torn_record_found_by_the_background_scan_is_cut_before_the_next_append() {
    let (_dir, path) = spool();
    let ids = deferred_spool(&path, 2_000).await;
    let (_, _, deferred) = reference_files().await;
    let torn_id = ids.last().unwrap().clone();
    let torn_outcome = AttemptOutcome {
        attempts: 2,
        finished: vec![1],
        ..AttemptOutcome::default()
    };
    // The torn record: a second outcome cut short (found by building it
    // on a scratch spool).
    let (_scratch, scratch) = spool();
    let s = files_only(&scratch);
    let id = s.write(&envelope(), SystemTime::now()).await.unwrap();
    s.record(&id, &outcome()).await.unwrap();
    s.record(&id, &torn_outcome).await.unwrap();
    let two = fs::read(scratch.join("msg").join(&id)).unwrap();
    drop(s);
    // The same length as the reference file up to the second outcome.
    let second_record = &two[deferred.len()..];
    assert!(second_record.len() > 4);
    let mut torn = deferred.clone();
    torn.extend_from_slice(&second_record[..second_record.len() - 3]);
    fs::write(path.join("msg").join(&torn_id), &torn).unwrap();

    let s = DiskStorage::open(&path).unwrap();
    let later = AttemptOutcome {
        attempts: 3,
        finished: vec![],
        last_error: Some("451 4.4.1 again".into()),
        ..AttemptOutcome::default()
    };
    s.record(&torn_id, &later).await.unwrap();
    drop(s);
    let s = DiskStorage::open(&path).unwrap();
    let meta = s.get(&torn_id).await.unwrap().meta;
    assert_eq!(meta.attempts, 3);
    assert_eq!(meta.delivered, [0], "the torn outcome was applied");
    assert_eq!(meta.last_error.as_deref(), Some("451 4.4.1 again"));
}

fn vm_rss() -> u64 {
    let status = fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace()
        .nth(1)
        .unwrap()
        .parse::<u64>()
        .unwrap()
        * 1024
}

/// Measures what the storage's index costs per deferred message (RSS of
/// this process before the open and after the background scan, spools of
/// 20,000 and 100,000 files):
/// `cargo test -p slimta --test storage_disk -- --ignored --nocapture index_memory`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement; run by hand"]
async fn index_memory_per_message() {
    let dir = std::env::var_os("SLIMTA_BENCH_DIR").map_or_else(std::env::temp_dir, PathBuf::from);
    let mut figures = Vec::new();
    for n in [20_000u32, 100_000] {
        let tmp = tempfile::tempdir_in(&dir).unwrap();
        deferred_spool(tmp.path(), n).await;
        let before = vm_rss();
        let s = DiskStorage::open(tmp.path()).unwrap();
        s.loaded().await.unwrap();
        let after = vm_rss();
        assert_eq!(s.summary().await.unwrap().messages, n as usize);
        println!(
            "{n} deferred messages: index {:.1} MiB, {} bytes per message",
            (after - before) as f64 / f64::from(1 << 20),
            (after - before) / u64::from(n)
        );
        figures.push((n, after - before));
        drop(s);
    }
    let growth = figures[1].1.saturating_sub(figures[0].1);
    println!(
        "growth 20,000 -> 100,000: {:.1} MiB, {} bytes per message",
        growth as f64 / f64::from(1 << 20),
        growth / 80_000
    );
}
