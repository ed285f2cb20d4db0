//! Group commit: one directory fsync for many new messages.
//!
//! A new spool file becomes durable in two steps: its own data (written and
//! fsync'd by the writer, in parallel with other writers, so the file
//! system can merge their journal commits) and its directory entry (the
//! rename into `msg/`, durable only after an fsync of that directory). The
//! second step is shared: one committer thread takes every rename that is
//! waiting, performs them, fsyncs the directory once, and answers them all.
//! While it fsyncs, new renames queue up and form the next batch, so the
//! batch grows with the load and no timer or batch size is needed: an idle
//! spool commits a lone message at once.
//!
//! If the directory fsync fails, the batch's files are unlinked again and
//! every writer in it gets the error: a message whose writer was told "not
//! stored" must not turn up after the next restart.
//!
//! The same thread makes removals durable: a removal job unlinks a file in
//! the directory and is answered after the batch's directory fsync, so a
//! removal shares that fsync with the new messages (and other removals)
//! waiting at the same moment. The queue relies on it after a fully
//! successful delivery attempt, where the durable unlink is the only record
//! that the message was delivered (see `disk/mod.rs`). A file that is
//! already gone counts as removed. If the fsync fails, the removal is
//! answered with the error: the file is gone from the directory but may
//! come back after a crash, which the caller must treat as "not removed".

use std::fs::{self, File};
use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::thread;

use tokio::sync::oneshot;

/// One directory change waiting for the directory fsync.
pub(crate) struct Job {
    change: Change,
    done: oneshot::Sender<io::Result<()>>,
}

/// What a job does to the directory.
pub(crate) enum Change {
    /// Renames a written and fsync'd file into the directory.
    Rename { tmp: PathBuf, dest: PathBuf },
    /// Unlinks a file in the directory.
    Remove(PathBuf),
}

/// The handle writers use to reach the committer thread. The thread ends
/// when the last handle is dropped.
pub(crate) struct Committer {
    jobs: Sender<Job>,
}

fn stopped() -> io::Error {
    io::Error::other("spool commit thread stopped")
}

impl Committer {
    /// Starts the committer for the directory `dir`.
    pub(crate) fn spawn(dir: &std::path::Path, fsyncs: Arc<AtomicU64>) -> io::Result<Self> {
        let handle = File::open(dir)?;
        let (jobs, rx) = channel();
        thread::Builder::new()
            .name("slimta-spool-commit".into())
            .spawn(move || run(&rx, &handle, &fsyncs))?;
        Ok(Self { jobs })
    }

    /// Renames `tmp` (fully written and fsync'd) to `dest` and returns once
    /// the directory entry is durable.
    pub(crate) async fn commit(&self, tmp: PathBuf, dest: PathBuf) -> io::Result<()> {
        self.submit(Change::Rename { tmp, dest }).await
    }

    /// Unlinks `path` (a file in the directory) and returns once the
    /// removal is durable. A missing file is not an error.
    pub(crate) async fn remove(&self, path: PathBuf) -> io::Result<()> {
        self.submit(Change::Remove(path)).await
    }

    async fn submit(&self, change: Change) -> io::Result<()> {
        let (done, answer) = oneshot::channel();
        self.jobs
            .send(Job { change, done })
            .map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}

/// The committer loop: one batch per wake-up.
pub(crate) fn run(jobs: &Receiver<Job>, dir: &File, fsyncs: &AtomicU64) {
    while let Ok(first) = jobs.recv() {
        let batch: Vec<Job> = std::iter::once(first).chain(jobs.try_iter()).collect();
        commit_batch(batch, dir, fsyncs);
    }
}

fn apply(change: &Change) -> io::Result<()> {
    match change {
        Change::Rename { tmp, dest } => fs::rename(tmp, dest),
        Change::Remove(path) => match fs::remove_file(path) {
            // Already gone (an earlier removal whose answer was lost, or an
            // operator's delete racing an attempt): still fsync the
            // directory, in case that earlier unlink is not durable yet.
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            other => other,
        },
    }
}

fn commit_batch(batch: Vec<Job>, dir: &File, fsyncs: &AtomicU64) {
    let renamed: Vec<io::Result<()>> = batch.iter().map(|j| apply(&j.change)).collect();
    let synced = if renamed.iter().any(Result::is_ok) {
        fsyncs.fetch_add(1, Ordering::Relaxed);
        dir.sync_all()
    } else {
        Ok(())
    };
    if let Err(e) = &synced {
        tracing::error!(error = %e, files = batch.len(), "spool directory fsync failed");
    }
    for (job, renamed) in batch.into_iter().zip(renamed) {
        let result = match (renamed, &synced) {
            (Err(e), _) => {
                if let Change::Rename { tmp, .. } = &job.change {
                    let _ = fs::remove_file(tmp);
                }
                Err(e)
            }
            (Ok(()), Ok(())) => Ok(()),
            (Ok(()), Err(e)) => {
                if let Change::Rename { dest, .. } = &job.change {
                    let _ = fs::remove_file(dest);
                }
                Err(io::Error::new(
                    e.kind(),
                    format!("spool directory fsync: {e}"),
                ))
            }
        };
        // The writer may have gone away (its future was dropped); the file is
        // then stored but unscheduled until the next start.
        let _ = job.done.send(result);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_directory_fsync_per_batch() {
        let spool = tempfile::tempdir().unwrap();
        let (tmp_dir, msg_dir) = (spool.path().join("tmp"), spool.path().join("msg"));
        fs::create_dir_all(&tmp_dir).unwrap();
        fs::create_dir_all(&msg_dir).unwrap();
        let (tx, rx) = channel();
        let mut answers = Vec::new();
        for i in 0..10 {
            let tmp = tmp_dir.join(format!("m{i}"));
            fs::write(&tmp, format!("message {i}")).unwrap();
            let (done, answer) = oneshot::channel();
            tx.send(Job {
                change: Change::Rename {
                    tmp,
                    dest: msg_dir.join(format!("m{i}")),
                },
                done,
            })
            .unwrap();
            answers.push(answer);
        }
        // A rename whose temporary file is missing fails alone.
        let (done, missing) = oneshot::channel();
        tx.send(Job {
            change: Change::Rename {
                tmp: tmp_dir.join("gone"),
                dest: msg_dir.join("gone"),
            },
            done,
        })
        .unwrap();
        drop(tx);
        let fsyncs = AtomicU64::new(0);
        run(&rx, &File::open(&msg_dir).unwrap(), &fsyncs);
        assert_eq!(
            fsyncs.load(Ordering::Relaxed),
            1,
            "the batch shares one directory fsync"
        );
        for (i, mut answer) in answers.into_iter().enumerate() {
            answer.try_recv().unwrap().unwrap();
            assert_eq!(
                fs::read_to_string(msg_dir.join(format!("m{i}"))).unwrap(),
                format!("message {i}")
            );
        }
        let mut missing = missing;
        assert_eq!(
            missing.try_recv().unwrap().unwrap_err().kind(),
            io::ErrorKind::NotFound
        );
        assert_eq!(fs::read_dir(&tmp_dir).unwrap().count(), 0);
    }

    #[test]
    fn removals_share_the_batch_fsync_and_are_answered_after_it() {
        let spool = tempfile::tempdir().unwrap();
        let (tmp_dir, msg_dir) = (spool.path().join("tmp"), spool.path().join("msg"));
        fs::create_dir_all(&tmp_dir).unwrap();
        fs::create_dir_all(&msg_dir).unwrap();
        for i in 0..3 {
            fs::write(msg_dir.join(format!("old{i}")), "delivered").unwrap();
        }
        fs::write(tmp_dir.join("new"), "new").unwrap();
        let (tx, rx) = channel();
        let mut changes: Vec<Change> = (0..3)
            .map(|i| Change::Remove(msg_dir.join(format!("old{i}"))))
            .collect();
        changes.push(Change::Rename {
            tmp: tmp_dir.join("new"),
            dest: msg_dir.join("new"),
        });
        // Already gone: answered Ok, like a removal that happened.
        changes.push(Change::Remove(msg_dir.join("never")));
        let mut answers = Vec::new();
        for change in changes {
            let (done, answer) = oneshot::channel();
            tx.send(Job { change, done }).unwrap();
            answers.push(answer);
        }
        drop(tx);
        let fsyncs = AtomicU64::new(0);
        // Nothing is answered before the batch ran (and fsync'd).
        for answer in &mut answers {
            assert!(answer.try_recv().is_err());
        }
        run(&rx, &File::open(&msg_dir).unwrap(), &fsyncs);
        assert_eq!(
            fsyncs.load(Ordering::Relaxed),
            1,
            "removals and the new message share one directory fsync"
        );
        for mut answer in answers {
            answer.try_recv().unwrap().unwrap();
        }
        assert_eq!(
            fs::read_dir(&msg_dir)
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect::<Vec<_>>(),
            ["new"]
        );
    }
}
