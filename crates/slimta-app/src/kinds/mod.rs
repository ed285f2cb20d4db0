//! Configurable kinds: one file per `type = "..."` that reads its own TOML
//! keys and builds its library object, listed in one table per section.
//!
//! Why: a new kind of policy should be one new file and one table line,
//! with no `match` to grow elsewhere (the config reader, the checker and
//! the builder all go through the table). Organised this way: `policy/`
//! (`[policy.NAME]` sections and the names listed in a queue's `policies`
//! and `relay_policies`) and `check/` (`[check.NAME]` sections and the
//! names listed in an edge's `checks`).
//!
//! Not yet: storages (`queue.NAME.type`) and relays (`relay.NAME.type`)
//! still live in `config.rs` / `build.rs` as enums, and the app holds its
//! queues as an enum of the two storage types; they move here the same way
//! (one file per kind under `kinds/storage/` and `kinds/relay/`, a table
//! line each, queues held as trait objects).

pub mod check;
pub mod policy;
pub mod sections;
