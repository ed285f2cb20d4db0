//! The queue: takes responsibility for envelopes and sees them delivered.
//!
//! A [`Queue`] sits between an edge and a relay. [`Handoff::handoff`] runs
//! the queue policies, writes every resulting envelope to a
//! [`QueueStorage`] (durably, before it returns, so the edge's `250` is a
//! promise) and schedules an immediate delivery attempt. Attempts go to the
//! [`Relay`]; per recipient, the outcome is recorded (delivered), retried
//! later (transient failure, with a [`Backoff`]) or bounced (permanent
//! failure, or the backoff gave up).
//!
//! Files by concern: [`backoff`] (retry delays), [`dispatch`] (the
//! contract of who attempts what next), `schedule` ([`LocalDispatch`], the
//! default in-process due-time index), `attempt` (one delivery attempt and what is recorded after it),
//! [`clock`] (the time base), [`storage`] (the storage contract),
//! [`memory`] (in-memory storage), [`disk`] (the durable spool), `ops`
//! (operator commands and statistics: list, show, retry now, delete).
//!
//! Design decisions:
//! - Exactly-once per recipient as far as storage allows: an attempt sends
//!   only the recipients not yet recorded as done, and records the delivered
//!   ones before anything else. A recipient that was delivered is never sent
//!   again, even when another recipient of the same message is retried
//!   (python-slimta re-sent to everyone).
//! - No polling: one scheduler task waits for the dispatcher's next due
//!   message ([`LocalDispatch`] sleeps until the earliest due time);
//!   attempts run as tasks, at most `max_concurrency` at once.
//! - Fair between destinations: the relay names each recipient's
//!   [`Destination`]; an envelope for several is stored as one message per
//!   destination (python-slimta's `RecipientDomainSplit`, on by default:
//!   [`Queue::split_by_destination`]), and the dispatcher hands out due
//!   messages round robin between destinations, each limited to its own
//!   attempts in flight, with slow start and dead marking
//!   (`queue/destinations.rs`). A tarpitting destination holds at most its
//!   own slots, never every attempt slot, and a dead one is not connected
//!   to until its probe.
//! - A message is attempted by at most one task at a time; the dispatcher
//!   refuses a second entry for an id it already knows.
//! - Storage is the truth of *what* is queued; the dispatcher only says
//!   *who attempts what next*, and hears of an attempt's end after its
//!   outcome is recorded. Every
//!   attempt but the first starts by reading the message back from storage,
//!   so a restart (a new `Queue` over the same storage, then
//!   [`Queue::start`]) continues exactly where the old one stopped.
//! - The first attempt does not read back what the hand-off has just
//!   written: the hand-off keeps the envelope (an `Arc`, shared with the
//!   storage write, no copy) in a cache keyed by id, and the first attempt
//!   takes it out with the metadata a fresh write has (no attempt, nothing
//!   delivered). Nothing but that attempt changes a message's storage
//!   record before it, except an operator's delete, which also drops the
//!   cache entry. Later attempts (after a backoff, a restart, a panic) and
//!   messages loaded at start read storage as before. The cache holds at
//!   most [`FIRST_ATTEMPT_CACHE_BYTES`] of messages (or one message of any
//!   size when it is empty), so a backlog behind a slow relay is not kept in
//!   memory; a message that does not fit is read from storage.
//! - New envelopes are handed to storage as an `Arc`
//!   ([`QueueStorage::write_shared`]), and the relay gets the stored
//!   envelope itself when the attempt is for every recipient and no relay
//!   policy is configured: a big message is then held once, not copied per
//!   attempt. With relay policies or for a subset of recipients the relay
//!   gets a copy, as the policies must not change what storage holds.
//! - The configuration setters may be called at any time (they take effect
//!   on the next handoff or attempt), except `max_concurrency`, which is
//!   read by [`Queue::start`].
//! - Bounces ([`crate::bounce`]) are queued like any message but skip the
//!   queue policies (they are the MTA's own mail, and a policy that refuses
//!   them would lose the report).

mod attempt;
pub mod backoff;
pub mod clock;
pub mod codec;
mod compact_id;
mod destinations;
pub mod disk;
pub mod dispatch;
pub mod memory;
mod ops;
mod schedule;
pub mod storage;

use std::collections::HashMap;
use std::io;
use std::sync::{Arc, Mutex, OnceLock, PoisonError, RwLock};
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio::task::AbortHandle;

use crate::envelope::Envelope;
use crate::handoff::{Handoff, HandoffResult};
use crate::policy::{DynQueuePolicy, DynRelayPolicy, QueuePolicy, RelayPolicy};
use crate::relay::{Destination, Relay};
use crate::reply::Reply;

pub use backoff::{Backoff, ExponentialBackoff};
pub use disk::{DiskOptions, DiskStorage};
pub use memory::MemoryStorage;
pub use ops::QueueStats;
pub use storage::{
    AttemptOutcome, DynStorage, LoadBatch, QueueEntry, QueueMeta, QueueStorage, StorageCounters,
    StorageSummary, StoredEnvelope,
};

pub use destinations::{DeadDestination, DestinationSettings};
pub use dispatch::{Admission, AttemptEnd, Contact, Dispatch, DynDispatch, Lease, Placement};
pub use schedule::LocalDispatch;

/// The default limit on concurrent delivery attempts.
pub const DEFAULT_MAX_CONCURRENCY: usize = 100;

/// How many message bytes the queue keeps in memory for first attempts
/// (see the module docs); a lone message of any size is kept too.
pub const FIRST_ATTEMPT_CACHE_BYTES: usize = 64 << 20;

/// Envelopes just stored, waiting for their first attempt.
#[derive(Default)]
struct FirstAttempts {
    envelopes: HashMap<String, Arc<Envelope>>,
    bytes: usize,
}

struct Config {
    backoff: Arc<dyn Backoff>,
    max_concurrency: usize,
    policies: Arc<Vec<Arc<dyn DynQueuePolicy>>>,
    relay_policies: Arc<Vec<Arc<dyn DynRelayPolicy>>>,
    hostname: Arc<str>,
    bounce_headers_only: bool,
    postmaster: Option<Arc<str>>,
    delay_warning: Option<Duration>,
    stats_interval: Option<Duration>,
    split_by_destination: bool,
}

struct Inner<S, R, D> {
    storage: S,
    relay: R,
    dispatch: D,
    config: RwLock<Config>,
    started: OnceLock<()>,
    scheduler: Mutex<Vec<AbortHandle>>,
    /// The attempt permits and how many there are, once started: all of
    /// them free means no attempt is running ([`Queue::shutdown`]).
    permits: OnceLock<(Arc<Semaphore>, usize)>,
    first_attempts: Mutex<FirstAttempts>,
}

/// A durable mail queue over storage `S`, delivering through relay `R`,
/// attempting what dispatcher `D` hands out (by default the in-process
/// [`LocalDispatch`]).
///
/// Cheap to clone: clones share one queue.
pub struct Queue<S, R, D = LocalDispatch> {
    inner: Arc<Inner<S, R, D>>,
}

impl<S, R, D> Clone for Queue<S, R, D> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

impl<S: QueueStorage, R: Relay> Queue<S, R> {
    /// A queue with the default [`ExponentialBackoff`], no policies, at
    /// most [`DEFAULT_MAX_CONCURRENCY`] concurrent attempts and the
    /// in-process [`LocalDispatch`]. It accepts handoffs at once but
    /// attempts nothing until [`Queue::start`].
    pub fn new(storage: S, relay: R) -> Self {
        Self::with_dispatch(storage, relay, LocalDispatch::default())
    }
}

impl<S: QueueStorage, R: Relay, D: Dispatch> Queue<S, R, D> {
    /// Like [`Queue::new`], with `dispatch` deciding which stored message is
    /// attempted next (see [`dispatch`]).
    pub fn with_dispatch(storage: S, relay: R, dispatch: D) -> Self {
        Self {
            inner: Arc::new(Inner {
                storage,
                relay,
                dispatch,
                config: RwLock::new(Config {
                    backoff: Arc::new(ExponentialBackoff::default()),
                    max_concurrency: DEFAULT_MAX_CONCURRENCY,
                    policies: Arc::default(),
                    relay_policies: Arc::default(),
                    hostname: gethostname::gethostname().to_string_lossy().into(),
                    bounce_headers_only: false,
                    postmaster: None,
                    delay_warning: None,
                    stats_interval: None,
                    split_by_destination: true,
                }),
                started: OnceLock::new(),
                scheduler: Mutex::new(Vec::new()),
                permits: OnceLock::new(),
                first_attempts: Mutex::default(),
            }),
        }
    }

    fn configure(&self, f: impl FnOnce(&mut Config)) {
        f(&mut self
            .inner
            .config
            .write()
            .unwrap_or_else(PoisonError::into_inner));
    }

    fn config<T>(&self, f: impl FnOnce(&Config) -> T) -> T {
        f(&self
            .inner
            .config
            .read()
            .unwrap_or_else(PoisonError::into_inner))
    }

    /// Replaces the retry policy.
    #[must_use]
    pub fn with_backoff(self, backoff: impl Backoff) -> Self {
        self.configure(|c| c.backoff = Arc::new(backoff));
        self
    }

    /// Limits concurrent delivery attempts (at least 1). Read by
    /// [`Queue::start`].
    #[must_use]
    pub fn max_concurrency(self, limit: usize) -> Self {
        self.configure(|c| c.max_concurrency = limit.max(1));
        self
    }

    /// The host name bounces give as their `Reporting-MTA` and sender
    /// domain. Default: the system's host name.
    #[must_use]
    pub fn with_hostname(self, hostname: impl Into<String>) -> Self {
        let hostname: String = hostname.into();
        self.configure(|c| c.hostname = hostname.into());
        self
    }

    /// Bounces return only the original header section instead of the
    /// whole message (see [`crate::bounce`]). Default: the whole message.
    #[must_use]
    pub fn bounce_headers_only(self, headers_only: bool) -> Self {
        self.configure(|c| c.bounce_headers_only = headers_only);
        self
    }

    /// Where a notice goes when a message from `<>` (a bounce) fails for
    /// good. Without a postmaster such a failure is logged and dropped. A
    /// failed notice to the postmaster is never reported again.
    #[must_use]
    pub fn postmaster(self, address: Option<String>) -> Self {
        self.configure(|c| c.postmaster = address.map(Into::into));
        self
    }

    /// Sends one delay warning (RFC 3464 `Action: delayed`) to the sender
    /// of a message still undelivered this long after it was received, at
    /// the first failed attempt past that age. `None` (the default): never.
    #[must_use]
    pub fn delay_warning(self, after: Option<Duration>) -> Self {
        self.configure(|c| c.delay_warning = after);
        self
    }

    /// Logs the queue's size and the age of its oldest message every
    /// `interval` ("queue stats"). `None` (the default): never. Read by
    /// [`Queue::start`].
    #[must_use]
    pub fn stats_interval(self, interval: Option<Duration>) -> Self {
        self.configure(|c| c.stats_interval = interval.filter(|d| !d.is_zero()));
        self
    }

    /// Whether an envelope whose recipients go to several destinations
    /// ([`Relay::destination`]) is stored as one message per destination
    /// (the default), so the dispatcher can schedule each part with its
    /// destination's limits. Off: stored whole, and attempted under the
    /// destination of its first pending recipient.
    #[must_use]
    pub fn split_by_destination(self, split: bool) -> Self {
        self.configure(|c| c.split_by_destination = split);
        self
    }

    /// Adds a policy that runs, in the order added, on every envelope before
    /// it is stored.
    #[must_use]
    pub fn add_policy(self, policy: impl QueuePolicy) -> Self {
        self.configure(|c| Arc::make_mut(&mut c.policies).push(Arc::new(policy)));
        self
    }

    /// Adds a policy that runs, in the order added, on a copy of the
    /// envelope before every delivery attempt.
    #[must_use]
    pub fn add_relay_policy(self, policy: impl RelayPolicy) -> Self {
        self.configure(|c| Arc::make_mut(&mut c.relay_policies).push(Arc::new(policy)));
        self
    }

    /// The storage backend.
    pub fn storage(&self) -> &S {
        &self.inner.storage
    }

    /// How many messages wait for a delivery attempt (not counting attempts
    /// in progress).
    pub fn waiting(&self) -> usize {
        self.inner.dispatch.waiting()
    }

    /// The dispatcher.
    pub fn dispatch(&self) -> &D {
        &self.inner.dispatch
    }

    /// Starts the scheduler task, and a loading task that schedules every
    /// stored message at its stored due time as storage finds it
    /// ([`QueueStorage::load_into`]): `start` returns at once, so a queue
    /// over a big spool accepts mail while its backlog is still being
    /// loaded, and due messages are attempted batch by batch as they turn
    /// up. Must run inside a tokio runtime. A second call does nothing.
    ///
    /// # Errors
    ///
    /// None so far (the result is kept for storages that may refuse to
    /// start): a storage that cannot list its messages is logged by the
    /// loading task, and what it did not hand over stays stored for the
    /// next start.
    pub async fn start(&self) -> io::Result<()> {
        if self.inner.started.set(()).is_err() {
            return Ok(());
        }
        let (limit, stats_interval) = self.config(|c| (c.max_concurrency, c.stats_interval));
        let permits = Arc::new(Semaphore::new(limit));
        // Set once: `started` above admits one caller.
        let _ = self.inner.permits.set((permits.clone(), limit));
        let queue = self.clone();
        let loader = tokio::spawn(async move { queue.load_stored().await });
        let queue = self.clone();
        let task = tokio::spawn(async move { queue.run_scheduler(permits).await });
        let mut tasks = vec![loader.abort_handle(), task.abort_handle()];
        if let Some(interval) = stats_interval {
            tasks.push(tokio::spawn(self.clone().log_stats(interval)).abort_handle());
        }
        *self
            .inner
            .scheduler
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = tasks;
        tracing::info!(max_concurrency = limit, "queue started");
        Ok(())
    }

    /// Hands every stored message to the dispatcher, batch by batch as
    /// storage finds them (the loading task of [`Queue::start`]).
    async fn load_stored(self) {
        let (batches, mut found) = tokio::sync::mpsc::unbounded_channel();
        let listed = self.inner.storage.load_into(batches);
        let scheduled = async {
            let mut count = 0usize;
            while let Some(batch) = found.recv().await {
                count += batch.len();
                for (id, due) in batch {
                    // The destination is learnt when the message is first due.
                    self.inner.dispatch.add(id, due, None).await;
                }
            }
            count
        };
        match tokio::join!(listed, scheduled) {
            (Ok(_), count) => tracing::info!(loaded = count, "queue loaded"),
            (Err(e), count) => {
                tracing::error!(error = %e, loaded = count, "queue storage could not list its messages; the rest stay stored until the next start");
            }
        }
    }

    /// Stops the scheduler: no new attempts start. Attempts in progress run
    /// to completion; stored messages stay stored. A stopped queue is not
    /// started again; a new `Queue` over the same storage takes over.
    pub fn stop(&self) {
        let tasks = std::mem::take(
            &mut *self
                .inner
                .scheduler
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        );
        for task in tasks {
            task.abort();
        }
    }

    /// Stops the scheduler ([`Queue::stop`]), then waits up to `grace` for
    /// the attempts in progress to finish and record their outcome, so that
    /// a message delivered just before a shutdown is not delivered again
    /// after the restart. Returns how many attempts were still running at
    /// the deadline (their messages stay stored and are attempted again by
    /// the next queue over the same storage).
    pub async fn shutdown(&self, grace: Duration) -> usize {
        self.stop();
        let Some((permits, limit)) = self.inner.permits.get() else {
            return 0;
        };
        let all = u32::try_from(*limit).unwrap_or(u32::MAX);
        match tokio::time::timeout(grace, permits.acquire_many(all)).await {
            Ok(_) => 0,
            Err(_) => limit.saturating_sub(permits.available_permits()),
        }
    }

    async fn run_scheduler(self, permits: Arc<Semaphore>) {
        loop {
            let Ok(permit) = permits.clone().acquire_owned().await else {
                return;
            };
            let lease = self.inner.dispatch.next_due().await;
            let queue = self.clone();
            tokio::spawn(async move {
                queue.attempt(lease).await;
                drop(permit);
            });
        }
    }

    /// Runs the queue policies over `envelope`, in order, on every part the
    /// previous policy produced.
    async fn apply_policies(
        &self,
        envelope: Envelope,
    ) -> Vec<Result<Envelope, (Vec<String>, Reply)>> {
        let policies = self.config(|c| c.policies.clone());
        let mut parts = vec![Ok(envelope)];
        for policy in policies.iter() {
            let mut next = Vec::with_capacity(parts.len());
            for part in parts {
                match part {
                    Ok(envelope) => {
                        let recipients = envelope.recipients.clone();
                        match policy.apply_boxed(envelope).await {
                            Ok(split) => next.extend(split.into_iter().map(Ok)),
                            Err(reply) => next.push(Err((recipients, reply))),
                        }
                    }
                    refused => next.push(refused),
                }
            }
            parts = next;
        }
        if self.config(|c| c.split_by_destination) {
            parts = parts
                .into_iter()
                .flat_map(|part| match part {
                    Ok(envelope) => self.split(envelope).into_iter().map(Ok).collect(),
                    refused => vec![refused],
                })
                .collect();
        }
        parts
    }

    /// One envelope per destination of `envelope`'s recipients, each with
    /// its recipients in their original order (the envelope itself when
    /// they all go to one).
    fn split(&self, envelope: Envelope) -> Vec<Envelope> {
        // The usual case, one destination, copies nothing.
        let relay = &self.inner.relay;
        let mut destinations = envelope.recipients.iter().map(|r| relay.destination(r));
        if let Some(first) = destinations.next()
            && destinations.all(|d| d == first)
        {
            return vec![envelope];
        }
        let mut groups: Vec<(Destination, Vec<String>)> = Vec::new();
        for recipient in &envelope.recipients {
            let destination = self.inner.relay.destination(recipient);
            match groups.iter_mut().find(|(d, _)| *d == destination) {
                Some((_, recipients)) => recipients.push(recipient.clone()),
                None => groups.push((destination, vec![recipient.clone()])),
            }
        }
        if groups.len() <= 1 {
            return vec![envelope];
        }
        groups
            .into_iter()
            .map(|(_, recipients)| envelope.with_recipients(recipients))
            .collect()
    }

    /// The destination a stored envelope is scheduled under: its first
    /// recipient's.
    pub(crate) fn destination_of(&self, envelope: &Envelope) -> Option<Destination> {
        envelope
            .recipients
            .first()
            .map(|r| self.inner.relay.destination(r))
    }

    fn first_attempts(&self) -> std::sync::MutexGuard<'_, FirstAttempts> {
        self.inner
            .first_attempts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Keeps a just-stored envelope for its first attempt, if it fits.
    fn keep_for_first_attempt(&self, id: &str, envelope: &Arc<Envelope>) {
        let size = envelope.message.len();
        let mut cache = self.first_attempts();
        if cache.envelopes.is_empty() || cache.bytes + size <= FIRST_ATTEMPT_CACHE_BYTES {
            cache.bytes += size;
            cache.envelopes.insert(id.to_owned(), envelope.clone());
        }
    }

    /// Takes the envelope kept for the first attempt of `id`, if any.
    fn take_first_attempt(&self, id: &str) -> Option<Arc<Envelope>> {
        let mut cache = self.first_attempts();
        let envelope = cache.envelopes.remove(id)?;
        cache.bytes -= envelope.message.len();
        Some(envelope)
    }

    /// Stores one envelope and schedules its first attempt now.
    ///
    /// Decision (the edge relies on it): a storage failure is a temporary
    /// refusal, so the client keeps the message and retries. A storage
    /// server that cannot be reached (refused, reset, timed out: see
    /// `storage_failure_reply`) is `451 4.3.0`; anything else, a full disk
    /// first, is `452 4.3.1`.
    async fn store(&self, envelope: Arc<Envelope>) -> Result<String, Reply> {
        let now = clock::now();
        match self.inner.storage.write_shared(envelope.clone(), now).await {
            Ok(id) => {
                // Before the schedule entry: the attempt may start at once.
                self.keep_for_first_attempt(&id, &envelope);
                let destination = self.destination_of(&envelope);
                if !self.inner.dispatch.add(id.clone(), now, destination).await {
                    // Cannot happen for a new id; never leave it cached.
                    self.take_first_attempt(&id);
                }
                tracing::info!(
                    id = %id,
                    sender = %envelope.sender,
                    recipients = envelope.recipients.len(),
                    size = envelope.message.len(),
                    "queued"
                );
                Ok(id)
            }
            Err(e) => {
                tracing::error!(error = %e, sender = %envelope.sender, "queue storage write failed");
                Err(storage_failure_reply(&e))
            }
        }
    }
}

/// The edge's answer when storing a new message failed with `e`.
fn storage_failure_reply(e: &std::io::Error) -> Reply {
    use std::io::ErrorKind as K;
    match e.kind() {
        K::ConnectionRefused
        | K::ConnectionReset
        | K::ConnectionAborted
        | K::NotConnected
        | K::BrokenPipe
        | K::TimedOut
        | K::HostUnreachable
        | K::NetworkUnreachable
        | K::NetworkDown => Reply::new(451, "4.3.0", "Queue storage unavailable, try again later"),
        _ => Reply::new(452, "4.3.1", "Insufficient system storage"),
    }
}

impl<S: QueueStorage, R: Relay, D: Dispatch> Handoff for Queue<S, R, D> {
    /// Runs the queue policies, then stores the parts concurrently (so a
    /// group-committing backend can share fsyncs between them).
    ///
    /// Each part is stored by a spawned task: if the caller gives up on the
    /// handoff (its client hung up), a write already under way still
    /// finishes and is scheduled, instead of sitting unscheduled in storage
    /// until the next restart. A task that panics is answered `451 4.3.0`.
    async fn handoff(&self, envelope: Envelope) -> Vec<HandoffResult> {
        let parts = self.apply_policies(envelope).await;
        let mut pending = Vec::with_capacity(parts.len());
        for part in parts {
            pending.push(match part {
                Ok(envelope) => {
                    let recipients = envelope.recipients.clone();
                    let queue = self.clone();
                    (
                        recipients,
                        Ok(tokio::spawn(async move {
                            queue.store(Arc::new(envelope)).await
                        })),
                    )
                }
                Err((recipients, reply)) => (recipients, Err(reply)),
            });
        }
        let mut results = Vec::with_capacity(pending.len());
        for (recipients, part) in pending {
            let result = match part {
                Ok(task) => task.await.unwrap_or_else(|e| {
                    tracing::error!(error = %e, "queue write task failed");
                    Err(Reply::new(451, "4.3.0", "Local error in processing"))
                }),
                Err(reply) => Err(reply),
            };
            results.push(HandoffResult { recipients, result });
        }
        results
    }
}
