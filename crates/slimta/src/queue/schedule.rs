//! [`LocalDispatch`], the default [`Dispatch`]: the in-process index of
//! queued messages, which message is attempted next, and when, fair between
//! destinations.
//!
//! Two stages per message:
//! - **Waiting** for its due time: a binary heap of (due key, id), and a
//!   wait that sleeps until the earliest entry is due or a [`Notify`] says
//!   something changed. Nothing polls: ten thousand messages waiting for a
//!   retry cost a heap entry each and no wake-ups. The due key is one
//!   `u64`: milliseconds since the dispatcher was made, above a 20-bit
//!   arrival counter that keeps messages due in the same millisecond in
//!   arrival order.
//! - **Ready** (due): in its destination's line, first come first served.
//!   [`Dispatch::next_due`] hands out the head of the next line in a
//!   round-robin rotation of the lines that have messages and a free slot,
//!   so a destination with a thousand due messages gets one attempt per
//!   turn like a destination with one. Slots per destination, slow start
//!   and dead marking follow the rules in `queue/destinations.rs`; a dead
//!   destination's messages are handed out at once with the error to defer
//!   them with (no connection), so they wait out their backoff in storage
//!   instead of piling up here.
//!
//! Decisions:
//! - Messages whose destination is not known (found in storage at
//!   start-up) wait in a line of their own, without a limit: the queue
//!   reads each, learns its destination and asks [`Dispatch::admit`], which
//!   moves it to the back of that destination's line if it has no free
//!   slot. The destination is remembered for the message's later attempts.
//! - A line leaves the rotation when it is empty or full; the end of an
//!   attempt (which frees a slot) or an operator's retry (which revives a
//!   dead destination) puts it back. No timer per destination: a dead
//!   destination's period ends when its next message is due.
//! - A destination's standing (window, failures, dead marking) is kept
//!   while it has messages, attempts in flight or anything unusual to
//!   remember, and forgotten once it is back to the initial window with
//!   nothing queued: the map does not grow with every domain ever seen.
//! - Memory per message is what a big backlog costs: one map entry (a
//!   [`CompactId`]: 16 bytes for the disk spool's hex ids, no heap block;
//!   the destination, shared by every message to it; the due key and
//!   stage) and one heap entry (due key and id): with the tables' slack,
//!   98 bytes a message at 100,000 and 135 at 1,000,000 (measured by
//!   `slimta-index-memory`), instead of three copies of a `String` id.
//!   Moving or deleting a waiting message leaves its old heap entry behind;
//!   it is recognised (the entry's key differs) and dropped when it comes
//!   up.
//! - Every id the index knows is in one map with its stage; inserting a
//!   known id is a no-op, so the start-up load racing an early hand-off, or
//!   any other double insert, can never start two concurrent attempts on
//!   one message (two attempts could deliver twice). A line may still hold
//!   an id that left it (deleted, or moved on): such stale entries are
//!   skipped when they reach the head, which keeps delete O(log n).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::SystemTime;

use tokio::sync::Notify;
use tokio::time::{Instant, sleep_until};

use crate::relay::Destination;

use super::clock;
use super::compact_id::CompactId;
use super::destinations::{DeadDestination, DestinationSettings, Health, Verdict};
use super::dispatch::{Admission, AttemptEnd, Contact, Dispatch, Lease, Placement};

type Id = CompactId;
/// A line's key: `None` is the line of messages whose destination is not
/// known yet.
type LineKey = Option<Destination>;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stage {
    /// In the heap under `Entry::due`.
    Waiting,
    Ready,
    InFlight,
}

/// Bits of a due key below the milliseconds: the arrival counter.
const SEQ_BITS: u32 = 20;

#[derive(Debug)]
struct Entry {
    destination: LineKey,
    /// The due key while waiting.
    due: u64,
    stage: Stage,
    /// An operator asked for a retry while it was in flight.
    retry_requested: bool,
    /// Counted in its destination's attempts in flight.
    charged: bool,
}

/// One destination's due messages and standing.
#[derive(Debug)]
struct Line {
    ready: VecDeque<Id>,
    in_flight: usize,
    health: Health,
    /// In the rotation.
    queued: bool,
}

struct State {
    entries: HashMap<Id, Entry>,
    due: BinaryHeap<Reverse<(u64, Id)>>,
    lines: HashMap<LineKey, Line>,
    rotation: VecDeque<LineKey>,
    /// Entries in the `Waiting` and `Ready` stages.
    waiting: usize,
    ready: usize,
    seq: u64,
    /// Due keys count milliseconds from here.
    base: Instant,
}

impl State {
    fn new() -> Self {
        Self {
            entries: HashMap::new(),
            due: BinaryHeap::new(),
            lines: HashMap::new(),
            rotation: VecDeque::new(),
            waiting: 0,
            ready: 0,
            seq: 0,
            base: Instant::now(),
        }
    }

    /// The due key of `at`, the next in arrival order.
    fn key_of(&mut self, at: Instant) -> u64 {
        self.seq = self.seq.wrapping_add(1);
        let ms = u64::try_from(at.saturating_duration_since(self.base).as_millis())
            .unwrap_or(u64::MAX >> SEQ_BITS)
            .min(u64::MAX >> SEQ_BITS);
        (ms << SEQ_BITS) | (self.seq & ((1 << SEQ_BITS) - 1))
    }

    /// When a due key is due.
    fn instant_of(&self, key: u64) -> Instant {
        self.base + std::time::Duration::from_millis(key >> SEQ_BITS)
    }

    /// The earliest key due at `now` (every key of this millisecond).
    fn due_by(&self, now: Instant) -> u64 {
        let ms = u64::try_from(now.saturating_duration_since(self.base).as_millis())
            .unwrap_or(u64::MAX >> SEQ_BITS)
            .min(u64::MAX >> SEQ_BITS);
        (ms << SEQ_BITS) | ((1 << SEQ_BITS) - 1)
    }

    fn line<'a>(
        lines: &'a mut HashMap<LineKey, Line>,
        key: &LineKey,
        settings: &DestinationSettings,
    ) -> &'a mut Line {
        lines.entry(key.clone()).or_insert_with(|| Line {
            ready: VecDeque::new(),
            in_flight: 0,
            health: Health::new(
                settings,
                key.as_ref().unwrap_or(&Destination::whole_relay()),
            ),
            queued: false,
        })
    }

    /// Puts a line back in the rotation if it has messages and is not in
    /// it.
    fn requeue(&mut self, key: &LineKey) {
        if let Some(line) = self.lines.get_mut(key)
            && !line.queued
            && !line.ready.is_empty()
        {
            line.queued = true;
            self.rotation.push_back(key.clone());
        }
    }

    /// Forgets a line with nothing in it and nothing to remember.
    fn drop_if_idle(&mut self, key: &LineKey, settings: &DestinationSettings) {
        if let Some(line) = self.lines.get(key)
            && !line.queued
            && line.ready.is_empty()
            && line.in_flight == 0
            && line.health.is_fresh(settings)
        {
            self.lines.remove(key);
        }
    }

    fn wait(&mut self, id: Id, at: Instant) {
        let key = self.key_of(at);
        let Some(entry) = self.entries.get_mut(&id) else {
            return;
        };
        match entry.stage {
            Stage::Waiting => {}
            Stage::Ready => {
                self.ready -= 1;
            }
            Stage::InFlight => self.waiting += 1,
        }
        entry.stage = Stage::Waiting;
        entry.due = key;
        self.due.push(Reverse((key, id)));
    }

    /// Moves every message due at `now` into its destination's line.
    fn promote(&mut self, now: Instant, settings: &DestinationSettings) {
        let due_by = self.due_by(now);
        while let Some(Reverse((key, _))) = self.due.peek() {
            if *key > due_by {
                break;
            }
            let Some(Reverse((key, id))) = self.due.pop() else {
                break;
            };
            let Some(e) = self.entries.get_mut(&id) else {
                continue;
            };
            if e.stage != Stage::Waiting || e.due != key {
                // Left behind by a move or a delete.
                continue;
            }
            e.stage = Stage::Ready;
            let key = e.destination.clone();
            self.ready += 1;
            Self::line(&mut self.lines, &key, settings)
                .ready
                .push_back(id);
            self.requeue(&key);
        }
    }

    /// The next message to hand out, round robin between lines with a
    /// free slot.
    fn pick(&mut self, now: Instant, settings: &DestinationSettings) -> Option<Lease> {
        for _ in 0..self.rotation.len() {
            let key = self.rotation.pop_front()?;
            let Some(line) = self.lines.get_mut(&key) else {
                continue;
            };
            while let Some(head) = line.ready.front() {
                if self
                    .entries
                    .get(head)
                    .is_some_and(|e| e.stage == Stage::Ready)
                {
                    break;
                }
                line.ready.pop_front();
            }
            if line.ready.is_empty() {
                line.queued = false;
                self.drop_if_idle(&key, settings);
                continue;
            }
            let verdict = match key {
                None => Verdict::Attempt,
                Some(_) => line.health.verdict(now, line.in_flight),
            };
            let defer = match verdict {
                Verdict::Full => {
                    line.queued = false;
                    continue;
                }
                Verdict::Attempt => None,
                Verdict::Defer(error) => Some(error),
            };
            let id = line.ready.pop_front().expect("not empty");
            let charged = defer.is_none() && key.is_some();
            if charged {
                line.in_flight += 1;
            }
            self.rotation.push_back(key.clone());
            let entry = self.entries.get_mut(&id).expect("checked ready");
            entry.stage = Stage::InFlight;
            entry.charged = charged;
            self.ready -= 1;
            self.waiting -= 1;
            return Some(Lease {
                id: id.to_string(),
                expires: None,
                destination: key,
                defer,
            });
        }
        None
    }

    /// Ends the charge of an entry on its destination's slots.
    fn release(&mut self, id: &Id, settings: &DestinationSettings) {
        let Some(entry) = self.entries.get_mut(id) else {
            return;
        };
        if !std::mem::take(&mut entry.charged) {
            return;
        }
        let key = entry.destination.clone();
        if let Some(line) = self.lines.get_mut(&key) {
            line.in_flight = line.in_flight.saturating_sub(1);
        }
        self.requeue(&key);
        self.drop_if_idle(&key, settings);
    }

    fn placement(&self, id: &Id) -> Placement {
        match self.entries.get(id).map(|e| e.stage) {
            None => Placement::Unknown,
            Some(Stage::Waiting | Stage::Ready) => Placement::Waiting,
            Some(Stage::InFlight) => Placement::InFlight,
        }
    }

    /// Revives the dead destinations `matching` accepts; returns how many
    /// were dead.
    fn revive(
        &mut self,
        settings: &DestinationSettings,
        matching: impl Fn(&Destination) -> bool,
    ) -> usize {
        let mut revived = Vec::new();
        for (key, line) in &mut self.lines {
            if let Some(destination) = key
                && matching(destination)
                && line.health.revive(settings)
            {
                tracing::info!(destination = %destination, "destination revived by an operator");
                revived.push(key.clone());
            }
        }
        for key in &revived {
            self.requeue(key);
        }
        revived.len()
    }
}

/// The default [`Dispatch`]: an in-process index of the messages one queue
/// knows about, fair between destinations (see the module docs).
pub struct LocalDispatch {
    state: Mutex<State>,
    settings: DestinationSettings,
    wake: Notify,
}

impl Default for LocalDispatch {
    /// With the default [`DestinationSettings`].
    fn default() -> Self {
        Self::new(DestinationSettings::default())
    }
}

impl LocalDispatch {
    /// A dispatcher limiting every destination as `settings` say.
    pub fn new(settings: DestinationSettings) -> Self {
        Self {
            state: Mutex::new(State::new()),
            settings,
            wake: Notify::new(),
        }
    }

    /// The per-destination limits in use.
    pub fn settings(&self) -> &DestinationSettings {
        &self.settings
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Schedules a message the index does not know yet. Returns `false` (and
    /// changes nothing) if the id is already known.
    fn insert(&self, id: &str, at: Instant, destination: LineKey) -> bool {
        let id = CompactId::new(id);
        let mut state = self.lock();
        if state.entries.contains_key(&id) {
            return false;
        }
        state.entries.insert(
            id.clone(),
            Entry {
                destination,
                due: 0,
                stage: Stage::InFlight,
                retry_requested: false,
                charged: false,
            },
        );
        state.wait(id, at);
        drop(state);
        self.wake.notify_one();
        true
    }

    /// Schedules the next attempt of a message that was handed out: at
    /// `at`, or at once if an operator asked for a retry while it was in
    /// flight.
    fn reschedule(&self, id: &str, at: Instant) {
        let id = &CompactId::new(id);
        let mut state = self.lock();
        state.release(id, &self.settings);
        let Some(entry) = state.entries.get_mut(id) else {
            return;
        };
        let at = if std::mem::take(&mut entry.retry_requested) {
            at.min(Instant::now())
        } else {
            at
        };
        state.wait(id.clone(), at);
        drop(state);
        self.wake.notify_one();
    }

    /// Forgets a message that was handed out (removed from storage).
    fn forget(&self, id: &str) {
        let id = &CompactId::new(id);
        let mut state = self.lock();
        state.release(id, &self.settings);
        state.entries.remove(id);
        drop(state);
        self.wake.notify_one();
    }

    /// How many messages are waiting for an attempt (not counting those
    /// being attempted).
    fn waiting_count(&self) -> usize {
        self.lock().waiting
    }

    /// Waits until a message may be attempted and hands it out.
    async fn pop_due(&self) -> Lease {
        loop {
            // Registered before looking, so a change between the look and
            // the wait is not missed.
            let notified = self.wake.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let next = {
                let mut state = self.lock();
                let now = Instant::now();
                state.promote(now, &self.settings);
                if let Some(lease) = state.pick(now, &self.settings) {
                    return lease;
                }
                state
                    .due
                    .peek()
                    .map(|Reverse((key, _))| state.instant_of(*key))
            };
            match next {
                Some(at) => {
                    tokio::select! {
                        () = sleep_until(at) => {}
                        () = &mut notified => {}
                    }
                }
                None => notified.await,
            }
        }
    }
}

impl std::fmt::Debug for LocalDispatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalDispatch")
            .field("waiting", &self.waiting_count())
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

/// Everything at once, from memory: one process, no leases.
impl Dispatch for LocalDispatch {
    async fn add(&self, id: String, due: SystemTime, destination: Option<Destination>) -> bool {
        self.insert(&id, clock::instant_at(due), destination)
    }

    async fn next_due(&self) -> Lease {
        self.pop_due().await
    }

    async fn admit(&self, id: &str, destination: Destination) -> Admission {
        let id = &CompactId::new(id);
        let mut guard = self.lock();
        let state = &mut *guard;
        let Some(entry) = state.entries.get_mut(id) else {
            return Admission::Attempt;
        };
        let key = Some(destination);
        let line = State::line(&mut state.lines, &key, &self.settings);
        entry.destination = key;
        match line.health.verdict(Instant::now(), line.in_flight) {
            Verdict::Attempt => {
                line.in_flight += 1;
                entry.charged = true;
                Admission::Attempt
            }
            Verdict::Defer(error) => Admission::Defer(error),
            Verdict::Full => {
                // Full means an attempt is in flight: its end requeues the
                // line.
                line.ready.push_back(id.clone());
                entry.stage = Stage::Ready;
                state.ready += 1;
                state.waiting += 1;
                Admission::Later
            }
        }
    }

    async fn contact(&self, id: &str, contact: Contact) {
        let id = &CompactId::new(id);
        let mut state = self.lock();
        let Some(Some(destination)) = state.entries.get(id).map(|e| e.destination.clone()) else {
            return;
        };
        let key = Some(destination.clone());
        let line = State::line(&mut state.lines, &key, &self.settings);
        match contact {
            Contact::Reached => line.health.reached(&self.settings),
            Contact::Unreachable(error) => {
                let reason = error.reply().to_string();
                if line
                    .health
                    .unreachable(Instant::now(), error, &self.settings)
                {
                    let view = line.health.dead_view(&destination, Instant::now());
                    tracing::warn!(
                        destination = %destination,
                        failures = view.as_ref().map_or(0, |v| v.failures),
                        probe_in_secs = view.map_or(0, |v| v.probe_in.as_secs()),
                        error = %reason,
                        "destination marked dead: its messages are deferred without connecting until the probe"
                    );
                }
            }
        }
    }

    async fn ended(&self, id: &str, end: AttemptEnd) {
        match end {
            AttemptEnd::RetryAt(due) => self.reschedule(id, clock::instant_at(due)),
            AttemptEnd::Done | AttemptEnd::Gone => self.forget(id),
        }
    }

    async fn retry_now(&self, id: &str) -> Placement {
        let id = &CompactId::new(id);
        let mut state = self.lock();
        let placement = state.placement(id);
        let destination = state.entries.get(id).and_then(|e| e.destination.clone());
        if let Some(destination) = destination {
            state.revive(&self.settings, |d| *d == destination);
        }
        match state.entries.get_mut(id) {
            Some(entry) if entry.stage == Stage::InFlight => entry.retry_requested = true,
            Some(entry) if entry.stage == Stage::Waiting => state.wait(id.clone(), Instant::now()),
            _ => {}
        }
        drop(state);
        self.wake.notify_one();
        placement
    }

    async fn take_retry_request(&self, id: &str) -> bool {
        let id = &CompactId::new(id);
        self.lock()
            .entries
            .get_mut(id)
            .is_some_and(|e| std::mem::take(&mut e.retry_requested))
    }

    async fn delete(&self, id: &str) -> Placement {
        let id = &CompactId::new(id);
        let mut state = self.lock();
        let placement = state.placement(id);
        match state.entries.get(id).map(|e| e.stage) {
            Some(Stage::Waiting) => {
                // Its heap entry goes stale and is dropped when it is due.
                state.waiting -= 1;
                state.entries.remove(id);
            }
            Some(Stage::Ready) => {
                // Its line entry goes stale and is skipped.
                state.ready -= 1;
                state.waiting -= 1;
                state.entries.remove(id);
            }
            Some(Stage::InFlight) | None => {}
        }
        placement
    }

    fn waiting(&self) -> usize {
        self.waiting_count()
    }

    fn dead_destinations(&self) -> Vec<DeadDestination> {
        let state = self.lock();
        let now = Instant::now();
        let mut dead: Vec<DeadDestination> = state
            .lines
            .iter()
            .filter_map(|(key, line)| line.health.dead_view(key.as_ref()?, now))
            .collect();
        dead.sort_by(|a, b| a.destination.cmp(&b.destination));
        dead
    }

    fn revive(&self, destination: Option<&str>) -> usize {
        let revived = self.lock().revive(&self.settings, |d| {
            destination.is_none_or(|want| d.as_str() == want)
        });
        self.wake.notify_one();
        revived
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::relay::RelayError;
    use crate::reply::Reply;

    fn dest(key: &str) -> Option<Destination> {
        Some(Destination::new(key))
    }

    async fn pop(s: &LocalDispatch) -> Lease {
        s.pop_due().await
    }

    /// Pops without waiting: `None` when nothing may go now.
    fn try_pop(s: &LocalDispatch) -> Option<Lease> {
        let mut state = s.lock();
        let now = Instant::now();
        state.promote(now, &s.settings);
        state.pick(now, &s.settings)
    }

    #[tokio::test(start_paused = true)]
    async fn hands_out_in_due_order_and_ignores_duplicates() {
        let s = LocalDispatch::default();
        let now = Instant::now();
        assert!(s.insert("late", now + Duration::from_secs(60), None));
        assert!(s.insert("early", now + Duration::from_secs(1), None));
        assert!(s.insert("now", now, None));
        assert!(!s.insert("early", now, None));
        assert_eq!(s.waiting_count(), 3);
        assert_eq!(pop(&s).await.id, "now");
        assert_eq!(pop(&s).await.id, "early");
        assert_eq!(Instant::now(), now + Duration::from_secs(1));
        // Handed out but not forgotten: still known.
        assert!(!s.insert("early", now, None));
        s.forget("early");
        assert!(s.insert("early", now + Duration::from_secs(120), None));
        assert_eq!(pop(&s).await.id, "late");
        assert_eq!(pop(&s).await.id, "early");
        assert_eq!(Instant::now(), now + Duration::from_secs(120));
    }

    #[tokio::test(start_paused = true)]
    async fn operators_move_and_remove_waiting_messages() {
        let s = LocalDispatch::default();
        let now = Instant::now();
        s.insert("a", now + Duration::from_secs(3600), None);
        s.insert("b", now + Duration::from_secs(7200), None);
        assert_eq!(s.retry_now("b").await, Placement::Waiting);
        assert_eq!(pop(&s).await.id, "b");
        assert_eq!(Instant::now(), now, "moved to now, no wait");
        assert_eq!(s.retry_now("b").await, Placement::InFlight);
        assert_eq!(s.delete("b").await, Placement::InFlight);
        assert_eq!(s.retry_now("zzz").await, Placement::Unknown);
        assert_eq!(s.delete("a").await, Placement::Waiting);
        assert_eq!(s.waiting_count(), 0);
        assert!(s.insert("a", now, None), "removed ids are forgotten");
    }

    #[tokio::test(start_paused = true)]
    async fn a_retry_asked_for_in_flight_beats_the_backoff_once() {
        let s = LocalDispatch::default();
        let now = Instant::now();
        s.insert("m", now, None);
        assert_eq!(pop(&s).await.id, "m");
        // The operator asks while the attempt runs; the attempt then fails
        // and asks for an hour: the request wins, once.
        assert_eq!(s.retry_now("m").await, Placement::InFlight);
        s.reschedule("m", now + Duration::from_secs(3600));
        assert_eq!(pop(&s).await.id, "m");
        assert_eq!(Instant::now(), now, "due at once, not after the backoff");
        s.reschedule("m", now + Duration::from_secs(3600));
        assert_eq!(pop(&s).await.id, "m");
        assert_eq!(Instant::now(), now + Duration::from_secs(3600));
        // Taken by the attempt storing its due time, or dropped when the
        // message is forgotten.
        assert_eq!(s.retry_now("m").await, Placement::InFlight);
        assert!(s.take_retry_request("m").await);
        assert!(!s.take_retry_request("m").await);
        assert_eq!(s.retry_now("m").await, Placement::InFlight);
        s.forget("m");
        assert!(!s.take_retry_request("m").await);
    }

    #[tokio::test(start_paused = true)]
    async fn an_earlier_insert_wakes_the_sleeper() {
        let s = std::sync::Arc::new(LocalDispatch::default());
        let start = Instant::now();
        s.insert("far", start + Duration::from_secs(3600), None);
        let waiter = tokio::spawn({
            let s = s.clone();
            async move { (s.pop_due().await.id, Instant::now()) }
        });
        tokio::time::sleep(Duration::from_secs(10)).await;
        s.insert("near", start + Duration::from_secs(20), None);
        let (id, at) = waiter.await.unwrap();
        assert_eq!((id.as_str(), at), ("near", start + Duration::from_secs(20)));
    }

    #[tokio::test(start_paused = true)]
    async fn destinations_take_turns() {
        let s = LocalDispatch::default();
        let now = Instant::now();
        for i in 0..4 {
            s.insert(&format!("a{i}"), now, dest("a.test"));
        }
        s.insert("b0", now, dest("b.test"));
        s.insert("b1", now, dest("b.test"));
        s.insert("c0", now, dest("c.test"));
        let mut order = Vec::new();
        while let Some(lease) = try_pop(&s) {
            order.push(lease.id);
        }
        assert_eq!(order, ["a0", "b0", "c0", "a1", "b1", "a2", "a3"]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_destination_waits_while_others_go_and_a_freed_slot_requeues_it() {
        let mut settings = DestinationSettings::default();
        settings.overrides.insert("slow.test".into(), 2);
        let s = LocalDispatch::new(settings);
        let now = Instant::now();
        for i in 0..5 {
            s.insert(&format!("slow{i}"), now, dest("slow.test"));
        }
        for i in 0..3 {
            s.insert(&format!("ok{i}"), now, dest("ok.test"));
        }
        let mut order = Vec::new();
        while let Some(lease) = try_pop(&s) {
            order.push(lease.id);
        }
        assert_eq!(order, ["slow0", "ok0", "slow1", "ok1", "ok2"]);
        assert_eq!(s.waiting_count(), 3);
        // One slow attempt ends: exactly one more goes.
        s.ended("slow0", AttemptEnd::Done).await;
        assert_eq!(try_pop(&s).unwrap().id, "slow2");
        assert!(try_pop(&s).is_none());
    }

    fn refused() -> RelayError {
        RelayError::unreachable(Reply::new(
            451,
            "4.4.1",
            "Connection to down:25 failed: refused",
        ))
    }

    #[tokio::test(start_paused = true)]
    async fn a_dead_destination_defers_without_slots_then_sends_one_probe() {
        let s = LocalDispatch::default();
        let now = Instant::now();
        for i in 0..8 {
            s.insert(&format!("d{i}"), now, dest("down.test"));
        }
        // Slow start: five go.
        let first: Vec<Lease> = std::iter::from_fn(|| try_pop(&s)).collect();
        assert_eq!(first.len(), 5);
        assert!(first.iter().all(|l| l.defer.is_none()));
        for lease in &first {
            s.contact(&lease.id, Contact::Unreachable(refused())).await;
            s.ended(
                &lease.id,
                AttemptEnd::RetryAt(clock::now() + Duration::from_secs(600)),
            )
            .await;
        }
        let dead = s.dead_destinations();
        assert_eq!(dead.len(), 1);
        assert_eq!(dead[0].destination, "down.test");
        assert_eq!(dead[0].failures, 5);
        // The other three are handed out to be deferred, no slot needed.
        let rest: Vec<Lease> = std::iter::from_fn(|| try_pop(&s)).collect();
        assert_eq!(rest.len(), 3);
        for lease in &rest {
            let e = lease.defer.as_ref().expect("deferred without connecting");
            assert!(e.reply().text().contains("refused"), "{}", e.reply());
            s.ended(
                &lease.id,
                AttemptEnd::RetryAt(clock::now() + Duration::from_secs(60)),
            )
            .await;
        }
        // After the dead period: one probe, alone.
        tokio::time::sleep(Duration::from_secs(61)).await;
        let probe = try_pop(&s).expect("a probe");
        assert!(probe.defer.is_none());
        assert!(try_pop(&s).is_none(), "the others wait for the probe");
        s.contact(&probe.id, Contact::Reached).await;
        s.ended(&probe.id, AttemptEnd::Done).await;
        assert!(s.dead_destinations().is_empty());
        let after: Vec<Lease> = std::iter::from_fn(|| try_pop(&s)).collect();
        assert_eq!(after.len(), 2, "alive again");
        assert!(after.iter().all(|l| l.defer.is_none()));
    }

    #[tokio::test(start_paused = true)]
    async fn an_operator_retry_revives_the_destination() {
        let s = LocalDispatch::default();
        let now = Instant::now();
        for i in 0..6 {
            s.insert(&format!("d{i}"), now, dest("down.test"));
        }
        for lease in std::iter::from_fn(|| try_pop(&s)).collect::<Vec<_>>() {
            if lease.defer.is_none() {
                s.contact(&lease.id, Contact::Unreachable(refused())).await;
            }
            s.ended(
                &lease.id,
                AttemptEnd::RetryAt(clock::now() + Duration::from_secs(3600)),
            )
            .await;
        }
        assert_eq!(s.dead_destinations().len(), 1);
        assert_eq!(s.retry_now("d5").await, Placement::Waiting);
        assert!(s.dead_destinations().is_empty());
        let lease = try_pop(&s).unwrap();
        assert_eq!((lease.id.as_str(), lease.defer), ("d5", None));
        // And a revive of everything.
        assert_eq!(Dispatch::revive(&s, None), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn unknown_destinations_are_learnt_and_limited() {
        let s = LocalDispatch::new(DestinationSettings {
            initial_concurrency: 1,
            ..DestinationSettings::default()
        });
        let now = Instant::now();
        s.insert("x", now, None);
        s.insert("y", now, None);
        let x = try_pop(&s).unwrap();
        let y = try_pop(&s).unwrap();
        assert_eq!((x.destination.clone(), y.destination.clone()), (None, None));
        assert_eq!(
            s.admit("x", Destination::new("a.test")).await,
            Admission::Attempt
        );
        assert_eq!(
            s.admit("y", Destination::new("a.test")).await,
            Admission::Later
        );
        assert_eq!(s.waiting_count(), 1);
        assert!(try_pop(&s).is_none(), "a.test has one slot, taken by x");
        s.contact("x", Contact::Reached).await;
        s.ended(
            "x",
            AttemptEnd::RetryAt(clock::now() + Duration::from_secs(60)),
        )
        .await;
        let y = try_pop(&s).unwrap();
        assert_eq!((y.id.as_str(), y.destination), ("y", dest("a.test")));
        // x's destination is remembered for its next attempt.
        tokio::time::sleep(Duration::from_secs(60)).await;
        s.ended("y", AttemptEnd::Done).await;
        let x = try_pop(&s).unwrap();
        assert_eq!((x.id.as_str(), x.destination), ("x", dest("a.test")));
    }

    #[tokio::test(start_paused = true)]
    async fn deleted_ready_messages_are_skipped_and_idle_lines_forgotten() {
        let s = LocalDispatch::default();
        let now = Instant::now();
        s.insert("a", now, dest("a.test"));
        s.insert("b", now, dest("a.test"));
        {
            let mut state = s.lock();
            state.promote(now, &s.settings);
        }
        assert_eq!(s.delete("a").await, Placement::Waiting);
        assert_eq!(s.waiting_count(), 1);
        let b = try_pop(&s).unwrap();
        assert_eq!(b.id, "b");
        s.contact("b", Contact::Reached).await;
        s.ended("b", AttemptEnd::Done).await;
        assert!(try_pop(&s).is_none());
        assert!(s.lock().lines.is_empty(), "nothing left to remember");
        assert!(s.lock().entries.is_empty());
    }
}
