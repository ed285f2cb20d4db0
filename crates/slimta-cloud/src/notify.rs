//! The message queue that announces work to relay processes (SQS, Zaqar).
//!
//! Decision: a notice carries only a message id. The object store stays
//! the truth of what is queued and when it is due; a notice is a wake-up
//! with a lease. A process takes notices with a visibility timeout (SQS)
//! or a claim (Zaqar): while it is invisible, no other process gets it,
//! and if the process dies, the notice reappears when the lease runs out.
//! A notice that reappears before its message is due (the store says when)
//! is simply postponed again, so a notifier's own limits on delays (SQS:
//! 15 minutes of delay, 12 hours of visibility) bound nothing.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::time::Duration;

/// A boxed future of a [`Notifier`].
pub type NotifyFuture<'a, T> = Pin<Box<dyn Future<Output = io::Result<T>> + Send + 'a>>;

/// One announcement taken from the queue.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Notice {
    /// The storage id of the message it announces.
    pub id: String,
    /// The handle to postpone or finish it with (SQS receipt handle, Zaqar
    /// message id + claim id).
    pub receipt: String,
}

/// A message queue with leases. Errors are [`io::Error`]s with the
/// connection kinds when the queue cannot be reached; every call has a
/// timeout.
pub trait Notifier: Send + Sync + 'static {
    /// Announces `id`, visible to takers after `delay` (the notifier caps
    /// it at its own maximum; an early notice is postponed again).
    fn announce<'a>(&'a self, id: &'a str, delay: Duration) -> NotifyFuture<'a, ()>;

    /// Takes up to `max` notices, each invisible to others for `lease`;
    /// waits up to `wait` for one (long polling), then returns what it has
    /// (maybe nothing).
    fn take(&self, max: usize, lease: Duration, wait: Duration) -> NotifyFuture<'_, Vec<Notice>>;

    /// Makes a taken notice visible again after `delay` (a retry later, a
    /// notice taken before its message is due, or a lease extended during
    /// a long attempt).
    fn postpone<'a>(&'a self, notice: &'a Notice, delay: Duration) -> NotifyFuture<'a, ()>;

    /// Removes a taken notice for good (the message is done or gone).
    fn finish<'a>(&'a self, notice: &'a Notice) -> NotifyFuture<'a, ()>;
}
