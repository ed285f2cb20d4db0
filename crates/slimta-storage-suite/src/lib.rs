//! The storage conformance suite: what every [`QueueStorage`] backend must
//! do, checked against the real backend.
//!
//! It is a crate of its own so that a backend in another crate (Redis,
//! cloud stores) runs the very same checks: add it as a dev-dependency and
//! write a test file (`tests/storage_NAME.rs`) with
//!
//! ```ignore
//! use slimta_storage_suite::{Fixture, storage_conformance};
//!
//! fn fixture() -> Fixture<MyStorage> { /* a fresh, empty store */ }
//! storage_conformance!(fixture());
//! ```
//!
//! The test crate needs `tokio` (with `macros` and `rt-multi-thread`) as a
//! dev-dependency: the expanded tests are `#[tokio::test]`s.
//!
//! The macro expands to one `#[tokio::test]` per check, so a failure names
//! the property that broke. A [`Fixture`] with a `reopen` function also gets
//! the persistence checks (reopening must see everything acknowledged).

use std::any::Any;
use std::collections::HashSet;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::{Duration, SystemTime};

use slimta::queue::{AttemptOutcome, QueueMeta, QueueStorage};
use slimta::{BodyType, ClientInfo, Envelope, Protocol, TlsInfo};

/// A fresh store for one check, and how to reopen it.
pub struct Fixture<S> {
    /// The store under test, empty.
    pub storage: S,
    /// Drops the given handle and opens the same data again (persistent
    /// backends only).
    pub reopen: Option<Box<dyn Fn(S) -> S + Send>>,
    /// Anything that must live as long as the check (a temporary directory,
    /// a server process).
    pub guard: Box<dyn Any + Send>,
}

impl<S> Fixture<S> {
    /// A fixture for a backend that keeps nothing across handles.
    pub fn volatile(storage: S) -> Self {
        Self {
            storage,
            reopen: None,
            guard: Box::new(()),
        }
    }
}

/// Expands to one test per conformance check, each with a fresh fixture
/// from `$fixture`.
#[macro_export]
macro_rules! storage_conformance {
    ($fixture:expr) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn conformance_round_trips_every_field() {
            $crate::round_trips_every_field($fixture).await;
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn conformance_partial_delivery() {
            $crate::partial_delivery($fixture).await;
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn conformance_attempts_timestamps_and_errors() {
            $crate::attempts_timestamps_and_errors($fixture).await;
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn conformance_remove() {
            $crate::remove($fixture).await;
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn conformance_unknown_ids() {
            $crate::unknown_ids($fixture).await;
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn conformance_concurrent_writers() {
            $crate::concurrent_writers($fixture).await;
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn conformance_reopen_keeps_everything_acknowledged() {
            $crate::reopen_keeps_everything_acknowledged($fixture).await;
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn conformance_load_into_hands_over_every_message_once() {
            $crate::load_into_hands_over_every_message_once($fixture).await;
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn conformance_summary_counts_and_finds_the_oldest() {
            $crate::summary_counts_and_finds_the_oldest($fixture).await;
        }
    };
}

fn t(secs: u64, nanos: u32) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::new(secs, nanos)
}

/// Every byte value, bare CR and LF, a lone dot line, NULs: content that a
/// careless text encoding would change.
pub fn binary_message(len: usize) -> Vec<u8> {
    let mut m = b"Subject: =?utf-8?q?=C3=A9?=\r\nX-8bit: \xc3\xa9\xff\r\n\r\n".to_vec();
    m.extend_from_slice(b"\r\n.\r\n..\r\nbare\nlf\rcr\0nul\r\n");
    let mut x: u32 = 0x1234_5678;
    while m.len() < len {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        m.push(x.to_le_bytes()[0]);
    }
    m
}

/// Envelopes covering every field and variant.
pub fn sample_envelopes() -> Vec<Envelope> {
    let full = Envelope {
        sender: "s\u{e9}nder@\u{e9}xample.test".into(),
        recipients: vec![
            "a@x.test".into(),
            "\"quoted local\"@y.test".into(),
            "b@[192.0.2.1]".into(),
        ],
        message: binary_message(300_000),
        client: ClientInfo {
            ip: Some(IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 7))),
            port: 65535,
            host: Some("client.example.test".into()),
            helo: Some("[IPv6:2001:db8::7]".into()),
            protocol: Protocol::Esmtpsa,
            auth: Some("user@example.test".into()),
            tls: Some(TlsInfo {
                protocol: "TLSv1.3".into(),
                cipher: "TLS13_AES_256_GCM_SHA384".into(),
            }),
        },
        receive_time: t(1_700_000_000, 123_456_789),
        body: BodyType::BinaryMime,
        smtputf8: true,
    };
    let mut v4 = Envelope::new("", vec!["postmaster@x.test".into()], b"\r\n".to_vec());
    v4.client = ClientInfo {
        ip: Some(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 33))),
        port: 25,
        host: None,
        helo: Some("mx.example.test".into()),
        protocol: Protocol::Smtp,
        auth: None,
        tls: None,
    };
    v4.receive_time = t(1, 0);
    v4.body = BodyType::EightBitMime;
    let mut bare = Envelope::new("a@b", vec![], Vec::new());
    bare.receive_time = t(1_800_000_000, 999_999_999);
    vec![full, v4, bare]
}

fn one(recipients: usize) -> Envelope {
    let mut e = Envelope::new(
        "sender@x.test",
        (0..recipients).map(|i| format!("r{i}@y.test")).collect(),
        b"Subject: x\r\n\r\nbody\r\n".to_vec(),
    );
    e.receive_time = t(1_700_000_000, 0);
    e
}

fn assert_not_found<T: std::fmt::Debug>(result: io::Result<T>, what: &str) {
    match result {
        Err(e) => assert_eq!(e.kind(), io::ErrorKind::NotFound, "{what}: {e}"),
        Ok(v) => panic!("{what}: expected NotFound, got {v:?}"),
    }
}

pub async fn round_trips_every_field<S: QueueStorage>(f: Fixture<S>) {
    let s = &f.storage;
    let mut ids = Vec::new();
    for (i, e) in sample_envelopes().iter().enumerate() {
        let due = t(1_750_000_000 + i as u64, 42);
        let id = s.write(e, due).await.unwrap();
        let got = s.get(&id).await.unwrap();
        assert_eq!(&*got.envelope, e, "envelope {i} changed in storage");
        assert_eq!(
            got.envelope.message, e.message,
            "message {i} not byte for byte"
        );
        assert_eq!(got.meta.timestamp, Some(due));
        assert_eq!((got.meta.attempts, got.meta.last_error), (0, None));
        assert!(got.meta.delivered.is_empty());
        ids.push((id, due));
    }
    let mut loaded = s.load().await.unwrap();
    loaded.sort();
    ids.sort();
    assert_eq!(loaded, ids);
}

pub async fn partial_delivery<S: QueueStorage>(f: Fixture<S>) {
    let s = &f.storage;
    let id = s.write(&one(4), t(0, 0)).await.unwrap();
    let other = s.write(&one(4), t(0, 0)).await.unwrap();
    finish(s, &id, 1, &[2]).await;
    let got = s.get(&id).await.unwrap();
    assert_eq!(got.meta.delivered, [2]);
    assert_eq!(
        got.pending_recipients(),
        [(0, "r0@y.test"), (1, "r1@y.test"), (3, "r3@y.test")]
    );
    // Idempotent, unordered, accumulating.
    finish(s, &id, 2, &[3, 0, 2]).await;
    finish(s, &id, 2, &[0]).await;
    let got = s.get(&id).await.unwrap();
    assert_eq!(got.meta.delivered, [0, 2, 3]);
    assert_eq!(got.pending_recipients(), [(1, "r1@y.test")]);
    assert_eq!(
        got.envelope.recipients.len(),
        4,
        "the stored recipient list must not shrink"
    );
    // Indices beyond the stored list are ignored.
    finish(s, &id, 3, &[1, 9]).await;
    assert!(s.get(&id).await.unwrap().pending_recipients().is_empty());
    assert_eq!(s.get(&id).await.unwrap().meta.delivered, [0, 1, 2, 3]);
    // Other messages are untouched.
    assert!(s.get(&other).await.unwrap().meta.delivered.is_empty());
}

/// Records that attempt `attempts` finished `indices` and changed nothing
/// else.
async fn finish<S: QueueStorage>(s: &S, id: &str, attempts: u32, indices: &[usize]) {
    let outcome = AttemptOutcome {
        attempts,
        finished: indices.to_vec(),
        ..AttemptOutcome::default()
    };
    s.record(id, &outcome).await.unwrap();
}

pub async fn attempts_timestamps_and_errors<S: QueueStorage>(f: Fixture<S>) {
    let s = &f.storage;
    let id = s.write(&one(2), t(100, 0)).await.unwrap();
    let deferred = AttemptOutcome {
        attempts: 1,
        finished: vec![],
        next_attempt: Some(t(150, 0)),
        last_error: Some("451 4.4.1 first".into()),
        delay_warned: false,
    };
    s.record(&id, &deferred).await.unwrap();
    let meta = s.get(&id).await.unwrap().meta;
    assert_eq!(
        meta,
        QueueMeta {
            timestamp: Some(t(150, 0)),
            attempts: 1,
            delivered: vec![],
            last_error: Some("451 4.4.1 first".into()),
            delay_warned: false,
        }
    );
    // The whole outcome at once: every field of one record.
    let second = AttemptOutcome {
        attempts: 2,
        finished: vec![1],
        next_attempt: Some(t(200, 5)),
        last_error: Some("451 4.4.1 second".into()),
        delay_warned: true,
    };
    s.record(&id, &second).await.unwrap();
    let after_second = s.get(&id).await.unwrap().meta;
    assert_eq!(
        after_second,
        QueueMeta {
            timestamp: Some(t(200, 5)),
            attempts: 2,
            delivered: vec![1],
            last_error: Some("451 4.4.1 second".into()),
            delay_warned: true,
        }
    );
    // Applying a record twice changes nothing (a retried write).
    s.record(&id, &second).await.unwrap();
    assert_eq!(s.get(&id).await.unwrap().meta, after_second);
    // `None` and `false` keep what is stored; the count is absolute.
    finish(s, &id, 3, &[]).await;
    let meta = s.get(&id).await.unwrap().meta;
    assert_eq!(
        (
            meta.attempts,
            meta.timestamp,
            meta.last_error.as_deref(),
            meta.delay_warned
        ),
        (3, Some(t(200, 5)), Some("451 4.4.1 second"), true)
    );
    // An operator's "retry now" sets only the due time.
    s.set_timestamp(&id, t(300, 0)).await.unwrap();
    let meta = s.get(&id).await.unwrap().meta;
    assert_eq!((meta.timestamp, meta.attempts), (Some(t(300, 0)), 3));
    assert_eq!(s.load().await.unwrap(), [(id.clone(), t(300, 0))]);
    // list() agrees with get(), without the message bytes.
    let stored = s.get(&id).await.unwrap();
    assert_eq!(
        s.list().await.unwrap(),
        [slimta::queue::QueueEntry::of(id, &stored)]
    );
}

pub async fn remove<S: QueueStorage>(f: Fixture<S>) {
    let s = &f.storage;
    let gone = s.write(&one(1), t(1, 0)).await.unwrap();
    let kept = s.write(&one(1), t(2, 0)).await.unwrap();
    s.remove(&gone).await.unwrap();
    assert_not_found(s.get(&gone).await, "get after remove");
    assert_eq!(s.load().await.unwrap(), [(kept.clone(), t(2, 0))]);
    s.remove(&gone).await.unwrap();
    s.remove("0123456789abcdef0123456789abcdef").await.unwrap();
    s.get(&kept).await.unwrap();
}

pub async fn unknown_ids<S: QueueStorage>(f: Fixture<S>) {
    let s = &f.storage;
    s.write(&one(1), t(1, 0)).await.unwrap();
    for id in [
        "0123456789abcdef0123456789abcdef",
        "",
        "../lock",
        "msg/../../x",
        "nope",
    ] {
        assert_not_found(s.get(id).await, "get");
        assert_not_found(s.set_timestamp(id, t(5, 0)).await, "set_timestamp");
        assert_not_found(s.record(id, &AttemptOutcome::default()).await, "record");
        s.remove(id).await.unwrap();
    }
    assert_eq!(s.load().await.unwrap().len(), 1);
}

pub async fn concurrent_writers<S: QueueStorage + Clone>(f: Fixture<S>) {
    const WRITERS: usize = 200;
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..WRITERS {
        let s = f.storage.clone();
        tasks.spawn(async move {
            let mut e = one(1);
            e.recipients = vec![format!("writer{i}@y.test")];
            e.message = binary_message(1000 + i);
            let id = s.write(&e, t(i as u64, 0)).await.unwrap();
            (i, id)
        });
    }
    let written = tasks.join_all().await;
    let ids: HashSet<&String> = written.iter().map(|(_, id)| id).collect();
    assert_eq!(ids.len(), WRITERS, "ids must be unique");
    for (i, id) in &written {
        let got = f.storage.get(id).await.unwrap();
        assert_eq!(got.envelope.recipients, [format!("writer{i}@y.test")]);
        assert_eq!(got.envelope.message, binary_message(1000 + i));
        assert_eq!(got.meta.timestamp, Some(t(*i as u64, 0)));
    }
    assert_eq!(f.storage.load().await.unwrap().len(), WRITERS);
}

pub async fn reopen_keeps_everything_acknowledged<S: QueueStorage>(f: Fixture<S>) {
    let Some(reopen) = f.reopen else {
        return;
    };
    let s = f.storage;
    let envelopes = sample_envelopes();
    let mut ids = Vec::new();
    for e in &envelopes {
        ids.push(s.write(e, t(10, 0)).await.unwrap());
    }
    finish(&s, &ids[0], 1, &[]).await;
    let second = AttemptOutcome {
        attempts: 2,
        finished: vec![1],
        next_attempt: Some(t(20, 1)),
        last_error: Some("451 later".into()),
        delay_warned: true,
    };
    s.record(&ids[0], &second).await.unwrap();
    s.remove(&ids[2]).await.unwrap();

    let s = reopen(s);
    let mut loaded = s.load().await.unwrap();
    loaded.sort();
    let mut expected = vec![(ids[0].clone(), t(20, 1)), (ids[1].clone(), t(10, 0))];
    expected.sort();
    assert_eq!(loaded, expected);
    let first = s.get(&ids[0]).await.unwrap();
    assert_eq!(*first.envelope, envelopes[0]);
    assert_eq!(
        first.meta,
        QueueMeta {
            timestamp: Some(t(20, 1)),
            attempts: 2,
            delivered: vec![1],
            last_error: Some("451 later".into()),
            delay_warned: true,
        }
    );
    assert_eq!(*s.get(&ids[1]).await.unwrap().envelope, envelopes[1]);
    assert_not_found(s.get(&ids[2]).await, "a removed message came back");
    // Counting goes on from the stored count, and updates after a reopen
    // survive the next one.
    finish(&s, &ids[0], 3, &[0]).await;
    let s = reopen(s);
    let first = s.get(&ids[0]).await.unwrap();
    assert_eq!((first.meta.attempts, first.meta.delivered), (3, vec![0, 1]));
}

/// Every message stored before `load_into`, with its due time, in batches,
/// each exactly once, also after a reopen (where a backend may still be
/// finding them while it answers).
pub async fn load_into_hands_over_every_message_once<S: QueueStorage>(f: Fixture<S>) {
    async fn heard<S: QueueStorage>(s: &S) -> Vec<(String, SystemTime)> {
        let (batches, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let sent = s.load_into(batches).await.unwrap();
        let mut all = Vec::new();
        while let Some(batch) = rx.recv().await {
            assert!(!batch.is_empty(), "an empty batch");
            all.extend(batch);
        }
        assert_eq!(sent, all.len());
        all.sort();
        all
    }
    let s = f.storage;
    assert!(heard(&s).await.is_empty());
    let mut expected = Vec::new();
    for i in 0..1500u64 {
        let id = s.write(&one(1), t(i, 7)).await.unwrap();
        expected.push((id, t(i, 7)));
    }
    let gone = expected.pop().unwrap().0;
    s.remove(&gone).await.unwrap();
    expected.sort();
    assert_eq!(heard(&s).await, expected);
    if let Some(reopen) = f.reopen {
        let s = reopen(s);
        assert_eq!(heard(&s).await, expected);
        // A receiver that goes away ends the load without an error.
        let (batches, rx) = tokio::sync::mpsc::unbounded_channel();
        drop(rx);
        s.load_into(batches).await.unwrap();
    }
}

/// The count and the oldest receive time, as messages come and go.
pub async fn summary_counts_and_finds_the_oldest<S: QueueStorage>(f: Fixture<S>) {
    let s = &f.storage;
    let empty = s.summary().await.unwrap();
    assert_eq!((empty.messages, empty.oldest_received), (0, None));
    let mut ids = Vec::new();
    for secs in [300, 100, 200] {
        let mut e = one(1);
        e.receive_time = t(secs, 0);
        ids.push(s.write(&e, t(1, 0)).await.unwrap());
    }
    let summary = s.summary().await.unwrap();
    assert_eq!(
        (summary.messages, summary.oldest_received),
        (3, Some(t(100, 0)))
    );
    s.remove(&ids[1]).await.unwrap();
    let summary = s.summary().await.unwrap();
    assert_eq!(
        (summary.messages, summary.oldest_received),
        (2, Some(t(200, 0)))
    );
    if let Some(reopen) = f.reopen {
        let s = reopen(f.storage);
        let mut summary = s.summary().await.unwrap();
        // A backend still indexing may count fewer until it is done.
        if summary.messages < 2 {
            s.load().await.unwrap();
            summary = s.summary().await.unwrap();
        }
        assert_eq!(
            (summary.messages, summary.oldest_received),
            (2, Some(t(200, 0)))
        );
    }
}
