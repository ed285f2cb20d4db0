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

use std::fs::{self, File};
use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::thread;

use tokio::sync::oneshot;

/// One rename waiting for the directory fsync.
pub(crate) struct Job {
    tmp: PathBuf,
    dest: PathBuf,
    done: oneshot::Sender<io::Result<()>>,
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
        let (done, answer) = oneshot::channel();
        self.jobs
            .send(Job { tmp, dest, done })
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

fn commit_batch(batch: Vec<Job>, dir: &File, fsyncs: &AtomicU64) {
    let renamed: Vec<io::Result<()>> = batch.iter().map(|j| fs::rename(&j.tmp, &j.dest)).collect();
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
                let _ = fs::remove_file(&job.tmp);
                Err(e)
            }
            (Ok(()), Ok(())) => Ok(()),
            (Ok(()), Err(e)) => {
                let _ = fs::remove_file(&job.dest);
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
                tmp,
                dest: msg_dir.join(format!("m{i}")),
                done,
            })
            .unwrap();
            answers.push(answer);
        }
        // A rename whose temporary file is missing fails alone.
        let (done, missing) = oneshot::channel();
        tx.send(Job {
            tmp: tmp_dir.join("gone"),
            dest: msg_dir.join("gone"),
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
}
