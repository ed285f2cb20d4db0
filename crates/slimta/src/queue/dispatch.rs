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
//! - Destinations: a message is added with the [`Destination`] of its
//!   recipients when the queue knows it (a new message: the queue splits
//!   envelopes so each stored message has one), and without one when it
//!   does not (found in storage at start-up: reading every message to
//!   learn it would make a restart slow). A [`Lease`] without a
//!   destination makes the queue read the message and ask
//!   [`Dispatch::admit`]; what the attempt learns of the destination's
//!   health goes to [`Dispatch::contact`] before the outcome is recorded.
//!   A dispatcher that does not schedule by destination keeps the
//!   defaults of these methods (admit everything, ignore contacts).

use std::future::Future;
use std::time::SystemTime;

use crate::relay::{Destination, RelayError};

use super::destinations::DeadDestination;

/// A message handed out for one attempt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    /// The storage id of the message.
    pub id: String,
    /// When another process may take the message if this attempt has not
    /// ended; `None`: never (an in-process dispatcher).
    pub expires: Option<SystemTime>,
    /// The destination it was scheduled under; `None`: not known yet (the
    /// queue reads the message and asks [`Dispatch::admit`]).
    pub destination: Option<Destination>,
    /// The destination is dead: record this transient failure as the
    /// attempt's outcome without connecting.
    pub defer: Option<RelayError>,
}

impl Lease {
    /// A lease for an attempt of `id`, no destination known, no expiry.
    pub fn new(id: impl Into<String>) -> Self {
        Self {
            id: id.into(),
            expires: None,
            destination: None,
            defer: None,
        }
    }
}

/// What [`Dispatch::admit`] decided for a message whose destination the
/// queue has just learnt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Admission {
    /// Attempt it now.
    Attempt,
    /// The destination is dead: record this transient failure without
    /// connecting.
    Defer(RelayError),
    /// The destination has no free slot: the dispatcher keeps the message
    /// and hands it out again later; the attempt ends without an outcome.
    Later,
}

/// What an attempt learnt about its destination.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Contact {
    /// The destination's server answered (whatever it said).
    Reached,
    /// The destination could not be reached at all
    /// ([`RelayError::is_unreachable`]).
    Unreachable(RelayError),
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
    ///
    /// `destination`: where its recipients go, when the queue knows (see the
    /// module docs).
    fn add(
        &self,
        id: String,
        due: SystemTime,
        destination: Option<Destination>,
    ) -> impl Future<Output = bool> + Send;

    /// Waits until a message is due and hands it out.
    fn next_due(&self) -> impl Future<Output = Lease> + Send;

    /// The queue read a message handed out without a destination and found
    /// its recipients go to `destination`: may it be attempted now? The
    /// default admits everything.
    fn admit(&self, id: &str, destination: Destination) -> impl Future<Output = Admission> + Send {
        let _ = (id, destination);
        async { Admission::Attempt }
    }

    /// What the attempt of `id` (handed out, admitted) learnt about its
    /// destination, before its outcome is recorded. The default ignores it.
    fn contact(&self, id: &str, contact: Contact) -> impl Future<Output = ()> + Send {
        let _ = (id, contact);
        async {}
    }

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

    /// The destinations marked dead, for operators. The default: none.
    fn dead_destinations(&self) -> Vec<DeadDestination> {
        Vec::new()
    }

    /// An operator's retry: the dead destination `destination` (every dead
    /// destination for `None`) is alive again and gets attempts at once.
    /// Returns how many were dead. The default: none.
    fn revive(&self, destination: Option<&str>) -> usize {
        let _ = destination;
        0
    }
}

/// A boxed future of [`DynDispatch`].
pub type DispatchFuture<'a, T> = std::pin::Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The object-safe form of [`Dispatch`], for dispatchers chosen at run time
/// (the app picks the local one or the one a shared storage brings).
/// `Arc<dyn DynDispatch>` and `Box<dyn DynDispatch>` are dispatchers
/// themselves.
#[allow(missing_docs)]
pub trait DynDispatch: Send + Sync + 'static {
    fn add_boxed(
        &self,
        id: String,
        due: SystemTime,
        destination: Option<Destination>,
    ) -> DispatchFuture<'_, bool>;
    fn next_due_boxed(&self) -> DispatchFuture<'_, Lease>;
    fn admit_boxed<'a>(
        &'a self,
        id: &'a str,
        destination: Destination,
    ) -> DispatchFuture<'a, Admission>;
    fn contact_boxed<'a>(&'a self, id: &'a str, contact: Contact) -> DispatchFuture<'a, ()>;
    fn ended_boxed<'a>(&'a self, id: &'a str, end: AttemptEnd) -> DispatchFuture<'a, ()>;
    fn retry_now_boxed<'a>(&'a self, id: &'a str) -> DispatchFuture<'a, Placement>;
    fn take_retry_request_boxed<'a>(&'a self, id: &'a str) -> DispatchFuture<'a, bool>;
    fn delete_boxed<'a>(&'a self, id: &'a str) -> DispatchFuture<'a, Placement>;
    fn waiting_dyn(&self) -> usize;
    fn dead_destinations_dyn(&self) -> Vec<DeadDestination>;
    fn revive_dyn(&self, destination: Option<&str>) -> usize;
}

impl<D: Dispatch> DynDispatch for D {
    fn add_boxed(
        &self,
        id: String,
        due: SystemTime,
        destination: Option<Destination>,
    ) -> DispatchFuture<'_, bool> {
        Box::pin(self.add(id, due, destination))
    }
    fn next_due_boxed(&self) -> DispatchFuture<'_, Lease> {
        Box::pin(self.next_due())
    }
    fn admit_boxed<'a>(
        &'a self,
        id: &'a str,
        destination: Destination,
    ) -> DispatchFuture<'a, Admission> {
        Box::pin(self.admit(id, destination))
    }
    fn contact_boxed<'a>(&'a self, id: &'a str, contact: Contact) -> DispatchFuture<'a, ()> {
        Box::pin(self.contact(id, contact))
    }
    fn ended_boxed<'a>(&'a self, id: &'a str, end: AttemptEnd) -> DispatchFuture<'a, ()> {
        Box::pin(self.ended(id, end))
    }
    fn retry_now_boxed<'a>(&'a self, id: &'a str) -> DispatchFuture<'a, Placement> {
        Box::pin(self.retry_now(id))
    }
    fn take_retry_request_boxed<'a>(&'a self, id: &'a str) -> DispatchFuture<'a, bool> {
        Box::pin(self.take_retry_request(id))
    }
    fn delete_boxed<'a>(&'a self, id: &'a str) -> DispatchFuture<'a, Placement> {
        Box::pin(self.delete(id))
    }
    fn waiting_dyn(&self) -> usize {
        self.waiting()
    }
    fn dead_destinations_dyn(&self) -> Vec<DeadDestination> {
        self.dead_destinations()
    }
    fn revive_dyn(&self, destination: Option<&str>) -> usize {
        self.revive(destination)
    }
}

macro_rules! forward_dyn_dispatch {
    ($ty:ty) => {
        impl Dispatch for $ty {
            fn add(
                &self,
                id: String,
                due: SystemTime,
                destination: Option<Destination>,
            ) -> impl Future<Output = bool> + Send {
                async move { (**self).add_boxed(id, due, destination).await }
            }
            fn next_due(&self) -> impl Future<Output = Lease> + Send {
                async move { (**self).next_due_boxed().await }
            }
            fn admit(
                &self,
                id: &str,
                destination: Destination,
            ) -> impl Future<Output = Admission> + Send {
                async move { (**self).admit_boxed(id, destination).await }
            }
            fn contact(&self, id: &str, contact: Contact) -> impl Future<Output = ()> + Send {
                async move { (**self).contact_boxed(id, contact).await }
            }
            fn ended(&self, id: &str, end: AttemptEnd) -> impl Future<Output = ()> + Send {
                async move { (**self).ended_boxed(id, end).await }
            }
            fn retry_now(&self, id: &str) -> impl Future<Output = Placement> + Send {
                async move { (**self).retry_now_boxed(id).await }
            }
            fn take_retry_request(&self, id: &str) -> impl Future<Output = bool> + Send {
                async move { (**self).take_retry_request_boxed(id).await }
            }
            fn delete(&self, id: &str) -> impl Future<Output = Placement> + Send {
                async move { (**self).delete_boxed(id).await }
            }
            fn waiting(&self) -> usize {
                (**self).waiting_dyn()
            }
            fn dead_destinations(&self) -> Vec<DeadDestination> {
                (**self).dead_destinations_dyn()
            }
            fn revive(&self, destination: Option<&str>) -> usize {
                (**self).revive_dyn(destination)
            }
        }
    };
}

forward_dyn_dispatch!(Box<dyn DynDispatch>);
forward_dyn_dispatch!(std::sync::Arc<dyn DynDispatch>);
