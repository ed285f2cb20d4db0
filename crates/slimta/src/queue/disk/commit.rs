//! Group commit: one sync for everything waiting at one moment.
//!
//! One committer thread owns every change that must be durable before
//! someone is answered, takes all jobs waiting when it wakes, applies them,
//! syncs as few times as it can, and answers them all. While it syncs, new
//! jobs queue up and form the next batch, so the batch grows with the load
//! and no timer or batch size is needed: an idle spool commits a lone
//! message at once.
//!
//! A batch runs in this order:
//!
//! 1. **Journal appends** (`disk/journal.rs`): the `NEW` record of every
//!    small new message, the `META` record of every attempt's outcome (or
//!    retry time) of a message still only in the journal, and the `REMOVE`
//!    record of every removal whose message is (or was) in a segment that
//!    still exists, appended to the head segment; then one `fdatasync` of
//!    it. A segment that has grown
//!    past its size is closed first and a new head started (its directory
//!    entry fsync'd before anything in it is acknowledged).
//! 2. **Directory changes** in `msg/`: renames of written and fsync'd files
//!    (big new messages, and journal messages moved to their own file, a
//!    "spill"), unlinks of removed messages' files; then one fsync of
//!    `msg/`.
//! 3. **Segment deletion**: closed segments at the front of the journal
//!    whose every message is gone (removed or spilled) are unlinked, oldest
//!    first, each followed by a fsync of `journal/`, so a segment's
//!    `REMOVE` records never disappear while an older segment with the
//!    matching `NEW` record could come back after a crash.
//! 4. The index (`disk/index.rs`) learns what the batch made durable: a
//!    removed message is forgotten, a spilled one's place is its file.
//!    Doing it here, before anyone is answered, means whoever reads the
//!    index after an answer (or after a refusal: a `META` for a message
//!    that is no longer resident) sees where the message is now.
//! 5. Every job is answered.
//!
//! The committer keeps, per segment, the ids whose only copy is in that
//! segment ("residents"). An id leaves when its `REMOVE` is synced or its
//! spill is durable. A spill of an id that is no longer resident (removed
//! in the meantime) is dropped and answered [`Done::Gone`], so a removed
//! message never gets a file of its own. The committer also counts each
//! resident's `META` records: a spill carries the count of records it
//! copied into the file, and one made stale by a later `META` is dropped
//! the same way (the next spill pass copies it again), so a file never
//! misses an outcome that the journal acknowledged. A `META` for an id that
//! is no longer resident is not appended and is answered [`Done::Gone`]:
//! the caller then finds the message in its file, or gone. When more closed segments than
//! allowed still hold residents, the committer asks (through
//! `spill_below`) for the residents of the oldest ones to be spilled; the
//! spill thread (`disk/spill.rs`) does that, and the segments then drain.
//!
//! Start-up: the spool opens before its old segments are read (see
//! `disk/scan.rs`), so the committer starts with the old segments known
//! by name but their residents not yet: until the scan hands them over
//! ([`Change::Adopt`]) no segment is deleted and no spill is asked for,
//! as an old segment that looks empty may still hold messages.
//!
//! Failures: if a journal sync fails, every job that appended in that
//! batch gets the error, the head is cut back to where the batch started
//! and abandoned (the next append starts a new segment), and none of the
//! batch's ids become resident. A record that still reached the disk can
//! make a message reported as not stored turn up after a restart
//! (delivered once more than the client expects), never the reverse. If
//! the `msg/` fsync fails, the batch's renamed files are unlinked again and
//! the renames and unlinks are answered with the error, as before the
//! journal existed.

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File, OpenOptions};
use std::io::{self, IoSlice, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::thread;

use tokio::sync::{Notify, oneshot};

use super::index::{MAX_SEGMENT, MAX_SEGMENT_SIZE, Place, Shared, key_of};
use super::journal;
use super::write_all_vectored;
use crate::envelope::Envelope;

/// One change waiting for its sync.
pub(crate) struct Job {
    change: Change,
    done: oneshot::Sender<io::Result<Done>>,
}

/// What a job does.
pub(crate) enum Change {
    /// Renames a written and fsync'd file into `msg/`.
    Rename { tmp: PathBuf, dest: PathBuf },
    /// Renames a written and synced copy of journal message `id` (resident
    /// in `segment`, with its first `metas` `META` records in the copy)
    /// into `msg/`, unless the message is gone or has more records by then.
    Spill {
        tmp: PathBuf,
        dest: PathBuf,
        id: String,
        segment: u64,
        metas: u32,
    },
    /// Appends a `META` record (`record`, one encoded metadata record) for
    /// message `id`, if it is still resident in `segment`.
    Meta {
        id: String,
        segment: u64,
        record: Vec<u8>,
    },
    /// Appends a `NEW` record: `prefix`, the spool file `head`, message,
    /// `tail`, `crc` (see [`Change::new_record`]).
    New {
        id: String,
        prefix: Vec<u8>,
        head: Vec<u8>,
        envelope: Arc<Envelope>,
        tail: Vec<u8>,
        crc: [u8; 4],
    },
    /// Removes message `id`: a `REMOVE` record if `origin` (the segment
    /// its `NEW` record went to) still exists, and an unlink of its file
    /// `path` if there is one. `had_file`: the storage believes the file
    /// exists, so the directory is fsync'd even if it is already gone (an
    /// earlier unlink may not be durable yet).
    Remove {
        id: String,
        path: PathBuf,
        origin: Option<u64>,
        had_file: bool,
    },
    /// Lists the residents of every segment older than `below`, and the
    /// deferred ones (with a `META` record) of every closed segment.
    Residents { below: u64 },
    /// The start-up scan's findings: the residents of the segments found
    /// at start-up; those not named (set aside as unreadable) are
    /// forgotten. Ends the start-up state.
    Adopt { residents: BTreeMap<u64, Residents> },
}

impl Change {
    /// A [`Change::New`] with its record's framing and CRC computed here,
    /// by the writer, so that the committer thread every batch waits for
    /// only writes.
    pub(crate) fn new_record(
        id: String,
        head: Vec<u8>,
        envelope: Arc<Envelope>,
        tail: Vec<u8>,
    ) -> Self {
        let (prefix, crc) = journal::new_record_around(&id, &[&head, &envelope.message, &tail]);
        Change::New {
            id,
            prefix,
            head,
            envelope,
            tail,
            crc,
        }
    }
}

/// A journal message whose only copy is in a segment: id, segment, and
/// its record's offset and length there.
pub(crate) type Resident = (String, u64, u64, u64);

/// Where each resident's `NEW` record is in its segment (offset and
/// length), and how many `META` records it has had since.
pub(crate) type Residents = HashMap<String, (u64, u64, u32)>;

/// How a job ended.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Done {
    /// Durable.
    Committed,
    /// A `NEW` record is durable at `offset` (`len` bytes) in `segment`.
    Placed { segment: u64, offset: u64, len: u64 },
    /// A spill found its message already removed (or with a newer `META`
    /// record than it copied), or a `META` found its message no longer
    /// resident; nothing was changed.
    Gone,
    /// The answer to [`Change::Residents`].
    Residents(Vec<Resident>),
}

struct Head {
    seq: u64,
    file: File,
    len: u64,
}

/// The journal as the committer thread owns it.
pub(crate) struct Journal {
    dir: PathBuf,
    dir_handle: File,
    head: Option<Head>,
    next_seq: u64,
    /// Every segment on disk, closed ones and the head, with the messages
    /// whose only copy is in it.
    segments: BTreeMap<u64, Residents>,
    segment_size: u64,
    closed_segments: usize,
    /// Segments numbered below this were found at start-up.
    first_new: u64,
    /// The residents of the segments found at start-up are not known yet.
    loading: bool,
    /// A closed segment may hold a deferred resident (one with a `META`
    /// record): set when one closes with such a resident or a resident of
    /// a closed one gets a `META`, cleared when the residents are listed.
    deferred_closed: Arc<AtomicBool>,
}

impl Journal {
    /// The journal in `dir`, holding `segments` (found at start-up, all
    /// closed) and their residents; new segments are numbered after them.
    pub(crate) fn new(
        dir: &Path,
        segments: BTreeMap<u64, Residents>,
        segment_size: u64,
        closed_segments: usize,
    ) -> io::Result<Self> {
        let next_seq = segments.last_key_value().map_or(1, |(&seq, _)| seq + 1);
        Ok(Self {
            dir: dir.to_path_buf(),
            dir_handle: File::open(dir)?,
            head: None,
            next_seq,
            segments,
            segment_size: segment_size.min(MAX_SEGMENT_SIZE),
            closed_segments,
            first_new: next_seq,
            loading: false,
            deferred_closed: Arc::default(),
        })
    }

    /// The same journal, with the residents of its segments still to come
    /// ([`Change::Adopt`]): nothing is deleted or spilled until then.
    pub(crate) fn awaiting_residents(mut self) -> Self {
        self.loading = true;
        self
    }

    /// Takes the residents of the start-up segments over from the scan.
    fn adopt(&mut self, mut found: BTreeMap<u64, Residents>) {
        let first_new = self.first_new;
        self.segments.retain(|seq, residents| {
            if *seq >= first_new {
                return true;
            }
            match found.remove(seq) {
                Some(adopted) => {
                    if adopted.values().any(|&(_, _, metas)| metas > 0) {
                        self.deferred_closed.store(true, Ordering::Relaxed);
                    }
                    residents.extend(adopted);
                    true
                }
                None => false,
            }
        });
        self.loading = false;
    }

    fn head_seq(&self) -> Option<u64> {
        self.head.as_ref().map(|h| h.seq)
    }

    /// The head segment, starting a new one if there is none or it is full.
    fn ready_head(&mut self, fsyncs: &AtomicU64) -> io::Result<&mut Head> {
        let full = self
            .head
            .as_ref()
            .is_none_or(|h| h.len >= self.segment_size);
        if full {
            let seq = self.next_seq;
            if seq > MAX_SEGMENT {
                // 2^32 segments: the index could not tell them apart.
                return Err(io::Error::other("journal segment numbers exhausted"));
            }
            let path = self.dir.join(journal::segment_name(seq));
            let mut file = OpenOptions::new()
                .append(true)
                .create_new(true)
                .open(&path)?;
            self.next_seq += 1;
            let started = file.write_all(&journal::header()).and_then(|()| {
                // The segment's directory entry must be durable before a
                // record in it is acknowledged; the header itself is
                // covered by the first batch's fdatasync.
                fsyncs.fetch_add(1, Ordering::Relaxed);
                self.dir_handle.sync_all()
            });
            if let Err(e) = started {
                let _ = fs::remove_file(&path);
                return Err(e);
            }
            let closing = self.head.as_ref().map(|h| h.seq);
            if let Some(closed) = closing.and_then(|s| self.segments.get(&s))
                && closed.values().any(|&(_, _, metas)| metas > 0)
            {
                self.deferred_closed.store(true, Ordering::Relaxed);
            }
            self.segments.insert(seq, Residents::new());
            self.head = Some(Head {
                seq,
                file,
                len: journal::HEADER_LEN as u64,
            });
        }
        Ok(self.head.as_mut().expect("a head segment was just ensured"))
    }

    fn is_resident(&self, segment: u64, id: &str) -> bool {
        self.segments
            .get(&segment)
            .is_some_and(|r| r.contains_key(id))
    }

    /// Whether `id` is resident in `segment` with exactly `metas` `META`
    /// records.
    fn is_resident_with(&self, segment: u64, id: &str, metas: u32) -> bool {
        self.segments
            .get(&segment)
            .and_then(|r| r.get(id))
            .is_some_and(|&(_, _, m)| m == metas)
    }

    /// Unlinks drained closed segments from the front, oldest first.
    fn delete_drained(&mut self, fsyncs: &AtomicU64) {
        if self.loading {
            return;
        }
        let head = self.head_seq();
        while let Some((&seq, residents)) = self.segments.first_key_value() {
            if Some(seq) == head || !residents.is_empty() {
                break;
            }
            let path = self.dir.join(journal::segment_name(seq));
            let deleted = match fs::remove_file(&path) {
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
                other => other,
            }
            .and_then(|()| {
                fsyncs.fetch_add(1, Ordering::Relaxed);
                self.dir_handle.sync_all()
            });
            if let Err(e) = deleted {
                tracing::error!(segment = %path.display(), error = %e, "could not delete a drained journal segment");
                break;
            }
            self.segments.remove(&seq);
        }
    }

    /// The residents to move to files: all of those in segments older than
    /// `below`, and the deferred ones of the other closed segments. Clears
    /// the deferred flag (a later `META` or close sets it again).
    fn to_spill(&self, below: u64) -> Vec<Resident> {
        self.deferred_closed.store(false, Ordering::Relaxed);
        // `below` is never past a closed segment, except in tests that
        // move everything (`u64::MAX`), the head included.
        let head = self.head_seq();
        self.segments
            .iter()
            .flat_map(|(&segment, residents)| {
                let closed = Some(segment) != head;
                residents
                    .iter()
                    .filter(move |&(_, &(_, _, metas))| segment < below || (closed && metas > 0))
                    .map(move |(id, &(offset, len, _))| (id.clone(), segment, offset, len))
            })
            .collect()
    }

    /// The first segment whose residents may stay where they are; every
    /// resident of an older segment should be spilled (0: none).
    fn spill_below(&self) -> u64 {
        // Runs after every batch, so without allocating.
        if self.loading {
            return 0;
        }
        let head = self.head_seq();
        let closed = self.segments.len() - usize::from(head.is_some());
        let Some(spilled) = closed.checked_sub(self.closed_segments + 1) else {
            return 0;
        };
        // The newest segment to spill, plus one.
        self.segments
            .keys()
            .filter(|&&s| Some(s) != head)
            .nth(spilled)
            .map_or(0, |&s| s + 1)
    }
}

/// The handle writers use to reach the committer thread. The thread ends
/// when the last handle (clones included) is dropped.
#[derive(Clone)]
pub(crate) struct Committer {
    jobs: Sender<Job>,
    spill_below: Arc<AtomicU64>,
    deferred_closed: Arc<AtomicBool>,
    counts: Arc<JournalCounts>,
    /// More segments than this on disk and new messages wait for the
    /// spill thread (see [`Committer::wait_for_room`]).
    segment_limit: u64,
}

/// The journal's size as of the committer's last batch, for operators
/// and for the intake's back-pressure.
#[derive(Default)]
pub(crate) struct JournalCounts {
    segments: AtomicU64,
    residents: AtomicU64,
    /// Woken whenever a batch leaves fewer segments than the one before.
    shrunk: Notify,
}

impl JournalCounts {
    fn update(&self, journal: &Journal) {
        let segments = journal.segments.len() as u64;
        let before = self.segments.swap(segments, Ordering::Relaxed);
        let residents: usize = journal.segments.values().map(HashMap::len).sum();
        self.residents.store(residents as u64, Ordering::Relaxed);
        if segments < before {
            self.shrunk.notify_waiters();
        }
    }
}

/// Segments on disk (the head included) beyond which new messages wait.
fn journal_segment_limit(closed_segments: usize) -> u64 {
    (closed_segments as u64).saturating_mul(2).max(2) + 1
}

fn stopped() -> io::Error {
    io::Error::other("spool commit thread stopped")
}

/// The same error again, for every job that shares it.
fn again(e: &io::Error) -> io::Error {
    io::Error::new(e.kind(), e.to_string())
}

impl Committer {
    /// Starts the committer for the message directory `msg_dir` and
    /// `journal`, after deleting the journal's drained segments.
    pub(crate) fn spawn(
        msg_dir: &Path,
        mut journal: Journal,
        fsyncs: Arc<AtomicU64>,
        shared: Arc<Shared>,
    ) -> io::Result<Self> {
        journal.delete_drained(&fsyncs);
        let spill_below = Arc::new(AtomicU64::new(journal.spill_below()));
        let deferred_closed = journal.deferred_closed.clone();
        let counts = Arc::new(JournalCounts::default());
        counts.update(&journal);
        let segment_limit = journal_segment_limit(journal.closed_segments);
        let mut state = CommitThread {
            msg_dir: File::open(msg_dir)?,
            journal,
            fsyncs,
            spill_below: spill_below.clone(),
            counts: counts.clone(),
            shared,
        };
        let (jobs, rx) = channel();
        thread::Builder::new()
            .name("slimta-spool-commit".into())
            .spawn(move || state.run(&rx))?;
        Ok(Self {
            jobs,
            spill_below,
            deferred_closed,
            counts,
            segment_limit,
        })
    }

    /// Back-pressure for new journal messages: returns at once while the
    /// journal holds at most its limit of segments (twice
    /// `closed_segments`, plus the head), else once the spill thread has
    /// brought it back under the limit or after `patience`, whichever
    /// comes first. Returns whether it waited.
    ///
    /// Why: with every next hop down, each new message is deferred and
    /// must move to its own file; if the moves fall behind intake (they
    /// share the disk and the processors with it), the journal would grow
    /// without bound. Like Postfix's `in_flow_delay` (1 s), the wait is
    /// bounded, so a spill thread that cannot progress (a failing disk)
    /// slows intake but never stops it.
    pub(crate) async fn wait_for_room(&self, patience: std::time::Duration) -> bool {
        if self.counts.segments.load(Ordering::Relaxed) <= self.segment_limit {
            return false;
        }
        let deadline = tokio::time::Instant::now() + patience;
        loop {
            let shrunk = self.counts.shrunk.notified();
            tokio::pin!(shrunk);
            shrunk.as_mut().enable();
            if self.counts.segments.load(Ordering::Relaxed) <= self.segment_limit {
                return true;
            }
            tokio::select! {
                () = tokio::time::sleep_until(deadline) => return true,
                () = &mut shrunk => {}
            }
        }
    }

    /// Renames `tmp` (fully written and fsync'd) to `dest` and returns once
    /// the directory entry is durable.
    pub(crate) async fn commit(&self, tmp: PathBuf, dest: PathBuf) -> io::Result<()> {
        self.submit(Change::Rename { tmp, dest }).await.map(drop)
    }

    /// Renames each spilled copy `(tmp, dest, id, segment, metas)` into
    /// place (see [`Change::Spill`]), all submitted at once so they share
    /// one batch and one `msg/` sync, and waits for every answer. For the
    /// spill thread, never async code. The first error, if any.
    pub(crate) fn spill_blocking(
        &self,
        copies: Vec<(PathBuf, PathBuf, String, u64, u32)>,
    ) -> io::Result<()> {
        let answers: Vec<_> = copies
            .into_iter()
            .map(|(tmp, dest, id, segment, metas)| {
                self.send(Change::Spill {
                    tmp,
                    dest,
                    id,
                    segment,
                    metas,
                })
            })
            .collect::<io::Result<_>>()?;
        let mut failed = None;
        for answer in answers {
            if let Err(e) = answer
                .blocking_recv()
                .map_err(|_| stopped())
                .and_then(|r| r)
            {
                failed.get_or_insert(e);
            }
        }
        failed.map_or(Ok(()), Err)
    }

    /// Appends `record` (one encoded metadata record) to journal message
    /// `id` of `segment` as a `META` record; returns once it is durable.
    /// `Ok(false)` if the message is no longer resident there (moved to
    /// its file, or removed: the index shows which).
    pub(crate) async fn append_meta(
        &self,
        id: String,
        segment: u64,
        record: Vec<u8>,
    ) -> io::Result<bool> {
        let done = self
            .submit(Change::Meta {
                id,
                segment,
                record,
            })
            .await?;
        Ok(done != Done::Gone)
    }

    /// Appends a new message to the journal; returns where its record is
    /// (segment, offset, length) once it is durable.
    pub(crate) async fn append_new(
        &self,
        id: String,
        head: Vec<u8>,
        envelope: Arc<Envelope>,
        tail: Vec<u8>,
    ) -> io::Result<(u64, u64, u64)> {
        match self
            .submit(Change::new_record(id, head, envelope, tail))
            .await?
        {
            Done::Placed {
                segment,
                offset,
                len,
            } => Ok((segment, offset, len)),
            other => Err(io::Error::other(format!(
                "journal append answered {other:?}"
            ))),
        }
    }

    /// Removes message `id` (see [`Change::Remove`]) and returns once the
    /// removal is durable. A message already gone is not an error.
    pub(crate) async fn remove(
        &self,
        id: String,
        path: PathBuf,
        origin: Option<u64>,
        had_file: bool,
    ) -> io::Result<()> {
        self.submit(Change::Remove {
            id,
            path,
            origin,
            had_file,
        })
        .await
        .map(drop)
    }

    /// The residents of every segment older than `below`, and the
    /// deferred residents of closed segments (see [`Change::Residents`]).
    /// For the spill thread, never async code.
    pub(crate) fn residents_blocking(&self, below: u64) -> io::Result<Vec<Resident>> {
        match self.submit_blocking(Change::Residents { below })? {
            Done::Residents(list) => Ok(list),
            other => Err(io::Error::other(format!("residents answered {other:?}"))),
        }
    }

    /// Hands the start-up scan's residents over (see [`Change::Adopt`]);
    /// blocks until the committer has them. For the scan's thread, never
    /// async code.
    pub(crate) fn adopt_blocking(&self, residents: BTreeMap<u64, Residents>) -> io::Result<()> {
        self.submit_blocking(Change::Adopt { residents }).map(drop)
    }

    /// Segments on disk, and messages whose only copy is in one.
    pub(crate) fn journal_counts(&self) -> (u64, u64) {
        (
            self.counts.segments.load(Ordering::Relaxed),
            self.counts.residents.load(Ordering::Relaxed),
        )
    }

    /// Residents of segments older than this should be spilled (0: none).
    pub(crate) fn spill_below(&self) -> u64 {
        self.spill_below.load(Ordering::Relaxed)
    }

    /// A closed segment may hold deferred residents, which should be
    /// spilled (the next [`Committer::residents_blocking`] lists them).
    pub(crate) fn deferred_waiting(&self) -> bool {
        self.deferred_closed.load(Ordering::Relaxed)
    }

    /// Hands `change` to the committer thread; the receiver gets its answer.
    fn send(&self, change: Change) -> io::Result<oneshot::Receiver<io::Result<Done>>> {
        let (done, answer) = oneshot::channel();
        self.jobs
            .send(Job { change, done })
            .map_err(|_| stopped())?;
        Ok(answer)
    }

    async fn submit(&self, change: Change) -> io::Result<Done> {
        self.send(change)?.await.map_err(|_| stopped())?
    }

    /// [`Committer::submit`] for the scan and spill threads, never async
    /// code.
    fn submit_blocking(&self, change: Change) -> io::Result<Done> {
        self.send(change)?.blocking_recv().map_err(|_| stopped())?
    }
}

/// The committer thread's state.
pub(crate) struct CommitThread {
    msg_dir: File,
    journal: Journal,
    fsyncs: Arc<AtomicU64>,
    spill_below: Arc<AtomicU64>,
    counts: Arc<JournalCounts>,
    /// The index, told of removals and spills before they are answered.
    shared: Arc<Shared>,
}

impl CommitThread {
    /// The committer loop: one batch per wake-up.
    pub(crate) fn run(&mut self, jobs: &Receiver<Job>) {
        while let Ok(first) = jobs.recv() {
            let batch: Vec<Job> = std::iter::once(first).chain(jobs.try_iter()).collect();
            self.commit_batch(batch);
        }
    }

    fn appends(&self, change: &Change) -> bool {
        match change {
            Change::New { .. } => true,
            Change::Meta { id, segment, .. } => self.journal.is_resident(*segment, id),
            Change::Remove {
                origin: Some(segment),
                ..
            } => self.journal.segments.contains_key(segment),
            _ => false,
        }
    }

    /// Step 1: the journal records of the batch, one `fdatasync`.
    fn append_records(&mut self, batch: &[Job], results: &mut [Option<io::Result<Done>>]) {
        let mut appending = Vec::new();
        for (i, job) in batch.iter().enumerate() {
            if self.appends(&job.change) {
                appending.push(i);
            } else if matches!(job.change, Change::Meta { .. }) {
                // No longer resident: moved to its file, or removed.
                results[i] = Some(Ok(Done::Gone));
            }
        }
        if appending.is_empty() {
            return;
        }
        let fsyncs = self.fsyncs.clone();
        let head = match self.journal.ready_head(&fsyncs) {
            Ok(head) => head,
            Err(e) => {
                tracing::error!(error = %e, "could not start a journal segment");
                for i in appending {
                    results[i] = Some(Err(again(&e)));
                }
                return;
            }
        };
        let (seq, start) = (head.seq, head.len);
        let mut appended = Vec::with_capacity(appending.len());
        // Set when a failed write could not be cut back: the segment's end
        // is then unknown, so nothing more goes into it.
        let mut torn: Option<io::Error> = None;
        for i in appending {
            if let Some(e) = &torn {
                results[i] = Some(Err(again(e)));
                continue;
            }
            let offset = head.len;
            let written = match &batch[i].change {
                Change::New {
                    prefix,
                    head: file_head,
                    envelope,
                    tail,
                    crc,
                    ..
                } => {
                    let mut bufs = [
                        IoSlice::new(prefix),
                        IoSlice::new(file_head),
                        IoSlice::new(&envelope.message),
                        IoSlice::new(tail),
                        IoSlice::new(crc),
                    ];
                    let len: usize = bufs.iter().map(|b| b.len()).sum();
                    write_all_vectored(&mut head.file, &mut bufs).map(|()| {
                        let placed = Done::Placed {
                            segment: seq,
                            offset,
                            len: len as u64,
                        };
                        (placed, len as u64)
                    })
                }
                Change::Remove { id, .. } => {
                    let record = journal::remove_record(id);
                    head.file
                        .write_all(&record)
                        .map(|()| (Done::Committed, record.len() as u64))
                }
                Change::Meta { id, record, .. } => {
                    let record = journal::meta_record(id, record);
                    head.file
                        .write_all(&record)
                        .map(|()| (Done::Committed, record.len() as u64))
                }
                _ => unreachable!("only appending jobs are here"),
            };
            match written {
                Ok((done, len)) => {
                    head.len = offset + len;
                    results[i] = Some(Ok(done));
                    appended.push(i);
                }
                Err(e) => {
                    // Leave no half record for the next one to follow; if
                    // even that fails, records after it would sit behind
                    // bytes that replay stops at (acknowledged, then lost).
                    if let Err(cut) = head.file.set_len(offset) {
                        tracing::error!(error = %cut, "cannot cut a failed journal append back; abandoning the segment");
                        torn = Some(again(&e));
                    }
                    results[i] = Some(Err(e));
                }
            }
        }
        if appended.is_empty() {
            if torn.is_some() {
                self.journal.head = None;
            }
            return;
        }
        self.fsyncs.fetch_add(1, Ordering::Relaxed);
        if let Err(e) = head.file.sync_data() {
            tracing::error!(error = %e, "journal fdatasync failed; abandoning the segment");
            let _ = head.file.set_len(start);
            self.journal.head = None;
            for i in appended {
                results[i] = Some(Err(io::Error::new(
                    e.kind(),
                    format!("spool journal fdatasync: {e}"),
                )));
            }
            return;
        }
        if torn.is_some() {
            // The records before the tear are synced and replay reads them;
            // the next append starts a new segment.
            self.journal.head = None;
        }
        for i in appended {
            match &batch[i].change {
                Change::New { id, .. } => {
                    if let (Some(residents), Some(Ok(Done::Placed { offset, len, .. }))) =
                        (self.journal.segments.get_mut(&seq), &results[i])
                    {
                        residents.insert(id.clone(), (*offset, *len, 0));
                    }
                }
                Change::Meta { id, segment, .. } => {
                    if let Some((_, _, metas)) = self
                        .journal
                        .segments
                        .get_mut(segment)
                        .and_then(|r| r.get_mut(id))
                    {
                        *metas += 1;
                        if *segment != seq {
                            self.journal.deferred_closed.store(true, Ordering::Relaxed);
                        }
                    }
                }
                Change::Remove {
                    id,
                    origin: Some(segment),
                    ..
                } => {
                    if let Some(residents) = self.journal.segments.get_mut(segment) {
                        residents.remove(id);
                    }
                }
                _ => {}
            }
        }
    }

    /// Step 2: renames and unlinks in `msg/`, one directory fsync.
    fn change_directory(&mut self, batch: &[Job], results: &mut [Option<io::Result<Done>>]) {
        let mut applied = vec![false; batch.len()];
        let mut changed = false;
        for (i, job) in batch.iter().enumerate() {
            if matches!(results[i], Some(Err(_))) {
                continue;
            }
            let outcome = match &job.change {
                Change::New { .. }
                | Change::Residents { .. }
                | Change::Adopt { .. }
                | Change::Meta { .. } => continue,
                Change::Rename { tmp, dest } => fs::rename(tmp, dest).inspect_err(|_| {
                    let _ = fs::remove_file(tmp);
                }),
                Change::Spill {
                    tmp,
                    dest,
                    id,
                    segment,
                    metas,
                } => {
                    if self.journal.is_resident_with(*segment, id, *metas) {
                        fs::rename(tmp, dest).inspect_err(|_| {
                            let _ = fs::remove_file(tmp);
                        })
                    } else {
                        let _ = fs::remove_file(tmp);
                        results[i] = Some(Ok(Done::Gone));
                        continue;
                    }
                }
                Change::Remove { path, had_file, .. } => match fs::remove_file(path) {
                    Err(e) if e.kind() == io::ErrorKind::NotFound && !had_file => continue,
                    // Already gone (an earlier removal whose answer was
                    // lost, or an operator's delete racing an attempt):
                    // still fsync, in case that unlink is not durable yet.
                    Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
                    other => other,
                },
            };
            match outcome {
                Ok(()) => {
                    applied[i] = true;
                    changed = true;
                }
                Err(e) => results[i] = Some(Err(e)),
            }
        }
        if !changed {
            return;
        }
        self.fsyncs.fetch_add(1, Ordering::Relaxed);
        let synced = self.msg_dir.sync_all();
        if let Err(e) = &synced {
            tracing::error!(error = %e, "spool directory fsync failed");
        }
        for (i, job) in batch.iter().enumerate().filter(|(i, _)| applied[*i]) {
            match (&job.change, &synced) {
                (Change::Spill { id, segment, .. }, Ok(())) => {
                    if let Some(residents) = self.journal.segments.get_mut(segment) {
                        residents.remove(id);
                    }
                    results[i] = Some(Ok(Done::Committed));
                }
                (_, Ok(())) => {
                    if results[i].is_none() {
                        results[i] = Some(Ok(Done::Committed));
                    }
                }
                (change, Err(e)) => {
                    if let Change::Rename { dest, .. } | Change::Spill { dest, .. } = change {
                        // Told "not stored", so it must not turn up later.
                        let _ = fs::remove_file(dest);
                    }
                    results[i] = Some(Err(io::Error::new(
                        e.kind(),
                        format!("spool directory fsync: {e}"),
                    )));
                }
            }
        }
    }

    /// Step 4: the index forgets what was removed and finds spilled
    /// messages in their files (see the module docs). Only an entry still
    /// there is changed: a removed message is never indexed again.
    fn tell_index(&self, batch: &[Job], results: &[Option<io::Result<Done>>]) {
        let mut index = None;
        for (job, result) in batch.iter().zip(results) {
            if !matches!(result, Some(Ok(Done::Committed)) | None) {
                continue;
            }
            match &job.change {
                Change::Remove { id, .. } => {
                    if let Some(key) = key_of(id) {
                        index.get_or_insert_with(|| self.shared.index()).forget(key);
                    }
                }
                Change::Spill { id, segment, .. } => {
                    if let Some(key) = key_of(id) {
                        let index = index.get_or_insert_with(|| self.shared.index());
                        if let Some(slot) = index.slots.get_mut(&key) {
                            slot.set_place(Place::File {
                                origin: Some(*segment),
                            });
                        }
                        index.pending.remove(&key);
                    }
                }
                _ => {}
            }
        }
    }

    fn commit_batch(&mut self, mut batch: Vec<Job>) {
        for job in &mut batch {
            if let Change::Adopt { residents } = &mut job.change {
                self.journal.adopt(std::mem::take(residents));
            }
        }
        let mut results: Vec<Option<io::Result<Done>>> = (0..batch.len()).map(|_| None).collect();
        self.append_records(&batch, &mut results);
        self.change_directory(&batch, &mut results);
        self.tell_index(&batch, &results);
        self.journal.delete_drained(&self.fsyncs);
        self.spill_below
            .store(self.journal.spill_below(), Ordering::Relaxed);
        self.counts.update(&self.journal);
        for (job, result) in batch.iter().zip(results.iter_mut()) {
            if let Change::Residents { below } = job.change {
                *result = Some(Ok(Done::Residents(self.journal.to_spill(below))));
            }
        }
        for (job, result) in batch.into_iter().zip(results) {
            // The writer may have gone away (its future was dropped); a new
            // message is then stored but unscheduled until the next start.
            let _ = job.done.send(result.unwrap_or(Ok(Done::Committed)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Spool {
        _dir: tempfile::TempDir,
        tmp: PathBuf,
        msg: PathBuf,
        journal: PathBuf,
    }

    fn spool() -> Spool {
        let dir = tempfile::tempdir().unwrap();
        let (tmp, msg, journal) = (
            dir.path().join("tmp"),
            dir.path().join("msg"),
            dir.path().join("journal"),
        );
        for d in [&tmp, &msg, &journal] {
            fs::create_dir_all(d).unwrap();
        }
        Spool {
            _dir: dir,
            tmp,
            msg,
            journal,
        }
    }

    fn thread(spool: &Spool) -> CommitThread {
        CommitThread {
            msg_dir: File::open(&spool.msg).unwrap(),
            journal: Journal::new(&spool.journal, BTreeMap::new(), 1 << 20, 4).unwrap(),
            fsyncs: Arc::default(),
            spill_below: Arc::default(),
            counts: Arc::default(),
            shared: Arc::new(Shared::new()),
        }
    }

    /// Runs `changes` as one batch (all waiting before the thread wakes)
    /// and returns the answers.
    fn run_batch(state: &mut CommitThread, changes: Vec<Change>) -> Vec<io::Result<Done>> {
        let (tx, rx) = channel();
        let mut answers = Vec::new();
        for change in changes {
            let (done, answer) = oneshot::channel();
            tx.send(Job { change, done }).unwrap();
            answers.push(answer);
        }
        drop(tx);
        for answer in &mut answers {
            assert!(answer.try_recv().is_err(), "answered before the batch ran");
        }
        state.run(&rx);
        answers
            .into_iter()
            .map(|mut a| a.try_recv().unwrap())
            .collect()
    }

    fn id(n: u8) -> String {
        format!("{n:032x}")
    }

    fn new_message(n: u8) -> Change {
        Change::new_record(
            id(n),
            b"head".to_vec(),
            Arc::new(Envelope::new(
                "s@x.test",
                vec!["r@y.test".into()],
                vec![n; 100],
            )),
            b"tail".to_vec(),
        )
    }

    fn fsyncs(state: &CommitThread) -> u64 {
        state.fsyncs.load(Ordering::Relaxed)
    }

    #[test]
    fn a_batch_of_new_messages_and_removals_shares_one_journal_sync() {
        let spool = spool();
        let mut state = thread(&spool);
        let answers = run_batch(&mut state, (0..10).map(new_message).collect());
        // Starting the first segment fsyncs journal/ once; the ten records
        // share one fdatasync.
        assert_eq!(fsyncs(&state), 2);
        let segment_bytes = fs::read(spool.journal.join(journal::segment_name(1))).unwrap();
        let scan = journal::scan(&segment_bytes).unwrap();
        assert_eq!(scan.entries.len(), 10);
        for (n, answer) in answers.into_iter().enumerate() {
            let Done::Placed {
                segment,
                offset,
                len,
            } = answer.unwrap()
            else {
                panic!("not placed");
            };
            assert_eq!(segment, 1);
            let record = &segment_bytes[offset as usize..(offset + len) as usize];
            let file = journal::new_record_file(record, &id(n as u8)).unwrap();
            assert_eq!(file, [&b"head"[..], &[n as u8; 100], b"tail"].concat());
        }
        assert_eq!(state.journal.segments[&1].len(), 10);

        // Removals: one more fdatasync for all of them, and they leave the
        // residents; the removal of a message never stored (no origin)
        // touches only msg/ and finds nothing there to fsync... but a
        // removal whose storage expected a file fsyncs msg/ anyway.
        let before = fsyncs(&state);
        let removals = (0..5)
            .map(|n| Change::Remove {
                id: id(n),
                path: spool.msg.join(id(n)),
                origin: Some(1),
                had_file: false,
            })
            .collect();
        for answer in run_batch(&mut state, removals) {
            assert_eq!(answer.unwrap(), Done::Committed);
        }
        assert_eq!(fsyncs(&state) - before, 1);
        assert_eq!(state.journal.segments[&1].len(), 5);
        let segment_bytes = fs::read(spool.journal.join(journal::segment_name(1))).unwrap();
        assert_eq!(journal::scan(&segment_bytes).unwrap().entries.len(), 15);
    }

    #[test]
    fn renames_and_unlinks_share_one_directory_fsync() {
        let spool = spool();
        let mut state = thread(&spool);
        for i in 0..3 {
            fs::write(spool.msg.join(id(i)), "delivered").unwrap();
        }
        let mut changes: Vec<Change> = (0..3)
            .map(|i| Change::Remove {
                id: id(i),
                path: spool.msg.join(id(i)),
                origin: None,
                had_file: true,
            })
            .collect();
        for i in 10..15 {
            fs::write(spool.tmp.join(id(i)), format!("message {i}")).unwrap();
            changes.push(Change::Rename {
                tmp: spool.tmp.join(id(i)),
                dest: spool.msg.join(id(i)),
            });
        }
        // A rename whose temporary file is missing fails alone.
        changes.push(Change::Rename {
            tmp: spool.tmp.join("gone"),
            dest: spool.msg.join("gone"),
        });
        // Already gone: answered Ok, like a removal that happened.
        changes.push(Change::Remove {
            id: id(99),
            path: spool.msg.join(id(99)),
            origin: None,
            had_file: true,
        });
        let answers = run_batch(&mut state, changes);
        assert_eq!(fsyncs(&state), 1, "one directory fsync, no journal sync");
        for (n, answer) in answers.into_iter().enumerate() {
            if n == 8 {
                assert_eq!(answer.unwrap_err().kind(), io::ErrorKind::NotFound);
            } else {
                assert_eq!(answer.unwrap(), Done::Committed, "job {n}");
            }
        }
        let mut names: Vec<_> = fs::read_dir(&spool.msg)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, (10..15).map(id).collect::<Vec<_>>());
        assert_eq!(fs::read_dir(&spool.tmp).unwrap().count(), 0);
        assert!(
            state.journal.segments.is_empty(),
            "no journal segment was started for file-only work"
        );
    }

    #[test]
    fn a_spill_moves_a_resident_out_but_never_resurrects_a_removed_one() {
        let spool = spool();
        let mut state = thread(&spool);
        run_batch(&mut state, vec![new_message(1), new_message(2)]);
        for n in [1, 2] {
            fs::write(spool.tmp.join(id(n)), "spilled copy").unwrap();
        }
        let spill = |n: u8| Change::Spill {
            tmp: spool.tmp.join(id(n)),
            dest: spool.msg.join(id(n)),
            id: id(n),
            segment: 1,
            metas: 0,
        };
        // Message 2 is removed in the same batch as its spill: the removal
        // wins whatever the order.
        let answers = run_batch(
            &mut state,
            vec![
                spill(1),
                spill(2),
                Change::Remove {
                    id: id(2),
                    path: spool.msg.join(id(2)),
                    origin: Some(1),
                    had_file: false,
                },
            ],
        );
        let answers: Vec<Done> = answers.into_iter().map(Result::unwrap).collect();
        assert_eq!(answers, [Done::Committed, Done::Gone, Done::Committed]);
        assert_eq!(
            fs::read_to_string(spool.msg.join(id(1))).unwrap(),
            "spilled copy"
        );
        assert!(!spool.msg.join(id(2)).exists());
        assert_eq!(fs::read_dir(&spool.tmp).unwrap().count(), 0);
        // Both left the segment's residents.
        assert!(state.journal.segments[&1].is_empty());
    }

    /// `META` records share the journal's sync, count per resident, make
    /// an older copy's spill stale, and are refused for a message that is
    /// no longer resident; the index learns of spills and removals before
    /// the answers.
    #[test]
    fn meta_records_share_the_sync_and_a_stale_spill_is_dropped() {
        use crate::queue::disk::index::{Pending, Slot};
        let spool = spool();
        let mut state = thread(&spool);
        let placed = run_batch(&mut state, vec![new_message(1), new_message(2)]);
        let now = std::time::SystemTime::now();
        for (n, answer) in [1u8, 2].into_iter().zip(placed) {
            let Done::Placed {
                segment,
                offset,
                len,
            } = answer.unwrap()
            else {
                panic!("not placed");
            };
            let place = Place::Journal {
                segment,
                offset,
                len,
            };
            let key = key_of(&id(n)).unwrap();
            let mut index = state.shared.index();
            index.slots.insert(key, Slot::new(place, now, now));
            index.pending.insert(key, Pending::default());
        }
        let meta = |n: u8| Change::Meta {
            id: id(n),
            segment: 1,
            record: super::super::format::encode_update(&super::super::format::Update::Timestamp(
                now,
            )),
        };
        let before = fsyncs(&state);
        for answer in run_batch(&mut state, vec![meta(1), meta(2), meta(1)]) {
            assert_eq!(answer.unwrap(), Done::Committed);
        }
        assert_eq!(fsyncs(&state) - before, 1, "one journal sync for three");
        assert_eq!(state.journal.segments[&1][&id(1)].2, 2);
        assert_eq!(state.journal.segments[&1][&id(2)].2, 1);
        let bytes = fs::read(spool.journal.join(journal::segment_name(1))).unwrap();
        let metas: Vec<_> = journal::scan(&bytes)
            .unwrap()
            .entries
            .into_iter()
            .filter_map(|e| match e {
                journal::Entry::Meta { id, .. } => Some(id.to_owned()),
                _ => None,
            })
            .collect();
        assert_eq!(metas, [id(1), id(2), id(1)]);

        for n in [1, 2] {
            fs::write(spool.tmp.join(id(n)), "copy").unwrap();
        }
        let spill = |n: u8, metas: u32| Change::Spill {
            tmp: spool.tmp.join(id(n)),
            dest: spool.msg.join(id(n)),
            id: id(n),
            segment: 1,
            metas,
        };
        // 1's copy has one record of its two: stale. 2's is whole.
        let answers: Vec<Done> = run_batch(&mut state, vec![spill(1, 1), spill(2, 1)])
            .into_iter()
            .map(Result::unwrap)
            .collect();
        assert_eq!(answers, [Done::Gone, Done::Committed]);
        assert!(!spool.msg.join(id(1)).exists());
        assert!(spool.msg.join(id(2)).exists());
        assert_eq!(fs::read_dir(&spool.tmp).unwrap().count(), 0);
        {
            let index = state.shared.index();
            let (k1, k2) = (key_of(&id(1)).unwrap(), key_of(&id(2)).unwrap());
            assert!(matches!(index.slots[&k1].place(), Place::Journal { .. }));
            assert_eq!(index.slots[&k2].place(), Place::File { origin: Some(1) });
            assert!(index.pending.contains_key(&k1));
            assert!(!index.pending.contains_key(&k2));
        }
        // 2 is in its file now: a META for it is refused, not appended.
        assert_eq!(
            run_batch(&mut state, vec![meta(2)]).pop().unwrap().unwrap(),
            Done::Gone
        );
        // A removal is forgotten by the index once durable.
        let removed = run_batch(
            &mut state,
            vec![Change::Remove {
                id: id(1),
                path: spool.msg.join(id(1)),
                origin: Some(1),
                had_file: false,
            }],
        );
        assert_eq!(
            removed.into_iter().next().unwrap().unwrap(),
            Done::Committed
        );
        let index = state.shared.index();
        let k1 = key_of(&id(1)).unwrap();
        assert!(!index.slots.contains_key(&k1) && !index.pending.contains_key(&k1));
    }

    #[test]
    fn drained_segments_are_deleted_oldest_first_and_old_residents_are_listed_for_spilling() {
        let spool = spool();
        let mut state = thread(&spool);
        // Tiny segments: every batch starts a new one; one closed segment
        // may keep messages.
        state.journal.segment_size = 1;
        state.journal.closed_segments = 1;
        for n in 1..=4 {
            run_batch(&mut state, vec![new_message(n)]);
        }
        assert_eq!(
            state.journal.segments.keys().copied().collect::<Vec<_>>(),
            [1, 2, 3, 4]
        );
        // Segments 1 and 2 are closed beyond the one allowed.
        assert_eq!(state.spill_below.load(Ordering::Relaxed), 3);
        let answers = run_batch(&mut state, vec![Change::Residents { below: 3 }]);
        let Ok(Done::Residents(mut listed)) = answers.into_iter().next().unwrap() else {
            panic!("no residents");
        };
        listed.sort();
        assert_eq!(
            listed
                .iter()
                .map(|r| (r.0.clone(), r.1))
                .collect::<Vec<_>>(),
            [(id(1), 1), (id(2), 2)]
        );
        // Removing message 2 drains segment 2, but segment 1 still holds
        // message 1, so segment 2 stays (its REMOVE records could matter
        // for segment 1).
        let remove = |n: u8, origin: u64| Change::Remove {
            id: id(n),
            path: spool.msg.join(id(n)),
            origin: Some(origin),
            had_file: false,
        };
        run_batch(&mut state, vec![remove(2, 2)]);
        assert!(spool.journal.join(journal::segment_name(2)).exists());
        // Draining segment 1 deletes both, in order.
        run_batch(&mut state, vec![remove(1, 1)]);
        for seq in [1, 2] {
            assert!(!spool.journal.join(journal::segment_name(seq)).exists());
        }
        // (Each removal went to a new segment of its own: 5 and 6.)
        assert_eq!(
            state.journal.segments.keys().copied().collect::<Vec<_>>(),
            [3, 4, 5, 6]
        );
    }

    /// Back-pressure: a new message waits while the journal holds more
    /// segments than its limit, and goes on once a segment is deleted (or
    /// its patience runs out).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn new_messages_wait_while_the_journal_is_over_its_limit() {
        let spool = spool();
        // One closed segment kept: at most three on disk (see
        // `journal_segment_limit`). Each new message (1,000 bytes) fills a
        // segment; the small REMOVE records below share one.
        let size = journal::HEADER_LEN as u64 + 600;
        let journal = Journal::new(&spool.journal, BTreeMap::new(), size, 1).unwrap();
        let limit = journal_segment_limit(1);
        assert_eq!(limit, 3);
        let committer =
            Committer::spawn(&spool.msg, journal, Arc::default(), Arc::new(Shared::new())).unwrap();
        let patience = std::time::Duration::from_secs(60);
        assert!(!committer.wait_for_room(patience).await, "room at first");
        let mut placed = Vec::new();
        for n in 0..5 {
            let envelope = Envelope::new("s@x.test", vec!["r@y.test".into()], vec![n; 1000]);
            let (segment, ..) = committer
                .append_new(
                    id(n),
                    b"head".to_vec(),
                    Arc::new(envelope),
                    b"tail".to_vec(),
                )
                .await
                .unwrap();
            placed.push((id(n), segment));
        }
        assert_eq!(committer.journal_counts().0, 5);
        // Nothing drains: it gives up after its patience, still over.
        let short = std::time::Duration::from_millis(50);
        assert!(committer.wait_for_room(short).await);
        assert_eq!(committer.journal_counts().0, 5);
        // Removals drain the four oldest segments (their records go to one
        // new segment): the wait ends with room.
        let waiter = {
            let committer = committer.clone();
            tokio::spawn(async move { committer.wait_for_room(patience).await })
        };
        for (id, segment) in &placed[..4] {
            let path = spool.msg.join(id);
            committer
                .remove(id.clone(), path, Some(*segment), false)
                .await
                .unwrap();
        }
        assert!(waiter.await.unwrap(), "it waited");
        assert!(committer.journal_counts().0 <= limit);
    }
}
