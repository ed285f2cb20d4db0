//! The shared storage conformance suite against a real redis-server on
//! loopback (appendfsync always, scratch directory), one key prefix per
//! check; `reopen` opens a new `RedisStorage` (a new connection) on the
//! same prefix.

mod common;

use slimta_redis::RedisStorage;
use slimta_storage_suite::{Fixture, storage_conformance};

fn fixture() -> Fixture<RedisStorage> {
    let server = common::server();
    let options = common::options(&server.url());
    let storage = RedisStorage::open(&options).expect("options");
    Fixture {
        storage,
        reopen: Some(Box::new(move |old: RedisStorage| {
            drop(old);
            RedisStorage::open(&options).expect("options")
        })),
        guard: Box::new(server),
    }
}

storage_conformance!(fixture());
