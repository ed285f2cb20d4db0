//! Durable storage in a spool directory, one file per message (the app's
//! default queue storage).
//!
//! Layout under the spool directory:
//!
//! ```text
//! lock            held (advisory lock) by the one DiskStorage using the spool
//! tmp/<id>        a new message being written; never read
//! msg/<id>        a stored message: envelope + journal of metadata records
//! corrupt/<id>    files that failed to parse at start-up, kept for a human
//! ```
//!
//! The file format (version 1) is specified at the top of
//! `queue/disk/format.rs`: a magic and version header, the envelope (every
//! field, the message bytes exactly) as the first record, and an
//! append-only journal of CRC-checked metadata records.
//!
//! Decisions:
//! - **New messages**: written to `tmp/<id>` (header and metadata, then the
//!   message bytes straight from the shared envelope with one `writev`, so
//!   no second copy of a big message is built), fsync'd, renamed to
//!   `msg/<id>`, and `msg/` fsync'd, all before [`QueueStorage::write`]
//!   returns. The directory fsync is shared by every write waiting at that
//!   moment (group commit, `disk/commit.rs`); file writes and their fsyncs
//!   run in parallel on tokio's blocking pool, so the runtime never blocks
//!   on the disk.
//! - **Metadata updates** are appended to the message's file as one record
//!   each and fsync'd (`fdatasync`), instead of rewriting a metadata file
//!   through a temporary file: one fsync and no directory fsync per update.
//!   A torn append can only damage the last record; the CRC exposes it, and
//!   start-up truncates it away. A failed append truncates back at once.
//!   Only `set_last_error` (for operators, not for correctness) is appended
//!   without its own fsync.
//! - **Remove** is durable: the unlink goes through the committer thread
//!   and returns after the directory fsync of its batch, which it shares
//!   with the new messages and other removals waiting at that moment
//!   (`disk/commit.rs`). After a fully successful attempt (every pending
//!   recipient delivered, none failed) the queue records nothing else: no
//!   `DELIVERED` record, no `fdatasync`; the durable unlink *is* the record.
//!   After a partial delivery the queue appends `DELIVERED` with its
//!   `fdatasync` as before, since the file stays.
//!
//! Guarantees, and what a crash can do (the crash model in
//! `tests/storage_disk.rs` walks through every state):
//! - A message answered `250` is never lost: `write` returns only after the
//!   file's fsync, its rename into `msg/` and the fsync of `msg/`.
//! - After a successful delivery a crash cannot make the message be
//!   delivered again, except inside the window that already existed:
//!   between the relay's `250` and the first durable record of it. Before,
//!   that record was the `DELIVERED` append (one `fdatasync` away); now it
//!   is the unlink (at most two batched directory fsyncs away: the one in
//!   progress and the one the removal joins). A crash inside that window
//!   leaves the file exactly as the last durable record left it, and the
//!   next start delivers it again to the recipients not recorded as done
//!   (at-least-once; the same as a crash before the old `DELIVERED`
//!   record was durable). A crash after it leaves nothing.
//! - If the directory fsync of a removal fails, `remove` fails; the queue
//!   logs it and its next attempt finds the file gone. Only a crash before
//!   the kernel writes that directory back can then bring the file back
//!   (and deliver it again), the same fate as a failed `DELIVERED` fsync.
//! - **Start-up** ([`DiskStorage::open`]) deletes everything in `tmp/`
//!   (writes that never returned), truncates torn journal tails, and moves
//!   unreadable files to `corrupt/` rather than deleting mail. A file from a
//!   newer format version stops the open instead.
//! - Metadata is also kept in memory (a [`QueueEntry`] per message: the
//!   envelope without its bytes, attempts, due time, delivered set, last
//!   error), so [`QueueStorage::load`], [`QueueStorage::list`] (operators,
//!   statistics) and [`QueueStorage::increment_attempts`] read no files. That, and the lock file, is why two `DiskStorage`s must not
//!   share a spool; the second `open` fails.
//! - Updates to one message are expected one at a time (the queue never
//!   runs two attempts of one message at once).

mod commit;
pub(crate) mod format;

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::future::Future;
use std::io::{self, IoSlice, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::SystemTime;

use crate::envelope::Envelope;

use super::storage::{QueueEntry, QueueMeta, QueueStorage, StoredEnvelope};
use commit::Committer;
use format::{Invalid, Update};

struct Inner {
    root: PathBuf,
    msg_dir: PathBuf,
    tmp_dir: PathBuf,
    committer: Committer,
    fsyncs: Arc<AtomicU64>,
    index: Mutex<HashMap<String, QueueEntry>>,
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

impl DiskStorage {
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
    pub fn open(path: impl AsRef<Path>) -> io::Result<Self> {
        let root = path.as_ref().to_path_buf();
        let (msg_dir, tmp_dir, corrupt_dir) =
            (root.join("msg"), root.join("tmp"), root.join("corrupt"));
        for dir in [&root, &msg_dir, &tmp_dir, &corrupt_dir] {
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

        let mut index = HashMap::new();
        for entry in fs::read_dir(&msg_dir)? {
            let path = entry?.path();
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default()
                .to_owned();
            let bytes = fs::read(&path)?;
            let problem = if valid_id(&name) {
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
                        index.insert(name, entry);
                        continue;
                    }
                    Err(Invalid::NewerVersion(v)) => {
                        return Err(io::Error::new(
                            io::ErrorKind::InvalidData,
                            format!(
                                "{} has spool format version {v}, newer than this program's",
                                path.display()
                            ),
                        ));
                    }
                    Err(Invalid::Corrupt(why)) => why,
                }
            } else {
                "not a message id"
            };
            let dest = corrupt_dir.join(path.file_name().unwrap_or_default());
            tracing::error!(file = %path.display(), moved_to = %dest.display(), problem, "unreadable spool file");
            fs::rename(&path, &dest)?;
        }

        let committer = Committer::spawn(&msg_dir, fsyncs.clone())?;
        tracing::info!(path = %root.display(), messages = index.len(), "disk spool opened");
        Ok(Self {
            inner: Arc::new(Inner {
                root,
                msg_dir,
                tmp_dir,
                committer,
                fsyncs,
                index: Mutex::new(index),
                _lock: lock,
            }),
        })
    }

    /// The spool directory.
    pub fn path(&self) -> &Path {
        &self.inner.root
    }

    /// How many fsyncs (of files and directories) this storage has issued
    /// since it was opened; divided by the messages written, it shows how
    /// well group commit works.
    pub fn fsync_count(&self) -> u64 {
        self.inner.fsyncs.load(Ordering::Relaxed)
    }

    fn index(&self) -> MutexGuard<'_, HashMap<String, QueueEntry>> {
        self.inner
            .index
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn file_of(&self, id: &str) -> io::Result<PathBuf> {
        if valid_id(id) {
            Ok(self.inner.msg_dir.join(id))
        } else {
            Err(not_found(id))
        }
    }

    async fn append(&self, id: &str, update: &Update, sync: bool) -> io::Result<()> {
        let path = self.file_of(id)?;
        let record = format::encode_update(update);
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
            if sync {
                fsyncs.fetch_add(1, Ordering::Relaxed);
                file.sync_data()?;
            }
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
        let tmp = self.inner.tmp_dir.join(&id);
        let dest = self.inner.msg_dir.join(&id);
        let fsyncs = self.inner.fsyncs.clone();
        let tmp_for_write = tmp.clone();
        let shared = envelope.clone();
        blocking(move || {
            let written = (|| {
                let mut file = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(&tmp_for_write)?;
                // The message bytes go straight from the envelope: no
                // second copy of the message is built.
                write_all_vectored(
                    &mut file,
                    &mut [
                        IoSlice::new(&head),
                        IoSlice::new(&shared.message),
                        IoSlice::new(&tail),
                    ],
                )?;
                fsyncs.fetch_add(1, Ordering::Relaxed);
                file.sync_all()
            })();
            if written.is_err() {
                let _ = fs::remove_file(&tmp_for_write);
            }
            written
        })
        .await?;
        self.inner.committer.commit(tmp, dest).await?;
        self.index().insert(
            id.clone(),
            QueueEntry {
                id: id.clone(),
                sender: envelope.sender.clone(),
                recipients: envelope.recipients.clone(),
                size: envelope.message.len() as u64,
                received: envelope.receive_time,
                meta: QueueMeta {
                    timestamp: Some(timestamp),
                    ..QueueMeta::default()
                },
            },
        );
        Ok(id)
    }

    async fn read(&self, id: &str) -> io::Result<StoredEnvelope> {
        let path = self.file_of(id)?;
        let bytes = match blocking(move || fs::read(path)).await {
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(not_found(id)),
            other => other?,
        };
        match format::decode(&bytes) {
            Ok(decoded) => Ok(decoded.stored),
            Err(e) => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("spool file {id}: {e:?}"),
            )),
        }
    }

    async fn attempts(&self, id: &str) -> io::Result<u32> {
        let cached = self.index().get(id).map(|e| e.meta.attempts);
        match cached {
            Some(n) => Ok(n),
            None => Ok(self.read(id).await?.meta.attempts),
        }
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
        self.append(id, &Update::Timestamp(timestamp), true).await?;
        if let Some(entry) = self.index().get_mut(id) {
            entry.meta.timestamp = Some(timestamp);
        }
        Ok(())
    }

    async fn increment_attempts(&self, id: &str) -> io::Result<u32> {
        let attempts = self.attempts(id).await?.saturating_add(1);
        self.append(id, &Update::Attempts(attempts), true).await?;
        if let Some(entry) = self.index().get_mut(id) {
            entry.meta.attempts = attempts;
        }
        Ok(attempts)
    }

    async fn set_recipients_delivered(&self, id: &str, indices: &[usize]) -> io::Result<()> {
        self.append(id, &Update::Delivered(indices.to_vec()), true)
            .await?;
        if let Some(entry) = self.index().get_mut(id) {
            let delivered = &mut entry.meta.delivered;
            delivered.extend(indices.iter().filter(|&&i| i < entry.recipients.len()));
            delivered.sort_unstable();
            delivered.dedup();
        }
        Ok(())
    }

    async fn set_last_error(&self, id: &str, error: &str) -> io::Result<()> {
        self.append(id, &Update::LastError(error.to_owned()), false)
            .await?;
        if let Some(entry) = self.index().get_mut(id) {
            entry.meta.last_error = Some(error.to_owned());
        }
        Ok(())
    }

    async fn set_delay_warned(&self, id: &str) -> io::Result<()> {
        self.append(id, &Update::DelayWarned, true).await?;
        if let Some(entry) = self.index().get_mut(id) {
            entry.meta.delay_warned = true;
        }
        Ok(())
    }

    async fn list(&self) -> io::Result<Vec<QueueEntry>> {
        Ok(self.index().values().cloned().collect())
    }

    async fn load(&self) -> io::Result<Vec<(String, SystemTime)>> {
        Ok(self
            .index()
            .iter()
            .map(|(id, e)| {
                (
                    id.clone(),
                    e.meta.timestamp.unwrap_or(SystemTime::UNIX_EPOCH),
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
        self.inner.committer.remove(path).await?;
        self.index().remove(id);
        Ok(())
    }
}
