//! [`SessionCache`]: per-session results of a check (a DNS list verdict, an
//! SPF result), keyed by [`SessionInfo::id`](super::SessionInfo::id).
//!
//! `Validators` has no "session closed" hook, so a check cannot know when
//! to forget a session. Decisions:
//! - The cache is bounded: at most `capacity` sessions; when full, the
//!   oldest session (lowest id: ids grow through a process's life) is
//!   dropped. Entries older than `max_age` are dropped on every insert.
//!   Memory therefore stays bounded however many sessions come and go.
//! - The cache is only a saving: a check whose entry was dropped asks the
//!   DNS again (and hickory's own cache usually answers), so correctness
//!   never depends on an entry surviving.
//! - A check removes its entry itself when it knows the session is done
//!   with it (after the message, say).

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Sessions remembered at most, by default.
pub(crate) const DEFAULT_CAPACITY: usize = 10_000;

/// How long an entry lives at most, by default: longer than any sane SMTP
/// session.
pub(crate) const DEFAULT_MAX_AGE: Duration = Duration::from_secs(3600);

/// A bounded map from session id to a check's result; see the module docs.
#[derive(Debug)]
pub(crate) struct SessionCache<V> {
    entries: Mutex<BTreeMap<u64, (Instant, V)>>,
    capacity: usize,
    max_age: Duration,
}

impl<V: Clone> Default for SessionCache<V> {
    fn default() -> Self {
        Self::new(DEFAULT_CAPACITY, DEFAULT_MAX_AGE)
    }
}

impl<V: Clone> SessionCache<V> {
    pub(crate) fn new(capacity: usize, max_age: Duration) -> Self {
        Self {
            entries: Mutex::new(BTreeMap::new()),
            capacity: capacity.max(1),
            max_age,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, (Instant, V)>> {
        // A panic elsewhere while holding the lock leaves a map that is
        // still consistent (every operation is a single map call).
        self.entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(crate) fn get(&self, id: u64) -> Option<V> {
        let entries = self.lock();
        entries
            .get(&id)
            .filter(|(at, _)| at.elapsed() < self.max_age)
            .map(|(_, v)| v.clone())
    }

    pub(crate) fn insert(&self, id: u64, value: V) {
        let now = Instant::now();
        let mut entries = self.lock();
        entries.retain(|_, (at, _)| now.duration_since(*at) < self.max_age);
        while entries.len() >= self.capacity && !entries.contains_key(&id) {
            entries.pop_first();
        }
        entries.insert(id, (now, value));
    }

    pub(crate) fn remove(&self, id: u64) -> Option<V> {
        self.lock().remove(&id).map(|(_, v)| v)
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stays_within_its_capacity_dropping_the_oldest_sessions() {
        let cache = SessionCache::new(3, DEFAULT_MAX_AGE);
        for id in 1..=10 {
            cache.insert(id, id * 10);
        }
        assert_eq!(cache.len(), 3);
        assert_eq!(cache.get(7), None);
        assert_eq!(cache.get(8), Some(80));
        cache.insert(10, 1);
        assert_eq!(cache.get(10), Some(1));
        assert_eq!(cache.len(), 3);
        assert_eq!(cache.remove(9), Some(90));
        assert_eq!(cache.remove(9), None);
    }

    #[test]
    fn old_entries_are_not_returned_and_are_dropped() {
        let cache = SessionCache::new(10, Duration::ZERO);
        cache.insert(1, "a");
        assert_eq!(cache.get(1), None);
        cache.insert(2, "b");
        assert_eq!(cache.len(), 1);
    }
}
