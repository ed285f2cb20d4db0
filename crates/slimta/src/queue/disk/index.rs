//! The disk spool's in-memory index: where each message is and when it is
//! due, in a few dozen bytes, and nothing else.
//!
//! Decisions:
//! - A message's envelope, recipients and metadata stay on disk; the index
//!   keeps only what the hot paths need: the message's place (journal
//!   record or file), its due time ([`QueueStorage::load`]) and its
//!   receive time ([`QueueStorage::summary`]'s oldest message). An entry
//!   is a 16-byte key (the id's 128 bits, not its 32 hex digits on the
//!   heap) and a 24-byte [`Slot`], so 100,000 deferred messages cost a few
//!   MiB, not the 100 MiB that a full entry per message did.
//! - Times are kept as nanoseconds since the Unix epoch; a time before the
//!   epoch is kept as the epoch (a due time that far back is simply due).
//! - The index fills in the background after the spool opens (see
//!   `disk/scan.rs`). Whoever waits for ids as they are found registers a
//!   listener; the scan inserts a batch and sends it to every listener
//!   under one lock, and a listener registers under the same lock while it
//!   takes its snapshot of what is already indexed, so every id reaches it
//!   exactly once. An id the scan has not reached yet is unknown to the
//!   queue (it only learns ids from the index), so operations on it wait
//!   for the scan to finish ([`Shared::settled`]).
//!
//! [`QueueStorage::load`]: crate::queue::QueueStorage::load
//! [`QueueStorage::summary`]: crate::queue::QueueStorage::summary

use std::collections::HashMap;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime};

use tokio::sync::mpsc::UnboundedSender;
use tokio::sync::watch;

use crate::queue::storage::LoadBatch;

/// A message id as the index keys it: the 128 bits its 32 lowercase hex
/// digits spell, as two `u64`s (a `u128` is 16-byte aligned, which would
/// round every map entry up to a multiple of 16 bytes).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct Key(u64, u64);

impl Key {
    pub(crate) fn from_u128(bits: u128) -> Self {
        // Split on purpose: the high and the low 64 bits.
        Self((bits >> 64) as u64, bits as u64)
    }
}

/// The key of a valid id (32 lowercase hex digits).
pub(crate) fn key_of(id: &str) -> Option<Key> {
    let valid = id.len() == 32 && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    valid
        .then(|| u128::from_str_radix(id, 16).ok())
        .flatten()
        .map(Key::from_u128)
}

/// The id a key stands for.
pub(crate) fn id_of(key: Key) -> String {
    format!("{:016x}{:016x}", key.0, key.1)
}

/// Where a message's current copy is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Place {
    /// Only in a journal segment: its `NEW` record's offset and length.
    Journal { segment: u64, offset: u64, len: u64 },
    /// In `msg/<id>`; `origin` is the segment its `NEW` record went to, if
    /// it came through the journal and that segment may still exist.
    File { origin: Option<u64> },
}

/// What the index keeps per message: its place (`len` 0 means a file,
/// with `segment` its origin or 0), due time (nanoseconds) and receive
/// time (seconds: it only dates the oldest message for statistics); 24
/// bytes. Segment numbers, offsets and journal record lengths fit in 32
/// bits: the committer numbers no segment beyond [`MAX_SEGMENT`], closes a
/// segment before it reaches [`MAX_SEGMENT_SIZE`], and the storage sends no
/// message of [`MAX_RECORD`] bytes or more to the journal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Slot {
    due: u64,
    received: u32,
    offset: u32,
    segment: u32,
    len: u32,
}

/// Journal segments are closed before they reach this size, whatever
/// [`DiskOptions::segment_size`](super::DiskOptions::segment_size) says,
/// so record offsets fit in 32 bits.
pub(crate) const MAX_SEGMENT_SIZE: u64 = 1 << 30;

/// The highest journal segment number the index can hold.
pub(crate) const MAX_SEGMENT: u64 = u32::MAX as u64;

/// Journal records are shorter than this (the message and its envelope
/// fields included); a bigger message gets its own file.
pub(crate) const MAX_RECORD: u64 = u32::MAX as u64;

fn nanos(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

fn time(nanos: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_nanos(nanos)
}

impl Slot {
    pub(crate) fn new(place: Place, due: SystemTime, received: SystemTime) -> Self {
        let received = received
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| u32::try_from(d.as_secs()).unwrap_or(u32::MAX));
        let mut slot = Self {
            due: nanos(due),
            received,
            offset: 0,
            segment: 0,
            len: 0,
        };
        slot.set_place(place);
        slot
    }

    pub(crate) fn place(&self) -> Place {
        if self.len == 0 {
            Place::File {
                origin: (self.segment != 0).then_some(u64::from(self.segment)),
            }
        } else {
            Place::Journal {
                segment: u64::from(self.segment),
                offset: u64::from(self.offset),
                len: u64::from(self.len),
            }
        }
    }

    pub(crate) fn set_place(&mut self, place: Place) {
        // Both fit by construction (see the type's docs); the clamps only
        // keep a broken invariant from wrapping around.
        let narrow = |n: u64| u32::try_from(n).unwrap_or(u32::MAX);
        (self.segment, self.offset, self.len) = match place {
            // Segments are numbered from 1, and a record is never empty.
            Place::Journal {
                segment,
                offset,
                len,
            } => (narrow(segment), narrow(offset), narrow(len).max(1)),
            Place::File { origin } => (narrow(origin.unwrap_or(0)), 0, 0),
        };
    }

    pub(crate) fn due(&self) -> SystemTime {
        time(self.due)
    }

    pub(crate) fn set_due(&mut self, due: SystemTime) {
        self.due = nanos(due);
    }

    pub(crate) fn received(&self) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(u64::from(self.received))
    }
}

/// The metadata records of a message that is only in the journal: the
/// bytes of its `META` records' spool file records, in order (a file moved
/// out of the journal is its `NEW` record's bytes followed by these), and
/// how many there are (a move is valid only if no record came after the
/// ones it copied; the committer counts them too).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Pending {
    pub(crate) records: u32,
    pub(crate) bytes: Vec<u8>,
}

impl Pending {
    pub(crate) fn push(&mut self, record: &[u8]) {
        self.records += 1;
        self.bytes.extend_from_slice(record);
    }
}

/// The index proper, and who hears of what the scan finds.
#[derive(Default)]
pub(crate) struct Index {
    pub(crate) slots: HashMap<Key, Slot>,
    /// Journal messages with `META` records (deferred at least once and
    /// not yet moved to a file); entries go when the message moves or is
    /// removed. Bounded by what the journal holds (see
    /// `DiskOptions::closed_segments`).
    pub(crate) pending: HashMap<Key, Pending>,
    /// Who hears of what the scan indexes, with how many ids each heard.
    listeners: Vec<(UnboundedSender<LoadBatch>, Arc<AtomicUsize>)>,
}

impl Index {
    /// Forgets message `key`: removed.
    pub(crate) fn forget(&mut self, key: Key) {
        self.slots.remove(&key);
        self.pending.remove(&key);
    }

    /// Every indexed id with its due time, in batches of `batch`.
    pub(crate) fn snapshot(&self, batch: usize) -> Vec<LoadBatch> {
        let mut all: Vec<LoadBatch> = Vec::new();
        for (&key, slot) in &self.slots {
            match all.last_mut() {
                Some(last) if last.len() < batch => last.push((id_of(key), slot.due())),
                _ => all.push(vec![(id_of(key), slot.due())]),
            }
        }
        all
    }
}

/// How far the start-up scan is.
#[derive(Clone, Debug)]
pub(crate) enum ScanState {
    Running,
    Done,
    /// The scan stopped; the storage answers every request with this error.
    Failed(io::ErrorKind, Arc<str>),
}

/// What the storage and its start-up scan share.
pub(crate) struct Shared {
    index: Mutex<Index>,
    scan: watch::Sender<ScanState>,
    /// Every journal message found at start-up is indexed: moving old
    /// segments' messages to files may start.
    pub(crate) journal_indexed: AtomicBool,
}

impl Shared {
    pub(crate) fn new() -> Self {
        Self {
            index: Mutex::default(),
            scan: watch::Sender::new(ScanState::Running),
            journal_indexed: AtomicBool::new(false),
        }
    }

    pub(crate) fn index(&self) -> MutexGuard<'_, Index> {
        self.index.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Indexes what the scan found, except ids already known (written,
    /// moved or found since the open) and ids `still_there` denies (their
    /// file was removed after the scan read it: only a known id can be
    /// removed, so it was known and removed meanwhile); sends the indexed
    /// ones to the listeners.
    pub(crate) fn insert_found(
        &self,
        found: Vec<(Key, Slot, Option<Pending>)>,
        still_there: impl Fn(Key) -> bool,
    ) -> usize {
        let mut index = self.index();
        let listened = !index.listeners.is_empty();
        let mut batch = LoadBatch::new();
        let mut inserted = 0;
        for (key, slot, pending) in found {
            if index.slots.contains_key(&key) || !still_there(key) {
                continue;
            }
            index.slots.insert(key, slot);
            if let Some(pending) = pending {
                index.pending.insert(key, pending);
            }
            inserted += 1;
            if listened {
                batch.push((id_of(key), slot.due()));
            }
        }
        if !batch.is_empty() {
            let count = batch.len();
            index.listeners.retain(|(l, heard)| {
                let sent = l.send(batch.clone()).is_ok();
                if sent {
                    heard.fetch_add(count, Ordering::Relaxed);
                }
                sent
            });
        }
        inserted
    }

    /// Registers `listener` for what the scan finds from now on, if it is
    /// still running, and returns what is indexed already, under one lock,
    /// with the count of ids the scan sends it later.
    pub(crate) fn listen(
        &self,
        listener: &UnboundedSender<LoadBatch>,
        batch: usize,
    ) -> (Vec<LoadBatch>, Arc<AtomicUsize>) {
        let mut index = self.index();
        let heard = Arc::new(AtomicUsize::new(0));
        if matches!(*self.scan.borrow(), ScanState::Running) {
            index.listeners.push((listener.clone(), heard.clone()));
        }
        (index.snapshot(batch), heard)
    }

    /// Stops sending to `listener`.
    pub(crate) fn unlisten(&self, listener: &UnboundedSender<LoadBatch>) {
        self.index()
            .listeners
            .retain(|(l, _)| !l.same_channel(listener));
    }

    /// The scan ended: everyone waiting hears it, listeners are let go.
    pub(crate) fn finish(&self, state: ScanState) {
        let mut index = self.index();
        index.listeners.clear();
        self.scan.send_replace(state);
    }

    /// The scan's error, if it failed.
    pub(crate) fn failed(&self) -> io::Result<()> {
        match &*self.scan.borrow() {
            ScanState::Failed(kind, why) => Err(io::Error::new(*kind, why.to_string())),
            _ => Ok(()),
        }
    }

    /// Whether the scan still runs.
    pub(crate) fn scanning(&self) -> bool {
        matches!(*self.scan.borrow(), ScanState::Running)
    }

    /// Waits until the scan is over: `Ok` once every stored message is
    /// indexed, the scan's error if it failed.
    pub(crate) async fn settled(&self) -> io::Result<()> {
        let mut state = self.scan.subscribe();
        // The sender lives in `self`, so the wait cannot fail.
        let _ = state.wait_for(|s| !matches!(s, ScanState::Running)).await;
        self.failed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_and_refuse_what_is_not_an_id() {
        let id = "0123456789abcdef0123456789abcdef";
        assert_eq!(id_of(key_of(id).unwrap()), id);
        assert_eq!(id_of(key_of(&"0".repeat(32)).unwrap()), "0".repeat(32));
        for bad in [
            "",
            "README",
            &id.to_uppercase(),
            &id[1..],
            "+123456789abcdef0123456789abcdef",
        ] {
            assert_eq!(key_of(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_slot_keeps_place_and_times() {
        let t = SystemTime::UNIX_EPOCH + Duration::new(1_700_000_000, 7);
        let journal = Place::Journal {
            segment: 3,
            offset: 12,
            len: 4000,
        };
        let mut slot = Slot::new(journal, t, t + Duration::from_millis(1500));
        assert_eq!(slot.place(), journal);
        // The receive time is kept to the second.
        assert_eq!(
            (slot.due(), slot.received()),
            (
                t,
                SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_001)
            )
        );
        for place in [
            Place::File { origin: Some(3) },
            Place::File { origin: None },
        ] {
            slot.set_place(place);
            assert_eq!(slot.place(), place);
        }
        slot.set_due(SystemTime::UNIX_EPOCH - Duration::from_secs(5));
        assert_eq!(slot.due(), SystemTime::UNIX_EPOCH);
        assert_eq!(std::mem::size_of::<Slot>(), 24);
        assert_eq!(std::mem::size_of::<(Key, Slot)>(), 40);
    }
}
