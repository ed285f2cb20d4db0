//! Operator commands (list, show, retry now, delete, stats), delay
//! warnings and postmaster notices, against a scripted relay in paused
//! tokio time.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use slimta::queue::{ExponentialBackoff, MemoryStorage, Queue, QueueStorage};
use slimta::{Delivery, Envelope, Handoff, Relay, RelayError, Reply};

type Decide = dyn Fn(&Envelope, &str) -> Result<Reply, RelayError> + Send + Sync;

/// A relay that asks `decide(envelope, recipient)` and records every
/// envelope it was given.
#[derive(Clone)]
struct Recorder {
    decide: Arc<Decide>,
    seen: Arc<Mutex<Vec<Envelope>>>,
}

impl Recorder {
    fn new(
        decide: impl Fn(&Envelope, &str) -> Result<Reply, RelayError> + Send + Sync + 'static,
    ) -> Self {
        Self {
            decide: Arc::new(decide),
            seen: Arc::default(),
        }
    }

    fn seen(&self) -> Vec<Envelope> {
        self.seen.lock().unwrap().clone()
    }

    fn sent_by_null(&self) -> Vec<Envelope> {
        self.seen()
            .into_iter()
            .filter(|e| e.sender.is_empty())
            .collect()
    }
}

impl Relay for Recorder {
    fn attempt(
        &self,
        envelope: &Envelope,
        _attempt: u32,
    ) -> impl Future<Output = Result<Delivery, RelayError>> + Send {
        self.seen.lock().unwrap().push(envelope.clone());
        let results = envelope
            .recipients
            .iter()
            .map(|r| (self.decide)(envelope, r))
            .collect();
        std::future::ready(Ok(Delivery::per_recipient(
            Reply::new(250, "2.0.0", "done"),
            results,
        )))
    }
}

fn ok() -> Result<Reply, RelayError> {
    Ok(Reply::new(250, "2.0.0", "ok"))
}

fn later() -> Result<Reply, RelayError> {
    Err(RelayError::transient(Reply::new(451, "4.4.1", "try later")))
}

fn refused() -> Result<Reply, RelayError> {
    Err(RelayError::permanent(Reply::new(550, "5.1.1", "no such user")).with_remote_mta("mx.test"))
}

fn message(sender: &str, to: &[&str]) -> Envelope {
    Envelope::new(
        sender,
        to.iter().map(|s| (*s).to_string()).collect(),
        b"Subject: ops\r\nMessage-Id: <1@x.test>\r\n\r\nbody\r\n".to_vec(),
    )
}

fn hourly() -> ExponentialBackoff {
    ExponentialBackoff {
        initial_delay: Duration::from_secs(3600),
        factor: 1.0,
        max_delay: Duration::from_secs(3600),
        max_age: Duration::from_secs(5 * 86_400),
        max_attempts: 0,
    }
}

async fn settle() {
    for _ in 0..50 {
        tokio::task::yield_now().await;
    }
    tokio::time::sleep(Duration::from_millis(10)).await;
}

#[tokio::test(start_paused = true)]
async fn retry_now_moves_the_due_time_and_delete_removes() {
    let relay = Recorder::new(|_, _| later());
    let storage = MemoryStorage::new();
    let queue = Queue::new(storage.clone(), relay.clone()).with_backoff(hourly());
    queue.start().await.unwrap();
    queue.handoff(message("s@x.test", &["a@y.test"])).await;
    queue.handoff(message("s@x.test", &["b@y.test"])).await;
    settle().await;
    assert_eq!(relay.seen().len(), 2, "first attempts at once");

    let list = queue.list().await.unwrap();
    assert_eq!(list.len(), 2);
    assert!(list.iter().all(|e| e.meta.attempts == 1));
    assert!(
        list.iter()
            .all(|e| e.meta.last_error.as_deref() == Some("transient failure: 451 4.4.1 try later"))
    );
    let a = list
        .iter()
        .find(|e| e.recipients == ["a@y.test"])
        .unwrap()
        .id
        .clone();
    let b = list
        .iter()
        .find(|e| e.recipients == ["b@y.test"])
        .unwrap()
        .id
        .clone();

    // Ten minutes in, "retry a" attempts it at once; b waits its hour.
    tokio::time::sleep(Duration::from_secs(600)).await;
    queue.retry_now(&a).await.unwrap();
    settle().await;
    let seen = relay.seen();
    assert_eq!(seen.len(), 3);
    assert_eq!(seen[2].recipients, ["a@y.test"]);

    queue.delete(&b).await.unwrap();
    assert_eq!(
        queue.show(&b).await.unwrap_err().kind(),
        std::io::ErrorKind::NotFound
    );
    assert_eq!(
        queue.delete(&b).await.unwrap_err().kind(),
        std::io::ErrorKind::NotFound
    );
    assert_eq!(
        queue.retry_now("nope").await.unwrap_err().kind(),
        std::io::ErrorKind::NotFound
    );
    let stats = queue.stats().await.unwrap();
    assert_eq!((stats.messages, stats.waiting), (1, 1));

    // b never comes back; a is retried on its own schedule.
    tokio::time::sleep(Duration::from_secs(2 * 3600)).await;
    settle().await;
    assert!(
        relay.seen()[3..]
            .iter()
            .all(|e| e.recipients == ["a@y.test"])
    );
    assert_eq!(queue.retry_all().await.unwrap(), 1);
    assert_eq!(storage.len(), 1);
}

#[tokio::test(start_paused = true)]
async fn one_delay_warning_after_the_configured_time() {
    let relay = Recorder::new(|e, _| if e.sender.is_empty() { ok() } else { later() });
    let queue = Queue::new(MemoryStorage::new(), relay.clone())
        .with_backoff(hourly())
        .with_hostname("mx.test")
        .delay_warning(Some(Duration::from_secs(4 * 3600)));
    queue.start().await.unwrap();
    queue.handoff(message("s@x.test", &["a@y.test"])).await;
    // Attempts at 0h, 1h, ... 8h: the first past 4h sends the warning.
    tokio::time::sleep(Duration::from_secs(3 * 3600 + 60)).await;
    settle().await;
    assert!(relay.sent_by_null().is_empty(), "no warning before 4h");
    tokio::time::sleep(Duration::from_secs(5 * 3600)).await;
    settle().await;
    let warnings = relay.sent_by_null();
    assert_eq!(warnings.len(), 1, "exactly one warning");
    assert_eq!(warnings[0].recipients, ["s@x.test"]);
    let text = String::from_utf8_lossy(&warnings[0].message);
    assert!(
        text.contains("Action: delayed\r\nStatus: 4.4.1\r\n"),
        "{text}"
    );
    assert!(text.contains("Content-Type: text/rfc822-headers"), "{text}");
}

#[tokio::test(start_paused = true)]
async fn a_failed_bounce_goes_to_the_postmaster_and_a_failed_notice_is_dropped() {
    // Everything to fail.test is refused for good, including the bounce to
    // the sender there; the postmaster's notice is delivered.
    let relay = Recorder::new(|_, r| {
        if r.ends_with("@fail.test") {
            refused()
        } else {
            ok()
        }
    });
    let queue = Queue::new(MemoryStorage::new(), relay.clone())
        .with_hostname("mx.test")
        .postmaster(Some("postmaster@mx.test".into()));
    queue.start().await.unwrap();
    queue
        .handoff(message("sender@fail.test", &["rcpt@fail.test"]))
        .await;
    settle().await;
    let sent_by_null = relay.sent_by_null();
    assert_eq!(sent_by_null.len(), 2, "the bounce, then the notice");
    assert_eq!(sent_by_null[0].recipients, ["sender@fail.test"]);
    assert_eq!(sent_by_null[1].recipients, ["postmaster@mx.test"]);
    let notice = String::from_utf8_lossy(&sent_by_null[1].message);
    assert!(notice.contains("Final-Recipient: rfc822; sender@fail.test"));
    assert!(notice.contains("Remote-MTA: dns; mx.test"));
    assert!(notice.contains("Content-Type: message/rfc822"));
    assert!(queue.storage().is_empty());

    // With the postmaster refused too, the notice is dropped: no loop.
    let relay = Recorder::new(|_, _| refused());
    let queue = Queue::new(MemoryStorage::new(), relay.clone())
        .postmaster(Some("postmaster@fail.test".into()));
    queue.start().await.unwrap();
    queue
        .handoff(message("sender@fail.test", &["rcpt@fail.test"]))
        .await;
    settle().await;
    tokio::time::sleep(Duration::from_secs(3600)).await;
    assert_eq!(
        relay.seen().len(),
        3,
        "message, bounce, notice; nothing more"
    );
    assert!(queue.storage().is_empty());

    // Without a postmaster, a failed bounce is dropped.
    let relay = Recorder::new(|_, _| refused());
    let queue = Queue::new(MemoryStorage::new(), relay.clone());
    queue.start().await.unwrap();
    queue
        .handoff(message("sender@fail.test", &["rcpt@fail.test"]))
        .await;
    settle().await;
    assert_eq!(relay.seen().len(), 2);
    assert!(queue.storage().is_empty());
}

#[tokio::test(start_paused = true)]
async fn bounces_return_the_whole_message_or_only_headers() {
    for headers_only in [false, true] {
        let relay = Recorder::new(|e, _| if e.sender.is_empty() { ok() } else { refused() });
        let queue =
            Queue::new(MemoryStorage::new(), relay.clone()).bounce_headers_only(headers_only);
        queue.start().await.unwrap();
        queue.handoff(message("s@x.test", &["a@y.test"])).await;
        settle().await;
        let bounces = relay.sent_by_null();
        assert_eq!(bounces.len(), 1);
        let text = String::from_utf8_lossy(&bounces[0].message);
        assert_eq!(text.contains("body\r\n"), !headers_only, "{text}");
        assert_eq!(
            text.contains("Content-Type: text/rfc822-headers"),
            headers_only
        );
        assert!(text.contains("Remote-MTA: dns; mx.test\r\n"));
    }
}

#[tokio::test]
async fn list_reads_the_disk_index() {
    let dir = tempfile::tempdir().unwrap();
    let storage = slimta::queue::DiskStorage::open(dir.path().join("spool")).unwrap();
    let id = storage
        .write(
            &message("s@x.test", &["a@y.test", "b@y.test"]),
            std::time::SystemTime::now(),
        )
        .await
        .unwrap();
    let outcome = slimta::queue::AttemptOutcome {
        attempts: 1,
        finished: vec![1],
        next_attempt: None,
        last_error: Some("451 later".into()),
        delay_warned: true,
    };
    storage.record(&id, &outcome).await.unwrap();
    let listed = storage.list().await.unwrap();
    assert_eq!(listed.len(), 1);
    let e = &listed[0];
    assert_eq!((e.sender.as_str(), e.recipients.len()), ("s@x.test", 2));
    assert_eq!(e.meta.delivered, [1]);
    assert_eq!(e.meta.last_error.as_deref(), Some("451 later"));
    assert!(e.meta.delay_warned);
    drop(storage);
    // The same after reopening (from the journal, not memory).
    let storage = slimta::queue::DiskStorage::open(dir.path().join("spool")).unwrap();
    assert_eq!(storage.list().await.unwrap(), listed);
}

/// A relay whose attempts wait until the test opens the gate for them, then
/// fail transiently; counts the attempts begun.
#[derive(Clone)]
struct Gated {
    gate: Arc<tokio::sync::Semaphore>,
    begun: Arc<Mutex<u32>>,
}

impl Default for Gated {
    fn default() -> Self {
        Self {
            gate: Arc::new(tokio::sync::Semaphore::new(0)),
            begun: Arc::default(),
        }
    }
}

impl Gated {
    fn begun(&self) -> u32 {
        *self.begun.lock().unwrap()
    }
}

/// A started queue (hourly backoff) over `relay` whose first attempt of a
/// message to `to` is in progress, held at the gate; and the message's id.
async fn attempt_in_progress(relay: &Gated, to: &str) -> (Queue<MemoryStorage, Gated>, String) {
    let queue = Queue::new(MemoryStorage::new(), relay.clone()).with_backoff(hourly());
    queue.start().await.unwrap();
    queue.handoff(message("s@x.test", &[to])).await;
    settle().await;
    let id = queue.list().await.unwrap()[0].id.clone();
    (queue, id)
}

impl Relay for Gated {
    fn attempt(
        &self,
        envelope: &Envelope,
        _attempt: u32,
    ) -> impl Future<Output = Result<Delivery, RelayError>> + Send {
        *self.begun.lock().unwrap() += 1;
        let gate = self.gate.clone();
        let results = envelope.recipients.iter().map(|_| later()).collect();
        async move {
            gate.acquire().await.unwrap().forget();
            Ok(Delivery::per_recipient(
                Reply::new(250, "2.0.0", "done"),
                results,
            ))
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_retry_asked_for_during_an_attempt_follows_it_at_once() {
    let relay = Gated::default();
    let (queue, id) = attempt_in_progress(&relay, "a@y.test").await;
    assert_eq!(relay.begun(), 1, "first attempt in progress");

    // The operator asks while the attempt runs; it then fails and would
    // wait its hour, but the request brings the next attempt at once.
    queue.retry_now(&id).await.unwrap();
    relay.gate.add_permits(1);
    settle().await;
    assert_eq!(relay.begun(), 2, "second attempt at once");
    relay.gate.add_permits(1);
    settle().await;
    let entry = &queue.list().await.unwrap()[0];
    assert_eq!(entry.meta.attempts, 2);
    // Once: the third waits for the backoff again, stored too.
    let due = entry.meta.timestamp.unwrap();
    assert!(due >= slimta::queue::clock::now() + Duration::from_secs(3500));
    tokio::time::sleep(Duration::from_secs(600)).await;
    assert_eq!(relay.begun(), 2);
}

#[tokio::test(start_paused = true)]
async fn shutdown_lets_the_attempt_in_progress_record_its_outcome() {
    let relay = Gated::default();
    let (queue, id) = attempt_in_progress(&relay, "a@y.test").await;

    // The attempt finishes within the grace: nothing is left running and
    // its failure is recorded.
    let opener = tokio::spawn({
        let gate = relay.gate.clone();
        async move {
            tokio::time::sleep(Duration::from_secs(3)).await;
            gate.add_permits(1);
        }
    });
    assert_eq!(queue.shutdown(Duration::from_secs(10)).await, 0);
    opener.await.unwrap();
    assert_eq!(queue.show(&id).await.unwrap().meta.attempts, 1);

    // A stopped queue starts nothing new; an attempt that outlives the
    // grace is reported.
    let (queue, _) = attempt_in_progress(&relay, "b@y.test").await;
    let begun = relay.begun();
    assert_eq!(queue.shutdown(Duration::from_secs(10)).await, 1);
    queue.handoff(message("s@x.test", &["c@y.test"])).await;
    relay.gate.add_permits(1);
    settle().await;
    assert_eq!(relay.begun(), begun, "no attempt after shutdown");
}

#[tokio::test(start_paused = true)]
async fn a_message_deleted_during_its_attempt_is_forgotten() {
    let relay = Gated::default();
    let (queue, id) = attempt_in_progress(&relay, "a@y.test").await;
    queue.delete(&id).await.unwrap();
    relay.gate.add_permits(1);
    settle().await;
    // Not waiting for a retry of a message that is gone, and never tried
    // again.
    let stats = queue.stats().await.unwrap();
    assert_eq!((stats.messages, stats.waiting), (0, 0));
    tokio::time::sleep(Duration::from_secs(2 * 3600)).await;
    assert_eq!(relay.begun(), 1);
}
