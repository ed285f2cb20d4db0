//! The queue: takes responsibility for envelopes and sees them delivered.
//!
//! (Filled in by the queue work: `Queue`, scheduling, retries, policies.)

pub mod storage;

pub use storage::{DynStorage, QueueMeta, QueueStorage, StoredEnvelope};
