//! A pool of SMTP sessions to one destination.
//!
//! Opening a session costs a TCP handshake, the banner and EHLO (three round
//! trips, more with TLS); a relay that sends many messages to one host
//! should reuse sessions, as Postfix's connection cache does.
//!
//! Design decisions:
//! - `pool_size` bounds the sessions to the destination, busy and idle
//!   together: a delivery first takes a permit, then an idle session if
//!   there is one, and opens a new session only when there is none. Callers
//!   beyond the limit wait for a permit.
//! - An idle session is reused only within `idle_timeout` of its last use,
//!   only if nothing arrived on it meanwhile (an unsolicited `421` or a close
//!   means the server gave up on it), and only after a `RSET` answered with
//!   2xx; otherwise it is discarded and the next one (or a new one) is tried.
//!   The RSET also ends a transaction a refused DATA may have left open.
//! - A session that saw an error, a timeout or a 421 is never returned to
//!   the pool.
//! - An `idle_timeout` of zero disables reuse: every session ends with QUIT
//!   right after its transaction (python-slimta's default).
//! - Expired idle sessions are closed with QUIT by a reaper task that runs
//!   only while the pool holds idle sessions and ends when the pool is gone.
//! - The most recently used session is reused first, so surplus sessions
//!   age out instead of all being kept barely alive.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use super::connection::Connection;

struct Idle {
    connection: Connection,
    since: Instant,
}

/// Sessions to one destination.
pub(crate) struct Pool {
    permits: Arc<Semaphore>,
    idle: Mutex<Vec<Idle>>,
    idle_timeout: Duration,
    reaper_running: AtomicBool,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("available_permits", &self.permits.available_permits())
            .field("idle_timeout", &self.idle_timeout)
            .finish_non_exhaustive()
    }
}

impl Pool {
    pub(crate) fn new(size: usize, idle_timeout: Duration) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(size.clamp(1, Semaphore::MAX_PERMITS))),
            idle: Mutex::new(Vec::new()),
            idle_timeout,
            reaper_running: AtomicBool::new(false),
        }
    }

    /// Waits until one more session to the destination is allowed.
    pub(crate) async fn permit(&self) -> OwnedSemaphorePermit {
        self.permits
            .clone()
            .acquire_owned()
            .await
            .expect("the pool's semaphore is never closed")
    }

    fn pop(&self) -> Option<Idle> {
        self.idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop()
    }

    /// A quiet, reset idle session, if there is one.
    pub(crate) async fn take_idle(&self) -> Option<Connection> {
        while let Some(Idle {
            mut connection,
            since,
        }) = self.pop()
        {
            if since.elapsed() >= self.idle_timeout || !connection.is_quiet() {
                tokio::spawn(connection.quit());
                continue;
            }
            if connection.rset().await {
                return Some(connection);
            }
            tracing::debug!(peer = connection.peer(), "idle SMTP session failed RSET");
            tokio::spawn(connection.quit());
        }
        None
    }

    /// Keeps `connection` for reuse when it may be reused, else ends it.
    pub(crate) async fn release(self: &Arc<Self>, connection: Connection) {
        if self.idle_timeout.is_zero() || !connection.is_reusable() {
            connection.quit().await;
            return;
        }
        self.idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(Idle {
                connection,
                since: Instant::now(),
            });
        if !self.reaper_running.swap(true, Ordering::AcqRel) {
            tokio::spawn(reap(Arc::downgrade(self), self.idle_timeout));
        }
    }
}

/// Closes expired idle sessions until the pool has none left (or is gone).
async fn reap(pool: Weak<Pool>, idle_timeout: Duration) {
    loop {
        tokio::time::sleep(idle_timeout).await;
        let Some(pool) = pool.upgrade() else { return };
        let (expired, done) = {
            let mut idle = pool.idle.lock().unwrap_or_else(PoisonError::into_inner);
            let (expired, kept): (Vec<Idle>, Vec<Idle>) = std::mem::take(&mut *idle)
                .into_iter()
                .partition(|i| i.since.elapsed() >= idle_timeout);
            *idle = kept;
            // Lowered under the lock: a later release sees the flag down and
            // starts a new reaper.
            let done = idle.is_empty();
            if done {
                pool.reaper_running.store(false, Ordering::Release);
            }
            (expired, done)
        };
        drop(pool);
        for i in expired {
            i.connection.quit().await;
        }
        if done {
            return;
        }
    }
}
