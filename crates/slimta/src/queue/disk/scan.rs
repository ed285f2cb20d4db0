//! The start-up scan: indexes a spool's messages in the background, after
//! [`DiskStorage::open`](super::DiskStorage::open) has returned.
//!
//! Why: reading every file before answering anything made a restart over
//! a big backlog wait seconds (2.2 s at 100,000 deferred messages, and it
//! grows with the spool) before the first new message could be accepted.
//! The open now only cleans `tmp/`, checks the journal segments' headers
//! and starts the committer on a new segment; this thread does the rest,
//! in an order that keeps every start-up guarantee of `disk/mod.rs`:
//!
//! 1. **Journal**: every segment found at the open is replayed in order
//!    (a `REMOVE` wins over a `NEW` record, a `META` record applies to
//!    the journal message before it, a torn tail ends a segment, an
//!    unreadable segment is set aside). Every removed id's file is then
//!    unlinked (one `msg/` fsync), before anything is indexed and before
//!    the committer may delete a segment holding the `REMOVE`. A `NEW`
//!    record whose id has a file is only noted as that file's origin (the
//!    file is the later copy); the others are handed to the committer as
//!    the old segments' residents ([`Committer::adopt_blocking`]), then
//!    indexed. Only then may old segments be deleted or spilled.
//! 2. **Files**: `msg/` is read entry by entry (never listed whole); each
//!    file is decoded (a torn tail truncated, an unreadable file set aside)
//!    and indexed in batches, unless its id is already indexed (a journal
//!    message moved to its file since, or a message written since the
//!    open) or its file is gone by the time the batch is indexed (removed
//!    after it was moved: checked under the index lock, which a removal
//!    takes after its unlink).
//!
//! Each batch reaches the queue as it is indexed (`disk/index.rs`), so due
//! messages are attempted while the scan goes on. Operations on an id the
//! scan has not indexed yet wait for it to finish: the queue only learns
//! ids from the index, so only an operator typing an old id can ask. A
//! newer format version or an I/O error stops the scan, and the storage
//! then answers every request with that error (as the open used to fail).
//! Dropping the storage stops the scan between two files; what it did is
//! safe to do again at the next open.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::{self, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::{self, JoinHandle};
use std::time::SystemTime;

use super::commit::{Committer, Residents};
use super::format::{self, Invalid};
use super::index::{Key, Pending, Place, ScanState, Shared, Slot, id_of, key_of};
use super::spill::SpillWake;
use super::{journal, newer_version, set_aside, sync_dir};

/// How many messages are indexed (and handed to the queue) at once.
const BATCH: usize = 256;

/// Everything the scan needs, moved to its thread.
pub(crate) struct Scan {
    pub(crate) journal_dir: PathBuf,
    pub(crate) msg_dir: PathBuf,
    pub(crate) corrupt_dir: PathBuf,
    /// The segments found at the open, oldest first.
    pub(crate) segments: Vec<(u64, PathBuf)>,
    pub(crate) fsyncs: Arc<AtomicU64>,
    pub(crate) committer: Committer,
    pub(crate) shared: Arc<Shared>,
    /// Set when the storage is dropped.
    pub(crate) cancel: Arc<AtomicBool>,
    /// Woken once the journal's messages are handed over: deferred ones of
    /// old segments may be waiting to move.
    pub(crate) spill: SpillWake,
    /// Tests hold the scan before each step until a token (or the
    /// sender's drop) lets it on.
    #[cfg(test)]
    pub(crate) gate: Option<std::sync::mpsc::Receiver<()>>,
}

/// A `NEW` record found in the journal: segment, offset, length, due and
/// receive time, and the `META` records after it.
type Found = (u64, u64, u64, SystemTime, SystemTime, Pending);

fn cancelled() -> io::Error {
    io::Error::other("the spool was closed while it was being indexed")
}

impl Scan {
    /// Starts the scan on a thread of its own.
    pub(crate) fn spawn(self) -> io::Result<JoinHandle<()>> {
        thread::Builder::new()
            .name("slimta-spool-scan".into())
            .spawn(move || self.run())
    }

    fn run(self) {
        let started = std::time::Instant::now();
        let state = match self.scan() {
            Ok(count) => {
                tracing::info!(
                    messages = count,
                    secs = started.elapsed().as_secs_f64(),
                    "disk spool indexed"
                );
                ScanState::Done
            }
            Err(e) => {
                if !self.cancel.load(Ordering::Relaxed) {
                    tracing::error!(error = %e, "cannot index the disk spool; it refuses all work");
                }
                ScanState::Failed(e.kind(), e.to_string().into())
            }
        };
        self.shared.finish(state);
    }

    fn check_cancel(&self) -> io::Result<()> {
        if self.cancel.load(Ordering::Relaxed) {
            Err(cancelled())
        } else {
            Ok(())
        }
    }

    /// Where tests can hold the scan (see `gate`).
    fn step(&self) -> io::Result<()> {
        #[cfg(test)]
        if let Some(gate) = &self.gate {
            while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
                gate.recv_timeout(std::time::Duration::from_millis(10))
            {
                self.check_cancel()?;
            }
        }
        self.check_cancel()
    }

    fn scan(&self) -> io::Result<usize> {
        self.step()?;
        let (found, origins) = self.replay_journal()?;
        let mut residents: BTreeMap<u64, Residents> = BTreeMap::new();
        let mut journal_only = Vec::with_capacity(found.len());
        for (seq, _) in &self.segments {
            residents.insert(*seq, Residents::new());
        }
        for (key, (segment, offset, len, due, received, pending)) in found {
            if let Some(r) = residents.get_mut(&segment) {
                r.insert(id_of(key), (offset, len, pending.records));
                let place = Place::Journal {
                    segment,
                    offset,
                    len,
                };
                let pending = (pending.records > 0).then_some(pending);
                journal_only.push((key, Slot::new(place, due, received), pending));
            }
        }
        // Segments set aside while replaying are not handed over.
        residents.retain(|seq, _| self.journal_dir.join(journal::segment_name(*seq)).exists());
        self.committer.adopt_blocking(residents)?;
        let mut count = 0;
        let mut journal_only = journal_only.into_iter();
        loop {
            let chunk: Vec<_> = journal_only.by_ref().take(BATCH).collect();
            if chunk.is_empty() {
                break;
            }
            count += self.shared.insert_found(chunk, |_| true);
        }
        self.shared.journal_indexed.store(true, Ordering::Release);
        self.spill.wake();
        self.step()?;
        count += self.index_files(&origins)?;
        Ok(count)
    }

    /// Step 1: replays the old segments. Returns the journal-only
    /// messages, and the origin segment of every message that has a file.
    #[allow(clippy::type_complexity)]
    fn replay_journal(&self) -> io::Result<(HashMap<Key, Found>, HashMap<Key, u64>)> {
        // Keyed by `Key`, not by the id's text: a restart replays every
        // record of the segments left (tens of thousands), and a `String`
        // per record would leave that many small blocks behind in the heap.
        let mut found: HashMap<Key, Found> = HashMap::new();
        let mut removed: HashSet<Key> = HashSet::new();
        for (seq, path) in &self.segments {
            self.check_cancel()?;
            let file = fs::File::open(path)?;
            let size = file.metadata()?.len();
            let mut visit = |entry: journal::Entry<'_>| -> io::Result<()> {
                match entry {
                    journal::Entry::New {
                        id,
                        offset,
                        len,
                        file,
                    } => match key_of(id).map(|key| (key, format::decode(file))) {
                        None => {}
                        Some((key, Ok(decoded))) => {
                            let due = decoded
                                .stored
                                .meta
                                .timestamp
                                .unwrap_or(SystemTime::UNIX_EPOCH);
                            let received = decoded.stored.envelope.receive_time;
                            let found_new = (*seq, offset, len, due, received, Pending::default());
                            found.insert(key, found_new);
                        }
                        Some((_, Err(Invalid::NewerVersion(v)))) => {
                            let what = format!("{}: message {id}", path.display());
                            return Err(newer_version(what, "spool", v));
                        }
                        Some((_, Err(Invalid::Corrupt(why)))) => {
                            // Kept for a human, like an unreadable file.
                            let dest = self.corrupt_dir.join(id);
                            tracing::error!(id, segment = %path.display(), moved_to = %dest.display(), problem = why, "unreadable journal message");
                            fs::write(&dest, file)?;
                        }
                    },
                    journal::Entry::Remove { id } => {
                        if let Some(key) = key_of(id) {
                            found.remove(&key);
                            removed.insert(key);
                        }
                    }
                    journal::Entry::Meta { id, record } => {
                        // Ignored unless its message is only in the journal
                        // so far (see `disk/journal.rs`).
                        let known = key_of(id).and_then(|key| found.get_mut(&key));
                        if let Some((_, _, _, due, _, pending)) = known {
                            pending.push(record);
                            if let Some(set) = format::due_set_by(record) {
                                *due = set;
                            }
                        }
                    }
                }
                Ok(())
            };
            let good_len = match journal::scan_stream(file, &mut visit)? {
                Ok(good_len) => good_len,
                Err(Invalid::NewerVersion(v)) => {
                    return Err(newer_version(path.display(), "journal", v));
                }
                Err(Invalid::Corrupt(why)) => {
                    set_aside(path, &self.corrupt_dir, "journal-", why)?;
                    continue;
                }
            };
            if good_len < size {
                tracing::warn!(segment = %path.display(), "ignoring a torn journal tail");
            }
        }
        // A REMOVE wins over a file of the same id: unlinked (durably)
        // before the segment holding the REMOVE may be deleted.
        let mut unlinked = false;
        for &key in &removed {
            match fs::remove_file(self.msg_dir.join(id_of(key))) {
                Ok(()) => unlinked = true,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        drop(removed);
        if unlinked {
            sync_dir(&self.msg_dir, &self.fsyncs)?;
        }
        // A file wins over a NEW record: it is the later, moved copy.
        let mut origins = HashMap::new();
        found.retain(|&key, (segment, ..)| {
            let has_file = self.msg_dir.join(id_of(key)).exists();
            if has_file {
                origins.insert(key, *segment);
            }
            !has_file
        });
        Ok((found, origins))
    }

    /// Step 2: indexes `msg/`, entry by entry.
    fn index_files(&self, origins: &HashMap<Key, u64>) -> io::Result<usize> {
        let mut count = 0;
        let mut batch = Vec::with_capacity(BATCH);
        for entry in fs::read_dir(&self.msg_dir)? {
            self.check_cancel()?;
            let path = entry?.path();
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default();
            let Some(key) = key_of(name) else {
                set_aside(&path, &self.corrupt_dir, "", "not a message id")?;
                continue;
            };
            if self.shared.index().slots.contains_key(&key) {
                continue;
            }
            let Some(slot) = self.read_file(&path, key, origins)? else {
                continue;
            };
            batch.push((key, slot));
            if batch.len() == BATCH {
                count += self.index_batch(std::mem::take(&mut batch));
            }
        }
        count += self.index_batch(batch);
        Ok(count)
    }

    fn index_batch(&self, batch: Vec<(Key, Slot)>) -> usize {
        let msg_dir = &self.msg_dir;
        let batch = batch
            .into_iter()
            .map(|(key, slot)| (key, slot, None))
            .collect();
        self.shared
            .insert_found(batch, |key| msg_dir.join(id_of(key)).exists())
    }

    /// One message file's slot; `None` if it is gone or was set aside.
    fn read_file(
        &self,
        path: &Path,
        key: Key,
        origins: &HashMap<Key, u64>,
    ) -> io::Result<Option<Slot>> {
        let bytes = match fs::read(path) {
            Ok(bytes) => bytes,
            // Removed since the directory was read (a known id).
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        match format::decode(&bytes) {
            Ok(decoded) => {
                if decoded.good_len < bytes.len() {
                    tracing::warn!(file = %path.display(), "truncating a torn spool journal record");
                    let file = OpenOptions::new().write(true).open(path)?;
                    file.set_len(decoded.good_len as u64)?;
                    self.fsyncs.fetch_add(1, Ordering::Relaxed);
                    file.sync_all()?;
                }
                let place = Place::File {
                    origin: origins.get(&key).copied(),
                };
                let due = decoded
                    .stored
                    .meta
                    .timestamp
                    .unwrap_or(SystemTime::UNIX_EPOCH);
                Ok(Some(Slot::new(
                    place,
                    due,
                    decoded.stored.envelope.receive_time,
                )))
            }
            Err(Invalid::NewerVersion(v)) => Err(newer_version(path.display(), "spool", v)),
            Err(Invalid::Corrupt(why)) => {
                set_aside(path, &self.corrupt_dir, "", why)?;
                Ok(None)
            }
        }
    }
}
