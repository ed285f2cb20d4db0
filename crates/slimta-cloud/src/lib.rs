//! Queue storage in an object store, with an optional message queue that
//! announces work to relay processes elsewhere: python-slimta's cloud
//! storage (AWS S3 + SQS; Rackspace Cloud Files + Cloud Queues, whose open
//! implementations are OpenStack Swift and Zaqar).
//!
//! The two halves are traits, so every store works with every notifier:
//! - [`ObjectBackend`] (`object.rs`): the four object operations the storage
//!   needs (create-only put, get, delete, list by prefix). Create-only puts
//!   are the only writes, so two processes can never silently overwrite
//!   each other's record.
//! - [`Notifier`] (`notify.rs`): a message queue with visibility timeouts
//!   or claims, which are the leases of a shared queue.

mod http;
pub mod notify;
pub mod object;
pub mod swift;
pub mod zaqar;

pub use notify::{Notice, Notifier};
pub use object::ObjectBackend;
pub use swift::{SwiftBackend, SwiftCredentials};
pub use zaqar::ZaqarNotifier;
