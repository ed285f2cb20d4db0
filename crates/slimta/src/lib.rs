//! slimta: a mail transfer agent toolkit.
//!
//! Mail arrives at an **edge** (SMTP, LMTP, HTTP), a **queue** takes durable
//! responsibility for it, a **relay** delivers it, and **policies** change or
//! judge it on the way. Each piece is a type you compose:
//!
//! - [`edge`]: listeners and sessions that turn client transactions into
//!   [`Envelope`]s and hand them to a [`Handoff`] (normally a queue).
//! - [`queue`]: durable storage, scheduling, retries.
//! - [`relay`]: delivery attempts with per-recipient results.
//! - [`smtp`]: the protocol itself, without I/O.
#![warn(missing_docs)]

pub mod bounce;
pub mod date;
#[cfg(feature = "mx")]
pub mod dns;
pub mod edge;
pub mod envelope;
pub mod handoff;
pub mod policy;
pub mod queue;
pub mod relay;
pub mod reply;
pub mod smtp;

pub use envelope::{BodyType, ClientInfo, Envelope, Protocol, TlsInfo};
pub use handoff::{Handoff, HandoffResult};
pub use relay::{Delivery, DynRelay, Relay, RelayError};
pub use reply::{EnhancedCode, Reply};
