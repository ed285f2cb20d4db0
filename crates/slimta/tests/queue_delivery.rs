//! The queue's delivery logic against a scripted relay, in paused tokio time.
//!
//! The relay here is a script (recipient, attempt) -> outcome, which is what
//! these tests are about: what the queue records, retries and when. Real
//! relays have their own tests.

use std::future::Future;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use slimta::queue::{
    AttemptOutcome, ExponentialBackoff, MemoryStorage, Queue, QueueStorage, StoredEnvelope, clock,
};
use slimta::{Delivery, Envelope, Handoff, Relay, RelayError, Reply};
use tokio::sync::watch;
use tokio::time::Instant;

type Script = dyn Fn(&str, u32) -> Result<Reply, RelayError> + Send + Sync;
type WholeScript = dyn Fn(u32) -> Option<RelayError> + Send + Sync;

#[derive(Clone, Debug)]
struct Call {
    recipients: Vec<String>,
    attempt: u32,
    at: Instant,
    message: Vec<u8>,
}

struct State {
    script: Box<Script>,
    whole: Mutex<Option<Box<WholeScript>>>,
    calls: Mutex<Vec<Call>>,
    bounces: Mutex<Vec<Envelope>>,
    fail_bounces: AtomicBool,
    count: watch::Sender<usize>,
    hold: Duration,
    active: AtomicUsize,
    max_active: AtomicUsize,
}

/// A relay whose per-recipient outcome is a function of (recipient, attempt).
#[derive(Clone)]
struct ScriptedRelay(Arc<State>);

impl ScriptedRelay {
    fn new(
        script: impl Fn(&str, u32) -> Result<Reply, RelayError> + Send + Sync + 'static,
    ) -> Self {
        Self::holding(Duration::ZERO, script)
    }

    /// A relay whose attempts each take `hold` (of paused time).
    fn holding(
        hold: Duration,
        script: impl Fn(&str, u32) -> Result<Reply, RelayError> + Send + Sync + 'static,
    ) -> Self {
        Self(Arc::new(State {
            script: Box::new(script),
            whole: Mutex::new(None),
            calls: Mutex::default(),
            bounces: Mutex::default(),
            fail_bounces: AtomicBool::new(false),
            count: watch::channel(0).0,
            hold,
            active: AtomicUsize::new(0),
            max_active: AtomicUsize::new(0),
        }))
    }

    /// The messages from `<>` (bounces) this relay was given; they are
    /// delivered unless `fail_bounces` is set, and not counted as calls.
    fn bounces(&self) -> Vec<Envelope> {
        self.0.bounces.lock().unwrap().clone()
    }

    fn calls(&self) -> Vec<Call> {
        self.0.calls.lock().unwrap().clone()
    }

    /// Waits (in paused time, so at no real cost) until `n` attempts were made.
    async fn wait_calls(&self, n: usize) -> Vec<Call> {
        let mut rx = self.0.count.subscribe();
        tokio::time::timeout(Duration::from_secs(30 * 86_400), rx.wait_for(|&c| c >= n))
            .await
            .unwrap_or_else(|_| panic!("only {} of {n} attempts happened", self.calls().len()))
            .unwrap();
        self.calls()
    }
}

impl Relay for ScriptedRelay {
    fn attempt(
        &self,
        envelope: &Envelope,
        attempt: u32,
    ) -> impl Future<Output = Result<Delivery, RelayError>> + Send {
        let state = self.0.clone();
        let envelope = envelope.clone();
        async move {
            if envelope.sender.is_empty() {
                state.bounces.lock().unwrap().push(envelope);
                if state.fail_bounces.load(Ordering::SeqCst) {
                    return Err(RelayError::permanent(Reply::new(
                        550,
                        "5.1.1",
                        "bounce refused",
                    )));
                }
                return Ok(Delivery::all(Reply::new(250, "2.0.0", "bounce delivered")));
            }
            let now = state.active.fetch_add(1, Ordering::SeqCst) + 1;
            state.max_active.fetch_max(now, Ordering::SeqCst);
            if !state.hold.is_zero() {
                tokio::time::sleep(state.hold).await;
            }
            state.active.fetch_sub(1, Ordering::SeqCst);
            state.calls.lock().unwrap().push(Call {
                recipients: envelope.recipients.clone(),
                attempt,
                at: Instant::now(),
                message: envelope.message.clone(),
            });
            state.count.send_modify(|c| *c += 1);
            if let Some(whole) = state.whole.lock().unwrap().as_ref()
                && let Some(e) = whole(attempt)
            {
                return Err(e);
            }
            let results = envelope
                .recipients
                .iter()
                .map(|r| (state.script)(r, attempt))
                .collect();
            Ok(Delivery::per_recipient(
                Reply::new(250, "2.0.0", "done"),
                results,
            ))
        }
    }
}

fn ok() -> Result<Reply, RelayError> {
    Ok(Reply::new(250, "2.0.0", "Ok"))
}

fn later() -> Result<Reply, RelayError> {
    Err(RelayError::transient(Reply::new(451, "4.4.1", "try later")))
}

fn never() -> Result<Reply, RelayError> {
    Err(RelayError::permanent(Reply::new(
        550,
        "5.1.1",
        "no such user",
    )))
}

fn envelope(recipients: &[&str]) -> Envelope {
    let mut e = Envelope::new(
        "sender@example.test",
        recipients.iter().map(|r| (*r).to_owned()).collect(),
        b"Subject: hi\r\n\r\nbody\r\n".to_vec(),
    );
    e.receive_time = clock::now();
    e
}

fn fixed_backoff(
    delay: Duration,
) -> impl Fn(&Envelope, u32) -> Option<Duration> + Send + Sync + 'static {
    move |_: &Envelope, _| Some(delay)
}

async fn queued_id<S: QueueStorage, R: Relay>(queue: &Queue<S, R>, env: Envelope) -> String {
    let results = queue.handoff(env).await;
    assert_eq!(results.len(), 1);
    results[0].result.clone().expect("stored")
}

/// Lets every ready task run without moving paused time much.
async fn settle() {
    for _ in 0..50 {
        tokio::task::yield_now().await;
    }
}

#[tokio::test(start_paused = true)]
async fn first_attempt_is_immediate_and_delivered_mail_is_removed() {
    let relay = ScriptedRelay::new(|_, _| ok());
    let storage = MemoryStorage::new();
    let queue = Queue::new(storage.clone(), relay.clone());
    queue.start().await.unwrap();
    let start = Instant::now();
    queued_id(&queue, envelope(&["a@x.test", "b@x.test"])).await;
    let calls = relay.wait_calls(1).await;
    assert_eq!(calls[0].at, start, "the first attempt waits for nothing");
    assert_eq!(calls[0].attempt, 1);
    assert_eq!(calls[0].recipients, ["a@x.test", "b@x.test"]);
    settle().await;
    assert!(storage.is_empty(), "a delivered message stays in storage");
    assert_eq!(queue.waiting(), 0);
}

#[tokio::test(start_paused = true)]
async fn transient_failure_is_retried_after_the_backoff_delay() {
    let relay = ScriptedRelay::new(|_, attempt| if attempt == 1 { later() } else { ok() });
    let storage = MemoryStorage::new();
    let queue = Queue::new(storage.clone(), relay.clone())
        .with_backoff(fixed_backoff(Duration::from_secs(600)));
    queue.start().await.unwrap();
    let id = queued_id(&queue, envelope(&["a@x.test"])).await;
    relay.wait_calls(1).await;
    settle().await;
    let meta = storage.get(&id).await.unwrap().meta;
    assert_eq!(meta.attempts, 1);
    assert!(meta.last_error.unwrap().contains("451"));
    let calls = relay.wait_calls(2).await;
    assert_eq!(calls[1].at - calls[0].at, Duration::from_secs(600));
    assert_eq!(calls[1].attempt, 2);
    settle().await;
    assert!(storage.is_empty());
}

#[tokio::test(start_paused = true)]
async fn permanent_failure_is_not_retried_and_bounces_to_the_sender() {
    let relay = ScriptedRelay::new(|_, _| never());
    let storage = MemoryStorage::new();
    let queue = Queue::new(storage.clone(), relay.clone())
        .with_backoff(fixed_backoff(Duration::from_secs(1)))
        .with_hostname("mx.example.test");
    queue.start().await.unwrap();
    queued_id(&queue, envelope(&["a@x.test"])).await;
    relay.wait_calls(1).await;
    tokio::time::sleep(Duration::from_secs(86_400)).await;
    assert_eq!(relay.calls().len(), 1);
    assert!(storage.is_empty());
    let bounces = relay.bounces();
    assert_eq!(bounces.len(), 1);
    assert_eq!(bounces[0].recipients, ["sender@example.test"]);
    let text = String::from_utf8(bounces[0].message.clone()).unwrap();
    assert!(
        text.contains("Reporting-MTA: dns; mx.example.test\r\n"),
        "{text}"
    );
    assert!(
        text.contains("Final-Recipient: rfc822; a@x.test\r\nAction: failed\r\nStatus: 5.1.1\r\n")
    );
    assert!(text.contains("Diagnostic-Code: smtp; 550 5.1.1 no such user\r\n"));
}

#[tokio::test(start_paused = true)]
async fn a_failed_bounce_is_not_bounced() {
    let relay = ScriptedRelay::new(|_, _| ok());
    relay.0.fail_bounces.store(true, Ordering::SeqCst);
    let storage = MemoryStorage::new();
    let queue = Queue::new(storage.clone(), relay.clone());
    queue.start().await.unwrap();
    let mut bounce = envelope(&["a@x.test"]);
    bounce.sender = String::new();
    queued_id(&queue, bounce).await;
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert!(storage.is_empty());
    // Only the null-sender message itself; no report about it was sent.
    assert_eq!(relay.bounces().len(), 1);
    assert!(relay.calls().is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_delivered_recipient_is_never_sent_again() {
    // A is delivered on attempt 1, B fails for now, C fails for good.
    let relay = ScriptedRelay::new(|rcpt, attempt| match (rcpt, attempt) {
        ("a@x.test", _) => ok(),
        ("b@x.test", 1 | 2) => later(),
        ("b@x.test", _) => ok(),
        _ => never(),
    });
    let storage = MemoryStorage::new();
    let queue = Queue::new(storage.clone(), relay.clone())
        .with_backoff(fixed_backoff(Duration::from_secs(60)));
    queue.start().await.unwrap();
    let id = queued_id(&queue, envelope(&["a@x.test", "b@x.test", "c@x.test"])).await;
    relay.wait_calls(1).await;
    settle().await;
    let stored = storage.get(&id).await.unwrap();
    assert_eq!(
        stored.meta.delivered,
        [0, 2],
        "A delivered and C bounced are both done"
    );
    assert_eq!(stored.pending_recipients(), [(1, "b@x.test")]);

    let calls = relay.wait_calls(3).await;
    assert_eq!(calls[0].recipients, ["a@x.test", "b@x.test", "c@x.test"]);
    assert_eq!(
        calls[1].recipients,
        ["b@x.test"],
        "the retry went to A or C again"
    );
    assert_eq!(calls[2].recipients, ["b@x.test"]);
    assert_eq!(
        calls.iter().map(|c| c.attempt).collect::<Vec<_>>(),
        [1, 2, 3]
    );
    settle().await;
    assert!(storage.is_empty());
    tokio::time::sleep(Duration::from_secs(3600)).await;
    assert_eq!(relay.calls().len(), 3);
    let bounces = relay.bounces();
    assert_eq!(bounces.len(), 1);
    let text = String::from_utf8_lossy(&bounces[0].message).into_owned();
    assert!(text.contains("Final-Recipient: rfc822; c@x.test\r\n"));
    assert!(
        !text.contains("Final-Recipient: rfc822; a@x.test")
            && !text.contains("Final-Recipient: rfc822; b@x.test")
    );
}

#[tokio::test(start_paused = true)]
async fn a_whole_attempt_error_applies_to_every_recipient() {
    let relay = ScriptedRelay::new(|_, _| ok());
    *relay.0.whole.lock().unwrap() = Some(Box::new(|attempt| {
        (attempt == 1)
            .then(|| RelayError::transient(Reply::new(421, "4.4.2", "connection dropped")))
    }));
    let storage = MemoryStorage::new();
    let queue = Queue::new(storage.clone(), relay.clone())
        .with_backoff(fixed_backoff(Duration::from_secs(5)));
    queue.start().await.unwrap();
    let id = queued_id(&queue, envelope(&["a@x.test", "b@x.test"])).await;
    relay.wait_calls(1).await;
    settle().await;
    assert_eq!(
        storage.get(&id).await.unwrap().pending_recipients().len(),
        2
    );
    let calls = relay.wait_calls(2).await;
    assert_eq!(calls[1].recipients, ["a@x.test", "b@x.test"]);
    settle().await;
    assert!(storage.is_empty());
}

#[tokio::test(start_paused = true)]
async fn concurrency_stays_within_the_limit() {
    let relay = ScriptedRelay::holding(Duration::from_secs(1), |_, _| ok());
    let storage = MemoryStorage::new();
    let queue = Queue::new(storage.clone(), relay.clone()).max_concurrency(3);
    queue.start().await.unwrap();
    for i in 0..20 {
        queued_id(&queue, envelope(&[&format!("r{i}@x.test")])).await;
    }
    relay.wait_calls(20).await;
    assert_eq!(relay.0.max_active.load(Ordering::SeqCst), 3);
    settle().await;
    assert!(storage.is_empty());
}

#[tokio::test(start_paused = true)]
async fn gives_up_at_max_age_and_not_before() {
    let relay = ScriptedRelay::new(|_, _| later());
    let storage = MemoryStorage::new();
    let backoff = ExponentialBackoff::default();
    let max_age = backoff.max_age;
    let queue = Queue::new(storage.clone(), relay.clone()).with_backoff(backoff);
    queue.start().await.unwrap();
    let start = Instant::now();
    queued_id(&queue, envelope(&["a@x.test"])).await;
    let mut seen = 0;
    while !storage.is_empty() {
        seen = relay.wait_calls(seen + 1).await.len();
        settle().await;
    }
    let calls = relay.calls();
    let gaps: Vec<u64> = calls
        .windows(2)
        .map(|w| (w[1].at - w[0].at).as_secs())
        .collect();
    assert_eq!(gaps[..6], [300, 600, 1200, 2400, 3600, 3600]);
    let last = calls.last().unwrap().at - start;
    // The last attempt is at max_age (the anchor of the queue clock may sit
    // a few real milliseconds before the envelope's receive time).
    assert!(
        last <= max_age && last + Duration::from_secs(1) >= max_age,
        "{last:?}"
    );
    tokio::time::sleep(Duration::from_secs(86_400)).await;
    assert_eq!(relay.calls().len(), calls.len(), "retried after giving up");
    let bounces = relay.bounces();
    assert_eq!(bounces.len(), 1);
    let text = String::from_utf8_lossy(&bounces[0].message).into_owned();
    assert!(
        text.contains("Status: 5.4.1\r\nDiagnostic-Code: smtp; 554 5.4.1 try later (gave up after"),
        "{text}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_new_queue_over_the_same_storage_delivers_what_was_pending() {
    let storage = MemoryStorage::new();
    let first = ScriptedRelay::new(|rcpt, _| if rcpt == "a@x.test" { ok() } else { later() });
    let queue = Queue::new(storage.clone(), first.clone())
        .with_backoff(fixed_backoff(Duration::from_secs(3600)));
    queue.start().await.unwrap();
    let id = queued_id(&queue, envelope(&["a@x.test", "b@x.test"])).await;
    first.wait_calls(1).await;
    settle().await;
    queue.stop();
    drop(queue);
    assert_eq!(storage.get(&id).await.unwrap().meta.attempts, 1);

    let second = ScriptedRelay::new(|_, _| ok());
    let restarted = Queue::new(storage.clone(), second.clone());
    let start = Instant::now();
    restarted.start().await.unwrap();
    let calls = second.wait_calls(1).await;
    assert_eq!(calls[0].recipients, ["b@x.test"]);
    assert_eq!(calls[0].attempt, 2);
    // Attempted at the stored due time (an hour after the first attempt),
    // not at start-up.
    let waited = calls[0].at - start;
    assert!(
        waited > Duration::from_secs(3599) && waited <= Duration::from_secs(3600),
        "{waited:?}"
    );
    settle().await;
    assert!(storage.is_empty());
    assert_eq!(first.calls().len(), 1, "the stopped queue kept attempting");
}

#[tokio::test(start_paused = true)]
async fn handoff_before_start_is_attempted_once() {
    let relay = ScriptedRelay::holding(Duration::from_secs(1), |_, _| ok());
    let storage = MemoryStorage::new();
    let queue = Queue::new(storage.clone(), relay.clone());
    queued_id(&queue, envelope(&["a@x.test"])).await;
    // start() loads the message handed off above; it must not be scheduled twice.
    queue.start().await.unwrap();
    queue.start().await.unwrap();
    relay.wait_calls(1).await;
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(relay.calls().len(), 1);
    assert!(storage.is_empty());
}

#[tokio::test(start_paused = true)]
async fn policies_split_before_storage_and_relay_policies_change_only_the_copy() {
    let relay = ScriptedRelay::new(|_, attempt| if attempt == 1 { later() } else { ok() });
    let storage = MemoryStorage::new();
    let split = |e: Envelope| -> Result<Vec<Envelope>, Reply> {
        Ok(e.recipients
            .iter()
            .map(|r| e.with_recipients(vec![r.clone()]))
            .collect())
    };
    let refuse_spam = |e: Envelope| -> Result<Vec<Envelope>, Reply> {
        if e.recipients.iter().any(|r| r.starts_with("spam")) {
            Err(Reply::new(550, "5.7.1", "refused"))
        } else {
            Ok(vec![e])
        }
    };
    let stamp = |e: &mut Envelope| -> Result<(), RelayError> {
        e.prepend_header("X-Attempt", "yes");
        Ok(())
    };
    let queue = Queue::new(storage.clone(), relay.clone())
        .with_backoff(fixed_backoff(Duration::from_secs(1)))
        .add_policy(split)
        .add_policy(refuse_spam)
        .add_relay_policy(stamp);
    let results = queue.handoff(envelope(&["a@x.test", "spam@x.test"])).await;
    assert_eq!(results.len(), 2);
    assert_eq!(results[0].recipients, ["a@x.test"]);
    let id = results[0].result.clone().unwrap();
    assert_eq!(results[1].recipients, ["spam@x.test"]);
    assert_eq!(results[1].result, Err(Reply::new(550, "5.7.1", "refused")));
    assert_eq!(storage.len(), 1);

    queue.start().await.unwrap();
    let calls = relay.wait_calls(1).await;
    settle().await;
    assert!(calls[0].message.starts_with(b"X-Attempt: yes\r\nSubject"));
    let stored = storage.get(&id).await.unwrap();
    assert!(
        stored.envelope.message.starts_with(b"Subject"),
        "a relay policy change was stored"
    );
    let calls = relay.wait_calls(2).await;
    assert!(
        calls[1].message.starts_with(b"X-Attempt: yes\r\nSubject"),
        "applied twice or not at all"
    );
}

#[tokio::test(start_paused = true)]
async fn a_relay_policy_error_fails_the_attempt() {
    let relay = ScriptedRelay::new(|_, _| ok());
    let storage = MemoryStorage::new();
    let queue = Queue::new(storage.clone(), relay.clone()).add_relay_policy(|_: &mut Envelope| {
        Err(RelayError::permanent(Reply::new(
            554,
            "5.7.0",
            "signing refused",
        )))
    });
    queue.start().await.unwrap();
    queued_id(&queue, envelope(&["a@x.test"])).await;
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert!(
        relay.calls().is_empty(),
        "the relay was called despite the policy error"
    );
    assert!(storage.is_empty(), "a permanent policy error bounces");
}

/// Storage whose writes (or removals) can be made to fail.
#[derive(Clone, Default)]
struct FailingStorage {
    inner: MemoryStorage,
    fail: Arc<AtomicBool>,
    fail_remove: Arc<AtomicBool>,
    /// `fail` fails as a server that refuses connections would.
    fail_unreachable: Arc<AtomicBool>,
    /// The storage methods called, in order (not `load`).
    log: Arc<Mutex<Vec<&'static str>>>,
}

impl FailingStorage {
    fn note(&self, call: &'static str) {
        self.log.lock().unwrap().push(call);
    }

    fn log(&self) -> Vec<&'static str> {
        self.log.lock().unwrap().clone()
    }
}

impl QueueStorage for FailingStorage {
    async fn write(&self, envelope: &Envelope, timestamp: SystemTime) -> io::Result<String> {
        self.note("write");
        if self.fail.load(Ordering::SeqCst) {
            if self.fail_unreachable.load(Ordering::SeqCst) {
                return Err(io::Error::new(
                    io::ErrorKind::ConnectionRefused,
                    "storage server down",
                ));
            }
            return Err(io::Error::other("disk on fire"));
        }
        self.inner.write(envelope, timestamp).await
    }
    async fn set_timestamp(&self, id: &str, timestamp: SystemTime) -> io::Result<()> {
        self.note("set_timestamp");
        self.inner.set_timestamp(id, timestamp).await
    }
    async fn record(&self, id: &str, outcome: &AttemptOutcome) -> io::Result<()> {
        self.note("record");
        self.inner.record(id, outcome).await
    }
    async fn load(&self) -> io::Result<Vec<(String, SystemTime)>> {
        self.inner.load().await
    }
    async fn get(&self, id: &str) -> io::Result<StoredEnvelope> {
        self.note("get");
        self.inner.get(id).await
    }
    async fn remove(&self, id: &str) -> io::Result<()> {
        self.note("remove");
        if self.fail_remove.load(Ordering::SeqCst) {
            return Err(io::Error::other("unlink failed"));
        }
        self.inner.remove(id).await
    }
}

/// A fully successful first attempt: the queue does not read back what it
/// has just written (the hand-off kept the envelope), removes the message
/// and records nothing before (the removal is durable, see
/// `QueueStorage::remove`).
#[tokio::test(start_paused = true)]
async fn a_fully_delivered_message_is_removed_without_a_delivered_record() {
    let relay = ScriptedRelay::new(|_, _| ok());
    let storage = FailingStorage::default();
    let queue = Queue::new(storage.clone(), relay.clone());
    queue.start().await.unwrap();
    queued_id(&queue, envelope(&["a@x.test", "b@x.test"])).await;
    relay.wait_calls(1).await;
    settle().await;
    assert_eq!(storage.log(), ["write", "remove"]);
    assert!(storage.inner.is_empty());
}

/// Only the first attempt uses the envelope kept at hand-off; a retry reads
/// storage (which has the recipients recorded since).
#[tokio::test(start_paused = true)]
async fn later_attempts_read_the_message_from_storage() {
    let relay = ScriptedRelay::new(|r, attempt| {
        if r.starts_with('b') && attempt == 1 {
            later()
        } else {
            ok()
        }
    });
    let storage = FailingStorage::default();
    let queue = Queue::new(storage.clone(), relay.clone())
        .with_backoff(fixed_backoff(Duration::from_secs(60)));
    queue.start().await.unwrap();
    queued_id(&queue, envelope(&["a@x.test", "b@x.test"])).await;
    let calls = relay.wait_calls(2).await;
    settle().await;
    assert_eq!(calls[1].recipients, ["b@x.test"]);
    assert_eq!(storage.log(), ["write", "record", "get", "remove"]);
}

/// The envelopes kept for first attempts are bounded: past
/// `FIRST_ATTEMPT_CACHE_BYTES` a first attempt reads storage.
#[tokio::test(start_paused = true)]
async fn the_first_attempt_cache_is_bounded() {
    let relay = ScriptedRelay::new(|_, _| ok());
    let storage = FailingStorage::default();
    let queue = Queue::new(storage.clone(), relay.clone());
    // Handed off before start: all three wait for their first attempt.
    let size = slimta::queue::FIRST_ATTEMPT_CACHE_BYTES / 3 + 1;
    for i in 0..3 {
        let mut e = envelope(&[&format!("r{i}@x.test")]);
        e.message = vec![b'x'; size];
        queued_id(&queue, e).await;
    }
    queue.start().await.unwrap();
    relay.wait_calls(3).await;
    settle().await;
    let log = storage.log();
    assert_eq!(log.iter().filter(|&&c| c == "get").count(), 1, "{log:?}");
    assert!(storage.inner.is_empty());
}

/// An operator's delete before the first attempt: the message is not
/// delivered (its schedule entry goes, and the envelope kept for its first
/// attempt is dropped with it).
#[tokio::test(start_paused = true)]
async fn a_message_deleted_before_its_first_attempt_is_not_delivered() {
    let relay = ScriptedRelay::new(|_, _| ok());
    let storage = FailingStorage::default();
    let queue = Queue::new(storage.clone(), relay.clone());
    let id = queued_id(&queue, envelope(&["a@x.test"])).await;
    queue.delete(&id).await.unwrap();
    queue.start().await.unwrap();
    tokio::time::sleep(Duration::from_secs(3600)).await;
    settle().await;
    assert!(relay.calls().is_empty());
}

/// After a fully successful attempt the queue removes the message without
/// recording the delivered recipients first (the durable removal is the
/// record). If that removal fails, it falls back to the record, so the
/// retry removes the message instead of delivering it again.
#[tokio::test(start_paused = true)]
async fn a_failed_removal_after_delivery_does_not_deliver_again() {
    let relay = ScriptedRelay::new(|_, _| ok());
    let storage = FailingStorage::default();
    storage.fail_remove.store(true, Ordering::SeqCst);
    let queue = Queue::new(storage.clone(), relay.clone());
    queue.start().await.unwrap();
    let id = queued_id(&queue, envelope(&["a@x.test", "b@x.test"])).await;
    relay.wait_calls(1).await;
    settle().await;
    let stored = storage.get(&id).await.unwrap();
    assert_eq!(stored.meta.delivered, [0, 1], "the fallback record");
    storage.fail_remove.store(false, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(3600)).await;
    settle().await;
    assert_eq!(relay.calls().len(), 1, "delivered again");
    assert!(storage.inner.is_empty(), "not removed on the retry");
}

#[tokio::test(start_paused = true)]
async fn a_storage_failure_is_a_452_and_nothing_is_attempted() {
    let relay = ScriptedRelay::new(|_, _| ok());
    let storage = FailingStorage::default();
    storage.fail.store(true, Ordering::SeqCst);
    let queue = Queue::new(storage.clone(), relay.clone());
    queue.start().await.unwrap();
    let results = queue.handoff(envelope(&["a@x.test"])).await;
    assert_eq!(
        results[0].result,
        Err(Reply::new(452, "4.3.1", "Insufficient system storage"))
    );
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert!(relay.calls().is_empty());
}

/// A storage server that cannot be reached is not a full store: 451 4.3.0.
#[tokio::test(start_paused = true)]
async fn an_unreachable_storage_is_a_451() {
    let relay = ScriptedRelay::new(|_, _| ok());
    let storage = FailingStorage::default();
    storage.fail.store(true, Ordering::SeqCst);
    storage.fail_unreachable.store(true, Ordering::SeqCst);
    let queue = Queue::new(storage.clone(), relay.clone());
    queue.start().await.unwrap();
    let results = queue.handoff(envelope(&["a@x.test"])).await;
    assert_eq!(
        results[0].result,
        Err(Reply::new(
            451,
            "4.3.0",
            "Queue storage unavailable, try again later"
        ))
    );
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert!(relay.calls().is_empty());
}

#[tokio::test(start_paused = true)]
async fn backends_and_relays_chosen_at_run_time_work_too() {
    use slimta::DynRelay;
    use slimta::queue::DynStorage;

    fn assert_shareable<T: Handoff + Clone + Send + Sync + 'static>(_: &T) {}

    let relay = ScriptedRelay::new(|_, _| ok());
    let storage: Box<dyn DynStorage> = Box::new(MemoryStorage::new());
    let boxed_relay: Box<dyn DynRelay> = Box::new(relay.clone());
    let queue = Queue::new(storage, boxed_relay);
    assert_shareable(&queue);
    queue.start().await.unwrap();
    queued_id(&queue, envelope(&["a@x.test"])).await;
    relay.wait_calls(1).await;
    settle().await;
    assert!(queue.storage().load().await.unwrap().is_empty());
}

#[tokio::test(start_paused = true)]
async fn thousands_of_deferred_messages_wait_without_attempts() {
    const MESSAGES: usize = 5000;
    let relay = ScriptedRelay::new(|_, attempt| if attempt == 1 { later() } else { ok() });
    let storage = MemoryStorage::new();
    let queue = Queue::new(storage.clone(), relay.clone())
        .with_backoff(fixed_backoff(Duration::from_secs(3600)));
    queue.start().await.unwrap();
    for i in 0..MESSAGES {
        queued_id(&queue, envelope(&[&format!("r{i}@x.test")])).await;
    }
    relay.wait_calls(MESSAGES).await;
    settle().await;
    let first_round = Instant::now();
    tokio::time::sleep(Duration::from_secs(3599)).await;
    assert_eq!(
        relay.calls().len(),
        MESSAGES,
        "a deferred message was attempted early"
    );
    assert_eq!(queue.waiting(), MESSAGES);
    let calls = relay.wait_calls(2 * MESSAGES).await;
    assert!(
        calls[MESSAGES..]
            .iter()
            .all(|c| c.at - first_round <= Duration::from_secs(3600))
    );
    settle().await;
    assert!(storage.is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_panicking_relay_does_not_strand_the_message() {
    let panicked = Arc::new(AtomicBool::new(false));
    let relay = ScriptedRelay::new({
        let panicked = panicked.clone();
        move |_, _| {
            if !panicked.swap(true, Ordering::SeqCst) {
                panic!("relay bug (expected by this test)");
            }
            ok()
        }
    });
    let storage = MemoryStorage::new();
    let queue = Queue::new(storage.clone(), relay.clone());
    queue.start().await.unwrap();
    queued_id(&queue, envelope(&["a@x.test"])).await;
    // The first call panics inside the relay; the message is tried again a
    // minute later instead of waiting for a restart.
    let calls = relay.wait_calls(2).await;
    assert!(panicked.load(Ordering::SeqCst));
    assert_eq!(calls[1].at - calls[0].at, Duration::from_secs(60));
    assert_eq!(calls[1].recipients, ["a@x.test"]);
    settle().await;
    assert!(storage.is_empty());
}
