//! Durable storage in a spool directory (the app's default queue storage):
//! a shared journal for new messages, and one file per message for the
//! ones that stay.
//!
//! Layout under the spool directory:
//!
//! ```text
//! lock              held (advisory lock) by the one DiskStorage using the spool
//! journal/<seq>     journal segments: new messages, deferrals and removals, appended
//! tmp/<id>          a message file being written; never read
//! msg/<id>          a message with a file of its own: envelope + metadata records
//! corrupt/<name>    files that failed to parse at start-up, kept for a human
//! ```
//!
//! The message file format (version 1) is specified at the top of
//! `queue/disk/format.rs`: a magic and version header, the envelope (every
//! field, the message bytes exactly) as the first record, and an
//! append-only list of CRC-checked metadata records. The journal segment
//! format is specified in `queue/disk/journal.rs`; its `NEW` record holds
//! exactly the bytes of a message file.
//!
//! Why a journal: an MTA's typical message is accepted and delivered within
//! moments. With one file per message, each cost a create, a file fsync, a
//! rename, a share of a directory fsync and an unlink with another share,
//! and the disk queue was bound by those syncs (2.7 x Postfix's intake
//! where the target was 4 x). In the journal, every new message waiting at
//! one moment is appended to one segment and covered by one `fdatasync`,
//! and its removal after delivery is one more record covered by the next
//! shared sync: about 0.1 syncs per message under load, and no file
//! system metadata work at all.
//!
//! Decisions:
//! - **New messages** up to [`DiskOptions::journal_max_message`] (1 MiB)
//!   are appended to the head journal segment by the committer thread
//!   (`disk/commit.rs`), which writes every record waiting at that moment
//!   and syncs once before answering them all (group commit: the batch
//!   grows with the load, no timer). The message bytes go from the shared
//!   envelope into one `writev`; no copy is built. [`QueueStorage::write`]
//!   returns after that sync.
//! - **Bigger messages** get their own file at once: written to
//!   `tmp/<id>`, fsync'd on tokio's blocking pool (in parallel with other
//!   writers), renamed to `msg/<id>` by the committer, and `msg/` fsync'd
//!   once per batch, all before `write` returns. A journal segment never
//!   has to hold (or copy around) a 100 MB message.
//! - **An attempt's outcome** ([`QueueStorage::record`]: attempts,
//!   finished recipients, due time, last error, delay warning) is one
//!   metadata record and one shared or own sync. For a message with its
//!   own file it is an `OUTCOME` record appended to that file and
//!   `fdatasync`'d. For a message still in the journal it is a `META`
//!   record (the id and that same encoded record) appended to the head
//!   segment in the committer's group commit: with every next hop down,
//!   each new message is deferred once, and first deferrals then cost
//!   what intake costs, about 0.1 syncs each, instead of a file create,
//!   fsync and rename apiece. The reader (`get`) and the start-up scan
//!   apply a message's `META` records, in order, after its `NEW` record;
//!   the index keeps them (`Pending`, a few dozen bytes per deferral)
//!   until the message moves. A torn append can only damage the last
//!   record; the CRC exposes it, the reader applies an outcome whole or
//!   not at all, and start-up truncates the torn tail away.
//! - **Deferred messages move to their own files in batches** ("spills",
//!   by the spill thread, `disk/spill.rs`): once the segment holding a
//!   deferred message closes, or when more than
//!   [`DiskOptions::closed_segments`] closed segments still hold
//!   messages. A spill copies up to 512 messages (each `NEW` record's
//!   bytes plus its `META` records) to `tmp/`, makes them durable with one
//!   `syncfs` (one `fdatasync` each on systems without it), and renames
//!   them into `msg/` through the committer, which syncs `msg/` once for
//!   the batch. The committer renames a copy only while the message is
//!   still a resident with exactly the `META` records copied: a copy made
//!   stale by a removal or a later deferral is dropped and the message
//!   stays in the journal for the next pass, so spills never lock against
//!   removals or records. The thread is stopped and joined when the last
//!   handle of the storage is dropped, before the spool's lock is
//!   released. If the moves fall behind intake (they share the disk and
//!   the processors with it) and the journal holds more than twice
//!   `closed_segments` segments plus the head, a new message waits up to
//!   1 s for them (`Committer::wait_for_room`, like Postfix's
//!   `in_flow_delay`): the journal stays bounded through a long outage.
//!   (Before, the first deferral moved the message itself, one file
//!   fsync and a `msg/` sync share each: first deferrals ran at 1,250/s,
//!   then 2,000 to 2,500/s with parallel moves, against an intake of
//!   about 5,000/s.)
//! - **Remove** is durable: a `REMOVE` record in the journal (if the
//!   message's `NEW` record is in a segment that still exists) and the
//!   unlink of its file (if it has one), both through the committer, which
//!   answers after the batch's syncs. After a fully successful attempt the
//!   queue records nothing else: the durable removal *is* the record.
//! - **Segments** close at [`DiskOptions::segment_size`] (32 MiB) and are
//!   deleted, oldest first, once every message that came through them is
//!   removed or has its own file. If more than
//!   [`DiskOptions::closed_segments`] (4) closed segments still hold
//!   messages (a backlog behind a slow relay), the messages of the oldest
//!   ones are spilled to files by the spill thread, so a few slow
//!   messages never pin old segments on disk for days.
//!
//! Guarantees, and what a crash can do (the crash models in
//! `tests/storage_disk.rs` and `tests/storage_journal.rs` walk through
//! every state):
//! - A message answered `250` is never lost: `write` returns only after
//!   its journal record is synced (or its file fsync'd, renamed and `msg/`
//!   fsync'd).
//! - A crash leaves a prefix of the head segment (records are appended
//!   and synced in order): each message whole or absent, each removal
//!   applied or not. A torn tail is ignored; a segment is never appended
//!   to after a restart.
//! - A `REMOVE` record wins over `NEW` and `META` records and over a file
//!   of the same id (start-up unlinks that file); a file wins over `NEW`
//!   and `META` records (it is the later, spilled copy with its
//!   metadata, renamed only while no later `META` record existed). A
//!   `META` record must hold one whole good metadata record, or the scan
//!   stops at it as at any torn tail. Segments
//!   are deleted oldest first, each deletion made durable before the next,
//!   so a `REMOVE` record never disappears while an older segment with
//!   the matching `NEW` record could still come back.
//! - After a successful delivery a crash cannot make the message be
//!   delivered again, except inside the window between the relay's `250`
//!   and the durable removal (at most two batched syncs away). A crash
//!   inside that window delivers it again to the recipients not recorded
//!   as done (at-least-once); a crash after it leaves nothing.
//! - If a sync fails, every job of that batch gets the error (see
//!   `disk/commit.rs`); a message reported as not stored may still turn
//!   up after a restart (delivered once more than the client expects),
//!   never the reverse.
//! - **Start-up** ([`DiskStorage::open`]) deletes everything in `tmp/`
//!   (writes that never returned), checks the journal segments' headers
//!   (a newer version stops the open), starts a new segment for new work,
//!   and returns: new messages are accepted at once, whatever the size of
//!   the spool. A background thread (`disk/scan.rs`) then replays the
//!   journal in segment order (unlinking the files its `REMOVE` records
//!   name before anything is indexed), reads `msg/` a file at a time,
//!   truncates torn tails of message files, and moves unreadable files or
//!   segments to `corrupt/` rather than deleting mail; no segment is
//!   deleted or spilled until the journal's messages are handed to the
//!   committer. The ids reach the queue batch by batch as they are indexed
//!   ([`QueueStorage::load_into`]), so due messages are attempted during
//!   the scan. A message file from a newer format version stops the scan,
//!   and the storage then fails every request with that error, new
//!   messages included.
//! - **Before the scan reaches an id**, the id is not in the index, and
//!   the queue learns ids only from the index (its own writes, the load);
//!   `get`, `record`, `set_timestamp` and `remove` of an id not indexed
//!   wait for the scan to finish and then look again, so an operator's
//!   command on an old id works, only later. The scan never indexes an id
//!   already indexed (a message written or moved since the open) nor one
//!   whose file is gone when its batch is indexed (checked under the index
//!   lock, which a removal takes after its unlink), so a removed message
//!   is never indexed again.
//! - The index keeps per message only its place, due time and receive
//!   time (`disk/index.rs`: a 16-byte key and a 24-byte slot, 47 to 94
//!   bytes per message with the hash table's slack), plus the pending
//!   `META` bytes of a deferred message until it moves (spilled within a
//!   segment's lifetime), so a backlog costs memory for its ids, not for
//!   its envelopes. [`QueueStorage::load`] and
//!   [`QueueStorage::summary`] (statistics: count, oldest) read no files;
//!   [`QueueStorage::list`] (operators) and [`QueueStorage::get`] read
//!   them. The index, and the lock file, are why two `DiskStorage`s must
//!   not share a spool; the second `open` fails.
//! - A new message whose writer went away before its answer (its future
//!   dropped after the journal sync) is stored but not indexed; it is
//!   indexed, and attempted, after the next open (a spill pass that moves
//!   it to its own file does not index it either).
//! - Updates to one message are expected one at a time (the queue never
//!   runs two attempts of one message at once).

mod commit;
pub(crate) mod format;
mod index;
mod journal;
mod scan;
mod spill;

use std::fs::{self, File, OpenOptions};
use std::future::Future;
use std::io::{self, IoSlice, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::SystemTime;

use tokio::sync::mpsc::UnboundedSender;

use crate::envelope::Envelope;

use super::storage::{
    AttemptOutcome, LOAD_BATCH, LoadBatch, QueueEntry, QueueStorage, StorageCounters,
    StorageSummary, StoredEnvelope,
};
use commit::{Committer, Journal, Residents};
use format::Update;
use index::{Index, Key, Place, Shared, Slot, key_of};
use scan::Scan;
use spill::{Mover, Spiller};

/// How a [`DiskStorage`] stores new messages.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskOptions {
    /// New messages up to this many bytes go to the shared journal (one
    /// `fdatasync` per group commit); bigger ones get their own file at
    /// once. `0` turns the journal off: every message gets its own file.
    pub journal_max_message: usize,
    /// A journal segment is closed, and a new one started, once it holds
    /// this many bytes (at most 1 GiB: a larger value is taken as 1 GiB).
    pub segment_size: u64,
    /// How many closed segments may still hold messages before the
    /// messages of the oldest ones are moved to their own files (so that a
    /// few slow messages cannot pin old segments on disk for days).
    pub closed_segments: usize,
}

impl Default for DiskOptions {
    /// 1 MiB messages through the journal, 32 MiB segments, 4 closed
    /// segments kept.
    fn default() -> Self {
        Self {
            journal_max_message: 1 << 20,
            segment_size: 32 << 20,
            closed_segments: 4,
        }
    }
}

impl DiskOptions {
    /// No journal: one file per message, as before the journal existed.
    pub fn files_only() -> Self {
        Self {
            journal_max_message: 0,
            ..Self::default()
        }
    }
}

/// How long a new message waits at most for the spill thread when the
/// journal is over its limit of segments.
const JOURNAL_PATIENCE: std::time::Duration = std::time::Duration::from_secs(1);

struct Inner {
    root: PathBuf,
    msg_dir: PathBuf,
    tmp_dir: PathBuf,
    journal_dir: PathBuf,
    options: DiskOptions,
    committer: Committer,
    fsyncs: Arc<AtomicU64>,
    /// Attempt outcomes made durable since open (statistics).
    outcomes: AtomicU64,
    /// The index, and the state of the start-up scan that fills it.
    shared: Arc<Shared>,
    scan_cancel: Arc<AtomicBool>,
    scan_thread: Mutex<Option<JoinHandle<()>>>,
    /// Moves journal messages to their own files; stopped and joined when
    /// this is dropped, before the lock below is released.
    spiller: Spiller,
    // Held for the advisory lock; released when the last clone is dropped
    // (after the scan and spill threads have stopped).
    _lock: File,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.scan_cancel.store(true, Ordering::Relaxed);
        let thread = self
            .scan_thread
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(thread) = thread {
            // Stops between two files; the lock is released only after.
            let _ = thread.join();
        }
    }
}

/// Queue storage in a spool directory. Clones share one spool.
#[derive(Clone)]
pub struct DiskStorage {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for DiskStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DiskStorage")
            .field("path", &self.inner.root)
            .finish_non_exhaustive()
    }
}

/// Runs blocking file work off the async runtime.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(io::Error::other)?
}

fn not_found(id: &str) -> io::Error {
    io::Error::new(io::ErrorKind::NotFound, format!("no queued message {id}"))
}

/// `write_all` for several buffers, in as few `writev` calls as the kernel
/// allows.
fn write_all_vectored(file: &mut File, mut bufs: &mut [IoSlice<'_>]) -> io::Result<()> {
    while !bufs.is_empty() {
        match file.write_vectored(bufs) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => IoSlice::advance_slices(&mut bufs, n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

pub(super) fn sync_dir(path: &Path, fsyncs: &AtomicU64) -> io::Result<()> {
    fsyncs.fetch_add(1, Ordering::Relaxed);
    File::open(path)?.sync_all()
}

/// Writes `parts` to a new file `tmp` and fsyncs it; removes it again on
/// failure.
fn write_synced(tmp: &Path, parts: &[&[u8]], fsyncs: &AtomicU64) -> io::Result<()> {
    let written = (|| {
        let mut file = OpenOptions::new().write(true).create_new(true).open(tmp)?;
        let mut bufs: Vec<IoSlice<'_>> = parts.iter().map(|p| IoSlice::new(p)).collect();
        write_all_vectored(&mut file, &mut bufs)?;
        fsyncs.fetch_add(1, Ordering::Relaxed);
        file.sync_all()
    })();
    if written.is_err() {
        let _ = fs::remove_file(tmp);
    }
    written
}

/// The spool file bytes of journal message `id`, read from its record.
fn read_journal_record(
    journal_dir: &Path,
    id: &str,
    segment: u64,
    offset: u64,
    len: u64,
) -> io::Result<Vec<u8>> {
    let file = File::open(journal_dir.join(journal::segment_name(segment)))?;
    read_record_at(&file, id, segment, offset, len)
}

/// [`read_journal_record`] from segment `segment`, open as `file`.
fn read_record_at(
    file: &File,
    id: &str,
    segment: u64,
    offset: u64,
    len: u64,
) -> io::Result<Vec<u8>> {
    let mut record = vec![0u8; usize::try_from(len).map_err(io::Error::other)?];
    file.read_exact_at(&mut record, offset)?;
    journal::new_record_file(&record, id)
        .map(<[u8]>::to_vec)
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("journal record of {id} in segment {segment} is damaged"),
            )
        })
}

fn decode_file(id: &str, bytes: &[u8]) -> io::Result<StoredEnvelope> {
    match format::decode(bytes) {
        Ok(decoded) => Ok(decoded.stored),
        Err(e) => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("spool file {id}: {e:?}"),
        )),
    }
}

/// The open refused: `what` was written by a newer program.
pub(super) fn newer_version(
    what: impl std::fmt::Display,
    format_name: &str,
    version: u16,
) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("{what} has {format_name} format version {version}, newer than this program's"),
    )
}

/// Moves an unreadable file or segment aside for a human.
pub(super) fn set_aside(
    path: &Path,
    corrupt_dir: &Path,
    prefix: &str,
    problem: &str,
) -> io::Result<()> {
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let dest = corrupt_dir.join(format!("{prefix}{name}"));
    tracing::error!(file = %path.display(), moved_to = %dest.display(), problem, "unreadable spool file");
    fs::rename(path, dest)
}

/// The journal segments in `journal_dir`, oldest first, after setting
/// aside files that are not segments; fails if one has a newer version.
fn old_segments(journal_dir: &Path, corrupt_dir: &Path) -> io::Result<Vec<(u64, PathBuf)>> {
    let mut segments = Vec::new();
    for entry in fs::read_dir(journal_dir)? {
        let path = entry?.path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        let Some(seq) = journal::parse_segment_name(name) else {
            set_aside(&path, corrupt_dir, "journal-", "not a journal segment name")?;
            continue;
        };
        // Only the header: a newer journal stops the open at once (the
        // scan reads the rest, and sets a damaged segment aside).
        let mut header = [0u8; journal::HEADER_LEN];
        if File::open(&path)?.read_exact_at(&mut header, 0).is_ok()
            && &header[..8] == journal::MAGIC
        {
            let version = u16::from_le_bytes([header[8], header[9]]);
            if version > journal::VERSION {
                return Err(newer_version(path.display(), "journal", version));
            }
        }
        segments.push((seq, path));
    }
    segments.sort_unstable();
    Ok(segments)
}

impl DiskStorage {
    /// [`DiskStorage::open_with`] the default [`DiskOptions`].
    ///
    /// # Errors
    ///
    /// As [`DiskStorage::open_with`].
    pub fn open(path: impl AsRef<Path>) -> io::Result<Self> {
        Self::open_with(path, DiskOptions::default())
    }

    /// Opens (creating if needed) the spool at `path`, locks it, and starts
    /// recovering it from an interrupted run (see the module docs): the
    /// messages already stored are indexed by a background thread, so the
    /// open returns at once and new messages can be stored while old ones
    /// are still being found.
    ///
    /// Blocks for a few file system calls (directory syncs, the journal
    /// segments' headers): call it before serving, or inside
    /// `spawn_blocking`.
    ///
    /// # Errors
    ///
    /// Any I/O error creating the spool or cleaning `tmp/`;
    /// [`io::ErrorKind::WouldBlock`] if another `DiskStorage` holds the
    /// spool; [`io::ErrorKind::InvalidData`] if a journal segment was
    /// written by a newer version of the format. (A message file from a
    /// newer version is found by the background scan, which then fails
    /// every request with that error.)
    pub fn open_with(path: impl AsRef<Path>, options: DiskOptions) -> io::Result<Self> {
        Self::open_gated(
            path.as_ref(),
            options,
            #[cfg(test)]
            None,
        )
    }

    /// [`DiskStorage::open`] with the start-up scan held before each of
    /// its steps until the returned sender gives it a token (or is
    /// dropped; drop it before the storage).
    #[cfg(test)]
    fn open_paused(path: &Path) -> io::Result<(Self, std::sync::mpsc::Sender<()>)> {
        let (tokens, gate) = std::sync::mpsc::channel();
        Ok((
            Self::open_gated(path, DiskOptions::default(), Some(gate))?,
            tokens,
        ))
    }

    fn open_gated(
        path: &Path,
        options: DiskOptions,
        #[cfg(test)] gate: Option<std::sync::mpsc::Receiver<()>>,
    ) -> io::Result<Self> {
        let root = path.to_path_buf();
        let (msg_dir, tmp_dir, corrupt_dir, journal_dir) = (
            root.join("msg"),
            root.join("tmp"),
            root.join("corrupt"),
            root.join("journal"),
        );
        for dir in [&root, &msg_dir, &tmp_dir, &corrupt_dir, &journal_dir] {
            fs::create_dir_all(dir)?;
        }
        let fsyncs = Arc::new(AtomicU64::new(0));
        // The subdirectories, and the spool's own entry if it was just
        // created, must survive a crash before the first message does.
        sync_dir(&root, &fsyncs)?;
        if let Some(parent) = root.parent().filter(|p| !p.as_os_str().is_empty()) {
            sync_dir(parent, &fsyncs)?;
        }

        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(root.join("lock"))?;
        if let Err(e) = lock.try_lock() {
            return Err(match e {
                fs::TryLockError::WouldBlock => io::Error::new(
                    io::ErrorKind::WouldBlock,
                    format!("spool {} is in use by another DiskStorage", root.display()),
                ),
                fs::TryLockError::Error(e) => e,
            });
        }

        for entry in fs::read_dir(&tmp_dir)? {
            let entry = entry?;
            tracing::info!(file = %entry.path().display(), "removing an interrupted spool write");
            fs::remove_file(entry.path())?;
        }

        let segments = old_segments(&journal_dir, &corrupt_dir)?;
        let journal = Journal::new(
            &journal_dir,
            segments
                .iter()
                .map(|(seq, _)| (*seq, Residents::new()))
                .collect(),
            options.segment_size,
            options.closed_segments,
        )?
        .awaiting_residents();
        let shared = Arc::new(Shared::new());
        let committer = Committer::spawn(&msg_dir, journal, fsyncs.clone(), shared.clone())?;
        let spiller = Spiller::spawn(Mover {
            journal_dir: journal_dir.clone(),
            tmp_dir: tmp_dir.clone(),
            msg_dir: msg_dir.clone(),
            fsyncs: fsyncs.clone(),
            committer: committer.clone(),
            shared: shared.clone(),
            spilled_below: AtomicU64::new(0),
        })?;
        let scan_cancel = Arc::new(AtomicBool::new(false));
        tracing::info!(path = %root.display(), segments = segments.len(), "disk spool opened; indexing it in the background");
        let scan = Scan {
            journal_dir: journal_dir.clone(),
            msg_dir: msg_dir.clone(),
            corrupt_dir,
            segments,
            fsyncs: fsyncs.clone(),
            committer: committer.clone(),
            shared: shared.clone(),
            cancel: scan_cancel.clone(),
            spill: spiller.wake(),
            #[cfg(test)]
            gate,
        }
        .spawn()?;
        Ok(Self {
            inner: Arc::new(Inner {
                root,
                msg_dir,
                tmp_dir,
                journal_dir,
                options,
                committer,
                fsyncs,
                outcomes: AtomicU64::new(0),
                shared,
                scan_cancel,
                scan_thread: Mutex::new(Some(scan)),
                spiller,
                _lock: lock,
            }),
        })
    }

    /// The spool directory.
    pub fn path(&self) -> &Path {
        &self.inner.root
    }

    /// How many fsyncs (of files, journal segments and directories) this
    /// storage has issued since it was opened; divided by the messages
    /// written, it shows how well group commit works.
    pub fn fsync_count(&self) -> u64 {
        self.inner.fsyncs.load(Ordering::Relaxed)
    }

    /// Journal segments on disk, and messages whose only copy is in one
    /// (as of the last group commit), for operators.
    pub fn journal_counts(&self) -> (u64, u64) {
        self.inner.committer.journal_counts()
    }

    /// Whether the messages stored before the open are still being
    /// indexed (see the module docs).
    pub fn is_loading(&self) -> bool {
        self.inner.shared.scanning()
    }

    /// Waits until every message stored before the open is indexed.
    ///
    /// # Errors
    ///
    /// The background scan's error, if it failed (the storage then fails
    /// every request).
    pub async fn loaded(&self) -> io::Result<()> {
        self.inner.shared.settled().await
    }

    fn index(&self) -> std::sync::MutexGuard<'_, Index> {
        self.inner.shared.index()
    }

    fn place_of(&self, key: Key) -> Option<Place> {
        self.index().slots.get(&key).map(Slot::place)
    }

    /// The key and place of `id`; an id the start-up scan has not indexed
    /// (yet) is looked up again once the scan is over. `None`: not indexed.
    async fn find(&self, id: &str) -> io::Result<Option<(Key, Option<Place>)>> {
        self.inner.shared.failed()?;
        let Some(key) = key_of(id) else {
            return Ok(None);
        };
        if let Some(place) = self.place_of(key) {
            return Ok(Some((key, Some(place))));
        }
        self.inner.shared.settled().await?;
        Ok(Some((key, self.place_of(key))))
    }

    fn file_of(&self, id: &str) -> io::Result<PathBuf> {
        if key_of(id).is_some() {
            Ok(self.inner.msg_dir.join(id))
        } else {
            Err(not_found(id))
        }
    }

    fn update_slot(&self, key: Key, change: impl FnOnce(&mut Slot)) {
        if let Some(slot) = self.index().slots.get_mut(&key) {
            change(slot);
        }
    }

    /// Wakes the spill thread if the committer asks for a pass.
    fn maybe_spill(&self) {
        self.inner.spiller.poke();
    }

    /// Appends one metadata record to message `id`: a `META` record in the
    /// journal (sharing its group commit) while the message is only
    /// there, else a record appended to its file and `fdatasync`'d.
    /// Returns the message's key.
    async fn append(&self, id: &str, update: &Update) -> io::Result<Key> {
        let path = self.file_of(id)?;
        let Some((key, _)) = self.find(id).await? else {
            return Err(not_found(id));
        };
        let record = format::encode_update(update);
        // A refused META means the message moved to its file or was
        // removed, and the committer updated the index before answering;
        // the bound only guards against a bug looping for ever.
        for _ in 0..4 {
            match self.place_of(key) {
                None => return Err(not_found(id)),
                Some(Place::File { .. }) => {
                    self.append_to_file(id, path, record).await?;
                    return Ok(key);
                }
                Some(Place::Journal { segment, .. }) => {
                    if self
                        .inner
                        .committer
                        .append_meta(id.to_owned(), segment, record.clone())
                        .await?
                    {
                        let mut index = self.index();
                        if index.slots.contains_key(&key) {
                            index.pending.entry(key).or_default().push(&record);
                        }
                        return Ok(key);
                    }
                }
            }
        }
        Err(io::Error::other(format!(
            "message {id} is neither in the journal nor in its file"
        )))
    }

    /// Appends `record` to message `id`'s file at `path` and syncs it.
    async fn append_to_file(&self, id: &str, path: PathBuf, record: Vec<u8>) -> io::Result<()> {
        let fsyncs = self.inner.fsyncs.clone();
        let owned_id = id.to_owned();
        blocking(move || {
            let mut file = match OpenOptions::new().append(true).open(&path) {
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(not_found(&owned_id)),
                other => other?,
            };
            let len = file.metadata()?.len();
            if let Err(e) = file.write_all(&record) {
                // Leave no half record for the next append to follow.
                let _ = file.set_len(len);
                return Err(e);
            }
            fsyncs.fetch_add(1, Ordering::Relaxed);
            file.sync_data()?;
            Ok(())
        })
        .await
    }

    async fn write_new(
        &self,
        envelope: Arc<Envelope>,
        timestamp: SystemTime,
    ) -> io::Result<String> {
        self.inner.shared.failed()?;
        let key = Key::from_u128(uuid::Uuid::new_v4().as_u128());
        let id = index::id_of(key);
        let (head, tail) = format::encode_new_around(&envelope, timestamp);
        let received = envelope.receive_time;
        let max = self.inner.options.journal_max_message;
        let journal = max > 0
            && envelope.message.len() <= max
            && ((head.len() + envelope.message.len() + tail.len() + 64) as u64) < index::MAX_RECORD;
        let place = if journal {
            // Back-pressure (see `Committer::wait_for_room`), once the
            // start-up scan has handed the old segments to the spill thread.
            // (Every write and record already wakes the spill thread.)
            if self.inner.shared.journal_indexed.load(Ordering::Acquire) {
                self.inner.committer.wait_for_room(JOURNAL_PATIENCE).await;
            }
            let (segment, offset, len) = self
                .inner
                .committer
                .append_new(id.clone(), head, envelope, tail)
                .await?;
            Place::Journal {
                segment,
                offset,
                len,
            }
        } else {
            let tmp = self.inner.tmp_dir.join(&id);
            let dest = self.inner.msg_dir.join(&id);
            let fsyncs = self.inner.fsyncs.clone();
            let tmp_for_write = tmp.clone();
            // The message bytes go straight from the envelope: no second
            // copy of the message is built.
            blocking(move || {
                write_synced(&tmp_for_write, &[&head, &envelope.message, &tail], &fsyncs)
            })
            .await?;
            self.inner.committer.commit(tmp, dest).await?;
            Place::File { origin: None }
        };
        // `or_insert`: in the (theoretical) case that a spill already moved
        // it to a file and indexed it, that place is the right one.
        self.index()
            .slots
            .entry(key)
            .or_insert(Slot::new(place, timestamp, received));
        self.maybe_spill();
        Ok(id)
    }

    async fn read(&self, id: &str) -> io::Result<StoredEnvelope> {
        let path = self.file_of(id)?;
        let journal_copy = match self.find(id).await? {
            // The place and the META records under one look at the index:
            // a consistent state, even if the message moves right after.
            Some((key, Some(_))) => {
                let index = self.index();
                match index.slots.get(&key).map(Slot::place) {
                    Some(Place::Journal {
                        segment,
                        offset,
                        len,
                    }) => {
                        let pending = index.pending.get(&key).map(|p| p.bytes.clone());
                        Some((segment, offset, len, pending.unwrap_or_default()))
                    }
                    _ => None,
                }
            }
            _ => None,
        };
        if let Some((segment, offset, len, pending)) = journal_copy {
            let journal_dir = self.inner.journal_dir.clone();
            let owned_id = id.to_owned();
            match blocking(move || {
                read_journal_record(&journal_dir, &owned_id, segment, offset, len)
            })
            .await
            {
                Ok(mut bytes) => {
                    bytes.extend_from_slice(&pending);
                    return decode_file(id, &bytes);
                }
                // Moved to its own file (and the segment deleted) meanwhile.
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        let bytes = match blocking(move || fs::read(path)).await {
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(not_found(id)),
            other => other?,
        };
        decode_file(id, &bytes)
    }
}

impl QueueStorage for DiskStorage {
    /// Copies the envelope once (the blocking write needs it owned); the
    /// queue uses [`QueueStorage::write_shared`], which does not.
    fn write(
        &self,
        envelope: &Envelope,
        timestamp: SystemTime,
    ) -> impl Future<Output = io::Result<String>> + Send {
        self.write_new(Arc::new(envelope.clone()), timestamp)
    }

    fn write_shared(
        &self,
        envelope: Arc<Envelope>,
        timestamp: SystemTime,
    ) -> impl Future<Output = io::Result<String>> + Send {
        self.write_new(envelope, timestamp)
    }

    async fn set_timestamp(&self, id: &str, timestamp: SystemTime) -> io::Result<()> {
        let key = self.append(id, &Update::Timestamp(timestamp)).await?;
        self.update_slot(key, |slot| slot.set_due(timestamp));
        Ok(())
    }

    /// One `OUTCOME` record: a `META` record in the journal's group commit
    /// while the message is only there (it moves to its own file later,
    /// in the background), else appended to its file with one
    /// `fdatasync`.
    async fn record(&self, id: &str, outcome: &AttemptOutcome) -> io::Result<()> {
        let key = self.append(id, &Update::Outcome(outcome.clone())).await?;
        if let Some(due) = outcome.next_attempt {
            self.update_slot(key, |slot| slot.set_due(due));
        }
        self.inner.outcomes.fetch_add(1, Ordering::Relaxed);
        self.maybe_spill();
        Ok(())
    }

    /// `fsyncs` since open, `outcomes` (attempt outcomes made durable)
    /// since open, `journal_segments` on disk, `journal_messages` whose
    /// only copy is in the journal.
    fn counters(&self) -> StorageCounters {
        let (segments, in_journal) = self.journal_counts();
        vec![
            ("fsyncs", self.fsync_count()),
            ("outcomes", self.inner.outcomes.load(Ordering::Relaxed)),
            ("journal_segments", segments),
            ("journal_messages", in_journal),
        ]
    }

    /// Reads every message (the index keeps no envelopes): for operators,
    /// not for statistics ([`QueueStorage::summary`] is from memory).
    async fn list(&self) -> io::Result<Vec<QueueEntry>> {
        let ids: Vec<String> = self.load().await?.into_iter().map(|(id, _)| id).collect();
        let mut entries = Vec::with_capacity(ids.len());
        for id in ids {
            match self.read(&id).await {
                Ok(stored) => entries.push(QueueEntry::of(id, &stored)),
                // Removed since: not an error.
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        Ok(entries)
    }

    /// Waits for the start-up scan (see [`QueueStorage::load_into`] for
    /// what does not).
    async fn load(&self) -> io::Result<Vec<(String, SystemTime)>> {
        self.inner.shared.settled().await?;
        Ok(self
            .index()
            .snapshot(usize::MAX)
            .into_iter()
            .flatten()
            .collect())
    }

    /// What is indexed at once, then every batch the start-up scan indexes,
    /// as it does.
    async fn load_into(&self, batches: UnboundedSender<LoadBatch>) -> io::Result<usize> {
        self.inner.shared.failed()?;
        let mut sent = 0;
        let (indexed, heard) = self.inner.shared.listen(&batches, LOAD_BATCH);
        for batch in indexed {
            sent += batch.len();
            if batches.send(batch).is_err() {
                self.inner.shared.unlisten(&batches);
                return Ok(sent);
            }
        }
        let settled = self.inner.shared.settled().await;
        self.inner.shared.unlisten(&batches);
        settled?;
        Ok(sent + heard.load(Ordering::Relaxed))
    }

    /// From the index: what is indexed so far while the start-up scan runs.
    async fn summary(&self) -> io::Result<StorageSummary> {
        self.inner.shared.failed()?;
        let index = self.index();
        Ok(StorageSummary {
            messages: index.slots.len(),
            oldest_received: index.slots.values().map(Slot::received).min(),
        })
    }

    async fn get(&self, id: &str) -> io::Result<StoredEnvelope> {
        self.read(id).await
    }

    /// Does not wait for a move of the message to its own file in
    /// progress (see `DiskStorage::migrate_one`).
    async fn remove(&self, id: &str) -> io::Result<()> {
        let Ok(path) = self.file_of(id) else {
            return Ok(());
        };
        let Some((_, place)) = self.find(id).await? else {
            return Ok(());
        };
        let (origin, had_file) = match place {
            Some(Place::Journal { segment, .. }) => (Some(segment), false),
            Some(Place::File { origin }) => (origin, true),
            None => (None, true),
        };
        // The committer forgets the index entry once the removal is durable.
        self.inner
            .committer
            .remove(id.to_owned(), path, origin, had_file)
            .await?;
        self.maybe_spill();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(n: u8) -> Envelope {
        Envelope::new(
            "s@x.test",
            vec!["a@y.test".into(), "b@y.test".into()],
            vec![b'a' + n; 100],
        )
    }

    fn deferred(finished: usize, due_secs: u64) -> AttemptOutcome {
        AttemptOutcome {
            attempts: 1,
            finished: vec![finished],
            next_attempt: Some(SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(due_secs)),
            ..AttemptOutcome::default()
        }
    }

    impl DiskStorage {
        /// Moves every journal message to its own file now, the head
        /// segment's too.
        async fn spill_now(&self) {
            let mover = self.inner.spiller.mover().clone();
            tokio::task::spawn_blocking(move || {
                let residents = mover.committer.residents_blocking(u64::MAX)?;
                mover.spill_batch(&residents)
            })
            .await
            .unwrap()
            .unwrap();
        }
    }

    /// A deferral of a journal message is a `META` record in the journal:
    /// one journal sync, no file. The message reads back with every
    /// outcome; a spill gives it a file that is its `NEW` record's bytes
    /// and its `META` records' bytes, read back the same; later outcomes
    /// go to that file; a reopen sees it all.
    #[tokio::test]
    async fn a_deferral_stays_in_the_journal_until_a_spill_moves_it_whole() {
        let dir = tempfile::tempdir().unwrap();
        let s = DiskStorage::open(dir.path()).unwrap();
        let id = s.write(&message(0), SystemTime::now()).await.unwrap();
        let key = key_of(&id).unwrap();
        let before = s.fsync_count();
        s.record(&id, &deferred(0, 100)).await.unwrap();
        s.record(&id, &deferred(1, 200)).await.unwrap();
        assert_eq!(s.fsync_count() - before, 2, "one journal sync each");
        assert!(matches!(s.place_of(key), Some(Place::Journal { .. })));
        assert_eq!(fs::read_dir(dir.path().join("msg")).unwrap().count(), 0);
        let in_journal = s.get(&id).await.unwrap().meta;
        assert_eq!(in_journal.delivered, [0, 1]);
        assert_eq!(
            in_journal.timestamp,
            Some(SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(200))
        );

        let Some(Place::Journal {
            segment,
            offset,
            len,
        }) = s.place_of(key)
        else {
            unreachable!()
        };
        let new_bytes =
            read_journal_record(&dir.path().join("journal"), &id, segment, offset, len).unwrap();
        let metas = s.index().pending[&key].bytes.clone();
        s.spill_now().await;
        assert_eq!(s.place_of(key), Some(Place::File { origin: Some(1) }));
        assert!(!s.index().pending.contains_key(&key));
        let file = fs::read(dir.path().join("msg").join(&id)).unwrap();
        assert_eq!(file, [new_bytes, metas].concat());
        assert_eq!(s.get(&id).await.unwrap().meta, in_journal);

        let before = s.fsync_count();
        s.record(&id, &deferred(1, 300)).await.unwrap();
        assert_eq!(s.fsync_count() - before, 1, "appended to its file");
        let now = s.get(&id).await.unwrap().meta;
        assert_eq!(now.attempts, 1);
        drop(s);
        let s = DiskStorage::open(dir.path()).unwrap();
        s.loaded().await.unwrap();
        assert_eq!(s.get(&id).await.unwrap().meta, now);
    }

    /// `META` records survive a restart while the message is still only in
    /// the journal: the replay applies them (its due time comes from the
    /// last one), and the reopened spool moves the deferred message to its
    /// file in the background (every old segment is closed).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn meta_records_are_replayed_and_the_message_then_moves_to_its_file() {
        let dir = tempfile::tempdir().unwrap();
        let s = DiskStorage::open(dir.path()).unwrap();
        let id = s.write(&message(0), SystemTime::now()).await.unwrap();
        let untouched = s.write(&message(1), SystemTime::now()).await.unwrap();
        s.record(&id, &deferred(0, 100)).await.unwrap();
        s.record(&id, &deferred(1, 200)).await.unwrap();
        let meta = s.get(&id).await.unwrap().meta;
        drop(s);
        let s = DiskStorage::open(dir.path()).unwrap();
        let loaded = s.load().await.unwrap();
        let due: std::collections::HashMap<_, _> = loaded.into_iter().collect();
        assert_eq!(
            due[&id],
            SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(200)
        );
        assert_eq!(s.get(&id).await.unwrap().meta, meta);
        // The deferred one moves; the other stays in the journal.
        let key = key_of(&id).unwrap();
        // No request is needed: the scan wakes the spill thread once the
        // journal is indexed.
        for _ in 0..3000 {
            if matches!(s.place_of(key), Some(Place::File { .. })) {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert_eq!(s.place_of(key), Some(Place::File { origin: Some(1) }));
        assert!(matches!(
            s.place_of(key_of(&untouched).unwrap()),
            Some(Place::Journal { .. })
        ));
        assert_eq!(s.get(&id).await.unwrap().meta, meta);
        assert!(s.index().pending.is_empty());
    }

    /// A spool opened with its scan held: new messages are stored at once;
    /// `get`, `record` and `remove` of an id the scan has not reached wait
    /// for it and then work; a listener hears of every old message exactly
    /// once; a `REMOVE` record still beats the file a crash left behind.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn operations_on_ids_the_scan_has_not_reached_wait_for_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("spool");
        let s = DiskStorage::open(&path).unwrap();
        let journal_only = s.write(&message(0), SystemTime::now()).await.unwrap();
        let (file, removed) = (
            s.write(&message(1), SystemTime::now()).await.unwrap(),
            s.write(&message(2), SystemTime::now()).await.unwrap(),
        );
        s.record(&file, &deferred(0, 100)).await.unwrap();
        s.record(&removed, &deferred(1, 200)).await.unwrap();
        s.spill_now().await;
        let removed_file = fs::read(path.join("msg").join(&removed)).unwrap();
        s.remove(&removed).await.unwrap();
        drop(s);
        // A crash before the unlink was durable: the file is back, but the
        // REMOVE record is in the journal.
        fs::write(path.join("msg").join(&removed), removed_file).unwrap();

        let (s, tokens) = DiskStorage::open_paused(&path).unwrap();
        assert!(s.is_loading());
        let new = s.write(&message(3), SystemTime::now()).await.unwrap();
        let (listener, mut heard) = tokio::sync::mpsc::unbounded_channel();
        let listening = tokio::spawn({
            let s = s.clone();
            async move { s.load_into(listener).await }
        });
        let first: LoadBatch = heard.recv().await.unwrap();
        assert_eq!(first.iter().map(|(id, _)| id).collect::<Vec<_>>(), [&new]);
        let (getting, recording, removing) = (
            tokio::spawn({
                let (s, id) = (s.clone(), file.clone());
                async move { s.get(&id).await }
            }),
            tokio::spawn({
                let (s, id) = (s.clone(), file.clone());
                async move { s.record(&id, &deferred(1, 300)).await }
            }),
            tokio::spawn({
                let (s, id) = (s.clone(), journal_only.clone());
                async move { s.remove(&id).await }
            }),
        );
        for _ in 0..50 {
            tokio::task::yield_now().await;
        }
        assert!(!getting.is_finished() && !recording.is_finished() && !removing.is_finished());
        assert_eq!(s.summary().await.unwrap().messages, 1);
        tokens.send(()).unwrap();
        drop(tokens);
        // Before or after the record racing it, never a mix.
        let stored = getting.await.unwrap().unwrap();
        let before = (stored.meta.attempts, stored.meta.delivered.clone()) == (1, vec![0]);
        let after = (stored.meta.attempts, stored.meta.delivered.clone()) == (1, vec![0, 1]);
        assert!(before || after, "{:?}", stored.meta);
        recording.await.unwrap().unwrap();
        removing.await.unwrap().unwrap();
        listening.await.unwrap().unwrap();
        let mut old: Vec<String> = Vec::new();
        while let Ok(batch) = heard.try_recv() {
            old.extend(batch.into_iter().map(|(id, _)| id));
        }
        old.sort();
        let mut expected = vec![journal_only.clone(), file.clone()];
        expected.sort();
        assert_eq!(
            old, expected,
            "every old message heard once, the removed one never"
        );
        assert!(!path.join("msg").join(&removed).exists());
        drop(s);

        let s = DiskStorage::open(&path).unwrap();
        let mut loaded = s.load().await.unwrap();
        loaded.sort();
        let mut expected = vec![
            (
                file.clone(),
                SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(300),
            ),
            (
                new.clone(),
                loaded.iter().find(|(id, _)| *id == new).unwrap().1,
            ),
        ];
        expected.sort();
        assert_eq!(loaded, expected);
        assert_eq!(s.get(&file).await.unwrap().meta.delivered, [0, 1]);
    }
}
