//! In-memory storage (python-slimta's `DictStorage`).
//!
//! Nothing survives the process, so it suits tests and setups where losing
//! queued mail on a crash is acceptable (a relay in front of a durable
//! queue). It is also the reference the conformance suite holds other
//! backends to.
//!
//! Envelopes are kept behind the `Arc` the queue hands over
//! ([`QueueStorage::write_shared`]), so neither storing nor [`get`] copies
//! the message bytes.
//!
//! [`get`]: QueueStorage::get

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::SystemTime;

use crate::envelope::Envelope;

use super::storage::{AttemptOutcome, QueueEntry, QueueMeta, QueueStorage, StoredEnvelope};

/// Queue storage in a `HashMap`. Clones share the same map.
#[derive(Clone, Debug, Default)]
pub struct MemoryStorage {
    messages: Arc<Mutex<HashMap<String, StoredEnvelope>>>,
}

impl MemoryStorage {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// How many messages are stored.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no message is stored.
    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, StoredEnvelope>> {
        self.messages.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn with<T>(&self, id: &str, f: impl FnOnce(&mut StoredEnvelope) -> T) -> io::Result<T> {
        self.lock().get_mut(id).map(f).ok_or_else(|| {
            io::Error::new(io::ErrorKind::NotFound, format!("no queued message {id}"))
        })
    }
}

impl QueueStorage for MemoryStorage {
    fn write(
        &self,
        envelope: &Envelope,
        timestamp: SystemTime,
    ) -> impl Future<Output = io::Result<String>> + Send {
        self.write_shared(Arc::new(envelope.clone()), timestamp)
    }

    /// Keeps the caller's `Arc`: the queue's hand-off stores no copy.
    fn write_shared(
        &self,
        envelope: Arc<Envelope>,
        timestamp: SystemTime,
    ) -> impl Future<Output = io::Result<String>> + Send {
        let id = uuid::Uuid::new_v4().simple().to_string();
        let stored = StoredEnvelope {
            envelope,
            meta: QueueMeta {
                timestamp: Some(timestamp),
                ..QueueMeta::default()
            },
        };
        self.lock().insert(id.clone(), stored);
        std::future::ready(Ok(id))
    }

    fn set_timestamp(
        &self,
        id: &str,
        timestamp: SystemTime,
    ) -> impl Future<Output = io::Result<()>> + Send {
        std::future::ready(self.with(id, |s| s.meta.timestamp = Some(timestamp)))
    }

    /// One lock: the whole outcome is applied, or (unknown id) none of it.
    fn record(
        &self,
        id: &str,
        outcome: &AttemptOutcome,
    ) -> impl Future<Output = io::Result<()>> + Send {
        std::future::ready(self.with(id, |s| {
            outcome.apply_to(&mut s.meta, s.envelope.recipients.len());
        }))
    }

    fn list(&self) -> impl Future<Output = io::Result<Vec<QueueEntry>>> + Send {
        let all = self
            .lock()
            .iter()
            .map(|(id, s)| QueueEntry::of(id.clone(), s))
            .collect();
        std::future::ready(Ok(all))
    }

    fn load(&self) -> impl Future<Output = io::Result<Vec<(String, SystemTime)>>> + Send {
        let all = self
            .lock()
            .iter()
            .map(|(id, s)| {
                (
                    id.clone(),
                    s.meta.timestamp.unwrap_or(SystemTime::UNIX_EPOCH),
                )
            })
            .collect();
        std::future::ready(Ok(all))
    }

    fn get(&self, id: &str) -> impl Future<Output = io::Result<StoredEnvelope>> + Send {
        std::future::ready(self.with(id, |s| s.clone()))
    }

    fn remove(&self, id: &str) -> impl Future<Output = io::Result<()>> + Send {
        self.lock().remove(id);
        std::future::ready(Ok(()))
    }
}
