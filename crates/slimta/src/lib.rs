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
//!
//! The shortest composition: an SMTP edge handing messages to a memory
//! queue that relays them to one smart host (`examples/` has an MTA, an
//! MSA and an MDA built the same way).
//!
//! ```no_run
//! use slimta::edge::SmtpEdge;
//! use slimta::queue::{MemoryStorage, Queue};
//! use slimta::relay::smtp::StaticSmtpRelay;
//!
//! # async fn run() -> std::io::Result<()> {
//! let queue = Queue::new(MemoryStorage::new(), StaticSmtpRelay::new("smtp.example.com", 25));
//! queue.start().await?;
//! let edge = SmtpEdge::new("mx.example.com", queue);
//! let listener = tokio::net::TcpListener::bind("0.0.0.0:25").await?;
//! let (_stop, stop_rx) = tokio::sync::watch::channel(false);
//! edge.serve(listener, stop_rx).await; // until `_stop.send(true)`
//! # Ok(())
//! # }
//! ```
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
pub mod reply_template;
pub mod smtp;

pub use envelope::{BodyType, ClientInfo, Envelope, Protocol, TlsInfo};
pub use handoff::{Handoff, HandoffResult};
pub use relay::{Delivery, DynRelay, Relay, RelayError};
pub use reply::{EnhancedCode, Reply};
