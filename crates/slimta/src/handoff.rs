//! The narrow door between an edge and a queue.
//!
//! An edge must not know what a queue is (the parts stay
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

/// The one reply an SMTP or HTTP edge gives for the queue's answer: `250
/// 2.6.0 Message queued as ID[, ID...]` when every part is durable,
/// otherwise the first failed part's reply (the client retries all of it;
/// see the module docs).
pub fn queued_reply(results: &[HandoffResult]) -> Reply {
    if let Some(failure) = results.iter().find_map(|r| r.result.as_ref().err()) {
        return failure.clone();
    }
    if results.is_empty() {
        return Reply::new(
            451,
            "4.3.0",
            "Message was not queued (no part left after policies)",
        );
    }
    let ids: Vec<&str> = results
        .iter()
        .filter_map(|r| r.result.as_deref().ok())
        .collect();
    Reply::new(
        250,
        "2.6.0",
        format!("Message queued as {}", ids.join(", ")),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queued_reply_needs_every_part() {
        let ok = |id: &str| HandoffResult {
            recipients: vec!["a@x".into()],
            result: Ok(id.into()),
        };
        assert_eq!(
            queued_reply(&[ok("A"), ok("B")]).to_string(),
            "250 2.6.0 Message queued as A, B"
        );
        let full = Reply::new(452, "4.3.1", "Insufficient system storage");
        let failed = HandoffResult {
            recipients: vec!["b@x".into()],
            result: Err(full.clone()),
        };
        assert_eq!(queued_reply(&[ok("A"), failed]), full);
        assert_eq!(queued_reply(&[]).code(), 451);
    }
}
