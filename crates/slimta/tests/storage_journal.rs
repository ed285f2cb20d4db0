//! DiskStorage's journal (the default path of new messages up to
//! `journal_max_message`): its crash model, the rule that a removal wins
//! over every copy, metadata records and the move of deferred and lingering
//! messages to their own files, and
//! what a delivered message costs in syncs.
//!
//! The crash model of the journal: records are appended to the head
//! segment and synced in order, so an interrupted run leaves a prefix of
//! the segment (a torn last record at worst). Every prefix must reopen to
//! exactly the state after the whole records in it: each message whole or
//! absent, never partial, and a removal either applied or not.

use std::collections::BTreeSet;
use std::fs;
use std::path::Path;
use std::time::{Duration, SystemTime};

mod spool_support;

use slimta::queue::{DiskOptions, DiskStorage, Queue, QueueStorage, clock};
use slimta::{Envelope, Handoff};
use spool_support::{DeliverAll, files_in, finished, reopen, spool, wait_until};

fn envelope(n: u8) -> Envelope {
    let mut message = format!("Subject: journal {n}\r\n\r\n").into_bytes();
    message.extend_from_slice(b"\x00\xff\r\n.\r\nbinary\n");
    message.extend(std::iter::repeat_n(n, 300));
    let mut e = Envelope::new(
        format!("s{n}@x.test"),
        vec!["a@y.test".into(), "b@y.test".into()],
        message,
    );
    e.receive_time = SystemTime::UNIX_EPOCH + Duration::new(1_700_000_000, u32::from(n));
    e
}

async fn ids(s: &DiskStorage) -> BTreeSet<String> {
    s.load()
        .await
        .unwrap()
        .into_iter()
        .map(|(id, _)| id)
        .collect()
}

#[tokio::test]
async fn every_prefix_of_a_segment_reopens_to_the_whole_records_in_it() {
    // Write A, write B, remove A: three records, one after the other.
    let (_dir, path) = spool();
    let s = DiskStorage::open(&path).unwrap();
    let a = s.write(&envelope(1), SystemTime::now()).await.unwrap();
    let b = s.write(&envelope(2), SystemTime::now()).await.unwrap();
    s.remove(&a).await.unwrap();
    assert!(
        files_in(&path.join("msg")).is_empty(),
        "small messages stay in the journal"
    );
    let segments = files_in(&path.join("journal"));
    assert_eq!(segments.len(), 1);
    let segment = fs::read(path.join("journal").join(&segments[0])).unwrap();
    drop(s);

    let states = [
        BTreeSet::new(),
        BTreeSet::from([a.clone()]),
        BTreeSet::from([a.clone(), b.clone()]),
        BTreeSet::from([b.clone()]),
    ];
    let mut reached = 0;
    let mut seen = [false; 4];
    for cut in 0..=segment.len() {
        let (_dir, path) = spool();
        fs::create_dir_all(path.join("journal")).unwrap();
        fs::write(path.join("journal").join(&segments[0]), &segment[..cut]).unwrap();
        let s = DiskStorage::open(&path).unwrap();
        let got = ids(&s).await;
        // The states come in order, each for a run of cuts.
        while states[reached] != got {
            reached += 1;
            assert!(
                reached < states.len(),
                "cut at {cut}: unexpected state {got:?}"
            );
        }
        seen[reached] = true;
        for id in &got {
            let n = if *id == a { 1 } else { 2 };
            assert_eq!(
                *s.get(id).await.unwrap().envelope,
                envelope(n),
                "cut at {cut}: a partial message"
            );
        }
        // Nothing is ever appended behind a torn tail: new work goes to a
        // new segment, and the whole spool reopens again.
        let c = s.write(&envelope(3), SystemTime::now()).await.unwrap();
        drop(s);
        let s = DiskStorage::open(&path).unwrap();
        let mut expected = got.clone();
        expected.insert(c);
        assert_eq!(ids(&s).await, expected, "cut at {cut}");
    }
    assert_eq!(seen, [true; 4], "every state has a run of cuts");
}

/// Every segment closes after its batch, so a deferred message's `META`
/// record lands in a later segment than its `NEW` record and a spill moves
/// it to its own file at once.
fn spilling_at_once() -> DiskOptions {
    DiskOptions {
        segment_size: 1,
        ..DiskOptions::default()
    }
}

#[tokio::test]
async fn a_metadata_update_is_a_journal_record_and_every_prefix_reopens_whole() {
    let (_dir, path) = spool();
    let s = DiskStorage::open(&path).unwrap();
    let a = s.write(&envelope(1), SystemTime::now()).await.unwrap();
    let before = fs::read(journal_segment(&path)).unwrap();
    // A partial delivery: the message stays in the journal, with a META
    // record holding its new metadata; no file is written for it yet.
    s.record(&a, &finished(1, &[0])).await.unwrap();
    assert!(files_in(&path.join("msg")).is_empty());
    let stored = s.get(&a).await.unwrap();
    assert_eq!(*stored.envelope, envelope(1));
    assert_eq!(stored.meta.delivered, [0]);
    let segment = fs::read(journal_segment(&path)).unwrap();
    assert!(segment.starts_with(&before) && segment.len() > before.len());
    let name = files_in(&path.join("journal")).remove(0);
    drop(s);

    // A crash anywhere inside the META record leaves the state before it
    // (nothing delivered); the whole record gives the recorded one.
    for cut in before.len()..=segment.len() {
        let (_dir, path) = spool();
        fs::create_dir_all(path.join("journal")).unwrap();
        fs::write(path.join("journal").join(&name), &segment[..cut]).unwrap();
        let s = DiskStorage::open(&path).unwrap();
        assert_eq!(ids(&s).await, BTreeSet::from([a.clone()]), "cut at {cut}");
        let stored = s.get(&a).await.unwrap();
        assert_eq!(*stored.envelope, envelope(1), "cut at {cut}");
        let expected: &[usize] = if cut == segment.len() { &[0] } else { &[] };
        assert_eq!(stored.meta.delivered, expected, "cut at {cut}");
        assert_eq!(stored.meta.attempts, u32::from(cut == segment.len()));
    }
}

#[tokio::test]
async fn a_removal_beats_a_metadata_record_still_in_the_journal() {
    let (_dir, path) = spool();
    let s = DiskStorage::open(&path).unwrap();
    let a = s.write(&envelope(1), SystemTime::now()).await.unwrap();
    s.record(&a, &finished(1, &[])).await.unwrap();
    s.remove(&a).await.unwrap();
    // A META for a removed message is refused, never resurrects it.
    assert!(s.record(&a, &finished(2, &[])).await.is_err());
    drop(s);
    let s = DiskStorage::open(&path).unwrap();
    assert!(ids(&s).await.is_empty(), "a removed message came back");
    assert!(files_in(&path.join("msg")).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deferred_message_moves_to_its_own_file_and_a_removal_beats_every_copy() {
    let (_dir, path) = spool();
    // Small segments, so a few messages close the one `a` is in; `b`
    // shares it and stays there (it is not deferred), so the segment
    // outlives `a`'s move and its removal is a REMOVE record.
    let options = DiskOptions {
        segment_size: 2000,
        ..DiskOptions::default()
    };
    let s = DiskStorage::open_with(&path, options).unwrap();
    let a = s.write(&envelope(1), SystemTime::now()).await.unwrap();
    let b = s.write(&envelope(2), SystemTime::now()).await.unwrap();
    s.record(&a, &finished(1, &[0])).await.unwrap();
    assert!(
        files_in(&path.join("msg")).is_empty(),
        "moved before its segment closed"
    );
    for n in 3..10 {
        s.write(&envelope(n), SystemTime::now()).await.unwrap();
    }
    moved_to_its_file(&path, &a).await;
    let stored = s.get(&a).await.unwrap();
    assert_eq!(*stored.envelope, envelope(1));
    assert_eq!(stored.meta.delivered, [0]);
    // Records after the move go into the file.
    s.record(&a, &finished(2, &[0])).await.unwrap();
    assert_eq!(s.get(&a).await.unwrap().meta.attempts, 2);
    assert_eq!(*s.get(&b).await.unwrap().envelope, envelope(2));
    let file = fs::read(path.join("msg").join(&a)).unwrap();
    let journal_before_remove = fs::read_dir(path.join("journal"))
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (e.file_name(), fs::read(e.path()).unwrap())
        })
        .collect::<Vec<_>>();
    s.remove(&a).await.unwrap();
    assert!(files_in(&path.join("msg")).is_empty());
    drop(s);

    // A crash before the unlink of the file was durable: the file is
    // back, but the journal's REMOVE wins, and the file goes.
    fs::write(path.join("msg").join(&a), &file).unwrap();
    let s = DiskStorage::open(&path).unwrap();
    assert!(!ids(&s).await.contains(&a), "a removed message came back");
    assert!(files_in(&path.join("msg")).is_empty());
    drop(s);

    // A crash before the REMOVE record: the file (the later copy, with
    // both attempts) wins over whatever NEW or META record is left in the
    // journal, and the removal then sticks.
    let (_dir2, path2) = spool();
    fs::create_dir_all(path2.join("journal")).unwrap();
    fs::create_dir_all(path2.join("msg")).unwrap();
    for (name, bytes) in &journal_before_remove {
        fs::write(path2.join("journal").join(name), bytes).unwrap();
    }
    fs::write(path2.join("msg").join(&a), &file).unwrap();
    let s = DiskStorage::open(&path2).unwrap();
    assert!(ids(&s).await.contains(&a));
    let stored = s.get(&a).await.unwrap();
    assert_eq!((stored.meta.attempts, stored.meta.delivered), (2, vec![0]));
    s.remove(&a).await.unwrap();
    drop(s);
    let s = DiskStorage::open(&path2).unwrap();
    assert!(!ids(&s).await.contains(&a));
    assert!(files_in(&path2.join("msg")).is_empty());
}

#[tokio::test]
async fn a_stale_metadata_record_beside_a_file_is_ignored() {
    // The journal of a message deferred twice while resident (NEW, META,
    // META), and the file a spill made after the first META only: the
    // file is the later copy (a spill renames only what it copied) and
    // wins; the journal's records for that id are ignored.
    let (_dir, path) = spool();
    let s = DiskStorage::open_with(&path, spilling_at_once()).unwrap();
    let a = s.write(&envelope(1), SystemTime::now()).await.unwrap();
    s.record(&a, &finished(1, &[])).await.unwrap();
    moved_to_its_file(&path, &a).await;
    let file = fs::read(path.join("msg").join(&a)).unwrap();
    drop(s);

    let (_dir2, path2) = spool();
    let s = DiskStorage::open(&path2).unwrap();
    let b = s.write(&envelope(1), SystemTime::now()).await.unwrap();
    s.record(&b, &finished(1, &[0])).await.unwrap();
    s.record(&b, &finished(2, &[0, 1])).await.unwrap();
    drop(s);
    // Give the journal's id the file of the first spool, renamed.
    let name = files_in(&path2.join("journal")).remove(0);
    let journal = fs::read(path2.join("journal").join(&name)).unwrap();
    let (_dir3, path3) = spool();
    fs::create_dir_all(path3.join("journal")).unwrap();
    fs::create_dir_all(path3.join("msg")).unwrap();
    fs::write(path3.join("journal").join(&name), &journal).unwrap();
    fs::write(path3.join("msg").join(&b), &file).unwrap();
    let s = DiskStorage::open(&path3).unwrap();
    assert_eq!(ids(&s).await, BTreeSet::from([b.clone()]));
    let stored = s.get(&b).await.unwrap();
    assert_eq!(
        stored.meta.attempts, 1,
        "the file's metadata, not the journal's"
    );
    assert!(stored.meta.delivered.is_empty());
    assert_eq!(*stored.envelope, envelope(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_left_by_a_cancelled_move_does_not_block_the_next_one() {
    let (_dir, path) = spool();
    let s = DiskStorage::open_with(&path, spilling_at_once()).unwrap();
    let a = s.write(&envelope(1), SystemTime::now()).await.unwrap();
    // What a move aborted between its copy and its rename leaves behind.
    fs::write(path.join("tmp").join(&a), b"half a copy").unwrap();
    s.record(&a, &finished(1, &[])).await.unwrap();
    moved_to_its_file(&path, &a).await;
    let stored = s.get(&a).await.unwrap();
    assert_eq!(stored.meta.attempts, 1);
    assert_eq!(*stored.envelope, envelope(1));
    assert!(files_in(&path.join("tmp")).is_empty());
}

/// Waits until `id` is the one message in `msg/` of the spool at `path`.
async fn moved_to_its_file(path: &Path, id: &str) {
    wait_until("the deferred message has its own file", async || {
        files_in(&path.join("msg")) == [id]
    })
    .await;
}

/// The one journal segment of a spool that has one.
fn journal_segment(path: &Path) -> std::path::PathBuf {
    let segments = files_in(&path.join("journal"));
    assert_eq!(segments.len(), 1, "{segments:?}");
    path.join("journal").join(&segments[0])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_left_in_old_segments_move_to_files_and_the_segments_go() {
    let (_dir, path) = spool();
    // Every batch fills a segment; one closed segment may keep messages.
    let options = DiskOptions {
        segment_size: 1,
        closed_segments: 1,
        ..DiskOptions::default()
    };
    let s = DiskStorage::open_with(&path, options.clone()).unwrap();
    let mut written = Vec::new();
    for n in 0..10 {
        written.push(s.write(&envelope(n), SystemTime::now()).await.unwrap());
    }
    // All but the newest two segments' messages get their own files, and
    // the segments they leave are deleted.
    wait_until("old messages have their own files", async || {
        files_in(&path.join("msg")).len() >= 8 && files_in(&path.join("journal")).len() <= 2
    })
    .await;
    for (n, id) in written.iter().enumerate() {
        assert_eq!(*s.get(id).await.unwrap().envelope, envelope(n as u8));
    }
    // Dropping the last handle stops the spill thread and releases the
    // spool at once.
    drop(s);
    let s = DiskStorage::open_with(&path, options).unwrap();
    assert_eq!(ids(&s).await, written.iter().cloned().collect());
    for id in &written {
        s.remove(id).await.unwrap();
    }
    assert!(files_in(&path.join("msg")).is_empty());
    drop(s);
    let s = reopen(&path).await;
    assert!(ids(&s).await.is_empty());
}

#[tokio::test]
async fn big_messages_get_their_own_file_at_once() {
    let (_dir, path) = spool();
    let options = DiskOptions {
        journal_max_message: 100,
        ..DiskOptions::default()
    };
    let s = DiskStorage::open_with(&path, options).unwrap();
    let big = s.write(&envelope(1), SystemTime::now()).await.unwrap();
    let mut small_envelope = envelope(2);
    small_envelope.message.truncate(100);
    let small = s.write(&small_envelope, SystemTime::now()).await.unwrap();
    assert_eq!(files_in(&path.join("msg")), std::slice::from_ref(&big));
    assert_eq!(*s.get(&small).await.unwrap().envelope, small_envelope);
    assert_eq!(*s.get(&big).await.unwrap().envelope, envelope(1));
}

#[tokio::test]
async fn a_restart_keeps_journal_messages_and_drains_the_old_segment() {
    let (_dir, path) = spool();
    let s = DiskStorage::open(&path).unwrap();
    let mut written = Vec::new();
    for n in 0..3 {
        written.push(s.write(&envelope(n), SystemTime::now()).await.unwrap());
    }
    drop(s);
    let s = DiskStorage::open(&path).unwrap();
    assert_eq!(ids(&s).await, written.iter().cloned().collect());
    assert_eq!(s.journal_counts(), (1, 3), "segments, messages only there");
    // New work goes to a new segment; the old one is never appended to.
    let d = s.write(&envelope(9), SystemTime::now()).await.unwrap();
    assert_eq!(files_in(&path.join("journal")).len(), 2);
    assert_eq!(s.journal_counts(), (2, 4));
    for id in &written {
        assert!(s.get(id).await.is_ok());
        s.remove(id).await.unwrap();
    }
    assert_eq!(
        files_in(&path.join("journal")).len(),
        1,
        "the drained old segment was not deleted"
    );
    assert_eq!(s.journal_counts(), (1, 1));
    assert_eq!(ids(&s).await, BTreeSet::from([d]));
}

/// Through a queue, a message delivered at the first attempt costs one
/// journal sync for its `NEW` record and one for its `REMOVE` record (each
/// shared with every other record waiting at that moment, under load), and
/// never a file of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivered_message_costs_two_journal_syncs_on_its_own() {
    let (_dir, path) = spool();
    let storage = DiskStorage::open(&path).unwrap();
    let relay = DeliverAll::new(&path);
    let queue = Queue::new(storage.clone(), relay.clone());
    queue.start().await.unwrap();
    let mut costs = Vec::new();
    for n in 0..3 {
        let before = storage.fsync_count();
        let mut e = envelope(n);
        e.receive_time = clock::now();
        queue.handoff(e).await[0].result.clone().unwrap();
        wait_until("the message is delivered and forgotten", async || {
            relay.calls().len() == usize::from(n) + 1 && storage.load().await.unwrap().is_empty()
        })
        .await;
        costs.push(storage.fsync_count() - before);
        assert!(files_in(&path.join("msg")).is_empty());
    }
    // The first message also starts the first segment (one fsync of
    // journal/).
    assert_eq!(costs, [3, 2, 2]);
}

/// Writers, partial deliveries (which move messages to files), removals
/// and the background spill of old segments, all at once on tiny
/// segments: afterwards, and after a reopen, exactly the messages not
/// removed are there, whole, with their delivered recipients, and no
/// removed message has a file.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_writes_updates_removals_and_spills_agree_after_reopen() {
    let (_dir, path) = spool();
    let options = DiskOptions {
        segment_size: 4096,
        closed_segments: 1,
        ..DiskOptions::default()
    };
    let s = DiskStorage::open_with(&path, options.clone()).unwrap();
    let mut tasks = tokio::task::JoinSet::new();
    for task in 0..8u8 {
        let s = s.clone();
        tasks.spawn(async move {
            let mut kept = Vec::new();
            for i in 0..40u8 {
                let n = task.wrapping_mul(40).wrapping_add(i);
                let id = s.write(&envelope(n), SystemTime::now()).await.unwrap();
                match i % 4 {
                    0 => s.remove(&id).await.unwrap(),
                    1 => {
                        s.record(&id, &finished(1, &[0])).await.unwrap();
                        kept.push((id, n, vec![0]));
                    }
                    2 => {
                        s.record(&id, &finished(1, &[1])).await.unwrap();
                        s.remove(&id).await.unwrap();
                    }
                    _ => kept.push((id, n, vec![])),
                }
            }
            kept
        });
    }
    let kept: Vec<(String, u8, Vec<usize>)> =
        tasks.join_all().await.into_iter().flatten().collect();
    let expected: BTreeSet<String> = kept.iter().map(|k| k.0.clone()).collect();
    async fn check(s: &DiskStorage, path: &Path, kept: &[(String, u8, Vec<usize>)]) {
        let expected: BTreeSet<String> = kept.iter().map(|k| k.0.clone()).collect();
        assert_eq!(ids(s).await, expected);
        for (id, n, delivered) in kept {
            let stored = s.get(id).await.unwrap();
            assert_eq!(*stored.envelope, envelope(*n), "{id}");
            assert_eq!(&stored.meta.delivered, delivered, "{id}");
        }
        for file in files_in(&path.join("msg")) {
            assert!(
                expected.contains(&file),
                "a removed message has a file: {file}"
            );
        }
    }
    check(&s, &path, &kept).await;
    // Old segments were spilled: messages never updated have files too.
    let untouched: Vec<String> = kept
        .iter()
        .filter(|k| k.2.is_empty())
        .map(|k| k.0.clone())
        .collect();
    wait_until(
        "a never-updated message was spilled to a file",
        async || {
            let files = files_in(&path.join("msg"));
            untouched.iter().any(|id| files.contains(id))
        },
    )
    .await;
    check(&s, &path, &kept).await;
    drop(s);
    // A spill pass still running stopped with the drop.
    let s = DiskStorage::open(&path).unwrap();
    check(&s, &path, &kept).await;
    assert_eq!(expected.len(), 160);
}

/// A journal record whose CRC is good but whose message file inside is
/// from a newer version stops the spool (and the segment stays); one that is damaged inside is set
/// aside in `corrupt/`, never silently dropped.
#[tokio::test]
async fn a_newer_or_damaged_message_inside_a_good_record() {
    let (_dir, path) = spool();
    let s = DiskStorage::open(&path).unwrap();
    let id = s.write(&envelope(1), SystemTime::now()).await.unwrap();
    drop(s);
    let segment_name = files_in(&path.join("journal")).remove(0);
    let segment = fs::read(path.join("journal").join(&segment_name)).unwrap();
    // Segment header (12), record kind and length (9), id (32): then the
    // message file, whose version is at bytes 8..10.
    let inner = 12 + 9 + 32;
    let reseal = |mut bytes: Vec<u8>| {
        let end = bytes.len() - 4;
        let crc = crc32fast::hash(&bytes[12..end]);
        bytes[end..].copy_from_slice(&crc.to_le_bytes());
        bytes
    };

    let mut newer = segment.clone();
    newer[inner + 8] = 99;
    let (_d1, p1) = spool();
    fs::create_dir_all(p1.join("journal")).unwrap();
    fs::write(p1.join("journal").join(&segment_name), reseal(newer)).unwrap();
    // Found by the background scan: the storage then refuses all work.
    let s = DiskStorage::open(&p1).unwrap();
    let err = s.loaded().await.unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidData, "{err}");
    let err = s.write(&envelope(2), SystemTime::now()).await.unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidData, "{err}");
    drop(s);
    assert_eq!(
        files_in(&p1.join("journal")),
        std::slice::from_ref(&segment_name)
    );

    let mut damaged = segment;
    damaged[inner + 40] ^= 0xff;
    let (_d2, p2) = spool();
    fs::create_dir_all(p2.join("journal")).unwrap();
    fs::write(p2.join("journal").join(&segment_name), reseal(damaged)).unwrap();
    let s = DiskStorage::open(&p2).unwrap();
    assert!(ids(&s).await.is_empty());
    assert_eq!(files_in(&p2.join("corrupt")), [id]);
}
