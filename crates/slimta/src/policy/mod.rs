//! Policies: code that changes or judges an envelope on its way through the
//! queue.
//!
//! Two hooks, as in python-slimta:
//!
//! - A [`QueuePolicy`] runs once, in [`Handoff::handoff`](crate::Handoff),
//!   *before* the envelope is stored. It may rewrite the envelope (add
//!   headers, rewrite recipients), split it into several envelopes (one per
//!   domain, say; each is stored and delivered separately), drop it (return no
//!   envelope) or refuse it with a [`Reply`] that the edge passes on.
//! - A [`RelayPolicy`] runs before every delivery attempt on a *copy* of the
//!   stored envelope, holding only the recipients still pending. Its changes
//!   are never stored, so it suits per-attempt work such as signing. It must
//!   not add or remove recipients (the queue maps the relay's per-recipient
//!   results back by position; an attempt whose recipient count changed is
//!   treated as a transient failure). An error fails the whole attempt, like
//!   a [`RelayError`] from the relay.
//!
//! Design decisions:
//! - Native async traits; the queue keeps a run-time list of policies, so
//!   each trait has an object-safe boxed twin ([`DynQueuePolicy`],
//!   [`DynRelayPolicy`]) with a blanket implementation, like
//!   [`DynRelay`](crate::DynRelay).
//! - Plain closures are policies too (`Fn(Envelope) -> Result<Vec<Envelope>,
//!   Reply>` and `Fn(&mut Envelope) -> Result<(), RelayError>`), for the many
//!   policies that need no I/O.

#[cfg(feature = "auth")]
pub mod arc_seal;
#[cfg(feature = "auth")]
pub mod auth_results;
#[cfg(feature = "auth")]
pub mod authenticate;
#[cfg(feature = "auth")]
pub mod dkim_key;
#[cfg(feature = "auth")]
pub mod dkim_sign;
pub mod forward;
pub mod headers;
pub mod milter;
#[cfg(feature = "rspamd")]
pub mod rspamd;
pub mod spam_headers;
pub mod spamassassin;
pub mod split;

use std::future::Future;
use std::pin::Pin;

use crate::envelope::Envelope;
use crate::relay::RelayError;
use crate::reply::Reply;

/// A boxed policy future, for the object-safe policy traits.
pub type PolicyFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Runs on every envelope before the queue stores it.
pub trait QueuePolicy: Send + Sync + 'static {
    /// Rewrites, splits, drops or refuses `envelope`.
    ///
    /// # Errors
    ///
    /// A [`Reply`] (for example `550 5.7.1 Message refused`) refuses the
    /// envelope; nothing is stored and the edge answers with that reply.
    fn apply(
        &self,
        envelope: Envelope,
    ) -> impl Future<Output = Result<Vec<Envelope>, Reply>> + Send;
}

impl<F> QueuePolicy for F
where
    F: Fn(Envelope) -> Result<Vec<Envelope>, Reply> + Send + Sync + 'static,
{
    fn apply(
        &self,
        envelope: Envelope,
    ) -> impl Future<Output = Result<Vec<Envelope>, Reply>> + Send {
        std::future::ready(self(envelope))
    }
}

/// The object-safe form of [`QueuePolicy`].
pub trait DynQueuePolicy: Send + Sync + 'static {
    /// Boxed [`QueuePolicy::apply`].
    fn apply_boxed(&self, envelope: Envelope) -> PolicyFuture<'_, Result<Vec<Envelope>, Reply>>;
}

impl<P: QueuePolicy> DynQueuePolicy for P {
    fn apply_boxed(&self, envelope: Envelope) -> PolicyFuture<'_, Result<Vec<Envelope>, Reply>> {
        Box::pin(self.apply(envelope))
    }
}

/// Runs on a copy of the envelope before every delivery attempt.
pub trait RelayPolicy: Send + Sync + 'static {
    /// Changes the copy that this attempt delivers.
    ///
    /// # Errors
    ///
    /// A [`RelayError`] fails the whole attempt for every recipient in it:
    /// transient errors are retried with backoff, permanent ones bounce.
    fn apply(&self, envelope: &mut Envelope)
    -> impl Future<Output = Result<(), RelayError>> + Send;
}

impl<F> RelayPolicy for F
where
    F: Fn(&mut Envelope) -> Result<(), RelayError> + Send + Sync + 'static,
{
    fn apply(
        &self,
        envelope: &mut Envelope,
    ) -> impl Future<Output = Result<(), RelayError>> + Send {
        std::future::ready(self(envelope))
    }
}

/// The object-safe form of [`RelayPolicy`].
pub trait DynRelayPolicy: Send + Sync + 'static {
    /// Boxed [`RelayPolicy::apply`].
    fn apply_boxed<'a>(
        &'a self,
        envelope: &'a mut Envelope,
    ) -> PolicyFuture<'a, Result<(), RelayError>>;
}

impl<P: RelayPolicy> DynRelayPolicy for P {
    fn apply_boxed<'a>(
        &'a self,
        envelope: &'a mut Envelope,
    ) -> PolicyFuture<'a, Result<(), RelayError>> {
        Box::pin(self.apply(envelope))
    }
}

/// A policy chosen at run time (a program's configuration) is a policy.
impl QueuePolicy for std::sync::Arc<dyn DynQueuePolicy> {
    fn apply(
        &self,
        envelope: Envelope,
    ) -> impl Future<Output = Result<Vec<Envelope>, Reply>> + Send {
        (**self).apply_boxed(envelope)
    }
}

/// A policy chosen at run time (a program's configuration) is a policy.
impl RelayPolicy for std::sync::Arc<dyn DynRelayPolicy> {
    async fn apply(&self, envelope: &mut Envelope) -> Result<(), RelayError> {
        (**self).apply_boxed(envelope).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[allow(clippy::needless_pass_by_value)] // the policy signature takes ownership
    fn split_by_recipient(envelope: Envelope) -> Result<Vec<Envelope>, Reply> {
        Ok(envelope
            .recipients
            .iter()
            .map(|r| envelope.with_recipients(vec![r.clone()]))
            .collect())
    }

    #[test]
    fn policies_stay_object_safe() {
        let queue: Vec<Box<dyn DynQueuePolicy>> = vec![Box::new(split_by_recipient)];
        let relay: Vec<Box<dyn DynRelayPolicy>> = vec![Box::new(|e: &mut Envelope| {
            e.prepend_header("X-Test", "1");
            Ok(())
        })];
        assert_eq!((queue.len(), relay.len()), (1, 1));
    }

    #[tokio::test]
    async fn closures_are_policies() {
        let policy: Box<dyn DynQueuePolicy> = Box::new(split_by_recipient);
        let env = Envelope::new("a@x", vec!["b@y".into(), "c@z".into()], b"\r\n".to_vec());
        let parts = policy.apply_boxed(env).await.unwrap();
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[1].recipients, vec!["c@z".to_string()]);

        let relay: Box<dyn DynRelayPolicy> = Box::new(|e: &mut Envelope| {
            e.prepend_header("X-Test", "1");
            Ok(())
        });
        let mut copy = parts[0].clone();
        relay.apply_boxed(&mut copy).await.unwrap();
        assert!(copy.message.starts_with(b"X-Test: 1\r\n"));
    }
}
