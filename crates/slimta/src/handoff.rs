//! The narrow door between an edge and a queue.
//!
//! An edge must not know what a queue is (DESIGN.md: the parts stay
//! swappable), so it hands finished envelopes to anything that implements
//! [`Handoff`]. The queue implements it; a test can implement it with a
//! channel.
//!
//! Queue policies may split one envelope into several (one per recipient
//! domain, say), each stored separately, so the answer is one
//! [`HandoffResult`] per stored part. An SMTP edge answers `250` only if every
//! part was taken: if one part failed it answers that part's error, so the
//! client retries all of it. That may duplicate the parts that were stored,
//! but never loses the part that was not (at-least-once). An LMTP edge
//! answers each recipient with the result of the part that holds it.

use std::future::Future;

use crate::envelope::Envelope;
use crate::reply::Reply;

/// The outcome of storing one part of a handed-off envelope.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HandoffResult {
    /// The recipients of this part.
    pub recipients: Vec<String>,
    /// The queue id if the part is now durable, or the reply explaining why not
    /// (for example `452 4.3.1` when the disk is full).
    pub result: Result<String, Reply>,
}

/// Something that takes responsibility for envelopes: a queue.
pub trait Handoff: Send + Sync + 'static {
    /// Takes responsibility for `envelope`. Returns only when every part is
    /// durable or has failed; a success must never be reported for a part that
    /// a crash right after the return could lose.
    fn handoff(&self, envelope: Envelope) -> impl Future<Output = Vec<HandoffResult>> + Send;
}

impl<H: Handoff> Handoff for std::sync::Arc<H> {
    fn handoff(&self, envelope: Envelope) -> impl Future<Output = Vec<HandoffResult>> + Send {
        (**self).handoff(envelope)
    }
}
