//! The object-store operations cloud storage is built on.
//!
//! Decision: only four operations, and the only write is create-only
//! (`If-None-Match: *` on S3 and Swift). A record that changes (the
//! metadata of a message) is written as a new object with the next
//! sequence number in its name, never as an overwrite: two processes
//! racing on one record both try to create the same name and exactly one
//! wins, on every store, with no store-specific conditional-update
//! support needed. Listing a prefix is the only query.

use std::future::Future;
use std::io;
use std::pin::Pin;

/// A boxed future of an [`ObjectBackend`].
pub type ObjectFuture<'a, T> = Pin<Box<dyn Future<Output = io::Result<T>> + Send + 'a>>;

/// An object store (a bucket or container) holding the queue's objects.
///
/// Errors are [`io::Error`]s whose kind the queue acts on:
/// [`io::ErrorKind::NotFound`] (no such object), [`io::ErrorKind::AlreadyExists`]
/// (a create-only put lost the race), and the connection kinds
/// (`ConnectionRefused`, `TimedOut`, ...) when the store cannot be reached,
/// which make the edge answer `451 4.3.0`. Every call has a timeout.
pub trait ObjectBackend: Send + Sync + 'static {
    /// Creates `key` with `body`; fails with `AlreadyExists` if it exists.
    /// Durable when it returns `Ok`.
    fn put_new<'a>(&'a self, key: &'a str, body: Vec<u8>) -> ObjectFuture<'a, ()>;

    /// The whole object; `NotFound` if there is none.
    fn get<'a>(&'a self, key: &'a str) -> ObjectFuture<'a, Vec<u8>>;

    /// Deletes `key`; deleting a missing object is not an error.
    fn delete<'a>(&'a self, key: &'a str) -> ObjectFuture<'a, ()>;

    /// Every key that starts with `prefix` (all pages), in any order.
    fn list<'a>(&'a self, prefix: &'a str) -> ObjectFuture<'a, Vec<String>>;
}
