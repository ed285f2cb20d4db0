//! The spill thread: moves journal messages to files of their own, in the
//! background, in batches.
//!
//! Who is moved (the committer decides, see `disk/commit.rs`): deferred
//! messages once the segment holding their `NEW` record has closed, and
//! every message of segments past [`super::DiskOptions::closed_segments`].
//! A batch of up to [`SPILL_BATCH`] messages is copied to `tmp/` (each
//! `NEW` record's file bytes, then its `META` records' bytes: the spool
//! file it would have had), made durable with one `syncfs` (one
//! `fdatasync` per copy on systems without it), and renamed into `msg/`
//! through the committer, which syncs `msg/` once for the batch and tells
//! the index. A copy a removal or a later `META` record made stale is
//! dropped by the committer; the message stays for a later pass.
//!
//! Why a thread of its own, not a task: the storage must not keep the
//! spool (and its lock) after its last handle is dropped, and must spill
//! whether or not any request comes after the start-up scan indexes the
//! journal. A task would hold a handle (so dropping the storage would not
//! release the spool while a pass runs, and a reopen right after failed
//! with "in use"), and could only be started by a request. The thread holds
//! only what it needs, is woken by requests and by the scan, stops between
//! two batches when the storage is dropped, and is joined before the lock
//! is released. It is also the only writer of spill copies, so two copies
//! of one message are never written at once.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::fs::{self, File, OpenOptions};
use std::io::{self, IoSlice};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::{self, JoinHandle};

use super::commit::{Committer, Resident};
use super::index::{Pending, Shared, key_of};
use super::{journal, read_record_at, write_all_vectored};

/// How many journal messages one step of a spill pass copies to files
/// under one sync.
pub(crate) const SPILL_BATCH: usize = 512;

/// What the spill thread works with; shared with the storage, which asks
/// [`Mover::wanted`] before waking the thread.
pub(crate) struct Mover {
    pub(crate) journal_dir: PathBuf,
    pub(crate) tmp_dir: PathBuf,
    pub(crate) msg_dir: PathBuf,
    pub(crate) fsyncs: Arc<AtomicU64>,
    pub(crate) committer: Committer,
    pub(crate) shared: Arc<Shared>,
    /// The `spill_below` the last pass finished.
    pub(crate) spilled_below: AtomicU64,
}

impl Mover {
    /// Whether the committer asks for messages to be moved out of the
    /// journal beyond what the last pass did: residents of segments past
    /// `closed_segments`, or deferred messages in a closed segment. Never
    /// before the start-up scan has handed the journal's messages over.
    pub(crate) fn wanted(&self) -> bool {
        self.shared.journal_indexed.load(Ordering::Acquire)
            && (self.committer.spill_below() > self.spilled_below.load(Ordering::Relaxed)
                || self.committer.deferred_waiting())
    }

    /// One pass: moves every resident the committer names, a batch at a
    /// time, until done or `stop` is set.
    fn pass(&self, stop: &AtomicBool) {
        let below = self.committer.spill_below();
        match self.committer.residents_blocking(below) {
            Ok(residents) => {
                if residents.len() >= SPILL_BATCH {
                    tracing::info!(
                        messages = residents.len(),
                        "moving messages out of the journal"
                    );
                }
                for chunk in residents.chunks(SPILL_BATCH) {
                    if stop.load(Ordering::Relaxed) {
                        return;
                    }
                    if let Err(e) = self.spill_batch(chunk) {
                        tracing::error!(error = %e, "could not move messages out of the journal");
                        break;
                    }
                }
            }
            Err(e) => tracing::error!(error = %e, "could not list old journal messages"),
        }
        self.spilled_below.fetch_max(below, Ordering::Relaxed);
    }

    /// Copies `residents` to files under one sync, then renames them into
    /// `msg/` through the committer (one directory sync for all). Removals
    /// and attempts never wait for a move: the committer decides, in its
    /// own order, whether a removal, a `META` record or the move came
    /// first. A resident that was never indexed (its writer went away
    /// before the answer) gets its file all the same and is indexed at the
    /// next open.
    pub(crate) fn spill_batch(&self, residents: &[Resident]) -> io::Result<()> {
        let work: Vec<SpillWork> = {
            let index = self.shared.index();
            residents
                .iter()
                .filter_map(|resident| {
                    let key = key_of(&resident.0)?;
                    let pending = index.pending.get(&key).cloned().unwrap_or_default();
                    Some((resident.clone(), pending))
                })
                .collect()
        };
        let written = write_copies(&self.journal_dir, &self.tmp_dir, work, &self.fsyncs)?;
        let copies = written
            .into_iter()
            .map(|(id, segment, metas)| {
                let (tmp, dest) = (self.tmp_dir.join(&id), self.msg_dir.join(&id));
                (tmp, dest, id, segment, metas)
            })
            .collect();
        self.committer.spill_blocking(copies)
    }
}

/// The wake-up flags of the spill thread.
#[derive(Default)]
struct Signal {
    /// (a pass is wanted, the storage is gone)
    flags: Mutex<(bool, bool)>,
    changed: Condvar,
}

/// The spill thread's handle: wakes it, and stops and joins it on drop.
pub(crate) struct Spiller {
    mover: Arc<Mover>,
    signal: Arc<Signal>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

/// What the start-up scan holds to wake the spill thread once the journal
/// is indexed.
#[derive(Clone)]
pub(crate) struct SpillWake(Arc<Signal>);

impl SpillWake {
    pub(crate) fn wake(&self) {
        self.0.request();
    }
}

impl Signal {
    /// Asks the thread for a pass.
    fn request(&self) {
        self.flags.lock().unwrap_or_else(PoisonError::into_inner).0 = true;
        self.changed.notify_one();
    }
}

impl Spiller {
    pub(crate) fn spawn(mover: Mover) -> io::Result<Self> {
        let mover = Arc::new(mover);
        let signal = Arc::new(Signal::default());
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (mover, signal, stop) = (mover.clone(), signal.clone(), stop.clone());
            thread::Builder::new()
                .name("slimta-spool-spill".into())
                .spawn(move || run(&mover, &signal, &stop))?
        };
        Ok(Self {
            mover,
            signal,
            stop,
            thread: Some(thread),
        })
    }

    /// Wakes the thread if the committer asks for a pass (cheap when not).
    pub(crate) fn poke(&self) {
        if self.mover.wanted() {
            self.signal.request();
        }
    }

    pub(crate) fn wake(&self) -> SpillWake {
        SpillWake(self.signal.clone())
    }

    #[cfg(test)]
    pub(crate) fn mover(&self) -> &Arc<Mover> {
        &self.mover
    }
}

impl Drop for Spiller {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.signal
            .flags
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .1 = true;
        self.signal.changed.notify_one();
        if let Some(thread) = self.thread.take() {
            // Stops between two batches; the spool's lock is released only
            // after.
            let _ = thread.join();
        }
    }
}

fn run(mover: &Mover, signal: &Signal, stop: &AtomicBool) {
    loop {
        {
            let mut flags = signal.flags.lock().unwrap_or_else(PoisonError::into_inner);
            while !flags.0 && !flags.1 {
                flags = signal
                    .changed
                    .wait(flags)
                    .unwrap_or_else(PoisonError::into_inner);
            }
            if flags.1 {
                return;
            }
            flags.0 = false;
        }
        // A wake-up during the passes sets the flag again, so none is lost.
        while mover.wanted() && !stop.load(Ordering::Relaxed) {
            mover.pass(stop);
        }
    }
}

/// Makes the data of every file in `files` (written, not yet synced)
/// durable with as few syncs as the platform allows: on Linux one
/// `syncfs(2)` of their file system, which since Linux 5.8 also reports
/// any write-back error the file system saw since the first file was
/// opened; elsewhere an `fdatasync` per file.
fn sync_written(files: &[File], fsyncs: &AtomicU64) -> io::Result<()> {
    #[cfg(target_os = "linux")]
    if let Some(first) = files.first() {
        fsyncs.fetch_add(1, Ordering::Relaxed);
        return nix::unistd::syncfs(first).map_err(io::Error::from);
    }
    for file in files {
        fsyncs.fetch_add(1, Ordering::Relaxed);
        file.sync_data()?;
    }
    Ok(())
}

/// A journal message about to be copied to its own file: where its `NEW`
/// record is, and its `META` records as the index had them.
type SpillWork = (Resident, Pending);

/// Writes each message of `work` to `tmp_dir/<id>` and syncs them all at
/// once. Returns the ids written, with their segment and the count of
/// `META` records copied; a message whose segment is gone (removed
/// meanwhile) is skipped. On an error every copy of the batch is removed
/// again.
fn write_copies(
    journal_dir: &Path,
    tmp_dir: &Path,
    work: Vec<SpillWork>,
    fsyncs: &AtomicU64,
) -> io::Result<Vec<(String, u64, u32)>> {
    let mut segments: HashMap<u64, File> = HashMap::new();
    let mut files = Vec::with_capacity(work.len());
    let mut written = Vec::with_capacity(work.len());
    let copied = (|| {
        for ((id, segment, offset, len), pending) in work {
            let segment_file = match segments.entry(segment) {
                Entry::Occupied(e) => e.into_mut(),
                Entry::Vacant(e) => {
                    match File::open(journal_dir.join(journal::segment_name(segment))) {
                        Ok(file) => e.insert(file),
                        // Deleted: every resident of it was removed or
                        // moved since the list was made.
                        Err(err) if err.kind() == io::ErrorKind::NotFound => continue,
                        Err(err) => return Err(err),
                    }
                }
            };
            let bytes = read_record_at(segment_file, &id, segment, offset, len)?;
            let tmp = tmp_dir.join(&id);
            // Listed before the write, so a failed write is cleaned up too.
            written.push((id, segment, pending.records));
            // Truncated: a pass stopped half-way may have left a copy
            // (passes never overlap, and nothing else writes there).
            let mut file = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .open(&tmp)?;
            let mut bufs = [IoSlice::new(&bytes), IoSlice::new(&pending.bytes)];
            write_all_vectored(&mut file, &mut bufs)?;
            files.push(file);
        }
        sync_written(&files, fsyncs)
    })();
    if let Err(e) = copied {
        for (id, ..) in &written {
            let _ = fs::remove_file(tmp_dir.join(id));
        }
        return Err(e);
    }
    Ok(written)
}
