//! [`LocalDispatch`], the default [`Dispatch`]: the in-process due-time
//! index, which message is attempted next, and when.
//!
//! Decision: a `BTreeMap` keyed by (due instant, sequence number) and one
//! scheduler task that sleeps until the earliest entry is due or until a
//! [`Notify`] says an earlier entry arrived. Nothing polls: ten thousand
//! messages waiting for a retry cost a map entry each and no wake-ups. The
//! sequence number keeps entries with the same due time distinct and in
//! arrival order.
//!
//! The index also remembers every id it has seen until it is forgotten
//! (scheduled *or* being attempted). Inserting a known id is a no-op, so the
//! start-up load racing an early handoff, or any other double insert, can
//! never start two concurrent attempts on one message (two attempts could
//! deliver twice).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::SystemTime;

use tokio::sync::Notify;
use tokio::time::{Instant, sleep_until};

use super::clock;
use super::dispatch::{AttemptEnd, Dispatch, Lease, Placement};

#[derive(Default)]
struct State {
    due: BTreeMap<(Instant, u64), String>,
    known: HashSet<String>,
    /// Where each waiting id sits in `due`, for operator commands.
    keys: HashMap<String, (Instant, u64)>,
    /// Ids in flight an operator asked to retry now.
    retry_requested: HashSet<String>,
    seq: u64,
}

impl State {
    fn push(&mut self, id: String, at: Instant) {
        self.seq += 1;
        let key = (at, self.seq);
        if let Some(old) = self.keys.insert(id.clone(), key) {
            self.due.remove(&old);
        }
        self.due.insert(key, id);
    }

    fn take_waiting(&mut self, id: &str) -> bool {
        match self.keys.remove(id) {
            Some(key) => {
                self.due.remove(&key);
                true
            }
            None => false,
        }
    }
}

/// The default [`Dispatch`]: an in-process due-time index of the messages
/// one queue knows about (see the module docs).
#[derive(Default)]
pub struct LocalDispatch {
    state: Mutex<State>,
    wake: Notify,
}

impl LocalDispatch {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Schedules a message the index does not know yet. Returns `false` (and
    /// changes nothing) if the id is already scheduled or being attempted.
    fn insert(&self, id: String, at: Instant) -> bool {
        let mut state = self.lock();
        if !state.known.insert(id.clone()) {
            return false;
        }
        state.push(id, at);
        drop(state);
        self.wake.notify_one();
        true
    }

    /// Schedules the next attempt of a message that [`LocalDispatch::pop_due`]
    /// handed out: at `at`, or at once if an operator asked for a retry
    /// while it was in flight.
    fn reschedule(&self, id: String, at: Instant) {
        let mut state = self.lock();
        let at = if Self::take_request(&mut state, &id) {
            at.min(Instant::now())
        } else {
            at
        };
        state.known.insert(id.clone());
        state.push(id, at);
        drop(state);
        self.wake.notify_one();
    }

    /// Forgets a message handed out by [`LocalDispatch::pop_due`] (it was
    /// removed from storage).
    fn forget(&self, id: &str) {
        let mut state = self.lock();
        state.known.remove(id);
        Self::take_request(&mut state, id);
    }

    /// Takes back an operator's retry request for a message in flight, for
    /// an attempt that is about to store its next due time (it stores "now"
    /// instead).
    fn take_request_for(&self, id: &str) -> bool {
        Self::take_request(&mut self.lock(), id)
    }

    /// Removes `id`'s retry request; the set is almost always empty, so the
    /// id is hashed only when it is not.
    fn take_request(state: &mut State, id: &str) -> bool {
        !state.retry_requested.is_empty() && state.retry_requested.remove(id)
    }

    fn placement(state: &State, id: &str) -> Placement {
        if !state.known.contains(id) {
            Placement::Unknown
        } else if state.keys.contains_key(id) {
            Placement::Waiting
        } else {
            Placement::InFlight
        }
    }

    /// Moves a waiting message's due time to `at` (an operator's "retry
    /// now"). For a message in flight the request is remembered until its
    /// attempt reschedules it (see the module docs).
    fn move_to(&self, id: &str, at: Instant) -> Placement {
        let mut state = self.lock();
        let placement = Self::placement(&state, id);
        match placement {
            Placement::Waiting => {
                state.take_waiting(id);
                state.push(id.to_owned(), at);
                drop(state);
                self.wake.notify_one();
            }
            Placement::InFlight => {
                state.retry_requested.insert(id.to_owned());
            }
            Placement::Unknown => {}
        }
        placement
    }

    /// Takes a waiting message out of the schedule (it is being deleted).
    /// A message in flight stays known: its attempt finds it gone and
    /// forgets it.
    fn remove_waiting(&self, id: &str) -> Placement {
        let mut state = self.lock();
        let placement = Self::placement(&state, id);
        if placement == Placement::Waiting {
            state.take_waiting(id);
            state.known.remove(id);
        }
        placement
    }

    /// How many messages are waiting for an attempt (not counting those
    /// being attempted).
    fn waiting_count(&self) -> usize {
        self.lock().due.len()
    }

    /// Waits until the earliest message is due and takes it out of the
    /// index. It stays known until rescheduled or forgotten.
    async fn pop_due(&self) -> String {
        loop {
            let head = self.lock().due.first_key_value().map(|(k, _)| k.0);
            match head {
                Some(at) if at <= Instant::now() => {
                    let mut state = self.lock();
                    if let Some((_, id)) = state.due.pop_first() {
                        state.keys.remove(&id);
                        return id;
                    }
                }
                Some(at) => {
                    tokio::select! {
                        () = sleep_until(at) => {}
                        () = self.wake.notified() => {}
                    }
                }
                // notify_one stores a permit when nobody waits, so an insert
                // between the check above and this await is not missed.
                None => self.wake.notified().await,
            }
        }
    }
}

impl std::fmt::Debug for LocalDispatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalDispatch")
            .field("waiting", &self.waiting_count())
            .finish_non_exhaustive()
    }
}

/// Everything at once, from memory: one process, no leases.
impl Dispatch for LocalDispatch {
    async fn add(&self, id: String, due: SystemTime) -> bool {
        self.insert(id, clock::instant_at(due))
    }

    async fn next_due(&self) -> Lease {
        Lease {
            id: self.pop_due().await,
            expires: None,
        }
    }

    async fn ended(&self, id: &str, end: AttemptEnd) {
        match end {
            AttemptEnd::RetryAt(due) => self.reschedule(id.to_owned(), clock::instant_at(due)),
            AttemptEnd::Done | AttemptEnd::Gone => self.forget(id),
        }
    }

    async fn retry_now(&self, id: &str) -> Placement {
        self.move_to(id, clock::instant_at(clock::now()))
    }

    async fn take_retry_request(&self, id: &str) -> bool {
        self.take_request_for(id)
    }

    async fn delete(&self, id: &str) -> Placement {
        self.remove_waiting(id)
    }

    fn waiting(&self) -> usize {
        self.waiting_count()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn hands_out_in_due_order_and_ignores_duplicates() {
        let s = LocalDispatch::default();
        let now = Instant::now();
        assert!(s.insert("late".into(), now + Duration::from_secs(60)));
        assert!(s.insert("early".into(), now + Duration::from_secs(1)));
        assert!(s.insert("now".into(), now));
        assert!(!s.insert("early".into(), now));
        assert_eq!(s.waiting_count(), 3);
        assert_eq!(s.pop_due().await, "now");
        assert_eq!(s.pop_due().await, "early");
        assert_eq!(Instant::now(), now + Duration::from_secs(1));
        // Handed out but not forgotten: still known.
        assert!(!s.insert("early".into(), now));
        s.forget("early");
        assert!(s.insert("early".into(), now + Duration::from_secs(120)));
        assert_eq!(s.pop_due().await, "late");
        assert_eq!(s.pop_due().await, "early");
        assert_eq!(Instant::now(), now + Duration::from_secs(120));
    }

    #[tokio::test(start_paused = true)]
    async fn operators_move_and_remove_waiting_messages() {
        let s = LocalDispatch::default();
        let now = Instant::now();
        s.insert("a".into(), now + Duration::from_secs(3600));
        s.insert("b".into(), now + Duration::from_secs(7200));
        assert_eq!(s.move_to("b", now), Placement::Waiting);
        assert_eq!(s.pop_due().await, "b");
        assert_eq!(Instant::now(), now, "moved to now, no wait");
        assert_eq!(s.move_to("b", now), Placement::InFlight);
        assert_eq!(s.remove_waiting("b"), Placement::InFlight);
        assert_eq!(s.move_to("zzz", now), Placement::Unknown);
        assert_eq!(s.remove_waiting("a"), Placement::Waiting);
        assert_eq!(s.waiting_count(), 0);
        assert!(s.insert("a".into(), now), "removed ids are forgotten");
    }

    #[tokio::test(start_paused = true)]
    async fn a_retry_asked_for_in_flight_beats_the_backoff_once() {
        let s = LocalDispatch::default();
        let now = Instant::now();
        s.insert("m".into(), now);
        assert_eq!(s.pop_due().await, "m");
        // The operator asks while the attempt runs; the attempt then fails
        // and asks for an hour: the request wins, once.
        assert_eq!(s.move_to("m", now), Placement::InFlight);
        s.reschedule("m".into(), now + Duration::from_secs(3600));
        assert_eq!(s.pop_due().await, "m");
        assert_eq!(Instant::now(), now, "due at once, not after the backoff");
        s.reschedule("m".into(), now + Duration::from_secs(3600));
        assert_eq!(s.pop_due().await, "m");
        assert_eq!(Instant::now(), now + Duration::from_secs(3600));
        // Taken by the attempt storing its due time, or dropped when the
        // message is forgotten.
        assert_eq!(s.move_to("m", now), Placement::InFlight);
        assert!(s.take_request_for("m"));
        assert!(!s.take_request_for("m"));
        assert_eq!(s.move_to("m", now), Placement::InFlight);
        s.forget("m");
        assert!(!s.take_request_for("m"));
    }

    #[tokio::test(start_paused = true)]
    async fn an_earlier_insert_wakes_the_sleeper() {
        let s = std::sync::Arc::new(LocalDispatch::default());
        let start = Instant::now();
        s.insert("far".into(), start + Duration::from_secs(3600));
        let waiter = tokio::spawn({
            let s = s.clone();
            async move { (s.pop_due().await, Instant::now()) }
        });
        tokio::time::sleep(Duration::from_secs(10)).await;
        s.insert("near".into(), start + Duration::from_secs(20));
        let (id, at) = waiter.await.unwrap();
        assert_eq!((id.as_str(), at), ("near", start + Duration::from_secs(20)));
    }
}
