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
//!
//! On top: [`CloudStorage`] (`storage.rs`, the queue's storage over any
//! object backend) and [`CloudDispatch`] (`dispatch.rs`, the queue's
//! dispatcher over any notifier, for many processes). [`MemoryObjects`]
//! (`memory.rs`) is an in-memory backend for unit tests.

pub mod credentials;
pub mod dispatch;
mod http;
pub mod memory;
pub mod notify;
pub mod object;
pub mod s3;
pub mod sqs;
pub mod storage;
pub mod swift;
pub mod zaqar;

pub use dispatch::CloudDispatch;
pub use memory::MemoryObjects;
pub use notify::{Notice, Notifier};
pub use object::ObjectBackend;
pub use s3::{S3Backend, S3Settings};
pub use sqs::{SqsNotifier, SqsSettings};
pub use storage::CloudStorage;
pub use swift::{SwiftBackend, SwiftCredentials};
pub use zaqar::ZaqarNotifier;
