//! The dispatch seam: a queue built with `Queue::with_dispatch` attempts
//! what its dispatcher hands out, tells it how each attempt ended, passes
//! on operators' commands, and records every outcome in storage *before*
//! the dispatcher hears of it.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use slimta::queue::{
    Admission, AttemptEnd, Contact, Dispatch, Lease, LocalDispatch, MemoryStorage, Placement,
    Queue, QueueStorage, clock,
};
use slimta::relay::Destination;
use slimta::{Delivery, Envelope, Handoff, Relay, RelayError, Reply};

/// What the dispatcher heard, and what storage held at that moment.
#[derive(Debug, PartialEq)]
enum Heard {
    Added(String),
    HandedOut(String),
    /// The end, with the stored due time (`None`: not in storage).
    Ended(String, AttemptEnd, Option<SystemTime>),
    RetryNow(String, Placement),
    Delete(String, Placement),
}

/// A dispatcher that logs every call and leaves the work to a
/// `LocalDispatch`, checking storage as it hears of an attempt's end.
#[derive(Clone)]
struct Logging {
    local: Arc<LocalDispatch>,
    storage: MemoryStorage,
    heard: Arc<Mutex<Vec<Heard>>>,
}

impl Logging {
    fn heard(&self) -> Vec<Heard> {
        std::mem::take(&mut *self.heard.lock().unwrap())
    }
}

impl Dispatch for Logging {
    async fn add(&self, id: String, due: SystemTime, destination: Option<Destination>) -> bool {
        self.heard.lock().unwrap().push(Heard::Added(id.clone()));
        self.local.add(id, due, destination).await
    }
    async fn admit(&self, id: &str, destination: Destination) -> Admission {
        self.local.admit(id, destination).await
    }
    async fn contact(&self, id: &str, contact: Contact) {
        self.local.contact(id, contact).await;
    }
    async fn next_due(&self) -> Lease {
        let lease = self.local.next_due().await;
        self.heard
            .lock()
            .unwrap()
            .push(Heard::HandedOut(lease.id.clone()));
        lease
    }
    async fn ended(&self, id: &str, end: AttemptEnd) {
        let stored = self
            .storage
            .get(id)
            .await
            .ok()
            .and_then(|s| s.meta.timestamp);
        self.heard
            .lock()
            .unwrap()
            .push(Heard::Ended(id.to_owned(), end, stored));
        self.local.ended(id, end).await;
    }
    async fn retry_now(&self, id: &str) -> Placement {
        let placement = self.local.retry_now(id).await;
        self.heard
            .lock()
            .unwrap()
            .push(Heard::RetryNow(id.to_owned(), placement));
        placement
    }
    async fn take_retry_request(&self, id: &str) -> bool {
        self.local.take_retry_request(id).await
    }
    async fn delete(&self, id: &str) -> Placement {
        let placement = self.local.delete(id).await;
        self.heard
            .lock()
            .unwrap()
            .push(Heard::Delete(id.to_owned(), placement));
        placement
    }
    fn waiting(&self) -> usize {
        self.local.waiting()
    }
}

/// Delivers to a@ from the second attempt on; always defers b@.
#[derive(Clone, Default)]
struct Relay2 {
    attempts: Arc<Mutex<u32>>,
}

impl Relay for Relay2 {
    async fn attempt(&self, envelope: &Envelope, attempt: u32) -> Result<Delivery, RelayError> {
        *self.attempts.lock().unwrap() += 1;
        let results = envelope
            .recipients
            .iter()
            .map(|r| {
                if r.starts_with('a') && attempt >= 2 {
                    Ok(Reply::new(250, "2.0.0", "ok"))
                } else {
                    Err(RelayError::transient(Reply::new(451, "4.4.1", "later")))
                }
            })
            .collect();
        Ok(Delivery::per_recipient(
            Reply::new(250, "2.0.0", "ok"),
            results,
        ))
    }
}

async fn settle() {
    for _ in 0..50 {
        tokio::task::yield_now().await;
    }
}

#[tokio::test(start_paused = true)]
async fn the_dispatcher_hears_every_end_after_storage_has_it() {
    let storage = MemoryStorage::new();
    let dispatch = Logging {
        local: Arc::default(),
        storage: storage.clone(),
        heard: Arc::default(),
    };
    let relay = Relay2::default();
    let queue = Queue::with_dispatch(storage.clone(), relay.clone(), dispatch.clone())
        .with_backoff(|_: &Envelope, _| Some(Duration::from_secs(60)));
    queue.start().await.unwrap();
    let e = Envelope::new(
        "s@x.test",
        vec!["a@y.test".into(), "b@y.test".into()],
        b"Subject: d\r\n\r\nbody\r\n".to_vec(),
    );
    let id = queue.handoff(e).await[0].result.clone().unwrap();
    settle().await;
    let first = dispatch.heard();
    assert_eq!(
        first[..2],
        [Heard::Added(id.clone()), Heard::HandedOut(id.clone())]
    );
    // The end names the retry time, and storage holds that time already.
    match &first[2] {
        Heard::Ended(ended, AttemptEnd::RetryAt(due), stored) => {
            assert_eq!(ended, &id);
            assert_eq!(stored.as_ref(), Some(due), "storage must have it first");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(first.len(), 3);

    // An operator's retry now reaches the dispatcher; the attempt delivers
    // a@ and defers b@ again.
    queue.retry_now(&id).await.unwrap();
    settle().await;
    let second = dispatch.heard();
    assert_eq!(second[0], Heard::RetryNow(id.clone(), Placement::Waiting));
    assert_eq!(second[1], Heard::HandedOut(id.clone()));
    assert!(matches!(
        second[2],
        Heard::Ended(_, AttemptEnd::RetryAt(_), Some(_))
    ));
    assert_eq!(storage.get(&id).await.unwrap().meta.delivered, [0]);
    assert_eq!(queue.waiting(), 1);

    // A delete takes the waiting message out of the dispatcher and storage.
    queue.delete(&id).await.unwrap();
    assert_eq!(
        dispatch.heard(),
        [Heard::Delete(id.clone(), Placement::Waiting)]
    );
    assert_eq!(queue.waiting(), 0);
    tokio::time::advance(Duration::from_secs(3600)).await;
    settle().await;
    assert_eq!(
        *relay.attempts.lock().unwrap(),
        2,
        "a deleted message is not attempted"
    );
    assert!(dispatch.heard().is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_finished_message_is_done_and_gone_from_storage_first() {
    #[derive(Clone)]
    struct Deliver;
    impl Relay for Deliver {
        async fn attempt(&self, e: &Envelope, _: u32) -> Result<Delivery, RelayError> {
            let results = e
                .recipients
                .iter()
                .map(|_| Ok(Reply::new(250, "2.0.0", "ok")))
                .collect();
            Ok(Delivery::per_recipient(
                Reply::new(250, "2.0.0", "ok"),
                results,
            ))
        }
    }
    let storage = MemoryStorage::new();
    let dispatch = Logging {
        local: Arc::default(),
        storage: storage.clone(),
        heard: Arc::default(),
    };
    let queue = Queue::with_dispatch(storage.clone(), Deliver, dispatch.clone());
    queue.start().await.unwrap();
    let mut e = Envelope::new(
        "s@x.test",
        vec!["a@y.test".into()],
        b"\r\nbody\r\n".to_vec(),
    );
    e.receive_time = clock::now();
    let id = queue.handoff(e).await[0].result.clone().unwrap();
    settle().await;
    assert_eq!(
        dispatch.heard(),
        [
            Heard::Added(id.clone()),
            Heard::HandedOut(id.clone()),
            Heard::Ended(id, AttemptEnd::Done, None),
        ]
    );
    assert!(storage.is_empty());
}
