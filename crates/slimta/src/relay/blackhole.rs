//! A relay that accepts everything and delivers nothing.
//!
//! Useful for benchmarks of the intake path and for test setups. Every
//! attempt succeeds with `250 2.0.0 Message discarded`.

use std::future::Future;

use crate::envelope::Envelope;
use crate::reply::Reply;

use super::{Delivery, Relay, RelayError};

/// Discards every message successfully.
#[derive(Clone, Copy, Debug, Default)]
pub struct BlackholeRelay;

impl BlackholeRelay {
    /// A new blackhole.
    pub fn new() -> Self {
        Self
    }
}

impl Relay for BlackholeRelay {
    fn attempt(
        &self,
        _envelope: &Envelope,
        _attempt: u32,
    ) -> impl Future<Output = Result<Delivery, RelayError>> + Send {
        std::future::ready(Ok(Delivery::all(Reply::new(
            250,
            "2.0.0",
            "Message discarded",
        ))))
    }
}
