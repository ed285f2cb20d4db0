//! One redis-server for the tests of a binary, shared while any test holds
//! it (a static would never be dropped, leaving the server running after
//! the tests), and a fresh key prefix per test.

#![allow(dead_code, unreachable_pub)]

use std::sync::{Arc, Mutex, PoisonError, Weak};

use slimta_redis::RedisOptions;
use test_peers::RedisServer;

/// The shared server, started if no test holds it.
pub fn server() -> Arc<RedisServer> {
    static SERVER: Mutex<Weak<RedisServer>> = Mutex::new(Weak::new());
    let mut shared = SERVER.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(server) = shared.upgrade() {
        return server;
    }
    let server = Arc::new(RedisServer::start());
    *shared = Arc::downgrade(&server);
    server
}

/// Options for `url` with a prefix no other test uses.
pub fn options(url: &str) -> RedisOptions {
    RedisOptions::new(url).prefix(format!("t{}:", uuid::Uuid::new_v4().simple()))
}
