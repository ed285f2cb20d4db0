//! Configurable kinds: one file per `type = "..."` that reads its own TOML
//! keys and builds its library object, listed in one table per section.
//!
//! Why: a new kind should be one new file and one table line, with no
//! `match` to grow elsewhere (the config reader, the checker and the
//! builder all go through the table). Organised this way: `storage/` (the
//! `type` of a `[queue.NAME]` and its keys), `relay/` (`[relay.NAME]`
//! sections), `policy/` (`[policy.NAME]` sections and the names listed in a
//! queue's `policies` and `relay_policies`) and `check/` (`[check.NAME]`
//! sections and the names listed in an edge's `checks`); `sections.rs` is
//! the reading they share.

pub mod check;
pub mod policy;
pub mod relay;
pub mod sections;
pub mod storage;
