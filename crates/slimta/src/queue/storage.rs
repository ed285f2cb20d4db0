//! The storage contract every queue backend fulfils.
//!
//! The queue owns scheduling and decisions; storage only remembers. Each
//! method is one durable step: when the returned future resolves `Ok`, a crash
//! right afterwards must not undo it. The queue relies on that to answer `250`
//! only after [`QueueStorage::write`] returns, and to never resend to a
//! recipient after a [`QueueStorage::record`] naming it returns.
//!
//! Design decisions:
//! - Delivered recipients are stored as indices into the stored envelope's
//!   recipient list, which never changes after the write. That makes "never
//!   deliver twice to the same recipient" a property of the storage record,
//!   not of whoever reads it (python-slimta got this wrong).
//! - Errors are `std::io::Error`: every backend's failures (disk, network,
//!   protocol) are I/O failures to the queue, which answers a new message
//!   `451 4.3.0` when a storage server cannot be reached (the connection
//!   kinds: refused, reset, timed out, ...) and `452 4.3.1` otherwise (a
//!   full disk), and retries a failed record later. A remote backend maps
//!   its client's failures to those kinds. `ErrorKind::NotFound` means the id is unknown.
//! - An attempt's outcome is one step ([`QueueStorage::record`] with an
//!   [`AttemptOutcome`]): finished recipients, attempt count, next due
//!   time, last error and the delay-warning flag together. A backend makes
//!   it durable at once (one checksummed record and one `fdatasync` on
//!   disk, one round trip to a remote store), and a crash leaves the state
//!   before it or after it, never a mix. Single-field setters would cost a
//!   durable write (or a round trip) each, for one attempt. Only the due
//!   time has a setter of its own ([`QueueStorage::set_timestamp`]), for
//!   an operator's "retry now" outside any attempt.
//! - Backend figures (fsyncs, journal segments, ...) come through the trait
//!   ([`QueueStorage::counters`]), so whoever reports them (the app's
//!   `slimta queue stats`) needs no concrete backend type.
//! - Native async trait; [`DynStorage`] is the boxed form for backends picked
//!   at run time by the app's config.
//! - Start-up does not wait for the whole store: [`QueueStorage::load_into`]
//!   hands the stored ids over in batches as the backend finds them, so a
//!   backend with a million messages (the disk spool indexes its files in
//!   the background) can accept new mail at once while the queue schedules
//!   the old mail batch by batch. [`QueueStorage::load`] is the whole list
//!   at once, for callers that need all of it.
//! - Statistics do not list every message: [`QueueStorage::summary`] is
//!   the count and the oldest receive time, which a backend with an index
//!   answers from memory (the disk spool keeps no envelopes in memory, so
//!   its [`QueueStorage::list`] reads every file).
//! - The envelope is shared, not copied: [`StoredEnvelope::envelope`] is an
//!   `Arc<Envelope>`, and the queue hands new envelopes over with
//!   [`QueueStorage::write_shared`]. A backend that keeps envelopes in memory
//!   keeps that `Arc` and answers [`QueueStorage::get`] with a reference
//!   count bump instead of a copy of the message; the disk backend writes
//!   the message bytes straight from it. (The message bytes themselves stay
//!   a `Vec<u8>` in [`Envelope`], which the edge, relays and policies use.)

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::time::SystemTime;

use crate::envelope::Envelope;

/// The queue-side facts stored beside an envelope.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct QueueMeta {
    /// When the next delivery attempt is due.
    pub timestamp: Option<SystemTime>,
    /// How many delivery attempts have been made.
    pub attempts: u32,
    /// Indices (into the stored recipient list) of the recipients the queue
    /// is finished with, sorted: delivered ones, and permanently failed ones
    /// once their bounce is queued. They are never attempted again.
    pub delivered: Vec<usize>,
    /// The last failure, for operators (`slimta queue list`).
    pub last_error: Option<String>,
    /// Whether the delay warning (`Action: delayed`) was sent; it is sent
    /// at most once per message.
    pub delay_warned: bool,
}

/// What one delivery attempt changed, recorded at once by
/// [`QueueStorage::record`].
///
/// Every field is an absolute value or an addition, never a toggle, so a
/// record applied twice (a retried write after an unclear failure) leaves
/// the same state as once.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AttemptOutcome {
    /// The attempt count after this attempt.
    pub attempts: u32,
    /// Recipients (indices into the stored recipient list) the queue is
    /// finished with after this attempt: delivered, or failed for good with
    /// their bounce queued. Added to [`QueueMeta::delivered`].
    pub finished: Vec<usize>,
    /// When the next attempt is due; `None` keeps the stored time (the
    /// message is about to be removed, or the record only saves finished
    /// recipients before a bounce is queued).
    pub next_attempt: Option<SystemTime>,
    /// The last failure, for operators; `None` keeps the stored one.
    pub last_error: Option<String>,
    /// The delay warning was queued; `false` keeps the stored flag (it is
    /// never cleared).
    pub delay_warned: bool,
}

impl AttemptOutcome {
    /// Applies the outcome to `meta`, as every backend must: `recipients`
    /// is the stored recipient count (indices beyond it are ignored).
    pub fn apply_to(&self, meta: &mut QueueMeta, recipients: usize) {
        meta.attempts = self.attempts;
        meta.delivered
            .extend(self.finished.iter().filter(|&&i| i < recipients));
        meta.delivered.sort_unstable();
        meta.delivered.dedup();
        if let Some(due) = self.next_attempt {
            meta.timestamp = Some(due);
        }
        if let Some(error) = &self.last_error {
            meta.last_error = Some(error.clone());
        }
        meta.delay_warned |= self.delay_warned;
    }
}

/// A backend's figures for operators, each shown as `name: value` (for
/// the disk spool: fsyncs, journal segments, messages only in the journal).
pub type StorageCounters = Vec<(&'static str, u64)>;

/// One batch of stored ids with their due times, as
/// [`QueueStorage::load_into`] hands them over.
pub type LoadBatch = Vec<(String, SystemTime)>;

/// How many ids the default [`QueueStorage::load_into`] puts in one batch.
pub const LOAD_BATCH: usize = 1024;

/// The queue's size as storage knows it, for statistics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StorageSummary {
    /// Stored messages.
    pub messages: usize,
    /// When the oldest stored message was received.
    pub oldest_received: Option<SystemTime>,
}

/// A summary of one stored message, for operators and statistics: the
/// envelope without the message bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueueEntry {
    /// The storage id.
    pub id: String,
    /// The reverse path; empty for `<>`.
    pub sender: String,
    /// Every stored recipient (see `meta.delivered` for the finished ones).
    pub recipients: Vec<String>,
    /// The message size in bytes.
    pub size: u64,
    /// When the edge received it.
    pub received: SystemTime,
    /// Attempts, due time, delivered recipients, last error.
    pub meta: QueueMeta,
}

impl QueueEntry {
    /// The summary of a stored envelope.
    pub fn of(id: impl Into<String>, stored: &StoredEnvelope) -> Self {
        Self {
            id: id.into(),
            sender: stored.envelope.sender.clone(),
            recipients: stored.envelope.recipients.clone(),
            size: stored.envelope.message.len() as u64,
            received: stored.envelope.receive_time,
            meta: stored.meta.clone(),
        }
    }
}

/// A stored envelope with its queue metadata.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredEnvelope {
    /// The envelope as written, with every original recipient (shared with
    /// the backend's copy where it keeps one in memory).
    pub envelope: Arc<Envelope>,
    /// Attempts, schedule and delivered recipients.
    pub meta: QueueMeta,
}

impl StoredEnvelope {
    /// The recipients not yet delivered, with their indices in the stored list.
    pub fn pending_recipients(&self) -> Vec<(usize, &str)> {
        self.envelope
            .recipients
            .iter()
            .enumerate()
            .filter(|(i, _)| self.meta.delivered.binary_search(i).is_err())
            .map(|(i, r)| (i, r.as_str()))
            .collect()
    }
}

/// Durable storage of queued envelopes.
///
/// # Errors
///
/// Every method fails with the backend's [`io::Error`] when the step could
/// not be made durable; methods taking an id fail with
/// [`io::ErrorKind::NotFound`] for an unknown id (except
/// [`QueueStorage::remove`]).
pub trait QueueStorage: Send + Sync + 'static {
    /// Stores a new envelope due at `timestamp`; returns its new id once it is
    /// durable.
    fn write(
        &self,
        envelope: &Envelope,
        timestamp: SystemTime,
    ) -> impl Future<Output = io::Result<String>> + Send;

    /// Like [`QueueStorage::write`], for an envelope the caller shares: a
    /// backend may keep the `Arc` (in memory) or write from it without a
    /// copy. The queue stores every new envelope this way. The default
    /// calls [`QueueStorage::write`].
    fn write_shared(
        &self,
        envelope: Arc<Envelope>,
        timestamp: SystemTime,
    ) -> impl Future<Output = io::Result<String>> + Send {
        async move { self.write(&envelope, timestamp).await }
    }

    /// Sets when the next attempt is due (an operator's "retry now"; the
    /// queue's own attempts use [`QueueStorage::record`]).
    fn set_timestamp(
        &self,
        id: &str,
        timestamp: SystemTime,
    ) -> impl Future<Output = io::Result<()>> + Send;

    /// Records the outcome of one delivery attempt, all of it in one durable
    /// step: when it returns `Ok`, a crash cannot undo any part of it, and a
    /// crash before leaves none of it. The queue never resends to a
    /// recipient once a record naming it in [`AttemptOutcome::finished`]
    /// has returned.
    fn record(
        &self,
        id: &str,
        outcome: &AttemptOutcome,
    ) -> impl Future<Output = io::Result<()>> + Send;

    /// The backend's figures for operators (`slimta queue stats`); cheap,
    /// from memory. The default has none.
    fn counters(&self) -> StorageCounters {
        Vec::new()
    }

    /// Every stored id with its due time, all at once (a backend still
    /// indexing its store waits until it is done; start-up uses
    /// [`QueueStorage::load_into`]).
    fn load(&self) -> impl Future<Output = io::Result<Vec<(String, SystemTime)>>> + Send;

    /// Sends every stored id with its due time to `batches`, a batch at a
    /// time as the backend finds them, for rescheduling at start-up; returns
    /// how many were sent once every message stored before the call was
    /// (messages written meanwhile may be sent too). Stops early, without
    /// an error, if the receiver is dropped. The default sends
    /// [`QueueStorage::load`] in batches of [`LOAD_BATCH`].
    fn load_into(
        &self,
        batches: tokio::sync::mpsc::UnboundedSender<LoadBatch>,
    ) -> impl Future<Output = io::Result<usize>> + Send {
        async move {
            let mut all = self.load().await?.into_iter();
            let mut sent = 0;
            loop {
                let batch: LoadBatch = all.by_ref().take(LOAD_BATCH).collect();
                if batch.is_empty() {
                    return Ok(sent);
                }
                sent += batch.len();
                if batches.send(batch).is_err() {
                    return Ok(sent);
                }
            }
        }
    }

    /// How many messages are stored and the oldest's receive time (the
    /// queue's statistics). The default counts [`QueueStorage::list`]; a
    /// backend with an index answers from it.
    fn summary(&self) -> impl Future<Output = io::Result<StorageSummary>> + Send {
        async move {
            let entries = self.list().await?;
            Ok(StorageSummary {
                messages: entries.len(),
                oldest_received: entries.iter().map(|e| e.received).min(),
            })
        }
    }

    /// A summary of every stored message (`slimta queue list`, the queue's
    /// statistics). The default reads every message with
    /// [`QueueStorage::get`]; a backend with an index should answer from it.
    fn list(&self) -> impl Future<Output = io::Result<Vec<QueueEntry>>> + Send {
        async move {
            let ids = self.load().await?;
            let mut entries = Vec::with_capacity(ids.len());
            for (id, _) in ids {
                match self.get(&id).await {
                    Ok(stored) => entries.push(QueueEntry::of(id, &stored)),
                    // Removed since load: not an error.
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e),
                }
            }
            Ok(entries)
        }
    }

    /// One stored envelope with its metadata.
    fn get(&self, id: &str) -> impl Future<Output = io::Result<StoredEnvelope>> + Send;

    /// Forgets an envelope (delivered or bounced everywhere). Removing an
    /// unknown id is not an error.
    ///
    /// Durable like every other step: once it returns `Ok`, a crash must
    /// not bring the envelope back. The queue relies on it after a fully
    /// successful attempt, where it removes the envelope without recording
    /// the delivered recipients first.
    fn remove(&self, id: &str) -> impl Future<Output = io::Result<()>> + Send;
}

/// A boxed future of [`DynStorage`].
pub type StorageFuture<'a, T> = Pin<Box<dyn Future<Output = io::Result<T>> + Send + 'a>>;

/// The object-safe form of [`QueueStorage`], for backends chosen at run time.
#[allow(missing_docs)]
pub trait DynStorage: Send + Sync + 'static {
    fn write_boxed<'a>(
        &'a self,
        envelope: &'a Envelope,
        timestamp: SystemTime,
    ) -> StorageFuture<'a, String>;
    fn write_shared_boxed(
        &self,
        envelope: Arc<Envelope>,
        timestamp: SystemTime,
    ) -> StorageFuture<'_, String>;
    fn set_timestamp_boxed<'a>(
        &'a self,
        id: &'a str,
        timestamp: SystemTime,
    ) -> StorageFuture<'a, ()>;
    fn record_boxed<'a>(
        &'a self,
        id: &'a str,
        outcome: &'a AttemptOutcome,
    ) -> StorageFuture<'a, ()>;
    fn counters_dyn(&self) -> StorageCounters;
    fn load_boxed(&self) -> StorageFuture<'_, Vec<(String, SystemTime)>>;
    fn load_into_boxed(
        &self,
        batches: tokio::sync::mpsc::UnboundedSender<LoadBatch>,
    ) -> StorageFuture<'_, usize>;
    fn summary_boxed(&self) -> StorageFuture<'_, StorageSummary>;
    fn list_boxed(&self) -> StorageFuture<'_, Vec<QueueEntry>>;
    fn get_boxed<'a>(&'a self, id: &'a str) -> StorageFuture<'a, StoredEnvelope>;
    fn remove_boxed<'a>(&'a self, id: &'a str) -> StorageFuture<'a, ()>;
}

impl<S: QueueStorage> DynStorage for S {
    fn write_boxed<'a>(
        &'a self,
        envelope: &'a Envelope,
        timestamp: SystemTime,
    ) -> StorageFuture<'a, String> {
        Box::pin(self.write(envelope, timestamp))
    }
    fn write_shared_boxed(
        &self,
        envelope: Arc<Envelope>,
        timestamp: SystemTime,
    ) -> StorageFuture<'_, String> {
        Box::pin(self.write_shared(envelope, timestamp))
    }
    fn set_timestamp_boxed<'a>(
        &'a self,
        id: &'a str,
        timestamp: SystemTime,
    ) -> StorageFuture<'a, ()> {
        Box::pin(self.set_timestamp(id, timestamp))
    }
    fn record_boxed<'a>(
        &'a self,
        id: &'a str,
        outcome: &'a AttemptOutcome,
    ) -> StorageFuture<'a, ()> {
        Box::pin(self.record(id, outcome))
    }
    fn counters_dyn(&self) -> StorageCounters {
        self.counters()
    }
    fn load_boxed(&self) -> StorageFuture<'_, Vec<(String, SystemTime)>> {
        Box::pin(self.load())
    }
    fn load_into_boxed(
        &self,
        batches: tokio::sync::mpsc::UnboundedSender<LoadBatch>,
    ) -> StorageFuture<'_, usize> {
        Box::pin(self.load_into(batches))
    }
    fn summary_boxed(&self) -> StorageFuture<'_, StorageSummary> {
        Box::pin(self.summary())
    }
    fn list_boxed(&self) -> StorageFuture<'_, Vec<QueueEntry>> {
        Box::pin(self.list())
    }
    fn get_boxed<'a>(&'a self, id: &'a str) -> StorageFuture<'a, StoredEnvelope> {
        Box::pin(self.get(id))
    }
    fn remove_boxed<'a>(&'a self, id: &'a str) -> StorageFuture<'a, ()> {
        Box::pin(self.remove(id))
    }
}

macro_rules! forward_dyn_storage {
    ($ty:ty) => {
        impl QueueStorage for $ty {
            fn write(
                &self,
                envelope: &Envelope,
                timestamp: SystemTime,
            ) -> impl Future<Output = io::Result<String>> + Send {
                async move { (**self).write_boxed(envelope, timestamp).await }
            }
            fn write_shared(
                &self,
                envelope: Arc<Envelope>,
                timestamp: SystemTime,
            ) -> impl Future<Output = io::Result<String>> + Send {
                async move { (**self).write_shared_boxed(envelope, timestamp).await }
            }
            fn set_timestamp(
                &self,
                id: &str,
                timestamp: SystemTime,
            ) -> impl Future<Output = io::Result<()>> + Send {
                async move { (**self).set_timestamp_boxed(id, timestamp).await }
            }
            fn record(
                &self,
                id: &str,
                outcome: &AttemptOutcome,
            ) -> impl Future<Output = io::Result<()>> + Send {
                async move { (**self).record_boxed(id, outcome).await }
            }
            fn counters(&self) -> StorageCounters {
                (**self).counters_dyn()
            }
            fn load(&self) -> impl Future<Output = io::Result<Vec<(String, SystemTime)>>> + Send {
                async move { (**self).load_boxed().await }
            }
            fn load_into(
                &self,
                batches: tokio::sync::mpsc::UnboundedSender<LoadBatch>,
            ) -> impl Future<Output = io::Result<usize>> + Send {
                async move { (**self).load_into_boxed(batches).await }
            }
            fn summary(&self) -> impl Future<Output = io::Result<StorageSummary>> + Send {
                async move { (**self).summary_boxed().await }
            }
            fn list(&self) -> impl Future<Output = io::Result<Vec<QueueEntry>>> + Send {
                async move { (**self).list_boxed().await }
            }
            fn get(&self, id: &str) -> impl Future<Output = io::Result<StoredEnvelope>> + Send {
                async move { (**self).get_boxed(id).await }
            }
            fn remove(&self, id: &str) -> impl Future<Output = io::Result<()>> + Send {
                async move { (**self).remove_boxed(id).await }
            }
        }
    };
}

forward_dyn_storage!(Box<dyn DynStorage>);
forward_dyn_storage!(Arc<dyn DynStorage>);
