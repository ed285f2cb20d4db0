//! A slimta queue in Redis: [`RedisStorage`] keeps the messages,
//! [`RedisDispatch`] hands them out to any number of slimta processes
//! sharing one Redis server, each message to one process at a time.
//!
//! Data model, under a configurable key prefix (`slimta:` in the app):
//!
//! - `{prefix}msg:{id}`: one hash per message. `env` is the envelope in
//!   the project's own versioned binary record
//!   ([`slimta::queue::codec::encode_envelope`]), written once; beside it
//!   plain fields a script can update in place: `due` (the next attempt,
//!   nanoseconds since the epoch), `attempts`, `delivered` (sorted
//!   recipient indices, comma-separated), `error`, `warned`, `rcpts` (the
//!   stored recipient count), `received` (for statistics without reading
//!   the envelope), and while an attempt runs `lease` (`owner:expiry-ms`)
//!   and `retry` (an operator's "retry now" during the attempt).
//! - `{prefix}due`: a sorted set of every message id, scored in
//!   milliseconds with the time any process may next take it: its due time,
//!   or the end of its lease while one holds it. A process that dies
//!   holding a lease needs no clean-up: the score is simply reached and the
//!   message is taken again.
//!
//! Why so:
//! - Durability is Redis's: every method returns once Redis answered, and
//!   with `appendonly yes` and `appendfsync always` Redis answers a write
//!   only after it is fsync'd to its append-only file. **The operator must
//!   configure Redis so**; with `appendfsync everysec` (Redis's default
//!   when AOF is on) a crash of the Redis host loses up to a second of
//!   acknowledged mail, and with no AOF everything since the last RDB
//!   snapshot. slimta cannot check this (a managed Redis may forbid
//!   `CONFIG GET`), so it does not try.
//! - Every multi-key step is atomic (MULTI/EXEC or a Lua script) and one
//!   round trip: a write, an attempt's record (the script applies the
//!   outcome to the hash fields, which is why the metadata is not one
//!   opaque record), a removal, a lease.
//! - Start-up and listing use `SCAN`, never `KEYS`, so a big queue does
//!   not block the shared server.
//! - Every call has a timeout, and failures map to the [`std::io`] kinds
//!   the queue knows (`ConnectionRefused`, `TimedOut`, `ConnectionReset`,
//!   ...), so the edge answers new mail `451 4.3.0` while Redis is away and
//!   the queue retries its records later. The connection is re-established
//!   in the background ([`redis::aio::ConnectionManager`]); nothing panics
//!   or spins while Redis is down.
//! - One Redis server, not a cluster: the scripts name keys they compute.
//! - `rediss://` is TLS through rustls with the aws-lc-rs provider (the
//!   workspace's only one), verified against the system's roots or a
//!   private CA ([`RedisOptions::tls_ca`]).

#![warn(missing_docs)]

mod dispatch;
mod link;
mod storage;

pub use dispatch::{IDLE_POLL, RedisDispatch};
pub use link::{RedisOptions, RedisOptionsError, redact};
pub use storage::RedisStorage;
