//! Durable storage in a spool directory (the app's default queue storage):
//! a shared journal for new messages, and one file per message for the
//! ones that stay.
//!
//! Layout under the spool directory:
//!
//! ```text
//! lock              held (advisory lock) by the one DiskStorage using the spool
//! journal/<seq>     journal segments: new messages and removals, appended
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
//!   `OUTCOME` record appended to the message's own file and
//!   `fdatasync`'d: one fsync per deferred attempt. A message still in the
//!   journal first gets its own file (a "spill": its `NEW` record's bytes
//!   copied to `tmp/`), and the outcome record is written into that copy
//!   before its one fsync, so the first deferral costs that fsync plus a
//!   share of the `msg/` directory sync. A torn append can only damage the
//!   last record; the CRC exposes it, the reader applies an outcome whole
//!   or not at all, and start-up truncates the torn tail away.
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
//!   ones are spilled to files by a background task, so a few slow
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
//! - A `REMOVE` record wins over a `NEW` record and over a file of the
//!   same id (start-up unlinks that file); a file wins over a `NEW`
//!   record (it is the later, spilled copy with its metadata). Segments
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
//!   (writes that never returned), reads `msg/`, replays the journal in
//!   segment order, truncates torn tails of message files, and moves
//!   unreadable files or segments to `corrupt/` rather than deleting mail.
//!   A file or segment from a newer format version stops the open
//!   instead. New work goes to a new segment.
//! - Metadata is also kept in memory (a [`QueueEntry`] per message: the
//!   envelope without its bytes, attempts, due time, delivered set, last
//!   error, and where the message is), so [`QueueStorage::load`],
//!   [`QueueStorage::list`] (operators, statistics) read no files. That, and the
//!   lock file, is why two `DiskStorage`s must not share a spool; the
//!   second `open` fails.
//! - Updates to one message are expected one at a time (the queue never
//!   runs two attempts of one message at once).

mod commit;
pub(crate) mod format;
mod journal;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::future::Future;
use std::io::{self, IoSlice, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::SystemTime;

use crate::envelope::Envelope;

use super::storage::{
    AttemptOutcome, QueueEntry, QueueMeta, QueueStorage, StorageCounters, StoredEnvelope,
};
use commit::{Committer, Journal, Resident, Residents};
use format::{Invalid, Update};

/// How a [`DiskStorage`] stores new messages.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskOptions {
    /// New messages up to this many bytes go to the shared journal (one
    /// `fdatasync` per group commit); bigger ones get their own file at
    /// once. `0` turns the journal off: every message gets its own file.
    pub journal_max_message: usize,
    /// A journal segment is closed, and a new one started, once it holds
    /// this many bytes.
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

/// Where a message's current copy is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Place {
    /// Only in a journal segment: its `NEW` record's offset and length.
    Journal { segment: u64, offset: u64, len: u64 },
    /// In `msg/<id>`; `origin` is the segment its `NEW` record went to, if
    /// it came through the journal and that segment may still exist.
    File { origin: Option<u64> },
}

/// What the in-memory index keeps per message.
struct Slot {
    entry: QueueEntry,
    place: Place,
}

struct Inner {
    root: PathBuf,
    msg_dir: PathBuf,
    tmp_dir: PathBuf,
    journal_dir: PathBuf,
    options: DiskOptions,
    committer: Committer,
    fsyncs: Arc<AtomicU64>,
    index: Mutex<HashMap<String, Slot>>,
    /// Moves of journal messages to their own files take it exclusively
    /// (one at a time); removals of journal messages share it, so they run
    /// concurrently with each other but never while a move is half done.
    migrating: tokio::sync::RwLock<()>,
    /// A spill task is running.
    spilling: AtomicBool,
    /// The `spill_below` the last spill task finished.
    spilled_below: AtomicU64,
    // Held for the advisory lock; released when the last clone is dropped.
    _lock: File,
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

fn valid_id(id: &str) -> bool {
    id.len() == 32 && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
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

fn sync_dir(path: &Path, fsyncs: &AtomicU64) -> io::Result<()> {
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
fn newer_version(what: impl std::fmt::Display, format_name: &str, version: u16) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("{what} has {format_name} format version {version}, newer than this program's"),
    )
}

/// Every entry of `dir` with its file name (empty if not UTF-8).
fn named_entries(dir: &Path) -> io::Result<Vec<(PathBuf, String)>> {
    fs::read_dir(dir)?
        .map(|entry| {
            let path = entry?.path();
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default()
                .to_owned();
            Ok((path, name))
        })
        .collect()
}

/// Moves an unreadable file or segment aside for a human.
fn set_aside(path: &Path, corrupt_dir: &Path, prefix: &str, problem: &str) -> io::Result<()> {
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let dest = corrupt_dir.join(format!("{prefix}{name}"));
    tracing::error!(file = %path.display(), moved_to = %dest.display(), problem, "unreadable spool file");
    fs::rename(path, dest)
}

/// Reads `msg/` into the index.
fn load_files(
    msg_dir: &Path,
    corrupt_dir: &Path,
    fsyncs: &AtomicU64,
) -> io::Result<HashMap<String, Slot>> {
    let mut index = HashMap::new();
    for (path, name) in named_entries(msg_dir)? {
        if !valid_id(&name) {
            set_aside(&path, corrupt_dir, "", "not a message id")?;
            continue;
        }
        let bytes = fs::read(&path)?;
        match format::decode(&bytes) {
            Ok(decoded) => {
                if decoded.good_len < bytes.len() {
                    tracing::warn!(id = %name, "truncating a torn spool journal record");
                    let file = OpenOptions::new().write(true).open(&path)?;
                    file.set_len(decoded.good_len as u64)?;
                    fsyncs.fetch_add(1, Ordering::Relaxed);
                    file.sync_all()?;
                }
                let entry = QueueEntry::of(name.clone(), &decoded.stored);
                index.insert(
                    name,
                    Slot {
                        entry,
                        place: Place::File { origin: None },
                    },
                );
            }
            Err(Invalid::NewerVersion(v)) => {
                return Err(newer_version(path.display(), "spool", v));
            }
            Err(Invalid::Corrupt(why)) => set_aside(&path, corrupt_dir, "", why)?,
        }
    }
    Ok(index)
}

/// Replays `journal/` over the index read from `msg/`: a `REMOVE` wins
/// over everything (and its message's file is unlinked), a file wins over
/// a `NEW` record of the same id (it is a later, spilled copy). Returns the
/// segments with their residents.
fn replay_journal(
    journal_dir: &Path,
    msg_dir: &Path,
    corrupt_dir: &Path,
    index: &mut HashMap<String, Slot>,
    fsyncs: &AtomicU64,
) -> io::Result<BTreeMap<u64, Residents>> {
    let mut names = Vec::new();
    for (path, name) in named_entries(journal_dir)? {
        match journal::parse_segment_name(&name) {
            Some(seq) => names.push((seq, path)),
            None => set_aside(&path, corrupt_dir, "journal-", "not a journal segment name")?,
        }
    }
    names.sort_unstable();
    let mut segments = BTreeMap::new();
    let mut found: HashMap<String, (u64, u64, u64, QueueEntry)> = HashMap::new();
    let mut removed = HashSet::new();
    for (seq, path) in names {
        let bytes = fs::read(&path)?;
        let scan = match journal::scan(&bytes) {
            Ok(scan) => scan,
            Err(Invalid::NewerVersion(v)) => {
                return Err(newer_version(path.display(), "journal", v));
            }
            Err(Invalid::Corrupt(why)) => {
                set_aside(&path, corrupt_dir, "journal-", why)?;
                continue;
            }
        };
        if scan.good_len < bytes.len() {
            tracing::warn!(segment = %path.display(), "ignoring a torn journal tail");
        }
        segments.insert(seq, Residents::new());
        for entry in scan.entries {
            match entry {
                journal::Entry::New {
                    id,
                    offset,
                    len,
                    file,
                } if valid_id(id) => match format::decode(file) {
                    Ok(decoded) => {
                        let entry = QueueEntry::of(id, &decoded.stored);
                        found.insert(id.to_owned(), (seq, offset, len, entry));
                    }
                    Err(Invalid::NewerVersion(v)) => {
                        let what = format!("{}: message {id}", path.display());
                        return Err(newer_version(what, "spool", v));
                    }
                    Err(Invalid::Corrupt(why)) => {
                        // Kept for a human, like an unreadable file.
                        let dest = corrupt_dir.join(id);
                        tracing::error!(id, segment = %path.display(), moved_to = %dest.display(), problem = why, "unreadable journal message");
                        fs::write(&dest, file)?;
                    }
                },
                journal::Entry::Remove { id } => {
                    found.remove(id);
                    removed.insert(id.to_owned());
                }
                journal::Entry::New { .. } => {}
            }
        }
    }
    let mut unlinked = false;
    for id in &removed {
        if index.remove(id).is_some() {
            match fs::remove_file(msg_dir.join(id)) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => unlinked = true,
            }
        }
    }
    if unlinked {
        sync_dir(msg_dir, fsyncs)?;
    }
    for (id, (segment, offset, len, entry)) in found {
        if let Some(slot) = index.get_mut(&id) {
            slot.place = Place::File {
                origin: Some(segment),
            };
        } else if let Some(residents) = segments.get_mut(&segment) {
            residents.insert(id.clone(), (offset, len));
            index.insert(
                id,
                Slot {
                    entry,
                    place: Place::Journal {
                        segment,
                        offset,
                        len,
                    },
                },
            );
        }
    }
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

    /// Opens (creating if needed) the spool at `path`, recovers it from an
    /// interrupted run (see the module docs) and locks it.
    ///
    /// Blocks while it scans the spool: call it before serving, or inside
    /// `spawn_blocking`.
    ///
    /// # Errors
    ///
    /// Any I/O error creating or scanning the spool;
    /// [`io::ErrorKind::WouldBlock`] if another `DiskStorage` holds the
    /// spool; [`io::ErrorKind::InvalidData`] if a file was written by a
    /// newer version of the format.
    pub fn open_with(path: impl AsRef<Path>, options: DiskOptions) -> io::Result<Self> {
        let root = path.as_ref().to_path_buf();
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

        let mut index = load_files(&msg_dir, &corrupt_dir, &fsyncs)?;
        let segments = replay_journal(&journal_dir, &msg_dir, &corrupt_dir, &mut index, &fsyncs)?;
        let in_journal = segments.values().map(HashMap::len).sum::<usize>();
        let journal = Journal::new(
            &journal_dir,
            segments,
            options.segment_size,
            options.closed_segments,
        )?;
        let committer = Committer::spawn(&msg_dir, journal, fsyncs.clone())?;
        tracing::info!(path = %root.display(), messages = index.len(), in_journal, "disk spool opened");
        Ok(Self {
            inner: Arc::new(Inner {
                root,
                msg_dir,
                tmp_dir,
                journal_dir,
                options,
                committer,
                fsyncs,
                index: Mutex::new(index),
                migrating: tokio::sync::RwLock::new(()),
                spilling: AtomicBool::new(false),
                spilled_below: AtomicU64::new(0),
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

    fn index(&self) -> MutexGuard<'_, HashMap<String, Slot>> {
        self.inner
            .index
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn place_of(&self, id: &str) -> Option<Place> {
        self.index().get(id).map(|slot| slot.place)
    }

    fn file_of(&self, id: &str) -> io::Result<PathBuf> {
        if valid_id(id) {
            Ok(self.inner.msg_dir.join(id))
        } else {
            Err(not_found(id))
        }
    }

    fn update_entry(&self, id: &str, change: impl FnOnce(&mut QueueEntry)) {
        if let Some(slot) = self.index().get_mut(id) {
            change(&mut slot.entry);
        }
    }

    /// Moves journal messages to their own files, in parallel; one result
    /// per message, in no particular order (`Ok(false)`: removed first).
    async fn migrate(&self, residents: Vec<Resident>) -> Vec<io::Result<bool>> {
        let _one_at_a_time = self.inner.migrating.write().await;
        let mut tasks = tokio::task::JoinSet::new();
        for (id, segment, offset, len) in residents {
            let storage = self.clone();
            tasks.spawn(async move { storage.migrate_one(id, segment, offset, len, &[]).await });
        }
        let mut results = Vec::new();
        while let Some(done) = tasks.join_next().await {
            results.push(done.unwrap_or_else(|e| Err(io::Error::other(e))));
        }
        results
    }

    /// One message of [`DiskStorage::migrate`]; the caller holds
    /// `migrating`. `tail` (metadata records, or nothing) is written after
    /// the message's bytes, covered by the same fsync.
    async fn migrate_one(
        &self,
        id: String,
        segment: u64,
        offset: u64,
        len: u64,
        tail: &[u8],
    ) -> io::Result<bool> {
        match self.place_of(&id) {
            Some(Place::File { .. }) => return Ok(true),
            Some(Place::Journal { .. }) | None => {}
        }
        let tmp = self.inner.tmp_dir.join(&id);
        let dest = self.file_of(&id)?;
        let (journal_dir, fsyncs) = (self.inner.journal_dir.clone(), self.inner.fsyncs.clone());
        let (read_id, tmp_for_write) = (id.clone(), tmp.clone());
        let tail = tail.to_vec();
        let copied = blocking(move || {
            let bytes = match read_journal_record(&journal_dir, &read_id, segment, offset, len) {
                Ok(bytes) => bytes,
                // Its segment is gone: the message was removed meanwhile (a
                // resident keeps its segment on disk).
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(e),
            };
            // A move cancelled half-way (its task aborted) may have left
            // the copy; moves of one id never overlap (`migrating`).
            match fs::remove_file(&tmp_for_write) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
            write_synced(&tmp_for_write, &[&bytes, &tail], &fsyncs)?;
            Ok(Some(bytes))
        })
        .await?;
        let Some(bytes) = copied else {
            return Ok(false);
        };
        if !self
            .inner
            .committer
            .spill(tmp, dest, id.clone(), segment)
            .await?
        {
            return Ok(false);
        }
        let mut index = self.index();
        if let Some(slot) = index.get_mut(&id) {
            slot.place = Place::File {
                origin: Some(segment),
            };
        } else {
            // Still resident, so not removed (a removal of an indexed
            // journal message waits for `migrating`, which our caller
            // holds): stored, but its writer went away before it was
            // indexed. It is attempted after the next start, as before the
            // journal.
            let entry = QueueEntry::of(id.clone(), &decode_file(&id, &bytes)?);
            index.insert(
                id,
                Slot {
                    entry,
                    place: Place::File {
                        origin: Some(segment),
                    },
                },
            );
        }
        Ok(true)
    }

    /// Gives message `id` a file of its own if it is only in the journal,
    /// with `record` (one encoded metadata record) already at its end:
    /// `Ok(true)` if so, `Ok(false)` if the message already had a file (the
    /// caller appends the record). The copy's one fsync covers the record.
    async fn own_file_with(&self, id: &str, record: &[u8]) -> io::Result<bool> {
        let Some(Place::Journal {
            segment,
            offset,
            len,
        }) = self.place_of(id)
        else {
            return Ok(false);
        };
        let _one_at_a_time = self.inner.migrating.write().await;
        // Moved by a spill pass while this waited for the lock.
        if !matches!(self.place_of(id), Some(Place::Journal { .. })) {
            return match self.place_of(id) {
                Some(_) => Ok(false),
                None => Err(not_found(id)),
            };
        }
        if self
            .migrate_one(id.to_owned(), segment, offset, len, record)
            .await?
        {
            Ok(true)
        } else {
            Err(not_found(id))
        }
    }

    /// Whether the committer asks for messages to be moved out of old
    /// segments beyond what the last spill pass did.
    fn spill_wanted(&self) -> bool {
        self.inner.committer.spill_below() > self.inner.spilled_below.load(Ordering::Relaxed)
    }

    /// Starts a spill task if the committer asks for one and none runs.
    fn maybe_spill(&self) {
        if !self.spill_wanted() || self.inner.spilling.swap(true, Ordering::AcqRel) {
            return;
        }
        let storage = self.clone();
        tokio::spawn(async move {
            loop {
                while storage.spill_wanted() {
                    storage.spill_pass().await;
                }
                storage.inner.spilling.store(false, Ordering::Release);
                // A request made after the last look, while the flag was
                // still set, would otherwise wait for the next write.
                if !storage.spill_wanted() || storage.inner.spilling.swap(true, Ordering::AcqRel) {
                    break;
                }
            }
        });
    }

    /// Moves every resident of the segments the committer names to its own
    /// file.
    async fn spill_pass(&self) {
        let below = self.inner.committer.spill_below();
        match self.inner.committer.residents(below).await {
            Ok(residents) => {
                tracing::info!(
                    messages = residents.len(),
                    "moving messages out of old journal segments"
                );
                for chunk in residents.chunks(64) {
                    for result in self.migrate(chunk.to_vec()).await {
                        if let Err(e) = result {
                            tracing::error!(error = %e, "could not move a message out of the journal");
                        }
                    }
                }
            }
            Err(e) => tracing::error!(error = %e, "could not list old journal messages"),
        }
        self.inner.spilled_below.fetch_max(below, Ordering::Relaxed);
    }

    /// Appends one metadata record to message `id`'s file and syncs it; a
    /// message only in the journal gets its file first, with the record
    /// in it (one fsync either way, plus the spill's share of a directory
    /// sync the first time).
    async fn append(&self, id: &str, update: &Update) -> io::Result<()> {
        let path = self.file_of(id)?;
        let record = format::encode_update(update);
        if self.own_file_with(id, &record).await? {
            return Ok(());
        }
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
        let id = uuid::Uuid::new_v4().simple().to_string();
        let (head, tail) = format::encode_new_around(&envelope, timestamp);
        let entry = QueueEntry {
            id: id.clone(),
            sender: envelope.sender.clone(),
            recipients: envelope.recipients.clone(),
            size: envelope.message.len() as u64,
            received: envelope.receive_time,
            meta: QueueMeta {
                timestamp: Some(timestamp),
                ..QueueMeta::default()
            },
        };
        let max = self.inner.options.journal_max_message;
        let place = if max > 0 && envelope.message.len() <= max {
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
            .entry(id.clone())
            .or_insert(Slot { entry, place });
        self.maybe_spill();
        Ok(id)
    }

    async fn read(&self, id: &str) -> io::Result<StoredEnvelope> {
        let path = self.file_of(id)?;
        if let Some(Place::Journal {
            segment,
            offset,
            len,
        }) = self.place_of(id)
        {
            let journal_dir = self.inner.journal_dir.clone();
            let owned_id = id.to_owned();
            match blocking(move || {
                read_journal_record(&journal_dir, &owned_id, segment, offset, len)
            })
            .await
            {
                Ok(bytes) => return decode_file(id, &bytes),
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
        self.append(id, &Update::Timestamp(timestamp)).await?;
        self.update_entry(id, |e| e.meta.timestamp = Some(timestamp));
        Ok(())
    }

    /// One `OUTCOME` record and one `fdatasync`; a message still only in
    /// the journal is copied to its own file with the record at its end,
    /// under the copy's one fsync.
    async fn record(&self, id: &str, outcome: &AttemptOutcome) -> io::Result<()> {
        self.append(id, &Update::Outcome(outcome.clone())).await?;
        self.update_entry(id, |entry| {
            outcome.apply_to(&mut entry.meta, entry.recipients.len());
        });
        Ok(())
    }

    /// `fsyncs` since open, `journal_segments` on disk, `journal_messages`
    /// whose only copy is in the journal.
    fn counters(&self) -> StorageCounters {
        let (segments, in_journal) = self.journal_counts();
        vec![
            ("fsyncs", self.fsync_count()),
            ("journal_segments", segments),
            ("journal_messages", in_journal),
        ]
    }

    async fn list(&self) -> io::Result<Vec<QueueEntry>> {
        Ok(self.index().values().map(|s| s.entry.clone()).collect())
    }

    async fn load(&self) -> io::Result<Vec<(String, SystemTime)>> {
        Ok(self
            .index()
            .iter()
            .map(|(id, slot)| {
                (
                    id.clone(),
                    slot.entry.meta.timestamp.unwrap_or(SystemTime::UNIX_EPOCH),
                )
            })
            .collect())
    }

    async fn get(&self, id: &str) -> io::Result<StoredEnvelope> {
        self.read(id).await
    }

    async fn remove(&self, id: &str) -> io::Result<()> {
        let Ok(path) = self.file_of(id) else {
            return Ok(());
        };
        // A journal message may be moving to its own file right now: wait
        // for that move to finish (and be indexed) first, so its index
        // entry cannot be brought back after the removal. Shared with
        // other removals (holding it exclusively serialised every removal
        // behind one sync, which the benchmark caught as a growing backlog).
        let _no_move = match self.place_of(id) {
            Some(Place::Journal { .. }) => Some(self.inner.migrating.read().await),
            _ => None,
        };
        let (origin, had_file) = match self.place_of(id) {
            Some(Place::Journal { segment, .. }) => (Some(segment), false),
            Some(Place::File { origin }) => (origin, true),
            None => (None, true),
        };
        self.inner
            .committer
            .remove(id.to_owned(), path, origin, had_file)
            .await?;
        self.index().remove(id);
        self.maybe_spill();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Removals of journal messages must not exclude each other (holding
    /// the move lock exclusively once serialised every removal behind one
    /// sync): with another removal's share of the lock held, a removal
    /// still completes. A move (exclusive) does wait for it.
    #[tokio::test]
    async fn removals_share_the_move_lock() {
        let dir = tempfile::tempdir().unwrap();
        let s = DiskStorage::open(dir.path()).unwrap();
        let e = Envelope::new("s@x.test", vec!["r@y.test".into()], b"x\r\n".to_vec());
        let (a, b) = (
            s.write(&e, SystemTime::now()).await.unwrap(),
            s.write(&e, SystemTime::now()).await.unwrap(),
        );
        let other_removal = s.inner.migrating.read().await;
        tokio::time::timeout(std::time::Duration::from_secs(30), s.remove(&a))
            .await
            .expect("a removal waited for another removal")
            .unwrap();
        assert!(
            s.inner.migrating.try_write().is_err(),
            "a move must wait for the removal in progress"
        );
        drop(other_removal);
        let outcome = AttemptOutcome {
            attempts: 1,
            finished: vec![0],
            ..AttemptOutcome::default()
        };
        s.record(&b, &outcome).await.unwrap();
        assert_eq!(s.place_of(&b), Some(Place::File { origin: Some(1) }));
        assert_eq!(s.get(&b).await.unwrap().meta.delivered, [0]);
    }
}
