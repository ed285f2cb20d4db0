//! [`RedisDispatch`]: who attempts what next, for any number of slimta
//! processes sharing one Redis.
//!
//! The due set (`{prefix}due`, see the crate docs) is the schedule. Taking
//! a message is one Lua script: the earliest member whose score is due,
//! its score moved to the end of a lease (`now + lease`) and the lease's
//! owner written into the message hash, atomically, so two processes never
//! take the same message at once. When the attempt ends, its owner sets
//! the score to the next due time ([`AttemptEnd::RetryAt`]), or the member
//! is gone with the message ([`AttemptEnd::Done`]). A process that dies
//! holding leases needs nobody to notice: their scores come due at the
//! lease's end and another process takes them.
//!
//! Decisions:
//! - At least once, not exactly once: an attempt that outlasts its lease
//!   (a slow relay) may be taken by a second process, which then delivers
//!   to the recipients the first has not recorded yet; both may deliver the
//!   same recipient. The lease must be longer than an attempt can take
//!   (the relay's timeouts); the owner check in the end script keeps the
//!   late first process from moving the second one's score.
//! - No busy polling: when nothing is due, the dispatcher sleeps until the
//!   earliest score, at most [`IDLE_POLL`] (new mail taken in by *another*
//!   process is seen within that time; mail taken in by this process wakes
//!   it at once). A Redis that is away is retried with a growing pause (up
//!   to 5 s), logged once per outage.
//! - Per-destination limits (the local dispatcher's lines, slow start, dead
//!   destinations) are not kept: every message is admitted, and each
//!   process's `max_concurrency` bounds its attempts. Limits shared by
//!   several processes would need counters in Redis per destination.
//! - [`Dispatch::add`] changes nothing for a stored message: the storage's
//!   write put it in the due set already (a process that crashed right
//!   after the write must not leave it unscheduled), so `add` of a new
//!   message answers `false` and the queue reads it from Redis for its
//!   first attempt rather than from its memory, which another process may
//!   have made stale.
//! - [`Dispatch::waiting`] is the due set's size as last seen by this
//!   process: every process's messages, in flight ones included.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, SystemTime};

use slimta::queue::clock;
use slimta::queue::{AttemptEnd, Dispatch, Lease, Placement};
use slimta::relay::Destination;

use crate::link::{Link, RedisOptions, RedisOptionsError};
use crate::storage::{LEASED_LUA, millis};

/// The longest sleep while nothing is due: how soon mail taken in by
/// another process is seen.
pub const IDLE_POLL: Duration = Duration::from_millis(250);

/// KEYS: due set. ARGV: message key prefix, now ms, lease end ms, owner.
/// Returns {id, lease end, size} for a taken message, or {'', earliest
/// score or '', size} when nothing is due.
static TAKE: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
local size = 0
for _ = 1, 16 do
  local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[2], 'LIMIT', 0, 1)
  size = redis.call('ZCARD', KEYS[1])
  if #due == 0 then
    local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
    return {'', first[2] or '', tostring(size)}
  end
  local id = due[1]
  local key = ARGV[1] .. id
  if redis.call('EXISTS', key) == 1 then
    redis.call('ZADD', KEYS[1], ARGV[3], id)
    redis.call('HSET', key, 'lease', ARGV[4] .. ':' .. ARGV[3])
    return {id, ARGV[3], tostring(size)}
  end
  -- A member without its message (removed outside slimta): dropped.
  redis.call('ZREM', KEYS[1], id)
end
return {'', ARGV[2], tostring(size)}
",
    )
});

/// KEYS: message hash, due set. ARGV: id, owner, due ms. Sets the score if
/// the lease is this owner's (or nobody's).
static END_RETRY: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('ZREM', KEYS[2], ARGV[1])
  return 0
end
local l = redis.call('HGET', KEYS[1], 'lease')
if l and string.sub(l, 1, #ARGV[2] + 1) ~= ARGV[2] .. ':' then return 0 end
redis.call('HDEL', KEYS[1], 'lease')
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
return 1
",
    )
});

/// KEYS: message hash, due set. ARGV: id. Drops the member of a message
/// that is gone.
static END_GONE: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
if redis.call('EXISTS', KEYS[1]) == 0 then return redis.call('ZREM', KEYS[2], ARGV[1]) end
return 0
",
    )
});

/// KEYS: message hash, due set. ARGV: id, due ms. 1 if the member was
/// added (a stored message missing from the due set).
static ADD: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
return redis.call('ZADD', KEYS[2], 'NX', ARGV[2], ARGV[1])
",
    )
});

/// KEYS: message hash, due set. ARGV: id, now ms, 'retry' or 'delete'.
/// Returns where the message stood: 'unknown', 'inflight', 'waiting'.
static OPERATE: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(&format!(
        "{LEASED_LUA}{}",
        r"
if not redis.call('ZSCORE', KEYS[2], ARGV[1]) or redis.call('EXISTS', KEYS[1]) == 0 then
  return 'unknown'
end
if leased(KEYS[1], ARGV[2]) then
  if ARGV[3] == 'retry' then redis.call('HSET', KEYS[1], 'retry', '1') end
  return 'inflight'
end
if ARGV[3] == 'retry' then
  redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
else
  redis.call('ZREM', KEYS[2], ARGV[1])
end
return 'waiting'
"
    ))
});

/// Hands out the messages of a [`crate::RedisStorage`] with the same
/// options, to this process and every other one on the same Redis and
/// prefix (see the module docs).
#[derive(Debug)]
pub struct RedisDispatch {
    link: Link,
    /// This dispatcher's name in leases.
    owner: String,
    lease: Duration,
    /// Mail taken in here is due at once.
    wake: tokio::sync::Notify,
    waiting: AtomicUsize,
}

/// What the take script found.
enum Taken {
    Lease(Lease),
    /// Nothing due; the earliest due time, if any.
    Nothing(Option<SystemTime>),
}

impl RedisDispatch {
    /// A dispatcher over the Redis of `options`, leasing messages for
    /// [`RedisOptions::lease`]. Does not connect until used.
    ///
    /// # Errors
    ///
    /// When the options are not usable (see [`RedisOptionsError`]).
    pub fn open(options: &RedisOptions) -> Result<Arc<Self>, RedisOptionsError> {
        let owner = uuid::Uuid::new_v4().simple().to_string();
        tracing::info!(owner = %owner, lease = ?options.lease_time(), prefix = %options.key_prefix(), "redis dispatch opened");
        Ok(Arc::new(Self {
            link: options.link()?,
            owner,
            lease: options.lease_time(),
            wake: tokio::sync::Notify::new(),
            waiting: AtomicUsize::new(0),
        }))
    }

    async fn take(&self) -> std::io::Result<Taken> {
        let now = clock::now();
        let end = now + self.lease;
        let mut invocation = TAKE.prepare_invoke();
        invocation
            .key(&self.link.keys.due)
            .arg(self.link.keys.message_prefix())
            .arg(millis(now).to_string())
            .arg(millis(end).to_string())
            .arg(&self.owner);
        let (id, score, size): (String, String, String) = self.link.script(&invocation).await?;
        self.waiting
            .store(size.parse().unwrap_or(0), Ordering::Relaxed);
        let at = |score: &str| {
            // Scores are whole milliseconds (a float only if set by hand).
            score
                .parse::<f64>()
                .ok()
                .filter(|s| s.is_finite() && *s >= 0.0)
                .map(|ms| SystemTime::UNIX_EPOCH + Duration::from_millis(ms as u64))
        };
        if id.is_empty() {
            return Ok(Taken::Nothing(at(&score)));
        }
        Ok(Taken::Lease(Lease {
            id,
            expires: at(&score).or(Some(end)),
            destination: None,
            defer: None,
        }))
    }

    async fn operate(&self, id: &str, what: &str) -> Placement {
        let mut invocation = OPERATE.prepare_invoke();
        invocation
            .key(self.link.keys.message(id))
            .key(&self.link.keys.due)
            .arg(id)
            .arg(millis(clock::now()).to_string())
            .arg(what);
        match self.link.script::<String>(&invocation).await {
            Ok(placed) if placed == "waiting" => Placement::Waiting,
            Ok(placed) if placed == "inflight" => Placement::InFlight,
            Ok(_) => Placement::Unknown,
            Err(e) => {
                tracing::warn!(id = %id, error = %e, "redis dispatch: cannot {what} a message");
                Placement::Unknown
            }
        }
    }
}

impl Dispatch for RedisDispatch {
    async fn add(&self, id: String, due: SystemTime, destination: Option<Destination>) -> bool {
        let _ = destination;
        let mut invocation = ADD.prepare_invoke();
        invocation
            .key(self.link.keys.message(&id))
            .key(&self.link.keys.due)
            .arg(&id)
            .arg(millis(due).to_string());
        let added = match self.link.script::<i64>(&invocation).await {
            Ok(added) => added == 1,
            Err(e) => {
                // The storage's write scheduled it already, or the next
                // start-up's load does.
                tracing::warn!(id = %id, error = %e, "redis dispatch: cannot add a message");
                false
            }
        };
        self.wake.notify_one();
        added
    }

    async fn next_due(&self) -> Lease {
        let mut failures: u32 = 0;
        loop {
            let pause = match self.take().await {
                Ok(Taken::Lease(lease)) => {
                    if failures > 0 {
                        tracing::info!("redis dispatch: Redis answers again");
                    }
                    return lease;
                }
                Ok(Taken::Nothing(earliest)) => {
                    if failures > 0 {
                        tracing::info!("redis dispatch: Redis answers again");
                    }
                    failures = 0;
                    earliest
                        .and_then(|t| t.duration_since(clock::now()).ok())
                        .map_or(IDLE_POLL, |d| d.min(IDLE_POLL))
                }
                Err(e) => {
                    failures = failures.saturating_add(1);
                    if failures == 1 {
                        tracing::error!(error = %e, "redis dispatch: cannot take due messages; retrying");
                    }
                    let pause = Duration::from_millis(100) * 2u32.saturating_pow(failures.min(6));
                    pause.min(Duration::from_secs(5))
                }
            };
            tokio::select! {
                () = tokio::time::sleep(pause) => {}
                () = self.wake.notified() => {}
            }
        }
    }

    async fn ended(&self, id: &str, end: AttemptEnd) {
        let (script, due) = match end {
            AttemptEnd::RetryAt(due) => (&*END_RETRY, Some(due)),
            AttemptEnd::Done | AttemptEnd::Gone => (&*END_GONE, None),
        };
        let mut invocation = script.prepare_invoke();
        invocation
            .key(self.link.keys.message(id))
            .key(&self.link.keys.due)
            .arg(id);
        if let Some(due) = due {
            invocation.arg(&self.owner).arg(millis(due).to_string());
        }
        if let Err(e) = self.link.script::<i64>(&invocation).await {
            // The lease's end makes the message due again.
            tracing::warn!(id = %id, error = %e, "redis dispatch: cannot end an attempt; the lease's end reschedules it");
        }
        if due.is_some_and(|d| d <= clock::now()) {
            self.wake.notify_one();
        }
    }

    async fn retry_now(&self, id: &str) -> Placement {
        let placed = self.operate(id, "retry").await;
        if placed == Placement::Waiting {
            self.wake.notify_one();
        }
        placed
    }

    async fn take_retry_request(&self, id: &str) -> bool {
        let cmd = redis::cmd("HDEL")
            .arg(self.link.keys.message(id))
            .arg("retry")
            .to_owned();
        match self.link.query::<i64>(&cmd).await {
            Ok(n) => n == 1,
            Err(e) => {
                tracing::warn!(id = %id, error = %e, "redis dispatch: cannot read a retry request");
                false
            }
        }
    }

    async fn delete(&self, id: &str) -> Placement {
        self.operate(id, "delete").await
    }

    fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Relaxed)
    }
}
