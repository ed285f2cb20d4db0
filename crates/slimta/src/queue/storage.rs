//! The storage contract every queue backend fulfils.
//!
//! The queue owns scheduling and decisions; storage only remembers. Each
//! method is one durable step: when the returned future resolves `Ok`, a crash
//! right afterwards must not undo it. The queue relies on that to answer `250`
//! only after [`QueueStorage::write`] returns, and to never resend to a
//! recipient after [`QueueStorage::set_recipients_delivered`] returns.
//!
//! Design decisions:
//! - Delivered recipients are stored as indices into the stored envelope's
//!   recipient list, which never changes after the write. That makes "never
//!   deliver twice to the same recipient" a property of the storage record,
//!   not of whoever reads it (python-slimta got this wrong).
//! - Errors are `std::io::Error`: every backend's failures (disk, network,
//!   protocol) are I/O failures to the queue, which answers `452 4.3.1` or
//!   retries later. `ErrorKind::NotFound` means the id is unknown.
//! - Native async trait; [`DynStorage`] is the boxed form for backends picked
//!   at run time by the app's config.
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

    /// Sets when the next attempt is due.
    fn set_timestamp(
        &self,
        id: &str,
        timestamp: SystemTime,
    ) -> impl Future<Output = io::Result<()>> + Send;

    /// Adds one to the attempt count and returns the new count.
    fn increment_attempts(&self, id: &str) -> impl Future<Output = io::Result<u32>> + Send;

    /// Records recipients (indices into the stored recipient list) as
    /// delivered (or bounced: finished with). Idempotent; indices already
    /// recorded stay recorded.
    fn set_recipients_delivered(
        &self,
        id: &str,
        indices: &[usize],
    ) -> impl Future<Output = io::Result<()>> + Send;

    /// Records the last delivery error (for operators; not needed for
    /// correctness, so backends may store it lazily).
    fn set_last_error(&self, id: &str, error: &str) -> impl Future<Output = io::Result<()>> + Send;

    /// Records that the delay warning for this message was queued.
    fn set_delay_warned(&self, id: &str) -> impl Future<Output = io::Result<()>> + Send;

    /// Every stored id with its due time, for rescheduling at start-up.
    fn load(&self) -> impl Future<Output = io::Result<Vec<(String, SystemTime)>>> + Send;

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
    fn increment_attempts_boxed<'a>(&'a self, id: &'a str) -> StorageFuture<'a, u32>;
    fn set_recipients_delivered_boxed<'a>(
        &'a self,
        id: &'a str,
        indices: &'a [usize],
    ) -> StorageFuture<'a, ()>;
    fn set_last_error_boxed<'a>(&'a self, id: &'a str, error: &'a str) -> StorageFuture<'a, ()>;
    fn set_delay_warned_boxed<'a>(&'a self, id: &'a str) -> StorageFuture<'a, ()>;
    fn load_boxed(&self) -> StorageFuture<'_, Vec<(String, SystemTime)>>;
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
    fn increment_attempts_boxed<'a>(&'a self, id: &'a str) -> StorageFuture<'a, u32> {
        Box::pin(self.increment_attempts(id))
    }
    fn set_recipients_delivered_boxed<'a>(
        &'a self,
        id: &'a str,
        indices: &'a [usize],
    ) -> StorageFuture<'a, ()> {
        Box::pin(self.set_recipients_delivered(id, indices))
    }
    fn set_last_error_boxed<'a>(&'a self, id: &'a str, error: &'a str) -> StorageFuture<'a, ()> {
        Box::pin(self.set_last_error(id, error))
    }
    fn set_delay_warned_boxed<'a>(&'a self, id: &'a str) -> StorageFuture<'a, ()> {
        Box::pin(self.set_delay_warned(id))
    }
    fn load_boxed(&self) -> StorageFuture<'_, Vec<(String, SystemTime)>> {
        Box::pin(self.load())
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
            fn increment_attempts(&self, id: &str) -> impl Future<Output = io::Result<u32>> + Send {
                async move { (**self).increment_attempts_boxed(id).await }
            }
            fn set_recipients_delivered(
                &self,
                id: &str,
                indices: &[usize],
            ) -> impl Future<Output = io::Result<()>> + Send {
                async move { (**self).set_recipients_delivered_boxed(id, indices).await }
            }
            fn set_last_error(
                &self,
                id: &str,
                error: &str,
            ) -> impl Future<Output = io::Result<()>> + Send {
                async move { (**self).set_last_error_boxed(id, error).await }
            }
            fn set_delay_warned(&self, id: &str) -> impl Future<Output = io::Result<()>> + Send {
                async move { (**self).set_delay_warned_boxed(id).await }
            }
            fn load(&self) -> impl Future<Output = io::Result<Vec<(String, SystemTime)>>> + Send {
                async move { (**self).load_boxed().await }
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
