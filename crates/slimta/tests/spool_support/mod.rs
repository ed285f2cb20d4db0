//! Helpers shared by the disk spool's tests (`storage_disk.rs`,
//! `storage_journal.rs`): scratch spools, directory listings, waiting,
//! reopening a spool a stopped queue still holds, and a relay that
//! delivers everything and notes what the spool held at each attempt.

#![allow(dead_code, unreachable_pub)]

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use slimta::queue::{AttemptOutcome, DiskOptions, DiskStorage};
use slimta::{Delivery, Envelope, Relay, RelayError, Reply};

/// A scratch directory and a spool path inside it (not created yet).
/// The outcome of attempt `attempts` that finished `indices` and changed
/// nothing else (a partial delivery, as the queue records it).
pub fn finished(attempts: u32, indices: &[usize]) -> AttemptOutcome {
    AttemptOutcome {
        attempts,
        finished: indices.to_vec(),
        ..AttemptOutcome::default()
    }
}

pub fn spool() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("spool");
    (dir, path)
}

/// The file names in `dir`, sorted.
pub fn files_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

/// Polls `done` every 10 ms; panics after 100 s (a hang, not a timing
/// assertion).
pub async fn wait_until(what: &str, mut done: impl AsyncFnMut() -> bool) {
    for _ in 0..10_000 {
        if done().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting until {what}");
}

/// Opens the spool at `path` once whatever still holds it (a stopped
/// queue's task, with its clone of the storage) lets go.
pub async fn reopen(path: &Path) -> DiskStorage {
    reopen_with(path, DiskOptions::default()).await
}

/// [`reopen`] with `options`.
pub async fn reopen_with(path: &Path, options: DiskOptions) -> DiskStorage {
    for _ in 0..1000 {
        match DiskStorage::open_with(path, options.clone()) {
            Ok(s) => return s,
            Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
    panic!("the spool {} was never released", path.display());
}

/// One attempt: its recipients and the files in `msg/` at that moment.
pub type Seen = (Vec<String>, Vec<Vec<u8>>);

/// Delivers every recipient, and notes what the spool held at each attempt.
#[derive(Clone)]
pub struct DeliverAll {
    spool: PathBuf,
    calls: Arc<Mutex<Vec<Seen>>>,
}

impl DeliverAll {
    pub fn new(spool: &Path) -> Self {
        Self {
            spool: spool.to_path_buf(),
            calls: Arc::default(),
        }
    }

    pub fn calls(&self) -> Vec<Seen> {
        self.calls.lock().unwrap().clone()
    }
}

impl Relay for DeliverAll {
    async fn attempt(&self, envelope: &Envelope, _attempt: u32) -> Result<Delivery, RelayError> {
        let msg = self.spool.join("msg");
        let files = files_in(&msg)
            .iter()
            .map(|name| fs::read(msg.join(name)).unwrap())
            .collect();
        self.calls
            .lock()
            .unwrap()
            .push((envelope.recipients.clone(), files));
        let results = envelope
            .recipients
            .iter()
            .map(|_| Ok(Reply::new(250, "2.0.0", "ok")))
            .collect();
        Ok(Delivery::per_recipient(
            Reply::new(250, "2.0.0", "ok"),
            results,
        ))
    }
}
