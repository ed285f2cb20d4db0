//! Operator commands on a running queue: list, show, retry now, delete,
//! and the statistics the app logs at intervals.
//!
//! Decisions:
//! - These go through the [`Queue`] (not straight to storage) because the
//!   queue tells its dispatcher: "retry now" must move the due time
//!   the scheduler sleeps on, and "delete" must take the message out of it,
//!   or the scheduler would wake for a message that is gone.
//! - "Retry now" on a message being attempted at that moment is remembered
//!   by the dispatcher: if the attempt leaves recipients pending, the next
//!   attempt is due at once instead of after the backoff. "Delete" of a message being attempted
//!   removes it from storage; the attempt may still deliver that once, then
//!   finds the message gone and forgets it.
//! - Storage is updated before the dispatcher, so a crash right after an
//!   operator's "retry" still retries at once after the restart.

use std::io;
use std::time::{Duration, SystemTime};

use crate::relay::Relay;

use super::destinations::DeadDestination;
use super::dispatch::{Dispatch, Placement};
use super::storage::{QueueEntry, QueueStorage, StoredEnvelope};
use super::{Queue, clock};

/// Counts for the log and the control socket.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct QueueStats {
    /// Messages in storage (waiting or being attempted).
    pub messages: usize,
    /// Messages waiting for their next attempt.
    pub waiting: usize,
    /// When the oldest stored message was received.
    pub oldest: Option<SystemTime>,
    /// Destinations marked dead (no connections until their probe).
    pub dead: Vec<DeadDestination>,
}

impl QueueStats {
    /// The age of the oldest message at `now` (zero when empty).
    pub fn oldest_age(&self, now: SystemTime) -> Duration {
        self.oldest
            .and_then(|t| now.duration_since(t).ok())
            .unwrap_or_default()
    }
}

fn not_found(id: &str) -> io::Error {
    io::Error::new(io::ErrorKind::NotFound, format!("no queued message {id}"))
}

impl<S: QueueStorage, R: Relay, D: Dispatch> Queue<S, R, D> {
    /// A summary of every stored message.
    ///
    /// # Errors
    ///
    /// The storage's error.
    pub async fn list(&self) -> io::Result<Vec<QueueEntry>> {
        self.inner.storage.list().await
    }

    /// One stored message with its metadata.
    ///
    /// # Errors
    ///
    /// [`io::ErrorKind::NotFound`] for an unknown id, or the storage's error.
    pub async fn show(&self, id: &str) -> io::Result<StoredEnvelope> {
        self.inner.storage.get(id).await
    }

    /// Makes a stored message due now.
    ///
    /// # Errors
    ///
    /// [`io::ErrorKind::NotFound`] for an unknown id, or the storage's error.
    pub async fn retry_now(&self, id: &str) -> io::Result<()> {
        let now = clock::now();
        match self.inner.storage.set_timestamp(id, now).await {
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(not_found(id)),
            other => other?,
        }
        if self.inner.dispatch.retry_now(id).await == Placement::Unknown
            && self.inner.started.get().is_some()
        {
            self.inner.dispatch.add(id.to_owned(), now, None).await;
        }
        tracing::info!(id = %id, "retry requested by the operator");
        Ok(())
    }

    /// Makes every stored message due now; returns how many.
    ///
    /// # Errors
    ///
    /// The storage's error (messages before it were rescheduled).
    pub async fn retry_all(&self) -> io::Result<usize> {
        let revived = self.inner.dispatch.revive(None);
        if revived > 0 {
            tracing::info!(
                destinations = revived,
                "dead destinations revived by the operator"
            );
        }
        let mut count = 0;
        for (id, _) in self.inner.storage.load().await? {
            match self.retry_now(&id).await {
                Ok(()) => count += 1,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        Ok(count)
    }

    /// Deletes a stored message without delivering or bouncing it.
    ///
    /// # Errors
    ///
    /// [`io::ErrorKind::NotFound`] for an unknown id, or the storage's error.
    pub async fn delete(&self, id: &str) -> io::Result<()> {
        // Fails with NotFound for an unknown id; remove() would not.
        self.inner.storage.get(id).await?;
        self.inner.dispatch.delete(id).await;
        self.take_first_attempt(id);
        self.inner.storage.remove(id).await?;
        tracing::warn!(id = %id, "message deleted by the operator");
        Ok(())
    }

    /// How many messages are stored and waiting, and the oldest's receive time.
    ///
    /// # Errors
    ///
    /// The storage's error.
    pub async fn stats(&self) -> io::Result<QueueStats> {
        let summary = self.inner.storage.summary().await?;
        Ok(QueueStats {
            messages: summary.messages,
            waiting: self.inner.dispatch.waiting(),
            oldest: summary.oldest_received,
            dead: self.inner.dispatch.dead_destinations(),
        })
    }

    /// Logs [`Queue::stats`] every `interval` until the queue is dropped
    /// or stopped. Called by [`Queue::start`] when an interval is set.
    pub(super) async fn log_stats(self, interval: Duration) {
        let mut ticks = tokio::time::interval(interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticks.tick().await;
        loop {
            ticks.tick().await;
            match self.stats().await {
                Ok(stats) => tracing::info!(
                    messages = stats.messages,
                    waiting = stats.waiting,
                    oldest_age_secs = stats.oldest_age(clock::now()).as_secs(),
                    "queue stats"
                ),
                Err(e) => tracing::warn!(error = %e, "cannot read queue stats"),
            }
        }
    }
}
