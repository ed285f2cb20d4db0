//! The dispatch contract: who attempts which stored message next.
//!
//! Two truths, kept apart. The [`QueueStorage`](super::QueueStorage) is the
//! truth of *what* is queued (every envelope, its finished recipients, its
//! due time); a [`Dispatch`] is the truth of *who attempts what next*. The
//! queue asks its dispatcher for the next due message, tells it when an
//! attempt ended (retry at a time, done, gone), and passes on an
//! operator's "retry now" and "delete".
//!
//! Design decisions:
//! - The default, [`LocalDispatch`](super::LocalDispatch), is an in-process
//!   due-time index (`queue/schedule.rs`); [`Queue::new`](super::Queue::new)
//!   uses it, so a queue on one machine needs to know nothing of this
//!   trait. A dispatcher shared by many processes (leases in a shared
//!   store, a message broker) implements the same trait and is given to
//!   [`Queue::with_dispatch`](super::Queue::with_dispatch).
//! - Order: the queue records an attempt's outcome in storage *before* it
//!   tells the dispatcher ([`Dispatch::ended`]). A dispatcher that loses
//!   its state (a restart) can therefore always be rebuilt from storage
//!   ([`Dispatch::add`] for every stored message at start-up), and a message
//!   handed out twice finds its finished recipients already recorded.
//! - A message is handed out with a [`Lease`]: the time after which another
//!   process may take it, if its attempt has not ended by then. The local
//!   dispatcher has no other process to hand it to (`expires: None`); a
//!   shared one sets a time longer than an attempt can take.
//! - Times are wall-clock [`SystemTime`]s, as stored, so that processes on
//!   different machines agree on them; the local dispatcher converts them
//!   to the tokio clock itself.
//! - Methods are async so that a remote dispatcher can make a round trip;
//!   the local one answers at once.

use std::future::Future;
use std::time::SystemTime;

/// A message handed out for one attempt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    /// The storage id of the message.
    pub id: String,
    /// When another process may take the message if this attempt has not
    /// ended; `None`: never (an in-process dispatcher).
    pub expires: Option<SystemTime>,
}

/// How an attempt of a handed-out message ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttemptEnd {
    /// Recipients are pending: attempt it again at this time (already
    /// recorded in storage).
    RetryAt(SystemTime),
    /// Nothing is pending: the message was removed from storage.
    Done,
    /// The message was not in storage any more (deleted by an operator
    /// during its attempt).
    Gone,
}

/// Where a message stands with the dispatcher.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Placement {
    /// Waiting for its due time.
    Waiting,
    /// Handed out by [`Dispatch::next_due`]: being attempted.
    InFlight,
    /// Not known (never added, or done).
    Unknown,
}

/// Decides which stored message is attempted next, and by whom.
///
/// A message is never handed out twice at once by one dispatcher: between
/// [`Dispatch::next_due`] and [`Dispatch::ended`] it is in flight, and
/// [`Dispatch::add`] of a known id changes nothing.
pub trait Dispatch: Send + Sync + 'static {
    /// Makes a stored message known, due at `due` (a new message, or one
    /// found in storage at start-up). Returns `false`, and changes nothing,
    /// if the id is already waiting or in flight.
    fn add(&self, id: String, due: SystemTime) -> impl Future<Output = bool> + Send;

    /// Waits until a message is due and hands it out.
    fn next_due(&self) -> impl Future<Output = Lease> + Send;

    /// The attempt of a message handed out by [`Dispatch::next_due`] ended;
    /// storage already holds its outcome.
    fn ended(&self, id: &str, end: AttemptEnd) -> impl Future<Output = ()> + Send;

    /// An operator asks for an attempt now. A waiting message becomes due
    /// at once; for a message in flight the request is remembered, and its
    /// attempt takes it with [`Dispatch::take_retry_request`]. Returns where
    /// the message stood.
    fn retry_now(&self, id: &str) -> impl Future<Output = Placement> + Send;

    /// Takes back an operator's "retry now" made while `id` was in flight,
    /// for an attempt about to record its next due time (it records "now"
    /// instead). `true` at most once per request.
    fn take_retry_request(&self, id: &str) -> impl Future<Output = bool> + Send;

    /// An operator deletes a message: a waiting one is dropped at once; one
    /// in flight stays until its attempt ends ([`AttemptEnd::Gone`]).
    /// Returns where the message stood.
    fn delete(&self, id: &str) -> impl Future<Output = Placement> + Send;

    /// How many messages wait for an attempt (not counting those in
    /// flight), for statistics.
    fn waiting(&self) -> usize;
}
