//! Configurable kinds: one file per `type = "..."` that reads its own TOML
//! keys and builds its library object, listed in one table per section.
//!
//! Why: a new kind of policy should be one new file and one table line,
//! with no `match` to grow elsewhere (the config reader, the checker and
//! the builder all go through the table). `policy/` is organised this way:
//! `[policy.NAME]` sections and the names listed in a queue's `policies`
//! and `relay_policies`. Storages, relays and edge checks still live in
//! `config.rs` / `build.rs` as enums; they move here the same way.

pub mod policy;
