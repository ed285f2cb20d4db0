//! [`Destination`]: the key the queue schedules deliveries under.
//!
//! The queue keeps one line of due messages per destination and limits the
//! attempts in flight to each (see `queue/destinations.rs`), so that one
//! slow or dead destination cannot hold every delivery slot. Only the relay
//! knows what a destination is: the MX relay delivers by recipient domain,
//! the static SMTP and LMTP relays to one host each, a pipe or HTTP relay to
//! one program or service. [`Relay::destination`](super::Relay::destination)
//! names the destination of one recipient.
//!
//! Design decisions:
//! - A destination is an opaque, cheaply cloned string: the scheduler
//!   compares and hashes it and shows it to operators (`slimta queue
//!   stats`), nothing more. It is one thin pointer (`Arc<String>`, not the
//!   two words of an `Arc<str>`) because the queue's index keeps one per
//!   queued message.
//! - Keys are what a relay can tell *before* an attempt, from the
//!   recipient alone. The MX relay therefore keys by domain, not by
//!   exchanger (that needs a DNS answer): domains that share an exchanger
//!   are limited one by one, and share that exchanger's session pool.

use std::fmt;
use std::sync::Arc;

/// Where a recipient is delivered to, as far as the queue's scheduling is
/// concerned (see the module docs).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Destination(Arc<String>);

impl Destination {
    /// A destination named `key` (compared exactly: lower-case domains
    /// before making them keys).
    pub fn new(key: impl Into<String>) -> Self {
        Self(Arc::new(key.into()))
    }

    /// The one destination of a relay that delivers everything to the same
    /// place (a program, an HTTP service, nowhere).
    pub fn whole_relay() -> Self {
        // Asked for once per queued message: one shared value, no
        // allocation per call.
        static WHOLE: std::sync::OnceLock<Destination> = std::sync::OnceLock::new();
        WHOLE.get_or_init(|| Self::new("*")).clone()
    }

    /// The key.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Destination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Destination({:?})", self.0.as_str())
    }
}

impl fmt::Display for Destination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
