//! Relays: how mail leaves.
//!
//! A [`Relay`] is given an envelope and reports, per recipient, whether it was
//! delivered, failed for now (transient) or failed for good (permanent). The
//! queue decides what to do with each outcome (record, retry, bounce); a relay
//! never retries on its own.
//!
//! Design decisions:
//! - [`RelayError`] is opaque with predicates (`is_transient`, `is_permanent`,
//!   `reply`), so its internals can grow (a source error, the remote host)
//!   without breaking callers. Anything unexpected is transient: a relay that
//!   is unsure must not make the queue bounce a message that could still be
//!   delivered.
//! - [`Relay`] is a native async trait. The app picks relays at run time from
//!   its config, so [`DynRelay`] adds a boxed, object-safe form and
//!   `Box<dyn DynRelay>` / `Arc<dyn DynRelay>` implement [`Relay`] again.
//! - A relay names the [`Destination`] of each recipient
//!   ([`Relay::destination`]) so the queue can limit attempts per
//!   destination, and marks a failure to reach the destination at all
//!   ([`RelayError::is_unreachable`]: refused, timed out or turned away
//!   before the banner) so the queue can stop connecting to a dead one.

pub mod blackhole;
pub mod destination;
#[cfg(feature = "http-relay")]
pub mod http;
pub mod lmtp;
pub mod pipe;
pub mod smtp;

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use crate::envelope::Envelope;
use crate::reply::Reply;

pub use blackhole::BlackholeRelay;
pub use destination::Destination;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Transient,
    Permanent,
}

/// Why a delivery (or one recipient of it) failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RelayError {
    kind: Kind,
    reply: Reply,
    remote_mta: Option<String>,
    unreachable: bool,
}

impl RelayError {
    /// A failure worth retrying later.
    pub fn transient(reply: Reply) -> Self {
        Self {
            kind: Kind::Transient,
            reply,
            remote_mta: None,
            unreachable: false,
        }
    }

    /// A failure that retrying cannot fix; the queue bounces it.
    pub fn permanent(reply: Reply) -> Self {
        Self {
            kind: Kind::Permanent,
            reply,
            remote_mta: None,
            unreachable: false,
        }
    }

    /// Classifies a remote server's reply: 5xx is permanent, anything else
    /// (4xx, or a nonsensical code) transient.
    pub fn from_reply(reply: Reply) -> Self {
        if reply.is_permanent() {
            Self::permanent(reply)
        } else {
            Self::transient(reply)
        }
    }

    /// A transient failure to reach the destination at all: the connection
    /// was refused or timed out, or the server closed it, timed out or
    /// answered 4xx before or at its banner. The queue counts these to
    /// mark a destination dead (see `queue/destinations.rs`).
    pub fn unreachable(reply: Reply) -> Self {
        Self {
            unreachable: true,
            ..Self::transient(reply)
        }
    }

    /// Marks a transient failure as [`RelayError::unreachable`]; a
    /// permanent one stays as it is (it is the server's answer).
    #[must_use]
    pub fn as_unreachable(mut self) -> Self {
        self.unreachable = self.kind == Kind::Transient;
        self
    }

    /// Whether the destination could not be reached at all (see
    /// [`RelayError::unreachable`]).
    pub fn is_unreachable(&self) -> bool {
        self.unreachable
    }

    /// Whether the queue should retry.
    pub fn is_transient(&self) -> bool {
        self.kind == Kind::Transient
    }

    /// Whether the queue should bounce.
    pub fn is_permanent(&self) -> bool {
        self.kind == Kind::Permanent
    }

    /// The reply that explains the failure (the remote server's, or one made
    /// up locally such as `451 4.4.1 Connection refused`).
    pub fn reply(&self) -> &Reply {
        &self.reply
    }

    /// Names the server that gave the reply (a host name or address), for
    /// the `Remote-MTA` field of a bounce.
    #[must_use]
    pub fn with_remote_mta(mut self, host: impl Into<String>) -> Self {
        self.remote_mta = Some(host.into());
        self
    }

    /// The server that gave the reply, when the relay said which.
    pub fn remote_mta(&self) -> Option<&str> {
        self.remote_mta.as_deref()
    }
}

impl fmt::Display for RelayError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.kind {
            Kind::Transient => "transient",
            Kind::Permanent => "permanent",
        };
        write!(f, "{kind} failure: {}", self.reply)
    }
}

impl std::error::Error for RelayError {}

/// The result of one delivery attempt that reached the destination.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delivery {
    reply: Reply,
    per_recipient: Option<Vec<Result<Reply, RelayError>>>,
}

impl Delivery {
    /// Every recipient was delivered; `reply` is the final answer (for
    /// example the remote `250 2.0.0 Ok: queued as X`).
    pub fn all(reply: Reply) -> Self {
        Self {
            reply,
            per_recipient: None,
        }
    }

    /// Recipients had different outcomes; `results` is in the envelope's
    /// recipient order and as long as its recipient list. `reply` is the
    /// final answer of the transaction.
    pub fn per_recipient(reply: Reply, results: Vec<Result<Reply, RelayError>>) -> Self {
        Self {
            reply,
            per_recipient: Some(results),
        }
    }

    /// The final reply of the attempt.
    pub fn reply(&self) -> &Reply {
        &self.reply
    }

    /// The outcome for the recipient at `index` of the attempted envelope. A
    /// missing entry (a relay that returned too few results) is a transient
    /// failure, never a silent success.
    pub fn result_for(&self, index: usize) -> Result<&Reply, RelayError> {
        match &self.per_recipient {
            None => Ok(&self.reply),
            Some(results) => match results.get(index) {
                Some(Ok(reply)) => Ok(reply),
                Some(Err(e)) => Err(e.clone()),
                None => Err(RelayError::transient(Reply::new(
                    451,
                    "4.3.0",
                    "relay reported no result for this recipient",
                ))),
            },
        }
    }
}

/// Delivers envelopes.
pub trait Relay: Send + Sync + 'static {
    /// Attempts delivery of `envelope` to all its recipients. `attempt` counts
    /// from 1; relays may use it to rotate destinations.
    ///
    /// # Errors
    ///
    /// A [`RelayError`] when the whole attempt failed (for example the
    /// destination could not be reached); per-recipient failures are reported
    /// inside [`Delivery`] instead.
    fn attempt(
        &self,
        envelope: &Envelope,
        attempt: u32,
    ) -> impl Future<Output = Result<Delivery, RelayError>> + Send;

    /// The destination the queue schedules `recipient` under (see
    /// [`Destination`]). Recipients of one destination may be attempted
    /// together; the default is one destination for the whole relay.
    fn destination(&self, recipient: &str) -> Destination {
        let _ = recipient;
        Destination::whole_relay()
    }
}

/// The boxed future of [`DynRelay`].
pub type RelayFuture<'a> = Pin<Box<dyn Future<Output = Result<Delivery, RelayError>> + Send + 'a>>;

/// The object-safe form of [`Relay`], for relays chosen at run time.
pub trait DynRelay: Send + Sync + 'static {
    /// Boxed [`Relay::attempt`].
    fn attempt_boxed<'a>(&'a self, envelope: &'a Envelope, attempt: u32) -> RelayFuture<'a>;

    /// [`Relay::destination`].
    fn destination_dyn(&self, recipient: &str) -> Destination;
}

impl<R: Relay> DynRelay for R {
    fn attempt_boxed<'a>(&'a self, envelope: &'a Envelope, attempt: u32) -> RelayFuture<'a> {
        Box::pin(self.attempt(envelope, attempt))
    }

    fn destination_dyn(&self, recipient: &str) -> Destination {
        self.destination(recipient)
    }
}

impl Relay for Box<dyn DynRelay> {
    async fn attempt(&self, envelope: &Envelope, attempt: u32) -> Result<Delivery, RelayError> {
        (**self).attempt_boxed(envelope, attempt).await
    }

    fn destination(&self, recipient: &str) -> Destination {
        (**self).destination_dyn(recipient)
    }
}

impl Relay for Arc<dyn DynRelay> {
    async fn attempt(&self, envelope: &Envelope, attempt: u32) -> Result<Delivery, RelayError> {
        (**self).attempt_boxed(envelope, attempt).await
    }

    fn destination(&self, recipient: &str) -> Destination {
        (**self).destination_dyn(recipient)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification_follows_the_reply() {
        assert!(RelayError::from_reply(Reply::new(550, "5.1.1", "no")).is_permanent());
        assert!(RelayError::from_reply(Reply::new(451, "4.3.0", "later")).is_transient());
        assert!(RelayError::from_reply(Reply::new(999, "", "nonsense")).is_transient());
    }

    #[test]
    fn missing_per_recipient_result_is_transient() {
        let d = Delivery::per_recipient(
            Reply::new(250, "2.0.0", "ok"),
            vec![Ok(Reply::new(250, "", "a"))],
        );
        assert!(d.result_for(0).is_ok());
        assert!(d.result_for(1).unwrap_err().is_transient());
    }

    #[test]
    fn dyn_relay_is_object_safe() {
        let relay: Box<dyn DynRelay> = Box::new(BlackholeRelay::new());
        let _arc: Arc<dyn DynRelay> = Arc::new(BlackholeRelay::new());
        drop(relay);
    }
}
