//! [`RedisStorage`]: the queue's durable storage in one Redis hash per
//! message and the shared due set (see the crate docs for the keys).
//!
//! Each method is one round trip: a write is `MULTI` (`HSET` + `ZADD`)
//! `EXEC`, an attempt's record and an operator's new due time are Lua
//! scripts (read, apply, write, reschedule: atomic, so a crash leaves the
//! state before or after, and two processes never interleave), a removal
//! is `MULTI` (`DEL` + `ZREM`) `EXEC`. Reading the whole queue (start-up,
//! statistics) walks the message keys with `SCAN` and fetches the fields
//! it needs in one pipeline per batch.
//!
//! The due set's score is the dispatcher's: while a process holds a lease
//! on a message, neither a record nor an operator's new due time moves the
//! score (that would let another process take the message during the
//! attempt); the lease holder sets it when the attempt ends, and an
//! operator's "retry now" is left in the hash for it
//! ([`slimta::queue::Dispatch::take_retry_request`]).

use std::collections::{HashMap, HashSet};
use std::io;
use std::sync::{Arc, LazyLock};
use std::time::{Duration, SystemTime};

use slimta::Envelope;
use slimta::queue::{
    AttemptOutcome, LoadBatch, QueueMeta, QueueStorage, StorageSummary, StoredEnvelope, codec,
};

use crate::link::{Link, RedisOptions, RedisOptionsError};

/// Whether the message hash `KEYS[1]` is leased at `now` (ms): shared by
/// the scripts that must not move a leased message's score.
pub(crate) const LEASED_LUA: &str = r"
local function leased(key, now)
  local l = redis.call('HGET', key, 'lease')
  if not l then return false end
  local expiry = tonumber(string.match(l, ':(%d+)$'))
  return expiry ~= nil and expiry > tonumber(now)
end
";

/// KEYS: message hash, due set. ARGV: id, attempts, finished indices
/// (comma-separated), due ns ('' keeps it), due ms, error given ('1'),
/// error, delay warned ('1'), now ms. Returns 0 for an unknown id.
static RECORD: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(&format!(
        "{LEASED_LUA}{}",
        r"
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local n = tonumber(redis.call('HGET', KEYS[1], 'rcpts')) or 0
local seen, list = {}, {}
local function add(s)
  for x in string.gmatch(s, '%d+') do
    local i = tonumber(x)
    if i < n and not seen[i] then seen[i] = true; table.insert(list, i) end
  end
end
add(redis.call('HGET', KEYS[1], 'delivered') or '')
add(ARGV[3])
table.sort(list)
redis.call('HSET', KEYS[1], 'attempts', ARGV[2], 'delivered', table.concat(list, ','))
if ARGV[6] == '1' then redis.call('HSET', KEYS[1], 'error', ARGV[7]) end
if ARGV[8] == '1' then redis.call('HSET', KEYS[1], 'warned', '1') end
if ARGV[4] ~= '' then
  redis.call('HSET', KEYS[1], 'due', ARGV[4])
  if not leased(KEYS[1], ARGV[9]) then redis.call('ZADD', KEYS[2], ARGV[5], ARGV[1]) end
end
return 1
"
    ))
});

/// KEYS: message hash, due set. ARGV: id, due ns, due ms, now ms.
/// Returns 0 for an unknown id.
static SET_TIMESTAMP: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(&format!(
        "{LEASED_LUA}{}",
        r"
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], 'due', ARGV[2])
if leased(KEYS[1], ARGV[4]) then
  if tonumber(ARGV[3]) <= tonumber(ARGV[4]) then redis.call('HSET', KEYS[1], 'retry', '1') end
else
  redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
end
return 1
"
    ))
});

/// How many keys one `SCAN` call is asked for.
const SCAN_COUNT: usize = 1000;

/// The queue's storage in Redis: clones share one connection.
#[derive(Clone, Debug)]
pub struct RedisStorage {
    link: Link,
}

impl RedisStorage {
    /// A storage over the Redis of `options`. Does not connect: the first
    /// call does (and fails with a connection kind while Redis is away).
    ///
    /// # Errors
    ///
    /// When the options are not usable (a bad URL, a password given twice,
    /// an empty prefix).
    pub fn open(options: &RedisOptions) -> Result<Self, RedisOptionsError> {
        Ok(Self {
            link: options.link()?,
        })
    }

    /// Asks Redis for a `PONG` (start-up checks, tests).
    ///
    /// # Errors
    ///
    /// The connection's error, mapped as for every call.
    pub async fn ping(&self) -> io::Result<()> {
        let _: String = self.link.query(&redis::cmd("PING")).await?;
        Ok(())
    }

    /// Walks every message key with `SCAN`, fetching `field` of each: calls
    /// `batch` with the (id, value) pairs of each `SCAN` page, each id once.
    async fn scan_field(
        &self,
        field: &str,
        mut batch: impl FnMut(Vec<(String, Vec<u8>)>) -> bool,
    ) -> io::Result<()> {
        let keys = &self.link.keys;
        let pattern = keys.message_pattern();
        let mut seen = HashSet::new();
        let mut cursor: u64 = 0;
        loop {
            let (next, found): (u64, Vec<String>) = self
                .link
                .query(
                    redis::cmd("SCAN")
                        .arg(cursor)
                        .arg("MATCH")
                        .arg(&pattern)
                        .arg("COUNT")
                        .arg(SCAN_COUNT),
                )
                .await?;
            // SCAN may return a key twice; each id goes out once.
            let fresh: Vec<String> = found
                .into_iter()
                .filter(|k| keys.id_of(k).is_some() && seen.insert(k.clone()))
                .collect();
            if !fresh.is_empty() {
                let mut pipe = redis::pipe();
                for key in &fresh {
                    pipe.hget(key, field);
                }
                let values: Vec<Option<Vec<u8>>> = self.link.pipeline(&pipe).await?;
                let pairs: Vec<(String, Vec<u8>)> = fresh
                    .iter()
                    .zip(values)
                    // None: removed since the SCAN page.
                    .filter_map(|(key, v)| Some((keys.id_of(key)?.to_owned(), v?)))
                    .collect();
                if !pairs.is_empty() && !batch(pairs) {
                    return Ok(());
                }
            }
            if next == 0 {
                return Ok(());
            }
            cursor = next;
        }
    }
}

/// Nanoseconds since the epoch, as the hash keeps times.
pub(crate) fn nanos(time: SystemTime) -> io::Result<u128> {
    time.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a time before 1970"))
}

/// Milliseconds since the epoch, the due set's score.
pub(crate) fn millis(time: SystemTime) -> u128 {
    time.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis())
}

/// The time of a stored nanosecond count.
pub(crate) fn time_of(value: &[u8]) -> io::Result<SystemTime> {
    let n: u128 = parse(value, "time")?;
    let secs = u64::try_from(n / 1_000_000_000).map_err(|_| bad("time out of range"))?;
    // Below 10^9: fits.
    let sub = (n % 1_000_000_000) as u32;
    Ok(SystemTime::UNIX_EPOCH + Duration::new(secs, sub))
}

fn parse<T: std::str::FromStr>(value: &[u8], what: &str) -> io::Result<T> {
    std::str::from_utf8(value)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad(&format!("malformed {what} field")))
}

fn bad(why: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("redis message: {why}"))
}

fn not_found(id: &str) -> io::Error {
    io::Error::new(io::ErrorKind::NotFound, format!("no queued message {id}"))
}

/// The metadata kept in the hash's plain fields.
fn meta_of(fields: &HashMap<String, Vec<u8>>) -> io::Result<QueueMeta> {
    let field = |name: &str| fields.get(name).map(Vec::as_slice);
    let delivered = match field("delivered") {
        None | Some(b"") => Vec::new(),
        Some(list) => std::str::from_utf8(list)
            .map_err(|_| bad("malformed delivered field"))?
            .split(',')
            .map(|i| parse(i.as_bytes(), "delivered"))
            .collect::<io::Result<Vec<usize>>>()?,
    };
    Ok(QueueMeta {
        timestamp: field("due").map(time_of).transpose()?,
        attempts: field("attempts").map_or(Ok(0), |a| parse(a, "attempts"))?,
        delivered,
        last_error: field("error").map(|e| String::from_utf8_lossy(e).into_owned()),
        delay_warned: field("warned") == Some(b"1"),
    })
}

impl QueueStorage for RedisStorage {
    async fn write(&self, envelope: &Envelope, timestamp: SystemTime) -> io::Result<String> {
        let id = uuid::Uuid::new_v4().simple().to_string();
        let key = self.link.keys.message(&id);
        let received = nanos(envelope.receive_time)?.to_string();
        let mut pipe = redis::pipe();
        pipe.atomic()
            .hset_multiple(
                &key,
                &[
                    ("due", nanos(timestamp)?.to_string().into_bytes()),
                    ("attempts", b"0".to_vec()),
                    ("delivered", Vec::new()),
                    ("rcpts", envelope.recipients.len().to_string().into_bytes()),
                    ("received", received.into_bytes()),
                    ("env", codec::encode_envelope(envelope)),
                ],
            )
            .ignore()
            .zadd(&self.link.keys.due, &id, millis(timestamp).to_string())
            .ignore();
        self.link.pipeline::<()>(&pipe).await?;
        Ok(id)
    }

    async fn write_shared(
        &self,
        envelope: Arc<Envelope>,
        timestamp: SystemTime,
    ) -> io::Result<String> {
        self.write(&envelope, timestamp).await
    }

    async fn set_timestamp(&self, id: &str, timestamp: SystemTime) -> io::Result<()> {
        let mut invocation = SET_TIMESTAMP.prepare_invoke();
        invocation
            .key(self.link.keys.message(id))
            .key(&self.link.keys.due)
            .arg(id)
            .arg(nanos(timestamp)?.to_string())
            .arg(millis(timestamp).to_string())
            .arg(millis(slimta::queue::clock::now()).to_string());
        match self.link.script::<i64>(&invocation).await? {
            0 => Err(not_found(id)),
            _ => Ok(()),
        }
    }

    async fn record(&self, id: &str, outcome: &AttemptOutcome) -> io::Result<()> {
        let finished: Vec<String> = outcome.finished.iter().map(usize::to_string).collect();
        let (due_ns, due_ms) = match outcome.next_attempt {
            Some(due) => (nanos(due)?.to_string(), millis(due).to_string()),
            None => (String::new(), String::new()),
        };
        let mut invocation = RECORD.prepare_invoke();
        invocation
            .key(self.link.keys.message(id))
            .key(&self.link.keys.due)
            .arg(id)
            .arg(outcome.attempts)
            .arg(finished.join(","))
            .arg(due_ns)
            .arg(due_ms)
            .arg(if outcome.last_error.is_some() {
                "1"
            } else {
                "0"
            })
            .arg(outcome.last_error.as_deref().unwrap_or(""))
            .arg(if outcome.delay_warned { "1" } else { "0" })
            .arg(millis(slimta::queue::clock::now()).to_string());
        match self.link.script::<i64>(&invocation).await? {
            0 => Err(not_found(id)),
            _ => Ok(()),
        }
    }

    async fn load(&self) -> io::Result<Vec<(String, SystemTime)>> {
        let mut all = Vec::new();
        let mut failed = None;
        self.scan_field("due", |pairs| {
            for (id, due) in pairs {
                match time_of(&due) {
                    Ok(due) => all.push((id, due)),
                    Err(e) => failed = Some(e),
                }
            }
            failed.is_none()
        })
        .await?;
        match failed {
            Some(e) => Err(e),
            None => Ok(all),
        }
    }

    async fn load_into(
        &self,
        batches: tokio::sync::mpsc::UnboundedSender<LoadBatch>,
    ) -> io::Result<usize> {
        let mut sent = 0;
        let mut failed = None;
        self.scan_field("due", |pairs| {
            let mut batch = LoadBatch::with_capacity(pairs.len());
            for (id, due) in pairs {
                match time_of(&due) {
                    Ok(due) => batch.push((id, due)),
                    Err(e) => {
                        failed = Some(e);
                        return false;
                    }
                }
            }
            sent += batch.len();
            batches.send(batch).is_ok()
        })
        .await?;
        match failed {
            Some(e) => Err(e),
            None => Ok(sent),
        }
    }

    async fn summary(&self) -> io::Result<StorageSummary> {
        let mut summary = StorageSummary::default();
        let mut failed = None;
        self.scan_field("received", |pairs| {
            for (_, received) in pairs {
                match time_of(&received) {
                    Ok(t) => {
                        summary.messages += 1;
                        summary.oldest_received =
                            Some(summary.oldest_received.map_or(t, |o| o.min(t)));
                    }
                    Err(e) => failed = Some(e),
                }
            }
            failed.is_none()
        })
        .await?;
        match failed {
            Some(e) => Err(e),
            None => Ok(summary),
        }
    }

    async fn get(&self, id: &str) -> io::Result<StoredEnvelope> {
        let fields: HashMap<String, Vec<u8>> = self
            .link
            .query(redis::cmd("HGETALL").arg(self.link.keys.message(id)))
            .await?;
        let Some(env) = fields.get("env") else {
            return Err(not_found(id));
        };
        let mut stored = codec::decode(env)?;
        stored.meta = meta_of(&fields)?;
        Ok(stored)
    }

    async fn remove(&self, id: &str) -> io::Result<()> {
        let mut pipe = redis::pipe();
        pipe.atomic()
            .del(self.link.keys.message(id))
            .ignore()
            .zrem(&self.link.keys.due, id)
            .ignore();
        self.link.pipeline::<()>(&pipe).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_round_trip_to_the_nanosecond() {
        let t = SystemTime::UNIX_EPOCH + Duration::new(1_800_000_000, 999_999_999);
        let stored = nanos(t).unwrap().to_string();
        assert_eq!(time_of(stored.as_bytes()).unwrap(), t);
        assert_eq!(millis(t), 1_800_000_000_999);
        assert!(time_of(b"12x").is_err());
    }

    #[test]
    fn metadata_fields_are_read_strictly() {
        let mut fields = HashMap::new();
        fields.insert("delivered".to_owned(), b"0,2".to_vec());
        fields.insert("attempts".to_owned(), b"3".to_vec());
        fields.insert("warned".to_owned(), b"1".to_vec());
        let meta = meta_of(&fields).unwrap();
        assert_eq!(
            (meta.delivered, meta.attempts, meta.delay_warned),
            (vec![0, 2], 3, true)
        );
        fields.insert("delivered".to_owned(), b"0,x".to_vec());
        assert_eq!(
            meta_of(&fields).unwrap_err().kind(),
            io::ErrorKind::InvalidData
        );
    }
}
